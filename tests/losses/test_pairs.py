"""Tests of the pair losses: contrastive, siamese_l1_bce, siamese_cosine_bce.

Every loss is compared with a brute-force NumPy reference written with explicit
Python loops over pairs, in float32 and float64.
"""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sphereembed.losses import contrastive, siamese_cosine_bce, siamese_l1_bce
from tests.references import jit_fast_compile, numeric_grad, ref_angle_distance


# Value tests go through module-level jitted functions: one compilation per
# input signature (eager calls compile every primitive for every new shape,
# which is ten times slower). Eager behaviour is covered by the jit == eager
# tests and by the error tests.
_contrastive = jit_fast_compile(contrastive, static_argnames=("metric", "return_stats"))
_contrastive_grad = jit_fast_compile(jax.grad(contrastive), static_argnames=("metric",))


def _cosine_fn(a, b, same, scale, bias, weights=None):
  return siamese_cosine_bce(a, b, same, scale=scale, bias=bias, weights=weights)


_l1 = jit_fast_compile(siamese_l1_bce)
_l1_grads = jit_fast_compile(jax.grad(siamese_l1_bce, argnums=(0, 1, 3, 4)))
_cosine = jit_fast_compile(_cosine_fn)
_cosine_grads = jit_fast_compile(jax.grad(_cosine_fn, argnums=(0, 1, 3, 4)))

TOLERANCES = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-10, atol=1e-12)}
METRIC_MARGINS = {"euclidean": 2.5, "squared_euclidean": 6.0, "cosine": 0.9, "great_circle": 1.5}


# ----------------------------------------------------------------------------
# Data and brute-force references.


def _labels(rng, batch_size, num_classes, form):
  if form == "int":
    return rng.integers(0, num_classes, batch_size).astype(np.int32)
  hot = rng.random((batch_size, num_classes)) < min(1.0, 1.5 / num_classes)
  return {"multi_hot": hot.astype(np.int32), "multi_hot_bool": hot,
          "multi_hot_float": hot.astype(np.float32)}[form]


def _embeddings(rng, batch_size, dim, dtype, unit):
  x = rng.normal(size=(batch_size, dim))
  if unit:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
  return x.astype(dtype)


def _is_positive(labels, i, j):
  if labels.ndim == 1:
    return labels[i] == labels[j]
  return any(labels[i, c] > 0 and labels[j, c] > 0 for c in range(labels.shape[1]))


def _contrastive_reference(x, labels, margin, metric, weights=None):
  n = len(x)
  weights = np.ones(n) if weights is None else np.asarray(weights, np.float64)
  total = norm = 0.0
  for i in range(n):
    for j in range(i + 1, n):
      d = ref_angle_distance(x[i], x[j], metric)
      loss = 0.5 * d**2 if _is_positive(labels, i, j) else 0.5 * max(0.0, margin - d) ** 2
      total += weights[i] * weights[j] * loss
      norm += weights[i] * weights[j]
  return total / norm if norm > 0 else 0.0


def _bce(logit, y):
  # -[y log sigmoid(z) + (1 - y) log sigmoid(-z)], stable form.
  return y * np.logaddexp(0.0, -logit) + (1 - y) * np.logaddexp(0.0, logit)


def _l1_reference(x1, x2, same, weight, bias, weights=None):
  n = len(x1)
  weights = np.ones(n) if weights is None else np.asarray(weights, np.float64)
  total = norm = 0.0
  for k in range(n):
    logit = float(bias) + sum(
        float(weight[c]) * abs(float(x1[k, c]) - float(x2[k, c])) for c in range(x1.shape[1]))
    total += weights[k] * _bce(logit, float(same[k]))
    norm += weights[k]
  return total / norm if norm > 0 else 0.0


def _cosine_reference(x1, x2, same, scale, bias, weights=None):
  n = len(x1)
  weights = np.ones(n) if weights is None else np.asarray(weights, np.float64)
  total = norm = 0.0
  for k in range(n):
    a, b = np.asarray(x1[k], np.float64), np.asarray(x2[k], np.float64)
    na, nb = math.sqrt(sum(a * a)), math.sqrt(sum(b * b))
    cos = sum(a * b) / (na * nb) if na > 0 and nb > 0 else 0.0
    total += weights[k] * _bce(float(scale) * cos + float(bias), float(same[k]))
    norm += weights[k]
  return total / norm if norm > 0 else 0.0


def _assert_finite(*arrays):
  for a in arrays:
    assert np.all(np.isfinite(np.asarray(a))), a


# ----------------------------------------------------------------------------
# contrastive.


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch_size,num_classes,form", [
    (2, 1, "int"), (24, 5, "int"), (24, 5, "multi_hot")])
def test_contrastive_matches_reference(dtype, batch_size, num_classes, form):
  rng = np.random.default_rng(batch_size * 31 + num_classes)
  x = _embeddings(rng, batch_size, 4, dtype, False)
  labels = _labels(rng, batch_size, num_classes, form)
  loss = _contrastive(x, labels, margin=2.5)
  assert loss.dtype == dtype and loss.shape == ()
  expected = _contrastive_reference(x, labels, 2.5, "euclidean")
  chex.assert_trees_all_close(loss, np.asarray(expected, dtype), **TOLERANCES[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("metric", sorted(METRIC_MARGINS))
def test_contrastive_metrics_match_reference(dtype, metric):
  rng = np.random.default_rng(17)
  x = _embeddings(rng, 12, 4, dtype, metric in ("cosine", "great_circle"))
  labels = _labels(rng, 12, 3, "int")
  margin = METRIC_MARGINS[metric]
  loss = _contrastive(x, labels, margin=margin, metric=metric)
  expected = _contrastive_reference(x, labels, margin, metric)
  chex.assert_trees_all_close(loss, np.asarray(expected, dtype), **TOLERANCES[dtype])
  # Both kinds of terms are present: neither a pure pull nor a pure push.
  negatives = [ref_angle_distance(x[i], x[j], metric) for i in range(12) for j in range(i)
               if labels[i] != labels[j]]
  assert any(d < margin for d in negatives) and any(labels[i] == labels[j]
                                                     for i in range(12) for j in range(i))


def test_contrastive_label_forms_agree():
  rng = np.random.default_rng(0)
  x = _embeddings(rng, 12, 3, np.float64, False)
  ids = rng.integers(0, 4, 12).astype(np.int32)
  one_hot = np.eye(4, dtype=np.int32)[ids]
  expected = _contrastive_reference(x, ids, 2.0, "euclidean")
  for labels in (ids, one_hot, one_hot.astype(bool), one_hot.astype(np.float32)):
    chex.assert_trees_all_close(_contrastive(x, labels, margin=2.0), expected, rtol=1e-10)


def test_contrastive_jit_equals_eager():
  rng = np.random.default_rng(2)
  x = _embeddings(rng, 6, 3, np.float32, True)
  labels = _labels(rng, 6, 2, "int")
  weights = rng.random(6).astype(np.float32)
  eager, eager_stats = contrastive(x, labels, margin=1.0, metric="great_circle",
                                   weights=weights, return_stats=True)
  jitted, jitted_stats = _contrastive(x, labels, margin=1.0, metric="great_circle",
                                      weights=weights, return_stats=True)
  chex.assert_trees_all_close(eager, jitted, rtol=1e-6)
  chex.assert_trees_all_close(eager_stats, jitted_stats, rtol=1e-6)
  expected = _contrastive_reference(x, labels, 1.0, "great_circle", weights)
  chex.assert_trees_all_close(eager, np.float32(expected), rtol=1e-5)


def test_contrastive_traced_margin():
  rng = np.random.default_rng(3)
  x = _embeddings(rng, 12, 3, np.float64, False)
  labels = _labels(rng, 12, 3, "int")
  for margin in (1.0, 2.0):  # one compilation, margin is traced
    chex.assert_trees_all_close(_contrastive(x, labels, margin=margin),
                                _contrastive_reference(x, labels, margin, "euclidean"),
                                rtol=1e-10)


@pytest.mark.parametrize("form", ["int", "multi_hot"])
def test_contrastive_vmap_equals_loop(form):
  rng = np.random.default_rng(4)
  x = np.stack([_embeddings(rng, 12, 3, np.float64, False) for _ in range(3)])
  labels = np.stack([_labels(rng, 12, 3, form) for _ in range(3)])
  batched = jit_fast_compile(jax.vmap(lambda e, l: contrastive(e, l, margin=2.0)))(x, labels)
  looped = np.array([_contrastive(x[v], labels[v], margin=2.0) for v in range(3)])
  chex.assert_trees_all_close(batched, looped, rtol=1e-12)
  assert len(set(np.round(looped, 8))) == 3  # the loop really covers different batches


def _smooth_margin(distances, delta=0.05):
  """A margin at least ``delta`` away from every distance, with some distances below it."""
  d = np.sort(distances)
  gaps = np.diff(d)
  k = int(np.argmax(gaps))
  assert gaps[k] > 2 * delta
  return float((d[k] + d[k + 1]) / 2)


@pytest.mark.parametrize("metric", sorted(METRIC_MARGINS))
def test_contrastive_gradient_matches_finite_differences(metric):
  rng = np.random.default_rng(5)
  x = _embeddings(rng, 5, 3, np.float64, metric in ("cosine", "great_circle"))
  labels = np.array([0, 0, 1, 1, 2], np.int32)
  weights = np.array([1.0, 2.0, 0.5, 1.5, 1.0])
  negatives = [ref_angle_distance(x[i], x[j], metric) for i in range(5) for j in range(i + 1, 5)
               if labels[i] != labels[j]]
  margin = _smooth_margin(negatives)
  assert any(d < margin for d in negatives)  # some hinge terms are active
  kwargs = dict(margin=margin, metric=metric, weights=weights)
  numerical = numeric_grad(lambda e: _contrastive(e, labels, **kwargs), x)
  chex.assert_trees_all_close(_contrastive_grad(x, labels, **kwargs), numerical,
                              rtol=1e-6, atol=1e-8)
  assert np.abs(numerical).max() > 1e-3


# Edge cases share one input shape, (3, 2) float64 with int32 labels.


def test_contrastive_one_class():
  x = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
  labels = np.zeros(3, np.int32)
  # 0.5 * mean(1, 4, 5): the margin plays no role without negatives.
  chex.assert_trees_all_close(_contrastive(x, labels, margin=10.0), 0.5 * 10.0 / 3, rtol=1e-12)
  # d/dx_i of 0.5 * mean_{pairs} ||x_i - x_j||^2 = sum_j (x_i - x_j) / 3.
  expected = np.array([sum(x[i] - x[j] for j in range(3)) / 3 for i in range(3)])
  chex.assert_trees_all_close(_contrastive_grad(x, labels, margin=10.0), expected, rtol=1e-12)


def test_contrastive_singleton_classes():
  x = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
  labels = np.arange(3, dtype=np.int32)
  # 0.5 * mean(relu(2 - 1)^2, relu(2 - 2)^2, relu(2 - sqrt 5)^2) = 0.5 / 3.
  chex.assert_trees_all_close(_contrastive(x, labels, margin=2.0), 0.5 / 3, rtol=1e-12)
  # Only the pair (0, 1) is inside the margin: gradient -(2 - 1) * (x_0 - x_1) / 3 on x_0.
  expected = np.array([[1 / 3, 0.0], [-1 / 3, 0.0], [0.0, 0.0]])
  chex.assert_trees_all_close(_contrastive_grad(x, labels, margin=2.0), expected, atol=1e-12)


@pytest.mark.parametrize("metric", ["great_circle"])
def test_contrastive_one_sample_is_zero(metric):
  x = np.array([[0.6, 0.8]])
  labels = np.array([3], np.int32)
  assert float(_contrastive(x, labels, margin=1.0, metric=metric)) == 0.0
  np.testing.assert_array_equal(_contrastive_grad(x, labels, margin=1.0, metric=metric), 0.0)


@pytest.mark.parametrize("metric", ["euclidean", "great_circle"])
def test_contrastive_duplicates(metric):
  u = np.array([0.6, 0.8])
  x = np.stack([u, u, u])
  labels = np.array([0, 0, 1], np.int32)
  # Pair (0, 1) positive: 0; pairs (0, 2), (1, 2) negative: 0.5 * 1.5^2.
  chex.assert_trees_all_close(_contrastive(x, labels, margin=1.5, metric=metric),
                              2 * 0.5 * 1.5**2 / 3, rtol=1e-12)
  # The zero subgradient at d = 0.
  np.testing.assert_array_equal(_contrastive_grad(x, labels, margin=1.5, metric=metric), 0.0)


def test_contrastive_zero_embeddings():
  x = np.zeros((3, 2))
  labels = np.array([0, 0, 1], np.int32)
  # 2 of the 3 pairs are negatives at d = 0.
  chex.assert_trees_all_close(_contrastive(x, labels, margin=2.0), 2 / 3 * 0.5 * 4.0,
                              rtol=1e-12)
  np.testing.assert_array_equal(_contrastive_grad(x, labels, margin=2.0), 0.0)


@pytest.mark.parametrize("offset", [1e-3, 1e-12])
def test_contrastive_positive_gradient_near_zero_distance_float32(offset):
  # 0.5 * d^2 from the squared distance: the gradient x_i - x_j stays exact as d -> 0.
  x = np.array([[0.0, 0.0], [offset, 0.0]], np.float32)
  g = _contrastive_grad(x, np.array([0, 0], np.int32))
  expected = np.array([[-offset, 0.0], [offset, 0.0]], np.float32)
  chex.assert_trees_all_close(g, expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("form", ["int", "multi_hot"])
def test_contrastive_weights(dtype, form):
  rng = np.random.default_rng(6)
  x = _embeddings(rng, 12, 3, dtype, False)
  labels = _labels(rng, 12, 3, form)
  ones = _contrastive(x, labels, margin=2.0, weights=np.ones(12, dtype))
  chex.assert_trees_all_close(ones, _contrastive_reference(x, labels, 2.0, "euclidean"),
                              **TOLERANCES[dtype])
  weights = rng.integers(0, 4, 12).astype(dtype)
  expected = _contrastive_reference(x, labels, 2.0, "euclidean", weights)
  chex.assert_trees_all_close(_contrastive(x, labels, margin=2.0, weights=weights),
                              np.asarray(expected, dtype), **TOLERANCES[dtype])
  assert abs(expected - _contrastive_reference(x, labels, 2.0, "euclidean")) > 1e-3
  # A zero weight removes the sample.
  weights = np.ones(12, dtype)
  weights[[2, 7]] = 0
  keep = np.array([i not in (2, 7) for i in range(12)])
  chex.assert_trees_all_close(
      _contrastive(x, labels, margin=2.0, weights=weights),
      np.asarray(_contrastive_reference(x[keep], labels[keep], 2.0, "euclidean"), dtype),
      **TOLERANCES[dtype])


def test_contrastive_all_zero_weights():
  x = np.random.default_rng(7).normal(size=(12, 3))
  labels = np.arange(12, dtype=np.int32) % 3
  weights = np.zeros(12)
  assert float(_contrastive(x, labels, margin=2.0, weights=weights)) == 0.0
  np.testing.assert_array_equal(_contrastive_grad(x, labels, margin=2.0, weights=weights), 0.0)


def test_contrastive_stats():
  rng = np.random.default_rng(8)
  x = _embeddings(rng, 12, 3, np.float64, False)
  labels = _labels(rng, 12, 3, "int")
  loss, stats = _contrastive(x, labels, margin=2.0, return_stats=True)
  chex.assert_trees_all_close(loss, _contrastive_reference(x, labels, 2.0, "euclidean"),
                              rtol=1e-10)
  negatives = [(i, j) for i in range(12) for j in range(i + 1, 12) if labels[i] != labels[j]]
  active = sum(ref_angle_distance(x[i], x[j], "euclidean") < 2.0 for i, j in negatives)
  assert 0 < active < len(negatives)
  assert float(stats["num_valid"]) == len(negatives)
  assert float(stats["num_active"]) == active
  chex.assert_trees_all_close(stats["fraction_active"], active / len(negatives), rtol=1e-12)


@pytest.mark.parametrize("embeddings,labels,kwargs,match", [
    (np.zeros(4), np.zeros(4, int), {}, "shape"),
    (np.zeros((4, 2), np.int32), np.zeros(4, int), {}, "floating"),
    (np.zeros((4, 2)), np.zeros(3, int), {}, "rows"),
    (np.zeros((4, 2)), np.zeros(4), {}, "integer"),
    (np.zeros((4, 2)), np.zeros((4, 2, 1), int), {}, "shape"),
    (np.zeros((4, 2)), np.zeros(4, int), {"weights": np.ones(3)}, "weights"),
    (np.zeros((4, 2)), np.zeros(4, int), {"margin": np.ones(2)}, "margin"),
    (np.zeros((4, 2)), np.zeros(4, int), {"metric": "manhattan"}, "metric"),
])
def test_contrastive_static_errors(embeddings, labels, kwargs, match):
  with pytest.raises(ValueError, match=match):
    contrastive(embeddings, labels, **kwargs)
  with pytest.raises(ValueError, match=match):  # also under jit
    jax.jit(contrastive, static_argnames=("metric",))(embeddings, labels, **kwargs)


@pytest.mark.parametrize("embeddings,labels,weights,match", [
    (np.array([[0.0, np.nan], [1.0, 0.0]]), np.array([0, 1]), None, "NaN"),
    (np.array([[0.0, np.inf], [1.0, 0.0]]), np.array([0, 1]), None, "infinite"),
    (np.zeros((2, 2)), np.array([0, -1]), None, "non-negative"),
    (np.zeros((2, 2)), np.array([[1, 2], [0, 1]]), None, "only 0 and 1"),
    (np.zeros((2, 2)), np.array([[1.0, np.nan], [0.0, 1.0]]), None, "only 0 and 1"),
    (np.zeros((2, 2)), np.array([0, 1]), np.array([1.0, -1.0]), "non-negative"),
])
def test_contrastive_value_errors(embeddings, labels, weights, match):
  with pytest.raises(ValueError, match=match):
    contrastive(embeddings, labels, weights=weights)


# ----------------------------------------------------------------------------
# siamese_l1_bce and siamese_cosine_bce.


def _pairs(rng, n, dim, dtype):
  x1 = rng.normal(size=(n, dim)).astype(dtype)
  x2 = rng.normal(size=(n, dim)).astype(dtype)
  same = rng.random(n) < 0.5
  return x1, x2, same


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,dim", [(1, 1), (6, 3), (40, 16)])
def test_siamese_l1_matches_reference(dtype, n, dim):
  rng = np.random.default_rng(n * 7 + dim)
  x1, x2, same = _pairs(rng, n, dim, dtype)
  weight = rng.normal(size=dim).astype(dtype)
  loss = _l1(x1, x2, same, weight, 0.3)
  assert loss.dtype == dtype and loss.shape == ()
  expected = _l1_reference(x1, x2, same, weight, 0.3)
  chex.assert_trees_all_close(loss, np.asarray(expected, dtype), **TOLERANCES[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,dim", [(1, 1), (6, 3), (40, 16)])
def test_siamese_cosine_matches_reference(dtype, n, dim):
  rng = np.random.default_rng(n * 11 + dim)
  x1, x2, same = _pairs(rng, n, dim, dtype)
  for scale, bias in ((7.0, -2.0), (10.0, -5.0)):
    loss = _cosine(x1, x2, same, scale, bias)
    assert loss.dtype == dtype and loss.shape == ()
    expected = _cosine_reference(x1, x2, same, scale, bias)
    chex.assert_trees_all_close(loss, np.asarray(expected, dtype), **TOLERANCES[dtype])


def test_siamese_jit_equals_eager_and_defaults():
  rng = np.random.default_rng(16)
  x1, x2, same = _pairs(rng, 6, 3, np.float32)
  weight = rng.normal(size=3).astype(np.float32)
  chex.assert_trees_all_close(siamese_l1_bce(x1, x2, same, weight, 0.3),
                              _l1(x1, x2, same, weight, 0.3), rtol=1e-6)
  # The defaults are scale=10, bias=-5.
  chex.assert_trees_all_close(siamese_cosine_bce(x1, x2, same),
                              _cosine(x1, x2, same, 10.0, -5.0),
                              rtol=1e-6)


@pytest.mark.parametrize("kind", ["l1"])  # the conversion is shared by both losses
def test_siamese_is_same_dtypes_agree(kind):
  rng = np.random.default_rng(9)
  x1, x2, same = _pairs(rng, 6, 3, np.float64)
  assert 0 < same.sum() < 6
  weight = -np.ones(3)
  f = ((lambda s: _l1(x1, x2, s, weight, 1.0)) if kind == "l1"
       else (lambda s: _cosine(x1, x2, s, 10.0, -5.0)))
  results = [f(same), f(same.astype(np.int32)), f(same.astype(np.float32))]
  for r in results[1:]:
    chex.assert_trees_all_close(r, results[0], rtol=1e-12)
  assert abs(float(f(~same)) - float(results[0])) > 1e-3  # the targets matter


@pytest.mark.parametrize("kind", ["l1", "cosine"])
def test_siamese_vmap_equals_loop(kind):
  rng = np.random.default_rng(10)
  x1 = rng.normal(size=(3, 6, 3))
  x2 = rng.normal(size=(3, 6, 3))
  same = rng.random((3, 6)) < 0.5
  weight = rng.normal(size=3)
  if kind == "l1":
    f = lambda a, b, s: siamese_l1_bce(a, b, s, weight, 0.5)
    g = lambda a, b, s: _l1(a, b, s, weight, 0.5)
  else:
    f = lambda a, b, s: siamese_cosine_bce(a, b, s, scale=5.0, bias=-1.0)
    g = lambda a, b, s: _cosine(a, b, s, 5.0, -1.0)
  looped = np.array([g(x1[v], x2[v], same[v]) for v in range(3)])
  chex.assert_trees_all_close(jit_fast_compile(jax.vmap(f))(x1, x2, same), looped, rtol=1e-12)
  assert len(set(np.round(looped, 8))) == 3


def test_siamese_l1_gradient_matches_finite_differences():
  rng = np.random.default_rng(11)
  x1, x2, same = _pairs(rng, 6, 3, np.float64)
  weight, bias = rng.normal(size=3), np.float64(0.2)
  weights = np.array([1.0, 0.5, 2.0, 1.0, 0.0, 3.0])
  args = [x1, x2, same, weight, bias]
  grads = _l1_grads(*args, weights=weights)
  for g, k in zip(grads, (0, 1, 3, 4)):
    def partial_f(v, k=k):
      return _l1(*[v if i == k else a for i, a in enumerate(args)], weights=weights)
    numerical = numeric_grad(partial_f, args[k])
    chex.assert_trees_all_close(g, numerical, rtol=1e-6, atol=1e-9)
    assert np.abs(numerical).max() > 1e-4


def test_siamese_cosine_gradient_matches_finite_differences():
  rng = np.random.default_rng(12)
  x1, x2, same = _pairs(rng, 6, 3, np.float64)
  weights = np.array([1.0, 0.5, 2.0, 1.0, 0.0, 3.0])
  args = [x1, x2, same, np.float64(4.0), np.float64(-1.0)]
  grads = _cosine_grads(*args, weights)
  for g, k in zip(grads, (0, 1, 3, 4)):
    def partial_f(v, k=k):
      return _cosine(*[v if i == k else a for i, a in enumerate(args)], weights)
    numerical = numeric_grad(partial_f, args[k])
    chex.assert_trees_all_close(g, numerical, rtol=1e-6, atol=1e-9)
    assert np.abs(numerical).max() > 1e-4


@pytest.mark.parametrize("kind", ["l1", "cosine"])
@pytest.mark.parametrize("target", [True, False])
def test_siamese_all_same_or_all_different(kind, target):
  # One class (all pairs "same") or singleton classes (all "different").
  rng = np.random.default_rng(13)
  x1, x2, _ = _pairs(rng, 6, 3, np.float64)
  same = np.full(6, target)
  weight = -np.ones(3)
  if kind == "l1":
    loss, grads = _l1(x1, x2, same, weight, 2.0), _l1_grads(x1, x2, same, weight, 2.0)
    expected = _l1_reference(x1, x2, same, weight, 2.0)
  else:
    loss, grads = _cosine(x1, x2, same, 10.0, -5.0), _cosine_grads(x1, x2, same, 10.0, -5.0)
    expected = _cosine_reference(x1, x2, same, 10.0, -5.0)
  chex.assert_trees_all_close(loss, expected, rtol=1e-10)
  _assert_finite(*grads)


@pytest.mark.parametrize("target", [1, 0])
@pytest.mark.parametrize("point", [[0.3, -0.7, 2.0], [0.0, 0.0, 0.0]])
def test_siamese_l1_duplicates_and_zeros(target, point):
  x = np.array([point])
  weight, bias = np.array([-1.0, -2.0, 0.5]), 1.5
  same = np.array([target])
  # logit = bias: loss softplus(bias) - y * bias.
  expected = math.log1p(math.exp(bias)) - target * bias
  chex.assert_trees_all_close(_l1(x, x, same, weight, bias), expected, rtol=1e-12)
  g1, g2, gw, gb = _l1_grads(x, x, same, weight, bias)
  _assert_finite(gw, gb)
  np.testing.assert_array_equal(g1, 0.0)  # the zero subgradient of |f1 - f2|
  np.testing.assert_array_equal(g2, 0.0)
  np.testing.assert_array_equal(gw, 0.0)
  chex.assert_trees_all_close(gb, 1 / (1 + math.exp(-bias)) - target, rtol=1e-12)


@pytest.mark.parametrize("target", [1, 0])
def test_siamese_cosine_duplicates(target):
  x = np.array([[0.3, -0.7, 2.0]])
  same = np.array([target])
  expected = math.log1p(math.exp(2.0)) - target * 2.0  # logit = scale + bias
  chex.assert_trees_all_close(_cosine(x, x, same, 3.0, -1.0), expected, rtol=1e-12)
  g1, g2, gs, gb = _cosine_grads(x, x, same, 3.0, -1.0)
  _assert_finite(g1, g2, gs, gb)
  # At cos = 1 (a maximum) the cosine has a zero gradient up to rounding.
  np.testing.assert_allclose(g1, 0.0, atol=1e-12)
  chex.assert_trees_all_close(gs, 1 / (1 + math.exp(-2.0)) - target, rtol=1e-10)


@pytest.mark.parametrize("zero_first,zero_second", [(True, False), (False, True), (True, True)])
def test_siamese_cosine_zero_embeddings(zero_first, zero_second):
  rng = np.random.default_rng(14)
  x1, x2 = rng.normal(size=(2, 3)), rng.normal(size=(2, 3))
  if zero_first:
    x1[0] = 0.0
  if zero_second:
    x2[0] = 0.0
  same = np.array([1, 0])
  expected = _cosine_reference(x1, x2, same, 4.0, -1.0)  # pair 0 has cos = 0
  chex.assert_trees_all_close(_cosine(x1, x2, same, 4.0, -1.0), expected, rtol=1e-12)
  g1, g2, gs, gb = _cosine_grads(x1, x2, same, 4.0, -1.0)
  _assert_finite(g1, g2, gs, gb)
  np.testing.assert_array_equal(g1[0], 0.0)
  np.testing.assert_array_equal(g2[0], 0.0)
  assert np.abs(g1[1]).max() > 0  # the other pair still learns


@pytest.mark.parametrize("kind", ["l1", "cosine"])
def test_siamese_extreme_logits_are_finite(kind):
  x1 = np.array([[0.0, 0.0], [1.0, 0.0]], np.float32)
  x2 = np.array([[100.0, 0.0], [1.0, 0.0]], np.float32)
  same = np.array([True, False])
  if kind == "l1":
    weight = np.array([-100.0, -100.0], np.float32)
    loss, grads = _l1(x1, x2, same, weight, 1000.0), _l1_grads(x1, x2, same, weight, 1000.0)
    logits = np.array([-9000.0, 1000.0])
  else:
    scale, bias = 1e4, 0.0
    loss, grads = _cosine(x1, x2, same, scale, bias), _cosine_grads(x1, x2, same, scale, bias)
    logits = np.array([0.0, 1e4])  # cos = 0 (zero vector) for pair 0, 1 for pair 1
  # Pair 1 (and pair 0 for "l1") lies far on the wrong side: its BCE is |logit|.
  expected = np.mean([_bce(z, y) for z, y in zip(logits, same)])
  chex.assert_trees_all_close(loss, np.float32(expected), rtol=1e-5)
  _assert_finite(*grads)


@pytest.mark.parametrize("kind", ["l1", "cosine"])
def test_siamese_weights(kind):
  rng = np.random.default_rng(15)
  x1, x2, same = _pairs(rng, 6, 3, np.float64)
  weight = rng.normal(size=3)
  if kind == "l1":
    f = lambda a, b, s, w=None: _l1(a, b, s, weight, 0.1, weights=w)
  else:
    f = lambda a, b, s, w=None: _cosine(a, b, s, 10.0, -5.0, w)
  chex.assert_trees_all_close(f(x1, x2, same, np.ones(6)), f(x1, x2, same), rtol=1e-12)
  counts = np.array([0, 1, 3, 2, 0, 6])  # 12 pairs once repeated
  repeated = f(np.repeat(x1, counts, 0), np.repeat(x2, counts, 0), np.repeat(same, counts))
  chex.assert_trees_all_close(f(x1, x2, same, counts), repeated, rtol=1e-12)
  assert abs(float(repeated) - float(f(x1, x2, same))) > 1e-4
  reference = (_l1_reference(x1, x2, same, weight, 0.1, counts) if kind == "l1"
               else _cosine_reference(x1, x2, same, 10.0, -5.0, counts))
  chex.assert_trees_all_close(repeated, reference, rtol=1e-10)


@pytest.mark.parametrize("kind", ["l1", "cosine"])
def test_siamese_all_zero_weights(kind):
  rng = np.random.default_rng(18)
  x1, x2, same = _pairs(rng, 6, 3, np.float64)
  zeros = np.zeros(6)
  if kind == "l1":
    loss = _l1(x1, x2, same, np.ones(3), 0.0, weights=zeros)
    grads = _l1_grads(x1, x2, same, np.ones(3), 0.0, weights=zeros)
  else:
    loss = _cosine(x1, x2, same, 10.0, -5.0, zeros)
    grads = _cosine_grads(x1, x2, same, 10.0, -5.0, zeros)
  assert float(loss) == 0.0
  for g in grads:
    np.testing.assert_array_equal(g, 0.0)


@pytest.mark.parametrize("kind", ["l1", "cosine"])
def test_siamese_no_pairs(kind):
  x = np.zeros((0, 3))
  same = np.zeros(0, bool)
  if kind == "l1":
    loss, (g1, *_) = _l1(x, x, same, np.ones(3), 0.0), _l1_grads(x, x, same, np.ones(3), 0.0)
  else:
    loss, (g1, *_) = _cosine(x, x, same, 10.0, -5.0), _cosine_grads(x, x, same, 10.0, -5.0)
  assert float(loss) == 0.0
  assert g1.shape == (0, 3)


_GOOD = dict(embeddings1=np.zeros((3, 2)), embeddings2=np.ones((3, 2)),
             is_same=np.array([1, 0, 1]))


@pytest.mark.parametrize("kind", ["l1", "cosine"])
@pytest.mark.parametrize("override,match", [
    (dict(embeddings1=np.zeros(3)), "embeddings1 must have shape"),
    (dict(embeddings2=np.zeros((3, 3))), "same shape"),
    (dict(embeddings2=np.zeros((3, 2), np.float32)), "same dtype"),
    (dict(embeddings1=np.zeros((3, 2), np.int32)), "floating"),
    (dict(is_same=np.array([1, 0])), "is_same must have shape"),
    (dict(is_same=np.array([1j, 0, 1])), "is_same must be"),
    (dict(weights=np.ones((3, 1))), "weights"),
])
def test_siamese_static_errors(kind, override, match):
  args = {**_GOOD, **override}
  fn = (functools.partial(siamese_l1_bce, weight=np.ones(2), bias=0.0) if kind == "l1"
        else siamese_cosine_bce)
  with pytest.raises(ValueError, match=match):
    fn(**args)
  with pytest.raises(ValueError, match=match):  # also under jit
    jit_fast_compile(fn)(**args)


@pytest.mark.parametrize("kwargs,match", [
    (dict(weight=np.ones(3), bias=0.0), r"weight must have shape \(2,\)"),
    (dict(weight=np.ones(2, np.int32), bias=0.0), "weight must have a floating"),
    (dict(weight=np.ones(2), bias=np.zeros(1)), "bias must be a scalar"),
    (dict(weight=np.array([1.0, np.nan]), bias=0.0), "weight contains NaN"),
    (dict(weight=np.ones(2), bias=np.inf), "bias contains NaN"),
])
def test_siamese_l1_parameter_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    siamese_l1_bce(**_GOOD, **kwargs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(scale=np.ones(2)), "scale must be a scalar"),
    (dict(bias=np.ones((1, 1))), "bias must be a scalar"),
    (dict(scale=np.nan), "scale contains NaN"),
])
def test_siamese_cosine_parameter_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    siamese_cosine_bce(**_GOOD, **kwargs)


@pytest.mark.parametrize("kind", ["l1", "cosine"])
@pytest.mark.parametrize("override,match", [
    (dict(embeddings1=np.array([[0.0, np.nan]] * 3)), "embeddings1 contain"),
    (dict(embeddings2=np.array([[np.inf, 0.0]] * 3)), "embeddings2 contain"),
    (dict(is_same=np.array([2, 0, 1])), "only 0 and 1"),
    (dict(is_same=np.array([0.5, 0.0, 1.0])), "only 0 and 1"),
    (dict(weights=np.array([1.0, -1.0, 1.0])), "non-negative"),
])
def test_siamese_value_errors(kind, override, match):
  args = {**_GOOD, **override}
  fn = (functools.partial(siamese_l1_bce, weight=np.ones(2), bias=0.0) if kind == "l1"
        else siamese_cosine_bce)
  with pytest.raises(ValueError, match=match):
    fn(**args)


@pytest.mark.parametrize("margin", [0.8, 0.01])
def test_contrastive_hand_written_derivative_matches_autodiff_in_every_mode(margin):
  """The euclidean path's custom JVP equals plain autodiff of the same formula:
  gradients in the embeddings, weights and margin, forward mode, and the Hessian;
  with negatives inside the margin (dense branch) and with none (skipped branch)."""
  from sphereembed import geometry
  rng = np.random.default_rng(31)
  x = jnp.asarray(rng.normal(size=(7, 3)) * 0.4)
  labels = jnp.asarray([0, 0, 1, 1, 1, 2, 2])
  w = jnp.asarray(rng.uniform(0.5, 2.0, size=7))

  def plain(x, w, margin):
    d = geometry.safe_sqrt(jnp.sum(jnp.square(x[:, None] - x[None, :]), axis=-1))
    same = labels[:, None] == labels[None, :]
    pw = w[:, None] * w[None, :] * (1 - jnp.eye(7))
    terms = 0.5 * jnp.where(same, d**2, jax.nn.relu(margin - d) ** 2)
    return jnp.sum(pw * terms) / jnp.sum(pw)

  def ours(x, w, margin):
    return contrastive(x, labels, margin=margin, weights=w)

  args = (x, w, jnp.asarray(margin))
  chex.assert_trees_all_close(ours(*args), plain(*args), rtol=1e-10)
  chex.assert_trees_all_close(jax.grad(ours, argnums=(0, 1, 2))(*args),
                              jax.grad(plain, argnums=(0, 1, 2))(*args), rtol=1e-8, atol=1e-12)
  tangent = (jnp.asarray(rng.normal(size=(7, 3))), jnp.zeros(7), jnp.asarray(0.3))
  chex.assert_trees_all_close(jax.jvp(ours, args, tangent), jax.jvp(plain, args, tangent),
                              rtol=1e-8, atol=1e-12)
  chex.assert_trees_all_close(jax.hessian(ours)(*args), jax.hessian(plain)(*args),
                              rtol=1e-6, atol=1e-10)
