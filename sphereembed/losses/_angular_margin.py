"""Angular-margin softmax losses against class proxies: ArcFace, CosFace, sub-center ArcFace, NormFace.

Each class ``k`` has a proxy ``w_k`` (a row of ``proxies``, trained as a
parameter by the caller; there is no hidden state). Embeddings and proxies are
L2-normalised inside the loss, as pytorch-metric-learning (PML) does with its
``CosineSimilarity``, and each sample's logits are its scaled cosine
similarities ``cos(theta_k) = x . w_k / (|x| |w_k|)`` to all proxies, the
target logit modified by a margin. The loss is the softmax cross-entropy
(a max-shifted log-sum-exp), averaged over the batch (PML's ``MeanReducer``).
Margins are in radians (PML's ``ArcFaceLoss`` takes degrees).

Labels are int class ids in ``[0, K)``; they are checked when a loss is called
eagerly. Under ``jit`` they are not, and an id outside ``[0, K)`` gives a
meaningless value.
"""

from __future__ import annotations

import operator

import jax
import jax.numpy as jnp

from sphereembed import geometry
from sphereembed.losses import _common, checks
from sphereembed.losses._pair_weighting import check_hyperparameter

__all__ = ["arcface", "cosface", "normalized_softmax", "subcenter_arcface"]


def check_proxy_inputs(embeddings, labels, proxies, weights, num_classes_divisor=1):
  """Static checks (and value checks when concrete) of a proxy loss's inputs.

  Returns ``(embeddings, labels, proxies, weights)``; the class count is
  ``proxies.shape[0] // num_classes_divisor``.
  """
  embeddings = checks.check_embeddings(embeddings)
  batch_size, dtype = embeddings.shape[0], embeddings.dtype
  proxies = checks.check_embeddings(proxies, "proxies")
  if proxies.shape[1] != embeddings.shape[1]:
    raise ValueError(
        f"proxies must have shape (K, {embeddings.shape[1]}) to match the embeddings, "
        f"got {proxies.shape}.")
  if proxies.dtype != dtype:
    raise ValueError(
        f"proxies must have the dtype of the embeddings ({dtype}), got {proxies.dtype}.")
  if proxies.shape[0] == 0:
    raise ValueError(f"proxies must hold at least one proxy, got shape {proxies.shape}.")
  if proxies.shape[0] % num_classes_divisor:
    raise ValueError(
        f"proxies must have K * num_subcenters = K * {num_classes_divisor} rows, got "
        f"{proxies.shape[0]}.")
  labels = checks.check_labels(labels, batch_size, allow_multi_hot=False)
  weights = checks.check_weights(weights, batch_size, dtype)
  checks.validate_if_concrete(embeddings, labels, weights,
                              num_classes=proxies.shape[0] // num_classes_divisor)
  if checks.is_concrete(proxies):
    checks.validate_embeddings(proxies, "proxies")
  return embeddings, labels, proxies, weights


def proxy_cosines(embeddings: jax.Array, proxies: jax.Array) -> jax.Array:
  """``(B, K)`` cosine similarities of the L2-normalised embeddings and proxies."""
  x = geometry.l2_normalize(embeddings)
  w = geometry.l2_normalize(proxies)
  return jnp.matmul(x, w.T, precision=jax.lax.Precision.HIGHEST)


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-sample ``logsumexp(logits) - logits[label]`` (max-shifted)."""
  target = jnp.take_along_axis(logits, labels[:, None].astype(jnp.int32), axis=1)[:, 0]
  return jax.nn.logsumexp(logits, axis=1) - target


def _mean(per_sample, weights):
  return _common.weighted_mean(per_sample, jnp.ones(per_sample.shape, bool), weights)


@jax.custom_jvp
def _arccos(c: jax.Array) -> jax.Array:
  """``arccos(clip(c, -1, 1))`` with the zero subgradient at ``|c| >= 1``.

  The true derivative ``-1/sqrt(1 - c^2)`` is infinite at ``c = +-1`` (a
  sample exactly on a proxy, or opposite to it), where the angle as a
  function of the embedding has a kink: like the distances of
  :mod:`sphereembed.geometry`, the zero subgradient is used there.
  """
  return jnp.arccos(jnp.clip(c, -1, 1))


@_arccos.defjvp
def _arccos_jvp(primals, tangents):
  (c,), (dc,) = primals, tangents
  inside = (c > -1) & (c < 1)
  safe = jnp.where(inside, c, 0)
  slope = -1 / jnp.sqrt((1 - safe) * (1 + safe))
  return _arccos(c), jnp.where(inside, slope * dc, 0)


def _arcface_target(cosine: jax.Array, margin: jax.Array) -> jax.Array:
  """PML's ``cos(theta + m)``, continued by ``cos(theta) - m sin(m)`` past ``theta = pi - m``."""
  theta = _arccos(cosine)
  return jnp.where(theta <= jnp.pi - margin, jnp.cos(theta + margin),
                   jnp.clip(cosine, -1, 1) - margin * jnp.sin(margin))


def _margin_softmax(cosines, labels, weights, scale, target_fn):
  """Cross-entropy of ``scale * cos`` with the target cosine replaced by ``target_fn(cos_y)``."""
  own = jax.nn.one_hot(labels, cosines.shape[1], dtype=jnp.bool_)
  target = jnp.take_along_axis(cosines, labels[:, None].astype(jnp.int32), axis=1)
  logits = scale * jnp.where(own, target_fn(target), cosines)
  return _mean(_cross_entropy(logits, labels), weights)


def arcface(
    embeddings: jax.Array,
    labels: jax.Array,
    proxies: jax.Array,
    *,
    margin: float | jax.Array = 0.5,
    scale: float | jax.Array = 64.0,
    weights: jax.Array | None = None,
) -> jax.Array:
  """ArcFace: softmax cross-entropy with an additive angular margin (PML's ``ArcFaceLoss``).

  With ``theta_k`` the angle between the normalised embedding ``x`` and
  proxy ``w_k``, for a sample of class ``y``:

  ``l = -log( exp(s f(theta_y)) / (exp(s f(theta_y)) + sum_{k != y} exp(s cos theta_k)) )``

  ``f(theta) = cos(theta + m)`` if ``theta <= pi - m``, else
  ``cos(theta) - m sin(m)`` (PML's continuation that keeps ``f`` decreasing);
  the loss is the mean over the batch.

  Differences from PML: ``margin`` is in radians (PML: degrees, default
  28.6 deg = 0.499 rad; here 0.5 rad = 28.65 deg); at ``theta = 0`` or ``pi``
  exactly (a sample on its proxy) the angle's gradient is the zero
  subgradient instead of PML's NaN.

  Edge cases (value; the gradient is always finite): one class (``K = 1``):
  the only logit is the target, loss 0; a class absent from the batch: its
  proxy only enters the denominators (and gets gradient from them); identical
  embeddings: identical terms; a sample exactly on its proxy: ``theta = 0``,
  target logit ``s cos(m)``; zero embeddings normalise to 0, so every cosine
  is 0 and the target logit ``s cos(pi/2 + m)``; an empty batch: 0 with a
  zero gradient.

  Args:
    embeddings: ``(B, D)`` floating array (L2-normalised inside the loss).
    labels: ``(B,)`` int class ids in ``[0, K)``.
    proxies: ``(K, D)`` class proxies, the dtype of ``embeddings``
      (L2-normalised inside the loss; they receive gradients).
    margin: additive angular margin ``m`` in radians, in ``[0, pi)``.
    scale: the logit scale ``s`` (``> 0``).
    weights: optional ``(B,)`` non-negative per-sample weights (a weighted
      mean over the batch).

  Returns:
    The scalar loss.

  Raises:
    ValueError: on bad shapes or dtypes, a margin outside ``[0, pi)``, a
      non-positive or non-finite scale and, outside ``jit``, NaN embeddings
      or proxies, labels outside ``[0, K)`` or negative weights.

  References:
    Deng, Guo, Xue & Zafeiriou, "ArcFace: Additive Angular Margin Loss for
    Deep Face Recognition", CVPR 2019.

  Example:
    >>> import jax.numpy as jnp
    >>> from sphereembed.losses import arcface
    >>> w = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> # theta = (0, pi/2): logits (8 cos 0.5, 0) = (7.02, 0).
    >>> print(f"{arcface(jnp.array([[2.0, 0.0]]), jnp.array([0]), w, scale=8.0):.6f}")
    0.000893
  """
  embeddings, labels, proxies, weights = check_proxy_inputs(embeddings, labels, proxies, weights)
  dtype = embeddings.dtype
  margin = check_hyperparameter(margin, "margin", dtype, minimum=0.0, maximum=float(jnp.pi),
                                exclusive_maximum=True)
  scale = check_hyperparameter(scale, "scale", dtype, minimum=0.0, exclusive=True)
  cosines = proxy_cosines(embeddings, proxies)
  return _margin_softmax(cosines, labels, weights, scale,
                         lambda c: _arcface_target(c, margin))


def cosface(
    embeddings: jax.Array,
    labels: jax.Array,
    proxies: jax.Array,
    *,
    margin: float | jax.Array = 0.35,
    scale: float | jax.Array = 64.0,
    weights: jax.Array | None = None,
) -> jax.Array:
  """CosFace: softmax cross-entropy with an additive cosine margin (PML's ``CosFaceLoss``).

  For a sample of class ``y`` with cosines ``cos theta_k`` to the normalised
  proxies:

  ``l = -log( exp(s (cos theta_y - m)) / (exp(s (cos theta_y - m)) + sum_{k != y} exp(s cos theta_k)) )``

  and the loss is the mean over the batch (same definition and defaults as
  PML).

  Edge cases (value; the gradient is always finite): ``K = 1``: loss 0; a
  class absent from the batch: its proxy enters the denominators only; a
  sample on its proxy: target logit ``s (1 - m)``; zero embeddings: every
  cosine is 0; an empty batch: 0 with a zero gradient.

  Args:
    embeddings: ``(B, D)`` floating array (L2-normalised inside the loss).
    labels: ``(B,)`` int class ids in ``[0, K)``.
    proxies: ``(K, D)`` class proxies (L2-normalised inside the loss).
    margin: the cosine margin ``m`` (``>= 0``).
    scale: the logit scale ``s`` (``> 0``).
    weights: optional ``(B,)`` non-negative per-sample weights.

  Returns:
    The scalar loss.

  Raises:
    ValueError: on bad shapes or dtypes, a negative or non-finite margin, a
      non-positive or non-finite scale and, outside ``jit``, NaN embeddings or
      proxies, labels outside ``[0, K)`` or negative weights.

  References:
    Wang, Wang, Zhou, Ji, Gong, Zhou, Li & Liu, "CosFace: Large Margin Cosine
    Loss for Deep Face Recognition", CVPR 2018.

  Example:
    >>> import jax.numpy as jnp
    >>> from sphereembed.losses import cosface
    >>> w = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> # logits (8 (1 - 0.35), 0) = (5.2, 0).
    >>> print(f"{cosface(jnp.array([[2.0, 0.0]]), jnp.array([0]), w, scale=8.0):.6f}")
    0.005501
  """
  embeddings, labels, proxies, weights = check_proxy_inputs(embeddings, labels, proxies, weights)
  dtype = embeddings.dtype
  margin = check_hyperparameter(margin, "margin", dtype, minimum=0.0)
  scale = check_hyperparameter(scale, "scale", dtype, minimum=0.0, exclusive=True)
  cosines = proxy_cosines(embeddings, proxies)
  return _margin_softmax(cosines, labels, weights, scale, lambda c: c - margin)


def subcenter_arcface(
    embeddings: jax.Array,
    labels: jax.Array,
    proxies: jax.Array,
    *,
    num_subcenters: int = 3,
    margin: float | jax.Array = 0.5,
    scale: float | jax.Array = 64.0,
    weights: jax.Array | None = None,
) -> jax.Array:
  """Sub-center ArcFace (PML's ``SubCenterArcFaceLoss``): ArcFace on the nearest sub-center.

  Each class ``k`` has ``S = num_subcenters`` proxies, rows
  ``k * S, ..., k * S + S - 1`` of ``proxies`` (PML's layout). The cosine of
  a sample to class ``k`` is the largest cosine to its sub-centers,
  ``cos theta_k = max_s cos(x, w_{k,s})``, and the loss is :func:`arcface`
  on these ``K`` cosines. Where sub-centers tie for the max, the gradient is
  split between them (JAX's convention for ``max``).

  Differences from PML: as :func:`arcface` (margin in radians, zero
  subgradient at ``theta = 0``). PML's ``get_outliers`` (dropping samples far
  from their dominant sub-center) is a separate data-cleaning step, not part
  of the loss, and is not provided.

  Edge cases: as :func:`arcface`; with ``num_subcenters=1`` it is
  :func:`arcface`.

  Args:
    embeddings: ``(B, D)`` floating array (L2-normalised inside the loss).
    labels: ``(B,)`` int class ids in ``[0, K)``.
    proxies: ``(K * num_subcenters, D)`` sub-center proxies (L2-normalised
      inside the loss).
    num_subcenters: ``S``, a positive Python int (static).
    margin: additive angular margin in radians, in ``[0, pi)``.
    scale: the logit scale (``> 0``).
    weights: optional ``(B,)`` non-negative per-sample weights.

  Returns:
    The scalar loss.

  Raises:
    ValueError: as :func:`arcface`, and when ``num_subcenters`` is not a
      positive int or does not divide the number of proxies.

  References:
    Deng, Guo, Liu, Zafeiriou & Lu, "Sub-center ArcFace: Boosting Face
    Recognition by Large-Scale Noisy Web Faces", ECCV 2020.

  Example:
    >>> import jax.numpy as jnp
    >>> from sphereembed.losses import subcenter_arcface
    >>> w = jnp.array([[0.0, -1.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # 2 classes x 2
    >>> # class 0's nearest sub-center is [1, 0]: the arcface example.
    >>> x = jnp.array([[2.0, 0.0]])
    >>> print(f"{subcenter_arcface(x, jnp.array([0]), w, num_subcenters=2, scale=8.0):.6f}")
    0.000893
  """
  try:
    num_subcenters = operator.index(num_subcenters)
  except TypeError:
    raise ValueError(
        f"num_subcenters must be a positive Python int, got {num_subcenters!r}.") from None
  if num_subcenters < 1:
    raise ValueError(f"num_subcenters must be >= 1, got {num_subcenters}.")
  embeddings, labels, proxies, weights = check_proxy_inputs(
      embeddings, labels, proxies, weights, num_classes_divisor=num_subcenters)
  dtype = embeddings.dtype
  margin = check_hyperparameter(margin, "margin", dtype, minimum=0.0, maximum=float(jnp.pi),
                                exclusive_maximum=True)
  scale = check_hyperparameter(scale, "scale", dtype, minimum=0.0, exclusive=True)
  cosines = proxy_cosines(embeddings, proxies)
  num_classes = proxies.shape[0] // num_subcenters
  cosines = jnp.max(cosines.reshape(cosines.shape[0], num_classes, num_subcenters), axis=2)
  return _margin_softmax(cosines, labels, weights, scale,
                         lambda c: _arcface_target(c, margin))


def normalized_softmax(
    embeddings: jax.Array,
    labels: jax.Array,
    proxies: jax.Array,
    *,
    temperature: float | jax.Array = 0.05,
    weights: jax.Array | None = None,
) -> jax.Array:
  """Normalized softmax (NormFace; PML's ``NormalizedSoftmaxLoss``).

  Softmax cross-entropy of the cosine similarities to the normalised proxies
  divided by a temperature ``T``:

  ``l = -log( exp(cos theta_y / T) / sum_k exp(cos theta_k / T) )``

  and the loss is the mean over the batch (PML's definition and default).

  Edge cases (value; the gradient is always finite): ``K = 1``: loss 0; a
  class absent from the batch: its proxy enters the denominators only; zero
  embeddings: all cosines 0, loss ``log K``; an empty batch: 0.

  Args:
    embeddings: ``(B, D)`` floating array (L2-normalised inside the loss).
    labels: ``(B,)`` int class ids in ``[0, K)``.
    proxies: ``(K, D)`` class proxies (L2-normalised inside the loss).
    temperature: ``T > 0``.
    weights: optional ``(B,)`` non-negative per-sample weights.

  Returns:
    The scalar loss.

  Raises:
    ValueError: on bad shapes or dtypes, a non-positive or non-finite
      temperature and, outside ``jit``, NaN embeddings or proxies, labels
      outside ``[0, K)`` or negative weights.

  References:
    Wang, Xiang, Cheng & Yuille, "NormFace: L2 Hypersphere Embedding for Face
    Verification", ACM MM 2017; Zhai & Wu, "Classification is a Strong
    Baseline for Deep Metric Learning", BMVC 2019.

  Example:
    >>> import jax.numpy as jnp
    >>> from sphereembed.losses import normalized_softmax
    >>> w = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> # logits (1, 0) / 0.5 = (2, 0): log(1 + exp(-2)).
    >>> print(f"{normalized_softmax(jnp.array([[3.0, 0.0]]), jnp.array([0]), w, temperature=0.5):.4f}")
    0.1269
  """
  embeddings, labels, proxies, weights = check_proxy_inputs(embeddings, labels, proxies, weights)
  temperature = check_hyperparameter(temperature, "temperature", embeddings.dtype, minimum=0.0,
                                     exclusive=True)
  logits = proxy_cosines(embeddings, proxies) / temperature
  return _mean(_cross_entropy(logits, labels), weights)
