"""Verification tests for sphereembed.geometry against float64 NumPy references.

The references loop over pairs explicitly and use the spec formulas:
euclidean ||u - v||, squared_euclidean ||u - v||^2, cosine 1 - u.v and
great_circle 2 * arcsin(min(||u - v|| / 2, 1)), with ||u - v|| computed from the
differences (never from the Gram form used by the library).
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sphereembed.geometry import METRICS, l2_normalize, paired_distances, pairwise_distances, self_gram
from tests.references import numeric_grad, ref_distance

DTYPES = (np.float32, np.float64)
# Eager execution compiles every op separately for each new shape, which is slow on
# CPU; the tests therefore call jitted versions (jit == eager is tested separately).
pd = jax.jit(pairwise_distances, static_argnames=("metric",))
normalize = jax.jit(l2_normalize, static_argnames=("axis", "eps"))
# Distances: float32 ~1e-6 absolute error on inputs of norm ~1; float64 ~1e-9 relative.
TOL = {np.float32: dict(rtol=1e-5, atol=2e-6), np.float64: dict(rtol=1e-9, atol=1e-12)}
ids = lambda v: getattr(v, "__name__", str(v))  # noqa: E731


def ref_pairwise(x, y, metric: str) -> np.ndarray:
  out = np.zeros((x.shape[0], y.shape[0]))
  for i in range(x.shape[0]):
    for j in range(y.shape[0]):
      out[i, j] = ref_distance(x[i], y[j], metric)
  return out


def random_points(rng, n, dim, metric, dtype):
  x = rng.normal(size=(n, dim))
  if metric in ("cosine", "great_circle"):
    x /= np.linalg.norm(x, axis=1, keepdims=True)
  else:
    x *= 0.4
  return x.astype(dtype)


def orthonormal_pair(rng, dim):
  u = rng.normal(size=dim)
  u /= np.linalg.norm(u)
  t = rng.normal(size=dim)
  t -= t.dot(u) * u
  return u, t / np.linalg.norm(t)


# ----------------------------------------------------------------------------
# pairwise_distances: values.


@pytest.mark.parametrize("dtype", DTYPES, ids=ids)
@pytest.mark.parametrize("metric", METRICS)
def test_pairwise_matches_reference(metric, dtype):
  rng = np.random.default_rng([3, METRICS.index(metric)])
  x = random_points(rng, 9, 8, metric, dtype)
  y = random_points(rng, 6, 8, metric, dtype)
  for args, (a, b) in (((x, y), (x, y)), ((x,), (x, x))):
    got = pd(*map(jnp.asarray, args), metric=metric)
    want = ref_pairwise(a, b, metric)
    if len(args) == 1:
      np.fill_diagonal(want, 0.0)  # i == i: identical points (the cosine formula gives ~eps)
    assert got.shape == want.shape and got.dtype == dtype
    chex.assert_trees_all_close(got, want, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=ids)
def test_default_metric_is_euclidean(dtype):
  x = random_points(np.random.default_rng(1), 5, 3, "euclidean", dtype)
  chex.assert_trees_all_close(pd(jnp.asarray(x)),
                              pd(jnp.asarray(x), metric="euclidean"), rtol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=ids)
def test_great_circle_agrees_with_arccos_away_from_0_and_pi(dtype):
  rng = np.random.default_rng(4)
  angles = np.linspace(0.05, np.pi - 0.05, 25)
  us, vs = [], []
  for theta in angles:
    u, t = orthonormal_pair(rng, 6)
    us.append(u)
    vs.append(np.cos(theta) * u + np.sin(theta) * t)
  u = np.asarray(us, dtype)
  v = np.asarray(vs, dtype)
  got = np.diag(np.asarray(pd(jnp.asarray(u), jnp.asarray(v), metric="great_circle")))
  uu, vv = u.astype(np.float64), v.astype(np.float64)
  want = np.arccos(np.clip(np.sum(uu * vv, axis=1), -1, 1))
  tol = dict(atol=1e-5, rtol=0) if dtype is np.float32 else dict(atol=1e-10, rtol=0)
  chex.assert_trees_all_close(got, want, **tol)
  chex.assert_trees_all_close(got, angles, **tol)


@pytest.mark.parametrize("dtype", DTYPES, ids=ids)
@pytest.mark.parametrize("metric", METRICS)
def test_diagonal_is_exactly_zero_symmetric_and_in_range(metric, dtype):
  rng = np.random.default_rng(5)
  x = random_points(rng, 12, 5, metric, dtype)
  d = np.asarray(pd(jnp.asarray(x), metric=metric))
  assert np.all(np.diag(d) == 0.0)
  assert not np.any(np.signbit(d)), "distances must be >= +0"
  chex.assert_trees_all_close(d, d.T, rtol=0, atol=1e-7 if dtype is np.float32 else 1e-15)
  upper = {"cosine": 2.0, "great_circle": dtype(np.pi)}.get(metric, np.inf)
  assert np.all(d <= upper)


@pytest.mark.parametrize("dtype", DTYPES, ids=ids)
def test_great_circle_range_and_exact_extremes(dtype):
  axes = np.eye(3, dtype=dtype)
  x = np.concatenate([axes, -axes])  # exact unit vectors: 0, pi/2 and pi apart
  d = np.asarray(pd(jnp.asarray(x), metric="great_circle"))
  want = np.full((6, 6), np.pi / 2)
  np.fill_diagonal(want, 0.0)
  for i in range(3):
    want[i, i + 3] = want[i + 3, i] = np.pi
  chex.assert_trees_all_close(d, want, rtol=1e-7 if dtype is np.float32 else 1e-15)
  assert np.all((d >= 0) & (d <= dtype(np.pi)))  # pi rounded to the dtype


# Absolute tolerance for small distances: float32 ~1e-6 (1e-5 used), float64 1e-9.
SMALL_ATOL = {np.float32: 1e-5, np.float64: 1e-9}


@pytest.mark.parametrize("dtype", DTYPES, ids=ids)
@pytest.mark.parametrize("metric", METRICS)
def test_identical_points_have_distance_zero(metric, dtype):
  """Identical points are at distance 0 up to the Gram form's documented noise floor
  (squared quantities within a few eps, distances within a few sqrt(eps)), whether they
  are a row of x and the same row of a copy y, or two equal rows of x. The diagonal of
  pd(x) is exactly 0 (test_diagonal_is_exactly_zero_symmetric_and_in_range)."""
  rng = np.random.default_rng(6)
  x = random_points(rng, 16, 8, "cosine", dtype)  # unit vectors for every metric
  eps = np.finfo(dtype).eps
  atol = 8 * eps if metric in ("squared_euclidean", "cosine") else 4 * np.sqrt(eps)
  d_copy = np.diag(np.asarray(pd(jnp.asarray(x), jnp.asarray(x.copy()), metric=metric)))
  # Eagerly too: rounding differs from the fused jitted computation (in float64 the
  # jitted result happens to cancel exactly for these inputs, the eager one does not).
  d_copy_eager = np.diag(np.asarray(pairwise_distances(jnp.asarray(x), jnp.asarray(x.copy()),
                                                       metric=metric)))
  d_dup = np.asarray(pd(jnp.asarray(np.concatenate([x, x])), metric=metric))
  d_dup = np.diag(d_dup[:16, 16:])
  for name, d in (("x vs a copy of x (jit)", d_copy), ("x vs a copy of x (eager)", d_copy_eager),
                  ("duplicated rows of x (jit)", d_dup)):
    chex.assert_trees_all_close(d, np.zeros(16), atol=atol, rtol=0, custom_message=name)


@pytest.mark.parametrize("dtype", DTYPES, ids=ids)
@pytest.mark.parametrize("metric", METRICS)
def test_nearly_identical_points_have_accurate_distances(metric, dtype):
  """Unit vectors a small angle apart (1e-2 rad in float32, 1e-6 in float64).

  The Gram form's squared distances carry an absolute error of a few eps, so a
  distance theta carries about eps / theta: the docstring's noise floor."""
  rng = np.random.default_rng(16)
  x = random_points(rng, 16, 8, "cosine", dtype)
  theta = 1e-2 if dtype is np.float32 else 1e-6
  ys = []
  for row in x.astype(np.float64):
    t = rng.normal(size=8)
    t -= t.dot(row) * row
    t /= np.linalg.norm(t)
    ys.append(np.cos(theta) * row + np.sin(theta) * t)
  y = np.asarray(ys, dtype)
  got = np.diag(np.asarray(pd(jnp.asarray(x), jnp.asarray(y), metric=metric)))
  want = np.array([ref_distance(a, b, metric) for a, b in zip(x, y)])
  atol = max(SMALL_ATOL[dtype], 8 * np.finfo(dtype).eps / theta)
  chex.assert_trees_all_close(got, want, atol=atol, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=ids)
def test_great_circle_antipodal_value(dtype):
  # Antipodal pairs u, -u with u a normalised random vector: pi up to the accuracy
  # the spec formula has there. The float64 reference of the formula at these very
  # inputs sits below pi by up to 2*sqrt(2*(1 - ||u||)), so compare with pi loosely.
  rng = np.random.default_rng(7)
  u = np.asarray(normalize(jnp.asarray(rng.normal(size=(32, 8)).astype(dtype))))
  d = np.diag(np.asarray(pd(jnp.asarray(u), jnp.asarray(-u),
                                            metric="great_circle")))
  tol = 2e-3 if dtype is np.float32 else 1e-7
  chex.assert_trees_all_close(d, np.full(32, np.pi), atol=tol, rtol=0)
  assert np.all(d <= dtype(np.pi))


# ----------------------------------------------------------------------------
# pairwise_distances: gradients.


@pytest.mark.parametrize("same", [True, False], ids=["x_only", "x_and_y"])
@pytest.mark.parametrize("metric", METRICS)
def test_gradient_matches_finite_differences(metric, same):
  rng = np.random.default_rng([8, METRICS.index(metric)])
  x = random_points(rng, 5, 3, metric, np.float64)
  y = random_points(rng, 4, 3, metric, np.float64)
  c = rng.normal(size=(5, 5) if same else (5, 4))
  if same:
    np.fill_diagonal(c, 0.0)  # the diagonal is the constant 0

  def lib(a, b):
    d = pd(a, None if same else b, metric=metric)
    return jnp.sum(jnp.asarray(c) * d)

  def ref(a, b):
    return float(np.sum(c * ref_pairwise(a, a if same else b, metric)))

  gx, gy = jax.jit(jax.grad(lib, argnums=(0, 1)))(jnp.asarray(x), jnp.asarray(y))
  want_x, want_y = numeric_grad(lambda a: ref(a, y), x), numeric_grad(lambda b: ref(x, b), y)
  if metric == "great_circle":
    # Defined on the sphere: only the tangential part of the gradient is the
    # metric's (the radial part depends on how the formula extends off the sphere,
    # and obtuse angles use the supplementary chord there).
    gx, want_x = tangential(gx, x), tangential(want_x, x)
    gy, want_y = tangential(gy, y), tangential(want_y, y)
  chex.assert_trees_all_close(gx, want_x, rtol=1e-6, atol=1e-8)
  if not same:
    chex.assert_trees_all_close(gy, want_y, rtol=1e-6, atol=1e-8)


def tangential(g, points):
  g, points = np.asarray(g), np.asarray(points)
  return g - np.sum(g * points, axis=1, keepdims=True) * points


@pytest.mark.parametrize("dtype", DTYPES, ids=ids)
@pytest.mark.parametrize("metric", METRICS)
def test_gradient_at_identical_points(metric, dtype):
  """Finite everywhere; the zero subgradient at distance 0 (for cosine, whose formula
  1 - u.v has no minimum at u = v in R^D, only finiteness is required)."""
  rng = np.random.default_rng(9)
  x = random_points(rng, 6, 4, "cosine", dtype)
  xx = np.concatenate([x, x])  # rows i and i + 6 are identical

  def between_copies(a, b):
    return jnp.sum(jnp.diag(pd(a, b, metric=metric)))

  def duplicated_rows(a):
    return jnp.sum(jnp.diag(pd(a, metric=metric)[:6, 6:]))

  def all_grads(x, x_copy, xx):
    ga, gb = jax.grad(between_copies, argnums=(0, 1))(x, x_copy)
    return ga, gb, jax.grad(duplicated_rows)(xx)

  ga, gb, gd = jax.jit(all_grads)(jnp.asarray(x), jnp.asarray(x.copy()), jnp.asarray(xx))
  for name, g in (("x vs copy (x)", ga), ("x vs copy (y)", gb), ("duplicated rows", gd)):
    assert np.all(np.isfinite(np.asarray(g))), name
    if metric != "cosine":
      chex.assert_trees_all_close(g, np.zeros(g.shape), atol=1e-6, rtol=0, custom_message=name)


@pytest.mark.parametrize("dtype", DTYPES, ids=ids)
def test_great_circle_gradient_at_exact_axis_antipodes_is_zero(dtype):
  axes = np.eye(3, dtype=dtype)
  g = jax.jit(jax.grad(lambda a: jnp.sum(jnp.diag(pd(a, -a, metric="great_circle")))))(
      jnp.asarray(axes))
  assert np.all(np.asarray(g) == 0.0)


@pytest.mark.parametrize("dtype", DTYPES, ids=ids)
@pytest.mark.parametrize("same", [True, False], ids=["x_only", "x_and_y"])
def test_great_circle_gradient_at_antipodal_points_is_zero(same, dtype):
  """The docstring/spec: at antipodal points (distance pi, the maximum) the gradient is
  the zero subgradient. u is a normalised random vector and the other point is -u."""
  rng = np.random.default_rng(10)
  u = normalize(jnp.asarray(rng.normal(size=(16, 8)).astype(dtype)))

  if same:
    def f(a):
      d = pd(jnp.concatenate([a, -a]), metric="great_circle")
      return jnp.sum(jnp.diag(d[:16, 16:]))
  else:
    def f(a):
      return jnp.sum(jnp.diag(pd(a, -a, metric="great_circle")))

  g = np.asarray(jax.jit(jax.grad(f))(u))
  assert np.all(np.isfinite(g))
  chex.assert_trees_all_close(g, np.zeros_like(g), atol=1e-3, rtol=0)


@pytest.mark.parametrize("metric", METRICS)
def test_gradients_finite_for_zero_and_near_antipodal_inputs(metric):
  rng = np.random.default_rng(11)
  u, t = orthonormal_pair(rng, 4)
  pts = np.stack([u, -u, np.cos(np.pi - 1e-4) * u + np.sin(np.pi - 1e-4) * t,
                  np.zeros(4), u])
  grad = jax.jit(jax.grad(
      lambda a, b: jnp.sum(pd(a, metric=metric)) + jnp.sum(pd(b, metric=metric)), argnums=(0, 1)))
  for g in grad(jnp.asarray(pts.astype(np.float32)), jnp.asarray(pts)):
    assert np.all(np.isfinite(np.asarray(g))), g.dtype
  # All points at the origin: every distance is at its minimum 0 (zero subgradient);
  # for cosine, 1 - u.v has the gradient -v = 0 there.
  for g in grad(jnp.zeros((5, 4), np.float32), jnp.zeros((5, 4))):
    assert np.all(np.asarray(g) == 0.0), g.dtype


# ----------------------------------------------------------------------------
# Transformations and errors.


@pytest.mark.parametrize("metric", METRICS)
def test_jit_eager_and_vmap(metric):
  rng = np.random.default_rng(12)
  xs = jnp.asarray(random_points(rng, 4 * 7, 5, metric, np.float64).reshape(4, 7, 5))
  ys = jnp.asarray(random_points(rng, 4 * 3, 5, metric, np.float64).reshape(4, 3, 5))
  # Eager == jit, one case.
  eager = pairwise_distances(xs[0], ys[0], metric=metric)
  chex.assert_trees_all_close(pd(xs[0], ys[0], metric=metric), eager, rtol=1e-12, atol=1e-15)
  # vmap over a leading axis == a loop, with and without y.
  f = jax.jit(jax.vmap(lambda x, y: (pd(x, y, metric=metric), pd(x, metric=metric))))
  looped = [(pd(xs[i], ys[i], metric=metric), pd(xs[i], metric=metric)) for i in range(4)]
  chex.assert_trees_all_close(f(xs, ys), jax.tree_util.tree_map(lambda *v: jnp.stack(v), *looped),
                              rtol=1e-12, atol=1e-15)


BAD_INPUTS = {
    "unknown_metric": (np.ones((3, 2)), None, "manhattan"),
    "x_1d": (np.ones(3), None, "euclidean"),
    "x_3d": (np.ones((2, 3, 2)), None, "cosine"),
    "y_1d": (np.ones((3, 2)), np.ones(2), "euclidean"),
    "dimension_mismatch": (np.ones((3, 2)), np.ones((4, 3)), "great_circle"),
    "integer_x": (np.ones((3, 2), np.int32), None, "squared_euclidean"),
    "integer_y": (np.ones((3, 2)), np.ones((3, 2), np.int32), "euclidean"),
}


@pytest.mark.parametrize("under_jit", [False, True])
@pytest.mark.parametrize("bad", list(BAD_INPUTS))
def test_bad_inputs_raise(bad, under_jit):
  x, y, metric = BAD_INPUTS[bad]
  if under_jit:
    f = jax.jit(lambda a, b: pairwise_distances(a, b, metric=metric))
  else:
    f = lambda a, b: pairwise_distances(a, b, metric=metric)  # noqa: E731
  with pytest.raises(ValueError):
    f(jnp.asarray(x), None if y is None else jnp.asarray(y))


# ----------------------------------------------------------------------------
# l2_normalize.


@pytest.mark.parametrize("dtype", DTYPES, ids=ids)
@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_l2_normalize_matches_reference(axis, dtype):
  rng = np.random.default_rng(13)
  x = rng.normal(size=(5, 4)).astype(dtype)
  x[2] = 0.0  # a zero row
  x[3] *= 1e-14  # a norm below eps = 1e-12: divided by eps
  want = np.zeros(x.shape)
  xx = x.astype(np.float64)
  if axis == 0:
    xx = xx.T
  for i in range(xx.shape[0]):
    norm = math.sqrt(sum(v * v for v in xx[i]))
    want_row = xx[i] / max(norm, 1e-12)
    if axis == 0:
      want[:, i] = want_row
    else:
      want[i] = want_row
  got = normalize(jnp.asarray(x), axis=axis)
  assert got.dtype == dtype and got.shape == x.shape
  chex.assert_trees_all_close(got, want, rtol=1e-6 if dtype is np.float32 else 1e-12, atol=1e-7)


def test_l2_normalize_eps_argument():
  x = jnp.array([[3e-3, 4e-3], [3.0, 4.0]], jnp.float64)
  chex.assert_trees_all_close(normalize(x, eps=0.1), np.array([[0.03, 0.04], [0.6, 0.8]]),
                              rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, jnp.bfloat16, np.float16], ids=ids)
def test_l2_normalize_zero_vector_value_and_gradient(dtype):
  """'Array of any floating dtype': the zero vector maps to 0, with a finite gradient."""
  z = jnp.zeros((2, 3), dtype)
  out = normalize(z)
  assert out.dtype == z.dtype
  assert np.all(np.asarray(out, np.float32) == 0.0)
  jac = jax.jit(jax.jacrev(lambda a: normalize(a[None])[0]))(jnp.zeros(3, dtype))
  assert np.all(np.isfinite(np.asarray(jac, np.float32)))
  if dtype in (np.float32, np.float64):
    # Docstring: the gradient at 0 is 1/eps times the identity.
    chex.assert_trees_all_close(jac, np.eye(3) / 1e-12, rtol=1e-6)


def test_l2_normalize_gradient_matches_finite_differences():
  rng = np.random.default_rng(14)
  x = rng.normal(size=(3, 4))
  c = rng.normal(size=(3, 4))

  def ref(a):
    return float(np.sum(c * a / np.linalg.norm(a, axis=1, keepdims=True)))

  g = jax.jit(jax.grad(lambda a: jnp.sum(jnp.asarray(c) * normalize(a))))(jnp.asarray(x))
  chex.assert_trees_all_close(g, numeric_grad(ref, x), rtol=1e-6, atol=1e-8)
  # Eager == jit; vmap over rows == the batched call.
  chex.assert_trees_all_close(l2_normalize(jnp.asarray(x)), normalize(jnp.asarray(x)), rtol=1e-14)
  chex.assert_trees_all_close(jax.jit(jax.vmap(l2_normalize))(jnp.asarray(x)),
                              normalize(jnp.asarray(x)), rtol=1e-14)


# ----------------------------------------------------------------------------
# paired_distances and self_gram.


@pytest.mark.parametrize("metric", METRICS)
def test_paired_distances_equal_the_diagonal_of_pairwise(metric):
  rng = np.random.default_rng([21, METRICS.index(metric)])
  x = random_points(rng, 12, 5, metric, np.float64)
  y = random_points(rng, 12, 5, metric, np.float64)
  want = np.diag(np.asarray(pairwise_distances(jnp.asarray(x), jnp.asarray(y), metric=metric)))
  got = np.asarray(jax.jit(paired_distances, static_argnames="metric")(x, y, metric=metric))
  chex.assert_trees_all_close(got, want, rtol=1e-10, atol=1e-12)
  chex.assert_trees_all_close(got, np.array([ref_distance(a, b, metric) for a, b in zip(x, y)]),
                              rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("metric", ["euclidean", "great_circle"])
def test_paired_distances_resolve_small_distances_in_float32(metric):
  """Explicit differences have no Gram-form noise floor: 1e-4 rad to 1e-3 relative."""
  rng = np.random.default_rng(22)
  x = random_points(rng, 16, 8, "cosine", np.float64)
  t = rng.normal(size=x.shape)
  t -= np.sum(t * x, axis=1, keepdims=True) * x
  t /= np.linalg.norm(t, axis=1, keepdims=True)
  theta = 1e-4
  y = np.cos(theta) * x + np.sin(theta) * t
  got = np.asarray(paired_distances(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32),
                                    metric=metric))
  want = np.array([ref_distance(a, b, metric) for a, b in zip(x.astype(np.float32), y.astype(np.float32))])
  chex.assert_trees_all_close(got, want, rtol=1e-3)


def test_paired_distances_gradient_is_finite_at_identical_and_antipodal_points():
  u = np.asarray(normalize(jnp.asarray(np.random.default_rng(23).normal(size=(6, 4)))))
  for metric in METRICS:
    for other in (u, -u):
      g = jax.grad(lambda a: jnp.sum(paired_distances(a, jnp.asarray(other), metric=metric)))(
          jnp.asarray(u))
      assert np.all(np.isfinite(np.asarray(g))), metric


def test_self_gram_matches_the_plain_product_in_both_modes():
  rng = np.random.default_rng(24)
  x = jnp.asarray(rng.normal(size=(7, 3)))
  dx = jnp.asarray(rng.normal(size=(7, 3)))
  cotangent = jnp.asarray(rng.normal(size=(7, 7)))

  def plain(a):
    return a @ a.T

  chex.assert_trees_all_close(self_gram(x), plain(x), rtol=1e-12)
  chex.assert_trees_all_close(jax.jvp(self_gram, (x,), (dx,))[1], jax.jvp(plain, (x,), (dx,))[1],
                              rtol=1e-12)
  chex.assert_trees_all_close(jax.vjp(self_gram, x)[1](cotangent), jax.vjp(plain, x)[1](cotangent),
                              rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_orthogonal_procrustes_undoes_a_random_rotation_like_scipy(dtype):
  import scipy.linalg

  from sphereembed.geometry import orthogonal_procrustes
  rng = np.random.default_rng(0)
  x = rng.normal(size=(50, 3))
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
  noisy = x @ q + 0.01 * rng.normal(size=x.shape)
  r = orthogonal_procrustes(noisy.astype(dtype), x.astype(dtype))
  assert r.dtype == dtype
  r = np.asarray(r)
  reference, _ = scipy.linalg.orthogonal_procrustes(noisy, x)
  tol = 1e-5 if dtype == np.float32 else 1e-10
  np.testing.assert_allclose(r, reference, atol=tol)
  np.testing.assert_allclose(r @ r.T, np.eye(3), atol=tol)
  np.testing.assert_allclose(r, q.T, atol=0.02)  # the inverse rotation, up to the noise


def test_orthogonal_procrustes_rejects_mismatched_shapes():
  from sphereembed.geometry import orthogonal_procrustes
  with pytest.raises(ValueError, match="one shape"):
    orthogonal_procrustes(np.ones((4, 3)), np.ones((4, 2)))
