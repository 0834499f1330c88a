"""Proxy losses: Proxy-Anchor and ProxyNCA against explicit class proxies.

The proxies are an explicit ``(K, D)`` array (trained as a parameter by the
caller, never hidden state) and, with the embeddings, are L2-normalised inside
the loss as pytorch-metric-learning (PML) does. Only ``(B, K)`` similarity
matrices are built. Labels are int class ids in ``[0, K)``, checked when a
loss is called eagerly (not under ``jit``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sphereembed.losses import _common
from sphereembed.losses._angular_margin import check_proxy_inputs, proxy_cosines
from sphereembed.losses._pair_weighting import check_hyperparameter, masked_logsumexp

__all__ = ["proxy_anchor", "proxy_nca"]


def proxy_anchor(
    embeddings: jax.Array,
    labels: jax.Array,
    proxies: jax.Array,
    *,
    margin: float | jax.Array = 0.1,
    alpha: float | jax.Array = 32.0,
    weights: jax.Array | None = None,
) -> jax.Array:
  """Proxy-Anchor loss (Kim et al. 2020), PML's ``ProxyAnchorLoss``.

  With cosine similarities ``s_ik`` of the normalised embeddings and proxies,
  ``X_k^+`` the samples of class ``k`` and ``X_k^-`` the others, ``P^+`` the
  proxies with at least one positive in the batch and ``K`` all proxies:

  ``1/|P^+| sum_{k in P^+} log(1 + sum_{i in X_k^+} exp(-alpha (s_ik - margin)))
  + 1/K sum_k log(1 + sum_{i in X_k^-} exp(alpha (s_ik + margin)))``

  Both log-sum-exps are max-shifted. A class absent from the batch adds no
  positive term and is not counted in ``|P^+|`` (PML's divisor), but its
  proxy is still pushed away from every sample through the negative term.

  Per-sample weights act as multiplicities: sample ``i`` enters each sum as
  ``w_i exp(...)`` (``log w_i`` added inside the log-sum-exp; integer weights
  equal repeating the sample, ``w_i = 0`` removes it, also from ``P^+``).
  This differs from PML, whose miner weights enter as ``w_i - 1`` added to the
  exponent.

  Edge cases (value; the gradient is always finite): one class in the batch:
  ``|P^+| = 1``; no sample at all (empty batch): every log-sum-exp is
  ``log 1 = 0``, loss 0 with a zero gradient; ``K = 1``: no negative term
  (``X_0^- = {}``); a sample on its proxy: ``s = 1``; zero embeddings: all
  ``s = 0``.

  Args:
    embeddings: ``(B, D)`` floating array (L2-normalised inside the loss).
    labels: ``(B,)`` int class ids in ``[0, K)``.
    proxies: ``(K, D)`` class proxies, the dtype of ``embeddings``
      (L2-normalised inside the loss; they receive gradients).
    margin: the margin ``delta`` (``>= 0``).
    alpha: the scale (``> 0``).
    weights: optional ``(B,)`` non-negative per-sample weights (multiplicities).

  Returns:
    The scalar loss.

  Raises:
    ValueError: on bad shapes or dtypes, a negative or non-finite margin, a
      non-positive or non-finite alpha and, outside ``jit``, NaN embeddings or
      proxies, labels outside ``[0, K)`` or negative weights.

  References:
    Kim, Kim, Cho & Kwak, "Proxy Anchor Loss for Deep Metric Learning",
    CVPR 2020.

  Example:
    >>> import jax.numpy as jnp
    >>> from sphereembed.losses import proxy_anchor
    >>> w = jnp.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    >>> x = jnp.array([[1.0, 0.0]])
    >>> # class 0 only: log(1 + e^{-0.9 a}) + (log(1 + e^{0.1 a}) + log(1 + e^{-0.9 a})) / 3.
    >>> print(f"{proxy_anchor(x, jnp.array([0]), w, alpha=2.0):.4f}")
    0.4700
  """
  embeddings, labels, proxies, weights = check_proxy_inputs(embeddings, labels, proxies, weights)
  dtype = embeddings.dtype
  margin = check_hyperparameter(margin, "margin", dtype, minimum=0.0)
  alpha = check_hyperparameter(alpha, "alpha", dtype, minimum=0.0, exclusive=True)
  num_proxies = proxies.shape[0]
  cosines = proxy_cosines(embeddings, proxies)  # (B, K)
  own = jax.nn.one_hot(labels, num_proxies, dtype=jnp.bool_)
  log_weights = None
  present = jnp.ones((embeddings.shape[0], 1), bool)
  if weights is not None:
    present = (weights > 0)[:, None]
    log_weights = jnp.log(jnp.where(present, weights[:, None], 1))
  positives, negatives = own & present, ~own & present
  positive_terms = masked_logsumexp(alpha * (margin - cosines), positives, 0, add_one=True,
                                    log_weights=log_weights)
  negative_terms = masked_logsumexp(alpha * (cosines + margin), negatives, 0, add_one=True,
                                    log_weights=log_weights)
  num_with_positives = jnp.sum(jnp.any(positives, axis=0)).astype(dtype)
  positive_loss = jnp.where(num_with_positives > 0,
                            jnp.sum(positive_terms) / jnp.maximum(num_with_positives, 1), 0)
  return positive_loss + jnp.sum(negative_terms) / num_proxies


def proxy_nca(
    embeddings: jax.Array,
    labels: jax.Array,
    proxies: jax.Array,
    *,
    softmax_scale: float | jax.Array = 1.0,
    weights: jax.Array | None = None,
) -> jax.Array:
  """ProxyNCA (Movshovitz-Attias et al. 2017), PML's ``ProxyNCALoss``.

  With squared euclidean distances ``d_ik = ||x_i/|x_i| - w_k/|w_k| ||^2`` of
  the normalised embeddings and proxies (PML's ``LpDistance(power=2)``):

  ``l_i = -log( exp(-scale d_iy) / sum_k exp(-scale d_ik) )``

  (PML's form: the positive proxy is in the denominator) and the loss is the
  mean over the batch. Since ``d_ik = 2 - 2 cos theta_ik`` on unit vectors,
  the logits are computed as ``2 scale cos theta_ik`` (the same softmax,
  without the Gram-form clamp of the distances).

  Difference from PML: PML drops samples whose probability underflows to
  exactly 0 from the mean; here the log-softmax is computed in its stable
  form, so such a sample keeps its (large, finite) loss.

  Edge cases (value; the gradient is always finite): ``K = 1``: loss 0; a
  class absent from the batch: its proxy only enters the denominators; a
  sample on its proxy: ``d = 0``; zero embeddings: every ``d`` is 1
  (``cos = 0``), loss ``log K``; an empty batch: 0.

  Args:
    embeddings: ``(B, D)`` floating array (L2-normalised inside the loss).
    labels: ``(B,)`` int class ids in ``[0, K)``.
    proxies: ``(K, D)`` class proxies (L2-normalised inside the loss).
    softmax_scale: the scale of the negated squared distances (``> 0``).
    weights: optional ``(B,)`` non-negative per-sample weights (a weighted
      mean over the batch).

  Returns:
    The scalar loss.

  Raises:
    ValueError: on bad shapes or dtypes, a non-positive or non-finite scale
      and, outside ``jit``, NaN embeddings or proxies, labels outside
      ``[0, K)`` or negative weights.

  References:
    Movshovitz-Attias, Toshev, Leung, Ioffe & Singh, "No Fuss Distance Metric
    Learning using Proxies", ICCV 2017.

  Example:
    >>> import jax.numpy as jnp
    >>> from sphereembed.losses import proxy_nca
    >>> w = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> # d = (0, 2): -log(1 / (1 + e^{-2})).
    >>> print(f"{proxy_nca(jnp.array([[3.0, 0.0]]), jnp.array([0]), w):.4f}")
    0.1269
  """
  embeddings, labels, proxies, weights = check_proxy_inputs(embeddings, labels, proxies, weights)
  softmax_scale = check_hyperparameter(softmax_scale, "softmax_scale", embeddings.dtype,
                                       minimum=0.0, exclusive=True)
  logits = 2 * softmax_scale * proxy_cosines(embeddings, proxies)
  target = jnp.take_along_axis(logits, labels[:, None].astype(jnp.int32), axis=1)[:, 0]
  per_sample = jax.nn.logsumexp(logits, axis=1) - target
  return _common.weighted_mean(per_sample, jnp.ones(per_sample.shape, bool), weights)
