"""Metric writers and the progress report."""

import json

import numpy as np

from sphereembed import plotting
from sphereembed.training import metric_writers


def test_jsonl_writer_appends_and_reads_back(tmp_path):
  path = str(tmp_path / "m.jsonl")
  writer = metric_writers.JsonlWriter(path)
  writer.write_hparams({"lr": 0.1})
  writer.write_scalars(1, {"loss": np.float32(2.5)})
  writer.close()
  again = metric_writers.JsonlWriter(path)  # a resumed run continues the file
  again.write_scalars(2, {"loss": 1.5, "acc": 0.5})
  again.close()
  assert metric_writers.read_jsonl(path) == [{"step": 1, "loss": 2.5},
                                             {"step": 2, "loss": 1.5, "acc": 0.5}]
  assert json.loads(open(path).readline()) == {"hparams": {"lr": 0.1}}


def test_default_writer_writes_tensorboard_events(tmp_path):
  writer = metric_writers.create_default_writer(str(tmp_path))
  writer.write_scalars(3, {"loss": 1.0})
  writer.close()
  events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  assert events and events[0].stat().st_size > 0


def test_report_progress_rate_and_eta():
  times = iter([0.0, 10.0, 20.0])
  recorded = []

  class Recorder(metric_writers.MetricWriter):
    def write_scalars(self, step, scalars):
      recorded.append((step, scalars))

  progress = metric_writers.ReportProgress(300, every_steps=100, writer=Recorder(),
                                           clock=lambda: next(times))
  assert progress(0) is None
  message = progress(100, extra="loss=1")
  assert "step 100/300 (33.3%)" in message and "10.00 steps/s" in message
  assert "ETA 0m20s" in message and message.endswith("loss=1")
  assert recorded == [(100, {"steps_per_sec": 10.0})]


def test_figures_for_circle_sphere_and_curves(tmp_path):
  rng = np.random.default_rng(0)
  labels = np.arange(60) % 3
  for dim in (2, 3):
    x = rng.normal(size=(60, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    path = plotting.plot_embeddings(x, labels, np.eye(3, dim), str(tmp_path / f"{dim}.png"))
    assert path and (tmp_path / f"{dim}.png").stat().st_size > 10_000
  assert plotting.plot_embeddings(np.ones((4, 5)), labels[:4], np.eye(3, 5), "x.png") is None
  records = [{"step": s, "train_loss": 1.0 / s} for s in range(1, 30)]
  plotting.plot_training_curves(records, str(tmp_path / "c.png"), keys=("train_loss", "absent"))
  assert (tmp_path / "c.png").stat().st_size > 5_000
