"""Calibration of confidences: ECE, MCE, reliability diagrams, Brier score and selective risk.

Conventions shared by every function here:

* ``confidences`` are floats in ``[0, 1]`` (the probability the model gives
  its own prediction) and ``correct`` says whether that prediction was right:
  bools, or the numbers 0 and 1.
* ECE, MCE, accuracies, risks and coverages are fractions in ``[0, 1]``, never
  percentages.
* Ranking by confidence resolves ties in expectation: samples with the same
  confidence are taken in a random order, and the value returned is the
  average over those orders. The result therefore never depends on the order
  of the input.

The metrics run on host arrays (NumPy; JAX arrays are accepted) and return
Python floats or NumPy arrays.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from sphereembed.evaluation import checks

__all__ = [
    "ReliabilityDiagram",
    "RiskCoverageCurve",
    "accuracy_at_coverage",
    "aurc",
    "brier_score",
    "excess_aurc",
    "expected_calibration_error",
    "maximum_calibration_error",
    "reliability_diagram",
    "risk_coverage_curve",
]


# ----------------------------------------------------------------------------
# Binned calibration errors.


class ReliabilityDiagram(NamedTuple):
  """Per-bin data of a reliability diagram (``num_bins`` entries, ``edges`` one more).

  Attributes:
    edges: bin edges ``k / num_bins`` for k = 0..num_bins.
    confidence: mean confidence of each bin (NaN for an empty bin).
    accuracy: fraction of correct predictions in each bin (NaN for an empty bin).
    count: number of samples in each bin.
  """
  edges: np.ndarray
  confidence: np.ndarray
  accuracy: np.ndarray
  count: np.ndarray


def reliability_diagram(confidences, correct, num_bins: int = 15) -> ReliabilityDiagram:
  """Bins the confidences into equal-width bins over [0, 1]: the data of a reliability diagram.

  Bin ``b`` holds the confidences ``edges[b] <= c < edges[b + 1]``; the top
  bin is closed, so a confidence of exactly 1.0 lands in it, and 0.0 lands in
  the bottom bin. (Guo et al.'s reference code uses bins open on the left and
  drops confidences of exactly 0.)

  Args:
    confidences: ``(N,)`` confidences in ``[0, 1]``.
    correct: ``(N,)`` bools (or 0/1): whether each prediction was right.
    num_bins: number of equal-width bins.

  Returns:
    A :class:`ReliabilityDiagram`; empty bins have NaN confidence and accuracy.

  Raises:
    ValueError: for empty or mismatched inputs, NaN, confidences outside
      ``[0, 1]``, ``correct`` not 0/1 or ``num_bins < 1``.

  References:
    Guo, Pleiss, Sun & Weinberger, "On Calibration of Modern Neural Networks",
    ICML 2017.

  Example:
    >>> from sphereembed.evaluation.calibration import reliability_diagram
    >>> diagram = reliability_diagram([0.1, 0.2, 0.9, 1.0], [0, 1, 1, 1], num_bins=2)
    >>> print(diagram.count.tolist(), diagram.accuracy.tolist())
    [2, 2] [0.5, 1.0]
  """
  if int(num_bins) != num_bins or num_bins < 1:
    raise ValueError(f"num_bins must be a positive integer, got {num_bins}.")
  num_bins = int(num_bins)
  confidences = checks.unit_interval(confidences, "confidences")
  correct = checks.binary(correct, "correct")
  checks.same_length(confidences=confidences, correct=correct)
  # k / num_bins is the double nearest to the edge (linspace may miss it by an
  # ulp), so that a confidence written as 0.6 starts the bin [0.6, 0.8).
  edges = np.arange(num_bins + 1) / num_bins
  # Bins from the same edges that are returned, so that the data is consistent.
  bins = np.clip(np.searchsorted(edges, confidences, side="right") - 1, 0, num_bins - 1)
  count = np.bincount(bins, minlength=num_bins)
  confidence_sum = np.bincount(bins, weights=confidences, minlength=num_bins)
  correct_sum = np.bincount(bins, weights=correct.astype(np.float64), minlength=num_bins)
  filled = count > 0
  mean_confidence = np.full(num_bins, np.nan)
  accuracy = np.full(num_bins, np.nan)
  mean_confidence[filled] = confidence_sum[filled] / count[filled]
  accuracy[filled] = correct_sum[filled] / count[filled]
  return ReliabilityDiagram(edges, mean_confidence, accuracy, count)


def expected_calibration_error(confidences, correct, num_bins: int = 15) -> float:
  """Expected calibration error: ``sum_b (n_b / N) |accuracy_b - confidence_b|``.

  Equal-width bins over [0, 1] as in :func:`reliability_diagram` (a
  confidence of exactly 1.0 lands in the top bin, 0.0 in the bottom one);
  empty bins contribute nothing.

  Args:
    confidences: ``(N,)`` confidences in ``[0, 1]``.
    correct: ``(N,)`` bools (or 0/1): whether each prediction was right.
    num_bins: number of equal-width bins (15 as in Guo et al.).

  Returns:
    The ECE as a fraction in ``[0, 1]`` (not a percentage).

  Raises:
    ValueError: as :func:`reliability_diagram`.

  References:
    Naeini, Cooper & Hauskrecht, "Obtaining Well Calibrated Probabilities Using
    Bayesian Binning", AAAI 2015; Guo et al., ICML 2017.

  Example:
    >>> from sphereembed.evaluation.calibration import expected_calibration_error
    >>> print(f"{expected_calibration_error([0.9, 0.9, 1.0, 0.6], [1, 0, 1, 1], num_bins=5):.3f}")
    0.300
  """
  diagram = reliability_diagram(confidences, correct, num_bins)
  filled = diagram.count > 0
  gaps = np.abs(diagram.accuracy[filled] - diagram.confidence[filled])
  return float(np.sum(diagram.count[filled] * gaps) / np.sum(diagram.count))


def maximum_calibration_error(confidences, correct, num_bins: int = 15) -> float:
  """Maximum calibration error: the largest ``|accuracy_b - confidence_b|`` over non-empty bins.

  Bins as in :func:`reliability_diagram`.

  Args:
    confidences: ``(N,)`` confidences in ``[0, 1]``.
    correct: ``(N,)`` bools (or 0/1).
    num_bins: number of equal-width bins.

  Returns:
    The MCE as a fraction in ``[0, 1]``.

  Raises:
    ValueError: as :func:`reliability_diagram`.

  References:
    Naeini, Cooper & Hauskrecht, AAAI 2015.

  Example:
    >>> from sphereembed.evaluation.calibration import maximum_calibration_error
    >>> print(f"{maximum_calibration_error([0.9, 0.9, 1.0, 0.6], [1, 0, 1, 1], num_bins=5):.3f}")
    0.400
  """
  diagram = reliability_diagram(confidences, correct, num_bins)
  filled = diagram.count > 0
  return float(np.max(np.abs(diagram.accuracy[filled] - diagram.confidence[filled])))


# ----------------------------------------------------------------------------
# Brier score.


def brier_score(probabilities, labels) -> float:
  """Brier score: mean squared error of predicted probabilities against the one-hot labels.

  * Multi-class, ``probabilities`` of shape ``(N, C)`` and int ``labels`` of
    shape ``(N,)``: ``mean_i sum_c (p_ic - [labels_i == c])^2``, in ``[0, 2]``
    (Brier's original definition, as in Ovadia et al. 2019).
  * Binary, ``probabilities`` of shape ``(N,)`` (the probability of class 1)
    and 0/1 ``labels``: ``mean_i (p_i - labels_i)^2``, in ``[0, 1]``. This is
    half the multi-class score of the two-column ``[1 - p, p]``, and equals
    scikit-learn's ``brier_score_loss``.

  Args:
    probabilities: ``(N, C)`` rows of class probabilities (each in ``[0, 1]``
      and summing to 1 within 1e-3) or ``(N,)`` probabilities of class 1.
    labels: ``(N,)`` int class ids in ``[0, C)`` (or 0/1 for binary input).

  Returns:
    The score as a Python float (lower is better).

  Raises:
    ValueError: for empty or mismatched inputs, NaN, probabilities outside
      ``[0, 1]`` or rows not summing to 1, labels out of range.

  References:
    Brier, "Verification of Forecasts Expressed in Terms of Probability",
    Monthly Weather Review 1950.

  Example:
    >>> from sphereembed.evaluation.calibration import brier_score
    >>> print(f"{brier_score([[0.8, 0.2], [0.4, 0.6]], [0, 0]):.2f}")
    0.40
    >>> print(f"{brier_score([0.2, 0.6], [0, 0]):.2f}")
    0.20
  """
  probabilities = np.asarray(probabilities)
  if probabilities.ndim == 1:
    p = checks.unit_interval(probabilities, "probabilities")
    y = checks.binary(labels, "labels")
    checks.same_length(probabilities=p, labels=y)
    return float(np.mean(np.square(p - y)))
  if probabilities.ndim != 2 or probabilities.size == 0:
    raise ValueError(
        f"probabilities must have shape (N, C) or (N,) and be non-empty, got shape "
        f"{probabilities.shape}.")
  p = checks.real_array(probabilities, "probabilities")
  if np.isnan(p).any():
    raise ValueError("probabilities contains NaN.")
  if p.min() < 0 or p.max() > 1:
    raise ValueError("probabilities must lie in [0, 1].")
  # A loose tolerance: float32 softmax outputs are off by ~1e-6 per class.
  if np.abs(p.sum(axis=1) - 1).max() > 1e-3:
    raise ValueError("Each row of probabilities must sum to 1.")
  y = checks.vector(labels, "labels")
  checks.same_length(probabilities=p, labels=y)
  if (y != np.round(y)).any() or y.min() < 0 or y.max() >= p.shape[1]:
    raise ValueError(f"labels must be integer class ids in [0, {p.shape[1]}).")
  onehot = np.zeros_like(p)
  onehot[np.arange(len(y)), y.astype(np.int64)] = 1.0
  return float(np.mean(np.sum(np.square(p - onehot), axis=1)))


# ----------------------------------------------------------------------------
# Selective prediction: accuracy at coverage and the risk-coverage curve.


def accuracy_at_coverage(confidences, correct, coverage: float) -> float:
  """Accuracy on the ``coverage`` fraction of most confident samples (e.g. ACC@80%).

  The ``n = ceil(coverage * N)`` most confident samples are kept (at least 1;
  ``coverage * N`` is rounded to 9 decimals first, so that 0.07 of 100
  samples keeps 7, although ``0.07 * 100`` is ``7.000000000000001``).

  Ties at the cut-off are resolved in expectation: if the cut falls inside a
  group of equal confidences, the kept part of the group counts with the
  group's mean accuracy, the expected accuracy when ties are ordered at
  random. The result does not depend on the input order.

  Args:
    confidences: ``(N,)`` confidences (any real scores, larger = more
      confident; NaN is rejected).
    correct: ``(N,)`` bools (or 0/1).
    coverage: the kept fraction, in ``(0, 1]``; 1 gives the plain accuracy.

  Returns:
    The accuracy as a fraction in ``[0, 1]``.

  Raises:
    ValueError: for empty or mismatched inputs, NaN, or a coverage outside
      ``(0, 1]``.

  References:
    Geifman & El-Yaniv, "Selective Classification for Deep Neural Networks",
    NeurIPS 2017.

  Example:
    >>> from sphereembed.evaluation.calibration import accuracy_at_coverage
    >>> confidences = [0.9, 0.8, 0.8, 0.3]
    >>> print(f"{accuracy_at_coverage(confidences, [1, 1, 0, 1], 0.5):.2f}")
    0.75
  """
  coverage = checks.check_fraction(coverage, "coverage")
  confidences = checks.vector(confidences, "confidences")
  correct = checks.binary(correct, "correct")
  n = checks.same_length(confidences=confidences, correct=correct)
  kept = checks.count(coverage, n)
  return float(checks.expected_prefix_sums(confidences, correct.astype(np.float64))[kept - 1] / kept)


class RiskCoverageCurve(NamedTuple):
  """The risk-coverage curve, one point per number of kept samples k = 1..N.

  Attributes:
    coverage: ``k / N``.
    risk: error rate of the ``k`` most confident samples (ties in expectation).
    threshold: confidence of the ``k``-th most confident sample: keeping
      ``confidence >= threshold`` reaches that coverage (or more, with ties).
  """
  coverage: np.ndarray
  risk: np.ndarray
  threshold: np.ndarray


def risk_coverage_curve(confidences, correct) -> RiskCoverageCurve:
  """Selective risk against coverage when the most confident samples are kept.

  Point ``k`` keeps the ``k`` most confident samples; its risk is
  ``1 - accuracy_at_coverage(confidences, correct, k / N)`` (ties resolved in
  expectation, see :func:`accuracy_at_coverage`).

  Args:
    confidences: ``(N,)`` confidences (larger = more confident).
    correct: ``(N,)`` bools (or 0/1).

  Returns:
    A :class:`RiskCoverageCurve` with ``N`` points, by increasing coverage.

  Raises:
    ValueError: for empty or mismatched inputs or NaN.

  References:
    Geifman & El-Yaniv, NeurIPS 2017; Geifman, Uziel & El-Yaniv, "Bias-Reduced
    Uncertainty Estimation for Deep Neural Classifiers", ICLR 2019.

  Example:
    >>> from sphereembed.evaluation.calibration import risk_coverage_curve
    >>> curve = risk_coverage_curve([0.9, 0.6, 0.7], [1, 1, 0])
    >>> print(curve.coverage.round(3).tolist(), curve.risk.round(3).tolist())
    [0.333, 0.667, 1.0] [0.0, 0.5, 0.333]
  """
  confidences = checks.vector(confidences, "confidences")
  correct = checks.binary(correct, "correct")
  n = checks.same_length(confidences=confidences, correct=correct)
  kept = np.arange(1, n + 1)
  errors = checks.expected_prefix_sums(confidences, (~correct).astype(np.float64))
  threshold = np.sort(confidences)[::-1]
  return RiskCoverageCurve(kept / n, errors / kept, threshold)


def aurc(confidences, correct) -> float:
  """Area under the risk-coverage curve: ``(1 / N) sum_{k=1..N} risk(k / N)``.

  The mean of the selective risk over the coverages ``1/N, ..., 1`` (the
  definition of Geifman et al. 2019), lower is better. With a constant
  confidence it equals the error rate.

  Args:
    confidences: ``(N,)`` confidences (larger = more confident).
    correct: ``(N,)`` bools (or 0/1).

  Returns:
    The AURC as a fraction in ``[0, 1]``.

  Raises:
    ValueError: as :func:`risk_coverage_curve`.

  References:
    Geifman, Uziel & El-Yaniv, ICLR 2019.

  Example:
    >>> from sphereembed.evaluation.calibration import aurc
    >>> print(f"{aurc([0.9, 0.6, 0.7], [1, 1, 0]):.4f}")
    0.2778
  """
  return float(np.mean(risk_coverage_curve(confidences, correct).risk))


def excess_aurc(confidences, correct) -> float:
  """E-AURC: :func:`aurc` minus the AURC of the best ranking (all errors last).

  The best ranking keeps the correct samples first, so its risk at ``k``
  kept samples is ``max(0, k - N_correct) / k``; subtracting its area removes
  the part of the AURC due to the error rate alone.

  Args:
    confidences: ``(N,)`` confidences (larger = more confident).
    correct: ``(N,)`` bools (or 0/1).

  Returns:
    The E-AURC, in ``[0, 1]``; 0 for a perfect ranking.

  Raises:
    ValueError: as :func:`risk_coverage_curve`.

  References:
    Geifman, Uziel & El-Yaniv, ICLR 2019.

  Example:
    >>> from sphereembed.evaluation.calibration import excess_aurc
    >>> print(f"{excess_aurc([0.9, 0.6, 0.7], [1, 1, 0]):.4f}")
    0.1667
  """
  area = aurc(confidences, correct)
  correct = checks.binary(correct, "correct")
  n = len(correct)
  kept = np.arange(1, n + 1)
  best = np.maximum(0, kept - correct.sum()) / kept
  return float(area - np.mean(best))
