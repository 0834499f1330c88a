"""Verification: is a pair the same identity? ROC, average precision, EER, thresholds, a gallery.

Conventions:

* Pair **scores** are similarities: a larger score means "more likely the
  same". From distances pass ``scores = -distances``.
* A pair is **accepted** when ``score >= threshold``; with distances, when
  ``distance <= threshold`` (:func:`calibrate_threshold`,
  :class:`EnrolmentGallery`).
* FAR (false-accept rate) = accepted different pairs / different pairs, the
  false-positive rate; TPR (true-accept rate, TAR) = accepted same pairs /
  same pairs; FRR = 1 - TPR.
* Tied scores follow scikit-learn: a threshold accepts all pairs of a tied
  score or none, AUROC counts a tied (same, different) pair as 1/2.

The ranking functions (:func:`roc_curve`, :func:`roc_auc`,
:func:`average_precision`, :func:`precision_recall_curve`) take any binary
``labels`` and are also the base of the OOD metrics in
:mod:`sphereembed.evaluation.uncertainty`.
"""

from __future__ import annotations

from typing import Hashable, NamedTuple, Sequence

import jax
import numpy as np

from sphereembed import geometry
from sphereembed.evaluation import checks

__all__ = [
    "EnrolmentGallery",
    "RocCurve",
    "average_precision",
    "average_ranks",
    "calibrate_threshold",
    "equal_error_rate",
    "precision_recall_curve",
    "roc_auc",
    "roc_curve",
    "threshold_metrics",
    "tpr_at_far",
    "verification_ap",
]


def _scores_and_labels(scores, labels, *, both_classes: bool = True):
  scores = checks.vector(scores, "scores")
  labels = checks.binary(labels, "labels")
  checks.same_length(scores=scores, labels=labels)
  if both_classes and (labels.all() or not labels.any()):
    raise ValueError(
        "labels hold a single class; this metric needs both positives and negatives.")
  return scores, labels


def _cumulative_counts(scores: np.ndarray, labels: np.ndarray):
  """True and false positives accepted at each distinct score, by decreasing threshold."""
  order = np.argsort(-scores, kind="stable")
  sorted_scores, sorted_labels = scores[order], labels[order]
  # The last index of each run of equal scores: a threshold accepts the whole run.
  last = np.flatnonzero(np.r_[sorted_scores[1:] != sorted_scores[:-1], True])
  tps = np.cumsum(sorted_labels)[last].astype(np.float64)
  fps = last + 1.0 - tps
  return tps, fps, sorted_scores[last]


def average_ranks(x: np.ndarray) -> np.ndarray:
  """Ranks 1..N, tied values sharing the mean of their ranks (scipy's ``rankdata``).

  Args:
    x: ``(N,)`` values (no NaN).

  Returns:
    ``(N,)`` float64 ranks in the order of ``x``.

  Example:
    >>> from sphereembed.evaluation.verification import average_ranks
    >>> average_ranks([0.5, 0.1, 0.5, 0.9]).tolist()
    [2.5, 1.0, 2.5, 4.0]
  """
  _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
  ends = np.cumsum(counts)
  return (ends - (counts - 1) / 2.0)[inverse.reshape(-1)]


class RocCurve(NamedTuple):
  """ROC points by decreasing threshold, as scikit-learn's ``roc_curve`` keeping every point.

  Attributes:
    fpr: false-positive (false-accept) rate at each threshold, from 0.
    tpr: true-positive (true-accept) rate at each threshold, from 0.
    thresholds: ``inf`` (accept nothing), then each distinct score in
      decreasing order; accept when ``score >= threshold``.
  """
  fpr: np.ndarray
  tpr: np.ndarray
  thresholds: np.ndarray


def roc_curve(scores, labels) -> RocCurve:
  """The ROC curve of binary labels ranked by a score (larger = more likely positive).

  One point per distinct score, plus the start ``(0, 0)`` at threshold
  ``inf``; the values equal scikit-learn's ``roc_curve(labels, scores,
  drop_intermediate=False)``.

  Args:
    scores: ``(N,)`` scores (NaN is rejected, infinities are allowed).
    labels: ``(N,)`` bools or 0/1; 1 is the positive class (a "same" pair).

  Returns:
    A :class:`RocCurve`.

  Raises:
    ValueError: for empty or mismatched inputs, NaN scores, labels not 0/1
      or a single class.

  Example:
    >>> from sphereembed.evaluation.verification import roc_curve
    >>> curve = roc_curve([0.9, 0.8, 0.3, 0.1], [1, 0, 1, 0])
    >>> print(curve.fpr.tolist(), curve.tpr.tolist())
    [0.0, 0.0, 0.5, 0.5, 1.0] [0.0, 0.5, 0.5, 1.0, 1.0]
  """
  scores, labels = _scores_and_labels(scores, labels)
  tps, fps, thresholds = _cumulative_counts(scores, labels)
  return RocCurve(np.r_[0.0, fps / fps[-1]], np.r_[0.0, tps / tps[-1]], np.r_[np.inf, thresholds])


def roc_auc(scores, labels) -> float:
  """Area under the ROC curve: ``P(score_pos > score_neg) + P(tie) / 2``.

  Computed from average ranks (the Mann-Whitney statistic), so tied scores
  count 1/2 as in scikit-learn's ``roc_auc_score``.

  Args:
    scores: ``(N,)`` scores (larger = more likely positive).
    labels: ``(N,)`` bools or 0/1.

  Returns:
    The AUROC in ``[0, 1]``.

  Raises:
    ValueError: as :func:`roc_curve`.

  References:
    Hanley & McNeil, "The Meaning and Use of the Area under a Receiver
    Operating Characteristic (ROC) Curve", Radiology 1982.

  Example:
    >>> from sphereembed.evaluation.verification import roc_auc
    >>> print(f"{roc_auc([0.9, 0.5, 0.5, 0.1], [1, 1, 0, 0]):.3f}")
    0.875
  """
  scores, labels = _scores_and_labels(scores, labels)
  ranks = average_ranks(scores)
  num_positive = labels.sum()
  num_negative = len(labels) - num_positive
  u = ranks[labels].sum() - num_positive * (num_positive + 1) / 2.0
  return float(u / (num_positive * num_negative))


def average_precision(scores, labels) -> float:
  """Average precision: ``sum_n (R_n - R_{n-1}) P_n`` over the distinct thresholds.

  The step-wise area under the precision-recall curve of scikit-learn's
  ``average_precision_score`` (not a trapezoid, which is optimistic); tied
  scores enter together at one threshold.

  Args:
    scores: ``(N,)`` scores (larger = more likely positive).
    labels: ``(N,)`` bools or 0/1.

  Returns:
    The AP in ``[0, 1]``.

  Raises:
    ValueError: as :func:`roc_curve`.

  References:
    Zhu, "Recall, Precision and Average Precision", University of Waterloo
    2004; scikit-learn's ``average_precision_score``.

  Example:
    >>> from sphereembed.evaluation.verification import average_precision
    >>> print(f"{average_precision([0.9, 0.8, 0.3, 0.1], [1, 0, 1, 0]):.4f}")
    0.8333
  """
  scores, labels = _scores_and_labels(scores, labels)
  tps, fps, _ = _cumulative_counts(scores, labels)
  precision = tps / (tps + fps)
  recall_steps = np.diff(np.r_[0.0, tps]) / tps[-1]
  return float(np.sum(recall_steps * precision))


def precision_recall_curve(scores, labels):
  """Precision and recall at every distinct threshold, as scikit-learn's ``precision_recall_curve``.

  Args:
    scores: ``(N,)`` scores (larger = more likely positive).
    labels: ``(N,)`` bools or 0/1.

  Returns:
    ``(precision, recall, thresholds)``: thresholds in increasing order, and
    precision and recall with one more entry, the end point ``(1, 0)``.

  Raises:
    ValueError: as :func:`roc_curve`.

  Example:
    >>> from sphereembed.evaluation.verification import precision_recall_curve
    >>> precision, recall, _ = precision_recall_curve([0.9, 0.8, 0.3, 0.1], [1, 0, 1, 0])
    >>> print(precision.round(3).tolist(), recall.tolist())
    [0.5, 0.667, 0.5, 1.0, 1.0] [1.0, 1.0, 0.5, 0.5, 0.0]
  """
  scores, labels = _scores_and_labels(scores, labels)
  tps, fps, thresholds = _cumulative_counts(scores, labels)
  precision = tps / (tps + fps)
  recall = tps / tps[-1]
  return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], thresholds[::-1]


def verification_ap(scores, same) -> float:
  """Average precision of "same" pairs ranked by similarity score.

  Args:
    scores: ``(P,)`` pair similarities, larger = more similar (pass
      ``-distances`` for distances).
    same: ``(P,)`` bools: whether each pair shares its identity.

  Returns:
    The AP in ``[0, 1]``, as :func:`average_precision`.

  Raises:
    ValueError: for empty or mismatched inputs, NaN scores, or pairs that are
      all same or all different.

  Example:
    >>> from sphereembed.evaluation.verification import verification_ap
    >>> print(f"{verification_ap([0.9, 0.8, 0.3, 0.1], [True, False, True, False]):.4f}")
    0.8333
  """
  return average_precision(scores, same)


def tpr_at_far(scores, same, far: float) -> float:
  """True-accept rate at a false-accept rate of at most ``far`` (e.g. TAR@FAR=1e-3).

  The best ROC point whose FAR does not exceed ``far``: no interpolation
  between thresholds, so ties can make the FAR actually reached smaller
  than ``far``.

  Args:
    scores: ``(P,)`` pair similarities (larger = more similar).
    same: ``(P,)`` bools.
    far: the largest allowed false-accept rate, in ``[0, 1]``.

  Returns:
    The TPR in ``[0, 1]``.

  Raises:
    ValueError: as :func:`roc_curve`, or ``far`` outside ``[0, 1]``.

  Example:
    >>> from sphereembed.evaluation.verification import tpr_at_far
    >>> print(f"{tpr_at_far([0.9, 0.8, 0.3, 0.1], [1, 0, 1, 0], far=0.5):.2f}")
    1.00
  """
  far = checks.real_scalar(far, "far")
  if not 0 <= far <= 1:
    raise ValueError(f"far must lie in [0, 1], got {far}.")
  curve = roc_curve(scores, same)
  return float(np.max(curve.tpr[curve.fpr <= far]))


def equal_error_rate(scores, same) -> float:
  """Equal error rate: the FAR where it equals the FRR (``1 - TPR``).

  The crossing of the line ``FAR = 1 - TPR`` with the ROC curve joined
  linearly between its points (the usual ``brentq`` on ``interp1d(fpr, tpr)``
  recipe, computed exactly).

  Args:
    scores: ``(P,)`` pair similarities (larger = more similar).
    same: ``(P,)`` bools.

  Returns:
    The EER in ``[0, 1]``.

  Raises:
    ValueError: as :func:`roc_curve`.

  Example:
    >>> from sphereembed.evaluation.verification import equal_error_rate
    >>> print(f"{equal_error_rate([0.9, 0.8, 0.3, 0.1], [1, 0, 1, 0]):.2f}")
    0.50
  """
  curve = roc_curve(scores, same)
  gap = curve.fpr + curve.tpr - 1.0  # -1 at (0, 0), +1 at (1, 1)
  i = int(np.argmax(gap >= 0))
  if gap[i] == 0:
    return float(curve.fpr[i])
  alpha = -gap[i - 1] / (gap[i] - gap[i - 1])
  return float(curve.fpr[i - 1] + alpha * (curve.fpr[i] - curve.fpr[i - 1]))


def _distances_and_same(distances, same):
  distances = checks.vector(distances, "distances")
  same = checks.binary(same, "same")
  checks.same_length(distances=distances, same=same)
  if same.all() or not same.any():
    raise ValueError("same holds a single class; calibration needs same and different pairs.")
  return distances, same


def calibrate_threshold(distances, same, *, target_far: float | None = None) -> float:
  """The distance threshold for a target false-accept rate, or the most accurate one.

  A pair is accepted when ``distance <= threshold``. The threshold is one of
  the given distances, so the rates it reaches on this (validation) set are
  exact:

  * ``target_far`` given: the largest threshold whose FAR on these pairs is
    at most ``target_far``, i.e. the highest true-accept rate under that FAR.
    If even the smallest distance is a different pair beyond the target (e.g.
    ``target_far=0``), the returned value lies just below the smallest
    distance (``np.nextafter``): nothing is accepted.
  * ``target_far=None``: the threshold with the best accuracy
    ``(accepted same + rejected different) / pairs``; among equally accurate
    thresholds the smallest (the fewest false accepts). "Accept nothing" is a
    candidate too, returned as above.

  Args:
    distances: ``(P,)`` pair distances (smaller = more similar).
    same: ``(P,)`` bools: whether each pair shares its identity.
    target_far: the largest allowed false-accept rate, in ``[0, 1]``, or
      ``None``.

  Returns:
    The threshold as a Python float.

  Raises:
    ValueError: for empty or mismatched inputs, NaN, pairs that are all same
      or all different, or a ``target_far`` outside ``[0, 1]``.

  Example:
    >>> from sphereembed.evaluation.verification import calibrate_threshold
    >>> distances = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    >>> same = [True, True, False, True, False, False]
    >>> print(calibrate_threshold(distances, same))
    0.2
    >>> print(calibrate_threshold(distances, same, target_far=0.4))
    0.4
  """
  distances, same = _distances_and_same(distances, same)
  # Accept-by-distance is accept-by-score with scores = -distances.
  accepted_same, accepted_different, negated = _cumulative_counts(-distances, same)
  thresholds = -negated
  num_same = accepted_same[-1]
  num_different = accepted_different[-1]
  below = float(np.nextafter(thresholds[0], -np.inf))
  if target_far is not None:
    target_far = checks.real_scalar(target_far, "target_far")
    if not 0 <= target_far <= 1:
      raise ValueError(f"target_far must lie in [0, 1], got {target_far}.")
    allowed = np.flatnonzero(accepted_different / num_different <= target_far)
    # FAR grows with the threshold, so the allowed thresholds come first.
    return float(thresholds[allowed[-1]]) if allowed.size else below
  correct = np.r_[num_different, accepted_same + num_different - accepted_different]
  best = int(np.argmax(correct))  # the first maximum: the smallest threshold
  return below if best == 0 else float(thresholds[best - 1])


def threshold_metrics(distances, same, threshold: float) -> dict[str, float]:
  """Rates of the rule "accept when ``distance <= threshold``" on a set of pairs.

  Args:
    distances: ``(P,)`` pair distances.
    same: ``(P,)`` bools.
    threshold: the distance threshold, e.g. from :func:`calibrate_threshold`
      on a validation set.

  Returns:
    ``{"accuracy", "far", "frr", "tpr"}`` as fractions (``far`` is NaN
    without different pairs, ``frr`` and ``tpr`` without same pairs).

  Raises:
    ValueError: for empty or mismatched inputs or NaN.

  Example:
    >>> from sphereembed.evaluation.verification import threshold_metrics
    >>> rates = threshold_metrics([0.1, 0.2, 0.3, 0.4], [True, False, True, False], 0.25)
    >>> print({k: round(v, 2) for k, v in rates.items()})
    {'accuracy': 0.5, 'far': 0.5, 'frr': 0.5, 'tpr': 0.5}
  """
  distances = checks.vector(distances, "distances")
  same = checks.binary(same, "same")
  checks.same_length(distances=distances, same=same)
  accepted = distances <= checks.real_scalar(threshold, "threshold")
  num_same, num_different = same.sum(), (~same).sum()
  tpr = (accepted & same).sum() / num_same if num_same else np.nan
  far = (accepted & ~same).sum() / num_different if num_different else np.nan
  return {"accuracy": float(np.mean(accepted == same)), "far": float(far),
          "frr": float(1 - tpr), "tpr": float(tpr)}


class EnrolmentGallery:
  """Templates per identity; accepts a query whose nearest template of the claimed identity is close.

  The face-unlock protocol: each identity enrols several templates
  (embeddings of enrolment images); a query claiming identity ``c`` is
  accepted when ``min_t d(query, t) <= threshold`` over the templates ``t``
  of ``c``. Distances come from :func:`sphereembed.geometry.pairwise_distances`
  with the gallery's ``metric``. The threshold can be set directly or
  calibrated on validation claims with :meth:`calibrate`.

  Args:
    metric: a metric of :func:`sphereembed.geometry.pairwise_distances`
      (``"cosine"`` and ``"great_circle"`` expect unit vectors).
    threshold: the distance threshold, or ``None`` until :meth:`calibrate`.

  Example:
    >>> import numpy as np
    >>> from sphereembed.evaluation.verification import EnrolmentGallery
    >>> gallery = EnrolmentGallery(metric="euclidean", threshold=0.5)
    >>> gallery.enrol("alice", [[1.0, 0.0], [0.8, 0.6]])
    >>> gallery.enrol("bob", [[0.0, 1.0]])
    >>> gallery.verify([[0.9, 0.1], [0.9, 0.1]], ["alice", "bob"]).tolist()
    [True, False]
  """

  # Queries are compared with the templates in chunks of this many distances.
  _BLOCK = 1 << 22

  def __init__(self, metric: geometry.Metric = "euclidean", threshold: float | None = None):
    if metric not in geometry.METRICS:
      raise ValueError(f"Unknown metric {metric!r}; expected one of {geometry.METRICS}.")
    self.metric = metric
    self.threshold = None if threshold is None else checks.real_scalar(threshold, "threshold")
    self._templates: list[np.ndarray] = []
    self._owners: list[int] = []
    self._index: dict[Hashable, int] = {}

  @property
  def identities(self) -> list[Hashable]:
    """The enrolled identities, in enrolment order."""
    return list(self._index)

  @property
  def num_templates(self) -> int:
    return len(self._owners)

  def enrol(self, identity: Hashable, templates) -> None:
    """Adds templates ``(T, D)`` (or one ``(D,)``) to ``identity``; repeated calls add more."""
    templates = checks.real_array(templates, "templates")
    if templates.ndim == 1:
      templates = templates[None]
    if templates.ndim != 2 or templates.shape[0] == 0:
      raise ValueError(f"templates must have shape (T, D) with T >= 1, got {templates.shape}.")
    if not np.isfinite(templates).all():
      raise ValueError("templates contain NaN or infinite values.")
    if self._templates and templates.shape[1] != self._templates[0].shape[1]:
      raise ValueError(
          f"templates have dimension {templates.shape[1]}, the gallery "
          f"{self._templates[0].shape[1]}.")
    owner = self._index.setdefault(identity, len(self._index))
    self._templates.append(templates)
    self._owners.extend([owner] * len(templates))

  def _queries(self, queries, claimed=None):
    if not self._templates:
      raise ValueError("The gallery is empty: enrol templates first.")
    queries = checks.real_array(queries, "queries")
    if queries.ndim == 1:
      queries = queries[None]
    dim = self._templates[0].shape[1]
    if queries.ndim != 2 or queries.shape[0] == 0 or queries.shape[1] != dim:
      raise ValueError(f"queries must have shape (Q, {dim}) with Q >= 1, got {queries.shape}.")
    if not np.isfinite(queries).all():
      raise ValueError("queries contain NaN or infinite values.")
    if claimed is None:
      return queries, None
    claimed = list(claimed) if not isinstance(claimed, (str, bytes)) else [claimed]
    if len(claimed) != len(queries):
      raise ValueError(f"Length mismatch: {len(queries)} queries and {len(claimed)} claims.")
    unknown = [c for c in claimed if c not in self._index]
    if unknown:
      raise ValueError(f"Claimed identities not enrolled: {sorted(set(map(str, unknown)))}.")
    return queries, np.array([self._index[c] for c in claimed])

  def _distance_blocks(self, queries):
    """Yields (start, distances to all templates) for chunks of queries."""
    templates = np.concatenate(self._templates)
    step = max(1, self._BLOCK // len(templates))
    for start in range(0, len(queries), step):
      block = geometry.pairwise_distances(queries[start:start + step], templates,
                                          metric=self.metric)
      yield start, np.asarray(jax.device_get(block))

  def nearest_distances(self, queries, claimed: Sequence[Hashable]) -> np.ndarray:
    """``(Q,)`` distance from each query to its nearest template of its claimed identity."""
    queries, claims = self._queries(queries, claimed)
    owners = np.asarray(self._owners)
    nearest = np.empty(len(queries))
    for start, block in self._distance_blocks(queries):
      rows = claims[start:start + len(block)]
      nearest[start:start + len(block)] = np.min(
          np.where(owners[None, :] == rows[:, None], block, np.inf), axis=1)
    return nearest

  def _require_threshold(self) -> float:
    if self.threshold is None:
      raise ValueError("The gallery has no threshold: pass one or call calibrate() first.")
    # Checked again here: the attribute may have been assigned directly.
    return checks.real_scalar(self.threshold, "threshold")

  def verify(self, queries, claimed: Sequence[Hashable]) -> np.ndarray:
    """``(Q,)`` bools: accept each query's claim (nearest claimed template within the threshold)."""
    threshold = self._require_threshold()
    return self.nearest_distances(queries, claimed) <= threshold

  def identify(self, queries) -> tuple[list[Hashable | None], np.ndarray]:
    """Open-set identification: the identity of each query's nearest template, or ``None``.

    Returns:
      ``(identities, distances)``: the nearest template's identity (``None``
      when its distance exceeds the threshold) and that distance.
    """
    threshold = self._require_threshold()
    queries, _ = self._queries(queries)
    owners = np.asarray(self._owners)
    names = self.identities
    nearest = np.empty(len(queries))
    owner = np.empty(len(queries), dtype=np.int64)
    for start, block in self._distance_blocks(queries):
      columns = np.argmin(block, axis=1)
      nearest[start:start + len(block)] = block[np.arange(len(block)), columns]
      owner[start:start + len(block)] = owners[columns]
    identities = [names[o] if d <= threshold else None for o, d in zip(owner, nearest)]
    return identities, nearest

  def calibrate(self, queries, claimed: Sequence[Hashable], genuine, *,
                target_far: float | None = None) -> float:
    """Sets the threshold from validation claims with :func:`calibrate_threshold`.

    Args:
      queries: ``(Q, D)`` validation queries.
      claimed: the identity each query claims.
      genuine: ``(Q,)`` bools: whether each claim is true.
      target_far: the largest allowed false-accept rate of the claims, or
        ``None`` for the most accurate threshold.

    Returns:
      The new threshold.
    """
    self.threshold = calibrate_threshold(
        self.nearest_distances(queries, claimed), genuine, target_far=target_far)
    return self.threshold
