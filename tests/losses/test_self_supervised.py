"""Tests of ntxent (NT-Xent / supervised contrastive L_out) against brute-force loops."""

import math

import chex
import jax
import numpy as np
import pytest

from sphereembed.losses import ntxent
from tests.references import jit_fast_compile, numeric_grad

TOLERANCES = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-10, atol=1e-12)}


def _fn(x, labels, temperature, weights=None):
  return ntxent(x, labels, temperature=temperature, weights=weights)


# Value tests go through module-level jitted functions (one compilation per
# input signature); eager calls are covered by the jit == eager and error tests.
_ntxent = jit_fast_compile(_fn)
_ntxent_grads = jit_fast_compile(jax.grad(_fn, argnums=(0, 2)))


def _unit(rng, n, dim, dtype):
  x = rng.normal(size=(n, dim))
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(dtype)


def _labels(rng, batch_size, num_classes, form):
  if form == "int":
    return rng.integers(0, num_classes, batch_size).astype(np.int32)
  hot = rng.random((batch_size, num_classes)) < min(1.0, 1.5 / num_classes)
  return hot.astype(np.int32)


def _is_positive(labels, i, j):
  if labels.ndim == 1:
    return labels[i] == labels[j]
  return any(labels[i, c] > 0 and labels[j, c] > 0 for c in range(labels.shape[1]))


def _ntxent_reference(x, labels, temperature, weights=None):
  n = len(x)
  x = np.asarray(x, np.float64)
  weights = np.ones(n) if weights is None else np.asarray(weights, np.float64)
  total = norm = 0.0
  for i in range(n):
    positives = [p for p in range(n) if p != i and _is_positive(labels, i, p)]
    if not positives:
      continue
    logits = {k: sum(x[i, c] * x[k, c] for c in range(x.shape[1])) / temperature
              for k in range(n) if k != i}
    top = max(logits.values())
    log_denominator = top + math.log(math.fsum(math.exp(v - top) for v in logits.values()))
    loss = -sum(logits[p] - log_denominator for p in positives) / len(positives)
    total += weights[i] * loss
    norm += weights[i]
  return total / norm if norm > 0 else 0.0


# ----------------------------------------------------------------------------
# Values.


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch_size,num_classes,form", [
    (2, 1, "int"), (8, 3, "multi_hot"), (24, 5, "int"), (24, 6, "multi_hot")])
def test_matches_reference(dtype, batch_size, num_classes, form):
  rng = np.random.default_rng(batch_size * 17 + num_classes)
  x = _unit(rng, batch_size, 6, dtype)
  labels = _labels(rng, batch_size, num_classes, form)
  for temperature in (0.05, 0.1, 1.0):  # traced: no recompilation
    loss = _ntxent(x, labels, temperature)
    assert loss.dtype == dtype and loss.shape == ()
    expected = _ntxent_reference(x, labels, dtype(temperature))
    chex.assert_trees_all_close(loss, np.asarray(expected, dtype), **TOLERANCES[dtype])


def test_small_temperature_float32_is_stable():
  # exp(1 / 0.005) overflows float32 by far; the shifted log-softmax does not.
  rng = np.random.default_rng(1)
  x = _unit(rng, 12, 6, np.float32)
  labels = rng.integers(0, 3, 12).astype(np.int32)
  loss = _ntxent(x, labels, 0.005)
  expected = _ntxent_reference(x, labels, 0.005)
  assert expected > 10  # far from the trivial regime
  chex.assert_trees_all_close(loss, np.float32(expected), rtol=1e-5)
  grads = _ntxent_grads(x, labels, 0.005)
  assert all(np.all(np.isfinite(g)) for g in grads)


@pytest.mark.parametrize("num_images", [1, 3, 8])
def test_simclr_views_give_nt_xent(num_images):
  # 2N views; view n and view n + N are the two augmentations of image n.
  rng = np.random.default_rng(num_images)
  x = _unit(rng, 2 * num_images, 5, np.float64)
  labels = np.tile(np.arange(num_images, dtype=np.int32), 2)
  temperature = 0.2
  terms = []
  for i in range(2 * num_images):
    j = (i + num_images) % (2 * num_images)
    denominator = sum(math.exp(x[i] @ x[k] / temperature)
                      for k in range(2 * num_images) if k != i)
    terms.append(-math.log(math.exp(x[i] @ x[j] / temperature) / denominator))
  chex.assert_trees_all_close(_ntxent(x, labels, temperature), np.mean(terms), rtol=1e-10,
                              atol=1e-12)


def test_label_forms_agree():
  rng = np.random.default_rng(2)
  x = _unit(rng, 12, 4, np.float64)
  ids = rng.integers(0, 4, 12).astype(np.int32)
  one_hot = np.eye(4, dtype=np.int32)[ids]
  expected = _ntxent_reference(x, ids, 0.1)
  for labels in (ids, one_hot, one_hot.astype(bool), one_hot.astype(np.float32)):
    chex.assert_trees_all_close(_ntxent(x, labels, 0.1), expected, rtol=1e-10)


def test_jit_equals_eager():
  rng = np.random.default_rng(3)
  x = _unit(rng, 12, 4, np.float32)
  labels = rng.integers(0, 3, 12).astype(np.int32)
  weights = rng.random(12).astype(np.float32)
  eager = ntxent(x, labels, temperature=0.1, weights=weights)
  chex.assert_trees_all_close(eager, _ntxent(x, labels, 0.1, weights), rtol=1e-6)
  expected = _ntxent_reference(x, labels, np.float32(0.1), weights)
  chex.assert_trees_all_close(eager, np.float32(expected), rtol=1e-5)
  # The default temperature is 0.1.
  chex.assert_trees_all_close(ntxent(x, labels, weights=weights), eager, rtol=1e-6)


@pytest.mark.parametrize("form", ["int", "multi_hot"])
def test_vmap_equals_loop(form):
  rng = np.random.default_rng(4)
  x = np.stack([_unit(rng, 12, 4, np.float64) for _ in range(3)])
  labels = np.stack([_labels(rng, 12, 3, form) for _ in range(3)])
  temperatures = np.array([0.1, 0.5, 1.0])
  batched = jit_fast_compile(jax.vmap(_fn))(x, labels, temperatures)
  looped = np.array([_ntxent(x[v], labels[v], temperatures[v]) for v in range(3)])
  chex.assert_trees_all_close(batched, looped, rtol=1e-12)
  assert len(set(np.round(looped, 8))) == 3


# ----------------------------------------------------------------------------
# Gradients.


@pytest.mark.parametrize("form", ["int", "multi_hot"])
def test_gradient_matches_finite_differences(form):
  rng = np.random.default_rng(5)
  x = _unit(rng, 6, 3, np.float64)
  labels = (np.array([0, 0, 1, 1, 2, 2], np.int32) if form == "int"
            else np.array([[1, 0], [1, 1], [0, 1], [0, 1], [0, 0], [1, 0]], np.int32))
  weights = np.array([1.0, 2.0, 0.5, 1.5, 1.0, 0.0])
  temperature = np.float64(0.3)
  g_x, g_t = _ntxent_grads(x, labels, temperature, weights)
  numerical_x = numeric_grad(lambda e: _ntxent(e, labels, temperature, weights), x)
  numerical_t = numeric_grad(lambda t: _ntxent(x, labels, t, weights), temperature)
  chex.assert_trees_all_close(g_x, numerical_x, rtol=1e-6, atol=1e-8)
  chex.assert_trees_all_close(g_t, numerical_t, rtol=1e-6, atol=1e-8)
  assert np.abs(numerical_x).max() > 1e-2 and abs(numerical_t) > 1e-3


# ----------------------------------------------------------------------------
# Edge cases: value and a finite gradient.


def test_one_class():
  rng = np.random.default_rng(6)
  x = _unit(rng, 6, 3, np.float64)
  labels = np.zeros(6, np.int32)
  loss = _ntxent(x, labels, 0.5)
  chex.assert_trees_all_close(loss, _ntxent_reference(x, labels, 0.5), rtol=1e-10)
  assert float(loss) > math.log(5)  # Jensen: logsumexp - mean >= log(B - 1)
  assert all(np.all(np.isfinite(g)) for g in _ntxent_grads(x, labels, 0.5))


@pytest.mark.parametrize("labels", [np.array([0, 1, 2, 3, 4, 5], np.int32),
                                    np.eye(6, dtype=np.int32),
                                    np.zeros((6, 2), np.int32)])
def test_no_positives_is_zero(labels):
  x = _unit(np.random.default_rng(7), 6, 3, np.float64)
  assert float(_ntxent(x, labels, 0.1)) == 0.0
  g_x, g_t = _ntxent_grads(x, labels, 0.1)
  np.testing.assert_array_equal(g_x, 0.0)
  assert float(g_t) == 0.0


def test_one_sample_is_zero():
  x = np.array([[0.6, 0.8, 0.0]])
  assert float(_ntxent(x, np.array([0], np.int32), 0.1)) == 0.0
  g_x, g_t = _ntxent_grads(x, np.array([0], np.int32), 0.1)
  np.testing.assert_array_equal(g_x, 0.0)
  assert float(g_t) == 0.0


@pytest.mark.parametrize("labels", [np.zeros(6, np.int32), np.array([0, 0, 1, 1, 2, 3], np.int32)])
def test_duplicate_embeddings(labels):
  x = np.tile([[0.6, 0.0, 0.8]], (6, 1))
  # All similarities equal: a uniform softmax over the 5 others.
  chex.assert_trees_all_close(_ntxent(x, labels, 0.1), math.log(5), rtol=1e-12)
  assert all(np.all(np.isfinite(g)) for g in _ntxent_grads(x, labels, 0.1))


def test_zero_embeddings():
  x = np.zeros((6, 3))
  labels = np.array([0, 0, 1, 1, 2, 3], np.int32)
  chex.assert_trees_all_close(_ntxent(x, labels, 0.1), math.log(5), rtol=1e-12)
  g_x, g_t = _ntxent_grads(x, labels, 0.1)
  np.testing.assert_array_equal(g_x, 0.0)
  assert float(g_t) == 0.0


def test_unlabelled_sample_is_only_a_negative():
  rng = np.random.default_rng(8)
  x = _unit(rng, 6, 3, np.float64)
  labels = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [0, 0], [1, 1]], np.int32)
  loss = _ntxent(x, labels, 0.2)
  chex.assert_trees_all_close(loss, _ntxent_reference(x, labels, 0.2), rtol=1e-10)
  # Sample 4 is no anchor, but moving it changes the other anchors' denominators.
  g_x, _ = _ntxent_grads(x, labels, 0.2)
  assert np.abs(g_x[4]).max() > 1e-3


# ----------------------------------------------------------------------------
# Weights.


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("form", ["int", "multi_hot"])
def test_weights(dtype, form):
  rng = np.random.default_rng(9)
  x = _unit(rng, 12, 4, dtype)
  labels = _labels(rng, 12, 3, form)
  t = 0.2
  chex.assert_trees_all_close(_ntxent(x, labels, t, np.ones(12, dtype)), _ntxent(x, labels, t),
                              **TOLERANCES[dtype])
  weights = rng.integers(0, 4, 12).astype(dtype)
  expected = _ntxent_reference(x, labels, t, weights)
  chex.assert_trees_all_close(_ntxent(x, labels, t, weights), np.asarray(expected, dtype),
                              **TOLERANCES[dtype])
  assert abs(expected - _ntxent_reference(x, labels, t)) > 1e-3


def test_all_zero_weights():
  rng = np.random.default_rng(10)
  x = _unit(rng, 12, 4, np.float64)
  labels = rng.integers(0, 3, 12).astype(np.int32)
  assert float(_ntxent(x, labels, 0.1, np.zeros(12))) == 0.0
  np.testing.assert_array_equal(_ntxent_grads(x, labels, 0.1, np.zeros(12))[0], 0.0)


# ----------------------------------------------------------------------------
# Errors.


@pytest.mark.parametrize("embeddings,labels,kwargs,match", [
    (np.zeros(4), np.zeros(4, int), {}, "embeddings must have shape"),
    (np.zeros((4, 2), np.int32), np.zeros(4, int), {}, "floating"),
    (np.zeros((4, 2)), np.zeros(3, int), {}, "rows"),
    (np.zeros((4, 2)), np.zeros(4), {}, "integer"),
    (np.zeros((4, 2)), np.zeros((4, 2, 1), int), {}, "shape"),
    (np.zeros((4, 2)), np.zeros(4, int), {"weights": np.ones(5)}, "weights"),
    (np.zeros((4, 2)), np.zeros(4, int), {"temperature": np.ones(2)}, "temperature"),
])
def test_static_errors(embeddings, labels, kwargs, match):
  with pytest.raises(ValueError, match=match):
    ntxent(embeddings, labels, **kwargs)
  with pytest.raises(ValueError, match=match):  # also under jit
    jit_fast_compile(ntxent)(embeddings, labels, **kwargs)


@pytest.mark.parametrize("embeddings,labels,kwargs,match", [
    (np.array([[np.nan, 0.0], [1.0, 0.0]]), np.array([0, 0]), {}, "NaN"),
    (np.zeros((2, 2)), np.array([0, -1]), {}, "non-negative"),
    (np.zeros((2, 2)), np.array([[0, 2], [1, 1]]), {}, "only 0 and 1"),
    (np.zeros((2, 2)), np.array([0, 0]), {"weights": np.array([1.0, np.nan])}, "finite"),
    (np.zeros((2, 2)), np.array([0, 0]), {"temperature": 0.0}, "positive"),
    (np.zeros((2, 2)), np.array([0, 0]), {"temperature": -0.1}, "positive"),
])
def test_value_errors(embeddings, labels, kwargs, match):
  with pytest.raises(ValueError, match=match):
    ntxent(embeddings, labels, **kwargs)
