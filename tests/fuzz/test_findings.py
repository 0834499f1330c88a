"""Regression tests of the first fuzz run's findings, one assertion each, with exact values."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sphereembed import centroids, confidence, distributions, geometry, losses
from sphereembed.evaluation import calibration, verification
from sphereembed.losses import checks


def _unit(n, d, dtype=np.float32, seed=0):
  x = np.random.default_rng(seed).normal(size=(n, d))
  return jnp.asarray((x / np.linalg.norm(x, axis=1, keepdims=True)).astype(dtype))


# ---------------------------------------------------------------------------- hangs


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("dim", [2, 5, 64])
def test_vmf_sample_huge_kappa_returns_the_right_scale(dtype, dim):
  # 1 - w ~ Gamma((d-1)/2) / kappa: E[kappa (1 - w)] = (d-1)/2.
  mu = jnp.zeros(dim, dtype).at[0].set(1)
  for kappa in (1e19, 1e30) + ((1e155, 1e300) if dtype == np.float64 else ()):
    x = distributions.VonMisesFisher(mu, jnp.asarray(kappa, dtype)).sample(
        jax.random.key(1), (4000,))
    assert np.all(np.isfinite(np.asarray(x)))
    one_minus_w = np.asarray(1 - x[:, 0], np.float64)
    # x[:, 0] rounds to 1 in the dtype; the tangent part carries the sample.
    radius_squared = np.sum(np.square(np.asarray(x[:, 1:], np.float64)), axis=1)
    scaled = kappa * radius_squared / 2  # (1 - w^2)/2 ~ 1 - w
    assert abs(np.mean(scaled) / ((dim - 1) / 2) - 1) < 0.1, (kappa, np.mean(scaled))
    assert np.all(one_minus_w >= 0)


def test_vmf_sample_nan_and_inf_kappa_return_under_jit():
  mu = jnp.asarray([1.0, 0.0, 0.0, 0.0], jnp.float32)
  sample = jax.jit(lambda k: distributions.VonMisesFisher(mu, k).sample(jax.random.key(0), (5,)))
  assert sample(jnp.asarray([np.nan, np.inf], jnp.float32)).shape == (5, 2, 4)


def test_vmf_refuses_infinite_kappa():
  with pytest.raises(ValueError, match="finite"):
    distributions.VonMisesFisher(jnp.asarray([1.0, 0.0]), np.inf)
  with pytest.raises(ValueError, match="finite"):
    distributions.vmf_log_normalizer(jnp.asarray([np.inf]), 4)


def test_infinite_argument_limits_under_jit():
  z = jnp.asarray([np.inf], jnp.float32)
  assert float(jax.jit(lambda q: distributions.bessel_iv_ratio(600.0, q))(z)[0]) == 1.0
  assert float(distributions.bessel_iv_ratio(600.0, z)[0]) == 1.0
  assert float(jax.jit(lambda k: distributions.mean_resultant_length(k, 2048))(z)[0]) == 1.0
  assert float(jax.jit(lambda k: distributions.vmf_log_normalizer(k, 7))(z)[0]) == -np.inf


# ---------------------------------------------------------------------------- internal errors


def test_update_centroids_under_jit():
  c = _unit(3, 4)
  x = _unit(6, 4, seed=1)
  y = jnp.asarray([0, 0, 1, 1, 2, 2])
  jitted = jax.jit(lambda c, x, y: centroids.update_centroids(c, x, y, 0.5))(c, x, y)
  np.testing.assert_allclose(jitted, centroids.update_centroids(c, x, y, 0.5), atol=1e-6)
  with pytest.raises(ValueError, match="alpha"):
    jax.jit(lambda c, x, y: centroids.update_centroids(c, x, y, 1.5))(c, x, y)


@pytest.mark.parametrize("loss", [losses.triplet_batch_all, losses.triplet_batch_hard,
                                  losses.triplet_semi_hard, losses.ntxent, losses.contrastive])
def test_empty_batch_is_zero_with_zero_gradient(loss):
  x, y = jnp.zeros((0, 3)), jnp.zeros((0,), jnp.int32)
  assert float(loss(x, y)) == 0.0
  assert jax.grad(loss)(x, y).shape == (0, 3)
  assert float(jax.jit(loss)(x, y)) == 0.0


# ---------------------------------------------------------------------------- magnitudes


def test_geometry_at_large_magnitudes():
  x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
  big = jnp.asarray(x * 1e20)
  expected = np.linalg.norm(x[:, None] - x[None], axis=-1) * 1e20
  np.testing.assert_allclose(geometry.pairwise_distances(big), expected, rtol=1e-5)
  squared = geometry.pairwise_distances(big, metric="squared_euclidean")
  assert np.all(np.isinf(np.asarray(squared)[~np.eye(4, dtype=bool)]))  # true values > 3.4e38
  np.testing.assert_allclose(geometry.paired_distances(big, -big),
                             2e20 * np.linalg.norm(x, axis=1), rtol=1e-5)
  np.testing.assert_allclose(geometry.l2_normalize(big),
                             x / np.linalg.norm(x, axis=1, keepdims=True), rtol=1e-5)
  rotation = np.array([[0.0, 1, 0], [-1, 0, 0], [0, 0, 1]], np.float32)
  np.testing.assert_allclose(geometry.orthogonal_procrustes(big, big @ rotation), rotation,
                             atol=1e-5)


def test_power_of_two_scaling_keeps_moderate_results_bit_for_bit():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32))
  for metric in ("euclidean", "squared_euclidean"):
    np.testing.assert_array_equal(geometry.pairwise_distances(x * 2.0**40, metric=metric),
                                  geometry.pairwise_distances(x, metric=metric)
                                  * (2.0**40 if metric == "euclidean" else 2.0**80))


def test_losses_refuse_embeddings_beyond_the_supported_norm():
  x, y = _unit(6, 3) * 1e30, jnp.asarray([0, 0, 1, 1, 2, 2])
  for loss in (losses.triplet_batch_hard, losses.ntxent, losses.contrastive):
    with pytest.raises(ValueError, match="supported"):
      loss(x, y)
  assert np.isfinite(float(jax.jit(losses.triplet_batch_hard)(x, y)))
  assert checks.max_norm(jnp.float32, 1) == pytest.approx(9.2e18, rel=0.01)


def test_ntxent_tiny_temperature_eager_equals_jit():
  x, y = _unit(6, 4), jnp.asarray([0, 0, 1, 1, 2, 2])
  eager = losses.ntxent(x, y, temperature=1e-30)
  jitted = jax.jit(lambda a: losses.ntxent(a, y, temperature=1e-30))(x)
  assert np.isfinite(float(eager))
  np.testing.assert_allclose(eager, jitted, rtol=1e-5)


@pytest.mark.parametrize("per_sample", [True, False])
def test_vmf_posterior_huge_kappa_eager_equals_jit(per_sample):
  x, c = _unit(6, 4), _unit(3, 4, seed=2)
  kappa = jnp.full((6,) if per_sample else (3,), 1e30, jnp.float32)
  eager = confidence.vmf_class_log_posterior(x, c, kappa)
  jitted = jax.jit(confidence.vmf_class_log_posterior)(x, c, kappa)
  assert np.all(np.isfinite(np.asarray(eager)))
  np.testing.assert_allclose(eager, jitted, rtol=1e-5)


def test_gaussian_heads_clamp_log_sigma():
  c = _unit(3, 4)
  low = jnp.full((3,), -100.0, jnp.float32)
  loss = losses.gaussian_nll(c, low, jnp.arange(3), c)  # on the centroid
  assert np.isfinite(float(loss))
  grad = jax.grad(losses.gaussian_nll)(c, low, jnp.arange(3), c)
  assert np.all(np.isfinite(np.asarray(grad)))
  assert np.isfinite(float(losses.kl_to_standard_normal(jnp.zeros(2), jnp.full(2, 100.0))))
  z = losses.sample_mixture(jax.random.key(0), jnp.zeros((1, 2)), jnp.full((1, 2), 100.0), 4)
  assert np.all(np.isfinite(np.asarray(z)))
  # Inside the range nothing changes.
  assert float(losses.kl_to_standard_normal(jnp.zeros(1), jnp.full(1, 19.0))) == pytest.approx(
      0.5 * (np.expm1(38.0) - 38.0), rel=1e-6)


# ---------------------------------------------------------------------------- gradients


def test_inverse_mean_resultant_length_gradient_is_finite_and_implicit():
  for r, dim in ((0.999999, 1024), (0.5, 3), (0.3, 100)):
    g = jax.grad(lambda q: distributions.inverse_mean_resultant_length(q, dim))(
        jnp.asarray(r, jnp.float64))
    kappa = distributions.inverse_mean_resultant_length(jnp.asarray(r, jnp.float64), dim)
    slope = jax.grad(lambda k: distributions.mean_resultant_length(k, dim))(kappa)
    assert np.isfinite(float(g))
    assert float(g) == pytest.approx(1 / float(slope), rel=1e-3)


def test_procrustes_gradient_at_zero_is_zero():
  x = _unit(4, 3)
  grad = jax.grad(lambda a: jnp.sum(geometry.orthogonal_procrustes(a, x)))(jnp.zeros((4, 3)))
  np.testing.assert_array_equal(grad, 0.0)


def test_eager_grad_runs_the_value_checks():
  x, y = _unit(4, 3), jnp.asarray([0, 0, 1, 1])
  with pytest.raises(ValueError, match="NaN"):
    jax.grad(losses.contrastive)(x.at[0, 0].set(jnp.nan), y)
  with pytest.raises(ValueError, match="NaN"):
    jax.grad(losses.triplet_batch_hard)(x.at[0, 0].set(jnp.nan), y)


# ---------------------------------------------------------------------------- hyper-parameters


@pytest.mark.parametrize("margin", [np.nan, np.inf, 1j])
@pytest.mark.parametrize("loss", [losses.triplet_batch_all, losses.triplet_batch_hard,
                                  losses.triplet_semi_hard, losses.contrastive])
def test_margin_must_be_a_finite_real(loss, margin):
  x, y = _unit(4, 3), jnp.asarray([0, 0, 1, 1])
  with pytest.raises(ValueError, match="margin"):
    loss(x, y, margin=margin)
  with pytest.raises(ValueError, match="margin"):
    jax.jit(lambda a: loss(a, y, margin=margin))(x)


def test_other_hyper_parameters():
  x, y = _unit(4, 3), jnp.asarray([0, 0, 1, 1])
  with pytest.raises(ValueError, match="negative_weight"):
    losses.ncl(x, y, x[:2], negative_weight=np.nan)
  for kwargs in ({"every": 0}, {"decay": -0.5}, {"base": np.nan}):
    with pytest.raises(ValueError):
      centroids.ema_alpha(10, **kwargs)
  with pytest.raises(ValueError, match="positive integers"):
    centroids.init_centroids(jax.random.key(0), 2.5, 2)
  for bounds in ((10.0, 1.0), (-1.0, 1.0), (0.0, np.inf)):
    with pytest.raises(ValueError, match="bounds"):
      confidence.fit_temperature(np.eye(3), np.arange(3), bounds=bounds)
  with pytest.raises(ValueError, match="correct"):
    confidence.fit_isotonic([0.1, 0.5], [2, 0])
  with pytest.raises(ValueError, match="threshold"):
    verification.threshold_metrics([0.1, 0.2], [1, 0], np.nan)
  with pytest.raises(ValueError, match="threshold"):
    verification.EnrolmentGallery(threshold=np.nan)


def test_complex_and_float_inputs_are_refused():
  with pytest.raises(ValueError, match="real"):
    calibration.expected_calibration_error(np.array([0.5 + 1j, 0.2]), [1, 0])
  with pytest.raises(ValueError, match="real"):
    distributions.vmf_log_normalizer(jnp.asarray([1 + 1j]), 3)
  with pytest.raises(ValueError, match="real"):
    distributions.log_bessel_ive(1.0, jnp.asarray([1 + 1j]))
  with pytest.raises(ValueError, match="real"):
    geometry.l2_normalize(jnp.asarray([1 + 1j]))
  with pytest.raises(ValueError, match="integer"):
    losses.validate_labels(np.array([0.5, 1.0]))
  with pytest.raises(ValueError, match="integer"):
    losses.validate_labels(np.array([np.nan, 1.0]))
  with pytest.raises(ValueError, match="non-negative"):
    confidence.vmf_class_log_posterior(_unit(2, 3), _unit(2, 3), -jnp.ones(2))
