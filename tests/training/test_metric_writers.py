"""Metric writers and the progress report."""

import json
import logging

import numpy as np
import pytest

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
    def write_scalars(self, step, scalars, log=True):
      recorded.append((step, scalars, log))

  progress = metric_writers.ReportProgress(300, every_steps=100, writer=Recorder(),
                                           clock=lambda: next(times))
  assert progress(0) is None
  message = progress(100, extra="loss=1")
  assert "step 100/300 (33.3%)" in message and "10.00 steps/s" in message
  assert "ETA 0m20s" in message and message.endswith("loss=1")
  # Recorded for the files, kept out of the text log (the progress line shows it).
  assert recorded == [(100, {"steps_per_sec": 10.0}, False)]


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


def _write_lines(path, data: bytes):
  with open(path, "wb") as f:
    f.write(data)


def test_read_jsonl_skips_a_torn_last_line_with_a_warning(tmp_path, caplog):
  path = str(tmp_path / "m.jsonl")
  _write_lines(path, b'{"hparams": {"lr": 0.1}}\n{"step": 1, "loss": 2.5}\n{"step": 2, "lo')
  with caplog.at_level(logging.WARNING):
    assert metric_writers.read_jsonl(path) == [{"step": 1, "loss": 2.5}]
  assert "half-written last line 3" in caplog.text
  # Bytes that are not UTF-8 at the end (a crash's zeroed block or garbage): torn too.
  _write_lines(path, b'{"step": 1, "loss": 2.5}\n\x00\x00\xff\xfe')
  assert metric_writers.read_jsonl(path) == [{"step": 1, "loss": 2.5}]
  # A whole last record without its newline is kept.
  _write_lines(path, b'{"step": 1, "loss": 2.5}\n{"step": 2, "loss": 1.0}')
  assert metric_writers.read_jsonl(path)[-1] == {"step": 2, "loss": 1.0}


@pytest.mark.parametrize("damage, line", [
    (b'{"step": 1, "loss": 2.5}\n{"step": 2, "lo{"step": 3, "loss": 1.0}\n', 2),
    (b'{"step": 1, "loss": 2.5}\n\xff\xfe\x00garbage\n{"step": 3, "loss": 1.0}\n', 2),
    (b'{"step": 1, "loss": 2.5}\n{"step": 3, "loss": 1.0}\n[1, 2]\n', 3),
])
def test_read_jsonl_names_the_file_and_line_of_worse_damage(tmp_path, damage, line):
  path = str(tmp_path / "m.jsonl")
  _write_lines(path, damage)
  with pytest.raises(metric_writers.CorruptMetricsError, match=f"m.jsonl, line {line}, is not"):
    metric_writers.read_jsonl(path)
  assert issubclass(metric_writers.CorruptMetricsError, ValueError)


def test_writer_repairs_a_torn_last_line_before_appending(tmp_path, caplog):
  path = str(tmp_path / "m.jsonl")
  _write_lines(path, b'{"step": 1, "loss": 2.5}\n{"step": 2, "lo')
  with caplog.at_level(logging.WARNING):
    writer = metric_writers.JsonlWriter(path)
  assert "half-written line" in caplog.text
  writer.write_scalars(3, {"loss": 1.0})
  writer.close()
  assert open(path, "rb").read() == b'{"step": 1, "loss": 2.5}\n{"step": 3, "loss": 1.0}\n'
  # A whole record without its newline gets one; a file of one torn line becomes empty.
  _write_lines(path, b'{"step": 1, "loss": 2.5}')
  metric_writers.JsonlWriter(path).close()
  assert open(path, "rb").read() == b'{"step": 1, "loss": 2.5}\n'
  _write_lines(path, b'{"st' + b"x" * 100_000)
  metric_writers.JsonlWriter(path).close()
  assert open(path, "rb").read() == b""


def test_run_with_a_torn_metrics_file_resumes_and_writes_metrics_json(tmp_path, monkeypatch):
  from sphereembed import methods  # pylint: disable=import-outside-toplevel
  from sphereembed.methods import centroid  # pylint: disable=import-outside-toplevel
  from sphereembed.runner import train_and_evaluate  # pylint: disable=import-outside-toplevel
  from tests.training.fake_data import write_fake_mnist  # pylint: disable=import-outside-toplevel
  config = methods.default_config()
  config.update(dict(
      data_dir=write_fake_mnist(tmp_path / "data"), sampler="shuffled", batch_size=32,
      num_epochs=1, features=(4, 8), hidden=32, warmup_steps=2, learning_rate=1e-2,
      log_every_steps=2, checkpoint_every_steps=4, eval_batch_size=64, figures=False,
      tensorboard=False))
  workdir = tmp_path / "run"
  real_step, calls = centroid.train_step, [0]

  def killed_step(*args, **kwargs):
    calls[0] += 1
    if calls[0] == 6:
      raise RuntimeError("simulated kill")
    return real_step(*args, **kwargs)

  monkeypatch.setattr(centroid, "train_step", killed_step)
  with pytest.raises(RuntimeError, match="simulated kill"):
    train_and_evaluate(config, str(workdir))
  monkeypatch.setattr(centroid, "train_step", real_step)
  jsonl = workdir / "metrics.jsonl"
  data = jsonl.read_bytes()
  jsonl.write_bytes(data[:-len(data.splitlines()[-1]) // 2 - 1])  # the last line cut mid-way
  assert not jsonl.read_bytes().endswith(b"\n")
  metrics = train_and_evaluate(config, str(workdir))
  assert metrics["resumed_from_step"] == {"train": 4}
  assert (workdir / "metrics.json").exists()
  records = metric_writers.read_jsonl(str(jsonl))  # every line whole again
  assert any(r["step"] == 7 and "train_loss" in r for r in records)
  # The run finished: a rerun resumes at its end, reading its final loss from the file.
  data = jsonl.read_bytes()
  jsonl.write_bytes(data[:-5])
  (workdir / "metrics.json").unlink()
  again = train_and_evaluate(config, str(workdir))
  assert again["resumed_from_step"] == {"train": 7}
  assert np.isfinite(again["final_train_loss"])
  assert (workdir / "metrics.json").exists()
