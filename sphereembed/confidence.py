"""Calibrated confidence from spherical embeddings: vMF class posteriors and temperature scaling.

A model with unit embeddings, class centroids ``c_k`` and a concentration
``kappa`` defines class-conditional von Mises-Fisher densities
``vMF(x; c_k, kappa)``. Bayes' rule turns them into a class posterior whose
maximum is a confidence in ``[0, 1]``:

``p(k | x) = pi_k C_d(kappa_k) exp(kappa_k c_k . x) / sum_j (same for j)``.

With one concentration per sample (the kappa head's output) the normalisers
``C_d`` cancel and the posterior is ``softmax(kappa(x) * cos(x, c_k))``: kappa
is the inverse temperature of a cosine classifier. With one concentration
per class (fitted to the training data) they do not cancel.

A raw kappa ranges over ``[0, 1000]``; the posterior maps it to ``[0, 1]`` but
need not be calibrated. :func:`fit_temperature` fits one scalar on held-out
data (Guo et al. 2017) so that ``softmax(logits / T)`` is.
:func:`fit_isotonic` fits a monotone map of the top-class confidence itself
(Zadrozny & Elkan 2002): it keeps the ranking (so selective accuracy and OOD
detection are unchanged up to ties) and fixes miscalibration that no single
temperature can, e.g. a few confidently wrong samples whose log loss drives
the NLL-optimal temperature up and leaves the many correct ones
under-confident.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from sphereembed.distributions.von_mises_fisher import _log_mode_density
from sphereembed.losses import checks

__all__ = ["IsotonicCalibrator", "fit_isotonic", "fit_temperature", "vmf_class_log_posterior"]


def vmf_class_log_posterior(
    embeddings: jax.Array,
    centroids: jax.Array,
    kappa: jax.Array,
    *,
    log_priors: jax.Array | None = None,
) -> jax.Array:
  """Log class posteriors of vMF class-conditionals: ``(B, K)``, each row a log-softmax.

  Args:
    embeddings: ``(B, d)`` unit vectors.
    centroids: ``(K, d)`` unit class mean directions.
    kappa: non-negative concentrations: ``(B,)`` per sample (the normalisers
      cancel) or ``(K,)`` per class (they do not). A ``(B,)`` array with
      ``B == K`` is read as per sample.
    log_priors: optional ``(K,)`` log class priors (default uniform).

  Returns:
    ``(B, K)`` log posteriors; ``exp`` of a row sums to 1, its max is the
    confidence and its argmax the predicted class.

  The logits are formed so that none exceeds 0 after the row shift
  (per sample: ``kappa (cos - max cos)``; per class: ``log C_d(kappa) +
  kappa``, the log density at the mode, minus ``kappa (1 - cos)``), so the
  result is finite, and the same eagerly and under ``jit``, for every finite
  ``kappa >= 0`` up to the dtype's maximum.

  Raises:
    ValueError: on mismatched shapes or non-floating (e.g. complex) arrays
      and, when the values are concrete, NaN or infinite inputs, negative
      ``kappa`` or NaN / ``+inf`` log priors.

  Example:
    >>> import jax.numpy as jnp
    >>> c = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> x = jnp.array([[0.8, 0.6]])
    >>> p = jnp.exp(vmf_class_log_posterior(x, c, jnp.array([10.0])))
    >>> print(f"{p[0, 0]:.4f}")  # softmax(10 * (0.8, 0.6))
    0.8808
  """
  embeddings, centroids, kappa = jnp.asarray(embeddings), jnp.asarray(centroids), jnp.asarray(kappa)
  for name, array in (("embeddings", embeddings), ("centroids", centroids), ("kappa", kappa)):
    if not jnp.issubdtype(array.dtype, jnp.floating):
      raise ValueError(f"{name} must have a real floating dtype, got {array.dtype}.")
  if embeddings.ndim != 2 or centroids.ndim != 2 or embeddings.shape[1] != centroids.shape[1]:
    raise ValueError(f"embeddings (B, d) and centroids (K, d) must share d, got "
                     f"{embeddings.shape} and {centroids.shape}.")
  batch, num_classes = embeddings.shape[0], centroids.shape[0]
  if kappa.shape not in ((batch,), (num_classes,)):
    raise ValueError(f"kappa must have shape ({batch},) (per sample) or ({num_classes},) "
                     f"(per class), got {kappa.shape}.")
  for name, array in (("embeddings", embeddings), ("centroids", centroids), ("kappa", kappa)):
    values = checks.concrete_value(array)
    if values is not None and not np.all(np.isfinite(values)):
      raise ValueError(f"{name} contain NaN or infinite values.")
  values = checks.concrete_value(kappa)
  if values is not None and np.any(values < 0):
    raise ValueError("kappa must be non-negative.")
  if log_priors is not None:
    log_priors = jnp.asarray(log_priors)
    if log_priors.shape != (num_classes,):
      raise ValueError(f"log_priors must have shape ({num_classes},), got {log_priors.shape}.")
    if not jnp.issubdtype(log_priors.dtype, jnp.floating):
      raise ValueError(f"log_priors must have a real floating dtype, got {log_priors.dtype}.")
    values = checks.concrete_value(log_priors)
    if values is not None and (np.any(np.isnan(values)) or np.any(values == np.inf)):
      raise ValueError("log_priors must not contain NaN or +inf.")
  cosine = jnp.matmul(embeddings, centroids.T, precision=jax.lax.Precision.HIGHEST)
  if kappa.shape == (batch,):
    # The normalisers cancel. Shifted by each row's largest cosine before the
    # product (kappa >= 0), so that no logit is larger than 0 whatever kappa is.
    top = jax.lax.stop_gradient(jnp.max(cosine, axis=1, keepdims=True))
    logits = kappa[:, None] * (cosine - top)
  else:
    # log C_d(kappa) + kappa cos = (log C_d(kappa) + kappa) - kappa (1 - cos):
    # the log density at the mode, finite at any kappa, minus a non-negative
    # term, rather than two numbers of size kappa that cancel.
    log_mode = _log_mode_density(0.5 * embeddings.shape[1] - 1.0, kappa)
    logits = log_mode[None, :] - kappa[None, :] * (1.0 - cosine)
  if log_priors is not None:
    logits = logits + log_priors[None, :]
  # log-softmax, shifted by the row maximum (written out: XLA may not
  # reassociate these terms).
  shift = jax.lax.stop_gradient(jnp.max(logits, axis=1, keepdims=True))
  shift = jnp.where(jnp.isfinite(shift), shift, 0.0)
  shifted = logits - shift
  return shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=1, keepdims=True))


def fit_temperature(logits, labels, *, bounds: tuple[float, float] = (1e-2, 1e2)) -> float:
  """The temperature ``T`` minimising the NLL of ``softmax(logits / T)`` on held-out data.

  The NLL is convex in ``1 / T``, so its derivative is monotone there and a
  bisection on it finds the minimiser to float64 precision (60 halvings of
  ``log(1/T)``); no learning rate to tune. When the minimum lies outside
  ``bounds`` the nearest bound is returned.

  Args:
    logits: ``(N, K)`` held-out logits (e.g. log posteriors).
    labels: ``(N,)`` int true classes.
    bounds: the search interval for ``T``.

  Returns:
    ``T`` as a Python float; calibrated probabilities are
    ``softmax(logits / T)``.

  Raises:
    ValueError: on mismatched shapes, non-finite or complex logits, labels
      out of range, or ``bounds`` that are not two finite numbers
      ``0 < low < high``.

  References:
    Guo, Pleiss, Sun & Weinberger, "On Calibration of Modern Neural
    Networks", ICML 2017.

  Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> labels = rng.integers(0, 3, 2000)
    >>> true_logits = rng.normal(size=(2000, 3)) + 2.0 * np.eye(3)[labels]
    >>> sampled = np.array([rng.choice(3, p=np.exp(l) / np.exp(l).sum()) for l in true_logits])
    >>> temperature = fit_temperature(3.0 * true_logits, sampled)  # over-confident by 3
    >>> print(abs(temperature - 3.0) < 0.2)
    True
  """
  low_bound, high_bound = _temperature_bounds(bounds)
  logits = np.asarray(logits)
  if np.iscomplexobj(logits) or not np.issubdtype(logits.dtype, np.number):
    raise ValueError(f"logits must be real numbers, got dtype {logits.dtype}.")
  logits = logits.astype(np.float64)
  labels = np.asarray(labels)
  if logits.ndim != 2 or labels.shape != (logits.shape[0],) or logits.shape[0] == 0:
    raise ValueError(f"logits must be (N, K) and labels (N,), got {logits.shape} and {labels.shape}.")
  if not np.all(np.isfinite(logits)):
    raise ValueError("logits contain NaN or infinite values.")
  if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= logits.shape[1]:
    raise ValueError(f"labels must be int class ids in [0, {logits.shape[1]}).")
  true_logit = logits[np.arange(len(labels)), labels]

  def slope(log_beta):
    # d NLL / d beta at beta = 1 / T: E_softmax[logit] - logit_true, averaged.
    scaled = np.exp(log_beta) * logits
    p = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return float(np.mean(np.sum(p * logits, axis=1) - true_logit))

  low, high = -np.log(high_bound), -np.log(low_bound)
  if slope(low) >= 0:
    return high_bound
  if slope(high) <= 0:
    return low_bound
  for _ in range(60):
    middle = 0.5 * (low + high)
    low, high = (middle, high) if slope(middle) < 0 else (low, middle)
  return float(np.exp(-0.5 * (low + high)))


def _temperature_bounds(bounds) -> tuple[float, float]:
  """``(low, high)`` with ``0 < low < high`` finite, else ``ValueError``."""
  try:
    low, high = (float(b) for b in bounds)
  except (TypeError, ValueError):
    raise ValueError(f"bounds must be two numbers (low, high), got {bounds!r}.") from None
  if not (math.isfinite(low) and math.isfinite(high) and 0 < low < high):
    raise ValueError(f"bounds must satisfy 0 < low < high (finite), got {bounds!r}.")
  return low, high


@dataclasses.dataclass(frozen=True)
class IsotonicCalibrator:
  """A fitted non-decreasing map from raw to calibrated confidence.

  Piecewise linear through ``(thresholds, values)`` and constant beyond the
  ends, as scikit-learn's ``IsotonicRegression(out_of_bounds="clip")``
  predicts; stored as two arrays so it is cheap to keep in ``metrics.json``
  or a checkpoint.

  Attributes:
    thresholds: increasing raw confidences.
    values: the calibrated confidences there, non-decreasing, in ``[0, 1]``.
  """

  thresholds: np.ndarray
  values: np.ndarray

  def __call__(self, confidences) -> np.ndarray:
    """Calibrated confidences for raw ones (any shape)."""
    return np.interp(np.asarray(confidences, np.float64), self.thresholds, self.values)


def fit_isotonic(confidences, correct) -> IsotonicCalibrator:
  """Isotonic regression of correctness on the raw top-class confidence (held-out data).

  Args:
    confidences: ``(N,)`` raw confidences (any monotone score, e.g. the max
      class probability) on a held-out split.
    correct: ``(N,)`` whether the prediction was right.

  Returns:
    The :class:`IsotonicCalibrator`; ``calibrator(test_confidences)`` is the
    estimated probability of being right, so its ECE on data like the
    held-out split is close to 0.

  Raises:
    ValueError: on mismatched or empty inputs, non-finite or complex
      confidences, or ``correct`` values other than 0/1 (and False/True).

  References:
    Zadrozny & Elkan, "Transforming classifier scores into accurate
    multiclass probability estimates", KDD 2002.

  Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> raw = rng.uniform(0.5, 1.0, 5000)
    >>> correct = rng.uniform(size=5000) < raw ** 4  # over-confident
    >>> calibrator = fit_isotonic(raw, correct)
    >>> # Isotonic regression matches the mean confidence to the accuracy.
    >>> print(f"{raw.mean():.3f} -> {calibrator(raw).mean():.3f}, accuracy {correct.mean():.3f}")
    0.749 -> 0.382, accuracy 0.382
  """
  # scikit-learn is the reference implementation of the pool-adjacent-violators fit.
  from sklearn.isotonic import IsotonicRegression  # pylint: disable=import-outside-toplevel

  confidences = np.asarray(confidences)
  correct = np.asarray(correct)
  if confidences.ndim != 1 or correct.shape != confidences.shape or confidences.size == 0:
    raise ValueError(f"confidences and correct must be equal-length 1-D arrays, got "
                     f"{confidences.shape} and {correct.shape}.")
  for name, array in (("confidences", confidences), ("correct", correct)):
    if np.iscomplexobj(array) or not (np.issubdtype(array.dtype, np.number)
                                      or array.dtype == np.bool_):
      raise ValueError(f"{name} must be real numbers, got dtype {array.dtype}.")
  confidences = confidences.astype(np.float64)
  if not np.all(np.isfinite(confidences)):
    raise ValueError("confidences contain NaN or infinite values.")
  if not np.all((correct == 0) | (correct == 1)):
    raise ValueError("correct must hold bools or the values 0 and 1.")
  regression = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
  regression.fit(confidences, correct.astype(np.float64))
  return IsotonicCalibrator(np.asarray(regression.X_thresholds_, np.float64),
                            np.asarray(regression.y_thresholds_, np.float64))
