"""Centroid losses: the N-Centroids Loss (NCL) against fixed class centroids.

Each class ``k`` has a centroid ``c_k`` (typically unit vectors spread on the
sphere, updated outside the loss, e.g. as running class means). A sample is
pulled towards its own centroid and pushed away from the others, both the
nearest wrong centroid and all wrong centroids on average.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sphereembed import geometry
from sphereembed.losses import _common, checks

__all__ = ["ncl"]


def ncl(
    embeddings: jax.Array,
    labels: jax.Array,
    centroids: jax.Array,
    *,
    metric: geometry.Metric = "great_circle",
    negative_weight: float | jax.Array = 1.0,
    weights: jax.Array | None = None,
) -> jax.Array:
  """N-Centroids Loss: distance to the own centroid minus distances to the others.

  For a sample ``x`` of class ``y``, with ``d_k = d(x, c_k)``:

  ``d_y - negative_weight * (min_{k != y} d_k + mean_{k != y} d_k)``

  and the loss is the mean over the batch. The centroids are constants here
  (``jax.lax.stop_gradient``): the gradient flows to the embeddings only. The
  loss can be negative. With a single centroid (``K = 1``) there is no other
  class and the negative term is 0 (the loss is the mean distance to ``c_0``).
  When several wrong centroids tie for the minimum, the gradient of the min is
  split evenly between them.

  Edge cases (value; the gradient is always finite): a batch with one class
  or with single-sample classes: the formula above, unchanged (the negatives
  are the other centroids, not other samples); one sample: that sample's
  term; duplicate embeddings: each copy contributes its (identical) term; an
  embedding on its own centroid: ``d_y = 0`` with the zero subgradient; zero
  embeddings with unit centroids: every great-circle distance is
  ``2 * arcsin(1/2) = pi/3``, so the term is ``pi/3 * (1 - 2 *
  negative_weight)`` for ``K > 1`` (``"great_circle"`` and ``"cosine"``
  expect unit vectors); an empty batch or all-zero weights: 0.

  Args:
    embeddings: ``(B, D)`` floating array, used as given (the default
      ``"great_circle"`` and ``"cosine"`` expect unit vectors).
    labels: ``(B,)`` int class ids in ``[0, K)`` (multi-hot labels are not
      supported). Under ``jit`` ids are not checked and an id outside
      ``[0, K)`` gives a meaningless value.
    centroids: ``(K, D)`` floating array of class centroids, with the dtype
      of ``embeddings``.
    metric: a metric of :func:`sphereembed.geometry.pairwise_distances`.
    negative_weight: scalar factor of the negative term; 0 switches it off
      (it may be a traced value, e.g. gated by the training step).
    weights: optional ``(B,)`` non-negative per-sample weights (a weighted
      mean over the batch).

  Returns:
    The scalar loss.

  Raises:
    ValueError: on bad shapes or dtypes, an unknown metric, a complex, NaN or
      infinite ``negative_weight`` (a Python number is checked also under
      ``jit``) and, when called outside ``jit``, NaN embeddings or
      centroids, embeddings of norm above
      :func:`sphereembed.losses.checks.max_norm`, labels outside ``[0, K)``
      or negative weights.

  References:
    The N-Centroids Loss (NCL) as first described in its reference notes, with the
    corrected great-circle distance (see
    :func:`sphereembed.geometry.pairwise_distances`).

  Example:
    >>> import jax.numpy as jnp
    >>> from sphereembed.losses import ncl
    >>> c = jnp.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    >>> x = jnp.array([[1.0, 0.0]])
    >>> # d = (0, pi/2, pi): 0 - (pi/2 + 3*pi/4) = -5*pi/4.
    >>> print(f"{ncl(x, jnp.array([0]), c):.4f}")
    -3.9270
  """
  embeddings = checks.check_embeddings(embeddings)
  batch_size, dtype = embeddings.shape[0], embeddings.dtype
  centroids = checks.check_embeddings(centroids, "centroids")
  if centroids.shape[1] != embeddings.shape[1]:
    raise ValueError(
        f"centroids must have shape (K, {embeddings.shape[1]}) to match the embeddings, "
        f"got {centroids.shape}.")
  if centroids.dtype != dtype:
    raise ValueError(
        f"centroids must have the dtype of the embeddings ({dtype}), got {centroids.dtype}.")
  num_centroids = centroids.shape[0]
  if num_centroids == 0:
    raise ValueError("centroids must hold at least one centroid, got shape "
                     f"{centroids.shape}.")
  labels = checks.check_labels(labels, batch_size, allow_multi_hot=False)
  weights = checks.check_weights(weights, batch_size, dtype)
  # Python numbers are checked always (also under jit), arrays when concrete.
  checks.validate_scalar(negative_weight, "negative_weight")
  negative_weight = checks.check_scalar(negative_weight, "negative_weight", dtype)
  if metric not in geometry.METRICS:
    raise ValueError(f"Unknown metric {metric!r}; expected one of {geometry.METRICS}.")
  checks.validate_if_concrete(embeddings, labels, weights, num_classes=num_centroids)
  if checks.is_concrete(centroids):
    checks.validate_embeddings(centroids, "centroids")

  centroids = jax.lax.stop_gradient(centroids)
  distances = geometry.pairwise_distances(embeddings, centroids, metric=metric)  # (B, K)
  own = jax.nn.one_hot(labels, num_centroids, dtype=jnp.bool_)
  positive = jnp.sum(jnp.where(own, distances, 0), axis=1)
  if num_centroids == 1:
    per_sample = positive
  else:
    others = ~own
    # Masked entries never win the min, so their gradient is exactly zero.
    nearest = jnp.min(jnp.where(others, distances, jnp.inf), axis=1)
    num_others = jnp.sum(others, axis=1).astype(dtype)
    mean_others = jnp.sum(jnp.where(others, distances, 0), axis=1) / jnp.maximum(num_others, 1)
    per_sample = positive - negative_weight * (nearest + mean_others)
  return _common.weighted_mean(per_sample, jnp.ones((batch_size,), bool), weights)
