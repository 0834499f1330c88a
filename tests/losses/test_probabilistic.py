"""Tests of the confidence losses against textbook densities (mpmath for the vMF normaliser)."""

import math

import chex
import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest

from sphereembed.losses import gaussian_nll, vmf_nll
from tests.references import jit_fast_compile, numeric_grad

TOLERANCES = {np.float32: dict(rtol=2e-5, atol=2e-5), np.float64: dict(rtol=1e-11, atol=1e-11)}

_vmf = jit_fast_compile(vmf_nll, static_argnames=("embedding_gradient",))
_gauss = jit_fast_compile(gaussian_nll, static_argnames=("embedding_gradient",))


def _unit(rng, n, dim, dtype):
  x = rng.normal(size=(n, dim))
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(dtype)


def _ref_log_vmf(x, mu, kappa):
  """log vMF(x; mu, kappa) with the normaliser from mpmath's Bessel function."""
  dim = len(x)
  cosine = float(np.dot(np.asarray(x, np.float64), np.asarray(mu, np.float64)))
  if kappa == 0:
    log_area = math.log(2) + (dim / 2) * math.log(math.pi) - math.lgamma(dim / 2)
    return -log_area
  with mpmath.workdps(40):
    k = mpmath.mpf(float(kappa))
    nu = mpmath.mpf(dim) / 2 - 1
    log_c = nu * mpmath.log(k) - (mpmath.mpf(dim) / 2) * mpmath.log(2 * mpmath.pi) - mpmath.log(
        mpmath.besseli(nu, k))
    return float(log_c + k * mpmath.mpf(cosine))


def _ref_vmf_nll(x, kappa, labels, centroids, weights=None):
  weights = np.ones(len(x)) if weights is None else np.asarray(weights, np.float64)
  terms = [-_ref_log_vmf(x[i], centroids[labels[i]], kappa[i]) for i in range(len(x))]
  return float(np.sum(weights * np.array(terms)) / np.sum(weights))


def _ref_gaussian_nll(x, log_sigma, labels, centroids):
  total = 0.0
  for i in range(len(x)):
    dim = x.shape[1]
    s = np.broadcast_to(np.exp(np.asarray(log_sigma[i], np.float64)), (dim,))
    for j in range(dim):
      r = float(x[i, j]) - float(centroids[labels[i], j])
      total += r * r / (2 * s[j] ** 2) + math.log(s[j]) + 0.5 * math.log(2 * math.pi)
  return total / len(x)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("dim", [2, 3, 16, 128])
def test_vmf_nll_matches_mpmath(dtype, dim):
  rng = np.random.default_rng(dim)
  x, centroids = _unit(rng, 6, dim, dtype), _unit(rng, 4, dim, dtype)
  labels = rng.integers(0, 4, 6).astype(np.int32)
  kappa = np.array([0.0, 1e-3, 0.7, 5.0, 60.0, 900.0], dtype)
  weights = rng.uniform(0.5, 2.0, 6).astype(dtype)
  got = _vmf(x, kappa, labels, centroids, weights=weights)
  assert got.dtype == dtype
  chex.assert_trees_all_close(got, np.asarray(_ref_vmf_nll(x, kappa, labels, centroids, weights),
                                              dtype), **TOLERANCES[dtype])


def test_vmf_nll_gradients():
  rng = np.random.default_rng(0)
  x, centroids = _unit(rng, 5, 4, np.float64), _unit(rng, 3, 4, np.float64)
  labels = np.array([0, 1, 2, 0, 1], np.int32)
  kappa = np.array([0.5, 2.0, 10.0, 0.0, 150.0])
  gx, gk, gc = jax.jit(jax.grad(vmf_nll, argnums=(0, 1, 3)))(x, kappa, labels, centroids)
  # Exact gradients: d/dx = -kappa c_y / B, d/dc = 0 (stop_gradient), and
  # d/dkappa equals finite differences of the reference.
  np.testing.assert_allclose(gx, -kappa[:, None] * centroids[labels] / 5, rtol=1e-12)
  np.testing.assert_array_equal(gc, 0)
  positive = kappa > 0
  fd = numeric_grad(lambda k: _vmf(x, k, labels, centroids), np.where(positive, kappa, 1.0),
                    eps=1e-6)
  np.testing.assert_allclose(gk[positive], fd[positive], rtol=1e-6)
  # At kappa = 0 the derivative of -log C_d is A_d(0) = 0, leaving -cos / B.
  np.testing.assert_allclose(gk[3], -np.dot(x[3], centroids[0]) / 5, rtol=1e-10)
  gx_frozen = jax.jit(jax.grad(vmf_nll), static_argnames="embedding_gradient")(
      x, kappa, labels, centroids, embedding_gradient=False)
  np.testing.assert_array_equal(gx_frozen, 0)


def test_vmf_nll_minimised_where_mean_resultant_length_matches():
  """For one sample the optimal kappa satisfies A_d(kappa) = cos(x, c_y)."""
  dim, cosine = 8, 0.6
  x = np.zeros((1, dim))
  x[0, 0], x[0, 1] = cosine, math.sqrt(1 - cosine**2)
  centroids = np.eye(dim)[:2]
  kappas = np.linspace(0.1, 40, 4000)
  values = jax.jit(jax.vmap(lambda k: vmf_nll(x, k[None], np.array([0]), centroids)))(kappas)
  best = kappas[int(np.argmin(values))]
  with mpmath.workdps(30):
    ratio = float(mpmath.besseli(dim / 2, best) / mpmath.besseli(dim / 2 - 1, best))
  assert abs(ratio - cosine) < 2e-3


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("diagonal", [False, True])
def test_gaussian_nll_matches_reference(dtype, diagonal):
  rng = np.random.default_rng(int(diagonal))
  x, centroids = _unit(rng, 7, 5, dtype), _unit(rng, 3, 5, dtype)
  labels = rng.integers(0, 3, 7).astype(np.int32)
  shape = (7, 5) if diagonal else (7,)
  log_sigma = rng.uniform(-2, 1, shape).astype(dtype)
  got = _gauss(x, log_sigma, labels, centroids)
  assert got.dtype == dtype
  chex.assert_trees_all_close(got, np.asarray(_ref_gaussian_nll(x, log_sigma, labels, centroids),
                                              dtype), **TOLERANCES[dtype])


def test_gaussian_nll_gradients_and_optimum():
  rng = np.random.default_rng(3)
  x, centroids = _unit(rng, 4, 3, np.float64), _unit(rng, 2, 3, np.float64)
  labels = np.array([0, 1, 1, 0], np.int32)
  log_sigma = rng.uniform(-1, 0.5, 4)
  g = jax.grad(gaussian_nll, argnums=(0, 1))(x, log_sigma, labels, centroids)
  np.testing.assert_allclose(
      g[0], numeric_grad(lambda v: _gauss(v, log_sigma, labels, centroids), x), rtol=1e-6)
  np.testing.assert_allclose(
      g[1], numeric_grad(lambda s: _gauss(x, s, labels, centroids), log_sigma), rtol=1e-6)
  # Isotropic optimum: sigma^2 = ||x - c_y||^2 / D, where d/dlog_sigma = 0.
  optimum = 0.5 * np.log(np.sum((x - centroids[labels]) ** 2, axis=1) / 3)
  np.testing.assert_allclose(jax.grad(gaussian_nll, argnums=1)(x, optimum, labels, centroids), 0,
                             atol=1e-12)
  frozen = jax.grad(gaussian_nll)(x, log_sigma, labels, centroids, embedding_gradient=False)
  np.testing.assert_array_equal(frozen, 0)


def test_jit_equals_eager_and_vmap():
  rng = np.random.default_rng(5)
  x = _unit(rng, 6, 3, np.float64)
  centroids = _unit(rng, 2, 3, np.float64)
  labels = np.array([0, 1, 0, 1, 0, 1], np.int32)
  kappa = rng.uniform(0, 20, 6)
  np.testing.assert_allclose(jax.jit(vmf_nll)(x, kappa, labels, centroids),
                             vmf_nll(x, kappa, labels, centroids), rtol=1e-13)
  stacked = jax.jit(jax.vmap(vmf_nll, in_axes=(0, 0, None, None)))(
      np.stack([x, x[::-1]]), np.stack([kappa, kappa[::-1]]), labels, centroids)
  np.testing.assert_allclose(stacked[1], _vmf(x[::-1], kappa[::-1], labels, centroids),
                             rtol=1e-12)
  log_sigma = rng.uniform(-1, 1, 6)
  np.testing.assert_allclose(jax.jit(gaussian_nll)(x, log_sigma, labels, centroids),
                             gaussian_nll(x, log_sigma, labels, centroids), rtol=1e-13)


def test_large_kappa_and_dimension_stay_finite():
  rng = np.random.default_rng(8)
  x = _unit(rng, 3, 1024, np.float32)
  kappa = np.array([1e-6, 3e3, 1e5], np.float32)
  value, grads = jax.jit(jax.value_and_grad(vmf_nll, argnums=(0, 1)))(
      x, kappa, np.zeros(3, np.int32), x[:1])
  assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in grads)


def test_bad_inputs():
  x = jnp.eye(3)[:2]
  c = jnp.eye(3)
  labels = jnp.array([0, 1])
  with pytest.raises(ValueError, match="kappa must have shape"):
    vmf_nll(x, jnp.ones(3), labels, c)
  with pytest.raises(ValueError, match="non-negative"):
    vmf_nll(x, jnp.array([1.0, -1.0]), labels, c)
  with pytest.raises(ValueError, match="NaN"):
    vmf_nll(x, jnp.array([1.0, jnp.nan]), labels, c)
  with pytest.raises(ValueError, match="labels must be < num_classes"):
    vmf_nll(x, jnp.ones(2), jnp.array([0, 3]), c)
  with pytest.raises(ValueError, match="centroids must have shape"):
    vmf_nll(x, jnp.ones(2), labels, jnp.eye(2))
  with pytest.raises(ValueError, match="dtype"):
    vmf_nll(x, jnp.ones(2, jnp.int32), labels, c)
  with pytest.raises(ValueError, match="log_sigma must have shape"):
    gaussian_nll(x, jnp.ones((2, 2)), labels, c)
  with pytest.raises(ValueError, match="multi-hot|int class ids"):
    gaussian_nll(x, jnp.ones(2), jnp.ones((2, 3), jnp.int32), c)
