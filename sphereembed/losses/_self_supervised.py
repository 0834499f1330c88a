"""Self-supervised and supervised contrastive losses: NT-Xent (SimCLR) and SupCon.

:func:`ntxent` is SimCLR's normalised-temperature cross-entropy generalised to
any labelling of the batch: with one label per pair of augmented views it is
exactly NT-Xent, with class labels it is the supervised contrastive loss
``L_out`` of Khosla et al.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sphereembed import geometry
from sphereembed.losses import _common, checks, masks

__all__ = ["ntxent"]


def ntxent(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    temperature: float | jax.Array = 0.1,
    weights: jax.Array | None = None,
) -> jax.Array:
  """NT-Xent (SimCLR) / supervised contrastive loss ``L_out`` (Khosla et al.).

  With similarities ``s_ij = e_i . e_j`` (pass unit vectors: the embeddings are
  used as given, see :func:`sphereembed.geometry.l2_normalize`), for each
  anchor ``i`` with a non-empty set ``P_i`` of positives (``p != i`` sharing a
  label with ``i``):

  ``l_i = -1/|P_i| sum_{p in P_i} log( exp(s_ip/T) / sum_{k != i} exp(s_ik/T) )``

  and the loss is the mean of ``l_i`` over the anchors that have a positive.
  The log-softmax is shifted by each row's largest off-diagonal logit (a
  constant for autodiff) and the diagonal is removed with ``where``, so the
  loss and its gradient are finite for any temperature.

  SimCLR: for ``N`` images with two augmented views each, stack the ``2N``
  views and give both views of image ``n`` the label ``n``; every anchor then
  has exactly one positive (its other view) and ``l_i`` is SimCLR's
  ``-log(exp(s_ij/T) / sum_{k != i} exp(s_ik/T))`` averaged over the ``2N``
  anchors, i.e. NT-Xent (see the example).

  Edge cases (value; the gradient is always finite):

  * one class (no negatives): each anchor's term is
    ``logsumexp_{k != i} s_ik/T - mean_{k != i} s_ik/T >= log(B - 1)``;
  * only singleton classes (no positives), or one sample: 0 with a zero
    gradient;
  * duplicate embeddings (all ``B`` equal) or zero embeddings (all ``s = 0``):
    the softmax is uniform and every anchor with a positive has
    ``l_i = log(B - 1)``; the gradient is finite (zero for all-zero
    embeddings, by symmetry).

  Args:
    embeddings: ``(B, D)`` floating array, expected to be unit vectors.
    labels: ``(B,)`` int ids or ``(B, C)`` multi-hot labels (samples sharing
      at least one label are positives; a sample without labels is never an
      anchor but still appears in the other anchors' denominators).
    temperature: the scalar temperature ``T > 0`` (may be traced).
    weights: optional ``(B,)`` non-negative per-sample weights; ``l_i`` is
      weighted by its anchor's weight (a weighted mean over anchors).

  Returns:
    The scalar loss.

  Raises:
    ValueError: on bad shapes or dtypes, a non-scalar temperature, a
      temperature that is not a positive finite real number (a Python number
      is checked also under ``jit``, an array when concrete) and, when called
      outside ``jit``, NaN embeddings, embeddings whose squared norm over
      ``T`` exceeds the supported range
      (:func:`sphereembed.losses.checks.max_norm` times ``sqrt(T)``), invalid
      labels or negative weights.

  References:
    Chen, Kornblith, Norouzi & Hinton, "A Simple Framework for Contrastive
    Learning of Visual Representations" (SimCLR), ICML 2020.
    Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020.

  Example:
    SimCLR's NT-Xent for two images with two views each:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> from sphereembed.geometry import l2_normalize
    >>> from sphereembed.losses import ntxent
    >>> views = l2_normalize(jax.random.normal(jax.random.key(0), (4, 8)))
    >>> labels = jnp.array([0, 1, 0, 1])  # view n and view n + 2 are a pair
    >>> logits = views @ views.T / 0.5
    >>> logits = jnp.where(jnp.eye(4, dtype=bool), -jnp.inf, logits)
    >>> log_prob = jax.nn.log_softmax(logits, axis=1)
    >>> partner = jnp.array([2, 3, 0, 1])
    >>> simclr = -jnp.mean(log_prob[jnp.arange(4), partner])
    >>> bool(jnp.allclose(ntxent(views, labels, temperature=0.5), simclr))
    True
  """
  embeddings = checks.check_embeddings(embeddings)
  batch_size, dtype = embeddings.shape[0], embeddings.dtype
  labels = checks.check_labels(labels, batch_size)
  weights = checks.check_weights(weights, batch_size, dtype)
  # Python numbers are checked always (also under jit), arrays when concrete.
  checks.validate_scalar(temperature, "temperature", minimum=0.0, strict=True)
  temperature_value = checks.concrete_value(temperature)
  temperature = checks.check_scalar(temperature, "temperature", dtype)
  checks.validate_if_concrete(embeddings, labels, weights, magnitude=False)
  if checks.is_concrete(embeddings):
    # The logits s_ij / T (|s_ij| <= max ||x||^2) and their row sums must be finite.
    scale = 1.0 if temperature_value is None else 1.0 / float(np.sqrt(temperature_value))
    checks.validate_magnitude(embeddings, scale=scale)
  if batch_size == 0:  # no anchor: 0 (the gradient is the empty array)
    return jnp.zeros((), dtype)

  similarities = geometry.self_gram(embeddings)
  others = ~jnp.eye(batch_size, dtype=bool)
  positives, _ = masks.pair_masks(labels)

  # log-softmax over k != i, shifted by the row's largest off-diagonal
  # similarity before the division by T: the differences are <= 0 and at most
  # 2 max ||x||^2 / T in size (dividing first could overflow where they do not).
  lowest = jnp.finfo(dtype).min
  shift = jax.lax.stop_gradient(
      jnp.max(jnp.where(others, similarities, lowest), axis=1, keepdims=True))
  shifted = jnp.where(others, (similarities - shift) / temperature, 0)  # <= 0 off the diagonal
  exp_sum = jnp.sum(jnp.where(others, jnp.exp(shifted), 0), axis=1)
  # The row maximum contributes exp(0) = 1, so exp_sum >= 1 whenever the row
  # has an off-diagonal entry; rows without one (B = 1) never are anchors.
  log_denominator = jnp.log(jnp.where(exp_sum > 0, exp_sum, 1))

  num_positives = jnp.sum(positives, axis=1)
  is_anchor = num_positives > 0
  mean_positive = (jnp.sum(jnp.where(positives, shifted, 0), axis=1)
                   / jnp.maximum(num_positives, 1).astype(dtype))
  per_anchor = log_denominator - mean_positive
  return _common.weighted_mean(per_anchor, is_anchor, weights)
