"""Pair losses: the contrastive loss over a batch and siamese losses on explicit pairs.

* :func:`contrastive` scores every pair of a labelled batch (Hadsell, Chopra &
  LeCun 2006): positives are pulled together, negatives pushed beyond a margin.
* :func:`siamese_l1_bce` and :func:`siamese_cosine_bce` take explicit pairs
  ``(embeddings1[n], embeddings2[n])`` with a "same"/"different" target and a
  binary cross-entropy on a match logit (Koch, Zemel & Salakhutdinov 2015).

Cross-entropies are computed from logits (``log_sigmoid``), never from
probabilities, so they are finite for any finite logit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sphereembed import geometry
from sphereembed.losses import _common, checks, masks

__all__ = ["contrastive", "siamese_cosine_bce", "siamese_l1_bce"]


# ----------------------------------------------------------------------------
# Contrastive loss over a labelled batch.


def _contrastive_terms(squared, distances, same, margin):
  """Per-pair loss: ``0.5 d^2`` for positives, ``0.5 relu(margin - d)^2`` otherwise."""
  return 0.5 * jnp.where(same, squared, jnp.square(jax.nn.relu(margin - distances)))


def _pair_weights(sample_weights):
  """``w_i w_j`` off the diagonal, 0 on it."""
  off_diagonal = 1 - jnp.eye(sample_weights.shape[0], dtype=sample_weights.dtype)
  return sample_weights[:, None] * sample_weights[None, :] * off_diagonal


@jax.custom_jvp
def _euclidean_contrastive_sum(embeddings, sample_weights, labels, margin):
  """``sum_{i != j} w_i w_j term(d_ij)`` for euclidean distances.

  The derivative is written by hand as ``g = 4 (r x - W x)``, with
  ``W_ij = w_i w_j dterm/d(d^2)`` and ``r`` its row sums. Positive pairs have
  the constant slope 1/2, so for int labels their part of ``W x`` comes from
  class sums in O(B D). Negative pairs contribute only inside the margin, and
  their B x B x D matmul is skipped (``lax.cond``) when none is, the usual
  case once classes are apart. Autodiff of the Gram form would take about ten
  B x B passes and two matmuls. Forward mode and higher derivatives work as
  usual.
  """
  squared = geometry.pairwise_distances(embeddings, metric="squared_euclidean")
  same = masks.positive_mask(labels)
  terms = _contrastive_terms(squared, geometry.safe_sqrt(squared), same, margin)
  return jnp.sum(_pair_weights(sample_weights) * terms)


@_euclidean_contrastive_sum.defjvp
def _euclidean_contrastive_sum_jvp(primals, tangents):
  embeddings, sample_weights, labels, margin = primals
  d_embeddings, d_sample_weights, _, d_margin = tangents
  batch_size = embeddings.shape[0]
  squared = geometry.pairwise_distances(embeddings, metric="squared_euclidean")
  distances = geometry.safe_sqrt(squared)
  same = masks.positive_mask(labels)
  pair_weights = _pair_weights(sample_weights)
  terms = _contrastive_terms(squared, distances, same, margin)
  gap = jax.nn.relu(margin - distances)
  # d term / d(d^2) of a negative pair inside the margin: -(margin - d) / (2 d)
  # (the zero subgradient at d = 0).
  pulled = ~same & (gap > 0) & (squared > 0)
  w_negative = pair_weights * jnp.where(pulled, -0.5 * gap / jnp.where(pulled, distances, 1), 0)

  def matmul(w):
    return jnp.matmul(w, embeddings, precision=jax.lax.Precision.HIGHEST)

  # d(d_ij^2) = 2 (x_i - x_j).(dx_i - dx_j), so a symmetric W gives the
  # gradient 4 (rowsum(W) x - W x); negative and positive pairs separately.
  negative_product = jax.lax.cond(
      jnp.any(pulled), matmul, lambda w: jnp.zeros_like(embeddings), w_negative)
  gradient = 4.0 * (jnp.sum(w_negative, axis=1, keepdims=True) * embeddings - negative_product)
  if labels.ndim == 1:
    # sum_j w_j (x_i - x_j) over the class of i, from class sums indexed by
    # each class's first sample (a segment id that needs no label range).
    column = jax.lax.broadcasted_iota(jnp.int32, same.shape, 1)
    first = jnp.min(jnp.where(same, column, batch_size), axis=1)
    u = sample_weights

    def class_sum(values):
      return jax.ops.segment_sum(values, first, num_segments=batch_size)[first]

    gradient = gradient + 2.0 * u[:, None] * (
        class_sum(u)[:, None] * embeddings - class_sum(u[:, None] * embeddings))
  else:
    w_positive = pair_weights * jnp.where(same & (squared > 0), 0.5, 0)
    gradient = gradient + 4.0 * (jnp.sum(w_positive, axis=1, keepdims=True) * embeddings
                                 - matmul(w_positive))
  # d(w_i w_j) = dw_i w_j + w_i dw_j, and the terms are symmetric.
  row_terms = jnp.sum(terms * _pair_weights(jnp.ones_like(sample_weights)) * sample_weights, axis=1)
  tangent = (jnp.sum(d_embeddings * gradient) + 2.0 * jnp.sum(d_sample_weights * row_terms)
             + d_margin * jnp.sum(pair_weights * jnp.where(same, 0, gap)))
  return jnp.sum(pair_weights * terms), tangent


def contrastive(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    margin: float = 1.0,
    metric: geometry.Metric = "euclidean",
    weights: jax.Array | None = None,
    return_stats: bool = False,
):
  """Contrastive loss over all pairs of a batch (Hadsell, Chopra & LeCun).

  For every valid pair ``i < j`` with distance ``d = d(x_i, x_j)``:
  ``0.5 * d^2`` if ``i`` and ``j`` are positives (same label) and
  ``0.5 * relu(margin - d)^2`` if they are negatives; the loss is the mean over
  all pairs. With ``metric="euclidean"`` the positive term ``0.5 * d^2`` is
  taken from the squared distance directly, so its gradient is exact (and 0)
  at ``d = 0`` rather than going through a square root.

  Edge cases (value; the gradient is always finite, never NaN):

  * one class (no negatives): the mean of ``0.5 * d^2`` over all pairs;
  * only singleton classes (no positives): the mean of
    ``0.5 * relu(margin - d)^2`` over all pairs;
  * one sample (no pair): 0 with a zero gradient;
  * duplicate embeddings (``d = 0``): a positive duplicate pair adds 0, a
    negative one ``0.5 * margin^2``; at ``d = 0`` the euclidean and
    great-circle distances have the zero subgradient, so that pair does not
    push the duplicates apart (their direction is undefined);
  * zero embeddings: ``metric="euclidean"`` gives ``d = 0`` for all pairs,
    hence ``0.5 * margin^2`` times the share of negative pairs, with a zero
    gradient (``"cosine"``/``"great_circle"`` are meant for unit vectors).

  Args:
    embeddings: ``(B, D)`` floating array, used as given (``"cosine"`` and
      ``"great_circle"`` expect unit vectors, see
      :func:`sphereembed.geometry.l2_normalize`).
    labels: ``(B,)`` int class ids or ``(B, C)`` multi-hot labels (samples
      sharing at least one label are positives; a sample without labels is a
      negative of every other sample).
    margin: negatives closer than ``margin`` are penalised (a scalar, may be
      traced).
    metric: a metric of :func:`sphereembed.geometry.pairwise_distances`;
      ``d`` is that metric's value (for ``"squared_euclidean"``, the positive
      term is ``0.5 * ||x_i - x_j||^4``).
    weights: optional ``(B,)`` non-negative per-sample weights; the pair
      ``(i, j)`` has weight ``w_i * w_j`` and the loss is the weighted mean.
    return_stats: also return a dict with ``fraction_active`` (share of the
      negative pairs inside the margin, ``d < margin``), ``num_active`` and
      ``num_valid`` (number of negative pairs ``i < j``), unweighted.

  Returns:
    The scalar loss, or ``(loss, stats)`` with ``return_stats=True``.

  Raises:
    ValueError: on bad shapes or dtypes, a non-scalar, complex, NaN or
      infinite margin (a Python number is checked also under ``jit``), an
      unknown metric and, when called outside ``jit`` (also under an eager
      ``jax.grad``), NaN embeddings, embeddings of norm above
      :func:`sphereembed.losses.checks.max_norm`, invalid labels or negative
      weights.

  References:
    Hadsell, Chopra & LeCun, "Dimensionality Reduction by Learning an
    Invariant Mapping", CVPR 2006.

  Example:
    >>> import jax.numpy as jnp
    >>> from sphereembed.losses import contrastive
    >>> x = jnp.array([[0.0, 0.0], [0.6, 0.0], [0.0, 0.8]])
    >>> # pairs: (0,1) positive 0.5*0.36; (0,2) negative 0.5*0.2^2; (1,2) d=1.
    >>> print(f"{contrastive(x, jnp.array([0, 0, 1]), margin=1.0):.4f}")
    0.0667
  """
  embeddings = checks.check_embeddings(embeddings)
  batch_size, dtype = embeddings.shape[0], embeddings.dtype
  labels = checks.check_labels(labels, batch_size)
  weights = checks.check_weights(weights, batch_size, dtype)
  # Python numbers are checked always (also under jit), arrays when concrete.
  checks.validate_scalar(margin, "margin")
  margin = checks.check_scalar(margin, "margin", dtype)
  if metric not in geometry.METRICS:
    raise ValueError(f"Unknown metric {metric!r}; expected one of {geometry.METRICS}.")
  checks.validate_if_concrete(embeddings, labels, weights)
  if batch_size == 0:  # no pair: 0 (the gradient is the empty array)
    loss = jnp.zeros((), dtype)
    return (loss, _common.active_stats(0, 0, dtype)) if return_stats else loss

  same = masks.positive_mask(labels)
  # Pair losses and pair weights are symmetric, so the mean over i < j equals
  # the mean over all i != j, which needs no triangular mask.
  sample_weights = jnp.ones((batch_size,), dtype) if weights is None else weights
  pair_weights = _pair_weights(sample_weights)
  if metric == "euclidean":
    total = _euclidean_contrastive_sum(embeddings, sample_weights, labels, margin)
  else:
    distances = geometry.pairwise_distances(embeddings, metric=metric)
    total = jnp.sum(pair_weights * _contrastive_terms(jnp.square(distances), distances, same, margin))
  weight_sum = jnp.sum(pair_weights)
  loss = jnp.where(weight_sum > 0, total / jnp.where(weight_sum > 0, weight_sum, 1), 0)
  if return_stats:
    distances = geometry.pairwise_distances(jax.lax.stop_gradient(embeddings), metric=metric)
    negatives = ~same & ~jnp.eye(batch_size, dtype=bool)
    # Each unordered pair appears twice in the symmetric masks.
    return loss, _common.active_stats(
        jnp.sum(negatives & (distances < margin)) // 2, jnp.sum(negatives) // 2, dtype)
  return loss


# ----------------------------------------------------------------------------
# Siamese losses on explicit pairs.


def _check_pairs(embeddings1, embeddings2, is_same, weights):
  """Static checks of the siamese inputs; value checks when concrete."""
  embeddings1 = checks.check_embeddings(embeddings1, "embeddings1")
  embeddings2 = checks.check_embeddings(embeddings2, "embeddings2")
  if embeddings1.shape != embeddings2.shape:
    raise ValueError(
        f"embeddings1 and embeddings2 must have the same shape (N, D), got "
        f"{embeddings1.shape} and {embeddings2.shape}.")
  if embeddings1.dtype != embeddings2.dtype:
    raise ValueError(
        f"embeddings1 and embeddings2 must have the same dtype, got "
        f"{embeddings1.dtype} and {embeddings2.dtype}.")
  num_pairs, dtype = embeddings1.shape[0], embeddings1.dtype
  is_same = jnp.asarray(is_same)
  if is_same.shape != (num_pairs,):
    raise ValueError(f"is_same must have shape ({num_pairs},), got {is_same.shape}.")
  if not (is_same.dtype == jnp.bool_ or jnp.issubdtype(is_same.dtype, jnp.integer)
          or jnp.issubdtype(is_same.dtype, jnp.floating)):
    raise ValueError(f"is_same must be bool, integer or float 0/1, got dtype {is_same.dtype}.")
  weights = checks.check_weights(weights, num_pairs, dtype)
  for name, array in (("embeddings1", embeddings1), ("embeddings2", embeddings2)):
    if checks.is_concrete(array):
      checks.validate_embeddings(array, name)
      checks.validate_magnitude(array, name)
  if checks.is_concrete(is_same):
    values = checks.concrete_value(is_same)
    if not np.all((values == 0) | (values == 1)):
      raise ValueError("is_same must contain only 0 and 1 (or False/True).")
  if weights is not None and checks.is_concrete(weights):
    checks.validate_weights(weights)
  return embeddings1, embeddings2, is_same.astype(dtype), weights


def _validate_finite(value, name):
  if checks.is_concrete(value) and not np.all(np.isfinite(checks.concrete_value(value))):
    raise ValueError(f"{name} contains NaN or infinite values.")


def _abs(x: jax.Array) -> jax.Array:
  """``|x|`` with the zero (minimum-norm) subgradient at 0, as in ``geometry``."""
  return jnp.where(x != 0, jnp.abs(x), 0)


def _mean_bce(logits, targets, weights):
  losses = optax.sigmoid_binary_cross_entropy(logits, targets)
  return _common.weighted_mean(losses, jnp.ones(losses.shape, bool), weights)


def siamese_l1_bce(
    embeddings1: jax.Array,
    embeddings2: jax.Array,
    is_same: jax.Array,
    weight: jax.Array,
    bias: jax.Array,
    *,
    weights: jax.Array | None = None,
) -> jax.Array:
  """Binary cross-entropy on a weighted L1 distance (Koch et al. siamese nets).

  For each pair ``n``: ``logit_n = weight . |f1_n - f2_n| + bias`` is the
  logit that the two samples match, and the loss is the binary cross-entropy
  ``-[y log sigmoid(logit) + (1 - y) log sigmoid(-logit)]`` against
  ``y = is_same[n]``, computed from the logit (stable for any logit), averaged
  over the pairs. ``weight`` and ``bias`` are the learned parameters of the
  final logistic unit (e.g. ``kernel[:, 0]`` and ``bias[0]`` of a
  ``flax.linen.Dense(1)``); the model usually learns negative entries of
  ``weight``, so that close pairs (small ``|f1 - f2|``) get a high match
  logit. The absolute value has the zero subgradient where ``f1 == f2``.

  Edge cases (value; the gradient is always finite): all pairs "same" or all
  "different" (one class, or only singleton classes): the mean of the one
  BCE term present; one pair: its BCE; duplicate or zero embeddings
  (``f1 == f2``): ``logit = bias``, loss ``softplus(bias) - y * bias``, and
  a zero gradient with respect to the embeddings; no pair (``N = 0``): 0.

  Args:
    embeddings1: ``(N, D)`` floating array, first member of each pair.
    embeddings2: ``(N, D)`` array of the same shape and dtype.
    is_same: ``(N,)`` bool, or integer/float with values 0 and 1: whether the
      pair shows the same class.
    weight: ``(D,)`` floating weights of the L1 components.
    bias: scalar bias of the logit.
    weights: optional ``(N,)`` non-negative per-pair weights (a weighted mean).

  Returns:
    The scalar loss.

  Raises:
    ValueError: on bad shapes or dtypes and, when called outside ``jit``, NaN
      or infinite embeddings or parameters, ``is_same`` values other than 0/1
      or negative weights.

  References:
    Koch, Zemel & Salakhutdinov, "Siamese Neural Networks for One-shot Image
    Recognition", ICML Deep Learning Workshop 2015.

  Example:
    >>> import jax.numpy as jnp
    >>> from sphereembed.losses import siamese_l1_bce
    >>> f1 = jnp.array([[0.0, 0.0], [0.0, 0.0]])
    >>> f2 = jnp.array([[0.1, 0.0], [1.0, 2.0]])
    >>> w = jnp.array([-2.0, -2.0])
    >>> # logits 1.8 (same, loss 0.153) and -4.0 (different, loss 0.018).
    >>> print(f"{siamese_l1_bce(f1, f2, jnp.array([True, False]), w, 2.0):.4f}")
    0.0856
  """
  embeddings1, embeddings2, targets, weights = _check_pairs(
      embeddings1, embeddings2, is_same, weights)
  dim, dtype = embeddings1.shape[1], embeddings1.dtype
  weight = jnp.asarray(weight)
  if weight.shape != (dim,):
    raise ValueError(f"weight must have shape ({dim},), got {weight.shape}.")
  if not jnp.issubdtype(weight.dtype, jnp.floating):
    raise ValueError(f"weight must have a floating dtype, got {weight.dtype}.")
  weight = weight.astype(dtype)
  raw_bias = bias
  bias = checks.check_scalar(bias, "bias", dtype)
  _validate_finite(weight, "weight")
  _validate_finite(bias, "bias")
  checks.validate_scalar(raw_bias, "bias")  # a Python number: checked also under jit

  # A sum rather than a matmul: exact float products on every backend.
  logits = jnp.sum(_abs(embeddings1 - embeddings2) * weight, axis=-1) + bias
  return _mean_bce(logits, targets, weights)


def _safe_cosine(x: jax.Array, y: jax.Array) -> jax.Array:
  """Row-wise cosine similarity; 0 with a zero gradient when a row is zero."""
  x_norm = geometry.safe_sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
  y_norm = geometry.safe_sqrt(jnp.sum(jnp.square(y), axis=-1, keepdims=True))
  nonzero = (x_norm > 0) & (y_norm > 0)
  # Each vector is normalised before the product (no overflow of |x| |y|); the
  # double `where` keeps the unselected branch finite for a zero vector.
  x_unit = x / jnp.where(nonzero, x_norm, 1)
  y_unit = y / jnp.where(nonzero, y_norm, 1)
  return jnp.where(nonzero[:, 0], jnp.sum(x_unit * y_unit, axis=-1), 0)


def siamese_cosine_bce(
    embeddings1: jax.Array,
    embeddings2: jax.Array,
    is_same: jax.Array,
    *,
    scale: float | jax.Array = 10.0,
    bias: float | jax.Array = -5.0,
    weights: jax.Array | None = None,
) -> jax.Array:
  """Binary cross-entropy on a scaled cosine similarity of explicit pairs.

  For each pair ``n``: ``logit_n = scale * cos(f1_n, f2_n) + bias`` with the
  true cosine similarity ``f1 . f2 / (|f1| |f2|)`` (the embeddings need not be
  unit vectors), then the binary cross-entropy against ``is_same`` from the
  logit, averaged over the pairs. ``scale`` and ``bias`` may be learned
  parameters (scalar arrays; the loss is differentiable in them). The
  defaults map ``cos = 0.5`` to a match probability of 1/2.

  Edge cases (value; the gradient is always finite): all pairs "same" or all
  "different" (one class, or only singleton classes): the mean of the one
  BCE term present; one pair: its BCE; duplicate embeddings: ``cos = 1``
  (up to rounding), ``logit = scale + bias``; zero embeddings (either member
  zero, or its squared norm underflowing to 0): ``cos = 0`` with a zero
  gradient with respect to that pair's embeddings, ``logit = bias``; no pair
  (``N = 0``): 0.

  Args:
    embeddings1: ``(N, D)`` floating array, first member of each pair.
    embeddings2: ``(N, D)`` array of the same shape and dtype.
    is_same: ``(N,)`` bool, or integer/float with values 0 and 1.
    scale: scalar multiplying the cosine similarity.
    bias: scalar added to the logit.
    weights: optional ``(N,)`` non-negative per-pair weights (a weighted mean).

  Returns:
    The scalar loss.

  Raises:
    ValueError: on bad shapes or dtypes and, when called outside ``jit``, NaN
      or infinite embeddings or parameters, ``is_same`` values other than 0/1
      or negative weights.

  References:
    Koch, Zemel & Salakhutdinov, "Siamese Neural Networks for One-shot Image
    Recognition", ICML Deep Learning Workshop 2015 (here with a cosine
    similarity instead of the weighted L1 distance).

  Example:
    >>> import jax.numpy as jnp
    >>> from sphereembed.losses import siamese_cosine_bce
    >>> f1 = jnp.array([[1.0, 0.0], [1.0, 0.0]])
    >>> f2 = jnp.array([[2.0, 0.0], [0.0, 3.0]])
    >>> # cosines 1 and 0: logits 5 (same) and -5 (different), each loss 0.0067.
    >>> print(f"{siamese_cosine_bce(f1, f2, jnp.array([1, 0])):.4f}")
    0.0067
  """
  embeddings1, embeddings2, targets, weights = _check_pairs(
      embeddings1, embeddings2, is_same, weights)
  dtype = embeddings1.dtype
  raw_scale, raw_bias = scale, bias
  scale = checks.check_scalar(scale, "scale", dtype)
  bias = checks.check_scalar(bias, "bias", dtype)
  _validate_finite(scale, "scale")
  _validate_finite(bias, "bias")
  # Python numbers are checked also under jit (the arrays above are traced there).
  checks.validate_scalar(raw_scale, "scale")
  checks.validate_scalar(raw_bias, "bias")

  logits = scale * _safe_cosine(embeddings1, embeddings2) + bias
  return _mean_bce(logits, targets, weights)
