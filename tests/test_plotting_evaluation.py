"""Evaluation figures: each returns a figure and writes a non-empty PNG when given a path."""

from __future__ import annotations

from matplotlib.figure import Figure
import numpy as np
import pytest

from sphereembed import plotting

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def outputs():
  rng = np.random.default_rng(0)
  n = 300
  scores = rng.normal(size=n)
  labels = rng.random(n) < 1 / (1 + np.exp(-2 * scores))
  confidences = 1 / (1 + np.exp(-np.abs(scores)))
  correct = rng.random(n) < confidences
  return dict(rng=rng, scores=scores, labels=labels, confidences=confidences, correct=correct)


def assert_png(fig, path):
  assert isinstance(fig, Figure)
  data = path.read_bytes()
  assert data.startswith(PNG_MAGIC) and len(data) > 5_000


def test_roc_and_pr_curves(outputs, tmp_path):
  curves = {"model": (outputs["scores"], outputs["labels"]),
            "reversed": (-outputs["scores"], outputs["labels"])}
  assert_png(plotting.plot_roc_curves(curves, path=str(tmp_path / "roc.png")), tmp_path / "roc.png")
  fig = plotting.plot_roc_curves((outputs["scores"], outputs["labels"]), log_far=True,
                                 path=str(tmp_path / "roc_log.png"))
  assert_png(fig, tmp_path / "roc_log.png")
  assert fig.axes[0].get_xscale() == "log"
  assert_png(plotting.plot_pr_curves(curves, path=str(tmp_path / "pr.png")), tmp_path / "pr.png")
  # The legend carries the metric.
  legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
  assert legend and legend[0].startswith("AUROC")


def test_reliability_sparsification_and_risk_coverage(outputs, tmp_path):
  confidences, correct = outputs["confidences"], outputs["correct"]
  fig = plotting.plot_reliability_diagram(confidences, correct, num_bins=10,
                                          path=str(tmp_path / "rel.png"), title="test")
  assert_png(fig, tmp_path / "rel.png")
  assert "ECE" in fig.axes[0].get_title()
  uncertainties = {"1 - confidence": 1 - confidences, "random": outputs["rng"].random(len(correct))}
  assert_png(plotting.plot_sparsification(uncertainties, 1.0 - correct, path=str(tmp_path / "sp.png")),
             tmp_path / "sp.png")
  assert_png(plotting.plot_risk_coverage(confidences, correct, path=str(tmp_path / "rc.png")),
             tmp_path / "rc.png")
  assert_png(plotting.plot_binned_performance(1 - confidences, correct, num_bins=5,
                                              path=str(tmp_path / "bins.png")), tmp_path / "bins.png")


def test_confidence_boxplot(outputs, tmp_path):
  fig = plotting.plot_confidence_boxplot(outputs["confidences"], outputs["correct"],
                                         outputs["rng"].random(50), path=str(tmp_path / "box.png"))
  assert_png(fig, tmp_path / "box.png")
  ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
  assert [t.split("\n")[0] for t in ticks] == ["correct", "incorrect", "OOD"]
  # Without OOD samples and without errors: one box.
  fig = plotting.plot_confidence_boxplot([0.9, 0.8], [True, True])
  assert len(fig.axes[0].get_xticklabels()) == 1


@pytest.mark.parametrize("dim", [2, 3])
def test_embeddings_by_confidence(outputs, tmp_path, dim):
  x = outputs["rng"].normal(size=(300, dim))
  fig = plotting.plot_embeddings_by_confidence(
      x, outputs["confidences"], labels=np.arange(300) % 3 if dim == 2 else None,
      path=str(tmp_path / f"emb{dim}.png"))
  assert_png(fig, tmp_path / f"emb{dim}.png")


def test_no_path_writes_nothing_and_bad_input(outputs, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  fig = plotting.plot_risk_coverage({"a": outputs["confidences"]}, outputs["correct"])
  assert isinstance(fig, Figure) and not list(tmp_path.iterdir())
  with pytest.raises(ValueError, match=r"\(N, 2\) or \(N, 3\)"):
    plotting.plot_embeddings_by_confidence(np.ones((4, 5)), np.ones(4))
  with pytest.raises(ValueError, match="Length mismatch"):
    plotting.plot_embeddings_by_confidence(np.ones((4, 2)), np.ones(3))
  with pytest.raises(ValueError, match="single class"):
    plotting.plot_roc_curves(([0.1, 0.2], [1, 1]))


@pytest.fixture
def saved(monkeypatch):
  """The figures that the path-only functions save, in order."""
  figures = []
  original = Figure.savefig

  def savefig(fig, *args, **kwargs):
    figures.append(fig)
    return original(fig, *args, **kwargs)

  monkeypatch.setattr(Figure, "savefig", savefig)
  return figures


def test_training_curves_have_readable_titles_and_labels(tmp_path, saved):
  records = [{"step": s, "train_loss": 1.0 / s, "train_alpha": 0.25 * 0.9**s, "my_metric": s}
             for s in range(1, 30)] + [{"step": 30, "test_accuracy": 0.9}]
  plotting.plot_training_curves(records, str(tmp_path / "c.png"),
                                keys=("train_loss", "test_accuracy", "train_alpha", "my_metric",
                                      "absent"))
  axes = saved[-1].axes
  assert [ax.get_title() for ax in axes] == [
      "training loss", "test accuracy (nearest centroid)", "centroid EMA rate alpha", "my metric"]
  assert all(ax.get_xlabel() == "step" for ax in axes)
  assert [ax.get_ylabel() for ax in axes] == ["loss", "accuracy", "alpha", "my metric"]
  assert plotting.metric_labels("train_loss_vmf_nll")[0] == "training loss vmf nll"


def test_circle_keeps_points_visible_and_has_a_legend(tmp_path, saved):
  rng = np.random.default_rng(0)
  labels = np.arange(300) % 3
  angles = 2 * np.pi * labels / 3 + 0.01 * rng.normal(size=300)
  x = np.stack([np.cos(angles), np.sin(angles)], axis=1)
  centroids = np.stack([np.cos(2 * np.pi * np.arange(3) / 3),
                        np.sin(2 * np.pi * np.arange(3) / 3)], axis=1)
  plotting.plot_embeddings(x, labels, centroids, str(tmp_path / "e.png"),
                           class_names=["a", "b", "c"])
  circle, hist = saved[-1].axes
  assert [t.get_text() for t in hist.get_legend().get_texts()] == ["a", "b", "c"]
  assert hist.get_xlabel() and hist.get_ylabel()
  # No big filled marker over the points: the points are the only scatters.
  assert all(np.all(c.get_sizes() <= 10) for c in circle.collections)


def test_embeddings_by_confidence_labels_and_log_scale(outputs):
  rng = outputs["rng"]
  x = rng.normal(size=(300, 2))
  kappa = np.exp(rng.uniform(0, 7, 300))  # spans three decades
  fig = plotting.plot_embeddings_by_confidence(x, kappa, labels=np.arange(300) % 3,
                                               title="test embeddings coloured by kappa")
  colorbar = fig.axes[-1]
  assert colorbar.get_ylabel() == "kappa (log scale)"
  assert fig.axes[1].get_yscale() == "log" and fig.axes[1].get_ylabel() == "kappa (log scale)"
  fig = plotting.plot_embeddings_by_confidence(x, kappa, colorbar_label="score", log_scale=False,
                                               radial_rank=False)
  assert fig.axes[-1].get_ylabel() == "score" and fig.axes[1].get_yscale() == "linear"
  assert fig._suptitle.get_text() == "embeddings coloured by score"
  # Confidences in a narrow range: linear, the default label.
  fig = plotting.plot_embeddings_by_confidence(x, outputs["confidences"])
  assert fig.axes[-1].get_ylabel() == "confidence"


def test_roc_names_the_sets(outputs):
  fig = plotting.plot_roc_curves({"kappa": (outputs["scores"], outputs["labels"])},
                                 title="OOD detection", in_name="MNIST test",
                                 ood_name="Fashion-MNIST test")
  ax = fig.axes[0]
  assert "MNIST test (in) vs Fashion-MNIST test (OOD)" in ax.get_title()
  assert ax.get_xlabel().startswith("MNIST test") and "Fashion-MNIST" in ax.get_ylabel()


def test_risk_coverage_zooms_on_the_curves():
  rng = np.random.default_rng(1)
  confidences = rng.random(1000)
  correct = rng.random(1000) < 0.97
  correct[np.argmax(confidences)] = False  # a spike to risk 1 at the smallest coverage
  fig = plotting.plot_risk_coverage({"a": confidences}, correct)
  ax = fig.axes[0]
  bottom, top = ax.get_ylim()
  error = 1 - correct.mean()
  assert bottom <= 0 and error < top < 0.2
  assert ax.get_xlabel().startswith("coverage")
  assert ax.get_ylabel() == "selective risk (error rate of the kept images)"
  assert plotting.plot_risk_coverage(confidences, correct, max_risk=0.5).axes[0].get_ylim()[1] == 0.5


def test_boxplot_log_scale_and_ood_name():
  kappa = np.r_[np.full(20, 200.0), np.full(5, 20.0)]
  correct = np.r_[np.ones(20, bool), np.zeros(5, bool)]
  fig = plotting.plot_confidence_boxplot(kappa, correct, np.full(10, 3.0), ylabel="kappa",
                                         ood_name="Fashion-MNIST test")
  ax = fig.axes[0]
  assert ax.get_yscale() == "log"
  assert "Fashion-MNIST test" in ax.get_xticklabels()[2].get_text()
  assert plotting.plot_confidence_boxplot(kappa, correct, log_scale=False).axes[0].get_yscale() == (
      "linear")


def test_figure_index(tmp_path):
  paths = [str(tmp_path / n) for n in (
      "reliability_kappa_isotonic.png", "confidence_boxplot_kappa.png", "risk_coverage.png",
      "reliability_kappa.png", "custom_plot.png", "embeddings.png")] + [None]
  entries = plotting.figure_entries(paths)
  names = [p.rsplit("/", 1)[-1] for p, _ in entries]
  assert names == ["embeddings.png", "risk_coverage.png", "confidence_boxplot_kappa.png",
                   "reliability_kappa.png", "reliability_kappa_isotonic.png", "custom_plot.png"]
  assert "kappa" in dict(entries)[str(tmp_path / "confidence_boxplot_kappa.png")]
  assert plotting.describe_figure("custom_plot.png") == "custom plot"
  index = plotting.write_figure_index(str(tmp_path), entries[:2] + ["ood_roc.png"])
  assert index == str(tmp_path / "FIGURES.md")
  lines = [l for l in (tmp_path / "FIGURES.md").read_text().splitlines() if l[:1].isdigit()]
  assert lines[0].startswith("1. [embeddings.png](embeddings.png): ")
  assert lines[1].startswith("2. [risk_coverage.png](risk_coverage.png): ")
  assert lines[2].startswith("3. [ood_roc.png](ood_roc.png): OOD detection ROC")


def test_confidence_figures_with_descriptions_and_names(tmp_path):
  from sphereembed.evaluation.protocols import confidence as confidence_eval
  rng = np.random.default_rng(0)
  centroids = np.linalg.qr(rng.normal(size=(8, 4)))[0].T
  labels = rng.integers(0, 4, 200)

  def outputs(n, ood):
    x = rng.normal(size=(n, 8)) if ood else centroids[labels[:n]] + 0.6 * rng.normal(size=(n, 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return {"embedding": x, "kappa": rng.uniform(1, 5, n) if ood else rng.uniform(5, 500, n)}

  entries = confidence_eval.plot_confidence_figures(
      str(tmp_path), outputs(200, False), labels, centroids, ood_outputs=outputs(50, True),
      in_name="MNIST test", ood_name="Fashion-MNIST test", with_descriptions=True)
  names = [p.rsplit("/", 1)[-1] for p, _ in entries]
  assert names[:2] == ["risk_coverage.png", "ood_roc.png"]
  assert all(description and "\n" not in description for _, description in entries)
  assert all((tmp_path / n).exists() for n in names)
  plotting.write_figure_index(str(tmp_path), entries)
  text = (tmp_path / "FIGURES.md").read_text()
  assert all(f"]({n})" in text for n in names)
