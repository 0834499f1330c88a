"""Calibration metrics against hand-computed cases and brute-force references.

The references bin by explicit comparisons with the edges k / B, and resolve
ties by averaging over every order of the tied samples (itertools), never
through the library's code.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss

from sphereembed.evaluation import calibration, checks


def ref_ece_mce(confidences, correct, num_bins):
  bins = [[] for _ in range(num_bins)]
  for c, ok in zip(confidences, correct):
    for b in range(num_bins):
      upper_ok = c < (b + 1) / num_bins or b == num_bins - 1
      if b / num_bins <= c and upper_ok:
        bins[b].append((c, float(ok)))
        break
  n = len(confidences)
  ece, mce = 0.0, 0.0
  for members in bins:
    if members:
      accuracy = sum(ok for _, ok in members) / len(members)
      gap = abs(accuracy - sum(c for c, _ in members) / len(members))
      ece += len(members) / n * gap
      mce = max(mce, gap)
  return ece, mce


def ref_tie_averaged_accuracy(confidences, correct, kept):
  """Accuracy of the `kept` most confident samples, averaged over all orders of the input."""
  accuracies = []
  for order in itertools.permutations(range(len(confidences))):
    ranked = sorted(order, key=lambda i: -confidences[i])  # stable: ties keep this order
    accuracies.append(sum(correct[i] for i in ranked[:kept]) / kept)
  return float(np.mean(accuracies))


# ----------------------------------------------------------------------------
# ECE, MCE and the reliability diagram.


def test_ece_and_mce_hand_computed_with_zero_and_one():
  confidences = [0.0, 0.1, 0.5, 1.0, 0.75]
  correct = [0, 0, 1, 1, 0]
  # Bins of width 1/4: {0.0, 0.1}: gap 0.05; {0.5}: gap 0.5; {0.75, 1.0}: acc 0.5, conf 0.875.
  assert calibration.expected_calibration_error(confidences, correct, num_bins=4) == pytest.approx(
      (2 * 0.05 + 0.5 + 2 * 0.375) / 5)
  assert calibration.maximum_calibration_error(confidences, correct, num_bins=4) == pytest.approx(0.5)


def test_confidence_one_lands_in_top_bin_and_zero_in_bottom_bin():
  diagram = calibration.reliability_diagram([1.0, 0.0], [True, False], num_bins=10)
  assert diagram.count.tolist() == [1] + [0] * 8 + [1]
  assert calibration.expected_calibration_error([1.0], [1]) == 0.0
  assert calibration.expected_calibration_error([1.0], [0]) == 1.0
  assert calibration.expected_calibration_error([0.0], [0]) == 0.0
  assert calibration.expected_calibration_error([0.0], [1]) == 1.0


def test_values_on_the_edges_start_their_bin():
  for num_bins in (3, 5, 10, 15):
    edges = np.arange(num_bins + 1) / num_bins
    diagram = calibration.reliability_diagram(edges, np.ones(num_bins + 1, bool), num_bins)
    assert diagram.count.tolist() == [1] * (num_bins - 1) + [2]
    assert diagram.edges.tolist() == edges.tolist()
  # A literal 0.6 starts the bin [0.6, 0.8), although linspace's edge is 0.6000000000000001.
  assert calibration.reliability_diagram([0.6], [1], 5).count.tolist() == [0, 0, 0, 1, 0]


@pytest.mark.parametrize("num_bins", [1, 7, 15])
def test_ece_and_mce_match_reference(num_bins):
  rng = np.random.default_rng(num_bins)
  confidences = np.r_[rng.random(200), 0.0, 1.0, 0.5]
  correct = rng.random(len(confidences)) < confidences
  ece, mce = ref_ece_mce(confidences, correct, num_bins)
  ours = (calibration.expected_calibration_error(confidences, correct, num_bins),
          calibration.maximum_calibration_error(confidences, correct, num_bins))
  assert ours == pytest.approx((ece, mce), abs=1e-12)


def test_reliability_diagram_empty_bins_are_nan():
  diagram = calibration.reliability_diagram([0.95, 0.95, 0.05], [1, 0, 0], num_bins=10)
  assert diagram.count.sum() == 3
  assert np.isnan(diagram.accuracy[1:9]).all() and np.isnan(diagram.confidence[1:9]).all()
  assert diagram.accuracy[9] == 0.5 and diagram.confidence[9] == pytest.approx(0.95)


def test_ece_is_a_fraction_and_accepts_bools_and_jax_arrays():
  import jax.numpy as jnp
  confidences = jnp.array([0.9, 0.8, 0.7], dtype=jnp.float32)
  value = calibration.expected_calibration_error(confidences, jnp.array([True, True, False]))
  assert isinstance(value, float) and 0 <= value <= 1


# ----------------------------------------------------------------------------
# Brier score.


def test_brier_multiclass_matches_loop_and_binary_matches_sklearn():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(50, 4))
  probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  labels = rng.integers(0, 4, 50)
  reference = np.mean([sum((probabilities[i, c] - (c == labels[i])) ** 2 for c in range(4))
                       for i in range(50)])
  assert calibration.brier_score(probabilities, labels) == pytest.approx(reference, rel=1e-12)
  p = rng.random(40)
  y = rng.random(40) < 0.5
  assert calibration.brier_score(p, y) == pytest.approx(brier_score_loss(y, p), rel=1e-12)
  # The binary score is half the multi-class score of the two columns [1 - p, p].
  two_columns = np.stack([1 - p, p], axis=1)
  assert calibration.brier_score(two_columns, y.astype(int)) == pytest.approx(
      2 * calibration.brier_score(p, y), rel=1e-12)


def test_brier_hand_computed():
  assert calibration.brier_score([[1.0, 0.0, 0.0]], [0]) == 0.0
  assert calibration.brier_score([[0.0, 1.0, 0.0]], [0]) == 2.0
  assert calibration.brier_score([[0.5, 0.25, 0.25]], [1]) == pytest.approx(0.25 + 0.5625 + 0.0625)


# ----------------------------------------------------------------------------
# Accuracy at coverage, the risk-coverage curve and its area.


def test_accuracy_at_coverage_hand_computed():
  confidences = [0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]
  correct = [1, 1, 1, 0, 1, 1, 0, 0, 1, 0]
  assert calibration.accuracy_at_coverage(confidences, correct, 0.8) == pytest.approx(5 / 8)
  assert calibration.accuracy_at_coverage(confidences, correct, 0.3) == 1.0
  assert calibration.accuracy_at_coverage(confidences, correct, 0.7) == pytest.approx(5 / 7)
  # 0.14 * 50 is 7.000000000000001 in floating point: still 7 samples, not 8.
  many = np.arange(50, 0, -1) / 50
  assert calibration.accuracy_at_coverage(many, np.arange(50) != 7, 0.14) == 1.0
  # 0.25 * 10 = 2.5 rounds up to 3 samples.
  assert calibration.accuracy_at_coverage(confidences, correct, 0.25) == 1.0
  assert calibration.accuracy_at_coverage(confidences, correct, 1.0) == pytest.approx(0.6)
  # At least one sample is kept.
  assert calibration.accuracy_at_coverage(confidences, correct, 1e-6) == 1.0


def test_accuracy_at_coverage_resolves_ties_in_expectation():
  # The cut after 2 samples splits the tied group {0.8: correct, 0.8: wrong, 0.8: wrong}.
  confidences = [0.9, 0.8, 0.8, 0.8, 0.1]
  correct = [1, 1, 0, 0, 1]
  assert calibration.accuracy_at_coverage(confidences, correct, 0.4) == pytest.approx((1 + 1 / 3) / 2)
  # The input order does not matter.
  assert calibration.accuracy_at_coverage(confidences[::-1], correct[::-1], 0.4) == pytest.approx(
      (1 + 1 / 3) / 2)


def test_accuracy_at_coverage_and_risk_curve_match_permutation_reference():
  rng = np.random.default_rng(1)
  confidences = rng.choice([0.2, 0.5, 0.9], size=7).tolist()
  correct = rng.integers(0, 2, 7).tolist()
  curve = calibration.risk_coverage_curve(confidences, correct)
  for kept in range(1, 8):
    reference = ref_tie_averaged_accuracy(confidences, correct, kept)
    assert calibration.accuracy_at_coverage(confidences, correct, kept / 7) == pytest.approx(reference)
    assert curve.risk[kept - 1] == pytest.approx(1 - reference)
  assert curve.coverage.tolist() == pytest.approx([k / 7 for k in range(1, 8)])
  assert curve.threshold.tolist() == sorted(confidences, reverse=True)
  assert calibration.aurc(confidences, correct) == pytest.approx(np.mean(curve.risk))


def test_aurc_and_excess_aurc_hand_computed():
  # Ranked 0.9 (right), 0.7 (wrong), 0.6 (right): risks 0, 1/2, 1/3.
  assert calibration.aurc([0.9, 0.6, 0.7], [1, 1, 0]) == pytest.approx((0 + 1 / 2 + 1 / 3) / 3)
  # The best order has risks 0, 0, 1/3.
  assert calibration.excess_aurc([0.9, 0.6, 0.7], [1, 1, 0]) == pytest.approx((1 / 2) / 3)
  assert calibration.excess_aurc([0.9, 0.7, 0.6], [1, 1, 0]) == pytest.approx(0.0, abs=1e-15)
  # A constant confidence gives the error rate.
  assert calibration.aurc([0.5] * 4, [1, 0, 0, 1]) == pytest.approx(0.5)


# ----------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize("call, message", [
    (lambda: calibration.expected_calibration_error([0.5, 0.6], [1]), "Length mismatch"),
    (lambda: calibration.expected_calibration_error([], []), "empty"),
    (lambda: calibration.expected_calibration_error([0.5, np.nan], [1, 0]), "NaN"),
    (lambda: calibration.expected_calibration_error([0.5, 1.2], [1, 0]), r"\[0, 1\]"),
    (lambda: calibration.expected_calibration_error([0.5, -0.1], [1, 0]), r"\[0, 1\]"),
    (lambda: calibration.expected_calibration_error([0.5, 0.6], [1, 2]), "0 and 1"),
    (lambda: calibration.expected_calibration_error([0.5], [1], num_bins=0), "num_bins"),
    (lambda: calibration.maximum_calibration_error([[0.5]], [1]), "1-D"),
    (lambda: calibration.accuracy_at_coverage([0.5, 0.6], [1, 0], 0.0), "coverage"),
    (lambda: calibration.accuracy_at_coverage([0.5, 0.6], [1, 0], 1.5), "coverage"),
    (lambda: calibration.accuracy_at_coverage([0.5, 0.6], [1], 0.5), "Length mismatch"),
    (lambda: calibration.accuracy_at_coverage([0.5, np.nan], [1, 0], 0.5), "NaN"),
    (lambda: calibration.risk_coverage_curve([], []), "empty"),
    (lambda: calibration.brier_score([[0.5, 0.6]], [0]), "sum to 1"),
    (lambda: calibration.brier_score([[0.5, 0.5]], [2]), "class ids"),
    (lambda: calibration.brier_score([[0.5, 0.5]], [0, 1]), "Length mismatch"),
    (lambda: calibration.brier_score([[np.nan, 0.5]], [0]), "NaN"),
    (lambda: calibration.brier_score([1.5], [1]), r"\[0, 1\]"),
    (lambda: calibration.brier_score(np.zeros((0, 3)), []), "non-empty"),
])
def test_bad_input_raises_value_error(call, message):
  with pytest.raises(ValueError, match=message):
    call()


def test_count_rounding():
  assert checks.count(0.07, 100) == 7
  assert math.ceil(0.07 * 100) == 8  # why the rounding is needed
  assert checks.count(0.95, 20) == 19
  assert checks.count(0.951, 20) == 20
  assert checks.count(1e-9, 5) == 1
