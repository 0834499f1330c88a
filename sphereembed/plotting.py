"""Figures of embeddings on the sphere, training runs and evaluations (matplotlib, no screen needed).

The evaluation figures (ROC and PR curves, reliability diagrams,
sparsification and risk-coverage curves, confidence box plots, embeddings
coloured by confidence) compute their data with :mod:`sphereembed.evaluation`,
return the :class:`matplotlib.figure.Figure` and also save it as a PNG when
given a ``path``. They are built without pyplot: no window ever opens on a
server, the notebook's own backend is left alone, and figures that are not
kept are freed like any object.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import matplotlib
from matplotlib.figure import Figure
import numpy as np

from sphereembed.evaluation import calibration, checks, uncertainty, verification

__all__ = [
    "plot_binned_performance", "plot_circle", "plot_confidence_boxplot",
    "plot_confidence_scatter", "plot_embeddings",
    "plot_embeddings_by_confidence", "plot_pr_curves", "plot_reliability_diagram",
    "plot_risk_coverage", "plot_roc_curves", "plot_sparsification", "plot_sphere",
    "plot_training_curves", "plot_hib_embeddings", "plot_uncertain_images",
    "plot_uncertainty_bins", "plot_retrievals", "metric_labels", "describe_figure",
    "figure_entries", "write_figure_index",
]


def _class_colors(num_classes: int):
  cmap = matplotlib.colormaps["tab10" if num_classes <= 10 else "tab20"]
  return [cmap(k % cmap.N) for k in range(num_classes)]


def _prepare(embeddings, labels, centroids, class_names, max_points, seed):
  """NumPy inputs, class names and colours, and a random subset of at most ``max_points``."""
  embeddings, labels, centroids = map(np.asarray, (embeddings, labels, centroids))
  num_classes = centroids.shape[0]
  names = class_names or [str(k) for k in range(num_classes)]
  index = np.random.default_rng(seed).permutation(len(labels))[:max_points]
  return embeddings, labels, centroids, names, _class_colors(num_classes), index


def plot_circle(embeddings, labels, centroids, path: str, *, class_names: Sequence[str] | None = None,
                title: str = "", max_points: int = 5000, seed: int = 0,
                log_histogram: bool = True) -> str:
  """2-D unit embeddings on the circle, coloured by class, with the centroids.

  The points are drawn in a thin ring just inside the unit circle, each at
  a random radius in it, so that a class's pile of thousands of points
  shows as a filled patch rather than one dot; the centroids are coloured
  ticks outside the circle, with the class name, so that they hide no
  point. A histogram of angles per class on the right (with a legend) shows
  how much the classes overlap.

  Args:
    embeddings: ``(N, 2)`` embeddings (projected onto the circle).
    labels: ``(N,)`` int classes.
    centroids: ``(K, 2)`` class centroids.
    path: the PNG written.
    class_names: names of the classes, ``str(k)`` by default.
    title: the title of the circle panel.
    max_points: at most this many points, a random subset.
    seed: seed of the subset and of the radial jitter.
    log_histogram: a logarithmic count axis for the histogram, which shows
      the few samples between the classes' peaks.

  Returns:
    ``path``.
  """
  embeddings, labels, centroids, names, colors, index = _prepare(
      embeddings, labels, centroids, class_names, max_points, seed)
  num_classes = centroids.shape[0]
  angles = np.arctan2(embeddings[index, 1], embeddings[index, 0])
  radii = 1.0 - 0.12 * np.random.default_rng(seed + 1).random(len(index))
  fig = Figure(figsize=(13, 5.5))
  ax, hist = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.3]})
  circle = np.linspace(-np.pi, np.pi, 400)
  ax.plot(np.cos(circle), np.sin(circle), color="0.7", lw=0.8)
  for k in range(num_classes):
    chosen = labels[index] == k
    ax.scatter(radii[chosen] * np.cos(angles[chosen]), radii[chosen] * np.sin(angles[chosen]),
               s=3, color=colors[k], alpha=0.4, linewidths=0, zorder=2)
    c = centroids[k] / max(np.linalg.norm(centroids[k]), 1e-12)
    ax.plot([1.03 * c[0], 1.13 * c[0]], [1.03 * c[1], 1.13 * c[1]], color=colors[k], lw=3,
            solid_capstyle="butt", zorder=3)
    ax.annotate(names[k], 1.22 * c, ha="center", va="center", fontsize=9, color="black")
    hist.hist(angles[chosen], bins=180, range=(-np.pi, np.pi), color=colors[k], alpha=0.6,
              histtype="stepfilled", edgecolor=colors[k], label=names[k])
  ax.set_aspect("equal")
  ax.set_xlim(-1.35, 1.35)
  ax.set_ylim(-1.35, 1.35)
  ax.set_title(title or "test embeddings on the circle", fontsize=10)
  ax.text(0.5, -0.02, "dots: test embeddings (spread radially to show density); "
          "ticks outside: class centroids", transform=ax.transAxes, ha="center", va="top",
          fontsize=8, color="0.3")
  ax.axis("off")
  if log_histogram:
    hist.set_yscale("log")
  hist.set_xlim(-np.pi, np.pi)
  hist.set_xlabel("angle of the embedding (radians)")
  hist.set_ylabel("test samples per bin" + (" (log scale)" if log_histogram else ""))
  hist.set_title("angle histogram per class: overlaps are confusions")
  hist.legend(title="class", fontsize=8, ncol=1 if num_classes <= 12 else 2, loc="upper left",
              bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
  hist.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  return path


def plot_sphere(embeddings, labels, centroids, path: str, *, class_names: Sequence[str] | None = None,
                title: str = "", max_points: int = 4000, seed: int = 0) -> str:
  """3-D unit embeddings on the sphere from two opposite viewpoints.

  Returns:
    ``path``.
  """
  embeddings, labels, centroids, names, colors, index = _prepare(
      embeddings, labels, centroids, class_names, max_points, seed)
  num_classes = centroids.shape[0]
  fig = Figure(figsize=(12, 6))
  u, v = np.mgrid[0:2 * np.pi:30j, 0:np.pi:15j]
  for panel, azimuth in enumerate((30, 210)):
    ax = fig.add_subplot(1, 2, panel + 1, projection="3d")
    ax.plot_wireframe(np.cos(u) * np.sin(v), np.sin(u) * np.sin(v), np.cos(v), color="0.85", lw=0.4)
    for k in range(num_classes):
      chosen = index[labels[index] == k]
      ax.scatter(*embeddings[chosen].T, s=3, color=colors[k], alpha=0.4, linewidths=0,
                 label=names[k] if panel == 0 else None)
      # Hollow rings: the points under a centroid stay visible.
      c = centroids[k] / max(np.linalg.norm(centroids[k]), 1e-12)
      ax.scatter(*(1.04 * c), marker="o", s=90, facecolors="none", edgecolors=[colors[k]],
                 linewidths=2)
    ax.view_init(elev=20, azim=azimuth)
    ax.set_box_aspect((1, 1, 1))
    ax.set_axis_off()
  fig.legend(loc="center left", markerscale=4, fontsize=8, title="class")
  fig.suptitle(title or "test embeddings on the sphere (two views) and centroids (rings)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  return path


def plot_embeddings(embeddings, labels, centroids, path: str, **kwargs) -> str | None:
  """:func:`plot_circle` for 2-D, :func:`plot_sphere` for 3-D; ``None`` otherwise."""
  dim = np.asarray(embeddings).shape[-1]
  if dim == 2:
    return plot_circle(embeddings, labels, centroids, path, **kwargs)
  if dim == 3:
    return plot_sphere(embeddings, labels, centroids, path, **kwargs)
  return None


# Panel title and y label of the metrics that the training loops log.
_METRIC_LABELS = {
    "loss": ("training loss", "loss"),
    "train_loss": ("training loss", "loss"),
    "test_accuracy": ("test accuracy (nearest centroid)", "accuracy"),
    "test_balanced_accuracy": ("balanced test accuracy (mean over classes)", "accuracy"),
    "train_alpha": ("centroid EMA rate alpha", "alpha"),
    "train_kappa_mean": ("mean kappa of the training batch", "kappa"),
    "train_embedding_norm": ("embedding norm before normalisation", "norm"),
    "train_grad_norm": ("gradient norm", "norm"),
    "steps_per_sec": ("training speed", "steps per second"),
    "train_bce": ("binary cross-entropy of the match probability", "loss"),
    "train_kl": ("KL divergence to the prior", "KL"),
    "train_a": ("match probability scale a", "a"),
    "train_b": ("match probability offset b", "b"),
    "train_sigma_mean": ("mean predicted sigma", "sigma"),
}


def metric_labels(key: str) -> tuple[str, str]:
  """``(title, y label)`` of a logged metric, for the training-curve panels.

  Known keys have a readable name; for others the underscores become spaces
  and a ``train_``/``test_`` prefix becomes "training"/"test".

  Example:
    >>> from sphereembed.plotting import metric_labels
    >>> metric_labels("train_alpha")
    ('centroid EMA rate alpha', 'alpha')
    >>> metric_labels("train_loss_vmf_nll")
    ('training loss vmf nll', 'loss vmf nll')
  """
  if key in _METRIC_LABELS:
    return _METRIC_LABELS[key]
  words = key.replace("/", " ").split("_")
  prefix = {"train": "training", "test": "test", "validation": "validation"}.get(words[0])
  rest = " ".join(words[1:] if prefix else words)
  title = f"{prefix} {rest}" if prefix else rest
  return title, rest or title


def plot_training_curves(records: Sequence[Mapping[str, float]], path: str,
                         keys: Sequence[str] = ("loss", "test_accuracy"), *,
                         title: str = "") -> str:
  """One panel per metric against the step, from :func:`read_jsonl` records.

  Each panel has a readable title (:func:`metric_labels`), the step on the
  x axis and the quantity on the y axis; keys absent from every record are
  left out.

  Args:
    records: the logged records, each with a ``"step"``.
    path: the PNG written.
    keys: the metrics, one panel each.
    title: a title over all panels, or none.

  Returns:
    ``path``.
  """
  present = [k for k in keys if any(k in r for r in records)]
  fig = Figure(figsize=(5 * max(len(present), 1), 3.8 + (0.3 if title else 0)))
  axes = fig.subplots(1, max(len(present), 1), squeeze=False)
  for ax, key in zip(axes[0], present):
    points = sorted((r["step"], r[key]) for r in records if key in r)
    steps, values = zip(*points)
    ax.plot(steps, values, marker="o" if len(points) < 20 else None, ms=3)
    name, ylabel = metric_labels(key)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(name)
    ax.grid(alpha=0.3)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  return path


# ----------------------------------------------------------------------------
# Evaluation figures: each returns the figure and saves a PNG when given a path.


def _finish(fig: Figure, path: str | None, dpi: int = 110) -> Figure:
  fig.tight_layout()
  if path is not None:
    fig.savefig(path, dpi=dpi)
  return fig


def _named_sets(sets, size: int) -> dict:
  """A mapping ``name -> tuple of arrays`` from a mapping or from one unnamed tuple."""
  if isinstance(sets, Mapping):
    return {name: tuple(value) if size > 1 else (value,) for name, value in sets.items()}
  return {"": tuple(sets) if size > 1 else (sets,)}


def plot_roc_curves(curves, *, path: str | None = None, title: str = "",
                    log_far: bool = False, in_name: str | None = None,
                    ood_name: str | None = None) -> Figure:
  """ROC curves with their AUROC in the legend.

  Args:
    curves: ``(scores, labels)`` or a mapping ``name -> (scores, labels)``
      (larger score = more likely positive; for OOD detection concatenate
      in- and out-of-distribution uncertainties with labels 0 and 1).
    path: where to save a PNG, or ``None``.
    title: the axes title.
    log_far: a logarithmic false-positive axis (for TAR at small FAR).
    in_name, ood_name: for OOD detection, the names of the
      in-distribution (label 0) and OOD (label 1) sets, e.g.
      ``"MNIST test"`` and ``"Fashion-MNIST test"``: the title gets a line
      "MNIST test (in) vs Fashion-MNIST test (OOD)" and the axes say which
      set each rate counts.

  Returns:
    The figure.

  Example:
    >>> from sphereembed.plotting import plot_roc_curves
    >>> fig = plot_roc_curves({"model": ([0.9, 0.4, 0.6, 0.1], [1, 1, 0, 0])})
    >>> [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
    ['model AUROC 0.750', 'chance']
  """
  fig = Figure(figsize=(5.5, 5))
  ax = fig.add_subplot()
  for name, (scores, labels) in _named_sets(curves, 2).items():
    roc = verification.roc_curve(scores, labels)
    auc = verification.roc_auc(scores, labels)
    ax.plot(roc.fpr, roc.tpr, label=f"{name} AUROC {auc:.3f}".strip())
  if log_far:
    ax.set_xscale("log")
  else:
    ax.plot([0, 1], [0, 1], color="0.6", ls="--", lw=1, label="chance")
  if in_name or ood_name:
    in_name, ood_name = in_name or "in-distribution", ood_name or "OOD set"
    ax.set_xlabel(f"{in_name} images flagged as OOD\n(false-positive rate)")
    ax.set_ylabel(f"{ood_name} images flagged as OOD\n(true-positive rate)")
    ax.set_title(f"{title or 'OOD detection'}\n{in_name} (in) vs {ood_name} (OOD)", fontsize=10)
  else:
    ax.set_xlabel("false-positive rate (FAR)")
    ax.set_ylabel("true-positive rate (TAR)")
    ax.set_title(title or "ROC")
  ax.grid(alpha=0.3)
  ax.legend(loc="lower right", fontsize=8)
  return _finish(fig, path)


def plot_pr_curves(curves, *, path: str | None = None, title: str = "") -> Figure:
  """Precision-recall curves (step-wise, as average precision counts them) with their AP.

  Args:
    curves: ``(scores, labels)`` or a mapping ``name -> (scores, labels)``.
    path: where to save a PNG, or ``None``.
    title: the axes title.

  Returns:
    The figure.
  """
  fig = Figure(figsize=(5, 4.5))
  ax = fig.add_subplot()
  for name, (scores, labels) in _named_sets(curves, 2).items():
    precision, recall, _ = verification.precision_recall_curve(scores, labels)
    ap = verification.average_precision(scores, labels)
    ax.step(recall, precision, where="post", label=f"{name} AP {ap:.3f}".strip())
  ax.set_xlabel("recall")
  ax.set_ylabel("precision")
  ax.set_xlim(0, 1.01)
  ax.set_ylim(0, 1.05)
  ax.set_title(title or "precision-recall")
  ax.grid(alpha=0.3)
  ax.legend(loc="lower left", fontsize=8)
  return _finish(fig, path)


def plot_reliability_diagram(confidences, correct, *, num_bins: int = 15, path: str | None = None,
                             title: str = "") -> Figure:
  """Reliability diagram: accuracy per confidence bin against the diagonal, with the bin counts.

  Args:
    confidences: ``(N,)`` confidences in ``[0, 1]``.
    correct: ``(N,)`` bools.
    num_bins: equal-width bins (see
      :func:`sphereembed.evaluation.calibration.reliability_diagram`).
    path: where to save a PNG, or ``None``.
    title: the figure title (the ECE and MCE are added).

  Returns:
    The figure.

  Example:
    >>> from sphereembed.plotting import plot_reliability_diagram
    >>> fig = plot_reliability_diagram([0.9, 0.8, 0.6, 1.0], [1, 0, 1, 1], num_bins=5)
    >>> fig.axes[0].get_title()
    'ECE 0.275, MCE 0.400'
  """
  diagram = calibration.reliability_diagram(confidences, correct, num_bins)
  ece = calibration.expected_calibration_error(confidences, correct, num_bins)
  mce = calibration.maximum_calibration_error(confidences, correct, num_bins)
  fig = Figure(figsize=(5, 6))
  ax, counts = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
  left, width = diagram.edges[:-1], np.diff(diagram.edges)
  filled = diagram.count > 0
  ax.bar(left[filled], diagram.accuracy[filled], width[filled], align="edge", color="tab:blue",
         edgecolor="black", lw=0.5, label="accuracy")
  # The gap to perfect calibration, drawn from the accuracy to the mean confidence.
  ax.bar(left[filled], diagram.confidence[filled] - diagram.accuracy[filled], width[filled],
         bottom=diagram.accuracy[filled], align="edge", fill=False, hatch="///",
         edgecolor="tab:red", lw=0.5, label="gap to confidence")  # hatched: readable over the bar
  ax.plot([0, 1], [0, 1], color="0.4", ls="--", lw=1)
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1)
  ax.set_ylabel("accuracy")
  ax.set_title(f"{title + ': ' if title else ''}ECE {ece:.3f}, MCE {mce:.3f}")
  ax.legend(loc="upper left", fontsize=8)
  counts.bar(left, diagram.count, width, align="edge", color="0.5", edgecolor="black", lw=0.5)
  counts.set_xlabel("confidence")
  counts.set_ylabel("samples")
  return _finish(fig, path)


def plot_sparsification(uncertainties, errors, *, path: str | None = None,
                        title: str = "") -> Figure:
  """Sparsification curves (mean error of the rest) with the oracle and the random level.

  Args:
    uncertainties: ``(N,)`` uncertainties, or a mapping ``name -> (N,)`` to
      compare several on the same errors.
    errors: ``(N,)`` per-sample errors (``1 - correct`` for classification).
    path: where to save a PNG, or ``None``.
    title: the axes title.

  Returns:
    The figure.
  """
  fig = Figure(figsize=(5.5, 4.5))
  ax = fig.add_subplot()
  curve = None
  for name, (values,) in _named_sets(uncertainties, 1).items():
    curve = uncertainty.sparsification_curve(values, errors)
    area = np.mean(curve.error)
    ax.plot(curve.fraction_removed, curve.error, label=f"{name} area {area:.4f}".strip())
  ax.plot(curve.fraction_removed, curve.oracle_error, color="black", ls="--",
          label=f"oracle area {np.mean(curve.oracle_error):.4f}")
  ax.axhline(curve.error[0], color="0.6", ls=":", lw=1, label="random")
  ax.set_xlabel("fraction of most uncertain samples removed")
  ax.set_ylabel("mean error of the rest")
  ax.set_title(title or "sparsification")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return _finish(fig, path)


def plot_risk_coverage(confidences, correct, *, path: str | None = None, title: str = "",
                       max_risk: float | None = None, min_coverage: float = 0.05) -> Figure:
  """Risk-coverage curves with their AURC; the best possible curve for reference.

  Keeping only the most confident fraction ("coverage") of the samples,
  the curve gives the error rate among the kept ones; lower is better, and
  the curves meet at full coverage, the error rate without rejection
  (dotted). The risk axis is zoomed to the curves (a good model's risks are
  a few percent at most): from 0 to a little above their largest risk at
  coverages of at least ``min_coverage``, where a handful of samples make
  the curve jump.

  Args:
    confidences: ``(N,)`` confidences (larger = more confident), or a
      mapping ``name -> (N,)``.
    correct: ``(N,)`` bools.
    path: where to save a PNG, or ``None``.
    title: the axes title.
    max_risk: the top of the risk axis, instead of the zoom.
    min_coverage: coverages below this are left out of the zoom.

  Returns:
    The figure.
  """
  fig = Figure(figsize=(6, 4.8))
  ax = fig.add_subplot()
  top = 0.0
  for name, (values,) in _named_sets(confidences, 1).items():
    curve = calibration.risk_coverage_curve(values, correct)
    ax.plot(curve.coverage, curve.risk, label=f"{name} AURC {np.mean(curve.risk):.4f}".strip())
    kept = np.asarray(curve.coverage) >= min_coverage
    if kept.any():
      top = max(top, float(np.max(np.asarray(curve.risk)[kept])))
  right = np.asarray(correct, dtype=bool)
  best = calibration.risk_coverage_curve(right.astype(np.float64), right)
  ax.plot(best.coverage, best.risk, color="black", ls="--",
          label=f"best possible AURC {np.mean(best.risk):.4f}")
  error = 1.0 - float(np.mean(right))
  ax.axhline(error, color="0.5", ls=":", lw=1, label=f"no rejection: error {error:.4f}")
  top = max(top, error)
  ax.set_xlabel("coverage (fraction of the most confident images kept)")
  ax.set_ylabel("selective risk (error rate of the kept images)")
  ax.set_xlim(0, 1)
  if max_risk is not None:
    ax.set_ylim(0, max_risk)
  elif top > 0:
    ax.set_ylim(-0.02 * top, min(1.15 * top, 1.0))  # below 0: the curves at 0 stay visible
  else:
    ax.set_ylim(0, 1)
  ax.set_title(title or "risk-coverage (lower is better)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc="upper left")
  return _finish(fig, path)


def _spans_decades(values: np.ndarray, ratio: float = 30.0) -> bool:
  """Whether positive ``values`` span at least ``ratio`` (a log axis reads them better)."""
  values = np.asarray(values, dtype=np.float64)
  values = values[np.isfinite(values)]
  return bool(values.size and values.min() > 0 and values.max() >= ratio * values.min())


def plot_confidence_boxplot(confidences, correct, ood_confidences=None, *, path: str | None = None,
                            ylabel: str = "confidence", title: str = "",
                            ood_name: str | None = None, log_scale: bool | None = None) -> Figure:
  """Box plots of the confidence of correct, incorrect and (optionally) OOD samples.

  Args:
    confidences: ``(N,)`` confidences (or any score) of in-distribution samples.
    correct: ``(N,)`` bools.
    ood_confidences: ``(M,)`` confidences of OOD samples, or ``None``.
    path: where to save a PNG, or ``None``.
    ylabel: the label of the score axis.
    title: the axes title.
    ood_name: the name of the OOD set, under the "OOD" box.
    log_scale: a logarithmic score axis; ``None``: when the scores are
      positive and the largest is 30 times the smallest or more (kappa).

  Returns:
    The figure.
  """
  confidences = checks.vector(confidences, "confidences")
  correct = checks.binary(correct, "correct")
  checks.same_length(confidences=confidences, correct=correct)
  groups = {"correct": confidences[correct], "incorrect": confidences[~correct]}
  if ood_confidences is not None:
    groups["OOD"] = checks.vector(ood_confidences, "ood_confidences")
  groups = {name: values for name, values in groups.items() if values.size}
  fig = Figure(figsize=(1.6 * len(groups) + 2, 4.5))
  ax = fig.add_subplot()
  ax.boxplot(list(groups.values()), showfliers=False)
  names = {"OOD": f"OOD\n{ood_name}"} if ood_name else {}
  ax.set_xticks(range(1, len(groups) + 1),
                [f"{names.get(name, name)}\n(n={len(v)})" for name, v in groups.items()])
  if log_scale is None:
    log_scale = _spans_decades(np.concatenate(list(groups.values())))
  if log_scale:
    ax.set_yscale("log")
  ax.set_ylabel(ylabel + (" (log scale)" if log_scale else ""))
  ax.set_title(title or f"{ylabel} by outcome")
  ax.grid(alpha=0.3, axis="y")
  return _finish(fig, path)


def plot_confidence_scatter(x, y, correct, *, xlabel: str = "confidence",
                            ylabel: str = "classifier probability", path: str | None = None,
                            title: str = "", max_points: int = 5000, seed: int = 0,
                            log_x: bool = False) -> Figure:
  """One confidence against another per sample, wrong predictions highlighted.

  The figure of kappa against the classifier's max-softmax
  probability: where the two disagree, one of them knows something the other
  does not.

  Args:
    x: ``(N,)`` the first score (e.g. kappa).
    y: ``(N,)`` the second score (e.g. the max softmax probability).
    correct: ``(N,)`` bools; wrong samples are drawn last, in red.
    xlabel, ylabel: the axis labels.
    path: where to save a PNG, or ``None``.
    title: the axes title (Spearman's rank correlation is added).
    max_points: at most this many correct samples, a random subset (all
      wrong ones are kept).
    seed: seed of the subset.
    log_x: a logarithmic x axis (kappa spans decades).

  Returns:
    The figure.

  Example:
    >>> from sphereembed.plotting import plot_confidence_scatter
    >>> fig = plot_confidence_scatter([1.0, 5.0, 20.0, 3.0], [0.3, 0.6, 0.9, 0.8],
    ...                               [True, True, True, False])
    >>> fig.axes[0].get_title()
    'Spearman 0.800'
  """
  x = checks.vector(x, "x")
  y = checks.vector(y, "y")
  correct = checks.binary(correct, "correct")
  checks.same_length(x=x, y=y, correct=correct)
  rho = uncertainty.spearman_rho(x, y)
  right = np.flatnonzero(correct)
  right = np.random.default_rng(seed).permutation(right)[:max_points]
  wrong = np.flatnonzero(~correct)
  fig = Figure(figsize=(5.5, 4.5))
  ax = fig.add_subplot()
  ax.scatter(x[right], y[right], s=4, alpha=0.4, color="tab:blue", label=f"correct ({correct.sum()})")
  ax.scatter(x[wrong], y[wrong], s=10, color="tab:red", label=f"wrong ({len(wrong)})")
  if log_x:
    ax.set_xscale("log")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(f"{title + ': ' if title else ''}Spearman {rho:.3f}")
  ax.grid(alpha=0.3)
  ax.legend(loc="lower right", fontsize=8)
  return _finish(fig, path)


def plot_binned_performance(uncertainties, performance, *, num_bins: int = 10,
                            strategy: str = "quantile", path: str | None = None,
                            ylabel: str = "performance", title: str = "") -> Figure:
  """Mean performance per uncertainty bin, the figure of the HIB paper.

  Args:
    uncertainties: ``(N,)`` uncertainties.
    performance: ``(N,)`` per-sample performance.
    num_bins: number of bins.
    strategy: ``"quantile"`` or ``"uniform"`` (see
      :func:`sphereembed.evaluation.uncertainty.binned_performance`).
    path: where to save a PNG, or ``None``.
    ylabel: the label of the performance axis.
    title: the axes title.

  Returns:
    The figure.
  """
  binned = uncertainty.binned_performance(uncertainties, performance, num_bins,
                                          strategy=strategy)
  fig = Figure(figsize=(5.5, 4.5))
  ax = fig.add_subplot()
  filled = binned.count > 0
  ax.plot(binned.uncertainty[filled], binned.performance[filled], marker="o")
  ax.set_xlabel("uncertainty (bin mean)")
  ax.set_ylabel(f"mean {ylabel}")
  ax.set_title(title or f"{ylabel} per uncertainty bin")
  ax.grid(alpha=0.3)
  return _finish(fig, path)


def plot_embeddings_by_confidence(embeddings, confidences, *, labels=None, path: str | None = None,
                                  title: str = "", max_points: int = 5000, seed: int = 0,
                                  cmap: str = "viridis", colorbar_label: str | None = None,
                                  log_scale: bool | None = None,
                                  radial_rank: bool = True) -> Figure:
  """2-D embeddings on the circle or 3-D embeddings on the sphere, coloured by confidence.

  Points are projected onto the unit circle/sphere. Low confidences are
  drawn last, on top, so that the uncertain regions stand out. In 2-D the
  points are also spread radially by their confidence rank (the most
  confident on the circle, the least confident innermost), so that a dense
  arc of points shows its spread of confidences instead of one blot, and a
  second panel shows the confidence against the angle, coloured by class
  when ``labels`` are given: the dips between the classes are the uncertain
  boundaries.

  Args:
    embeddings: ``(N, 2)`` or ``(N, 3)`` embeddings.
    confidences: ``(N,)`` confidences (any real score; the colour scale
      spans their range).
    labels: ``(N,)`` int classes for the 2-D angle panel, or ``None``.
    path: where to save a PNG, or ``None``.
    title: the figure title.
    max_points: at most this many points, a random subset.
    seed: seed of the subset.
    cmap: the matplotlib colour map.
    colorbar_label: the name of the score on the colour bar and the angle
      panel (e.g. ``"kappa"``); ``None``: the words after "coloured by" in
      ``title``, else "confidence".
    log_scale: a logarithmic colour scale (and confidence axis); ``None``:
      when the confidences are positive and the largest is 30 times the
      smallest or more, as kappa's usually are.
    radial_rank: in 2-D, spread the points radially by confidence rank;
      ``False`` keeps them all on the circle.

  Returns:
    The figure.

  Raises:
    ValueError: for embeddings that are not 2-D or 3-D, or mismatched lengths.
  """
  embeddings = np.asarray(embeddings, dtype=np.float64)
  if embeddings.ndim != 2 or embeddings.shape[1] not in (2, 3):
    raise ValueError(f"embeddings must have shape (N, 2) or (N, 3), got {embeddings.shape}.")
  confidences = checks.vector(confidences, "confidences")
  checks.same_length(embeddings=embeddings, confidences=confidences)
  if colorbar_label is None:
    colorbar_label = (title.rsplit("coloured by", 1)[1].strip() or "confidence"
                      if "coloured by" in title else "confidence")
  index = np.random.default_rng(seed).permutation(len(confidences))[:max_points]
  index = index[np.argsort(-confidences[index], kind="stable")]
  points = embeddings[index] / np.maximum(np.linalg.norm(embeddings[index], axis=1,
                                                         keepdims=True), 1e-12)
  values = confidences[index]
  if log_scale is None:
    log_scale = _spans_decades(values)
  if log_scale:
    norm = matplotlib.colors.LogNorm(vmin=values.min(), vmax=values.max())
  else:
    norm = matplotlib.colors.Normalize(vmin=values.min(), vmax=values.max())
  scale_note = " (log scale)" if log_scale else ""
  style = {"s": 3, "alpha": 0.6, "linewidths": 0}
  if embeddings.shape[1] == 2:
    fig = Figure(figsize=(13, 5.5))
    ax, side = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.3]})
    circle = np.linspace(-np.pi, np.pi, 400)
    angles = np.arctan2(points[:, 1], points[:, 0])
    if radial_rank and len(values) > 1:
      # Rank 0 = least confident: innermost. Drawn from most to least confident.
      rank = len(values) - 1 - np.arange(len(values))
      radii = 0.55 + 0.45 * rank / (len(values) - 1)
      ax.plot(0.55 * np.cos(circle), 0.55 * np.sin(circle), color="0.85", lw=0.8, ls="--")
      note = (f"radius: {colorbar_label} rank (most confident on the outer circle, "
              "least confident inside)")
    else:
      radii = np.ones(len(values))
      note = ""
    ax.plot(np.cos(circle), np.sin(circle), color="0.8", lw=1)
    drawn = ax.scatter(radii * np.cos(angles), radii * np.sin(angles), c=values, cmap=cmap,
                       norm=norm, **style)
    ax.set_aspect("equal")
    ax.set_xlim(-1.1, 1.1)
    ax.set_ylim(-1.1, 1.1)
    ax.axis("off")
    if note:
      ax.text(0.5, -0.02, note, transform=ax.transAxes, ha="center", va="top", fontsize=8,
              color="0.3")
    if labels is None:
      side.scatter(angles, values, c=values, cmap=cmap, norm=norm, **style)
    else:
      labels = np.asarray(labels)[index]
      classes = np.unique(labels)
      colors = _class_colors(len(classes))
      for color, k in zip(colors, classes):
        chosen = labels == k
        side.scatter(angles[chosen], values[chosen], color=color, label=str(k), **style)
      side.legend(markerscale=4, fontsize=7, title="class", title_fontsize=8, loc="upper left",
                  bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    if log_scale:
      side.set_yscale("log")
    side.set_xlim(-np.pi, np.pi)
    side.set_xlabel("angle of the embedding (radians)")
    side.set_ylabel(colorbar_label + scale_note)
    side.set_title(f"{colorbar_label} against the angle: low between the classes")
    side.grid(alpha=0.3)
    fig.colorbar(drawn, ax=ax, shrink=0.8, label=colorbar_label + scale_note)
  else:
    fig = Figure(figsize=(11, 5))
    u, v = np.mgrid[0:2 * np.pi:30j, 0:np.pi:15j]
    axes = []
    for panel, azimuth in enumerate((30, 210)):
      ax = fig.add_subplot(1, 2, panel + 1, projection="3d")
      ax.plot_wireframe(np.cos(u) * np.sin(v), np.sin(u) * np.sin(v), np.cos(v), color="0.85",
                        lw=0.4)
      drawn = ax.scatter(*points.T, c=values, cmap=cmap, norm=norm, **style)
      ax.view_init(elev=20, azim=azimuth)
      ax.set_box_aspect((1, 1, 1))
      ax.set_axis_off()
      axes.append(ax)
    # tight_layout leaves wide margins around 3-D axes: place them by hand.
    fig.subplots_adjust(left=0.0, right=0.88, bottom=0.0, top=0.92, wspace=0.0)
    fig.colorbar(drawn, ax=axes, shrink=0.7, label=colorbar_label + scale_note)
  fig.suptitle(title or f"embeddings coloured by {colorbar_label}")
  if embeddings.shape[1] == 2:
    return _finish(fig, path)
  if path is not None:
    fig.savefig(path, dpi=110)
  return fig


# Stochastic embeddings (Hedged Instance Embeddings).
def _projection(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """``(centre, axes)``: the identity for 2-D, the two principal axes otherwise."""
  centre = points.mean(axis=0)
  if points.shape[1] == 2:
    return np.zeros(2), np.eye(2)
  _, _, vt = np.linalg.svd(points - centre, full_matrices=False)
  return centre, vt[:2].T


def plot_hib_embeddings(arrays: Mapping, path: str, title: str, seed: int = 0) -> None:
  """Clean and corrupted means coloured by class, with the sample clouds of a few images."""
  labels = arrays["labels"]
  centre, axes = _projection(arrays["centres"]["clean"])
  project = lambda x: (x - centre) @ axes
  rng = np.random.default_rng(seed)
  shown = rng.permutation(len(labels))[:3000]
  classes = np.unique(labels)
  cmap = matplotlib.colormaps["hsv"]
  colour_of = {c: cmap(i / len(classes)) for i, c in enumerate(rng.permutation(classes))}
  colours = np.array([colour_of[c] for c in labels[shown]])
  fig = Figure(figsize=(13, 6.2))
  panels = fig.subplots(1, 2, sharex=True, sharey=True)
  for ax, name in zip(panels, ("clean", "corrupted")):
    points = project(arrays["centres"][name][shown])
    ax.scatter(points[:, 0], points[:, 1], c=colours, s=3, alpha=0.5, linewidths=0)
    samples = arrays["samples"][name]
    eta = arrays[f"{name}_eta"]
    # Clouds of the 6 most uncertain images and 6 random ones.
    chosen = np.r_[np.argsort(-eta, kind="stable")[:6], rng.permutation(len(labels))[:6]]
    for rank, index in enumerate(chosen):
      cloud = project(samples[index])
      ax.scatter(cloud[:, 0], cloud[:, 1], s=10, marker="x",
                 color="black" if rank < 6 else "0.45", linewidths=0.8)
    ax.set_title(f"{name} test images: means by class; x: samples of the 6 most uncertain "
                 "(black) and 6 random (grey)", fontsize=8)
    ax.set_aspect("equal", adjustable="box")
    ax.grid(alpha=0.2)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def plot_uncertain_images(images: dict[str, np.ndarray], arrays: Mapping, path: str,
                           count: int = 8) -> None:
  """The ``count`` most and least certain images among the clean and corrupted test images."""
  eta = np.concatenate([arrays["clean_eta"], arrays["corrupted_eta"]])
  stack = np.concatenate([images["clean"], images["corrupted"]])
  labels = np.concatenate([arrays["labels"], arrays["labels"]])
  order = np.argsort(eta, kind="stable")
  count = min(count, len(order))
  rows = (("least uncertain", order[:count]), ("most uncertain", order[::-1][:count]))
  fig = Figure(figsize=(1.9 * count, 3.2))
  axes = fig.subplots(2, count, squeeze=False)
  width = stack.shape[2] // stack.shape[1]
  for row, (name, indices) in enumerate(rows):
    for col, index in enumerate(indices):
      ax = axes[row, col]
      ax.imshow(stack[index, :, :, 0], cmap="gray", vmin=0, vmax=255)
      ax.set_xticks([])
      ax.set_yticks([])
      kind = "corr." if index >= len(arrays["labels"]) else "clean"
      ax.set_title(f"{labels[index]:0{width}d} {kind}\neta={eta[index]:.3f}", fontsize=7)
    axes[row, 0].set_ylabel(name, fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def plot_uncertainty_bins(arrays: Mapping, bins: int, path: str, title: str) -> bool:
  """Mean per-image AP and kNN accuracy per ``eta`` bin; ``False`` when ``eta`` is constant."""
  fig = Figure(figsize=(6, 4.5))
  ax = fig.add_subplot()
  drawn = False
  for name, style in (("clean", "-"), ("corrupted", "--")):
    eta = arrays[f"{name}_eta"]
    if np.all(eta == eta[0]):
      continue
    for performance, marker in (("ap", "o"), ("knn", "s")):
      binned = uncertainty.binned_performance(eta, arrays[f"{name}_{performance}"],
                                             min(bins, len(eta)))
      filled = binned.count > 0
      ax.plot(binned.uncertainty[filled], binned.performance[filled], style, marker=marker,
              label=f"{name}: {'AP' if performance == 'ap' else 'kNN accuracy'}")
      drawn = True
  if not drawn:
    return False
  ax.set_xlabel("self-mismatch eta (bin mean)")
  ax.set_ylabel("mean performance in the bin")
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  return True


# Retrieval.


def plot_retrievals(arrays: Mapping[str, np.ndarray], images: np.ndarray, path: str, title: str,
                     rows_each: int = 4) -> None:
  """The most and least certain test queries, each with its nearest test images.

  Args:
    arrays: ``uncertainty`` (per query), ``neighbours`` (``(N, k)`` rows of
      the nearest test images) and ``labels``.
    images: the test images.
    path: the PNG written.
    title: the figure's title.
    rows_each: how many most and least certain queries.
  """
  order = np.argsort(arrays["uncertainty"], kind="stable")
  rows_each = min(rows_each, len(order) // 2) or 1
  queries = np.r_[order[:rows_each], order[::-1][:rows_each]]
  neighbours, labels = arrays["neighbours"], arrays["labels"]
  columns = 1 + neighbours.shape[1]
  fig = Figure(figsize=(1.3 * columns, 1.45 * len(queries) + 0.6))
  axes = fig.subplots(len(queries), columns, squeeze=False)
  for row, query in enumerate(queries):
    shown = [query] + list(neighbours[query])
    for col, index in enumerate(shown):
      ax = axes[row, col]
      ax.imshow(images[index, :, :, 0], cmap="gray", vmin=0, vmax=255)
      ax.set_xticks([])
      ax.set_yticks([])
      if col == 0:
        certainty = "most certain" if row < rows_each else "least certain"
        ax.set_title(f"{certainty}\nu={arrays['uncertainty'][query]:.3g}", fontsize=7)
      else:
        colour = "tab:green" if labels[index] == labels[query] else "tab:red"
        for spine in ax.spines.values():
          spine.set_edgecolor(colour)
          spine.set_linewidth(3)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


# Index of a run's figures.

# How a score is named in the figure descriptions.
_SCORE_NAMES = {"centroid": "cosine to the nearest centroid", "kappa": "vMF concentration kappa",
                "sigma": "Gaussian scale sigma", "softmax": "classifier max softmax probability"}

# (file name, description) of the figures a run writes, most useful first;
# "{score}" stands for a confidence score's name.
_FIGURE_DESCRIPTIONS = (
    ("embeddings.png", ("test embeddings on the circle/sphere coloured by class, with the "
     "centroids and the angle histogram per class: narrow, separate peaks are well-separated "
     "classes, overlaps are confusions")),
    ("embeddings_kappa.png", ("test embeddings coloured (and, in 2-D, placed radially) by "
     "kappa, and kappa against the angle: kappa should be low between the classes, where the "
     "errors are")),
    ("training_curves.png", ("training loss, test accuracy and the other logged metrics "
     "against the step: the loss should flatten and the accuracy level off")),
    ("risk_coverage.png", ("error rate of the most confident test images kept against the "
     "fraction kept, one curve per confidence score: lower is better, the dashed curve is a "
     "perfect ranking")),
    ("ood_roc.png", ("OOD detection ROC per confidence score: OOD images flagged (y) against "
     "in-distribution images wrongly flagged (x); AUROC 1 is perfect, 0.5 chance")),
    ("confidence_boxplot_{score}.png", ("{name} of the correct, wrong and OOD test images: a "
     "useful score puts the wrong and OOD boxes well below the correct one")),
    ("kappa_vs_softmax.png", ("kappa against the classifier's max softmax probability per "
     "test image, wrong ones in red: where the two disagree one knows what the other misses")),
    ("reliability_{score}.png", ("reliability diagram of the class posterior from the {name}: "
     "accuracy per confidence bin; bars on the diagonal are calibrated, below it "
     "overconfident (ECE: the mean gap)")),
    ("reliability_{score}_isotonic.png", ("reliability diagram of the class posterior from the "
     "{name} after isotonic calibration fitted on the validation split: the bars should sit "
     "on the diagonal")),
)


def _match_figure(name: str) -> tuple[int, str] | None:
  """``(rank, description)`` of a known figure file name, or ``None``."""
  for rank, (pattern, description) in enumerate(_FIGURE_DESCRIPTIONS):
    if "{score}" not in pattern:
      if name == pattern:
        return rank, description
      continue
    head, tail = pattern.split("{score}")
    score = name[len(head):len(name) - len(tail)]
    if name.startswith(head) and name.endswith(tail) and score and "_" not in score:
      return rank, description.format(name=_SCORE_NAMES.get(score, f"score {score}"))
  return None


def describe_figure(path: str) -> str:
  """A one-line description of a figure that the runs write: what it shows, how to read it.

  Unknown file names get their name with spaces for underscores.

  Example:
    >>> from sphereembed.plotting import describe_figure
    >>> describe_figure("out/ood_roc.png").startswith("OOD detection ROC")
    True
  """
  name = path.replace("\\", "/").rsplit("/", 1)[-1]
  match = _match_figure(name)
  return match[1] if match else name.rsplit(".", 1)[0].replace("_", " ")


def figure_entries(paths: Sequence[str | None]) -> list[tuple[str, str]]:
  """``(path, description)`` pairs for :func:`write_figure_index`, most useful first.

  Known figures (:func:`describe_figure`) come in a fixed order of
  usefulness, then the others in the given order; ``None`` paths (a figure
  not drawn) and repeats are dropped.
  """
  unique = list(dict.fromkeys(p for p in paths if p))
  def rank(item):
    match = _match_figure(item[1].replace("\\", "/").rsplit("/", 1)[-1])
    return (match[0] if match else len(_FIGURE_DESCRIPTIONS), item[0])
  ordered = sorted(enumerate(unique), key=rank)
  return [(path, describe_figure(path)) for _, path in ordered]


def write_figure_index(workdir: str, entries, *, title: str = "Figures of this run") -> str:
  """Writes ``workdir/FIGURES.md``: the figures to open, in order, one line each.

  Args:
    workdir: the run's folder; the links are relative to it.
    entries: an ordered sequence of ``(file name or path, one-line
      description)``, most useful first (see :func:`figure_entries`); a
      bare file name or path gets :func:`describe_figure`'s description.
    title: the heading.

  Returns:
    The path of ``FIGURES.md``.
  """
  lines = [f"# {title}", "",
           "Most useful first; each line says what the figure shows and how to read it.", ""]
  number = 0
  for entry in entries:
    path, description = (entry, describe_figure(entry)) if isinstance(entry, str) else entry
    if not path:
      continue
    relative = os.path.relpath(path, workdir) if os.path.dirname(path) else path
    relative = relative.replace(os.sep, "/")
    number += 1
    lines.append(f"{number}. [{relative}]({relative.replace(' ', '%20')}): {description}")
  target = os.path.join(workdir, "FIGURES.md")
  with open(target, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  return target
