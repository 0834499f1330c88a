"""Confidence evaluation of a trained model: calibration, selective accuracy and OOD detection.

Every confidence score the model can give is evaluated the same way
(:mod:`sphereembed.evaluation`):

* ``centroid``: the cosine to the nearest centroid; class probabilities
  ``softmax(cos / T)``.
* ``kappa`` (vMF heads): the concentration; class probabilities are the vMF
  posterior ``softmax(kappa(x) cos)`` (:mod:`sphereembed.confidence`).
* ``sigma`` (Gaussian heads): the predicted scale; class probabilities
  ``softmax(-||x - c_k||^2 / (2 sigma^2))``, the Gaussian posterior.
* ``softmax`` (classifier heads): the classifier's probabilities.

For each score: ``{score}/accuracy_at_{p}`` ranks the test samples by the
score itself (the most certain ``p`` percent), ``{score}/ood_*`` detects the
out-of-distribution set by the same score, and ``{score}/probabilities/*``
and ``{score}/calibrated/*`` give ECE, Brier and the rest for the class
probabilities, raw and after temperature scaling fitted on a held-out
validation split (``{score}/temperature``); ``{score}/isotonic/*`` the
top-class confidence after isotonic regression fitted on the same split
(no Brier: it calibrates the top class only). Predictions are the argmax of the
class probabilities, i.e. the nearest centroid for all but ``softmax``.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from sphereembed import confidence as confidence_lib
from sphereembed import plotting
from sphereembed.evaluation import calibration
from sphereembed.evaluation.evaluators import CalibrationEvaluator, OODEvaluator
from sphereembed.prediction import confidence_scores

__all__ = ["confidence_scores", "evaluate_confidence", "plot_confidence_figures"]


def _order_confidence(uncertainty: np.ndarray) -> np.ndarray:
  """A confidence in [0, 1] with the order of ``-uncertainty`` (ties kept)."""
  _, rank = np.unique(-uncertainty, return_inverse=True)
  return rank.astype(np.float64) / max(int(rank.max()), 1)


def evaluate_confidence(test_outputs, test_labels, centroids, *, validation_outputs=None,
                        validation_labels=None, ood_outputs=None, num_bins: int = 15,
                        coverages=(0.8,)) -> dict[str, float]:
  """Calibration, accuracy at coverage and OOD detection for every score of the model.

  Args:
    test_outputs: the model's outputs on the in-distribution test set.
    test_labels: ``(N,)`` int labels of the test set.
    centroids: ``(K, D)`` class centroids.
    validation_outputs, validation_labels: a held-out split for temperature
      scaling (no ``calibrated`` keys without it).
    ood_outputs: outputs on an out-of-distribution set (no ``ood`` keys
      without it).
    num_bins: ECE bins.
    coverages: the accuracy-at-coverage fractions.

  Returns:
    A flat dict of floats, keys ``{score}/...`` (see the module docstring).
  """
  test_labels = np.asarray(test_labels)
  test_scores = confidence_scores(test_outputs, centroids)
  validation_scores = (confidence_scores(validation_outputs, centroids)
                       if validation_outputs is not None else None)
  ood_scores = confidence_scores(ood_outputs, centroids) if ood_outputs is not None else None
  results: dict[str, float] = {}

  def calibrated_metrics(prefix):
    return CalibrationEvaluator(num_bins=num_bins, coverages=coverages, prefix=prefix)

  for name, (logits, uncertainty) in test_scores.items():
    correct = np.argmax(logits, axis=1) == test_labels
    results[f"{name}/accuracy"] = float(np.mean(correct))
    for coverage in coverages:
      key = f"{name}/accuracy_at_{round(100 * coverage):d}"
      results[key] = calibration.accuracy_at_coverage(_order_confidence(uncertainty), correct,
                                                      coverage)
    probabilities = np.asarray(jax.nn.softmax(logits, axis=-1))
    results.update(calibrated_metrics(f"{name}/probabilities/").run(
        probabilities=probabilities, labels=test_labels))
    if ood_scores is not None:
      results.update(OODEvaluator(prefix=f"{name}/ood_").run(uncertainty, ood_scores[name][1]))
    if validation_scores is not None:
      temperature = confidence_lib.fit_temperature(validation_scores[name][0], validation_labels)
      results[f"{name}/temperature"] = temperature
      calibrated = np.asarray(jax.nn.softmax(logits / temperature, axis=-1))
      results.update(calibrated_metrics(f"{name}/calibrated/").run(
          probabilities=calibrated, labels=test_labels))
      validation_probabilities = np.asarray(jax.nn.softmax(validation_scores[name][0], axis=-1))
      calibrator = confidence_lib.fit_isotonic(
          validation_probabilities.max(axis=1),
          np.argmax(validation_probabilities, axis=1) == np.asarray(validation_labels))
      results.update(calibrated_metrics(f"{name}/isotonic/").run(
          calibrator(probabilities.max(axis=1)), correct))
      if ood_scores is not None:
        ood_calibrated = np.asarray(jax.nn.softmax(ood_scores[name][0] / temperature, axis=-1))
        results.update(OODEvaluator(prefix=f"{name}/calibrated/ood_").run(
            -calibrated.max(axis=1), -ood_calibrated.max(axis=1)))
  return results


# How each score is shown on a figure axis: -uncertainty, named.
_SCORE_LABELS = {"centroid": "cosine to the nearest centroid", "kappa": "kappa",
                 "sigma": "-log sigma", "softmax": "max softmax probability"}


def plot_confidence_figures(workdir: str, test_outputs, test_labels, centroids, *,
                            validation_outputs=None, validation_labels=None,
                            ood_outputs=None, num_bins: int = 15, in_name: str | None = None,
                            ood_name: str | None = None, with_descriptions: bool = False):
  """The confidence figures, one PNG each, into ``workdir``.

  * ``confidence_boxplot_{score}.png``: the score of correct, wrong and OOD
    samples;
  * ``reliability_{score}.png``: the reliability diagram of the class
    posterior's top probability, and ``reliability_{score}_isotonic.png``
    after isotonic calibration on the validation split;
  * ``risk_coverage.png``: selective risk of every score;
  * ``ood_roc.png``: OOD detection ROC of every score (with an OOD set);
  * ``kappa_vs_softmax.png``: kappa against the classifier's probability
    (models with both heads).

  Args:
    workdir: the output folder.
    test_outputs, test_labels, centroids: as for :func:`evaluate_confidence`.
    validation_outputs, validation_labels, ood_outputs: likewise.
    num_bins: reliability-diagram bins.
    in_name, ood_name: names of the test and OOD sets for the titles and
      legends (e.g. ``"MNIST test"``, ``"Fashion-MNIST test"``).
    with_descriptions: return ``(path, one-line description)`` pairs, most
      useful first, ready for :func:`sphereembed.plotting.write_figure_index`.

  Returns:
    The paths written, in the order written; with ``with_descriptions``,
    ``(path, description)`` pairs, most useful first.
  """
  test_labels = np.asarray(test_labels)
  test_scores = confidence_scores(test_outputs, centroids)
  ood_scores = confidence_scores(ood_outputs, centroids) if ood_outputs is not None else None
  validation_scores = (confidence_scores(validation_outputs, centroids)
                       if validation_outputs is not None else None)
  paths = []
  on = f" on {in_name}" if in_name else ""

  def path(name):
    paths.append(os.path.join(workdir, name))
    return paths[-1]

  selective, roc = {}, {}
  for name, (logits, uncertainty) in test_scores.items():
    probabilities = np.asarray(jax.nn.softmax(logits, axis=-1))
    correct = np.argmax(logits, axis=1) == test_labels
    label = _SCORE_LABELS.get(name, name)
    plotting.plot_confidence_boxplot(
        -uncertainty, correct, None if ood_scores is None else -ood_scores[name][1],
        ylabel=label, ood_name=ood_name, title=f"{label} by outcome{on}",
        log_scale=None if name == "kappa" else False,
        path=path(f"confidence_boxplot_{name}.png"))
    plotting.plot_reliability_diagram(probabilities.max(axis=1), correct, num_bins=num_bins,
                                      title=f"{name} posterior, raw",
                                      path=path(f"reliability_{name}.png"))
    if validation_scores is not None:
      validation_probabilities = np.asarray(jax.nn.softmax(validation_scores[name][0], axis=-1))
      calibrator = confidence_lib.fit_isotonic(
          validation_probabilities.max(axis=1),
          np.argmax(validation_probabilities, axis=1) == np.asarray(validation_labels))
      plotting.plot_reliability_diagram(calibrator(probabilities.max(axis=1)), correct,
                                        num_bins=num_bins, title=f"{name} posterior, isotonic",
                                        path=path(f"reliability_{name}_isotonic.png"))
    selective[label] = -uncertainty
    if ood_scores is not None:
      ood_uncertainty = ood_scores[name][1]
      roc[label] = (np.concatenate([uncertainty, ood_uncertainty]),
                    np.concatenate([np.zeros(len(uncertainty)), np.ones(len(ood_uncertainty))]))
  correct = np.argmax(test_scores["centroid"][0], axis=1) == test_labels
  plotting.plot_risk_coverage(selective, correct, title=f"nearest-centroid prediction{on}",
                              path=path("risk_coverage.png"))
  if roc:
    plotting.plot_roc_curves(roc, title="OOD detection", in_name=in_name, ood_name=ood_name,
                             path=path("ood_roc.png"))
  if "kappa" in test_scores and "softmax" in test_scores:
    softmax_logits = test_scores["softmax"][0]
    plotting.plot_confidence_scatter(
        -test_scores["kappa"][1], np.asarray(jax.nn.softmax(softmax_logits, axis=-1)).max(axis=1),
        np.argmax(softmax_logits, axis=1) == test_labels, xlabel="kappa", log_x=True,
        title=in_name or "", path=path("kappa_vs_softmax.png"))
  if with_descriptions:
    return plotting.figure_entries(paths)
  return paths
