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
    "CorruptMetricsError", "JsonlWriter", "LoggingWriter", "MetricWriter", "MultiWriter",
    "ReportProgress", "TensorBoardWriter", "create_default_writer", "read_jsonl",
    "repair_torn_tail",
]


def _to_float(value) -> float:
  return float(np.asarray(value))


class MetricWriter:
  """The interface: scalars per step, hyperparameters once, flush and close."""

  def write_scalars(self, step: int, scalars: Mapping[str, Any], log: bool = True) -> None:
    """Records ``scalars`` at ``step``; ``log=False`` keeps them out of the text log.

    The engine's progress line already shows the training metrics it
    records with ``log=False``: one log line per interval, not three.
    """
    raise NotImplementedError

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    del hparams

  def flush(self) -> None:
    pass

  def close(self) -> None:
    self.flush()


class JsonlWriter(MetricWriter):
  """One JSON object per ``write_scalars`` call: ``{"step": s, name: value, ...}``.

  Appends, so a resumed run continues the file of the interrupted one; a
  last line that a killed run left half-written is repaired first
  (:func:`repair_torn_tail`), so that new records never glue onto it.
  """

  def __init__(self, path: str):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    self.path = path
    repair_torn_tail(path)
    self._file = open(path, "a", encoding="utf-8")

  def write_scalars(self, step, scalars, log=True):
    del log  # files keep everything
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

  def write_scalars(self, step, scalars, log=True):
    del log  # files keep everything
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

  def write_scalars(self, step, scalars, log=True):
    if not log:
      return
    text = ", ".join(f"{name}={_to_float(value):.4g}" for name, value in sorted(scalars.items()))
    logging.info("[%d] %s", step, text)


class MultiWriter(MetricWriter):
  """Forwards every call to several writers."""

  def __init__(self, writers: Sequence[MetricWriter]):
    self.writers = list(writers)

  def write_scalars(self, step, scalars, log=True):
    for writer in self.writers:
      writer.write_scalars(step, scalars, log=log)

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


class CorruptMetricsError(ValueError):
  """A line of a JSON-lines metrics file, other than a torn last one, is not a JSON record."""


def _parse_line(line: bytes):
  """The JSON value of one line, or None when it is not valid UTF-8 JSON."""
  try:
    return json.loads(line.decode("utf-8"))
  except ValueError:  # JSONDecodeError and UnicodeDecodeError
    return None


def _preview(data: bytes, limit: int = 80) -> str:
  text = repr(data[:limit])
  return text + ("..." if len(data) > limit else "")


def repair_torn_tail(path: str) -> None:
  """Makes ``path`` end with a whole line before anything is appended to it.

  A process killed while writing (or a crash of the machine) can leave the
  last line half-written: bytes after the last newline. If they still form a
  JSON record, the missing newline is added; otherwise they are cut off (a
  half record cannot be used), with a warning quoting them. A missing or
  empty file, or one that ends with a newline, is left alone.
  """
  try:
    size = os.path.getsize(path)
  except OSError:
    return
  if size == 0:
    return
  with open(path, "r+b") as f:
    # Find the start of the last line, reading backwards in blocks.
    end, start, tail = size, size, b""
    while start > 0:
      step = min(1 << 16, start)
      f.seek(start - step)
      block = f.read(step)
      newline = block.rfind(b"\n")
      if newline >= 0:
        tail = block[newline + 1:] + tail
        start = start - step + newline + 1
        break
      tail, start = block + tail, start - step
    if start == end:
      return  # ends with a newline
    if isinstance(_parse_line(tail), dict):
      f.seek(end)
      f.write(b"\n")
      return
    f.truncate(start)
  logging.warning("%s ended in a half-written line (%d bytes, %s), left by an interrupted run: "
                  "removed it before appending.", path, end - start, _preview(tail))


def read_jsonl(path: str) -> list[dict[str, Any]]:
  """The scalar records of a :class:`JsonlWriter` file (hparams lines skipped).

  A torn last line (no final newline: what a killed writer leaves) is
  skipped with a warning.

  Raises:
    CorruptMetricsError: any other line that is not a JSON object (garbage
      bytes, a line glued onto a torn one); the message names the file and
      the line number.
  """
  with open(path, "rb") as f:
    lines = f.read().split(b"\n")
  # After the last newline: b"" for a whole file, else a line whose writer was interrupted.
  torn = lines.pop()
  records = []
  for number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    record = _parse_line(line)
    if not isinstance(record, dict):
      raise CorruptMetricsError(
          f"{path}, line {number}, is not a JSON record ({_preview(line)}): the file is damaged "
          f"(a disk error, or two runs writing it at once). Repair or remove that line, or use "
          "another --workdir.")
    records.append(record)
  if torn.strip():
    record = _parse_line(torn)
    if isinstance(record, dict):
      records.append(record)
    else:
      logging.warning("%s: skipped its half-written last line %d (%s), left by an interrupted "
                      "run.", path, len(lines) + 1, _preview(torn))
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
      self.writer.write_scalars(step, {"steps_per_sec": rate}, log=False)  # it is in the line
    self._last_step, self._last_time = step, now
    return self.last_message
