"""Uncertainty: OOD detection, sparsification, error-versus-reject and correlation with performance.

Conventions shared by every function here:

* ``uncertainties`` (and OOD ``scores``) are real numbers where **larger means
  more uncertain**; pass ``-confidence`` (or ``1 - confidence``) for a
  confidence.
* For OOD detection the out-of-distribution set is the **positive** class.
* ``errors`` are per-sample losses (0/1 errors or any real value, e.g. an
  end-point error); ``correct`` and ``performance`` are per-sample scores in
  ``[0, 1]`` where larger is better, and the error is ``1 - correct``.
* Ranking by uncertainty resolves ties in expectation (tied samples in a
  random order, the value averaged over those orders), as in
  :mod:`sphereembed.evaluation.calibration`.

Pure NumPy on host arrays (JAX arrays are accepted); returns Python floats or
NumPy arrays. SciPy is not needed: Spearman's and Kendall's coefficients are
computed here (equal to ``scipy.stats.spearmanr`` and ``kendalltau``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from sphereembed.evaluation import checks, verification

__all__ = [
    "BinnedPerformance",
    "ErrorRejectCurve",
    "SparsificationCurve",
    "ause",
    "ausc",
    "binned_performance",
    "error_reject_curve",
    "errors_from_correct",
    "kendall_tau",
    "ood_auprc",
    "ood_auroc",
    "ood_fpr_at_tpr",
    "oracle_ausc",
    "prediction_rejection_ratio",
    "sparsification_curve",
    "spearman_rho",
    "uncertainty_correlation",
]


# ----------------------------------------------------------------------------
# Out-of-distribution detection.


def _in_and_out(in_scores, out_scores):
  in_scores = checks.vector(in_scores, "in_scores")
  out_scores = checks.vector(out_scores, "out_scores")
  scores = np.concatenate([in_scores, out_scores])
  is_out = np.r_[np.zeros(len(in_scores), bool), np.ones(len(out_scores), bool)]
  return scores, is_out


def ood_auroc(in_scores, out_scores) -> float:
  """AUROC of telling OOD from in-distribution samples by uncertainty.

  ``P(out > in) + P(out == in) / 2`` over (in, out) pairs: ties count 1/2, as
  in scikit-learn's ``roc_auc_score`` with OOD as the positive class.

  Args:
    in_scores: ``(N_in,)`` uncertainties of in-distribution samples (larger =
      more uncertain).
    out_scores: ``(N_out,)`` uncertainties of OOD samples.

  Returns:
    The AUROC in ``[0, 1]`` (0.5 = chance).

  Raises:
    ValueError: for an empty set or NaN scores.

  References:
    Hendrycks & Gimpel, "A Baseline for Detecting Misclassified and
    Out-of-Distribution Examples in Neural Networks", ICLR 2017.

  Example:
    >>> from sphereembed.evaluation.uncertainty import ood_auroc
    >>> print(f"{ood_auroc([0.1, 0.4, 0.3], [0.5, 0.3]):.4f}")
    0.7500
  """
  return verification.roc_auc(*_in_and_out(in_scores, out_scores))


def ood_auprc(in_scores, out_scores) -> float:
  """AUPRC of detecting OOD samples by uncertainty: the average precision, OOD positive.

  Average precision as in scikit-learn's ``average_precision_score``
  (step-wise, not a trapezoid); see
  :func:`sphereembed.evaluation.verification.average_precision`. Papers call
  this AUPR-Out; AUPR-In is ``ood_auprc(-out_scores, -in_scores)``.

  Args:
    in_scores: ``(N_in,)`` uncertainties of in-distribution samples.
    out_scores: ``(N_out,)`` uncertainties of OOD samples.

  Returns:
    The AUPRC in ``[0, 1]``; chance level is the OOD fraction.

  Raises:
    ValueError: for an empty set or NaN scores.

  Example:
    >>> from sphereembed.evaluation.uncertainty import ood_auprc
    >>> print(f"{ood_auprc([0.1, 0.4, 0.3], [0.5, 0.3]):.4f}")
    0.7500
  """
  return verification.average_precision(*_in_and_out(in_scores, out_scores))


def ood_fpr_at_tpr(in_scores, out_scores, tpr: float = 0.95) -> float:
  """FPR at ``tpr`` TPR (FPR95): the share of OOD passed while ``tpr`` of in-distribution passes.

  The convention of ODIN and OpenOOD, with **in-distribution as the
  positive** class: the threshold ``t`` is the smallest in-distribution
  uncertainty with at least ``ceil(tpr * N_in)`` in-distribution samples at
  or below it, and the result is the fraction of OOD samples with
  uncertainty ``<= t`` (lower is better).

  Args:
    in_scores: ``(N_in,)`` uncertainties of in-distribution samples.
    out_scores: ``(N_out,)`` uncertainties of OOD samples.
    tpr: the in-distribution pass rate, in ``(0, 1]``.

  Returns:
    The FPR in ``[0, 1]``.

  Raises:
    ValueError: for an empty set, NaN scores or ``tpr`` outside ``(0, 1]``.

  References:
    Liang, Li & Srikant, "Enhancing the Reliability of Out-of-distribution
    Image Detection in Neural Networks" (ODIN), ICLR 2018.

  Example:
    >>> from sphereembed.evaluation.uncertainty import ood_fpr_at_tpr
    >>> print(f"{ood_fpr_at_tpr([0.1, 0.2, 0.3, 0.4], [0.25, 0.9], tpr=0.75):.2f}")
    0.50
  """
  tpr = checks.check_fraction(tpr, "tpr")
  in_scores = np.sort(checks.vector(in_scores, "in_scores"))
  out_scores = checks.vector(out_scores, "out_scores")
  threshold = in_scores[checks.count(tpr, len(in_scores)) - 1]
  return float(np.mean(out_scores <= threshold))


# ----------------------------------------------------------------------------
# Sparsification.


def _uncertainties_and_errors(uncertainties, errors, errors_name="errors"):
  uncertainties = checks.vector(uncertainties, "uncertainties")
  errors = checks.finite_vector(errors, errors_name)
  checks.same_length(uncertainties=uncertainties, **{errors_name: errors})
  return uncertainties, errors


def errors_from_correct(uncertainties, correct) -> tuple[np.ndarray, np.ndarray]:
  """Checked ``(uncertainties, errors)`` with ``errors = 1 - correct``.

  The inputs of :func:`ausc` and :func:`ause`, for callers that need the
  per-sample errors themselves (e.g. the sparsification evaluator).

  Args:
    uncertainties: ``(N,)`` uncertainties (larger = more uncertain).
    correct: ``(N,)`` bools, or per-sample performance in ``[0, 1]``.

  Returns:
    Both as float64 ``(N,)`` arrays.

  Raises:
    ValueError: a wrong shape, NaN, ``correct`` outside ``[0, 1]`` or
      different lengths.

  Example:
    >>> from sphereembed.evaluation.uncertainty import errors_from_correct
    >>> uncertainties, errors = errors_from_correct([0.3, 0.1], [True, False])
    >>> print(uncertainties.tolist(), errors.tolist())
    [0.3, 0.1] [0.0, 1.0]
  """
  uncertainties = checks.vector(uncertainties, "uncertainties")
  correct = checks.unit_interval(correct, "correct")
  checks.same_length(uncertainties=uncertainties, correct=correct)
  return uncertainties, 1.0 - correct


def _retained_error_sums(keys, errors):
  """Expected error sums of the k samples kept first by ``keys``, for k = N..1."""
  return checks.expected_prefix_sums(keys, errors)[::-1]


class SparsificationCurve(NamedTuple):
  """Mean error of the samples left after removing the most uncertain fraction.

  Attributes:
    fraction_removed: ``k / N`` for k = 0..N-1.
    error: mean error of the ``N - k`` least uncertain samples.
    oracle_error: the same when the samples are removed by decreasing error
      (the best any uncertainty can do).
  """
  fraction_removed: np.ndarray
  error: np.ndarray
  oracle_error: np.ndarray


def sparsification_curve(uncertainties, errors) -> SparsificationCurve:
  """Sparsification curve: remove the most uncertain samples, track the mean error of the rest.

  Removing ``k`` samples keeps the ``N - k`` least uncertain ones (ties in
  expectation); the oracle removes the largest errors first. A good
  uncertainty gives a curve that falls like the oracle's.

  Args:
    uncertainties: ``(N,)`` uncertainties (larger = more uncertain).
    errors: ``(N,)`` finite per-sample errors (``1 - correct`` for
      classification).

  Returns:
    A :class:`SparsificationCurve` with ``N`` points.

  Raises:
    ValueError: for empty or mismatched inputs, NaN, or infinite errors.

  References:
    Ilg, Cicek, Galesso, Klein, Makansi, Hutter & Brox, "Uncertainty Estimates
    and Multi-Hypotheses Networks for Optical Flow", ECCV 2018.

  Example:
    >>> from sphereembed.evaluation.uncertainty import sparsification_curve
    >>> curve = sparsification_curve([0.9, 0.1, 0.5, 0.3], [1, 0, 0, 1])
    >>> print(curve.error.round(3).tolist(), curve.oracle_error.round(3).tolist())
    [0.5, 0.333, 0.5, 0.0] [0.5, 0.333, 0.0, 0.0]
  """
  uncertainties, errors = _uncertainties_and_errors(uncertainties, errors)
  n = len(errors)
  kept = np.arange(n, 0, -1)
  error = _retained_error_sums(-uncertainties, errors) / kept
  oracle = _retained_error_sums(-errors, errors) / kept
  return SparsificationCurve(np.arange(n) / n, error, oracle)


def ausc(uncertainties, correct) -> float:
  """Area under the sparsification curve **of the error** (lower is better).

  ``(1 / N) sum_{k=0..N-1} e(k / N)``, where ``e`` is the mean error ``1 -
  correct`` of the samples left after removing the ``k`` most uncertain: the
  area over ``[0, 1)`` with one step per sample. It equals the AURC of the
  confidence ``-uncertainties``
  (:func:`sphereembed.evaluation.calibration.aurc`). It is not
  oracle-subtracted; :func:`oracle_ausc` gives the oracle's area and
  :func:`ause` the difference.

  Args:
    uncertainties: ``(N,)`` uncertainties (larger = more uncertain).
    correct: ``(N,)`` bools, or per-sample performance in ``[0, 1]``.

  Returns:
    The area, in ``[0, 1]``.

  Raises:
    ValueError: for empty or mismatched inputs, NaN, or ``correct`` outside
      ``[0, 1]``.

  Example:
    >>> from sphereembed.evaluation.uncertainty import ausc
    >>> print(f"{ausc([0.9, 0.1, 0.5, 0.3], [0, 1, 1, 0]):.4f}")
    0.3333
  """
  return float(np.mean(sparsification_curve(*errors_from_correct(uncertainties, correct)).error))


def oracle_ausc(correct) -> float:
  """Area under the oracle sparsification curve (errors removed first): the best :func:`ausc`.

  Args:
    correct: ``(N,)`` bools, or per-sample performance in ``[0, 1]``.

  Returns:
    The area, in ``[0, 1]``.

  Example:
    >>> from sphereembed.evaluation.uncertainty import oracle_ausc
    >>> print(f"{oracle_ausc([0, 1, 1, 0]):.4f}")
    0.2083
  """
  errors = 1.0 - checks.unit_interval(correct, "correct")
  return float(np.mean(sparsification_curve(errors, errors).oracle_error))


def ause(uncertainties, correct) -> float:
  """Area under the sparsification error: :func:`ausc` minus :func:`oracle_ausc` (0 is perfect).

  Args:
    uncertainties: ``(N,)`` uncertainties (larger = more uncertain).
    correct: ``(N,)`` bools, or per-sample performance in ``[0, 1]``.

  Returns:
    The oracle-subtracted area, ``>= 0``.

  References:
    Ilg et al., ECCV 2018.

  Example:
    >>> from sphereembed.evaluation.uncertainty import ause
    >>> print(f"{ause([0.9, 0.1, 0.5, 0.3], [0, 1, 1, 0]):.4f}")
    0.1250
  """
  uncertainties, errors = errors_from_correct(uncertainties, correct)
  curve = sparsification_curve(uncertainties, errors)
  return float(np.mean(curve.error - curve.oracle_error))


# ----------------------------------------------------------------------------
# Error versus reject.


class ErrorRejectCurve(NamedTuple):
  """Error over the whole set when the rejected samples are handed to an oracle.

  Attributes:
    rejection_rate: ``k / N`` for k = 0..N.
    error: sum of the errors of the ``N - k`` least uncertain samples, over
      ``N`` (rejected samples count as error 0).
    oracle_error: the same when the largest errors are rejected first.
    random_error: the same for a random rejection, ``(1 - k / N) * mean error``.
  """
  rejection_rate: np.ndarray
  error: np.ndarray
  oracle_error: np.ndarray
  random_error: np.ndarray


def error_reject_curve(uncertainties, errors) -> ErrorRejectCurve:
  """Error-versus-reject curve: reject the most uncertain fraction, count its errors as fixed.

  Unlike the sparsification curve (mean error of the kept samples), the
  error is summed over the kept samples and divided by all ``N``: rejected
  samples are assumed to be passed to a human or an oracle. The curve falls
  from the mean error at rejection 0 to 0 at rejection 1.

  Args:
    uncertainties: ``(N,)`` uncertainties (larger = more uncertain).
    errors: ``(N,)`` finite per-sample errors.

  Returns:
    An :class:`ErrorRejectCurve` with ``N + 1`` points.

  Raises:
    ValueError: for empty or mismatched inputs, NaN, or infinite errors.

  References:
    Malinin, "Uncertainty Estimation in Deep Learning with Application to
    Spoken Language Assessment", PhD thesis, Cambridge 2019; Malinin et al.,
    "Shifts", 2021.

  Example:
    >>> from sphereembed.evaluation.uncertainty import error_reject_curve
    >>> curve = error_reject_curve([0.9, 0.1, 0.5, 0.3], [1, 0, 0, 1])
    >>> print(curve.error.tolist(), curve.oracle_error.tolist())
    [0.5, 0.25, 0.25, 0.0, 0.0] [0.5, 0.25, 0.0, 0.0, 0.0]
  """
  uncertainties, errors = _uncertainties_and_errors(uncertainties, errors)
  n = len(errors)
  rate = np.arange(n + 1) / n
  error = np.r_[_retained_error_sums(-uncertainties, errors), 0.0] / n
  oracle = np.r_[_retained_error_sums(-errors, errors), 0.0] / n
  return ErrorRejectCurve(rate, error, oracle, (1.0 - rate) * np.mean(errors))


def prediction_rejection_ratio(uncertainties, errors) -> float:
  """PRR: how much of the oracle's gain over random rejection the uncertainty achieves.

  ``(A_random - A) / (A_random - A_oracle)`` with ``A`` the trapezoidal area
  under the error-versus-reject curve (:func:`error_reject_curve`): 1 for an
  oracle ranking, 0 for a random one, negative when worse than random.

  Args:
    uncertainties: ``(N,)`` uncertainties (larger = more uncertain).
    errors: ``(N,)`` finite per-sample errors, not all equal.

  Returns:
    The PRR, at most 1.

  Raises:
    ValueError: as :func:`error_reject_curve`, or when all errors are equal
      (the oracle is no better than random).

  References:
    Malinin, PhD thesis, Cambridge 2019.

  Example:
    >>> from sphereembed.evaluation.uncertainty import prediction_rejection_ratio
    >>> print(f"{prediction_rejection_ratio([0.9, 0.1, 0.5, 0.3], [1, 0, 0, 1]):.4f}")
    0.5000
  """
  curve = error_reject_curve(uncertainties, errors)

  def area(y):
    return float(np.sum((y[1:] + y[:-1]) / 2.0) / (len(y) - 1))

  gain = area(curve.random_error) - area(curve.oracle_error)
  if gain <= 0:
    raise ValueError("All errors are equal: no rejection can beat a random one, PRR is undefined.")
  return (area(curve.random_error) - area(curve.error)) / gain


# ----------------------------------------------------------------------------
# Correlation of uncertainty with performance.


def _paired(uncertainties, performance):
  uncertainties = checks.vector(uncertainties, "uncertainties")
  performance = checks.vector(performance, "performance")
  n = checks.same_length(uncertainties=uncertainties, performance=performance)
  if n < 2:
    raise ValueError("A correlation needs at least 2 samples.")
  for name, values in (("uncertainties", uncertainties), ("performance", performance)):
    if (values == values[0]).all():
      raise ValueError(f"{name} is constant: the correlation is undefined.")
  return uncertainties, performance


def spearman_rho(uncertainties, performance) -> float:
  """Spearman's rho: Pearson's correlation of the average ranks (as ``scipy.stats.spearmanr``).

  Args:
    uncertainties: ``(N,)`` values.
    performance: ``(N,)`` values.

  Returns:
    rho in ``[-1, 1]``.

  Raises:
    ValueError: for fewer than 2 samples, mismatched lengths, NaN or a
      constant input.

  Example:
    >>> from sphereembed.evaluation.uncertainty import spearman_rho
    >>> print(f"{spearman_rho([0.1, 0.2, 0.3, 0.4], [1.0, 0.9, 0.95, 0.1]):.2f}")
    -0.80
  """
  x, y = _paired(uncertainties, performance)
  rx = verification.average_ranks(x)
  ry = verification.average_ranks(y)
  rx, ry = rx - rx.mean(), ry - ry.mean()
  return float(np.clip(np.sum(rx * ry) / np.sqrt(np.sum(rx * rx) * np.sum(ry * ry)), -1, 1))


def _strict_inversions(values: np.ndarray) -> int:
  """Number of pairs ``i < j`` with ``values[i] > values[j]``, in O(N log^2 N).

  A bottom-up merge sort: at width ``w`` each sorted right run counts, per
  element, the elements of its sorted left run that are greater, with one
  ``searchsorted`` over all runs at once (runs are made disjoint by offsets).
  """
  _, dense = np.unique(values, return_inverse=True)
  dense = dense.reshape(-1).astype(np.int64)
  n = len(dense)
  size = 1 << max(0, (n - 1).bit_length())
  # Padding at the end with a value above all others adds no inversion.
  runs = np.r_[dense, np.full(size - n, n, np.int64)]
  stride = n + 1
  inversions = 0
  width = 1
  while width < size:
    blocks = runs.reshape(-1, 2, width)
    offsets = (np.arange(len(blocks), dtype=np.int64) * stride)[:, None]
    left = (blocks[:, 0, :] + offsets).ravel()
    right = blocks[:, 1, :] + offsets
    not_greater = np.searchsorted(left, right.ravel(), side="right").reshape(right.shape)
    not_greater -= (np.arange(len(blocks)) * width)[:, None]
    inversions += int(np.sum(width - not_greater))
    runs = np.sort(runs.reshape(-1, 2 * width), axis=1).ravel()
    width *= 2
  return inversions


def _tied_pairs(values: np.ndarray) -> int:
  _, counts = np.unique(values, return_counts=True)
  return int(np.sum(counts * (counts - 1) // 2))


def kendall_tau(uncertainties, performance) -> float:
  """Kendall's tau-b (``scipy.stats.kendalltau``'s default), in O(N log^2 N).

  ``(concordant - discordant) / sqrt((n0 - n1) (n0 - n2))`` with ``n0`` all
  pairs and ``n1``, ``n2`` the pairs tied in each input (Knight's algorithm).

  Args:
    uncertainties: ``(N,)`` values.
    performance: ``(N,)`` values.

  Returns:
    tau-b in ``[-1, 1]``.

  Raises:
    ValueError: for fewer than 2 samples, mismatched lengths, NaN or a
      constant input.

  References:
    Knight, "A Computer Method for Calculating Kendall's Tau with Ungrouped
    Data", JASA 1966.

  Example:
    >>> from sphereembed.evaluation.uncertainty import kendall_tau
    >>> print(f"{kendall_tau([0.1, 0.2, 0.3, 0.4], [1.0, 0.9, 0.95, 0.1]):.4f}")
    -0.6667
  """
  x, y = _paired(uncertainties, performance)
  n = len(x)
  order = np.lexsort((y, x))  # by x, then y: pairs tied in x are never inversions
  discordant = _strict_inversions(y[order])
  all_pairs = n * (n - 1) // 2
  tied_x, tied_y = _tied_pairs(x), _tied_pairs(y)
  tied_xy = _tied_pairs(np.unique(np.stack([x, y], axis=1), axis=0, return_inverse=True)[1])
  concordant_minus_discordant = all_pairs - tied_x - tied_y + tied_xy - 2 * discordant
  tau = concordant_minus_discordant / np.sqrt(float(all_pairs - tied_x) * float(all_pairs - tied_y))
  return float(np.clip(tau, -1, 1))


def uncertainty_correlation(uncertainties, performance) -> dict[str, float]:
  """Spearman's rho and Kendall's tau-b of per-sample uncertainty against per-sample performance.

  Performance is any per-sample score where larger is better (correctness,
  average precision of a retrieval query, ...): a useful uncertainty has a
  **negative** correlation with it.

  Args:
    uncertainties: ``(N,)`` uncertainties.
    performance: ``(N,)`` per-sample performance.

  Returns:
    ``{"spearman": rho, "kendall": tau_b}``.

  Raises:
    ValueError: for fewer than 2 samples, mismatched lengths, NaN or a
      constant input.

  Example:
    >>> from sphereembed.evaluation.uncertainty import uncertainty_correlation
    >>> result = uncertainty_correlation([0.1, 0.2, 0.3, 0.4], [1.0, 0.9, 0.95, 0.1])
    >>> print({k: round(v, 4) for k, v in result.items()})
    {'spearman': -0.8, 'kendall': -0.6667}
  """
  return {"spearman": spearman_rho(uncertainties, performance),
          "kendall": kendall_tau(uncertainties, performance)}


class BinnedPerformance(NamedTuple):
  """Mean performance per uncertainty bin (the HIB paper's figure).

  Attributes:
    edges: ``num_bins + 1`` bin edges on the uncertainty axis.
    uncertainty: mean uncertainty of each bin (NaN when empty).
    performance: mean performance of each bin (NaN when empty).
    count: samples per bin.
  """
  edges: np.ndarray
  uncertainty: np.ndarray
  performance: np.ndarray
  count: np.ndarray


def binned_performance(uncertainties, performance, num_bins: int = 10, *,
                       strategy: str = "quantile") -> BinnedPerformance:
  """Bins the samples by uncertainty and averages the performance per bin.

  Strategies:

  * ``"quantile"``: samples sorted by uncertainty (stable: ties keep the
    input order) and split into ``num_bins`` chunks of equal size (sizes
    differ by at most 1, as ``np.array_split``); ``edges`` are the smallest
    uncertainty of each chunk and the largest overall. Needs ``N >=
    num_bins``.
  * ``"uniform"``: equal-width bins from the smallest to the largest
    uncertainty, ``edges[b] <= u < edges[b + 1]`` with the top bin closed;
    empty bins have NaN means.

  Args:
    uncertainties: ``(N,)`` finite uncertainties.
    performance: ``(N,)`` per-sample performance.
    num_bins: number of bins.
    strategy: ``"quantile"`` or ``"uniform"``.

  Returns:
    A :class:`BinnedPerformance`.

  Raises:
    ValueError: for empty or mismatched inputs, NaN or infinite values, an
      unknown strategy or too few samples.

  References:
    Oh, Murphy, Pan, Roth, Schroff & Gallagher, "Modeling Uncertainty with
    Hedged Instance Embedding", ICLR 2019 (Figure 5).

  Example:
    >>> from sphereembed.evaluation.uncertainty import binned_performance
    >>> binned = binned_performance([0.1, 0.2, 0.3, 0.4], [1.0, 0.8, 0.6, 0.0], num_bins=2)
    >>> print(binned.performance.round(3).tolist(), binned.count.tolist())
    [0.9, 0.3] [2, 2]
  """
  uncertainties = checks.finite_vector(uncertainties, "uncertainties")
  performance = checks.finite_vector(performance, "performance")
  n = checks.same_length(uncertainties=uncertainties, performance=performance)
  if int(num_bins) != num_bins or num_bins < 1:
    raise ValueError(f"num_bins must be a positive integer, got {num_bins}.")
  num_bins = int(num_bins)
  if strategy == "quantile":
    if n < num_bins:
      raise ValueError(f"{n} samples cannot fill {num_bins} quantile bins.")
    order = np.argsort(uncertainties, kind="stable")
    chunks = np.array_split(order, num_bins)
    bins = np.empty(n, np.int64)
    for b, chunk in enumerate(chunks):
      bins[chunk] = b
    edges = np.r_[[uncertainties[c[0]] for c in chunks], uncertainties[order[-1]]]
  elif strategy == "uniform":
    edges = np.linspace(uncertainties.min(), uncertainties.max(), num_bins + 1)
    bins = np.clip(np.searchsorted(edges, uncertainties, side="right") - 1, 0, num_bins - 1)
  else:
    raise ValueError(f"Unknown strategy {strategy!r}; expected 'quantile' or 'uniform'.")
  count = np.bincount(bins, minlength=num_bins)
  filled = count > 0
  mean_uncertainty = np.full(num_bins, np.nan)
  mean_performance = np.full(num_bins, np.nan)
  mean_uncertainty[filled] = np.bincount(bins, uncertainties, num_bins)[filled] / count[filled]
  mean_performance[filled] = np.bincount(bins, performance, num_bins)[filled] / count[filled]
  return BinnedPerformance(edges, mean_uncertainty, mean_performance, count)
