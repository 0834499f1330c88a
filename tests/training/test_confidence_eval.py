"""The confidence evaluation's figures and keys on synthetic model outputs."""

import os

import numpy as np

from sphereembed.evaluation.protocols import confidence as confidence_eval


def _outputs(rng, labels, centroids, noise, ood=False):
  embeddings = rng.normal(size=(len(labels), centroids.shape[1]))
  if not ood:
    embeddings = centroids[labels] + noise * embeddings
  embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
  kappa = rng.uniform(1, 5, len(labels)) if ood else rng.uniform(5, 50, len(labels))
  logits = 10 * embeddings @ centroids.T
  return {"embedding": embeddings, "kappa": kappa, "logits": logits}


def test_figures_and_isotonic_keys(tmp_path):
  rng = np.random.default_rng(0)
  centroids = np.linalg.qr(rng.normal(size=(8, 4)))[0].T  # 4 orthonormal centroids in 8-D
  labels = rng.integers(0, 4, 400)
  test = _outputs(rng, labels, centroids, 0.6)
  validation_labels = rng.integers(0, 4, 400)
  validation = _outputs(rng, validation_labels, centroids, 0.6)
  ood = _outputs(rng, labels[:100], centroids, 0.6, ood=True)
  metrics = confidence_eval.evaluate_confidence(
      test, labels, centroids, validation_outputs=validation, validation_labels=validation_labels,
      ood_outputs=ood)
  accuracy = metrics["centroid/accuracy"]
  assert 0.5 < accuracy < 1.0
  # Isotonic calibration keeps the predictions and brings the mean confidence to the accuracy
  # (up to the difference between validation and test accuracy).
  assert metrics["kappa/isotonic/accuracy"] == accuracy
  assert abs(metrics["kappa/isotonic/mean_confidence"] - accuracy) < 0.06
  assert metrics["kappa/isotonic/ece"] < metrics["kappa/probabilities/ece"]
  assert metrics["kappa/ood_auroc"] == 1.0  # OOD kappas all lie below the in-distribution ones
  paths = confidence_eval.plot_confidence_figures(
      str(tmp_path), test, labels, centroids, validation_outputs=validation,
      validation_labels=validation_labels, ood_outputs=ood)
  names = sorted(os.path.basename(p) for p in paths)
  for name in ("confidence_boxplot_kappa.png", "reliability_kappa_isotonic.png", "ood_roc.png",
               "risk_coverage.png", "kappa_vs_softmax.png", "reliability_softmax.png"):
    assert name in names
  assert all(os.path.getsize(p) > 1000 for p in paths)
