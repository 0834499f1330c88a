"""Tests of the N-Centroids Loss against a brute-force loop over samples and centroids."""


import chex
import jax
import numpy as np
import pytest

from sphereembed.losses import ncl
from tests.references import jit_fast_compile, numeric_grad, ref_angle_distance

TOLERANCES = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-10, atol=1e-12)}
METRICS = ("cosine", "euclidean", "great_circle", "squared_euclidean")

# Value tests go through module-level jitted functions (one compilation per
# input signature); eager calls are covered by the jit == eager and error tests.
_ncl = jit_fast_compile(ncl, static_argnames=("metric",))
_ncl_grads = jit_fast_compile(jax.grad(ncl, argnums=(0, 2)), static_argnames=("metric",))


def _unit(rng, n, dim, dtype):
  x = rng.normal(size=(n, dim))
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(dtype)


def _ncl_reference(x, labels, centroids, metric="great_circle", negative_weight=1.0,
                   weights=None):
  n, k_total = len(x), len(centroids)
  weights = np.ones(n) if weights is None else np.asarray(weights, np.float64)
  total = norm = 0.0
  for i in range(n):
    y = int(labels[i])
    own = ref_angle_distance(x[i], centroids[y], metric)
    others = [ref_angle_distance(x[i], centroids[k], metric) for k in range(k_total) if k != y]
    negative = min(others) + sum(others) / len(others) if others else 0.0
    total += weights[i] * (own - negative_weight * negative)
    norm += weights[i]
  return total / norm if norm > 0 else 0.0


# ----------------------------------------------------------------------------
# Values.


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch_size,num_centroids", [(1, 3), (5, 2), (16, 4), (40, 10)])
def test_matches_reference(dtype, batch_size, num_centroids):
  rng = np.random.default_rng(batch_size * 13 + num_centroids)
  x = _unit(rng, batch_size, 5, dtype)
  centroids = _unit(rng, num_centroids, 5, dtype)
  labels = rng.integers(0, num_centroids, batch_size).astype(np.int32)
  loss = _ncl(x, labels, centroids)
  assert loss.dtype == dtype and loss.shape == ()
  chex.assert_trees_all_close(loss, np.asarray(_ncl_reference(x, labels, centroids), dtype),
                              **TOLERANCES[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("metric", METRICS)
def test_metrics_match_reference(dtype, metric):
  rng = np.random.default_rng(3)
  x = _unit(rng, 12, 3, dtype)
  centroids = _unit(rng, 4, 3, dtype)
  labels = rng.integers(0, 4, 12).astype(np.int32)
  for negative_weight in (0.0, 0.5, 2.0):  # traced: no recompilation
    loss = _ncl(x, labels, centroids, metric=metric, negative_weight=negative_weight)
    expected = _ncl_reference(x, labels, centroids, metric, negative_weight)
    chex.assert_trees_all_close(loss, np.asarray(expected, dtype), **TOLERANCES[dtype])


def test_negative_weight_zero_is_the_own_distance():
  rng = np.random.default_rng(4)
  x, centroids = _unit(rng, 12, 3, np.float64), _unit(rng, 4, 3, np.float64)
  labels = rng.integers(0, 4, 12).astype(np.int32)
  own = np.mean([ref_angle_distance(x[i], centroids[labels[i]], "great_circle") for i in range(12)])
  chex.assert_trees_all_close(_ncl(x, labels, centroids, negative_weight=0.0), own, rtol=1e-10)
  # Linear in negative_weight: the loss at 1 is different.
  assert abs(float(_ncl(x, labels, centroids, negative_weight=1.0)) - own) > 0.1


def test_single_centroid_has_no_negative_term():
  rng = np.random.default_rng(5)
  x, centroid = _unit(rng, 12, 3, np.float64), _unit(rng, 1, 3, np.float64)
  labels = np.zeros(12, np.int32)
  own = np.mean([ref_angle_distance(x[i], centroid[0], "great_circle") for i in range(12)])
  for negative_weight in (0.0, 1.0, 5.0):
    chex.assert_trees_all_close(_ncl(x, labels, centroid, negative_weight=negative_weight), own,
                                rtol=1e-10)


def test_jit_equals_eager():
  rng = np.random.default_rng(6)
  x, centroids = _unit(rng, 12, 3, np.float32), _unit(rng, 4, 3, np.float32)
  labels = rng.integers(0, 4, 12).astype(np.int32)
  weights = rng.random(12).astype(np.float32)
  eager = ncl(x, labels, centroids, negative_weight=0.5, weights=weights)
  jitted = _ncl(x, labels, centroids, negative_weight=0.5, weights=weights)
  chex.assert_trees_all_close(eager, jitted, rtol=1e-6)
  expected = _ncl_reference(x, labels, centroids, "great_circle", 0.5, weights)
  chex.assert_trees_all_close(eager, np.float32(expected), rtol=1e-5)


def test_vmap_equals_loop():
  rng = np.random.default_rng(7)
  x = np.stack([_unit(rng, 12, 3, np.float64) for _ in range(3)])
  labels = rng.integers(0, 4, (3, 12)).astype(np.int32)
  centroids = _unit(rng, 4, 3, np.float64)
  negative_weights = np.array([0.0, 0.5, 1.0])
  batched = jit_fast_compile(jax.vmap(lambda e, l, w: ncl(e, l, centroids, negative_weight=w)))(
      x, labels, negative_weights)
  looped = np.array([_ncl(x[v], labels[v], centroids, negative_weight=negative_weights[v])
                     for v in range(3)])
  chex.assert_trees_all_close(batched, looped, rtol=1e-12)
  assert len(set(np.round(looped, 8))) == 3


# ----------------------------------------------------------------------------
# Gradients.


@pytest.mark.parametrize("metric", METRICS)
def test_gradient_matches_finite_differences(metric):
  rng = np.random.default_rng(8)
  x, centroids = _unit(rng, 5, 3, np.float64), _unit(rng, 4, 3, np.float64)
  labels = np.array([0, 1, 2, 3, 1], np.int32)
  weights = np.array([1.0, 0.5, 2.0, 1.0, 1.5])
  # Smooth point: every sample's nearest wrong centroid is unique.
  for i in range(5):
    others = sorted(ref_angle_distance(x[i], centroids[k], metric) for k in range(4) if k != labels[i])
    assert others[1] - others[0] > 1e-3
  kwargs = dict(metric=metric, negative_weight=0.7, weights=weights)
  numerical = numeric_grad(lambda e: _ncl(e, labels, centroids, **kwargs), x)
  g_x, g_c = _ncl_grads(x, labels, centroids, **kwargs)
  chex.assert_trees_all_close(g_x, numerical, rtol=1e-6, atol=1e-8)
  assert np.abs(numerical).max() > 1e-2
  np.testing.assert_array_equal(g_c, 0.0)  # the centroids are constants


def test_gradient_in_negative_weight():
  rng = np.random.default_rng(9)
  x, centroids = _unit(rng, 12, 3, np.float64), _unit(rng, 4, 3, np.float64)
  labels = rng.integers(0, 4, 12).astype(np.int32)
  f = lambda w: ncl(x, labels, centroids, negative_weight=w)
  value = lambda w: _ncl(x, labels, centroids, negative_weight=w)
  # d/dw = -mean(min + mean of the wrong distances) = f(1) - f(0).
  chex.assert_trees_all_close(jit_fast_compile(jax.grad(f))(0.3), value(1.0) - value(0.0), rtol=1e-10)


def test_tied_nearest_centroids_split_the_gradient():
  x = np.array([[1.0, 0.0, 0.0]])
  centroids = np.array([[0.8, 0.6, 0.0], [0.0, 1.0, 0.0], [0.0, -1.0, 0.0]])
  labels = np.array([0], np.int32)
  g_x, _ = _ncl_grads(x, labels, centroids)
  own_only, _ = _ncl_grads(x, labels, centroids, negative_weight=0.0)
  # The angle to c_1 = (0, 1, 0) has gradient (1, -1, 0) at x, to c_2 = (0, -1, 0)
  # (1, 1, 0). Both tie for the min: split evenly, the min and the mean each
  # contribute (1, 0, 0), so the push is -(2, 0, 0) and has no y component.
  chex.assert_trees_all_close(g_x, own_only + np.array([[-2.0, 0.0, 0.0]]), atol=1e-12)
  assert abs(own_only[0, 1] + 1.0) < 1e-12  # the pull itself does have one


# ----------------------------------------------------------------------------
# Edge cases: value and a finite gradient.


def test_one_class_batch():
  rng = np.random.default_rng(10)
  x, centroids = _unit(rng, 12, 3, np.float64), _unit(rng, 4, 3, np.float64)
  labels = np.full(12, 2, np.int32)
  chex.assert_trees_all_close(_ncl(x, labels, centroids),
                              _ncl_reference(x, labels, centroids), rtol=1e-10)
  assert np.all(np.isfinite(_ncl_grads(x, labels, centroids)[0]))


def test_singleton_classes_and_one_sample():
  rng = np.random.default_rng(11)
  x, centroids = _unit(rng, 4, 3, np.float64), _unit(rng, 4, 3, np.float64)
  labels = np.arange(4, dtype=np.int32)
  chex.assert_trees_all_close(_ncl(x, labels, centroids),
                              _ncl_reference(x, labels, centroids), rtol=1e-10)
  assert np.all(np.isfinite(_ncl_grads(x, labels, centroids)[0]))
  one = _ncl(x[:1], labels[:1], centroids)
  chex.assert_trees_all_close(one, _ncl_reference(x[:1], labels[:1], centroids), rtol=1e-10)
  assert np.all(np.isfinite(_ncl_grads(x[:1], labels[:1], centroids)[0]))


def test_duplicates_and_sample_on_its_centroid():
  centroids = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
  x = np.array([[1.0, 0.0, 0.0]] * 3)
  labels = np.zeros(3, np.int32)
  # d = (0, pi/2, pi): 0 - (pi/2 + 3 pi/4) for each copy.
  chex.assert_trees_all_close(_ncl(x, labels, centroids), -5 * np.pi / 4, rtol=1e-12)
  g_x, _ = _ncl_grads(x, labels, centroids)
  assert np.all(np.isfinite(g_x))
  # d_y = 0 and the antipodal d = pi have the zero subgradient; the push from
  # the nearest wrong centroid c_1 (weight 1 + 1/2) remains: the angle to c_1
  # has gradient (1, -1, 0), so each copy gets -1.5 * (1, -1, 0) / 3.
  chex.assert_trees_all_close(g_x, np.tile([[-0.5, 0.5, 0.0]], (3, 1)), atol=1e-12)


@pytest.mark.parametrize("negative_weight", [0.0, 1.0])
def test_zero_embeddings(negative_weight):
  rng = np.random.default_rng(12)
  centroids = _unit(rng, 4, 3, np.float64)
  x = np.zeros((3, 3))
  labels = np.array([0, 1, 3], np.int32)
  expected = np.pi / 3 * (1 - 2 * negative_weight)
  chex.assert_trees_all_close(_ncl(x, labels, centroids, negative_weight=negative_weight),
                              expected, rtol=1e-12)
  assert np.all(np.isfinite(_ncl_grads(x, labels, centroids, negative_weight=negative_weight)[0]))


def test_empty_batch():
  centroids = np.eye(3)
  loss = _ncl(np.zeros((0, 3)), np.zeros(0, np.int32), centroids)
  assert float(loss) == 0.0


# ----------------------------------------------------------------------------
# Weights.


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weights(dtype):
  rng = np.random.default_rng(13)
  x, centroids = _unit(rng, 12, 3, dtype), _unit(rng, 4, 3, dtype)
  labels = rng.integers(0, 4, 12).astype(np.int32)
  chex.assert_trees_all_close(_ncl(x, labels, centroids, weights=np.ones(12, dtype)),
                              _ncl(x, labels, centroids), **TOLERANCES[dtype])
  counts = np.array([0, 1, 3, 2, 0, 1, 1, 2, 0, 1, 0, 1])  # 12 samples once repeated
  repeated = _ncl(np.repeat(x, counts, 0), np.repeat(labels, counts), centroids)
  weighted = _ncl(x, labels, centroids, weights=counts.astype(dtype))
  chex.assert_trees_all_close(weighted, repeated, **TOLERANCES[dtype])
  chex.assert_trees_all_close(
      weighted, np.asarray(_ncl_reference(x, labels, centroids, weights=counts), dtype),
      **TOLERANCES[dtype])
  assert abs(float(weighted) - float(_ncl(x, labels, centroids))) > 1e-3


def test_all_zero_weights():
  rng = np.random.default_rng(14)
  x, centroids = _unit(rng, 12, 3, np.float64), _unit(rng, 4, 3, np.float64)
  labels = rng.integers(0, 4, 12).astype(np.int32)
  assert float(_ncl(x, labels, centroids, weights=np.zeros(12))) == 0.0
  np.testing.assert_array_equal(_ncl_grads(x, labels, centroids, weights=np.zeros(12))[0], 0.0)


# ----------------------------------------------------------------------------
# Errors.

_X, _C, _Y = np.eye(3)[:2], np.eye(3), np.array([0, 2])


@pytest.mark.parametrize("args,kwargs,match", [
    ((np.zeros(3), np.zeros(3, int), _C), {}, "embeddings must have shape"),
    ((_X.astype(np.int32), _Y, _C), {}, "floating"),
    ((_X, _Y, np.eye(3)[0]), {}, "centroids must have shape"),
    ((_X, _Y, np.eye(4)), {}, r"centroids must have shape \(K, 3\)"),
    ((_X, _Y, _C.astype(np.float32)), {}, "dtype of the embeddings"),
    ((_X, _Y, np.zeros((0, 3))), {}, "at least one centroid"),
    ((_X, np.eye(3, dtype=np.int32)[_Y], _C), {}, r"\(B,\) int class ids"),
    ((_X, _Y.astype(np.float64), _C), {}, "integer"),
    ((_X, np.array([0, 1, 2]), _C), {}, "rows"),
    ((_X, _Y, _C), {"negative_weight": np.ones(2)}, "negative_weight must be a scalar"),
    ((_X, _Y, _C), {"weights": np.ones(3)}, "weights"),
    ((_X, _Y, _C), {"metric": "manhattan"}, "metric"),
])
def test_static_errors(args, kwargs, match):
  with pytest.raises(ValueError, match=match):
    ncl(*args, **kwargs)
  with pytest.raises(ValueError, match=match):  # also under jit
    jax.jit(ncl, static_argnames=("metric",))(*args, **kwargs)


@pytest.mark.parametrize("args,kwargs,match", [
    ((np.array([[np.nan, 0, 0], [1, 0, 0]]), _Y, _C), {}, "embeddings contain"),
    ((_X, _Y, np.array([[1, 0, 0], [0, np.inf, 0], [0, 0, 1.0]])), {}, "centroids contain"),
    ((_X, np.array([0, -1]), _C), {}, "non-negative"),
    ((_X, np.array([0, 3]), _C), {}, "< num_classes = 3"),
    ((_X, _Y, _C), {"weights": np.array([1.0, -2.0])}, "non-negative"),
])
def test_value_errors(args, kwargs, match):
  with pytest.raises(ValueError, match=match):
    ncl(*args, **kwargs)
