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
