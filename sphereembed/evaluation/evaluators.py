"""Evaluators: small configured objects whose ``run(...)`` returns a flat dict of named floats.

Each evaluator bundles the metrics a results table reports for one task, so
an experiment can hand the dict straight to a metric writer
(``writer.write_scalars(step, evaluator.run(...))``, CLU style) or collect
several into one table. Keys are fixed by the evaluator's configuration and
carry an optional ``prefix`` (e.g. ``"test/"``).

Example:
  >>> from sphereembed.evaluation.evaluators import OODEvaluator
  >>> metrics = OODEvaluator(prefix="ood/").run([0.1, 0.2, 0.3], [0.25, 0.9])
  >>> print({k: round(v, 4) for k, v in metrics.items()})
  {'ood/auroc': 0.8333, 'ood/auprc': 0.8333, 'ood/auprc_in': 0.9167, 'ood/fpr_at_95_tpr': 0.5}
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from sphereembed import geometry
from sphereembed.evaluation import calibration, checks, uncertainty, verification

__all__ = [
    "CalibrationEvaluator",
    "Evaluator",
    "OODEvaluator",
    "RetrievalEvaluator",
    "SparsificationEvaluator",
    "UncertaintyCorrelationEvaluator",
    "VerificationEvaluator",
]


def _percent(fraction: float) -> str:
  """``0.8 -> "80"``, ``0.955 -> "95.5"``: a fraction as a key-friendly percentage."""
  return f"{round(100 * float(fraction), 6):g}"


@dataclasses.dataclass(frozen=True)
class Evaluator:
  """Base class: ``run(...)`` returns ``{prefix + name: float}``.

  Attributes:
    prefix: prepended to every key, e.g. ``"test/"``.
  """
  prefix: str = ""

  def run(self, *args, **kwargs) -> dict[str, float]:
    raise NotImplementedError

  def __call__(self, *args, **kwargs) -> dict[str, float]:
    return self.run(*args, **kwargs)

  def _named(self, values: dict) -> dict[str, float]:
    return {self.prefix + name: float(value) for name, value in values.items()}


@dataclasses.dataclass(frozen=True)
class CalibrationEvaluator(Evaluator):
  """Calibration and selective prediction of a classifier's confidences.

  Keys: ``accuracy``, ``mean_confidence``, ``ece``, ``mce``, ``aurc``,
  ``eaurc``, ``accuracy_at_{percent}`` per coverage (e.g.
  ``accuracy_at_80``) and, when probabilities and labels are given,
  ``brier``. All are fractions
  (:mod:`sphereembed.evaluation.calibration`).

  Attributes:
    num_bins: equal-width bins of ECE and MCE.
    coverages: coverages of the accuracy-at-coverage keys.

  Example:
    >>> from sphereembed.evaluation.evaluators import CalibrationEvaluator
    >>> metrics = CalibrationEvaluator(coverages=(0.5,)).run(
    ...     probabilities=[[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.8, 0.2]], labels=[0, 0, 1, 0])
    >>> print(f"{metrics['accuracy']:.2f} {metrics['accuracy_at_50']:.2f} {metrics['brier']:.3f}")
    0.75 1.00 0.250
  """
  num_bins: int = 15
  coverages: Sequence[float] = (0.5, 0.8, 0.9, 0.95)

  def run(self, confidences=None, correct=None, *, probabilities=None,
          labels=None) -> dict[str, float]:
    """Metrics from ``confidences`` and ``correct``, or from class probabilities.

    Args:
      confidences: ``(N,)`` confidences in ``[0, 1]``; with ``None``, the
        largest class probability.
      correct: ``(N,)`` bools; with ``None``, whether the most probable
        class is the label.
      probabilities: ``(N, C)`` class probabilities (also gives ``brier``).
      labels: ``(N,)`` int labels, needed with ``probabilities``.

    Returns:
      The flat dict of metrics.
    """
    if (confidences is None) != (correct is None):
      raise ValueError("Pass confidences and correct together.")
    if (probabilities is None) != (labels is None):
      raise ValueError("Pass probabilities and labels together.")
    if confidences is None:
      if probabilities is None:
        raise ValueError("Pass confidences and correct, or probabilities and labels.")
      p = np.asarray(probabilities)
      if p.ndim != 2:
        raise ValueError(f"probabilities must have shape (N, C), got {p.shape}.")
      confidences = p.max(axis=1)
      correct = np.argmax(p, axis=1) == np.asarray(labels)
    confidences = checks.unit_interval(confidences, "confidences")
    correct = checks.binary(correct, "correct")
    checks.same_length(confidences=confidences, correct=correct)
    values = {
        "accuracy": np.mean(correct),
        "mean_confidence": np.mean(confidences),
        "ece": calibration.expected_calibration_error(confidences, correct, self.num_bins),
        "mce": calibration.maximum_calibration_error(confidences, correct, self.num_bins),
        "aurc": calibration.aurc(confidences, correct),
        "eaurc": calibration.excess_aurc(confidences, correct),
    }
    for coverage in self.coverages:
      values[f"accuracy_at_{_percent(coverage)}"] = calibration.accuracy_at_coverage(
          confidences, correct, coverage)
    if probabilities is not None:
      values["brier"] = calibration.brier_score(probabilities, labels)
    return self._named(values)


@dataclasses.dataclass(frozen=True)
class OODEvaluator(Evaluator):
  """Out-of-distribution detection from uncertainties (larger = more uncertain).

  Keys: ``auroc`` and ``auprc`` (OOD positive, AUPR-Out), ``auprc_in``
  (in-distribution positive, ranked by ``-uncertainty``) and
  ``fpr_at_{percent}_tpr`` (:func:`~sphereembed.evaluation.uncertainty.ood_fpr_at_tpr`).
  Use ``prefix`` to name the OOD set, e.g. ``"ood_kmnist/"``.

  Attributes:
    tpr: the in-distribution pass rate of the FPR key.
  """
  tpr: float = 0.95

  def run(self, in_scores, out_scores) -> dict[str, float]:
    """Metrics from ``(N_in,)`` and ``(N_out,)`` uncertainties."""
    in_scores = checks.vector(in_scores, "in_scores")
    out_scores = checks.vector(out_scores, "out_scores")
    return self._named({
        "auroc": uncertainty.ood_auroc(in_scores, out_scores),
        "auprc": uncertainty.ood_auprc(in_scores, out_scores),
        "auprc_in": uncertainty.ood_auprc(-out_scores, -in_scores),
        f"fpr_at_{_percent(self.tpr)}_tpr": uncertainty.ood_fpr_at_tpr(
            in_scores, out_scores, self.tpr),
    })


@dataclasses.dataclass(frozen=True)
class VerificationEvaluator(Evaluator):
  """Pair verification from distances (smaller = more similar).

  Keys: ``ap`` (:func:`~sphereembed.evaluation.verification.verification_ap`
  of ``-distances``), ``roc_auc``, ``eer`` and ``tpr_at_far_{far}`` per FAR
  (e.g. ``tpr_at_far_0.001``); with a ``threshold`` (calibrated on a
  validation set), also ``threshold``, ``accuracy``, ``far`` and ``frr`` of
  the rule ``distance <= threshold``.

  Attributes:
    fars: false-accept rates of the TPR keys.
  """
  fars: Sequence[float] = (1e-3, 1e-2, 1e-1)

  def run(self, distances, same, *, threshold: float | None = None) -> dict[str, float]:
    """Metrics from ``(P,)`` pair distances and ``(P,)`` same-identity bools."""
    distances = checks.vector(distances, "distances")
    scores = -distances
    values = {
        "ap": verification.verification_ap(scores, same),
        "roc_auc": verification.roc_auc(scores, same),
        "eer": verification.equal_error_rate(scores, same),
    }
    for far in self.fars:
      values[f"tpr_at_far_{float(far):g}"] = verification.tpr_at_far(scores, same, far)
    if threshold is not None:
      rates = verification.threshold_metrics(distances, same, threshold)
      values.update(threshold=threshold, accuracy=rates["accuracy"], far=rates["far"],
                    frr=rates["frr"])
    return self._named(values)


@dataclasses.dataclass(frozen=True)
class SparsificationEvaluator(Evaluator):
  """Sparsification and rejection of per-sample errors by uncertainty.

  Keys (:mod:`sphereembed.evaluation.uncertainty`): ``ausc`` (area under the
  sparsification curve of the error), ``ausc_oracle``, ``ause`` (``ausc -
  ausc_oracle``), ``ausc_random`` (the mean error, the area of a random
  ranking) and ``prr`` (prediction rejection ratio; NaN when all samples are
  equally correct, where it is undefined).
  """

  def run(self, uncertainties, correct) -> dict[str, float]:
    """Metrics from ``(N,)`` uncertainties and ``(N,)`` correctness (bools or values in [0, 1])."""
    uncertainties, errors = uncertainty.errors_from_correct(uncertainties, correct)
    curve = uncertainty.sparsification_curve(uncertainties, errors)
    area, oracle = float(np.mean(curve.error)), float(np.mean(curve.oracle_error))
    prr = math.nan
    if (errors != errors[0]).any():
      prr = uncertainty.prediction_rejection_ratio(uncertainties, errors)
    return self._named({"ausc": area, "ausc_oracle": oracle, "ause": area - oracle,
                        "ausc_random": np.mean(errors), "prr": prr})


@dataclasses.dataclass(frozen=True)
class UncertaintyCorrelationEvaluator(Evaluator):
  """Rank correlation of per-sample uncertainty with per-sample performance.

  Keys: ``spearman`` and ``kendall`` (tau-b); a useful uncertainty gives
  negative values (see
  :func:`~sphereembed.evaluation.uncertainty.uncertainty_correlation`).
  """

  def run(self, uncertainties, performance) -> dict[str, float]:
    """Metrics from ``(N,)`` uncertainties and ``(N,)`` performance (larger = better)."""
    return self._named(uncertainty.uncertainty_correlation(uncertainties, performance))


@dataclasses.dataclass(frozen=True)
class RetrievalEvaluator(Evaluator):
  """Retrieval and kNN metrics of :func:`sphereembed.evaluation.retrieval.retrieval_metrics`.

  Keys: those of ``retrieval_metrics`` (``precision_at_1``, ``r_precision``,
  ``map_at_r``, ``map_at_{k}``, ``recall_at_{k}``, ``knn_accuracy``, ...).

  Attributes:
    ks: the cut-offs of the ``@k`` metrics.
    metric: a metric of :func:`sphereembed.geometry.pairwise_distances`.
    knn_k: neighbours voting in ``knn_accuracy`` (``None``: ``max(ks)``).
  """
  ks: Sequence[int] = (1, 5, 10)
  metric: geometry.Metric = "euclidean"
  knn_k: int | None = None

  def run(self, query, query_labels, reference=None, reference_labels=None) -> dict[str, float]:
    """Metrics of ``query`` against ``reference`` (or against itself, leaving each query out)."""
    # Imported here: the retrieval module pulls in the blocked top-k search,
    # which the other evaluators do not need.
    from sphereembed.evaluation import retrieval  # pylint: disable=import-outside-toplevel
    return self._named(retrieval.retrieval_metrics(
        query, query_labels, reference, reference_labels, ks=tuple(self.ks), metric=self.metric,
        knn_k=self.knn_k))
