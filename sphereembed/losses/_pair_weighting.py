"""Pair-weighting losses: multi-similarity, circle and generalised lifted structure.

Each anchor's positives and negatives are weighted through a log-sum-exp of
their similarities (or distances), so hard pairs dominate without any
explicit mining. All three follow pytorch-metric-learning (PML): cosine
similarities (or euclidean distances) of L2-normalised embeddings over all
pairs ``i != j`` of the batch, one loss term per anchor, PML's reducer.

Every loss also takes ``references=`` / ``reference_labels=`` /
``reference_mask=``: anchors (queries) are then the batch and the pairs are
(query, reference) pairs, as PML's ``ref_emb`` / ``ref_labels`` do. This is
how :func:`sphereembed.memory.memory_loss` scores a batch against a
cross-batch memory.

The module also holds the two helpers shared by the new loss modules:
:func:`masked_logsumexp` (PML's masked log-sum-exp, numerically stable) and
:func:`check_hyperparameter` (static and value checks of scalar
hyper-parameters).
"""

from __future__ import annotations


import jax
import jax.numpy as jnp

from sphereembed import geometry
from sphereembed.losses import _common, checks, masks

__all__ = [
    "check_hyperparameter",
    "circle",
    "lifted_structure",
    "masked_logsumexp",
    "multi_similarity",
]


# ----------------------------------------------------------------------------
# Shared helpers.


def check_hyperparameter(value, name: str, dtype, *, minimum: float | None = None,
                         exclusive: bool = False, maximum: float | None = None,
                         exclusive_maximum: bool = False) -> jax.Array:
  """A real scalar hyper-parameter cast to ``dtype``, checked whenever its value is known.

  Static checks (always): a real scalar (complex, bool, arrays raise). Value
  checks (:func:`sphereembed.losses.checks.validate_scalar`, after the cast:
  ``1e40`` in float32 is ``inf``): finite, ``>= minimum`` (``> minimum`` with
  ``exclusive``) and ``<= maximum`` (``< maximum`` with ``exclusive_maximum``).

  Raises:
    ValueError: when a check fails.
  """
  raw = jnp.asarray(value) if not isinstance(value, jax.core.Tracer) else value
  if raw.dtype == jnp.bool_:
    raise ValueError(f"{name} must be a real number, got a bool.")
  value = checks.check_scalar(value, name, dtype)
  checks.validate_scalar(value, name, minimum=minimum, maximum=maximum, strict=exclusive,
                         strict_maximum=exclusive_maximum)
  return value


def masked_logsumexp(x: jax.Array, mask: jax.Array, axis: int, *, add_one: bool = False,
                     log_weights: jax.Array | None = None) -> jax.Array:
  """``log(sum_{mask} w exp(x) [+ 1])`` along ``axis``; 0 where the mask is empty.

  PML's ``lmu.logsumexp`` (``add_one`` adds the ``exp(0) = 1`` term), in the
  max-shifted form: finite for any finite ``x``; entries outside the mask
  never reach ``exp`` (no ``0 * inf`` in the gradient). A row with an empty
  mask is 0 with a zero gradient, as in PML. ``log_weights`` (broadcast
  against ``x``, finite where ``mask``) adds ``log w`` to the kept entries.
  """
  if log_weights is not None:
    x = x + log_weights
  kept = jnp.where(mask, x, -jnp.inf)
  shift = jnp.max(kept, axis=axis, keepdims=True, initial=-jnp.inf)
  if add_one:
    shift = jnp.maximum(shift, 0)
  shift = jax.lax.stop_gradient(jnp.where(jnp.isfinite(shift), shift, 0))
  terms = jnp.where(mask, jnp.exp(jnp.where(mask, x, shift) - shift), 0)
  total = jnp.sum(terms, axis=axis, keepdims=True)
  if add_one:
    total = total + jnp.exp(-shift)
  nonempty = jnp.any(mask, axis=axis, keepdims=True)
  out = jnp.where(nonempty, shift + jnp.log(jnp.where(nonempty, total, 1)), 0)
  return jnp.squeeze(out, axis=axis)


# ----------------------------------------------------------------------------
# Pairs of a batch, or of queries and references.


def _cross_positive_mask(labels: jax.Array, reference_labels: jax.Array) -> jax.Array:
  """``(B, M)`` mask of (query, reference) pairs sharing a class (as ``masks``)."""
  if labels.ndim == 1:
    return labels[:, None] == reference_labels[None, :]
  hot = (labels > 0).astype(jnp.float32)
  reference_hot = (reference_labels > 0).astype(jnp.float32)
  return jnp.matmul(hot, reference_hot.T, precision=jax.lax.Precision.HIGHEST) > 0.5


def check_pair_inputs(embeddings, labels, weights, references, reference_labels,
                      reference_mask):
  """Static checks (and value checks when concrete) of a pair loss's inputs.

  Returns ``(embeddings, labels, weights, references, reference_labels,
  reference_mask)``, the reference entries ``None`` without references and
  ``reference_mask`` broadcast to ``(B, M)``.
  """
  embeddings = checks.check_embeddings(embeddings)
  batch_size, dtype = embeddings.shape[0], embeddings.dtype
  labels = checks.check_labels(labels, batch_size)
  weights = checks.check_weights(weights, batch_size, dtype)
  checks.validate_if_concrete(embeddings, labels, weights)
  if references is None:
    if reference_labels is not None or reference_mask is not None:
      raise ValueError("reference_labels and reference_mask need references.")
    return embeddings, labels, weights, None, None, None
  references = checks.check_embeddings(references, "references")
  num_references = references.shape[0]
  if references.shape[1] != embeddings.shape[1]:
    raise ValueError(
        f"references must have shape (M, {embeddings.shape[1]}) to match the embeddings, "
        f"got {references.shape}.")
  if references.dtype != dtype:
    raise ValueError(
        f"references must have the dtype of the embeddings ({dtype}), got {references.dtype}.")
  if reference_labels is None:
    raise ValueError("references need reference_labels.")
  reference_labels = checks.check_labels(reference_labels, num_references)
  if reference_labels.shape[1:] != labels.shape[1:]:
    raise ValueError(
        f"reference_labels must have the form of labels: shape (M,) + {labels.shape[1:]}, "
        f"got {reference_labels.shape}.")
  if reference_mask is None:
    reference_mask = jnp.ones((batch_size, num_references), bool)
  else:
    reference_mask = jnp.asarray(reference_mask)
    if reference_mask.dtype != jnp.bool_:
      raise ValueError(f"reference_mask must be bool, got dtype {reference_mask.dtype}.")
    if reference_mask.shape == (num_references,):
      reference_mask = jnp.broadcast_to(reference_mask[None, :], (batch_size, num_references))
    elif reference_mask.shape != (batch_size, num_references):
      raise ValueError(
          f"reference_mask must have shape ({num_references},) or "
          f"({batch_size}, {num_references}), got {reference_mask.shape}.")
  if checks.is_concrete(references):
    checks.validate_embeddings(references, "references")
  if checks.is_concrete(reference_labels):
    checks.validate_labels(reference_labels)
  return embeddings, labels, weights, references, reference_labels, reference_mask


def pair_masks_with_references(labels, reference_labels, reference_mask):
  """``(positives, negatives)`` masks: of the batch (``i != j``) or (query, reference)."""
  if reference_labels is None:
    return masks.pair_masks(labels)
  same = _cross_positive_mask(labels, reference_labels)
  return same & reference_mask, ~same & reference_mask


def _cosine_similarities(embeddings, references):
  """``(B, M)`` cosine similarities of the L2-normalised rows (``references=None``: the batch)."""
  x = geometry.l2_normalize(embeddings)
  if references is None:
    return geometry.self_gram(x)
  r = geometry.l2_normalize(references)
  return jnp.matmul(x, r.T, precision=jax.lax.Precision.HIGHEST)


# ----------------------------------------------------------------------------
# Multi-similarity.


def multi_similarity(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    alpha: float | jax.Array = 2.0,
    beta: float | jax.Array = 50.0,
    base: float | jax.Array = 0.5,
    mine: bool = False,
    epsilon: float | jax.Array = 0.1,
    weights: jax.Array | None = None,
    references: jax.Array | None = None,
    reference_labels: jax.Array | None = None,
    reference_mask: jax.Array | None = None,
) -> jax.Array:
  """Multi-similarity loss (Wang et al. 2019), PML's ``MultiSimilarityLoss``.

  With cosine similarities ``s_ij`` of the L2-normalised embeddings, for each
  anchor ``i`` with positives ``P_i`` and negatives ``N_i``:

  ``l_i = 1/alpha * log(1 + sum_{p in P_i} exp(-alpha (s_ip - base)))
  + 1/beta * log(1 + sum_{n in N_i} exp(beta (s_in - base)))``

  (an empty sum gives 0) and the loss is the mean of ``l_i`` over **all**
  ``B`` anchors (PML's ``MeanReducer``; an anchor without pairs adds 0).
  Both log-sum-exps are max-shifted (finite for any ``alpha``, ``beta``).

  With ``mine=True`` the pairs are first selected by PML's
  ``MultiSimilarityMiner(epsilon)``: a positive ``p`` of ``i`` is kept if
  ``s_ip - epsilon < max_{n in N_i} s_in`` and a negative ``n`` if
  ``s_in + epsilon > min_{p in P_i} s_ip`` (an anchor without negatives keeps
  no positive and vice versa). The selection is piecewise constant (no
  gradient flows through it); the loss above then runs over the kept pairs.

  Edge cases (value; the gradient is always finite): one class (no
  negatives): the mean of the positive terms (0 with ``mine=True``); only
  singleton classes (no positives): the mean of the negative terms (0 with
  ``mine=True``); identical embeddings: ``s = 1`` for every pair; zero
  embeddings normalise to 0, so ``s = 0``; an empty batch: 0 with a zero
  gradient.

  Args:
    embeddings: ``(B, D)`` floating array (L2-normalised inside the loss, as
      PML's ``CosineSimilarity`` does).
    labels: ``(B,)`` int class ids or ``(B, C)`` multi-hot labels (samples
      sharing at least one label are positives, see
      :mod:`sphereembed.losses.masks`).
    alpha: positive scale of the positive pairs' exponent (``> 0``).
    beta: positive scale of the negative pairs' exponent (``> 0``).
    base: the similarity threshold ``lambda`` of the paper (any finite real).
    mine: select pairs with the multi-similarity miner first (a Python bool,
      static under ``jit``).
    epsilon: the miner's margin (``>= 0``; used only with ``mine=True``).
    weights: optional ``(B,)`` non-negative per-sample weights of the anchors
      (a weighted mean of ``l_i``).
    references: optional ``(M, D)`` reference embeddings (e.g. a cross-batch
      memory); the pairs are then (query ``i`` of the batch, reference
      ``j``), as PML's ``ref_emb``.
    reference_labels: ``(M,)`` or ``(M, C)`` labels of the references, in the
      form of ``labels``.
    reference_mask: optional ``(M,)`` or ``(B, M)`` bool mask of the usable
      (query, reference) pairs (invalid memory slots, self-comparisons).

  Returns:
    The scalar loss.

  Raises:
    ValueError: on bad shapes or dtypes, hyper-parameters out of range
      (NaN, infinite, non-positive ``alpha``/``beta``, negative ``epsilon``)
      and, when called outside ``jit``, NaN embeddings, invalid labels or
      negative weights.

  References:
    Wang, Han, Huang, Dong & Scott, "Multi-Similarity Loss with General Pair
    Weighting for Deep Metric Learning", CVPR 2019.

  Example:
    >>> import jax.numpy as jnp
    >>> from sphereembed.losses import multi_similarity
    >>> x = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    >>> # s_02 = 1 (positives), s_01 = s_12 = 0 (negatives).
    >>> # anchors 0 and 2: log(1 + e^{-1}) / 2 (+ e^{-25} / 50); anchor 1: ~0.
    >>> print(f"{multi_similarity(x, jnp.array([0, 1, 0])):.4f}")
    0.1044
  """
  (embeddings, labels, weights, references, reference_labels,
   reference_mask) = check_pair_inputs(embeddings, labels, weights, references,
                                       reference_labels, reference_mask)
  dtype = embeddings.dtype
  alpha = check_hyperparameter(alpha, "alpha", dtype, minimum=0.0, exclusive=True)
  beta = check_hyperparameter(beta, "beta", dtype, minimum=0.0, exclusive=True)
  base = check_hyperparameter(base, "base", dtype)
  epsilon = check_hyperparameter(epsilon, "epsilon", dtype, minimum=0.0)
  similarity = _cosine_similarities(embeddings, references)
  positives, negatives = pair_masks_with_references(labels, reference_labels, reference_mask)
  if mine:
    s = jax.lax.stop_gradient(similarity)
    hardest_negative = jnp.max(jnp.where(negatives, s, -jnp.inf), axis=1, keepdims=True,
                               initial=-jnp.inf)
    easiest_positive = jnp.min(jnp.where(positives, s, jnp.inf), axis=1, keepdims=True,
                               initial=jnp.inf)
    positives = positives & (s - epsilon < hardest_negative)
    negatives = negatives & (s + epsilon > easiest_positive)
  positive_term = masked_logsumexp(alpha * (base - similarity), positives, 1, add_one=True) / alpha
  negative_term = masked_logsumexp(beta * (similarity - base), negatives, 1, add_one=True) / beta
  per_anchor = positive_term + negative_term
  return _common.weighted_mean(per_anchor, jnp.ones(per_anchor.shape, bool), weights)


# ----------------------------------------------------------------------------
# Circle loss.


def circle(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    margin: float | jax.Array = 0.4,
    gamma: float | jax.Array = 80.0,
    weights: jax.Array | None = None,
    references: jax.Array | None = None,
    reference_labels: jax.Array | None = None,
    reference_mask: jax.Array | None = None,
) -> jax.Array:
  """Circle loss (Sun et al. 2020) with pair labels, PML's ``CircleLoss``.

  With cosine similarities ``s_ij`` of the L2-normalised embeddings, margin
  ``m`` and the self-paced weights ``a_p = relu(1 + m - s_ip)``,
  ``a_n = relu(s_in + m)`` (constants for the gradient, as in the paper and
  PML), for each anchor ``i`` with at least one positive and one negative:

  ``l_i = softplus( logsumexp_{p in P_i} -gamma a_p (s_ip - (1 - m))
  + logsumexp_{n in N_i} gamma a_n (s_in - m) )``

  and the loss is the mean of ``l_i`` over the anchors with ``l_i > 0``
  (PML's ``AvgNonZeroReducer``; anchors without a positive or a negative
  have ``l_i = 0``). Log-sum-exps and softplus are in their stable forms.

  Edge cases (value; the gradient is always finite): one class, only
  singleton classes or one sample: 0 with a zero gradient; identical
  embeddings: ``s = 1`` for every pair; zero embeddings: ``s = 0``; an empty
  batch: 0.

  Args:
    embeddings: ``(B, D)`` floating array (L2-normalised inside the loss).
    labels: ``(B,)`` int class ids or ``(B, C)`` multi-hot labels.
    margin: the relaxation ``m`` (``>= 0``; PML's ``m``).
    gamma: the scale (``> 0``).
    weights: optional ``(B,)`` non-negative per-sample weights of the anchors
      (a weighted mean over the anchors with ``l_i > 0``).
    references: optional ``(M, D)`` reference embeddings (see
      :func:`multi_similarity`).
    reference_labels: labels of the references, in the form of ``labels``.
    reference_mask: optional ``(M,)`` or ``(B, M)`` bool mask of usable pairs.

  Returns:
    The scalar loss.

  Raises:
    ValueError: on bad shapes or dtypes, a negative, NaN or infinite margin,
      a non-positive gamma and, outside ``jit``, NaN embeddings, invalid labels
      or negative weights.

  References:
    Sun, Cheng, Zhang, Zhang, Zheng, Wang & Wei, "Circle Loss: A Unified
    Perspective of Pair Similarity Optimization", CVPR 2020.

  Example:
    >>> import jax.numpy as jnp
    >>> from sphereembed.losses import circle
    >>> x = jnp.array([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8]])
    >>> # anchor 0: softplus(-9.6 + 16); anchor 1: softplus(-9.6 + 60.928);
    >>> # anchor 2 has no positive (l_2 = 0, not averaged).
    >>> print(f"{circle(x, jnp.array([0, 0, 1])):.4f}")
    28.8648
  """
  (embeddings, labels, weights, references, reference_labels,
   reference_mask) = check_pair_inputs(embeddings, labels, weights, references,
                                       reference_labels, reference_mask)
  dtype = embeddings.dtype
  margin = check_hyperparameter(margin, "margin", dtype, minimum=0.0)
  gamma = check_hyperparameter(gamma, "gamma", dtype, minimum=0.0, exclusive=True)
  similarity = _cosine_similarities(embeddings, references)
  positives, negatives = pair_masks_with_references(labels, reference_labels, reference_mask)
  s = jax.lax.stop_gradient(similarity)
  positive_logits = -gamma * jax.nn.relu(1 + margin - s) * (similarity - (1 - margin))
  negative_logits = gamma * jax.nn.relu(s + margin) * (similarity - margin)
  valid = jnp.any(positives, axis=1) & jnp.any(negatives, axis=1)
  x = (masked_logsumexp(positive_logits, positives, 1)
       + masked_logsumexp(negative_logits, negatives, 1))
  per_anchor = jnp.where(valid, jax.nn.softplus(jnp.where(valid, x, 0)), 0)
  active = jax.lax.stop_gradient(per_anchor) > 0
  return _common.weighted_mean(per_anchor, active, weights)


# ----------------------------------------------------------------------------
# Generalised lifted structure.


def lifted_structure(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    pos_margin: float | jax.Array = 0.0,
    neg_margin: float | jax.Array = 1.0,
    weights: jax.Array | None = None,
    references: jax.Array | None = None,
    reference_labels: jax.Array | None = None,
    reference_mask: jax.Array | None = None,
) -> jax.Array:
  """Generalised lifted structure loss, PML's ``GeneralizedLiftedStructureLoss``.

  The per-anchor form of Hermans, Beyer & Leibe (page 4) of the lifted
  structure loss: with euclidean distances ``d_ij`` of the L2-normalised
  embeddings (PML's default ``LpDistance``), for each anchor ``i``:

  ``l_i = relu( log sum_{p in P_i} exp(d_ip - pos_margin)
  + log sum_{n in N_i} exp(neg_margin - d_in) )``

  where an empty sum contributes 0 (PML's masked log-sum-exp), and the loss
  is the mean of ``l_i`` over **all** ``B`` anchors (PML's ``MeanReducer``).
  Distances come from the Gram form of
  :func:`sphereembed.geometry.pairwise_distances` (zero subgradient at
  ``d = 0``).

  Edge cases (value; the gradient is always finite): one class: only the
  positive log-sum-exp; only singleton classes: only the negative one;
  identical embeddings: ``d = 0``; zero embeddings normalise to 0 (``d = 0``);
  one sample or an empty batch: 0 with a zero gradient.

  Args:
    embeddings: ``(B, D)`` floating array (L2-normalised inside the loss).
    labels: ``(B,)`` int class ids or ``(B, C)`` multi-hot labels.
    pos_margin: distance below which positives stop being pulled (``>= 0``).
    neg_margin: distance beyond which negatives stop being pushed (``>= 0``).
    weights: optional ``(B,)`` non-negative per-sample weights of the anchors
      (a weighted mean of ``l_i``).
    references: optional ``(M, D)`` reference embeddings (see
      :func:`multi_similarity`).
    reference_labels: labels of the references, in the form of ``labels``.
    reference_mask: optional ``(M,)`` or ``(B, M)`` bool mask of usable pairs.

  Returns:
    The scalar loss.

  Raises:
    ValueError: on bad shapes or dtypes, negative, NaN or infinite margins
      and, outside ``jit``, NaN embeddings, invalid labels or negative weights.

  References:
    Oh Song, Xiang, Jegelka & Savarese, "Deep Metric Learning via Lifted
    Structured Feature Embedding", CVPR 2016; Hermans, Beyer & Leibe, "In
    Defense of the Triplet Loss for Person Re-Identification", 2017.

  Example:
    >>> import jax.numpy as jnp
    >>> from sphereembed.losses import lifted_structure
    >>> x = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    >>> # anchors 0, 2: relu(0 + 1 - sqrt 2) = 0; anchor 1: relu(log 2 + 1 - sqrt 2).
    >>> print(f"{lifted_structure(x, jnp.array([0, 1, 0])):.4f}")
    0.0930
  """
  (embeddings, labels, weights, references, reference_labels,
   reference_mask) = check_pair_inputs(embeddings, labels, weights, references,
                                       reference_labels, reference_mask)
  dtype = embeddings.dtype
  pos_margin = check_hyperparameter(pos_margin, "pos_margin", dtype, minimum=0.0)
  neg_margin = check_hyperparameter(neg_margin, "neg_margin", dtype, minimum=0.0)
  x = geometry.l2_normalize(embeddings)
  r = None if references is None else geometry.l2_normalize(references)
  distances = geometry.pairwise_distances(x, r, metric="euclidean")
  positives, negatives = pair_masks_with_references(labels, reference_labels, reference_mask)
  per_anchor = jax.nn.relu(masked_logsumexp(distances - pos_margin, positives, 1)
                           + masked_logsumexp(neg_margin - distances, negatives, 1))
  return _common.weighted_mean(per_anchor, jnp.ones(per_anchor.shape, bool), weights)
