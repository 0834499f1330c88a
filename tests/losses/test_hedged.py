"""Tests of the HIB family: match probability, self-mismatch, KLs, mixture sampling, losses.

References are NumPy/Python in float64: explicit double loops over sample
pairs, the textbook KL formula, Monte Carlo and grid integration.
"""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sphereembed.losses import (
    kl_mixture_to_standard_normal,
    kl_to_standard_normal,
    match_probability,
    sample_mixture,
    self_mismatch,
    soft_contrastive_loss,
    vib_match_loss,
)
from tests.references import jit_fast_compile, numeric_grad

TOLERANCES = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float64: dict(rtol=1e-11, atol=1e-13)}

# Module-level jitted functions: one compilation per input signature.
_match = jit_fast_compile(match_probability)
_mismatch = jit_fast_compile(self_mismatch)
_kl = jit_fast_compile(kl_to_standard_normal)
_kl_mixture = jit_fast_compile(kl_mixture_to_standard_normal)
_sample = jit_fast_compile(sample_mixture, static_argnames=("num_samples",))
_soft = jit_fast_compile(soft_contrastive_loss, static_argnames=("estimator",))
_vib = jit_fast_compile(vib_match_loss, static_argnames=("num_samples", "estimator",
                                                          "return_stats"))


# ----------------------------------------------------------------------------
# Brute-force references.


def _sigmoid(t):
  return 1.0 / (1.0 + math.exp(-t)) if t >= 0 else math.exp(t) / (1.0 + math.exp(t))


def _ref_match(z1, z2, a, b):
  """The K1 x K2 double loop of HIB eq. 5."""
  z1, z2 = np.asarray(z1, np.float64), np.asarray(z2, np.float64)
  total = 0.0
  for i in range(len(z1)):
    for j in range(len(z2)):
      d = math.sqrt(sum((z1[i, k] - z2[j, k]) ** 2 for k in range(z1.shape[1])))
      total += _sigmoid(-float(a) * d + float(b))
  return total / (len(z1) * len(z2))


def _ref_bce(z1, z2, y, a, b, estimator="log_mean"):
  if estimator == "log_mean":
    p = _ref_match(z1, z2, a, b)
    return -math.log(p) if y else -math.log(1.0 - p)
  terms = []
  for i in range(len(z1)):
    for j in range(len(z2)):
      t = -float(a) * float(np.linalg.norm(np.asarray(z1[i], np.float64) - z2[j])) + float(b)
      terms.append(np.logaddexp(0.0, -t) if y else np.logaddexp(0.0, t))
  return float(np.mean(terms))


def _ref_kl(mean, log_sigma):
  mean, log_sigma = np.asarray(mean, np.float64), np.asarray(log_sigma, np.float64)
  return 0.5 * np.sum(np.exp(2 * log_sigma) + mean**2 - 1 - 2 * log_sigma, axis=-1)


def _log_normal(z, mean, sigma):
  return np.sum(-0.5 * ((z - mean) / sigma) ** 2 - np.log(sigma) - 0.5 * math.log(2 * math.pi),
                axis=-1)


def _ref_kl_mixture_mc(means, log_sigmas, z, weights):
  """``mean_k [log p(z_k) - log N(z_k; 0, I)]`` with explicit loops over components."""
  z = np.asarray(z, np.float64)
  p = np.zeros(len(z))
  for c in range(len(means)):
    p += weights[c] * np.exp(_log_normal(z, means[c], np.exp(log_sigmas[c])))
  return float(np.mean(np.log(p) - _log_normal(z, 0.0, 1.0)))


def _ref_kl_mixture_grid(means, log_sigmas, weights, half_width=12.0, n=1201):
  """KL(p || N(0, I)) of a 2-D mixture by integration on a grid."""
  axis = np.linspace(-half_width, half_width, n)
  x, y = np.meshgrid(axis, axis, indexing="ij")
  z = np.stack([x.ravel(), y.ravel()], axis=1)
  p = sum(w * np.exp(_log_normal(z, m, np.exp(s))) for m, s, w in zip(means, log_sigmas, weights))
  log_r = _log_normal(z, 0.0, 1.0)
  positive = p > 0
  integrand = np.where(positive, p * (np.log(np.where(positive, p, 1.0)) - log_r), 0.0)
  return float(np.sum(integrand) * (axis[1] - axis[0]) ** 2)


def _finite(*arrays):
  for a in jax.tree_util.tree_leaves(arrays):
    assert np.all(np.isfinite(np.asarray(a))), a


# ----------------------------------------------------------------------------
# match_probability and self_mismatch.


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k1,k2,dim", [(1, 1, 2), (8, 8, 3), (5, 3, 2)])
def test_match_probability_equals_double_loop(dtype, k1, k2, dim):
  rng = np.random.default_rng(k1 * 10 + k2 + dim)
  z1 = rng.normal(size=(4, k1, dim)).astype(dtype)
  z2 = rng.normal(size=(4, k2, dim)).astype(dtype)
  a, b = dtype(1.7), dtype(0.9)
  batched = _match(z1, z2, a, b)
  assert batched.shape == (4,) and batched.dtype == dtype
  expected = np.array([_ref_match(z1[n], z2[n], a, b) for n in range(4)])
  chex.assert_trees_all_close(batched, expected.astype(dtype), **TOLERANCES[dtype])
  single = _match(z1[0], z2[0], a, b)
  assert single.shape == () and single.dtype == dtype
  chex.assert_trees_all_close(single, dtype(expected[0]), **TOLERANCES[dtype])


def test_match_probability_uses_a_and_b_as_given():
  z1, z2 = np.array([[0.0, 0.0]]), np.array([[3.0, 4.0]])  # distance 5
  for a, b in ((2.0, 1.0), (-0.5, 0.0), (0.0, -3.0)):  # no softplus or sign change inside
    chex.assert_trees_all_close(_match(z1, z2, a, b), _sigmoid(-5 * a + b), rtol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_self_mismatch_equals_double_loop_with_diagonal(dtype):
  rng = np.random.default_rng(5)
  z = rng.normal(size=(3, 6, 2)).astype(dtype)
  eta = _mismatch(z, dtype(2.0), dtype(1.5))
  assert eta.shape == (3,) and eta.dtype == dtype
  expected = np.array([1.0 - _ref_match(z[n], z[n], 2.0, 1.5) for n in range(3)])
  chex.assert_trees_all_close(eta, expected.astype(dtype), **TOLERANCES[dtype])
  # The K diagonal pairs (i = j) count: a cloud's eta lies above the point's floor.
  floor = 1.0 - _sigmoid(1.5)
  assert np.all(np.asarray(eta) > floor)
  chex.assert_trees_all_close(eta, 1 - _match(z, z, dtype(2.0), dtype(1.5)),
                              rtol=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("b", [-3.0, 0.0, 0.7, 12.0])
def test_self_mismatch_of_a_point_is_one_minus_sigmoid_b(dtype, b):
  point = np.array([[0.3, -2.0, 5.0]], dtype)  # K = 1
  expected = _sigmoid(-b)  # = 1 - sigmoid(b), without the cancellation for large b
  got = _mismatch(point, dtype(4.0), dtype(b))
  chex.assert_trees_all_close(got, dtype(expected), rtol=1e-6 if dtype == np.float32 else 1e-14)
  # Computed as sigmoid(-b): a tiny eta keeps its relative precision.
  assert got > 0
  # Coinciding samples behave like the point itself.
  chex.assert_trees_all_close(_mismatch(np.repeat(point, 4, axis=0), dtype(4.0), dtype(b)),
                              got, rtol=1e-6)


def test_match_probability_vmap_equals_batch():
  rng = np.random.default_rng(6)
  z1, z2 = rng.normal(size=(2, 5, 4, 3))
  mapped = jax.vmap(match_probability, in_axes=(0, 0, None, None))(z1, z2, 1.0, 0.5)
  chex.assert_trees_all_close(mapped, _match(z1, z2, 1.0, 0.5), rtol=1e-13)
  mapped_eta = jax.vmap(self_mismatch, in_axes=(0, None, None))(z1, 1.0, 0.5)
  chex.assert_trees_all_close(mapped_eta, _mismatch(z1, 1.0, 0.5), rtol=1e-13)
  # Different a per row: a and b may be traced.
  a = np.array([0.5, 1.0, 2.0, 3.0, 4.0])
  per_a = jax.vmap(match_probability, in_axes=(0, 0, 0, None))(z1, z2, a, 0.5)
  chex.assert_trees_all_close(
      per_a, np.array([_ref_match(z1[n], z2[n], a[n], 0.5) for n in range(5)]), rtol=1e-12)


def test_jit_equals_eager():
  """Eager calls (checks, then the library's own jitted kernel) equal the fully jitted ones."""
  rng = np.random.default_rng(7)
  z1 = rng.normal(size=(6, 4, 2)).astype(np.float32)
  z2 = rng.normal(size=(6, 3, 2)).astype(np.float32)
  same = np.array([1, 0, 1, 1, 0, 0])
  a, b = np.float32(1.1), np.float32(0.7)
  weights = rng.random(6).astype(np.float32)
  for fn, jitted, args, kwargs in (
      (match_probability, _match, (z1, z2, a, b), {}),
      (soft_contrastive_loss, _soft, (z1, z2, same, a, b), dict(weights=weights,
                                                                estimator="log_mean")),
  ):
    chex.assert_trees_all_close(fn(*args, **kwargs), jitted(*args, **kwargs), rtol=1e-6)
  # Point embeddings (the stochastic eager path runs in the doctest).
  args = (z1[:, 0], None, z2[:, 0], None, same, a, b)
  chex.assert_trees_all_close(vib_match_loss(*args, weights=weights),
                              _vib(*args, weights=weights), rtol=1e-6)


# ----------------------------------------------------------------------------
# Gradients.


def test_gradients_are_finite_where_samples_coincide():
  dtype = np.float32
  z = np.array([[[0.5, -1.0], [0.5, -1.0], [2.0, 0.0]]], dtype)  # two coinciding samples
  mu = np.zeros((2, 2), dtype)

  def everything(x, m, a, b):
    return (jnp.sum(match_probability(x, x, a, b)) + jnp.sum(self_mismatch(x, a, b))
            + soft_contrastive_loss(x, x, np.array([1]), a, b)
            # Points at the same place: d = 0 for every pair.
            + vib_match_loss(m, None, m, None, np.array([1, 0]), a, b))

  grads = jit_fast_compile(jax.grad(everything, argnums=(0, 1, 2, 3)))(z, mu, dtype(1.5),
                                                                       dtype(0.3))
  _finite(grads)
  # At d = 0 the distance has the zero subgradient: coinciding points do not move.
  np.testing.assert_array_equal(grads[1], 0.0)
  # The coinciding samples do not push each other: they get the same gradient.
  np.testing.assert_array_equal(grads[0][0, 0], grads[0][0, 1])
  assert np.any(grads[0][0, 2] != grads[0][0, 0])


def test_match_probability_gradient_equals_finite_differences():
  rng = np.random.default_rng(8)
  z1, z2 = rng.normal(size=(4, 2)), rng.normal(size=(3, 2))
  grads = jax.grad(match_probability, argnums=(0, 1, 2, 3))(z1, z2, 1.3, -0.2)
  chex.assert_trees_all_close(grads[0], numeric_grad(lambda x: _ref_match(x, z2, 1.3, -0.2), z1),
                              atol=1e-8)
  chex.assert_trees_all_close(grads[1], numeric_grad(lambda x: _ref_match(z1, x, 1.3, -0.2), z2),
                              atol=1e-8)
  chex.assert_trees_all_close(grads[2], numeric_grad(lambda a: _ref_match(z1, z2, a, -0.2),
                                                     np.array(1.3)), atol=1e-8)
  chex.assert_trees_all_close(grads[3], numeric_grad(lambda b: _ref_match(z1, z2, 1.3, b),
                                                     np.array(-0.2)), atol=1e-8)


@pytest.mark.parametrize("estimator", ["log_mean", "mean_log"])
def test_soft_contrastive_gradient_equals_finite_differences(estimator):
  rng = np.random.default_rng(9)
  z1, z2 = rng.normal(size=(3, 4, 2)), rng.normal(size=(3, 4, 2))
  same = np.array([1, 0, 1])

  def reference(x):
    return np.mean([_ref_bce(x[n], z2[n], same[n], 0.8, 0.4, estimator) for n in range(3)])

  grad = jit_fast_compile(jax.grad(soft_contrastive_loss), static_argnames=("estimator",))(
      z1, z2, same, 0.8, 0.4, estimator=estimator)
  chex.assert_trees_all_close(grad, numeric_grad(reference, z1), atol=1e-8)


def test_vib_gradient_equals_finite_differences():
  """For a fixed key the samples are a smooth function of the parameters.

  The first members are single Gaussians (closed-form KL), the second MoG-2
  (Monte Carlo KL): both paths in one program.
  """
  rng = np.random.default_rng(10)
  params = [rng.normal(size=(2, 1, 2)), rng.normal(size=(2, 1, 2)) * 0.3 - 0.5,
            rng.normal(size=(2, 2, 2)), rng.normal(size=(2, 2, 2)) * 0.3 - 0.5]
  same, key = np.array([1, 0]), jax.random.key(4)

  def loss(flat):
    m1, s1 = flat[:2].reshape(2, 1, 2), flat[2:4].reshape(2, 1, 2)
    m2, s2 = flat[4:8].reshape(2, 2, 2), flat[8:].reshape(2, 2, 2)
    return vib_match_loss(m1, s1, m2, s2, same, 1.2, 0.5, key=key, num_samples=4, beta=0.05)

  flat = np.concatenate([p.reshape(-1, 2) for p in params])
  value_and_grad = jit_fast_compile(jax.value_and_grad(loss))  # one program for both
  chex.assert_trees_all_close(value_and_grad(flat)[1],
                              numeric_grad(lambda x: value_and_grad(x)[0], flat), atol=1e-7)


# ----------------------------------------------------------------------------
# KL divergences.


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kl_to_standard_normal_closed_form(dtype):
  rng = np.random.default_rng(11)
  mean = rng.normal(size=(5, 3)).astype(dtype)
  log_sigma = rng.normal(size=(5, 3)).astype(dtype)
  kl = _kl(mean, log_sigma)
  assert kl.shape == (5,) and kl.dtype == dtype
  chex.assert_trees_all_close(kl, _ref_kl(mean, log_sigma).astype(dtype), **TOLERANCES[dtype])
  assert float(_kl(np.zeros(4, dtype), np.zeros(4, dtype))) == 0.0
  # Near the standard normal: e^(2e-6) - 1 - 2e-6 = 2e-12 + (4/3) 1e-18, no
  # cancellation in sigma^2 - 1 (exp(x) - 1 would lose it all in float32).
  tiny = np.full(2, 1e-6, dtype)
  exact = 2e-12 + 4e-18 / 3
  chex.assert_trees_all_close(_kl(np.zeros(2, dtype), tiny), dtype(exact),
                              **(dict(atol=2e-13) if dtype == np.float32 else dict(rtol=1e-9)))


def test_kl_to_standard_normal_equals_monte_carlo():
  rng = np.random.default_rng(12)
  mean, log_sigma = np.array([0.5, -1.0, 2.0]), np.array([-0.3, 0.4, 0.0])
  z = mean + np.exp(log_sigma) * rng.normal(size=(200_000, 3))
  terms = _log_normal(z, mean, np.exp(log_sigma)) - _log_normal(z, 0.0, 1.0)
  error = 4 * terms.std() / math.sqrt(len(terms))
  assert abs(float(_kl(mean, log_sigma)) - terms.mean()) < error


def test_kl_mixture_is_unbiased():
  """Many independent estimates average to the grid-integrated KL of a MoG-2."""
  means = np.array([[-1.5, 0.5], [1.0, -0.5]])
  log_sigmas = np.array([[-0.5, 0.2], [0.1, -0.8]])
  weights = np.array([0.3, 0.7])
  exact = _ref_kl_mixture_grid(means, log_sigmas, weights)
  batch, k = 400, 8
  tiled = np.broadcast_to(means, (batch, 2, 2))
  tiled_sigmas = np.broadcast_to(log_sigmas, (batch, 2, 2))
  tiled_weights = np.broadcast_to(weights, (batch, 2))
  z = _sample(jax.random.key(5), tiled, tiled_sigmas, num_samples=k, mixture_weights=tiled_weights)
  estimates = np.asarray(_kl_mixture(tiled, tiled_sigmas, z, tiled_weights))
  error = 4 * estimates.std() / math.sqrt(batch)
  assert abs(estimates.mean() - exact) < error, (estimates.mean(), exact, error)
  # Each estimate is the textbook formula on its samples.
  for n in range(3):
    chex.assert_trees_all_close(estimates[n],
                                _ref_kl_mixture_mc(means, log_sigmas, np.asarray(z[n]), weights),
                                rtol=1e-11)


def test_kl_mixture_uniform_weights():
  # Uniform weights (None) equal explicit uniform weights.
  means = np.array([[0.0, 1.0], [2.0, -1.0], [0.5, 0.5]], np.float32)
  sigmas = np.zeros((3, 2), np.float32)
  samples = np.random.default_rng(0).normal(size=(5, 2)).astype(np.float32)
  uniform = _kl_mixture(means, sigmas, samples)
  assert uniform.dtype == np.float32
  chex.assert_trees_all_close(uniform, _kl_mixture(means, sigmas, samples,
                                                   np.full(3, 1 / 3, np.float32)), rtol=1e-6)


# ----------------------------------------------------------------------------
# Sampling.


def test_sample_mixture_systematic_components_and_moments():
  means = np.array([[-10.0, 0.0], [10.0, 0.0], [0.0, 10.0], [0.0, -10.0]], np.float32)
  log_sigmas = np.log(np.array([[0.5, 0.5], [1.0, 2.0], [0.1, 0.1], [1.0, 1.0]], np.float32))
  batch = np.broadcast_to(means, (3000, 4, 2))
  batch_sigmas = np.broadcast_to(log_sigmas, (3000, 4, 2))
  z = _sample(jax.random.key(7), batch, batch_sigmas, num_samples=8)
  assert z.shape == (3000, 8, 2) and z.dtype == np.float32
  z = np.asarray(z, np.float64)
  component = np.argmin(np.linalg.norm(z[..., None, :] - means, axis=-1), axis=-1)
  # Uniform weights, C | K: exactly K / C samples of each component per set
  # (grouped by component, in order); each component a Gaussian with its moments.
  np.testing.assert_array_equal(component, np.broadcast_to(np.repeat(np.arange(4), 2), (3000, 8)))
  for c in range(4):
    x = z[component == c]
    chex.assert_trees_all_close(x.mean(0), means[c], atol=0.1)
    chex.assert_trees_all_close(x.std(0), np.exp(log_sigmas[c]), rtol=0.05)


def test_sample_mixture_given_weights():
  means = np.array([[-10.0], [0.0], [10.0]])
  weights = np.array([0.5, 0.125, 0.375])
  z = np.asarray(_sample(jax.random.key(8), np.broadcast_to(means, (2000, 3, 1)),
                         np.full((2000, 3, 1), -3.0), num_samples=8,
                         mixture_weights=np.broadcast_to(weights, (2000, 3))))
  counts = np.stack([(np.abs(z[..., 0] - m) < 1).sum(1) for m in means[:, 0]], axis=1)
  np.testing.assert_array_equal(counts, np.broadcast_to([4, 1, 3], counts.shape))
  # Weights that do not divide K: floor or ceil of K w_c, right on average;
  # a zero weight is never drawn.
  weights = np.array([0.3, 0.0, 0.7])
  z = np.asarray(_sample(jax.random.key(9), np.broadcast_to(means, (2000, 3, 1)),
                         np.full((2000, 3, 1), -3.0), num_samples=8,
                         mixture_weights=np.broadcast_to(weights, (2000, 3))))
  first = (z[..., 0] < -5).sum(1)
  assert set(first.tolist()) == {2, 3} and np.all(np.abs(z) > 5)
  assert abs(first.mean() - 8 * 0.3) < 0.05


def test_sample_mixture_point_and_gradients():
  mean, log_sigma = np.array([[1.0, -2.0]]), np.array([[0.5, -0.5]])
  key = jax.random.key(10)
  # Point embedding: log_sigmas=None gives the mean itself.
  point = _sample(key, mean, None, num_samples=1)
  np.testing.assert_array_equal(point, mean)
  # Reparameterisation: dz/dmu = 1, dz/dlog_sigma = sigma * eps = z - mu.
  grad_mean, grad_log_sigma = jit_fast_compile(jax.grad(
      lambda m, s: jnp.sum(sample_mixture(key, m, s, 6)), argnums=(0, 1)))(mean, log_sigma)
  np.testing.assert_allclose(grad_mean, [[6.0, 6.0]])
  np.testing.assert_allclose(grad_log_sigma,
                             np.sum(np.asarray(_sample(key, mean, log_sigma, num_samples=6))
                                    - mean, axis=0, keepdims=True), rtol=1e-12)


def test_sample_mixture_is_deterministic_given_the_key():
  # The signature of test_sample_mixture_systematic_components_and_moments.
  means, sigmas = np.zeros((3000, 4, 2), np.float32), np.zeros((3000, 4, 2), np.float32)
  a = _sample(jax.random.key(11), means, sigmas, num_samples=8)
  np.testing.assert_array_equal(a, _sample(jax.random.key(11), means, sigmas, num_samples=8))
  assert not np.array_equal(a, _sample(jax.random.key(12), means, sigmas, num_samples=8))
  assert a.shape == (3000, 8, 2)


# ----------------------------------------------------------------------------
# soft_contrastive_loss and vib_match_loss.


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("estimator", ["log_mean", "mean_log"])
def test_soft_contrastive_loss_matches_reference(dtype, estimator):
  rng = np.random.default_rng(13)
  z1 = rng.normal(size=(6, 4, 2)).astype(dtype)
  z2 = rng.normal(size=(6, 3, 2)).astype(dtype)
  same = np.array([1, 0, 1, 1, 0, 0])
  weights = rng.random(6).astype(dtype)
  loss = _soft(z1, z2, same, dtype(1.1), dtype(0.7), weights=weights, estimator=estimator)
  assert loss.dtype == dtype and loss.shape == ()
  terms = [_ref_bce(z1[n], z2[n], same[n], 1.1, 0.7, estimator) for n in range(6)]
  expected = np.sum(weights * np.array(terms)) / np.sum(weights)
  chex.assert_trees_all_close(loss, dtype(expected), **TOLERANCES[dtype])


def test_soft_contrastive_estimators_jensen_and_points():
  rng = np.random.default_rng(14)
  z1, z2 = rng.normal(size=(2, 5, 6, 2))
  same = np.array([1, 0, 1, 0, 1])
  log_mean = _soft(z1, z2, same, 1.0, 0.5)
  assert log_mean < _soft(z1, z2, same, 1.0, 0.5, estimator="mean_log")
  # One sample each: both estimators are the cross-entropy of the point logits.
  chex.assert_trees_all_close(_soft(z1[:, :1], z2[:, :1], same, 1.0, 0.5),
                              _soft(z1[:, :1], z2[:, :1], same, 1.0, 0.5, estimator="mean_log"),
                              rtol=1e-13)


def test_soft_contrastive_extreme_logits_are_finite():
  z1 = np.zeros((2, 2, 1), np.float32)
  z2 = np.array([[[0.0], [1e4]], [[0.0], [1e4]]], np.float32)
  # The far samples' match logit is about -1e6: p rounds to 1/2 or its
  # mismatch term to 0 in float32, yet the loss stays finite and exact.
  grad = jit_fast_compile(jax.grad(soft_contrastive_loss))
  for same, b in (([1, 1], 200.0), ([0, 0], 200.0), ([1, 0], -200.0)):
    args = (z1, z2, np.array(same), np.float32(100.0), np.float32(b))
    _finite(_soft(*args), grad(*args))
  # All samples far apart and labelled "same": -log(mean sigmoid) with the
  # logits -1e6 + 200 and 200.
  loss = _soft(z1, z2, np.array([1, 1]), np.float32(100.0), np.float32(200.0))
  chex.assert_trees_all_close(loss, np.float32(math.log(2)), rtol=1e-6)
  far = _soft(z1[:, 1:], z2[:, 1:], np.array([1, 1]), np.float32(100.0), np.float32(200.0))
  chex.assert_trees_all_close(far, np.float32(1e6 - 200), rtol=1e-6)


@pytest.mark.parametrize("dtype,components", [(np.float64, 1), (np.float32, 2), (np.float64, 2)])
def test_vib_match_loss_matches_reference(dtype, components):
  rng = np.random.default_rng(15 + components)
  means1, means2 = rng.normal(size=(2, 4, components, 2)).astype(dtype)
  sigmas1, sigmas2 = (rng.normal(size=(2, 4, components, 2)) * 0.3 - 1.0).astype(dtype)
  same = np.array([True, False, True, False])
  key = jax.random.key(13)
  loss, stats = _vib(means1, sigmas1, means2, sigmas2, same, dtype(1.5), dtype(0.5), key=key,
                     beta=dtype(0.01), return_stats=True)
  assert loss.dtype == dtype and loss.shape == ()
  # The documented sampling: split(key)[0] for the first members, [1] for the second.
  key1, key2 = jax.random.split(key)
  z1 = np.asarray(_sample(key1, means1, sigmas1, num_samples=8), np.float64)
  z2 = np.asarray(_sample(key2, means2, sigmas2, num_samples=8), np.float64)
  total, probabilities = 0.0, []
  for n in range(4):
    if components == 1:
      kl = _ref_kl(means1[n, 0], sigmas1[n, 0]) + _ref_kl(means2[n, 0], sigmas2[n, 0])
    else:
      uniform = np.full(components, 1 / components)
      kl = (_ref_kl_mixture_mc(means1[n], sigmas1[n], z1[n], uniform)
            + _ref_kl_mixture_mc(means2[n], sigmas2[n], z2[n], uniform))
    total += _ref_bce(z1[n], z2[n], same[n], 1.5, 0.5) + 0.01 * kl
    probabilities.append(_ref_match(z1[n], z2[n], 1.5, 0.5))
  tolerance = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-10)
  chex.assert_trees_all_close(loss, dtype(total / 4), **tolerance)
  chex.assert_trees_all_close(stats["match_probability"], np.array(probabilities, dtype),
                              **tolerance)
  chex.assert_trees_all_close(stats["bce"] + 0.01 * stats["kl"], loss, **tolerance)


def test_vib_match_loss_defaults_and_point_embeddings():
  rng = np.random.default_rng(17)
  means1, means2 = rng.normal(size=(2, 5, 3))
  same = np.array([1, 0, 0, 1, 1])
  # Points: one sample, no KL: the soft contrastive loss of the point baseline.
  point = _vib(means1, None, means2, None, same, 2.0, 1.0)
  expected = np.mean([_ref_bce(means1[n:n + 1], means2[n:n + 1], same[n], 2.0, 1.0)
                      for n in range(5)])
  chex.assert_trees_all_close(point, expected, rtol=1e-13)
  # (B, D) inputs are single Gaussians; beta defaults to 1e-4.
  sigmas = np.full((5, 3), -1.0)
  loss, stats = _vib(means1, sigmas, means2, sigmas, same, 2.0, 1.0, key=jax.random.key(0),
                     return_stats=True)
  chex.assert_trees_all_close(loss, stats["bce"] + 1e-4 * stats["kl"], rtol=1e-13)
  expected_kl = np.mean(_ref_kl(means1, sigmas) + _ref_kl(means2, sigmas))
  chex.assert_trees_all_close(stats["kl"], expected_kl, rtol=1e-13)
  # A stochastic member against a point member.
  mixed = _vib(means1[:, None], sigmas[:, None], means2, None, same, 2.0, 1.0,
               key=jax.random.key(0), beta=0.0)
  _finite(mixed)


def test_vib_match_loss_vmap_over_independent_batches():
  # The signature of test_vib_match_loss_matches_reference[float64-2]: the
  # looped calls reuse its compiled program.
  rng = np.random.default_rng(18)
  means1, means2 = rng.normal(size=(2, 3, 4, 2, 2))
  sigmas = np.full((4, 2, 2), -1.0)
  same = np.array([[True, False, True, False]] * 3)
  keys = jax.random.split(jax.random.key(1), 3)

  a, b, beta = np.float64(1.5), np.float64(0.5), np.float64(0.01)

  def one(k, m1, m2, s):
    return vib_match_loss(m1, sigmas, m2, sigmas, s, a, b, key=k, beta=beta, return_stats=True)

  mapped = jit_fast_compile(jax.vmap(one))(keys, means1, means2, same)
  for v in range(3):
    looped = _vib(means1[v], sigmas, means2[v], sigmas, same[v], a, b, key=keys[v], beta=beta,
                  return_stats=True)
    chex.assert_trees_all_close(jax.tree_util.tree_map(lambda x: x[v], mapped), looped,
                                rtol=1e-12)


# ----------------------------------------------------------------------------
# Errors.


def test_static_errors():
  z = np.zeros((2, 3, 2))
  with pytest.raises(ValueError, match="rank"):
    match_probability(np.zeros(3), np.zeros(3), 1.0, 0.0)
  with pytest.raises(ValueError, match="shapes"):
    match_probability(z, np.zeros((3, 3, 2)), 1.0, 0.0)
  with pytest.raises(ValueError, match="same dtype"):
    match_probability(z, z.astype(np.float32), 1.0, 0.0)
  with pytest.raises(ValueError, match="floating"):
    self_mismatch(np.zeros((2, 2), np.int32), 1.0, 0.0)
  with pytest.raises(ValueError, match="scalar"):
    match_probability(z, z, np.ones(2), 0.0)
  with pytest.raises(ValueError, match="at least one sample"):
    self_mismatch(np.zeros((0, 2)), 1.0, 0.0)
  with pytest.raises(ValueError, match="log_sigma"):
    kl_to_standard_normal(np.zeros(3), np.zeros(2))
  with pytest.raises(ValueError, match="samples must have shape"):
    kl_mixture_to_standard_normal(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((4, 2)))
  with pytest.raises(ValueError, match="point"):
    kl_mixture_to_standard_normal(np.zeros((2, 3)), None, np.zeros((4, 3)))
  with pytest.raises(ValueError, match="one component"):
    sample_mixture(jax.random.key(0), np.zeros((2, 3)), None, 1)
  with pytest.raises(ValueError, match="num_samples"):
    sample_mixture(jax.random.key(0), np.zeros((1, 3)), np.zeros((1, 3)), 0)
  with pytest.raises(ValueError, match="is_same must have shape"):
    soft_contrastive_loss(z, z, np.array([1]), 1.0, 0.0)
  with pytest.raises(ValueError, match="estimator"):
    soft_contrastive_loss(z, z, np.array([1, 0]), 1.0, 0.0, estimator="mean")
  with pytest.raises(ValueError, match="key"):
    vib_match_loss(np.zeros((2, 2)), np.zeros((2, 2)), np.zeros((2, 2)), None,
                   np.array([1, 0]), 1.0, 0.0)
  with pytest.raises(ValueError, match="mixture_weights1"):
    vib_match_loss(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), np.zeros((2, 2)), None,
                   np.array([1, 0]), 1.0, 0.0, key=jax.random.key(0),
                   mixture_weights1=np.ones(3) / 3)
  with pytest.raises(ValueError, match="means1 and means2"):
    vib_match_loss(np.zeros((2, 2)), None, np.zeros((3, 2)), None, np.array([1, 0]), 1.0, 0.0)


def test_value_errors_outside_jit():
  z = np.zeros((2, 3, 2))
  bad = z.copy()
  bad[1, 2, 0] = np.nan
  with pytest.raises(ValueError, match="NaN"):
    match_probability(bad, z, 1.0, 0.0)
  with pytest.raises(ValueError, match="NaN"):
    self_mismatch(bad, 1.0, 0.0)
  with pytest.raises(ValueError, match="NaN"):
    match_probability(z, z, np.nan, 0.0)
  with pytest.raises(ValueError, match="0 and 1"):
    soft_contrastive_loss(z, z, np.array([2, 0]), 1.0, 0.0)
  with pytest.raises(ValueError, match="non-negative"):
    soft_contrastive_loss(z, z, np.array([1, 0]), 1.0, 0.0, weights=np.array([1.0, -1.0]))
  with pytest.raises(ValueError, match="NaN"):
    kl_to_standard_normal(np.array([0.0, np.inf]), np.zeros(2))
  with pytest.raises(ValueError, match="sum to 1"):
    sample_mixture(jax.random.key(0), np.zeros((2, 1)), np.zeros((2, 1)), 4,
                   np.array([0.5, 0.6]))
  with pytest.raises(ValueError, match="beta"):
    vib_match_loss(np.zeros((2, 2)), None, np.zeros((2, 2)), None, np.array([1, 0]), 1.0, 0.0,
                   beta=-1.0)
  # Under jit no value check runs (the values are unknown); NaN propagates.
  assert np.isnan(_match(bad, z, 1.0, 0.0)[1])
