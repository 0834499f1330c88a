"""Class centroids on the sphere as explicit, functional training state.

The N-Centroids Loss (:func:`sphereembed.losses.ncl`) measures embeddings
against one unit centroid per class. The centroids are not parameters: they
follow the embeddings by an exponential moving average (EMA) of the batch's
class means. Everything here is a pure function of arrays, so the centroids
are threaded through a jitted train step like the optimiser state, and the
update is computed from per-class sums and counts: those add up across
devices, so a batch split over a device mesh gives the same centroids as the
whole batch on one device.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sphereembed import geometry
from sphereembed.losses import checks

__all__ = [
    "class_sums", "ema_alpha", "init_centroids", "negative_weight", "update_centroids",
    "update_centroids_from_sums",
]


def _is_positive_int(value) -> bool:
  """A Python or NumPy integer (or an integral 0-d array) >= 1; not a bool, float or tracer."""
  if isinstance(value, (bool, np.bool_, jax.core.Tracer)):
    return False
  array = np.asarray(value)
  return array.ndim == 0 and np.issubdtype(array.dtype, np.integer) and int(array) >= 1


def init_centroids(key: jax.Array, num_classes: int, dim: int, dtype=jnp.float32) -> jax.Array:
  """``num_classes`` unit vectors drawn uniformly on the sphere ``S^{dim-1}``.

  Args:
    key: a JAX PRNG key.
    num_classes: the number of centroids ``K >= 1``.
    dim: the embedding dimension ``D >= 1``.
    dtype: floating dtype of the result.

  Returns:
    A ``(K, D)`` array of unit rows.

  Raises:
    ValueError: on a ``num_classes`` or ``dim`` that is not a positive integer
      (``2.5`` or ``True`` included).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from sphereembed.centroids import init_centroids
    >>> c = init_centroids(jax.random.PRNGKey(0), 10, 2)
    >>> print(c.shape, bool(jnp.allclose(jnp.linalg.norm(c, axis=1), 1.0, atol=1e-6)))
    (10, 2) True
  """
  if not (_is_positive_int(num_classes) and _is_positive_int(dim)):
    raise ValueError(f"num_classes and dim must be positive integers (>= 1), got {num_classes!r} "
                     f"and {dim!r}.")
  num_classes, dim = int(num_classes), int(dim)
  # Isotropic Gaussians normalised are uniform on the sphere; a draw of exactly
  # 0 has probability 0, and l2_normalize would return 0 rather than NaN.
  gaussian = jax.random.normal(key, (int(num_classes), int(dim)), dtype)
  return geometry.l2_normalize(gaussian)


def class_sums(
    embeddings: jax.Array, labels: jax.Array, num_classes: int
) -> tuple[jax.Array, jax.Array]:
  """Per-class sums and counts of a batch: the additive part of the update.

  Under data parallelism, sum these over devices (``jax.lax.psum``, or let
  ``jit`` over a sharded batch do it) and pass the totals to
  :func:`update_centroids_from_sums`.

  Args:
    embeddings: ``(B, D)`` floating array.
    labels: ``(B,)`` int class ids in ``[0, num_classes)``; ids outside the
      range are dropped.
    num_classes: the number of classes ``K``.

  Returns:
    ``(sums, counts)`` of shapes ``(K, D)`` and ``(K,)`` (counts in the
    embeddings' dtype).
  """
  embeddings = checks.check_embeddings(embeddings)
  labels = checks.check_labels(labels, embeddings.shape[0], allow_multi_hot=False)
  sums = jax.ops.segment_sum(embeddings, labels, num_segments=num_classes)
  counts = jax.ops.segment_sum(
      jnp.ones(labels.shape, embeddings.dtype), labels, num_segments=num_classes)
  return sums, counts


def update_centroids_from_sums(
    centroids: jax.Array, sums: jax.Array, counts: jax.Array, alpha: float | jax.Array
) -> jax.Array:
  """The EMA step of :func:`update_centroids` from per-class sums and counts."""
  centroids = jnp.asarray(centroids)
  alpha = jnp.asarray(alpha, centroids.dtype)
  # The normalised sum is the normalised mean: no division by the count needed.
  batch_directions = geometry.l2_normalize(sums.astype(centroids.dtype))
  blended = alpha * batch_directions + (1 - alpha) * centroids
  norm = jnp.linalg.norm(blended, axis=-1, keepdims=True)
  # A class whose batch mean is 0 (embeddings cancelling out), or a blend that
  # cancels (alpha = 1/2 against the antipode), has no direction: keep c.
  tiny = jnp.finfo(centroids.dtype).eps
  moved = jnp.where(norm > tiny, blended / jnp.maximum(norm, tiny), centroids)
  present = (counts > 0)[:, None] & (jnp.linalg.norm(sums, axis=-1, keepdims=True) > 0)
  # alpha = 0 (e.g. a warm-up) keeps the centroids bit for bit.
  return jnp.where(present & (alpha > 0), moved, centroids)


def update_centroids(
    centroids: jax.Array, embeddings: jax.Array, labels: jax.Array, alpha: float | jax.Array
) -> jax.Array:
  """Moves each class centroid towards its batch mean by an EMA, on the sphere.

  For every class ``k`` present in the batch, ``c'_k`` is the mean of its
  embeddings re-normalised to unit length, and

  ``c_k <- normalise(alpha * c'_k + (1 - alpha) * c_k)``.

  Classes absent from the batch keep their centroid. NCL's reference notes write
  ``(alpha - 1)`` for the weight of the old centroid; that is a sign slip
  (it would pull the centroid towards its antipode), and ``(1 - alpha)`` is
  the EMA intended. The update is computed from per-class sums and counts
  (:func:`class_sums`), so it is the same whether a batch is processed whole
  or split across devices whose sums are added. It is not differentiated
  through: apply it to ``jax.lax.stop_gradient`` embeddings.

  Args:
    centroids: ``(K, D)`` unit centroids.
    embeddings: ``(B, D)`` embeddings (unit vectors for NCL), same dtype.
    labels: ``(B,)`` int class ids in ``[0, K)``.
    alpha: the EMA rate in ``[0, 1]`` (0 keeps the centroids, 1 replaces
      them by the batch means), e.g. from :func:`ema_alpha`.

  Returns:
    The updated ``(K, D)`` centroids.

  Raises:
    ValueError: on mismatched shapes or dtypes, an ``alpha`` that is not a
      real number in ``[0, 1]`` (a Python number is checked also under
      ``jit``, an array when concrete), and, outside ``jit``, labels outside
      ``[0, K)`` or NaN inputs.

  Example:
    >>> import jax.numpy as jnp
    >>> from sphereembed.centroids import update_centroids
    >>> c = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> x = jnp.array([[0.0, 1.0], [0.0, 1.0]])
    >>> new = update_centroids(c, x, jnp.array([0, 0]), alpha=0.5)
    >>> print([[f"{v:.4f}" for v in row] for row in new.tolist()])
    [['0.7071', '0.7071'], ['0.0000', '1.0000']]
  """
  centroids = checks.check_embeddings(centroids, "centroids")
  embeddings = checks.check_embeddings(embeddings)
  if centroids.shape[1] != embeddings.shape[1] or centroids.dtype != embeddings.dtype:
    raise ValueError(
        f"centroids {centroids.shape} {centroids.dtype} and embeddings {embeddings.shape} "
        f"{embeddings.dtype} must share the dimension and dtype.")
  num_classes = centroids.shape[0]
  labels = checks.check_labels(labels, embeddings.shape[0], allow_multi_hot=False)
  checks.validate_if_concrete(embeddings, labels, num_classes=num_classes)
  if checks.is_concrete(centroids):
    checks.validate_embeddings(centroids, "centroids")
  if not isinstance(alpha, jax.core.Tracer) and jnp.ndim(alpha) != 0:
    raise ValueError(f"alpha must be a scalar, got shape {jnp.shape(alpha)}.")
  # Python numbers are checked always (also under jit), arrays when concrete
  # (NumPy, not jnp: under jit even a constant's jnp conversion is traced).
  checks.validate_scalar(alpha, "alpha", minimum=0.0, maximum=1.0)
  sums, counts = class_sums(embeddings, labels, num_classes)
  return update_centroids_from_sums(centroids, sums, counts, alpha)


def ema_alpha(
    step: int | jax.Array, base: float = 0.25, decay: float = 0.65, every: float = 1000
) -> jax.Array:
  """The EMA rate schedule ``base * decay ** (step / every)``.

  A smooth exponential decay: the centroids move fast while the embedding
  settles and freeze as training converges.

  Args:
    step: the training step (a traced int is fine).
    base: the rate at step 0.
    decay: the factor applied every ``every`` steps.
    every: the number of steps per factor ``decay``.

  Returns:
    A float32 scalar.

  Raises:
    ValueError: (when the values are known: Python numbers, also under
      ``jit``, or concrete arrays) ``base`` outside ``[0, 1]``, ``decay``
      outside ``(0, 1]``, ``every`` not positive, or any of them NaN or
      infinite: the rate would leave ``[0, 1]`` or be NaN.

  Example:
    >>> from sphereembed.centroids import ema_alpha
    >>> print(f"{float(ema_alpha(0)):.4f} {float(ema_alpha(1000)):.4f} {float(ema_alpha(2000)):.4f}")
    0.2500 0.1625 0.1056
  """
  checks.validate_scalar(base, "base", minimum=0.0, maximum=1.0)
  checks.validate_scalar(decay, "decay", maximum=1.0)
  checks.validate_scalar(decay, "decay", minimum=0.0, strict=True)
  checks.validate_scalar(every, "every", minimum=0.0, strict=True)
  step = jnp.asarray(step, jnp.float32)
  return jnp.float32(base) * jnp.power(jnp.float32(decay), step / jnp.float32(every))


def negative_weight(alpha: jax.Array, threshold: float) -> jax.Array:
  """Gate for NCL's negative term: 1 while ``alpha >= threshold``, else 0.

  NCL's reference notes: "when alpha is 0, we don't have a negative term". Once the
  centroids stop moving, pushing away from the other centroids no longer
  helps; ``threshold = 0`` keeps the negative term for ever.

  Raises:
    ValueError: a NaN or complex ``threshold`` (when known).
  """
  checks.validate_scalar(threshold, "threshold", allow_inf=True)
  return (jnp.asarray(alpha) >= threshold).astype(jnp.float32)
