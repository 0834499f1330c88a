"""Verification metrics against scikit-learn, SciPy's EER recipe and brute-force threshold loops."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.interpolate import interp1d
from scipy.optimize import brentq
from sklearn import metrics as skm

from sphereembed.evaluation import verification
from tests.references import ref_distance


def random_pairs(seed, n=300, ties=False):
  rng = np.random.default_rng(seed)
  same = rng.random(n) < 0.3
  scores = rng.normal(size=n) + 1.5 * same
  if ties:
    scores = np.round(scores, 1)  # many tied scores, across both classes
  return scores, same


# ----------------------------------------------------------------------------
# Ranking metrics against scikit-learn.


@pytest.mark.parametrize("ties", [False, True])
def test_roc_auc_ap_and_curves_match_sklearn(ties):
  scores, same = random_pairs(0, ties=ties)
  assert verification.roc_auc(scores, same) == pytest.approx(skm.roc_auc_score(same, scores), abs=1e-12)
  assert verification.average_precision(scores, same) == pytest.approx(
      skm.average_precision_score(same, scores), abs=1e-12)
  assert verification.verification_ap(scores, same) == pytest.approx(
      skm.average_precision_score(same, scores), abs=1e-12)
  fpr, tpr, thresholds = skm.roc_curve(same, scores, drop_intermediate=False)
  curve = verification.roc_curve(scores, same)
  np.testing.assert_allclose(curve.fpr, fpr, atol=1e-12)
  np.testing.assert_allclose(curve.tpr, tpr, atol=1e-12)
  np.testing.assert_array_equal(curve.thresholds, thresholds)
  precision, recall, pr_thresholds = skm.precision_recall_curve(same, scores)
  ours = verification.precision_recall_curve(scores, same)
  np.testing.assert_allclose(ours[0], precision, atol=1e-12)
  np.testing.assert_allclose(ours[1], recall, atol=1e-12)
  np.testing.assert_array_equal(ours[2], pr_thresholds)


def test_ties_count_half_and_infinite_scores_are_ranked():
  assert verification.roc_auc([1.0, 1.0], [1, 0]) == 0.5
  scores = [np.inf, np.inf, 0.0, -np.inf, -np.inf]
  labels = [1, 0, 1, 0, 0]
  finite = np.clip(scores, -1e300, 1e300)  # scikit-learn rejects infinities; same order
  assert verification.roc_auc(scores, labels) == pytest.approx(skm.roc_auc_score(labels, finite))
  assert verification.average_precision(scores, labels) == pytest.approx(
      skm.average_precision_score(labels, finite))


def test_ap_is_step_wise_not_trapezoid():
  scores, same = [0.9, 0.8, 0.3, 0.1], [1, 0, 1, 0]
  # Steps: recall 1/2 at precision 1, recall 1 at precision 2/3.
  assert verification.verification_ap(scores, same) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
  precision, recall, _ = skm.precision_recall_curve(same, scores)
  assert skm.auc(recall, precision) != pytest.approx(verification.verification_ap(scores, same))


# ----------------------------------------------------------------------------
# Operating points: TPR at FAR and EER.


def ref_rates(scores, same, threshold):
  accepted = scores >= threshold
  return (accepted & ~same).sum() / (~same).sum(), (accepted & same).sum() / same.sum()


@pytest.mark.parametrize("ties", [False, True])
def test_tpr_at_far_matches_threshold_loop(ties):
  scores, same = random_pairs(1, ties=ties)
  for far in (0.0, 0.001, 0.01, 0.05, 0.1, 0.5, 1.0):
    best = 0.0
    for threshold in np.r_[np.inf, np.unique(scores)]:
      fpr, tpr = ref_rates(scores, same, threshold)
      if fpr <= far:
        best = max(best, tpr)
    assert verification.tpr_at_far(scores, same, far) == pytest.approx(best, abs=1e-12)


def test_eer_matches_scipy_recipe():
  for seed in range(4):
    scores, same = random_pairs(seed)
    fpr, tpr, _ = skm.roc_curve(same, scores)
    reference = brentq(lambda x: 1.0 - x - interp1d(fpr, tpr)(x), 0.0, 1.0)
    assert verification.equal_error_rate(scores, same) == pytest.approx(reference, abs=1e-9)


def test_eer_hand_computed():
  assert verification.equal_error_rate([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0]) == 0.0
  assert verification.equal_error_rate([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 1.0
  assert verification.equal_error_rate([0.5, 0.5], [1, 0]) == pytest.approx(0.5)
  # ROC (0, 0) -> (0, 1/2) -> (1/2, 1/2) -> (1/2, 1) -> (1, 1): FAR = FRR = 1/2 at (1/2, 1/2).
  assert verification.equal_error_rate([0.9, 0.8, 0.3, 0.1], [1, 0, 1, 0]) == pytest.approx(0.5)


# ----------------------------------------------------------------------------
# Threshold calibration.


def test_calibrate_threshold_hand_computed():
  distances = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
  same = [True, True, False, True, False, False]
  # Accuracies 3/6 (none), 4/6, 5/6, 4/6, 5/6, 4/6, 3/6: the first best is 0.2.
  assert verification.calibrate_threshold(distances, same) == 0.2
  assert verification.calibrate_threshold(distances, same, target_far=1 / 3) == 0.4
  assert verification.calibrate_threshold(distances, same, target_far=0.3) == 0.2
  assert verification.calibrate_threshold(distances, same, target_far=1.0) == 0.6
  # FAR 0 at 0.2; the same threshold as for target 0.3.
  assert verification.calibrate_threshold(distances, same, target_far=0.0) == 0.2
  # The smallest distance is a different pair: with target 0 nothing is accepted.
  below = verification.calibrate_threshold([0.1, 0.2], [False, True], target_far=0.0)
  assert below < 0.1 and below == np.nextafter(0.1, 0)
  # Accepting nothing (2/3 right) beats every threshold (at most 1/3 right).
  assert verification.calibrate_threshold([0.1, 0.2, 0.3], [False, False, True]) == np.nextafter(0.1, 0)


def test_calibrate_threshold_matches_loop():
  rng = np.random.default_rng(3)
  same = rng.random(200) < 0.4
  distances = np.round(rng.random(200) + 0.4 * ~same, 2)  # with ties
  candidates = np.unique(distances)
  for target in (0.0, 0.01, 0.1, 0.3):
    allowed = [t for t in candidates if ((distances <= t) & ~same).sum() / (~same).sum() <= target]
    expected = max(allowed) if allowed else np.nextafter(candidates[0], -np.inf)
    assert verification.calibrate_threshold(distances, same, target_far=target) == expected
  accuracies = [(np.mean((distances <= t) == same), -t) for t in candidates]
  best_accuracy, minus_t = max(accuracies)
  assert np.mean(~same) < best_accuracy
  assert verification.calibrate_threshold(distances, same) == -minus_t


def test_threshold_metrics():
  rates = verification.threshold_metrics([0.1, 0.2, 0.3, 0.4, 0.5], [1, 1, 0, 1, 0], 0.3)
  assert rates == pytest.approx({"accuracy": 3 / 5, "far": 1 / 2, "frr": 1 / 3, "tpr": 2 / 3})


# ----------------------------------------------------------------------------
# Enrolment gallery.


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_gallery_matches_brute_force(metric):
  rng = np.random.default_rng(4)
  gallery = verification.EnrolmentGallery(metric=metric, threshold=0.6)
  templates = {}
  for identity, count in (("a", 3), ("b", 1), (7, 2)):
    t = rng.normal(size=(count, 5))
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    templates[identity] = t
    gallery.enrol(identity, t[:1])
    if count > 1:
      gallery.enrol(identity, t[1:])  # enrolling again adds templates
  assert gallery.identities == ["a", "b", 7] and gallery.num_templates == 6
  queries = rng.normal(size=(20, 5))
  queries /= np.linalg.norm(queries, axis=1, keepdims=True)
  queries[:3] = templates["a"] + 0.01  # near "a"
  queries /= np.linalg.norm(queries, axis=1, keepdims=True)
  claims = ["a", "b", 7, "a", "b"] * 4
  expected = np.array([min(ref_distance(q, t, metric) for t in templates[c])
                       for q, c in zip(queries, claims)])
  np.testing.assert_allclose(gallery.nearest_distances(queries, claims), expected, atol=1e-9)
  np.testing.assert_array_equal(gallery.verify(queries, claims), expected <= 0.6)
  identities, distances = gallery.identify(queries)
  for q, name, d in zip(queries, identities, distances):
    per_identity = {i: min(ref_distance(q, t, metric) for t in ts) for i, ts in templates.items()}
    best = min(per_identity, key=per_identity.get)
    assert d == pytest.approx(per_identity[best], abs=1e-9)
    assert name == (best if per_identity[best] <= 0.6 else None)


def test_gallery_calibrate_and_small_blocks(monkeypatch):
  rng = np.random.default_rng(5)
  centers = rng.normal(size=(4, 3)) * 3
  gallery = verification.EnrolmentGallery()
  for k in range(4):
    gallery.enrol(k, centers[k] + 0.1 * rng.normal(size=(3, 3)))
  queries = centers[np.arange(40) % 4] + 0.1 * rng.normal(size=(40, 3))
  claimed = (np.arange(40) + (np.arange(40) % 2)) % 4  # every other claim is false
  genuine = claimed == np.arange(40) % 4
  threshold = gallery.calibrate(queries, claimed.tolist(), genuine, target_far=0.0)
  assert gallery.threshold == threshold
  assert not gallery.verify(queries, claimed.tolist())[~genuine].any()
  assert gallery.verify(queries, claimed.tolist())[genuine].all()  # well separated
  # Blocked distance computation gives the same result.
  full = gallery.nearest_distances(queries, claimed.tolist())
  monkeypatch.setattr(verification.EnrolmentGallery, "_BLOCK", 7)
  np.testing.assert_array_equal(gallery.nearest_distances(queries, claimed.tolist()), full)


def test_gallery_bad_input():
  gallery = verification.EnrolmentGallery()
  with pytest.raises(ValueError, match="empty"):
    gallery.nearest_distances([[0.0, 1.0]], ["a"])
  gallery.enrol("a", [0.0, 1.0])
  with pytest.raises(ValueError, match="no threshold"):
    gallery.verify([[0.0, 1.0]], ["a"])
  with pytest.raises(ValueError, match="not enrolled"):
    gallery.nearest_distances([[0.0, 1.0]], ["b"])
  with pytest.raises(ValueError, match="dimension"):
    gallery.enrol("b", [[0.0, 1.0, 2.0]])
  with pytest.raises(ValueError, match="shape"):
    gallery.nearest_distances([[0.0, 1.0, 2.0]], ["a"])
  with pytest.raises(ValueError, match="Length mismatch"):
    gallery.nearest_distances([[0.0, 1.0], [1.0, 0.0]], ["a"])
  with pytest.raises(ValueError, match="NaN"):
    gallery.enrol("c", [[np.nan, 1.0]])
  with pytest.raises(ValueError, match="Unknown metric"):
    verification.EnrolmentGallery(metric="manhattan")


# ----------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize("call, message", [
    (lambda: verification.roc_auc([0.1, 0.2], [1, 1]), "single class"),
    (lambda: verification.verification_ap([0.1, 0.2], [0, 0]), "single class"),
    (lambda: verification.roc_curve([0.1, 0.2], [1]), "Length mismatch"),
    (lambda: verification.average_precision([], []), "empty"),
    (lambda: verification.roc_auc([0.1, np.nan], [1, 0]), "NaN"),
    (lambda: verification.roc_auc([0.1, 0.2], [1, 2]), "0 and 1"),
    (lambda: verification.tpr_at_far([0.1, 0.2], [1, 0], far=1.5), "far"),
    (lambda: verification.equal_error_rate([0.1, 0.2], [True, True]), "single class"),
    (lambda: verification.calibrate_threshold([0.1, 0.2], [True, True]), "single class"),
    (lambda: verification.calibrate_threshold([0.1, 0.2], [True, False], target_far=-0.1), "target_far"),
    (lambda: verification.calibrate_threshold([0.1, np.nan], [True, False]), "NaN"),
    (lambda: verification.threshold_metrics([0.1], [True, False], 0.5), "Length mismatch"),
])
def test_bad_input_raises_value_error(call, message):
  with pytest.raises(ValueError, match=message):
    call()
