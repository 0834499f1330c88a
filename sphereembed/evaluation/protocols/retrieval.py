"""Retrieval with an out-of-distribution set: the protocol of Bayesian metric learning.

The protocol of Warburg, Miani, Brack & Hauberg, "Bayesian Metric Learning
for Uncertainty Quantification in Image Retrieval" (NeurIPS 2023), where the
paper's code gives one (:mod:`sphereembed.methods.retrieval` runs it for LAM
and its baselines):

* Embeddings: every model gives a unit mean embedding per image and, except
  a deterministic model, samples and an uncertainty score per image.
* Retrieval: every in-distribution test image queries the other test images
  by its mean embedding (leave-one-out, Euclidean):
  :func:`sphereembed.evaluation.retrieval_metrics` gives ``map_at_1``,
  ``map_at_5``, ``map_at_10`` (the LAM code's mAP@k), ``map_at_r``,
  ``recall_at_k`` and the kNN accuracy.
* OOD (``ood_auroc``, ``ood_auprc``): the uncertainties of the
  in-distribution and of the OOD test images, OOD positive
  (:class:`sphereembed.evaluation.OODEvaluator`).
* Sparsification (``ausc``): each query's 1-NN correctness, ranked by the
  uncertainty of the query plus that of its nearest neighbour (the paper's
  ``z_sigmaQ + z_sigmaDb[idx]``). ``ausc`` is the area under the accuracy
  sparsification curve, the paper's convention (higher is better), equal to
  ``1 -`` :func:`sphereembed.evaluation.ausc` (reported with the oracle and
  AUSE under ``sparsification/``).
* Calibration (``ece``): :func:`sphereembed.evaluation.retrieval_calibration`,
  the LAM protocol with the top-bin fix: each sample of a query retrieves its
  nearest reference, the prediction is the mode of the ``S`` retrieved labels
  and the confidence its vote share; ECE with ``calibration_bins`` (the paper:
  10) equal-width bins. Deviation: the references are the mean embeddings of
  training images (a database distinct from the queries); the paper's code
  lets each sample of the test set retrieve within the same sample.
* A deterministic model has no uncertainty: its OOD, sparsification and
  calibration metrics are NaN.

Figures (:func:`write_figures`, through :mod:`sphereembed.plotting`):
``roc_ood.png``, ``sparsification.png``, ``reliability.png``,
``retrievals.png``; :func:`plot_method_comparison` overlays several finished
runs from their ``scores.npz``.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Callable

from absl import logging
from matplotlib.figure import Figure
import numpy as np

from sphereembed import evaluation
from sphereembed import plotting
from sphereembed.data import Split

__all__ = ["HEADLINE_KEYS", "evaluate", "plot_method_comparison", "write_figures"]

#: The keys of the paper's table, in every ``metrics.json`` (NaN where a model has no value).
HEADLINE_KEYS = ("map_at_1", "map_at_5", "map_at_10", "ood_auroc", "ood_auprc", "ausc", "ece")

_KS = (1, 5, 10)
_NUM_SHOWN_NEIGHBOURS = 5
# The keys that need an uncertainty: NaN for the deterministic model.
_UNCERTAINTY_KEYS = (
    "ood_auroc", "ood_auprc", "ood/auroc", "ood/auprc", "ood/auprc_in", "ood/fpr_at_95_tpr",
    "ausc", "sparsification/ausc", "sparsification/ausc_oracle", "sparsification/ause",
    "sparsification/ausc_random", "sparsification/prr", "ece", "calibration_accuracy",
    "calibration_mean_confidence", "uncertainty_mean_test", "uncertainty_mean_ood")


class _Clock:
  """Logs the seconds each evaluation stage took."""

  def __init__(self):
    self._last = time.monotonic()

  def log(self, stage: str) -> None:
    now = time.monotonic()
    logging.info("Evaluation: %s took %.1f s", stage, now - self._last)
    self._last = now


def evaluate(predict: Callable, stochastic: bool, test: Split, ood: Split, references: Split,
             config) -> tuple[dict[str, float], dict[str, np.ndarray]]:
  """The protocol of the module docstring: ``(metrics, per-image arrays)``.

  Args:
    predict: ``predict(images, drop=()) -> {"mean", "uncertainty", "samples"}``
      over a whole array of images (``(N, D)`` unit means, ``(N,)``
      uncertainties, ``(N, S, D)`` samples; keys in ``drop`` may be left out).
    stochastic: whether the model has an uncertainty and samples (else only
      the retrieval metrics; the others are NaN).
    test: the in-distribution test set (queries and database).
    ood: the out-of-distribution test set.
    references: the calibration's database (training images).
    config: the run's config (``calibration_bins``).

  Returns:
    ``(metrics, arrays)``: every key of :data:`HEADLINE_KEYS` and the other
    OOD, sparsification and calibration metrics; the per-image arrays the
    figures use (also kept in ``scores.npz``).
  """
  clock = _Clock()
  test_images = test
  test = predict(test_images.images)
  clock.log("embedding the test images")
  labels = test_images.labels
  metrics = dict(evaluation.retrieval_metrics(test["mean"], labels, ks=_KS))
  _, neighbours = evaluation.nearest_neighbors(
      test["mean"], k=min(_NUM_SHOWN_NEIGHBOURS, len(labels) - 1))
  clock.log("retrieval metrics")
  correct = labels[neighbours[:, 0]] == labels  # leave-one-out 1-NN
  arrays = {"labels": labels, "neighbours": neighbours, "correct": correct}
  metrics.update({key: math.nan for key in _UNCERTAINTY_KEYS})
  if not stochastic:
    return metrics, arrays
  ood = predict(ood.images, drop=("samples",))
  clock.log("embedding the OOD images")
  uncertainty, ood_uncertainty = test["uncertainty"], ood["uncertainty"]
  metrics.update(evaluation.OODEvaluator(prefix="ood/").run(uncertainty, ood_uncertainty))
  metrics["ood_auroc"], metrics["ood_auprc"] = metrics["ood/auroc"], metrics["ood/auprc"]
  # The paper's sparsification ranks a query by its own and its retrieved neighbour's uncertainty.
  pair_uncertainty = uncertainty + uncertainty[neighbours[:, 0]]
  metrics.update(evaluation.SparsificationEvaluator(prefix="sparsification/").run(
      pair_uncertainty, correct))
  metrics["ausc"] = 1.0 - metrics["sparsification/ausc"]
  reference = predict(references.images, drop=("samples",))["mean"]
  clock.log("embedding the calibration references")
  calibration = evaluation.retrieval_calibration(
      np.swapaxes(test["samples"], 0, 1), labels, reference, references.labels,
      num_bins=config.calibration_bins)
  clock.log("retrieval calibration")
  metrics["ece"] = calibration.ece
  metrics["calibration_accuracy"] = float(np.mean(calibration.correct))
  metrics["calibration_mean_confidence"] = float(np.mean(calibration.confidences))
  metrics["uncertainty_mean_test"] = float(np.mean(uncertainty))
  metrics["uncertainty_mean_ood"] = float(np.mean(ood_uncertainty))
  arrays.update(uncertainty=uncertainty, ood_uncertainty=ood_uncertainty,
                pair_uncertainty=pair_uncertainty, confidences=calibration.confidences,
                calibration_correct=calibration.correct)
  return metrics, arrays


# ----------------------------------------------------------------------------
# Figures.


def write_figures(workdir: str, method: str, arrays: dict, test_images: np.ndarray,
                  config) -> None:
  """The protocol's figures of one run in ``workdir`` (none for a model without uncertainty)."""
  if "uncertainty" not in arrays:
    return  # the deterministic model: nothing ranks its queries
  scores = np.r_[arrays["uncertainty"], arrays["ood_uncertainty"]]
  is_ood = np.r_[np.zeros(len(arrays["uncertainty"])), np.ones(len(arrays["ood_uncertainty"]))]
  plotting.plot_roc_curves({method: (scores, is_ood)}, path=os.path.join(workdir, "roc_ood.png"),
                           title=f"OOD: {config.dataset} test vs {config.ood_dataset} test")
  plotting.plot_sparsification({method: arrays["pair_uncertainty"]},
                               1.0 - arrays["correct"].astype(float),
                               path=os.path.join(workdir, "sparsification.png"),
                               title="1-NN error, query + neighbour uncertainty removed first")
  plotting.plot_reliability_diagram(arrays["confidences"], arrays["calibration_correct"],
                                    num_bins=config.calibration_bins,
                                    path=os.path.join(workdir, "reliability.png"),
                                    title=method)
  plotting.plot_retrievals(arrays, test_images, os.path.join(workdir, "retrievals.png"),
                   f"{method}: most and least certain {config.dataset} test queries and their "
                   "nearest test images (green: same class)")


def plot_method_comparison(workdirs: dict[str, str], out_dir: str) -> list[str]:
  """ROC, sparsification and reliability curves of several finished runs, one figure each.

  Reads each run's ``scores.npz``, so nothing is re-evaluated.

  Args:
    workdirs: ``{label: workdir}`` of finished runs (the deterministic model
      has no uncertainty and is skipped).
    out_dir: where ``roc_ood_methods.png``, ``sparsification_methods.png``
      and ``reliability_methods.png`` are written.

  Returns:
    The paths written.

  Raises:
    FileNotFoundError: a workdir without ``scores.npz``.
    ValueError: no run with an uncertainty.
  """
  runs = {}
  for label, workdir in workdirs.items():
    with np.load(os.path.join(workdir, "scores.npz")) as scores:
      if "uncertainty" in scores:
        runs[label] = {k: scores[k] for k in scores.files}
  if not runs:
    raise ValueError("none of the runs has an uncertainty to compare.")
  os.makedirs(out_dir, exist_ok=True)
  roc_path = os.path.join(out_dir, "roc_ood_methods.png")
  plotting.plot_roc_curves(
      {label: (np.r_[r["uncertainty"], r["ood_uncertainty"]],
               np.r_[np.zeros(len(r["uncertainty"])), np.ones(len(r["ood_uncertainty"]))])
       for label, r in runs.items()}, path=roc_path, title="OOD detection")
  fig = Figure(figsize=(5.5, 4.5))
  ax = fig.add_subplot()
  for label, r in runs.items():
    curve = evaluation.sparsification_curve(r["pair_uncertainty"], 1.0 - r["correct"])
    ax.plot(curve.fraction_removed, 1.0 - curve.error,
            label=f"{label} AUSC {1.0 - np.mean(curve.error):.3f}")
  ax.set_xlabel("fraction of most uncertain queries removed")
  ax.set_ylabel("1-NN accuracy of the rest")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  sparsification_path = os.path.join(out_dir, "sparsification_methods.png")
  fig.savefig(sparsification_path, dpi=110)
  fig = Figure(figsize=(5.5, 4.5))
  ax = fig.add_subplot()
  ax.plot([0, 1], [0, 1], color="0.4", ls="--", lw=1, label="calibrated")
  for label, r in runs.items():
    with open(os.path.join(workdirs[label], "config.json"), encoding="utf-8") as f:
      bins = json.load(f)["calibration_bins"]
    diagram = evaluation.reliability_diagram(r["confidences"], r["calibration_correct"], bins)
    filled = diagram.count > 0
    ece = evaluation.expected_calibration_error(r["confidences"], r["calibration_correct"], bins)
    ax.plot(diagram.confidence[filled], diagram.accuracy[filled], marker="o", ms=3,
            label=f"{label} ECE {ece:.3f}")
  ax.set_xlabel("confidence (mean of the bin)")
  ax.set_ylabel("accuracy of the bin")
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  reliability_path = os.path.join(out_dir, "reliability_methods.png")
  fig.savefig(reliability_path, dpi=110)
  return [roc_path, sparsification_path, reliability_path]


