"""Metric writers and progress reports in the style of CLU, without TensorFlow.

``clu.metric_writers`` and ``clu.periodic_actions`` import TensorFlow, which
would add about 600 MB and a minute to every fresh install of this CPU-first
library. These classes keep CLU's interface (``write_scalars(step, scalars)``,
``write_hparams``, ``flush``, ``close``; a periodic progress report with
steps/s and ETA) on top of JSON lines and tensorboardX, so a CLU writer can
be swapped in where TensorFlow is available.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Mapping, Sequence

from absl import logging
import numpy as np

__all__ = [
    "JsonlWriter", "LoggingWriter", "MetricWriter", "MultiWriter", "ReportProgress",
    "TensorBoardWriter", "create_default_writer", "read_jsonl",
]


def _to_float(value) -> float:
  return float(np.asarray(value))


class MetricWriter:
  """The interface: scalars per step, hyperparameters once, flush and close."""

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    raise NotImplementedError

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    del hparams

  def flush(self) -> None:
    pass

  def close(self) -> None:
    self.flush()


class JsonlWriter(MetricWriter):
  """One JSON object per ``write_scalars`` call: ``{"step": s, name: value, ...}``.

  Appends, so a resumed run continues the file of the interrupted one.
  """

  def __init__(self, path: str):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    self.path = path
    self._file = open(path, "a", encoding="utf-8")

  def write_scalars(self, step, scalars):
    record = {"step": int(step), **{k: _to_float(v) for k, v in scalars.items()}}
    self._file.write(json.dumps(record) + "\n")

  def write_hparams(self, hparams):
    self._file.write(json.dumps({"hparams": hparams}, default=str) + "\n")

  def flush(self):
    self._file.flush()

  def close(self):
    self._file.close()


class TensorBoardWriter(MetricWriter):
  """TensorBoard event files through tensorboardX (no TensorFlow needed)."""

  def __init__(self, logdir: str):
    from tensorboardX import SummaryWriter  # Imported here: only this writer needs it.
    self._writer = SummaryWriter(logdir)

  def write_scalars(self, step, scalars):
    for name, value in scalars.items():
      self._writer.add_scalar(name, _to_float(value), int(step))

  def write_hparams(self, hparams):
    self._writer.add_text("hparams", json.dumps(hparams, indent=1, default=str), 0)

  def flush(self):
    self._writer.flush()

  def close(self):
    self._writer.close()


class LoggingWriter(MetricWriter):
  """Scalars to the absl log, one line per call."""

  def write_scalars(self, step, scalars):
    text = ", ".join(f"{name}={_to_float(value):.4g}" for name, value in sorted(scalars.items()))
    logging.info("[%d] %s", step, text)


class MultiWriter(MetricWriter):
  """Forwards every call to several writers."""

  def __init__(self, writers: Sequence[MetricWriter]):
    self.writers = list(writers)

  def write_scalars(self, step, scalars):
    for writer in self.writers:
      writer.write_scalars(step, scalars)

  def write_hparams(self, hparams):
    for writer in self.writers:
      writer.write_hparams(hparams)

  def flush(self):
    for writer in self.writers:
      writer.flush()

  def close(self):
    for writer in self.writers:
      writer.close()


def create_default_writer(logdir: str, *, tensorboard: bool = True,
                          just_logging: bool = False) -> MultiWriter:
  """JSON lines (``metrics.jsonl``), TensorBoard events and the absl log.

  Args:
    logdir: the folder of ``metrics.jsonl`` and ``tensorboard/``.
    tensorboard: also write TensorBoard event files.
    just_logging: only the absl log, no files (as CLU's writer: every host
      but the first of a multi-host run passes ``jax.process_index() > 0``,
      so that one process owns the files).
  """
  if just_logging:
    return MultiWriter([LoggingWriter()])
  writers: list[MetricWriter] = [JsonlWriter(os.path.join(logdir, "metrics.jsonl")),
                                 LoggingWriter()]
  if tensorboard:
    writers.append(TensorBoardWriter(os.path.join(logdir, "tensorboard")))
  return MultiWriter(writers)


def read_jsonl(path: str) -> list[dict[str, Any]]:
  """The scalar records of a :class:`JsonlWriter` file (hparams lines skipped)."""
  with open(path, encoding="utf-8") as f:
    records = [json.loads(line) for line in f if line.strip()]
  return [r for r in records if "step" in r]


def _format_duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  minutes, seconds = divmod(int(round(seconds)), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


class ReportProgress:
  """Logs steps/s, percent done and ETA every ``every_steps`` steps (CLU style).

  Call it once per step with the step number just completed; it measures the
  rate over the last interval, so compilation and evaluation pauses do not
  distort the ETA for long.

  Args:
    num_train_steps: the last step of the run (for percent and ETA).
    every_steps: report interval.
    writer: optional writer that also receives ``steps_per_sec``.
    clock: a time function (tests pass a fake one).
  """

  def __init__(self, num_train_steps: int, every_steps: int = 100,
               writer: MetricWriter | None = None, clock=time.monotonic):
    self.num_train_steps = int(num_train_steps)
    self.every_steps = max(int(every_steps), 1)
    self.writer = writer
    self._clock = clock
    self._last_step: int | None = None
    self._last_time = 0.0
    self.last_message = ""

  def __call__(self, step: int, extra: str = "") -> str | None:
    now = self._clock()
    if self._last_step is None:
      self._last_step, self._last_time = step, now
      return None
    if step % self.every_steps and step != self.num_train_steps:
      return None
    elapsed = now - self._last_time
    rate = (step - self._last_step) / elapsed if elapsed > 0 else float("nan")
    eta = (self.num_train_steps - step) / rate if rate > 0 else float("nan")
    percent = 100.0 * step / max(self.num_train_steps, 1)
    self.last_message = (f"step {step}/{self.num_train_steps} ({percent:.1f}%), "
                         f"{rate:.2f} steps/s, ETA {_format_duration(eta)}"
                         + (f", {extra}" if extra else ""))
    logging.info("%s", self.last_message)
    if self.writer is not None and math.isfinite(rate):
      self.writer.write_scalars(step, {"steps_per_sec": rate})
    self._last_step, self._last_time = step, now
    return self.last_message
