"""Tests of proxy_anchor and proxy_nca.

Both losses are compared with brute-force NumPy references written as
explicit Python loops over proxies and samples (float64), in float32 and
float64; gradients (embeddings and proxies) with finite differences of the
reference.
"""

import math

import chex
import jax
import numpy as np
import pytest

from sphereembed.losses import proxy_anchor, proxy_nca
from tests.references import jit_fast_compile, numeric_grad

TOLERANCES = {np.float32: dict(rtol=2e-5, atol=2e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}

LOSSES = {
    "proxy_anchor": (proxy_anchor, dict(margin=0.1, alpha=32.0)),
    "proxy_nca": (proxy_nca, dict(softmax_scale=1.0)),
}
GRAD_KWARGS = {"proxy_anchor": dict(margin=0.2, alpha=4.0), "proxy_nca": dict(softmax_scale=3.0)}

_JITTED = {name: jit_fast_compile(fn) for name, (fn, _) in LOSSES.items()}
_GRADS = {name: jit_fast_compile(jax.grad(fn, argnums=(0, 2))) for name, (fn, _) in LOSSES.items()}


# ----------------------------------------------------------------------------
# Brute-force references.


def _unit(v):
  v = np.asarray(v, np.float64)
  norm = math.sqrt(sum(float(a) * float(a) for a in v))
  return v / max(norm, 1e-12)


def _cos(u, v):
  return sum(float(a) * float(b) for a, b in zip(_unit(u), _unit(v)))


def _logsumexp(values):
  m = max(values)
  return m + math.log(sum(math.exp(v - m) for v in values))


def _proxy_anchor_reference(x, labels, proxies, weights=None, margin=0.1, alpha=32.0):
  weights = np.ones(len(x)) if weights is None else np.asarray(weights, np.float64)
  num_proxies = len(proxies)
  positive_total, num_with_positives, negative_total = 0.0, 0, 0.0
  for k in range(num_proxies):
    positive_exponents, negative_exponents = [], []
    for i in range(len(x)):
      if weights[i] == 0:
        continue
      s = _cos(x[i], proxies[k])
      if int(labels[i]) == k:
        positive_exponents.append(-alpha * (s - margin) + math.log(weights[i]))
      else:
        negative_exponents.append(alpha * (s + margin) + math.log(weights[i]))
    if positive_exponents:
      positive_total += _logsumexp([0.0] + positive_exponents)  # log(1 + sum)
      num_with_positives += 1
    negative_total += _logsumexp([0.0] + negative_exponents)
  positive = positive_total / num_with_positives if num_with_positives else 0.0
  return positive + negative_total / num_proxies


def _proxy_nca_reference(x, labels, proxies, weights=None, softmax_scale=1.0):
  weights = np.ones(len(x)) if weights is None else np.asarray(weights, np.float64)
  total = norm = 0.0
  for i in range(len(x)):
    logits = []
    for k in range(len(proxies)):
      diff = _unit(x[i]) - _unit(proxies[k])
      logits.append(-softmax_scale * sum(float(d) * float(d) for d in diff))
    y = int(labels[i])
    total += weights[i] * (_logsumexp(logits) - logits[y])
    norm += weights[i]
  return total / norm if norm > 0 else 0.0


REFERENCES = {"proxy_anchor": _proxy_anchor_reference, "proxy_nca": _proxy_nca_reference}


def _data(rng, batch_size, dim, num_classes, dtype, present=None):
  x = rng.normal(size=(batch_size, dim)) * rng.uniform(0.5, 2.0, (batch_size, 1))
  proxies = rng.normal(size=(num_classes, dim)) * rng.uniform(0.5, 2.0, (num_classes, 1))
  labels = rng.integers(0, present or num_classes, batch_size).astype(np.int32)
  return x.astype(dtype), labels, proxies.astype(dtype)


# ----------------------------------------------------------------------------
# Values and gradients.


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_matches_reference(name, dtype):
  kwargs = LOSSES[name][1]
  rng = np.random.default_rng(len(name))
  x, labels, proxies = _data(rng, 24, 5, 6, dtype, present=5)  # class 5 absent
  weights = rng.uniform(0.0, 2.0, 24).astype(dtype)
  weights[3] = 0.0
  for w in (None, weights):
    loss = _JITTED[name](x, labels, proxies, weights=w, **kwargs)
    assert loss.dtype == dtype and loss.shape == ()
    expected = REFERENCES[name](x, labels, proxies, w, **kwargs)
    chex.assert_trees_all_close(loss, np.asarray(expected, dtype), **TOLERANCES[dtype])


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradients_match_finite_differences(name):
  kwargs = GRAD_KWARGS[name]
  rng = np.random.default_rng(7)
  x, labels, proxies = _data(rng, 5, 3, 4, np.float64, present=3)
  weights = np.array([1.0, 0.5, 2.0, 1.0, 0.0])
  reference = REFERENCES[name]
  gx, gp = _GRADS[name](x, labels, proxies, weights=weights, **kwargs)
  nx = numeric_grad(lambda e: reference(e, labels, proxies, weights, **kwargs), x)
  npx = numeric_grad(lambda p: reference(x, labels, p, weights, **kwargs), proxies)
  chex.assert_trees_all_close(gx, nx, rtol=1e-6, atol=1e-8)
  chex.assert_trees_all_close(gp, npx, rtol=1e-6, atol=1e-8)
  assert np.abs(nx).max() > 1e-3 and np.abs(npx[3]).max() > 1e-4  # absent class 3 is pushed
  np.testing.assert_array_equal(gx[4], 0.0)  # zero weight, zero gradient


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_jit_equals_eager(name):
  fn, kwargs = LOSSES[name]
  rng = np.random.default_rng(3)
  x, labels, proxies = _data(rng, 10, 4, 3, np.float32)
  chex.assert_trees_all_close(fn(x, labels, proxies, **kwargs),
                              jax.jit(fn)(x, labels, proxies, **kwargs), rtol=1e-6)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_vmap_equals_loop(name):
  fn, kwargs = LOSSES[name]
  rng = np.random.default_rng(4)
  data = [_data(rng, 8, 3, 3, np.float64) for _ in range(3)]
  x, labels, proxies = (np.stack(parts) for parts in zip(*data))
  batched = jit_fast_compile(jax.vmap(lambda e, l, p: fn(e, l, p, **kwargs)))(x, labels, proxies)
  looped = np.array([_JITTED[name](x[v], labels[v], proxies[v], **kwargs) for v in range(3)])
  chex.assert_trees_all_close(batched, looped, rtol=1e-12)
  assert len(set(np.round(looped, 8))) == 3


def test_proxy_anchor_integer_weights_repeat_samples():
  rng = np.random.default_rng(5)
  x, labels, proxies = _data(rng, 6, 3, 4, np.float64)
  weights = np.array([2.0, 1.0, 0.0, 3.0, 1.0, 1.0])
  repeat = np.repeat(np.arange(6), weights.astype(int))
  chex.assert_trees_all_close(_JITTED["proxy_anchor"](x, labels, proxies, weights=weights),
                              _JITTED["proxy_anchor"](x[repeat], labels[repeat], proxies),
                              rtol=1e-12)


def test_proxy_anchor_absent_class_not_in_positive_divisor():
  # One sample of class 0 on proxy 0; proxies 1, 2 have no positive.
  proxies = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
  x, labels, a, m = np.array([[3.0, 0.0]]), np.array([0], np.int32), 2.0, 0.1
  positive = math.log1p(math.exp(-a * (1 - m)))
  negative = (math.log1p(math.exp(a * m)) + math.log1p(math.exp(a * (m - 1)))) / 3
  chex.assert_trees_all_close(_JITTED["proxy_anchor"](x, labels, proxies, margin=m, alpha=a),
                              positive + negative, rtol=1e-12)


# ----------------------------------------------------------------------------
# Edge cases.


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_one_class(name):
  _, kwargs = LOSSES[name]
  rng = np.random.default_rng(6)
  x, labels, proxies = _data(rng, 4, 3, 1, np.float64)
  loss = _JITTED[name](x, labels, proxies, **kwargs)
  chex.assert_trees_all_close(loss, REFERENCES[name](x, labels, proxies, **kwargs), rtol=1e-10)
  if name == "proxy_nca":
    assert float(loss) == 0.0
  assert all(np.all(np.isfinite(g)) for g in _GRADS[name](x, labels, proxies, **kwargs))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_identical_embeddings(name):
  _, kwargs = LOSSES[name]
  rng = np.random.default_rng(9)
  x, labels, proxies = _data(rng, 1, 3, 3, np.float64)
  many, many_labels = np.repeat(x, 5, axis=0), np.repeat(labels, 5)
  chex.assert_trees_all_close(_JITTED[name](many, many_labels, proxies, **kwargs),
                              REFERENCES[name](many, many_labels, proxies, **kwargs), rtol=1e-10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_sample_on_its_proxy(name, dtype):
  _, kwargs = LOSSES[name]
  rng = np.random.default_rng(10)
  _, _, proxies = _data(rng, 1, 3, 3, dtype)
  labels = np.array([0, 1], np.int32)
  x = 2 * proxies[labels]
  chex.assert_trees_all_close(
      _JITTED[name](x, labels, proxies, **kwargs),
      np.asarray(REFERENCES[name](x, labels, proxies, **kwargs), dtype), rtol=1e-4, atol=1e-5)
  assert all(np.all(np.isfinite(g)) for g in _GRADS[name](x, labels, proxies, **kwargs))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_zero_embedding(name):
  _, kwargs = LOSSES[name]
  rng = np.random.default_rng(11)
  _, _, proxies = _data(rng, 1, 3, 3, np.float64)
  x, labels = np.zeros((2, 3)), np.array([0, 2], np.int32)
  chex.assert_trees_all_close(_JITTED[name](x, labels, proxies, **kwargs),
                              REFERENCES[name](x, labels, proxies, **kwargs), rtol=1e-10)
  assert all(np.all(np.isfinite(g)) for g in _GRADS[name](x, labels, proxies, **kwargs))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_empty_batch(name):
  _, kwargs = LOSSES[name]
  proxies = np.ones((3, 4))
  x, labels = np.zeros((0, 4)), np.zeros((0,), np.int32)
  assert float(_JITTED[name](x, labels, proxies, **kwargs)) == 0.0
  gx, gp = _GRADS[name](x, labels, proxies, **kwargs)
  assert gx.shape == (0, 4)
  np.testing.assert_array_equal(gp, 0.0)


# ----------------------------------------------------------------------------
# Errors.


BAD_HYPERPARAMETERS = {
    "proxy_anchor": [("margin", v) for v in (-0.1, math.nan, math.inf, 1j, [0.1])]
                    + [("alpha", v) for v in (0.0, -1.0, math.nan, math.inf, 2j)],
    "proxy_nca": [("softmax_scale", v) for v in (0.0, -1.0, math.nan, math.inf, 1j, [1.0])],
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_bad_hyperparameters_raise(name):
  fn, kwargs = LOSSES[name]
  rng = np.random.default_rng(14)
  x, labels, proxies = _data(rng, 4, 3, 3, np.float32)
  for key, value in BAD_HYPERPARAMETERS[name]:
    with pytest.raises(ValueError):
      fn(x, labels, proxies, **{**kwargs, key: value})


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_bad_inputs_raise(name):
  fn, kwargs = LOSSES[name]
  rng = np.random.default_rng(15)
  x, labels, proxies = _data(rng, 4, 3, 3, np.float32)
  bad_calls = [
      (x, labels, proxies[:, :2]),
      (x, labels, proxies.astype(np.float64)),
      (x, labels[:3], proxies),
      (x, np.eye(3, dtype=np.int32)[labels], proxies),
      (x, np.array([0, 1, 2, 3], np.int32), proxies),
      (x, labels, proxies[:0]),
      (x, labels, np.full_like(proxies, np.nan)),
  ]
  for args in bad_calls:
    with pytest.raises(ValueError):
      fn(*args, **kwargs)
  with pytest.raises(ValueError):
    fn(x, labels, proxies, weights=-np.ones(4, np.float32), **kwargs)
