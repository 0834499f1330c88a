"""Uncertainty metrics against scikit-learn, scipy.stats and hand-computed cases.

Sparsification with ties is checked against an average over every order of
the tied samples (itertools), independent of the library's closed form.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from sphereembed.evaluation import calibration, uncertainty


def ood_sets(seed, ties=False):
  rng = np.random.default_rng(seed)
  in_scores = rng.normal(size=120)
  out_scores = rng.normal(size=80) + 1.0
  if ties:
    in_scores, out_scores = np.round(in_scores, 1), np.round(out_scores, 1)
  return in_scores, out_scores


def labelled(in_scores, out_scores):
  return np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))], np.r_[in_scores, out_scores]


# ----------------------------------------------------------------------------
# OOD detection.


@pytest.mark.parametrize("ties", [False, True])
def test_ood_auroc_and_auprc_match_sklearn(ties):
  in_scores, out_scores = ood_sets(0, ties)
  y, s = labelled(in_scores, out_scores)
  assert uncertainty.ood_auroc(in_scores, out_scores) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
  assert uncertainty.ood_auprc(in_scores, out_scores) == pytest.approx(
      skm.average_precision_score(y, s), abs=1e-12)


def test_ood_hand_computed():
  # Pairs (out, in): 0.5 beats all three; 0.3 beats 0.1, ties 0.3, loses to 0.4.
  assert uncertainty.ood_auroc([0.1, 0.4, 0.3], [0.5, 0.3]) == pytest.approx(4.5 / 6)
  assert uncertainty.ood_auroc([0.1, 0.2], [0.3, 0.4]) == 1.0
  assert uncertainty.ood_auroc([0.3, 0.4], [0.1, 0.2]) == 0.0
  assert uncertainty.ood_auprc([0.1, 0.2], [0.3, 0.4]) == 1.0


@pytest.mark.parametrize("ties", [False, True])
def test_ood_fpr_at_tpr_matches_sklearn_roc(ties):
  in_scores, out_scores = ood_sets(1, ties)
  # In-distribution positive, ranked by confidence = -uncertainty.
  y = np.r_[np.ones(len(in_scores)), np.zeros(len(out_scores))]
  fpr, tpr, _ = skm.roc_curve(y, -np.r_[in_scores, out_scores], drop_intermediate=False)
  for target in (0.5, 0.9, 0.95, 1.0):
    expected = fpr[np.searchsorted(tpr, target - 1e-12)]
    assert uncertainty.ood_fpr_at_tpr(in_scores, out_scores, target) == pytest.approx(expected)


def test_ood_fpr_at_tpr_hand_computed():
  # 3 of 4 in-distribution samples pass at 0.3; OOD 0.25 passes too, 0.9 does not.
  assert uncertainty.ood_fpr_at_tpr([0.4, 0.1, 0.3, 0.2], [0.25, 0.9], tpr=0.75) == 0.5
  assert uncertainty.ood_fpr_at_tpr([0.1, 0.2], [0.3, 0.4]) == 0.0


# ----------------------------------------------------------------------------
# Sparsification and AUSC.


def ref_sparsification(uncertainties, errors):
  """Mean error after removing k most uncertain, averaged over all orders of the input."""
  n = len(errors)
  curves = []
  for order in itertools.permutations(range(n)):
    ranked = sorted(order, key=lambda i: uncertainties[i])  # least uncertain first; stable
    curves.append([np.mean([errors[i] for i in ranked[:n - k]]) for k in range(n)])
  return np.mean(curves, axis=0)


def test_sparsification_hand_computed():
  curve = uncertainty.sparsification_curve([0.9, 0.1, 0.5, 0.3], [1, 0, 0, 1])
  assert curve.fraction_removed.tolist() == [0, 0.25, 0.5, 0.75]
  # Removing 0.9 (error 1), then 0.5 (error 0), then 0.3 (error 1).
  assert curve.error.tolist() == pytest.approx([0.5, 1 / 3, 0.5, 0.0])
  assert curve.oracle_error.tolist() == pytest.approx([0.5, 1 / 3, 0.0, 0.0])
  assert uncertainty.ausc([0.9, 0.1, 0.5, 0.3], [0, 1, 1, 0]) == pytest.approx((0.5 + 1 / 3 + 0.5) / 4)
  assert uncertainty.oracle_ausc([0, 1, 1, 0]) == pytest.approx((0.5 + 1 / 3) / 4)
  assert uncertainty.ause([0.9, 0.1, 0.5, 0.3], [0, 1, 1, 0]) == pytest.approx(0.5 / 4)


def test_sparsification_with_ties_matches_permutation_reference():
  rng = np.random.default_rng(2)
  uncertainties = rng.choice([0.1, 0.4, 0.7], size=6).tolist()
  errors = rng.choice([0.0, 1.0, 2.5], size=6).tolist()
  curve = uncertainty.sparsification_curve(uncertainties, errors)
  np.testing.assert_allclose(curve.error, ref_sparsification(uncertainties, errors), atol=1e-12)
  np.testing.assert_allclose(curve.oracle_error, ref_sparsification(errors, errors),
                             atol=1e-12)


def test_ausc_equals_aurc_of_negated_uncertainty_and_perfect_ranking_has_zero_ause():
  rng = np.random.default_rng(3)
  u = np.round(rng.random(300), 2)
  correct = rng.random(300) < 1 - u
  assert uncertainty.ausc(u, correct) == pytest.approx(calibration.aurc(-u, correct), abs=1e-12)
  assert uncertainty.ause(1.0 - correct, correct) == pytest.approx(0.0, abs=1e-12)
  assert uncertainty.ause(u, correct) > 0
  # A constant uncertainty removes at random: the area is the error rate.
  assert uncertainty.ausc(np.zeros(300), correct) == pytest.approx(1 - correct.mean())
  # Per-sample performance in [0, 1] works as soft correctness.
  assert uncertainty.ausc([0.2, 0.1], [0.5, 1.0]) == pytest.approx((0.25 + 0.0) / 2)


# ----------------------------------------------------------------------------
# Error versus reject and PRR.


def test_error_reject_hand_computed_and_prr():
  curve = uncertainty.error_reject_curve([0.9, 0.1, 0.5, 0.3], [1, 0, 0, 1])
  assert curve.rejection_rate.tolist() == [0, 0.25, 0.5, 0.75, 1.0]
  assert curve.error.tolist() == [0.5, 0.25, 0.25, 0.0, 0.0]
  assert curve.oracle_error.tolist() == [0.5, 0.25, 0.0, 0.0, 0.0]
  assert curve.random_error.tolist() == [0.5, 0.375, 0.25, 0.125, 0.0]
  # Trapezoid areas: random 0.25, oracle 0.125, uncertainty 0.1875.
  assert uncertainty.prediction_rejection_ratio([0.9, 0.1, 0.5, 0.3], [1, 0, 0, 1]) == pytest.approx(0.5)
  errors = np.array([0.0, 1.0, 0.0, 3.0, 2.0])
  assert uncertainty.prediction_rejection_ratio(errors, errors) == pytest.approx(1.0)
  assert uncertainty.prediction_rejection_ratio(-errors, errors) < 0


# ----------------------------------------------------------------------------
# Correlation with performance.


@pytest.mark.parametrize("n, ties", [(2, False), (3, True), (17, False), (100, True), (1000, True)])
def test_correlations_match_scipy(n, ties):
  rng = np.random.default_rng(n)
  u = rng.normal(size=n)
  performance = -u + rng.normal(size=n)
  if ties:
    u, performance = np.round(u), np.round(performance)
    u[:2], performance[:2] = [0.0, 1.0], [1.0, 0.0]  # never constant
  result = uncertainty.uncertainty_correlation(u, performance)
  assert result["spearman"] == pytest.approx(stats.spearmanr(u, performance).statistic, abs=1e-12)
  assert result["kendall"] == pytest.approx(stats.kendalltau(u, performance).statistic, abs=1e-12)


def test_kendall_fast_on_many_samples():
  rng = np.random.default_rng(0)
  u = rng.integers(0, 50, 20_000)
  performance = rng.integers(0, 2, 20_000)
  assert uncertainty.kendall_tau(u, performance) == pytest.approx(
      stats.kendalltau(u, performance).statistic, abs=1e-12)


def test_strict_inversions_match_loop():
  rng = np.random.default_rng(1)
  for n in (1, 2, 5, 8, 33):
    values = rng.integers(0, 4, n)
    expected = sum(values[i] > values[j] for i in range(n) for j in range(i + 1, n))
    assert uncertainty._strict_inversions(values) == expected


def test_binned_performance():
  binned = uncertainty.binned_performance([0.4, 0.1, 0.3, 0.2, 0.5], [0.0, 1.0, 0.5, 0.9, 0.1],
                                          num_bins=2)
  # Sorted: (0.1, 1.0), (0.2, 0.9), (0.3, 0.5) | (0.4, 0.0), (0.5, 0.1).
  assert binned.count.tolist() == [3, 2]
  assert binned.performance.tolist() == pytest.approx([2.4 / 3, 0.05])
  assert binned.uncertainty.tolist() == pytest.approx([0.2, 0.45])
  assert binned.edges.tolist() == [0.1, 0.4, 0.5]
  uniform = uncertainty.binned_performance([0.0, 0.1, 1.0], [1.0, 0.5, 0.0], num_bins=4,
                                           strategy="uniform")
  assert uniform.count.tolist() == [2, 0, 0, 1]
  assert uniform.performance[0] == 0.75 and np.isnan(uniform.performance[1])


# ----------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize("call, message", [
    (lambda: uncertainty.ood_auroc([], [0.1]), "empty"),
    (lambda: uncertainty.ood_auprc([0.1], []), "empty"),
    (lambda: uncertainty.ood_auroc([0.1, np.nan], [0.2]), "NaN"),
    (lambda: uncertainty.ood_auprc([0.1], [np.nan]), "NaN"),
    (lambda: uncertainty.ood_fpr_at_tpr([0.1], [0.2], tpr=0.0), "tpr"),
    (lambda: uncertainty.sparsification_curve([0.1, 0.2], [1.0]), "Length mismatch"),
    (lambda: uncertainty.sparsification_curve([0.1], [np.inf]), "infinite"),
    (lambda: uncertainty.ausc([0.1, 0.2], [1, 2]), r"\[0, 1\]"),
    (lambda: uncertainty.ausc([], []), "empty"),
    (lambda: uncertainty.error_reject_curve([0.1, np.nan], [1, 0]), "NaN"),
    (lambda: uncertainty.prediction_rejection_ratio([0.1, 0.2], [1, 1]), "equal"),
    (lambda: uncertainty.uncertainty_correlation([0.1, 0.2], [1.0]), "Length mismatch"),
    (lambda: uncertainty.uncertainty_correlation([0.1], [1.0]), "at least 2"),
    (lambda: uncertainty.spearman_rho([0.1, 0.1], [1.0, 2.0]), "constant"),
    (lambda: uncertainty.kendall_tau([0.1, 0.2], [1.0, 1.0]), "constant"),
    (lambda: uncertainty.binned_performance([0.1, 0.2], [1, 0], num_bins=3), "quantile"),
    (lambda: uncertainty.binned_performance([0.1, 0.2], [1, 0], strategy="log"), "strategy"),
])
def test_bad_input_raises_value_error(call, message):
  with pytest.raises(ValueError, match=message):
    call()
