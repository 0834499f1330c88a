"""vMF class posteriors against Bayes' rule with mpmath densities; temperature fitting."""

import math

import jax
import mpmath
import numpy as np
import pytest

from sphereembed.confidence import fit_isotonic, fit_temperature, vmf_class_log_posterior


def _unit(rng, n, dim):
  x = rng.normal(size=(n, dim))
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def _log_vmf(x, mu, kappa):
  dim = len(x)
  with mpmath.workdps(40):
    nu = mpmath.mpf(dim) / 2 - 1
    k = mpmath.mpf(float(kappa))
    log_c = nu * mpmath.log(k) - (mpmath.mpf(dim) / 2) * mpmath.log(2 * mpmath.pi) - mpmath.log(
        mpmath.besseli(nu, k))
    return log_c + k * mpmath.mpf(float(np.dot(x, mu)))


@pytest.mark.parametrize("per_class", [False, True])
def test_posterior_is_bayes_rule(per_class):
  rng = np.random.default_rng(int(per_class))
  dim, num_classes = 5, 4
  x, centroids = _unit(rng, 6, dim), _unit(rng, num_classes, dim)
  kappa = rng.uniform(0.5, 40, num_classes if per_class else 6)
  priors = np.array([0.1, 0.2, 0.3, 0.4])
  got = np.exp(vmf_class_log_posterior(x, centroids, kappa, log_priors=np.log(priors)))
  for i in range(6):
    with mpmath.workdps(40):
      joint = [mpmath.log(priors[k]) + _log_vmf(x[i], centroids[k], kappa[k] if per_class else kappa[i])
               for k in range(num_classes)]
      total = mpmath.log(sum(mpmath.exp(j) for j in joint))
      expected = [float(mpmath.exp(j - total)) for j in joint]
    np.testing.assert_allclose(got[i], expected, rtol=1e-10)


def test_posterior_shapes_jit_and_errors():
  rng = np.random.default_rng(2)
  x, centroids = _unit(rng, 3, 3), _unit(rng, 3, 3)
  kappa = np.array([1.0, 2.0, 3.0])
  # B == K: read as per sample.
  np.testing.assert_allclose(
      vmf_class_log_posterior(x, centroids, kappa),
      jax.nn.log_softmax(kappa[:, None] * (x @ centroids.T), axis=-1), rtol=1e-12)
  np.testing.assert_allclose(jax.jit(vmf_class_log_posterior)(x, centroids, kappa),
                             vmf_class_log_posterior(x, centroids, kappa), rtol=1e-12)
  with pytest.raises(ValueError, match="kappa must have shape"):
    vmf_class_log_posterior(x, centroids, np.ones(5))
  with pytest.raises(ValueError, match="share d"):
    vmf_class_log_posterior(x, centroids[:, :2], kappa)
  with pytest.raises(ValueError, match="log_priors"):
    vmf_class_log_posterior(x, centroids, kappa, log_priors=np.zeros(2))


def test_fit_temperature_recovers_the_scale_and_minimises_the_nll():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 5, 4000)
  logits = rng.normal(size=(4000, 5)) + 1.5 * np.eye(5)[labels]
  probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
  sampled = np.array([rng.choice(5, p=p) for p in probabilities])
  temperature = fit_temperature(0.25 * logits, sampled)
  assert abs(temperature - 0.25) < 0.03

  def nll(t):
    z = 0.25 * logits / t
    return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(4000), sampled]))

  assert nll(temperature) <= min(nll(temperature * 1.001), nll(temperature / 1.001))
  # A minimum outside the bounds returns the bound; a perfect separation wants T -> 0.
  separable = 5.0 * np.eye(3)[np.arange(30) % 3]
  assert fit_temperature(separable, np.arange(30) % 3) == pytest.approx(1e-2)


def test_fit_temperature_rejects_bad_input():
  with pytest.raises(ValueError, match="labels must be int"):
    fit_temperature(np.zeros((2, 3)), np.array([0, 3]))
  with pytest.raises(ValueError, match="NaN"):
    fit_temperature(np.array([[math.nan, 0.0]]), np.array([0]))
  with pytest.raises(ValueError, match="logits must be"):
    fit_temperature(np.zeros(3), np.array([0, 1, 2]))


def test_fit_isotonic_matches_scikit_learn_and_calibrates_held_out_data():
  from sklearn.isotonic import IsotonicRegression
  from sphereembed.evaluation import calibration

  rng = np.random.default_rng(3)
  raw = rng.uniform(0.3, 1.0, 20000)
  correct = rng.uniform(size=raw.size) < raw ** 3  # over-confident raw scores
  fit, held_out = slice(0, 10000), slice(10000, None)
  calibrator = fit_isotonic(raw[fit], correct[fit])
  reference = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(
      raw[fit], correct[fit].astype(float))
  probe = np.concatenate([rng.uniform(0.0, 1.2, 500), raw[held_out][:500]])
  np.testing.assert_allclose(calibrator(probe), reference.predict(probe), atol=1e-12)
  assert np.all(np.diff(calibrator(np.sort(probe))) >= 0)
  before = calibration.expected_calibration_error(raw[held_out], correct[held_out])
  after = calibration.expected_calibration_error(calibrator(raw[held_out]), correct[held_out])
  assert before > 0.15 and after < 0.02, (before, after)


def test_fit_isotonic_rejects_bad_input():
  with pytest.raises(ValueError, match="equal-length"):
    fit_isotonic(np.ones(3), np.ones(2, bool))
  with pytest.raises(ValueError, match="equal-length"):
    fit_isotonic(np.ones((2, 2)), np.ones((2, 2), bool))
  with pytest.raises(ValueError, match="NaN"):
    fit_isotonic(np.array([0.5, math.nan]), np.array([True, False]))
