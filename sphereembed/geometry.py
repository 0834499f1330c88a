"""Geometry of embeddings: normalisation and pairwise distances on and off the sphere.

Every function here is pure, jit/vmap/grad-compatible and has a finite gradient
everywhere, including the zero vector, identical points (distance 0) and
antipodal points on the sphere. At points where a distance is not
differentiable (the minimum at distance 0, the maximum ``pi`` of the
great-circle distance between antipodal points) the gradient is the zero
subgradient, the convention of TensorFlow Addons and pytorch-metric-learning.

Magnitudes: inputs are scaled by a power of two (exact, so results are bit
for bit those of the unscaled formulas wherever those do not overflow or
underflow) before anything is squared. :func:`l2_normalize`, the euclidean
distances and :func:`orthogonal_procrustes` are therefore correct for every
finite input, up to the dtype's maximum; a squared euclidean distance is
``inf`` exactly when its true value exceeds the dtype's range (e.g.
``(2e20)^2`` in float32), never a wrong finite number. ``"cosine"`` and
``"great_circle"`` expect unit vectors and use them as given.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

Metric = Literal["euclidean", "squared_euclidean", "cosine", "great_circle"]
METRICS: tuple[str, ...] = ("euclidean", "squared_euclidean", "cosine", "great_circle")

__all__ = [
    "METRICS", "Metric", "l2_normalize", "orthogonal_procrustes", "paired_distances",
    "pairwise_distances", "safe_sqrt", "self_gram",
]


def safe_sqrt(x: jax.Array) -> jax.Array:
  """``sqrt(max(x, 0))`` with value and gradient 0 where ``x <= 0``.

  The plain square root has an infinite derivative at 0, and ``0 * inf`` turns
  into NaN in reverse mode; the double ``where`` keeps both branches finite.
  """
  positive = x > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def _power_of_two_scale(largest: jax.Array) -> jax.Array:
  """``2^(e-1)`` with ``largest = m 2^e``, ``m`` in [1/2, 1): dividing by it is exact.

  ``largest / scale`` lies in [1, 2). Where ``largest`` is 0, below the
  smallest normal number or not finite the scale is 1. No gradient.
  """
  largest = jax.lax.stop_gradient(largest)
  _, exponent = jnp.frexp(largest)
  scale = jnp.ldexp(jnp.ones_like(largest), exponent - 1)
  usable = jnp.isfinite(largest) & (largest >= jnp.finfo(largest.dtype).tiny)
  return jnp.where(usable, scale, jnp.ones_like(largest))


def _max_abs(x: jax.Array, axis=None, keepdims: bool = False) -> jax.Array:
  """Largest ``|x|`` (0 for empty arrays), without gradient."""
  return jnp.max(jnp.abs(jax.lax.stop_gradient(x)), axis=axis, keepdims=keepdims, initial=0)


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
  """Scales ``x`` to unit L2 norm along ``axis``: ``x / max(||x||, eps)``.

  The zero vector maps to the zero vector, with a finite gradient (``1/eps``
  times the identity), never NaN. Each vector is divided by a power of two
  near its largest entry before it is squared (exact), so any finite vector
  of norm ``>= eps``, up to the dtype's maximum, gets its unit direction (no
  overflow of the squared norm to a zero vector).

  Args:
    x: array of any floating dtype.
    axis: the axis holding the vector components.
    eps: lower bound on the norm used as divisor (raised to the dtype's
      smallest normal number, so that ``1/eps`` stays finite in float16).

  Returns:
    An array of the shape and dtype of ``x``.

  Example:
    >>> import jax.numpy as jnp
    >>> from sphereembed.geometry import l2_normalize
    >>> l2_normalize(jnp.array([[3.0, 4.0], [0.0, 0.0]])).tolist()
    [[0.6, 0.8], [0.0, 0.0]]
  """
  x = jnp.asarray(x)
  if jnp.iscomplexobj(x):
    raise ValueError(f"l2_normalize expects a real array, got dtype {x.dtype}.")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.result_type(float))
  dtype = x.dtype
  # The gradient at 0 is 1/eps: keep it representable in low precisions.
  eps = max(eps, float(jnp.finfo(dtype).tiny))
  if jnp.finfo(dtype).bits < 32:
    # eps**2 underflows in float16/bfloat16: accumulate the norm in float32.
    x = x.astype(jnp.float32)
  # x / s is exact and its largest entry lies in [1, 2): the squares neither
  # overflow nor underflow, and x / max(||x||, eps) = (x/s) / max(||x/s||, eps/s).
  scale = _power_of_two_scale(_max_abs(x, axis=axis, keepdims=True))
  scaled = x / scale
  squared_norm = jnp.sum(jnp.square(scaled), axis=axis, keepdims=True)
  positive = squared_norm > 0
  # The double where keeps sqrt's infinite derivative at 0 out of the gradient.
  norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, squared_norm, 1.0)), 0.0)
  norm = jnp.maximum(norm, jnp.asarray(eps, x.dtype) / scale)
  return (scaled / norm).astype(dtype)


def _matmul_transposed(x: jax.Array, y: jax.Array) -> jax.Array:
  # HIGHEST precision keeps GPUs/TPUs from rounding the dot products to bf16/tf32.
  return jnp.matmul(x, y.T, precision=jax.lax.Precision.HIGHEST)


@jax.custom_jvp
def self_gram(x: jax.Array) -> jax.Array:
  """``x @ x.T`` whose reverse-mode derivative costs one matmul instead of two.

  The tangent is written as ``t + t.T`` with ``t = dx @ x.T``, so its
  transpose is ``(g + g.T) @ x``; autodiff of the plain product would compute
  ``g @ x + g.T @ x``. Forward mode works as usual.
  """
  return _matmul_transposed(x, x)


@self_gram.defjvp
def _self_gram_jvp(primals, tangents):
  (x,), (dx,) = primals, tangents
  half = _matmul_transposed(dx, x)
  return self_gram(x), half + half.T


def _gram_parts(x: jax.Array, y: jax.Array, same: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
  # The Gram form needs O(N*M) memory instead of the O(N*M*D) of differences.
  xx = jnp.sum(jnp.square(x), axis=-1)[:, None]
  if same:
    return xx, xx.T, self_gram(x)
  yy = jnp.sum(jnp.square(y), axis=-1)[None, :]
  return xx, yy, _matmul_transposed(x, y)


def _clamp_squared(squared: jax.Array, scale: jax.Array, zero_diagonal: bool) -> jax.Array:
  """Gram-form squared distances with their cancellation noise floor set to 0.

  ``xx + yy - 2 xy`` of two equal vectors is a few ulps of ``scale = xx + yy``
  rather than 0 (how many depends on the CPU's FMA use); its square root
  would then have a gradient of rounding noise times ``1 / chord``. Below
  ``8 eps * scale`` the value is noise, so it becomes an exact 0 with a zero
  gradient (for unit vectors in float32: chords below about 1.4e-3; use
  :func:`paired_distances` where such small distances matter).
  """
  if zero_diagonal:
    # Exact zeros on the diagonal (cancellation otherwise leaves ~eps noise).
    squared = jnp.where(jnp.eye(squared.shape[0], dtype=bool), 0.0, squared)
  floor = 8 * jnp.finfo(squared.dtype).eps * jax.lax.stop_gradient(scale)
  # `where` rather than `maximum`: exact +0.0 (never -0.0) and a zero gradient.
  return jnp.where(squared > floor, squared, 0.0)


def _half_angle(chord: jax.Array) -> jax.Array:
  """``2 * arcsin(chord / 2)`` with the argument clamped to [0, 1] (zero gradient past 1)."""
  half = chord / 2.0
  inside = half < 1.0
  return jnp.where(inside, 2.0 * jnp.arcsin(jnp.where(inside, half, 0.0)), jnp.pi)


def pairwise_distances(
    x: jax.Array,
    y: jax.Array | None = None,
    metric: Metric = "euclidean",
) -> jax.Array:
  """All distances between the rows of ``x`` and the rows of ``y``.

  Metrics:
    * ``"euclidean"``: ``||x_i - y_j||``.
    * ``"squared_euclidean"``: ``||x_i - y_j||^2``.
    * ``"cosine"``: ``1 - x_i . y_j``, in ``[0, 2]`` for unit vectors. The
      inputs are used as given: pass unit vectors (see :func:`l2_normalize`).
    * ``"great_circle"``: the geodesic (angular) distance on the unit sphere,
      ``2 * arcsin(||x_i - y_j|| / 2)`` with the argument clamped to
      ``[0, 1]``, in ``[0, pi]``; it equals ``arccos(x_i . y_j)`` for unit
      vectors. Obtuse angles are computed as ``pi - 2 * arcsin(||x_i + y_j|| / 2)``
      (the same value on unit vectors), which keeps the gradient bounded at
      antipodal points. Note:
      the N-Centroids Loss's reference notes write ``2 * asin(||u - v||)``, which is
      wrong for unit vectors (the chord ``||u - v||`` lies in ``[0, 2]``);
      this is the correct formula. Inputs are used as given: pass unit vectors.

  Distances are clamped at 0 and, when ``y`` is ``None``, the diagonal is
  exactly 0. They are computed from the Gram matrix (O(N M) memory instead of
  the O(N M D) of explicit differences), so the absolute error of a squared
  distance is about ``eps * ||x||^2``: in float32, distances below roughly
  ``3e-4 * ||x||`` are not resolved (use float64 where that matters). For
  the euclidean metrics the inputs are first divided by a power of two near
  their largest entry (exact): every finite input is handled, and a squared
  distance is ``inf`` only when its true value exceeds the dtype's range.
  Gradients are finite everywhere; at identical points (distance 0) and at
  antipodal points for ``"great_circle"`` (distance pi, a maximum) they are
  the zero subgradient.

  Args:
    x: array of shape ``(N, D)``.
    y: array of shape ``(M, D)``, or ``None`` for ``y = x``.
    metric: one of ``"euclidean"``, ``"squared_euclidean"``, ``"cosine"``,
      ``"great_circle"``.

  Returns:
    An array of shape ``(N, M)`` and the dtype of the inputs.

  Raises:
    ValueError: for an unknown metric or inputs that are not 2-D with the same
      number of columns.

  Example:
    >>> import jax.numpy as jnp
    >>> from sphereembed.geometry import pairwise_distances
    >>> u = jnp.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    >>> pairwise_distances(u, metric="great_circle")[0].round(4).tolist()
    [0.0, 1.5708, 3.1416]
  """
  if metric not in METRICS:
    raise ValueError(f"Unknown metric {metric!r}; expected one of {METRICS}.")
  same = y is None
  x = jnp.asarray(x)
  y = x if same else jnp.asarray(y)
  if x.ndim != 2 or y.ndim != 2:
    raise ValueError(
        f"pairwise_distances expects 2-D arrays (N, D) and (M, D), got shapes "
        f"{x.shape} and {y.shape}.")
  if x.shape[1] != y.shape[1]:
    raise ValueError(
        f"x and y must have the same dimension, got {x.shape[1]} and {y.shape[1]}.")
  if not jnp.issubdtype(x.dtype, jnp.floating) or not jnp.issubdtype(y.dtype, jnp.floating):
    raise ValueError(f"pairwise_distances expects floating inputs, got {x.dtype} and {y.dtype}.")

  if metric == "cosine":
    similarity = self_gram(x) if same else _matmul_transposed(x, y)
    distance = 1.0 - similarity
    if same:
      distance = jnp.where(jnp.eye(x.shape[0], dtype=bool), 0.0, distance)
    return jnp.where(distance > 0, distance, 0.0)

  if metric in ("euclidean", "squared_euclidean"):
    # Exact power-of-two scaling: (xx + yy - 2 xy) cannot overflow or lose
    # distinct points to inf - inf; distances scale back linearly.
    largest = _max_abs(x) if same else jnp.maximum(_max_abs(x), _max_abs(y))
    scale = _power_of_two_scale(largest)
    xs = x / scale
    ys = xs if same else y / scale
    xx, yy, xy = _gram_parts(xs, ys, same)
    squared = _clamp_squared(xx + yy - 2.0 * xy, xx + yy, zero_diagonal=same)
    if metric == "squared_euclidean":
      return (squared * scale) * scale  # inf only when the true value overflows
    return safe_sqrt(squared) * scale
  xx, yy, xy = _gram_parts(x, y, same)
  squared = _clamp_squared(xx + yy - 2.0 * xy, xx + yy, zero_diagonal=same)
  chord = safe_sqrt(squared)
  # great_circle. arcsin(c/2) is ill-conditioned as c -> 2 (antipodal points),
  # where the Gram form leaves c^2 = 4 - O(eps): its derivative would reach
  # 1/sqrt(eps). For obtuse angles use the supplementary chord s = ||u + v||
  # instead: pi - 2*arcsin(s/2) is the same angle on unit vectors, and each
  # branch keeps arcsin's argument below 1/sqrt(2), so gradients stay bounded.
  supplementary = safe_sqrt(_clamp_squared(xx + yy + 2.0 * xy, xx + yy, zero_diagonal=False))
  acute = chord <= supplementary
  return jnp.where(acute, _half_angle(chord), jnp.pi - _half_angle(supplementary))


def paired_distances(x: jax.Array, y: jax.Array, metric: Metric = "euclidean") -> jax.Array:
  """Distances between matching rows, ``d(x_i, y_i)``, from explicit differences.

  The same metrics and conventions as :func:`pairwise_distances` (including
  the supplementary chord for obtuse great-circle angles and the zero
  subgradient at distance 0), but O(N D) work and memory and no Gram-form
  cancellation: accurate down to the smallest distances.

  Args:
    x: array of shape ``(N, D)`` (or any ``(..., D)``).
    y: array of the shape of ``x``.
    metric: one of ``"euclidean"``, ``"squared_euclidean"``, ``"cosine"``,
      ``"great_circle"``.

  Returns:
    An array of shape ``x.shape[:-1]``.

  Example:
    >>> import jax.numpy as jnp
    >>> from sphereembed.geometry import paired_distances
    >>> u = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> paired_distances(u, -u, metric="great_circle").round(4).tolist()
    [3.1416, 3.1416]
  """
  if metric not in METRICS:
    raise ValueError(f"Unknown metric {metric!r}; expected one of {METRICS}.")
  x, y = jnp.asarray(x), jnp.asarray(y)
  if x.shape != y.shape or x.ndim < 1:
    raise ValueError(f"paired_distances expects two arrays of the same shape, got {x.shape} and "
                     f"{y.shape}.")
  if not jnp.issubdtype(x.dtype, jnp.floating) or not jnp.issubdtype(y.dtype, jnp.floating):
    raise ValueError(f"paired_distances expects floating inputs, got {x.dtype} and {y.dtype}.")
  if metric == "cosine":
    distance = 1.0 - jnp.sum(x * y, axis=-1)
    return jnp.where(distance > 0, distance, 0.0)
  if metric in ("euclidean", "squared_euclidean"):
    # Per pair, an exact power-of-two scale: x - y and its square cannot overflow.
    scale = _power_of_two_scale(
        jnp.maximum(_max_abs(x, axis=-1, keepdims=True), _max_abs(y, axis=-1, keepdims=True)))
    squared = jnp.sum(jnp.square(x / scale - y / scale), axis=-1)
    scale = scale[..., 0]
    if metric == "squared_euclidean":
      return (squared * scale) * scale  # inf only when the true value overflows
    return safe_sqrt(squared) * scale
  squared = jnp.sum(jnp.square(x - y), axis=-1)
  chord = safe_sqrt(squared)
  supplementary = safe_sqrt(jnp.sum(jnp.square(x + y), axis=-1))
  return jnp.where(chord <= supplementary, _half_angle(chord), jnp.pi - _half_angle(supplementary))


def orthogonal_procrustes(source: jax.Array, target: jax.Array) -> jax.Array:
  """The orthogonal ``(D, D)`` matrix ``R`` that minimises ``||source @ R - target||_F``.

  Metric-learning losses see only distances, so two networks trained alike
  embed the same images up to a rotation (or reflection) of the sphere.
  ``source @ R`` expresses the first in the second's frame without moving any
  point off the sphere or changing any distance. ``R = U V^T`` from the SVD
  ``source^T target = U S V^T`` (Schoenemann, 1966; as
  ``scipy.linalg.orthogonal_procrustes``).

  Args:
    source: ``(N, D)`` points.
    target: ``(N, D)`` the same points in the other frame.

  Returns:
    ``(D, D)`` orthogonal ``R``.

  Both inputs are divided by a power of two near their largest entry first
  (``R`` does not change), so any finite input works. The derivative is that
  of the polar factor, ``dR = U X V^T`` with ``X_ij = (A_ij - A_ji) / (s_i +
  s_j)`` and ``A = U^T dM V``, set to 0 where ``s_i + s_j = 0`` (rank
  deficiency of two or more, e.g. all-zero inputs, where ``R`` is not
  unique): gradients are finite everywhere.

  Raises:
    ValueError: not two ``(N, D)`` real arrays of one shape.

  Example:
    >>> import jax.numpy as jnp
    >>> from sphereembed.geometry import orthogonal_procrustes
    >>> x = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    >>> rotate = jnp.array([[0.0, 1.0], [-1.0, 0.0]])
    >>> orthogonal_procrustes(x @ rotate, x).round(4).tolist()
    [[0.0, -1.0], [1.0, 0.0]]
  """
  source, target = jnp.asarray(source), jnp.asarray(target)
  if source.ndim != 2 or source.shape != target.shape:
    raise ValueError(f"orthogonal_procrustes expects two (N, D) arrays of one shape, got "
                     f"{source.shape} and {target.shape}.")
  for array in (source, target):
    if not jnp.issubdtype(array.dtype, jnp.floating):
      raise ValueError(f"orthogonal_procrustes expects real floating arrays, got {array.dtype}.")
  source = source / _power_of_two_scale(_max_abs(source))
  target = target / _power_of_two_scale(_max_abs(target))
  return _polar_factor(jnp.matmul(source.T, target, precision=jax.lax.Precision.HIGHEST))


@jax.custom_jvp
def _polar_factor(m: jax.Array) -> jax.Array:
  """``U V^T`` of the SVD ``m = U S V^T``: the orthogonal factor of the polar decomposition."""
  u, _, vt = jnp.linalg.svd(m)
  return u @ vt


@_polar_factor.defjvp
def _polar_factor_jvp(primals, tangents):
  (m,), (dm,) = primals, tangents
  u, s, vt = jnp.linalg.svd(m)
  # m = R P, dm = U (X S + Y) V^T with X antisymmetric and Y symmetric, so
  # (A - A^T)_ij = X_ij (s_i + s_j) for A = U^T dm V.
  a = u.T @ dm @ vt.T
  total = s[:, None] + s[None, :]
  # Below the SVD's own rounding, s_i + s_j is 0: R is not unique there.
  positive = total > 4 * jnp.finfo(m.dtype).eps * jnp.maximum(s[0], jnp.finfo(m.dtype).tiny)
  x = jnp.where(positive, (a - a.T) / jnp.where(positive, total, 1.0), 0.0)
  return u @ vt, u @ x @ vt
