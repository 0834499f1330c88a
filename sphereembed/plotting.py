"""Figures of embeddings on the sphere and of training runs (matplotlib, no screen needed)."""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # Experiments run on servers and in CI: never open a window.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["plot_circle", "plot_embeddings", "plot_sphere", "plot_training_curves"]


def _class_colors(num_classes: int):
  cmap = plt.get_cmap("tab10" if num_classes <= 10 else "tab20")
  return [cmap(k % cmap.N) for k in range(num_classes)]


def _prepare(embeddings, labels, centroids, class_names, max_points, seed):
  """NumPy inputs, class names and colours, and a random subset of at most ``max_points``."""
  embeddings, labels, centroids = map(np.asarray, (embeddings, labels, centroids))
  num_classes = centroids.shape[0]
  names = class_names or [str(k) for k in range(num_classes)]
  index = np.random.default_rng(seed).permutation(len(labels))[:max_points]
  return embeddings, labels, centroids, names, _class_colors(num_classes), index


def plot_circle(embeddings, labels, centroids, path: str, *, class_names: Sequence[str] | None = None,
                title: str = "", max_points: int = 5000, seed: int = 0) -> str:
  """2-D unit embeddings on the circle, coloured by class, with the centroids.

  Points sit on the circle; each class is drawn at its own small radial
  offset so that classes sharing an arc stay visible. A histogram of angles
  per class on the right shows how much they overlap.

  Returns:
    ``path``.
  """
  embeddings, labels, centroids, names, colors, index = _prepare(
      embeddings, labels, centroids, class_names, max_points, seed)
  num_classes = centroids.shape[0]
  angles = np.arctan2(embeddings[index, 1], embeddings[index, 0])
  fig, (ax, hist) = plt.subplots(1, 2, figsize=(12, 5.5), gridspec_kw={"width_ratios": [1, 1.3]})
  circle = np.linspace(-np.pi, np.pi, 400)
  ax.plot(np.cos(circle), np.sin(circle), color="0.8", lw=1)
  for k in range(num_classes):
    chosen = labels[index] == k
    radius = 1.0 + 0.03 * (k - num_classes / 2) / max(num_classes, 1)
    ax.scatter(radius * np.cos(angles[chosen]), radius * np.sin(angles[chosen]), s=4,
               color=colors[k], alpha=0.5, label=names[k])
    c = centroids[k] / max(np.linalg.norm(centroids[k]), 1e-12)
    ax.scatter(*c, marker="*", s=220, color=colors[k], edgecolors="black", zorder=3)
    ax.annotate(names[k], 1.18 * c, ha="center", va="center", fontsize=9)
    hist.hist(angles[chosen], bins=180, range=(-np.pi, np.pi), color=colors[k], alpha=0.7)
  ax.set_aspect("equal")
  ax.set_xlim(-1.35, 1.35)
  ax.set_ylim(-1.35, 1.35)
  ax.set_title(title or "test embeddings (dots) and centroids (stars)")
  ax.axis("off")
  hist.set_xlabel("angle (radians)")
  hist.set_ylabel("test samples")
  hist.set_title("angle histogram per class")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
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
  fig = plt.figure(figsize=(12, 6))
  u, v = np.mgrid[0:2 * np.pi:30j, 0:np.pi:15j]
  for panel, azimuth in enumerate((30, 210)):
    ax = fig.add_subplot(1, 2, panel + 1, projection="3d")
    ax.plot_wireframe(np.cos(u) * np.sin(v), np.sin(u) * np.sin(v), np.cos(v), color="0.85", lw=0.4)
    for k in range(num_classes):
      chosen = index[labels[index] == k]
      ax.scatter(*embeddings[chosen].T, s=3, color=colors[k], alpha=0.5,
                 label=names[k] if panel == 0 else None)
      ax.scatter(*centroids[k], marker="*", s=200, color=colors[k], edgecolors="black")
    ax.view_init(elev=20, azim=azimuth)
    ax.set_box_aspect((1, 1, 1))
    ax.set_axis_off()
  fig.legend(loc="center left", markerscale=4, fontsize=8)
  fig.suptitle(title or "test embeddings on the sphere (two views) and centroids (stars)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def plot_embeddings(embeddings, labels, centroids, path: str, **kwargs) -> str | None:
  """:func:`plot_circle` for 2-D, :func:`plot_sphere` for 3-D; ``None`` otherwise."""
  dim = np.asarray(embeddings).shape[-1]
  if dim == 2:
    return plot_circle(embeddings, labels, centroids, path, **kwargs)
  if dim == 3:
    return plot_sphere(embeddings, labels, centroids, path, **kwargs)
  return None


def plot_training_curves(records: Sequence[Mapping[str, float]], path: str,
                         keys: Sequence[str] = ("loss", "test_accuracy")) -> str:
  """One panel per metric against the step, from :func:`read_jsonl` records.

  Returns:
    ``path``.
  """
  present = [k for k in keys if any(k in r for r in records)]
  fig, axes = plt.subplots(1, max(len(present), 1), figsize=(5 * max(len(present), 1), 3.8),
                           squeeze=False)
  for ax, key in zip(axes[0], present):
    points = sorted((r["step"], r[key]) for r in records if key in r)
    steps, values = zip(*points)
    ax.plot(steps, values, marker="o" if len(points) < 20 else None, ms=3)
    ax.set_xlabel("step")
    ax.set_title(key)
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
