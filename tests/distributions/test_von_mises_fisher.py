"""The vMF log normaliser, mean resultant length and distribution, against mpmath.

Numerical floors on the grid d in {2, ..., 4096} x kappa in [1e-8, 1e5]
(half decades plus random off-grid points): relative error of log C_d at
most 1e-13 in float64 and 2e-6 in float32, of its kappa-gradient -A_d at
most 1e-11 and 1e-5; no non-finite value or gradient. In float32 the
reference is the exact value at the float32-rounded kappa.

log C_d crosses 0 for d >= 19 (where |S^{d-1}| < 1). Next to that crossing
no finite-precision evaluation has a small relative error (the terms that
cancel are ~|kappa A_d| large), so there the float32 error is measured
against ``max(|log C_d|, kappa A_d)``: the error a relative change of kappa
of the same size would cause. Everywhere else, and everywhere in float64,
it is the plain relative error.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
import scipy.stats

from sphereembed.distributions import (
    VonMisesFisher,
    bessel,
    von_mises_fisher,
    inverse_mean_resultant_length,
    log_sphere_area,
    mean_resultant_length,
    vmf_log_normalizer,
)

DIMS = (2, 3, 4, 8, 16, 64, 128, 512, 1024, 4096)
_RNG = np.random.default_rng(1)
KAPPAS = {d: np.unique(np.concatenate([np.logspace(-8, 5, 27), 10 ** _RNG.uniform(-8, 5, 5)]))
          for d in DIMS}
VALUE_TOLERANCE = {np.float64: 1e-13, np.float32: 2e-6}
GRADIENT_TOLERANCE = {np.float64: 1e-11, np.float32: 1e-5}


@functools.lru_cache(maxsize=None)
def _debye_polynomials(count):
  """Olver's U_k (DLMF 10.41.9) as exact coefficient lists."""
  from fractions import Fraction
  polys = [[Fraction(1)]]
  for _ in range(count):
    u = polys[-1]
    out = [Fraction(0)] * (len(u) + 3)
    for i, c in enumerate(u):
      out[i + 1] += i * c / 2 + c / (8 * (i + 1))
      out[i + 3] += -i * c / 2 - 5 * c / (8 * (i + 3))
    polys.append(out)
  return polys


def _log_besseli(order, z):
  """log I_v(z) at the working precision; Debye's expansion (16 terms, error
  < 1e-45) for orders >= 1000 at z in (3e3, 2e5), where mpmath's series takes
  seconds per point."""
  if order >= 1000 and 3000 < z < 2e5:
    v = mpmath.mpf(order)
    t = z / v
    s = mpmath.sqrt(1 + t * t)
    p = 1 / s
    total = sum(sum(mpmath.mpf(c.numerator) / c.denominator * p**j for j, c in enumerate(u)) / v**k
                for k, u in enumerate(_debye_polynomials(16)))
    return (v * (s + mpmath.log(t / (1 + s))) - mpmath.log(2 * mpmath.pi * v) / 2
            - mpmath.log(s) / 2 + mpmath.log(total))
  return mpmath.log(mpmath.besseli(order, z))


@functools.lru_cache(maxsize=None)
def reference(dim: int, kappa: float) -> tuple[float, float]:
  """``(log C_d(kappa), A_d(kappa))`` with mpmath at 40 digits."""
  with mpmath.workdps(40):
    k = mpmath.mpf(kappa)
    v = mpmath.mpf(dim) / 2 - 1
    log_i, log_next = _log_besseli(v, k), _log_besseli(v + 1, k)
    log_c = v * mpmath.log(k) - (v + 1) * mpmath.log(2 * mpmath.pi) - log_i
    return float(log_c), float(mpmath.exp(log_next - log_i))


def references(dim, kappa):
  return np.array([reference(dim, float(k)) for k in np.asarray(kappa, np.float64)])


@functools.lru_cache(maxsize=None)
def _value_and_gradient(dim):
  return jax.jit(lambda k: (vmf_log_normalizer(k, dim),
                            jax.vmap(jax.grad(lambda x: vmf_log_normalizer(x, dim)))(k)))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("dim", DIMS)
def test_log_normalizer_and_gradient_match_mpmath(dim, dtype):
  kappa = jnp.asarray(KAPPAS[dim], dtype)
  ref = references(dim, kappa)
  value, gradient = _value_and_gradient(dim)(kappa)
  assert value.dtype == dtype and gradient.dtype == dtype
  assert np.all(np.isfinite(value)) and np.all(np.isfinite(gradient))
  error = np.abs(np.asarray(value, np.float64) - ref[:, 0])
  scale = np.abs(ref[:, 0])
  if dtype == np.float32:
    scale = np.maximum(scale, np.asarray(kappa, np.float64) * ref[:, 1])
  assert np.max(error / scale) <= VALUE_TOLERANCE[dtype]
  gradient_error = np.abs(np.asarray(gradient, np.float64) + ref[:, 1]) / ref[:, 1]
  assert np.max(gradient_error) <= GRADIENT_TOLERANCE[dtype]


def test_zero_concentration_is_the_uniform_density():
  for dim in (2, 3, 16, 4096):
    kappa = jnp.zeros(len(KAPPAS[dim]))  # the grid's shape: reuses its compilation
    value, gradient = _value_and_gradient(dim)(kappa)
    np.testing.assert_allclose(value, -log_sphere_area(dim), rtol=1e-15)
    np.testing.assert_array_equal(gradient, 0.0)
  np.testing.assert_array_equal(mean_resultant_length(jnp.zeros(3), 3), 0.0)
  assert log_sphere_area(3) == pytest.approx(math.log(4 * math.pi), rel=1e-15)


def test_jit_equals_eager_and_vmap():
  kappa = jnp.asarray(KAPPAS[64])
  eager = vmf_log_normalizer(kappa, 64)
  np.testing.assert_array_equal(jax.jit(lambda k: vmf_log_normalizer(k, 64))(kappa), eager)
  np.testing.assert_array_equal(
      jax.vmap(lambda k: vmf_log_normalizer(k, 64))(kappa.reshape(-1, 1)).ravel(), eager)


@pytest.mark.parametrize("dim", [2, 3, 64, 4096])
def test_mean_resultant_length_limits(dim):
  small = jnp.asarray([1e-300, 1e-10])
  np.testing.assert_allclose(mean_resultant_length(small, dim), small / dim, rtol=1e-15)
  large = jnp.asarray([1e8, 1e12])
  with mpmath.workdps(40):
    v = mpmath.mpf(dim) / 2 - 1
    exact = [1 - mpmath.besseli(v + 1, k) / mpmath.besseli(v, k) for k in (10**8, 10**12)]
  exact = np.array([float(x) for x in exact])
  np.testing.assert_allclose(mean_resultant_length(large, dim), 1 - exact, rtol=4e-16, atol=0)
  # 1 - A_d itself (used by the entropy and the inverse) keeps its relative accuracy.
  complement = bessel.ratio_and_complement(dim / 2 - 1, large)[1]
  np.testing.assert_allclose(complement, exact, rtol=1e-15, atol=0)
  slope = jax.grad(lambda k: mean_resultant_length(k, dim))(0.0)
  assert float(slope) == pytest.approx(1 / dim, rel=1e-15)


@pytest.mark.parametrize("dim, dtype", [(2, np.float64), (16, np.float64), (4096, np.float64),
                                        (3, np.float32), (128, np.float32)])
def test_inverse_mean_resultant_length_round_trips(dim, dtype):
  kappa = jnp.asarray(np.logspace(-4, 5, 19), dtype)
  r = mean_resultant_length(kappa, dim)
  recovered = jax.jit(lambda r: inverse_mean_resultant_length(r, dim))(r)
  assert recovered.dtype == dtype and np.all(np.isfinite(recovered))
  # kappa is as accurate as 1 - r: condition number 2 kappa / (d - 1) beyond kappa ~ d.
  eps = float(jnp.finfo(dtype).eps)
  k64 = np.asarray(kappa, np.float64)
  tolerance = 16 * eps * np.maximum(1.0, 2 * k64 / (dim - 1))
  assert np.all(np.abs(np.asarray(recovered, np.float64) / k64 - 1) <= tolerance)
  # Edges: r = 0 -> 0, r = 1 -> inf.
  edges = inverse_mean_resultant_length(jnp.asarray([0.0, 1.0], dtype), dim)
  assert float(edges[0]) == 0.0 and float(edges[1]) == np.inf


def test_inverse_mean_resultant_length_matches_banerjee_start_shape():
  # Its closed-form start is within 10 %; Newton makes it exact.
  for dim in (3, 50):
    r = jnp.asarray([0.1, 0.5, 0.9])
    kappa = inverse_mean_resultant_length(r, dim)
    np.testing.assert_allclose(mean_resultant_length(kappa, dim), r, rtol=1e-14)


def test_bad_inputs_raise():
  with pytest.raises(ValueError, match="kappa"):
    vmf_log_normalizer(jnp.asarray([1.0, -1.0]), 3)
  with pytest.raises(ValueError, match="kappa"):
    mean_resultant_length(jnp.asarray([np.nan]), 3)
  for dim in (1, 0, 2.0, True):
    with pytest.raises(ValueError, match="dim"):
      vmf_log_normalizer(1.0, dim)
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    inverse_mean_resultant_length(jnp.asarray([1.5]), 3)
  with pytest.raises(ValueError, match="unit norm"):
    VonMisesFisher(jnp.asarray([1.0, 1.0, 0.0]), 1.0)
  with pytest.raises(ValueError, match="concentration"):
    VonMisesFisher(jnp.asarray([1.0, 0.0, 0.0]), -1.0)
  with pytest.raises(ValueError, match="broadcast"):
    VonMisesFisher(jnp.eye(3), jnp.ones(2))
  with pytest.raises(ValueError, match="int >= 2"):
    VonMisesFisher(jnp.asarray([1.0]), 1.0)
  with pytest.raises(ValueError, match="last axis"):
    VonMisesFisher(jnp.asarray(1.0), 1.0)
  with pytest.raises(ValueError, match="last axis"):
    VonMisesFisher(jnp.asarray([1.0, 0.0, 0.0]), 1.0).log_prob(jnp.ones((4, 2)))
  # Under jit nothing can be checked: a negative kappa gives NaN.
  assert np.isnan(jax.jit(lambda k: vmf_log_normalizer(k, 3))(jnp.asarray([-1.0]))[0])


# ----------------------------------------------------------------------------
# The distribution.


def _unit(x):
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("kappa", [0.0, 0.3, 5.0, 80.0, 3000.0])
def test_log_prob_integrates_to_one(kappa):
  # d = 2: over the angle; d = 3: over w = mu.x with the ring's length 2 pi.
  theta = np.linspace(-np.pi, np.pi, 20001)
  circle = np.stack([np.cos(theta), np.sin(theta)], -1)
  density = np.exp(VonMisesFisher(jnp.asarray([1.0, 0.0]), kappa).log_prob(circle))
  assert np.trapezoid(density, theta) == pytest.approx(1.0, rel=1e-9)
  # Nodes clustered at w = 1, where the density concentrates for large kappa.
  s = np.linspace(0, 1, 20001)
  w = 1 - 2 * s**3
  points = np.stack([np.sqrt(1 - w * w), np.zeros_like(w), w], -1)
  density = np.exp(VonMisesFisher(jnp.asarray([0.0, 0.0, 1.0]), kappa).log_prob(points))
  assert np.trapezoid(2 * np.pi * density * 6 * s**2, s) == pytest.approx(1.0, rel=1e-8)


def test_log_prob_is_accurate_at_the_mode_and_has_the_textbook_gradient():
  mu = jnp.asarray([0.0, 0.6, 0.8])
  for kappa in (1e-3, 1.0, 1e6):
    # At d = 3 the density at the mode is kappa / (2 pi (1 - e^{-2 kappa})).
    exact = math.log(kappa / (2 * math.pi * -math.expm1(-2 * kappa)))
    assert float(VonMisesFisher(mu, kappa).log_prob(mu)) == pytest.approx(exact, rel=1e-15)
  x = jnp.asarray(_unit([0.3, -0.2, 0.9]))
  gradient = jax.grad(VonMisesFisher(mu, 7.0).log_prob)(x)
  tangent = gradient - jnp.dot(gradient, x) * x
  expected = 7.0 * (mu - jnp.dot(mu, x) * x)
  np.testing.assert_allclose(tangent, expected, rtol=1e-13)


@pytest.mark.parametrize("dim", [2, 3, 16, 1024])
def test_entropy_and_kl_against_mpmath(dim):
  kappa = np.array([0.0, 1e-6, 0.7, 12.0, 400.0])
  mu = _unit(np.eye(dim)[0] + 0.5)
  dist = VonMisesFisher(jnp.asarray(np.broadcast_to(mu, (5, dim))), jnp.asarray(kappa))
  kl, entropy = np.asarray(dist.kl_divergence()), np.asarray(dist.entropy())
  assert kl[0] == 0.0 and entropy[0] == pytest.approx(log_sphere_area(dim), rel=1e-15)
  with mpmath.workdps(40):
    v = mpmath.mpf(dim) / 2 - 1
    for k, kl_k, h_k in zip(kappa[1:], kl[1:], entropy[1:]):
      km = mpmath.mpf(float(k))
      log_c, a = reference(dim, float(k))
      # KL = kappa A_d - log(Gamma(v+1) (2/kappa)^v I_v(kappa)) ~ kappa^2 / (2d), relative.
      exact = km * a - mpmath.log(mpmath.gamma(v + 1) * (2 / km) ** v * mpmath.besseli(v, km))
      assert kl_k == pytest.approx(float(exact), rel=1e-11 if dim < 1000 else 1e-9)
      assert h_k == pytest.approx(-(log_c + k * a), rel=1e-12)


@pytest.mark.parametrize("dim, dtype", [(2, np.float64), (16, np.float32)])
def test_sample_mean_resultant_length(dim, dtype):
  kappa = np.array([0.0, 0.5, 4.0, 60.0, 5e4])
  mu = _unit(np.random.default_rng(dim).standard_normal((5, dim)))
  dist = VonMisesFisher(jnp.asarray(mu, dtype), jnp.asarray(kappa, dtype))
  n = 20000
  samples = jax.jit(lambda key: dist.sample(key, (n,)))(jax.random.PRNGKey(0))
  assert samples.shape == (n, 5, dim) and samples.dtype == dtype
  norms = np.linalg.norm(np.asarray(samples, np.float64), axis=-1)
  assert np.max(np.abs(norms - 1)) <= 20 * float(jnp.finfo(dtype).eps)
  w = np.einsum("nbd,bd->nb", np.asarray(samples, np.float64), mu)
  expected = np.asarray(mean_resultant_length(jnp.asarray(kappa), dim))
  # The mean of w = mu.x matches A_d to 5 standard errors.
  spread = np.sqrt(w.var(0) / n)
  assert np.all(np.abs(w.mean(0) - expected) <= 5 * spread + 10 * float(jnp.finfo(dtype).eps))
  # So does the sample's mean resultant length ||mean(x)|| (its bias is (d-1) / (2 n A_d)).
  resultant = np.linalg.norm(np.asarray(samples, np.float64).mean(0), axis=-1)
  bias = (dim - 1) / (2 * n * np.maximum(expected, 1e-3))
  assert np.all(np.abs(resultant[2:] - expected[2:]) <= 5 * spread[2:] + 2 * bias[2:])
  # Monte Carlo entropy: -E[log p(x)].
  log_p = np.asarray(dist.log_prob(samples), np.float64)
  stderr = log_p.std(0) / np.sqrt(n)
  entropy = np.asarray(dist.entropy(), np.float64)
  # (+1e-9: numpy sums along axis 0 sequentially.)
  assert np.all(np.abs(-log_p.mean(0) - entropy) <= 5 * stderr + 1e-9
                + 50 * float(jnp.finfo(dtype).eps))


def test_sample_marginal_at_d3_passes_ks_test():
  # At d = 3, w = mu.x has density kappa e^{kappa w} / (2 sinh kappa) on [-1, 1].
  kappa = np.array([1e-4, 0.8, 9.0, 150.0])
  mu = _unit([1.0, -2.0, 0.5])
  dist = VonMisesFisher(jnp.asarray(np.broadcast_to(mu, (4, 3))), jnp.asarray(kappa))
  samples = np.asarray(dist.sample(jax.random.PRNGKey(11), (20000,)))
  tangent = _unit(np.cross(mu, [0.0, 0.0, 1.0]))
  for j, k in enumerate(kappa):
    w = samples[:, j] @ mu

    def cdf(w, k=k):
      return np.expm1(k * (w + 1)) / np.expm1(2 * k)

    assert scipy.stats.kstest(w, cdf).pvalue > 1e-3
    # The direction around mu is uniform: the component along a fixed tangent averages 0.
    along = samples[:, j] @ tangent
    assert abs(along.mean()) <= 5 * along.std() / np.sqrt(len(along)) + 1e-12


@pytest.mark.parametrize("dim", [3, 4, 5])
def test_householder_step_keeps_unit_norm_at_large_sample_counts(dim):
  # XLA's CPU backend fuses u * sum(u * x, -1, keepdims=True) wrongly in float32 at
  # (16384, 3) and (20000, 3) (jax 0.10.2); the reflection uses contractions instead.
  mu = jnp.asarray(_unit(np.arange(1.0, dim + 1.0)), jnp.float32)
  reflect = jax.jit(von_mises_fisher._reflect)
  for rows in (16384, 20000, 32768, 50000):
    y = jnp.asarray(_unit(np.random.default_rng(rows).standard_normal((rows, dim))), jnp.float32)
    x = np.asarray(reflect(y, mu), np.float64)
    assert np.max(np.abs(np.linalg.norm(x, axis=-1) - 1)) <= 1e-6, rows
    # Q is the reflection: Q e_1 = mu and it preserves inner products.
    np.testing.assert_allclose(x @ np.asarray(mu, np.float64), np.asarray(y)[:, 0], atol=1e-6)
  if dim != 3:
    return
  # End to end through the sampler, at the first size that tripped XLA.
  dist = VonMisesFisher(mu, 3.0)
  samples = jax.jit(lambda key: dist.sample(key, (16384,)))(jax.random.PRNGKey(0))
  norms = np.linalg.norm(np.asarray(samples, np.float64), axis=-1)
  assert np.max(np.abs(norms - 1)) <= 1e-6
  np.testing.assert_allclose(jax.jit(dist.log_prob)(samples), dist.log_prob(np.asarray(samples)),
                             rtol=1e-5, atol=1e-5)


def test_mean_batched_shapes_dtype_and_transformations():
  mu = jnp.asarray(_unit(np.random.default_rng(0).standard_normal((4, 1, 3))), jnp.float32)
  kappa = jnp.asarray([0.5, 2.0, 30.0], jnp.float32)
  dist = VonMisesFisher(mu, kappa)
  assert dist.batch_shape == (4, 3) and dist.event_shape == (3,) and dist.dtype == jnp.float32
  mean = dist.mean()
  assert mean.shape == (4, 3, 3) and mean.dtype == jnp.float32
  np.testing.assert_allclose(np.linalg.norm(mean, axis=-1),
                             np.broadcast_to(mean_resultant_length(kappa, 3), (4, 3)), rtol=1e-6)
  for method in ("entropy", "kl_divergence", "log_normalizer", "mean_resultant_length"):
    out = getattr(dist, method)()
    assert out.shape == (4, 3) and out.dtype == jnp.float32, method
  x = dist.sample(jax.random.PRNGKey(0), (2,))
  assert x.shape == (2, 4, 3, 3) and dist.log_prob(x).shape == (2, 4, 3)
  # A pytree: through jit and vmap.
  jitted = jax.jit(lambda d, x: d.log_prob(x))(dist, x)
  np.testing.assert_allclose(jitted, dist.log_prob(x), rtol=1e-6)
  flat = VonMisesFisher(mu[:, 0], jnp.full((4,), 2.0, jnp.float32))
  mapped = jax.vmap(lambda d: d.entropy())(flat)
  np.testing.assert_allclose(mapped, flat.entropy(), rtol=1e-6)
  # Gradients with respect to the concentration are finite everywhere, 0 included.
  grad = jax.grad(lambda k: VonMisesFisher(mu[0, 0], k).log_prob(mu[0, 0]))(jnp.float32(0.0))
  assert np.isfinite(grad)
