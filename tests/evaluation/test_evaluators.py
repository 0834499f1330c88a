"""Evaluators: flat dicts of floats whose values are those of the metric functions."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from sphereembed.evaluation import calibration, evaluators, uncertainty, verification


def classifier_outputs(seed=0, n=200, classes=3):
  rng = np.random.default_rng(seed)
  logits = 2 * rng.normal(size=(n, classes))
  probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  labels = np.where(rng.random(n) < 0.7, probabilities.argmax(1), rng.integers(0, classes, n))
  return probabilities, labels


def assert_flat_floats(metrics):
  assert all(isinstance(k, str) and type(v) is float for k, v in metrics.items())
  json.dumps(metrics)  # writable as JSON lines


def test_calibration_evaluator_from_probabilities_and_from_confidences():
  probabilities, labels = classifier_outputs()
  evaluator = evaluators.CalibrationEvaluator(num_bins=10, coverages=(0.5, 0.8, 0.955))
  metrics = evaluator.run(probabilities=probabilities, labels=labels)
  assert_flat_floats(metrics)
  confidences = probabilities.max(1)
  correct = probabilities.argmax(1) == labels
  assert metrics == pytest.approx({
      "accuracy": correct.mean(),
      "mean_confidence": confidences.mean(),
      "ece": calibration.expected_calibration_error(confidences, correct, 10),
      "mce": calibration.maximum_calibration_error(confidences, correct, 10),
      "aurc": calibration.aurc(confidences, correct),
      "eaurc": calibration.excess_aurc(confidences, correct),
      "accuracy_at_50": calibration.accuracy_at_coverage(confidences, correct, 0.5),
      "accuracy_at_80": calibration.accuracy_at_coverage(confidences, correct, 0.8),
      "accuracy_at_95.5": calibration.accuracy_at_coverage(confidences, correct, 0.955),
      "brier": calibration.brier_score(probabilities, labels),
  })
  without_brier = evaluator.run(confidences, correct)
  assert "brier" not in without_brier
  assert without_brier == pytest.approx({k: v for k, v in metrics.items() if k != "brier"})
  with pytest.raises(ValueError, match="together"):
    evaluator.run(confidences)
  with pytest.raises(ValueError, match="together"):
    evaluator.run(probabilities=probabilities)


def test_ood_evaluator_with_prefix():
  rng = np.random.default_rng(1)
  in_scores, out_scores = rng.normal(size=100), rng.normal(size=50) + 1
  metrics = evaluators.OODEvaluator(tpr=0.9, prefix="ood/").run(in_scores, out_scores)
  assert_flat_floats(metrics)
  assert metrics == pytest.approx({
      "ood/auroc": uncertainty.ood_auroc(in_scores, out_scores),
      "ood/auprc": uncertainty.ood_auprc(in_scores, out_scores),
      "ood/auprc_in": verification.average_precision(
          -np.r_[in_scores, out_scores], np.r_[np.ones(100), np.zeros(50)]),
      "ood/fpr_at_90_tpr": uncertainty.ood_fpr_at_tpr(in_scores, out_scores, 0.9),
  })


def test_verification_evaluator():
  rng = np.random.default_rng(2)
  same = rng.random(500) < 0.3
  distances = rng.random(500) + 0.5 * ~same
  metrics = evaluators.VerificationEvaluator(fars=(0.01, 1e-5)).run(distances, same, threshold=0.6)
  assert_flat_floats(metrics)
  rates = verification.threshold_metrics(distances, same, 0.6)
  assert metrics == pytest.approx({
      "ap": verification.verification_ap(-distances, same),
      "roc_auc": verification.roc_auc(-distances, same),
      "eer": verification.equal_error_rate(-distances, same),
      "tpr_at_far_0.01": verification.tpr_at_far(-distances, same, 0.01),
      "tpr_at_far_1e-05": verification.tpr_at_far(-distances, same, 1e-5),
      "threshold": 0.6, "accuracy": rates["accuracy"], "far": rates["far"], "frr": rates["frr"],
  })
  assert set(evaluators.VerificationEvaluator().run(distances, same)) == {
      "ap", "roc_auc", "eer", "tpr_at_far_0.001", "tpr_at_far_0.01", "tpr_at_far_0.1"}


def test_sparsification_and_correlation_evaluators():
  rng = np.random.default_rng(3)
  u = rng.random(200)
  correct = rng.random(200) > u
  metrics = evaluators.SparsificationEvaluator(prefix="test/").run(u, correct)
  assert_flat_floats(metrics)
  assert metrics == pytest.approx({
      "test/ausc": uncertainty.ausc(u, correct),
      "test/ausc_oracle": uncertainty.oracle_ausc(correct),
      "test/ause": uncertainty.ause(u, correct),
      "test/ausc_random": 1 - correct.mean(),
      "test/prr": uncertainty.prediction_rejection_ratio(u, 1.0 - correct),
  })
  all_right = evaluators.SparsificationEvaluator().run(u, np.ones(200, bool))
  assert all_right["ausc"] == 0 and math.isnan(all_right["prr"])
  correlation = evaluators.UncertaintyCorrelationEvaluator()(u, correct)
  assert correlation == pytest.approx(uncertainty.uncertainty_correlation(u, correct))
  assert correlation["spearman"] < 0


def test_retrieval_evaluator_wraps_retrieval_metrics():
  retrieval = pytest.importorskip("sphereembed.evaluation.retrieval")
  rng = np.random.default_rng(4)
  labels = np.arange(40) % 4
  x = rng.normal(size=(40, 3)) + 2 * np.eye(4, 3)[labels]
  metrics = evaluators.RetrievalEvaluator(ks=(1, 5), prefix="val/").run(x, labels)
  assert_flat_floats(metrics)
  expected = retrieval.retrieval_metrics(x, labels, ks=(1, 5))
  assert metrics == pytest.approx({"val/" + k: v for k, v in expected.items()})
  assert "val/map_at_r" in metrics and "val/recall_at_5" in metrics


def test_bad_input_reaches_the_metrics():
  with pytest.raises(ValueError, match="empty"):
    evaluators.OODEvaluator().run([], [0.1])
  with pytest.raises(ValueError, match="single class"):
    evaluators.VerificationEvaluator().run([0.1, 0.2], [True, True])
  with pytest.raises(ValueError, match="NaN"):
    evaluators.SparsificationEvaluator().run([np.nan], [1])
  with pytest.raises(NotImplementedError):
    evaluators.Evaluator().run()


def test_binding_names_are_exported_from_the_package():
  import sphereembed.evaluation as evaluation
  for name in ("retrieval_metrics", "expected_calibration_error", "brier_score",
               "accuracy_at_coverage", "ood_auroc", "ood_auprc", "sparsification_curve", "ausc",
               "verification_ap", "calibrate_threshold"):
    assert callable(getattr(evaluation, name)), name
  assert set(evaluation.__all__) <= set(dir(evaluation))
