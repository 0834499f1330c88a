"""Tests of arcface, cosface, subcenter_arcface and normalized_softmax.

Every loss is compared with a brute-force NumPy reference written as explicit
Python loops over samples and proxies (float64), in float32 and float64;
gradients (embeddings and proxies) with finite differences of that reference.
"""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sphereembed.losses import arcface, cosface, normalized_softmax, subcenter_arcface
from tests.references import jit_fast_compile, numeric_grad

TOLERANCES = {np.float32: dict(rtol=2e-5, atol=2e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}

LOSSES = {
    "arcface": (arcface, dict(margin=0.5, scale=64.0), 1),
    "cosface": (cosface, dict(margin=0.35, scale=64.0), 1),
    "subcenter_arcface": (subcenter_arcface, dict(num_subcenters=3, margin=0.5, scale=64.0), 3),
    "normalized_softmax": (normalized_softmax, dict(temperature=0.05), 1),
}
# Smaller scales for the finite-difference checks (smaller curvature).
GRAD_KWARGS = {
    "arcface": dict(margin=0.4, scale=4.0),
    "cosface": dict(margin=0.3, scale=4.0),
    "subcenter_arcface": dict(num_subcenters=3, margin=0.4, scale=4.0),
    "normalized_softmax": dict(temperature=0.5),
}


def _static(name):
  return ("num_subcenters",) if name == "subcenter_arcface" else ()


_JITTED = {name: jit_fast_compile(fn, static_argnames=_static(name))
           for name, (fn, _, _) in LOSSES.items()}
_GRADS = {name: jit_fast_compile(jax.grad(fn, argnums=(0, 2)), static_argnames=_static(name))
          for name, (fn, _, _) in LOSSES.items()}


# ----------------------------------------------------------------------------
# Brute-force reference.


def _unit(v):
  v = np.asarray(v, np.float64)
  norm = math.sqrt(sum(float(a) * float(a) for a in v))
  return v / max(norm, 1e-12)


def _cos(u, v):
  u, v = _unit(u), _unit(v)
  return sum(float(a) * float(b) for a, b in zip(u, v))


def _logsumexp(values):
  m = max(values)
  return m + math.log(sum(math.exp(v - m) for v in values))


def _reference(name, x, labels, proxies, weights=None, **kwargs):
  """The loss by its textbook formula, one sample and one proxy at a time."""
  subcenters = kwargs.get("num_subcenters", 1)
  num_classes = len(proxies) // subcenters
  weights = np.ones(len(x)) if weights is None else np.asarray(weights, np.float64)
  total = norm = 0.0
  for i in range(len(x)):
    cosines = []
    for k in range(num_classes):
      cosines.append(max(_cos(x[i], proxies[k * subcenters + s]) for s in range(subcenters)))
    y = int(labels[i])
    if name == "normalized_softmax":
      logits = [c / kwargs["temperature"] for c in cosines]
    else:
      m, s = kwargs["margin"], kwargs["scale"]
      logits = [s * c for c in cosines]
      c = min(1.0, max(-1.0, cosines[y]))
      if name == "cosface":
        logits[y] = s * (cosines[y] - m)
      else:
        theta = math.acos(c)
        target = math.cos(theta + m) if theta <= math.pi - m else c - m * math.sin(m)
        logits[y] = s * target
    total += weights[i] * (_logsumexp(logits) - logits[y])
    norm += weights[i]
  return total / norm if norm > 0 else 0.0


def _data(rng, batch_size, dim, num_classes, dtype, subcenters=1, present=None):
  x = rng.normal(size=(batch_size, dim)) * rng.uniform(0.5, 2.0, (batch_size, 1))
  proxies = rng.normal(size=(num_classes * subcenters, dim))
  labels = rng.integers(0, present or num_classes, batch_size).astype(np.int32)
  return x.astype(dtype), labels, proxies.astype(dtype)


# ----------------------------------------------------------------------------
# Values and gradients.


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_matches_reference(name, dtype):
  _, kwargs, subcenters = LOSSES[name]
  rng = np.random.default_rng(len(name))
  x, labels, proxies = _data(rng, 24, 5, 6, dtype, subcenters, present=5)  # class 5 absent
  # Some samples near the opposite of their proxy (ArcFace's continuation branch).
  x[:3] = -proxies[labels[:3] * subcenters] + 0.05 * rng.normal(size=(3, 5)).astype(dtype)
  # Weights (a zero among them) in float32; unweighted in float64.
  w = np.concatenate([[0.0], rng.uniform(0.0, 2.0, 23)]).astype(dtype) if dtype == np.float32 else None
  loss = _JITTED[name](x, labels, proxies, weights=w, **kwargs)
  assert loss.dtype == dtype and loss.shape == ()
  expected = _reference(name, x, labels, proxies, w, **kwargs)
  chex.assert_trees_all_close(loss, np.asarray(expected, dtype), **TOLERANCES[dtype])


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradients_match_finite_differences(name):
  kwargs = GRAD_KWARGS[name]
  subcenters = LOSSES[name][2]
  rng = np.random.default_rng(7)
  x, labels, proxies = _data(rng, 5, 3, 3, np.float64, subcenters)
  weights = np.array([1.0, 0.5, 2.0, 1.0, 0.0])
  gx, gp = _GRADS[name](x, labels, proxies, weights=weights, **kwargs)
  nx = numeric_grad(lambda e: _reference(name, e, labels, proxies, weights, **kwargs), x)
  npx = numeric_grad(lambda p: _reference(name, x, labels, p, weights, **kwargs), proxies)
  chex.assert_trees_all_close(gx, nx, rtol=1e-6, atol=1e-8)
  chex.assert_trees_all_close(gp, npx, rtol=1e-6, atol=1e-8)
  assert np.abs(nx).max() > 1e-3 and np.abs(npx).max() > 1e-3
  np.testing.assert_array_equal(gx[4], 0.0)  # zero weight, zero gradient


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_jit_equals_eager(name):
  fn, kwargs, subcenters = LOSSES[name]
  rng = np.random.default_rng(3)
  x, labels, proxies = _data(rng, 10, 4, 3, np.float32, subcenters)
  eager = fn(x, labels, proxies, **kwargs)
  jitted = jax.jit(fn, static_argnames=_static(name))(x, labels, proxies, **kwargs)
  chex.assert_trees_all_close(eager, jitted, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_vmap_equals_loop(name):
  fn, kwargs, subcenters = LOSSES[name]
  rng = np.random.default_rng(4)
  data = [_data(rng, 8, 3, 3, np.float64, subcenters) for _ in range(3)]
  x, labels, proxies = (np.stack(parts) for parts in zip(*data))
  batched = jit_fast_compile(jax.vmap(lambda e, l, p: fn(e, l, p, **kwargs)))(x, labels, proxies)
  looped = np.array([_JITTED[name](x[v], labels[v], proxies[v], **kwargs) for v in range(3)])
  chex.assert_trees_all_close(batched, looped, rtol=1e-12)
  assert len(set(np.round(looped, 8))) == 3


def test_traced_hyperparameters():
  rng = np.random.default_rng(5)
  x, labels, proxies = _data(rng, 8, 3, 3, np.float64)
  for margin, scale in ((0.2, 8.0), (0.6, 30.0)):
    chex.assert_trees_all_close(
        _JITTED["arcface"](x, labels, proxies, margin=margin, scale=scale),
        _reference("arcface", x, labels, proxies, margin=margin, scale=scale), rtol=1e-10)


# ----------------------------------------------------------------------------
# Edge cases.


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_one_class_is_zero(name):
  _, kwargs, subcenters = LOSSES[name]
  rng = np.random.default_rng(6)
  x, labels, proxies = _data(rng, 4, 3, 1, np.float64, subcenters)
  assert float(_JITTED[name](x, labels, proxies, **kwargs)) == 0.0
  gx, gp = _GRADS[name](x, labels, proxies, **kwargs)
  np.testing.assert_allclose(gx, 0.0, atol=1e-12)
  np.testing.assert_allclose(gp, 0.0, atol=1e-12)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_absent_class_proxy_is_pushed(name):
  kwargs, subcenters = GRAD_KWARGS[name], LOSSES[name][2]
  rng = np.random.default_rng(8)
  x, labels, proxies = _data(rng, 6, 3, 3, np.float64, subcenters, present=2)
  x[0] = x[1]  # also: identical embeddings
  assert 2 not in labels
  _, gp = _GRADS[name](x, labels, proxies, **kwargs)
  # Class 2 only appears in the denominators: its (nearest) proxies get a gradient.
  assert np.abs(gp[2 * subcenters:]).max() > 1e-4
  chex.assert_trees_all_close(_JITTED[name](x, labels, proxies, **kwargs),
                              _reference(name, x, labels, proxies, **kwargs), rtol=1e-10)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_identical_embeddings(name):
  _, kwargs, subcenters = LOSSES[name]
  rng = np.random.default_rng(9)
  x, labels, proxies = _data(rng, 1, 3, 3, np.float64, subcenters)
  many, many_labels = np.repeat(x, 6, axis=0), np.repeat(labels, 6)
  chex.assert_trees_all_close(_JITTED[name](many, many_labels, proxies, **kwargs),
                              _reference(name, x, labels, proxies, **kwargs), rtol=1e-10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_sample_on_its_proxy(name, dtype):
  _, kwargs, subcenters = LOSSES[name]
  rng = np.random.default_rng(10)
  _, _, proxies = _data(rng, 1, 3, 3, dtype, subcenters)
  labels = np.array([0, 1], np.int32)
  x = 2 * proxies[labels * subcenters]  # exactly on the proxy's direction
  loss = _JITTED[name](x, labels, proxies, **kwargs)
  chex.assert_trees_all_close(loss, np.asarray(_reference(name, x, labels, proxies, **kwargs),
                                                dtype), rtol=1e-4, atol=1e-5)
  if dtype == np.float64:
    gx, gp = _GRADS[name](x, labels, proxies, **kwargs)
    assert np.all(np.isfinite(gx)) and np.all(np.isfinite(gp))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_zero_embedding(name):
  _, kwargs, subcenters = LOSSES[name]
  rng = np.random.default_rng(11)
  _, _, proxies = _data(rng, 1, 3, 3, np.float64, subcenters)
  x, labels = np.zeros((6, 3)), np.array([0, 2, 1, 0, 0, 1], np.int32)
  chex.assert_trees_all_close(_JITTED[name](x, labels, proxies, **kwargs),
                              _reference(name, x, labels, proxies, **kwargs), rtol=1e-10)
  assert all(np.all(np.isfinite(g)) for g in _GRADS[name](x, labels, proxies, **kwargs))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_empty_batch(name):
  _, kwargs, subcenters = LOSSES[name]
  proxies = np.ones((3 * subcenters, 4))
  x, labels = np.zeros((0, 4)), np.zeros((0,), np.int32)
  assert float(_JITTED[name](x, labels, proxies, **kwargs)) == 0.0
  gx, gp = _GRADS[name](x, labels, proxies, **kwargs)
  assert gx.shape == (0, 4)
  np.testing.assert_array_equal(gp, 0.0)


def test_arcface_with_one_subcenter_is_arcface():
  rng = np.random.default_rng(12)
  x, labels, proxies = _data(rng, 10, 4, 3, np.float64)
  chex.assert_trees_all_close(
      _JITTED["subcenter_arcface"](x, labels, proxies, num_subcenters=1),
      _JITTED["arcface"](x, labels, proxies), rtol=1e-12)


def test_cosface_without_margin_is_scaled_softmax():
  rng = np.random.default_rng(13)
  x, labels, proxies = _data(rng, 10, 4, 3, np.float64)
  chex.assert_trees_all_close(
      _JITTED["cosface"](x, labels, proxies, margin=0.0, scale=20.0),
      _JITTED["normalized_softmax"](x, labels, proxies, temperature=0.05), rtol=1e-12)


# ----------------------------------------------------------------------------
# Errors.


BAD_HYPERPARAMETERS = {
    "arcface": [("margin", v) for v in (-0.1, math.nan, math.inf, 4.0, 1 + 1j, [0.1, 0.2])]
               + [("scale", v) for v in (0.0, -1.0, math.nan, math.inf, 2j)],
    "cosface": [("margin", v) for v in (-0.1, math.nan, math.inf, 1j)]
               + [("scale", v) for v in (0.0, -1.0, math.nan)],
    "subcenter_arcface": [("margin", -0.1), ("scale", math.inf), ("num_subcenters", 0),
                          ("num_subcenters", 1.5), ("num_subcenters", 2)],
    "normalized_softmax": [("temperature", v) for v in (0.0, -0.1, math.nan, math.inf, 1j)],
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_bad_hyperparameters_raise(name):
  fn, kwargs, subcenters = LOSSES[name]
  rng = np.random.default_rng(14)
  x, labels, proxies = _data(rng, 4, 3, 3, np.float32, subcenters)
  for key, value in BAD_HYPERPARAMETERS[name]:
    with pytest.raises(ValueError):
      fn(x, labels, proxies, **{**kwargs, key: value})


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_bad_inputs_raise(name):
  fn, kwargs, subcenters = LOSSES[name]
  rng = np.random.default_rng(15)
  x, labels, proxies = _data(rng, 4, 3, 3, np.float32, subcenters)
  bad_calls = [
      (x, labels, proxies[:, :2]),                      # dimension mismatch
      (x, labels, proxies.astype(np.float64)),          # dtype mismatch
      (x, labels[:3], proxies),                         # label count
      (x, np.eye(3, dtype=np.int32)[labels], proxies),  # multi-hot labels
      (x, labels.astype(np.float32), proxies),          # float labels
      (x, np.array([0, 1, 2, 3], np.int32), proxies),   # label out of range (eager)
      (x[0], labels, proxies),                          # rank
      (x, labels, proxies[:0]),                         # no proxy
  ]
  for args in bad_calls:
    with pytest.raises(ValueError):
      fn(*args, **kwargs)
  with pytest.raises(ValueError):
    fn(np.where(np.arange(4)[:, None] == 1, np.nan, x).astype(np.float32), labels, proxies, **kwargs)
  with pytest.raises(ValueError):
    fn(x, labels, proxies, weights=-np.ones(4, np.float32), **kwargs)
  with pytest.raises(ValueError):
    fn(x, labels, proxies, weights=np.ones(3, np.float32), **kwargs)


def test_under_jit_labels_are_not_checked():
  # Under jit the value checks are skipped (as in the existing losses).
  rng = np.random.default_rng(16)
  x, labels, proxies = _data(rng, 4, 3, 3, np.float32)
  assert np.isfinite(jax.jit(arcface)(x, labels, proxies))
  grads = jax.jit(jax.grad(lambda m: arcface(x, labels, proxies, margin=m)))(jnp.float32(0.3))
  assert np.isfinite(grads)
