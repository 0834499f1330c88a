"""The engine every method trains on: the run, the one phase loop, the one chunked map.

A method (:mod:`sphereembed.methods`) trains one or more *phases* (a network,
each member of an ensemble, a head on a frozen network). Each phase is
:func:`run_phase`: a train state, a jitted step function and a stream of
batches, run on the device mesh of the :class:`Run` with prefetching,
orbax checkpoints under ``workdir/checkpoints/<phase>``, metric records
(``<phase>_<metric>`` in ``metrics.jsonl`` and TensorBoard), progress
reports and a guard against a NaN loss. A phase restarted with the same
workdir resumes from its last checkpoint and ends as an uninterrupted one
would: the batches are functions of the seed and the step, so the method's
batch stream is asked for the batches after the restored step.

Data parallelism: the state is replicated over the mesh and every batch is
split over its ``data`` axis (:mod:`sphereembed.training.sharding`); the step
function runs unchanged, XLA reduces over the whole batch. With several
processes (``jax.distributed.initialize``) every process asks its batch
stream for its own rows of the same global batches (``rows``), and every
process takes part in the checkpoints; only process 0 writes files.

:func:`map_batches` is the one chunked map over images (embedding a test
set, a prediction with samples): fixed-size chunks, the last one padded, so
that one compiled shape serves every chunk, split over the mesh alike.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any, Callable, Iterator

from absl import logging
import jax
import ml_collections
import numpy as np

from sphereembed.data import cifar
from sphereembed.training import checkpoints
from sphereembed.training import metric_writers
from sphereembed.training import sharding
from sphereembed.training.checkpoints import Checkpointer

__all__ = ["Run", "check_resumable", "embed", "map_batches", "run_phase", "write_json"]

StepFn = Callable[[Any, dict], tuple[Any, dict]]
# ``batches(start_step, rows)``: this process's ``rows`` of the batches of steps start_step + 1, ...
BatchStream = Callable[[int, slice], Iterator[dict]]


@dataclasses.dataclass
class Run:
  """What every phase of one experiment shares.

  Attributes:
    config: the validated, locked config.
    workdir: the run's folder.
    mesh: the device mesh the phases train on.
    writer: the metric writer (files on process 0 only).
    primary: whether this process writes the run's files (process 0).
    seconds: training seconds of each phase in this process's run.
    resumed_from: the step each phase restarted from (0: a fresh start).
    last_loss: the last logged training loss of each phase (absent when a
      phase was already finished before this run).
    dataset: a dataset the caller passed in place of ``config.dataset``
      (:class:`sphereembed.data.Dataset`), or ``None``.
  """

  config: ml_collections.ConfigDict
  workdir: str
  mesh: Any
  writer: metric_writers.MetricWriter
  primary: bool = True
  seconds: dict = dataclasses.field(default_factory=dict)
  resumed_from: dict = dataclasses.field(default_factory=dict)
  last_loss: dict = dataclasses.field(default_factory=dict)
  dataset: Any = None

  def path(self, *names: str) -> str:
    return os.path.join(self.workdir, *names)


def write_json(path: str, value: Any) -> None:
  """Writes ``value`` as JSON whole, then renames: no reader ever sees half a file."""
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump(value, f, indent=1, default=list)
  os.replace(path + ".tmp", path)


def _has_checkpoints(workdir: str) -> bool:
  """Whether any phase of the run in ``workdir`` saved a checkpoint."""
  root = os.path.join(workdir, "checkpoints")
  return os.path.isdir(root) and any(
      name.isdigit() for phase in os.listdir(root) if os.path.isdir(os.path.join(root, phase))
      for name in os.listdir(os.path.join(root, phase)))


def _read_workdir_config(path: str):
  """The workdir's ``config.json``: a dict, None when absent, or the reason it is unreadable."""
  if not os.path.exists(path):
    return None
  try:
    with open(path, "rb") as f:
      text = f.read()
    if not text.strip():
      return "the file is empty"
    saved = json.loads(text.decode("utf-8"))
  except (ValueError, OSError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
  return saved if isinstance(saved, dict) else f"a JSON {type(saved).__name__}, not an object"


def check_resumable(config, workdir: str, *, defaults: dict, resume_safe=frozenset(),
                    write: bool = True) -> None:
  """Refuses to resume a run whose training-relevant config differs; ``write``: saves the config.

  The earlier run's config is the workdir's ``config.json``; when that is
  missing or unreadable, the one kept in its newest checkpoint
  (:func:`sphereembed.training.checkpoints.saved_config`), with a warning.

  Args:
    config: the validated config of this run.
    workdir: the run's folder; its ``config.json`` is the earlier run's.
    defaults: the schema's defaults: a field newer than the saved run had
      its default value there.
    resume_safe: the fields that may change between an interrupted run and
      its resumption (logging, evaluation-only settings, paths).
    write: whether to write this run's ``config.json`` (process 0).

  Raises:
    ValueError: the workdir holds a run of another config that saved a
      checkpoint (a run that never did may be replaced), checkpoints of
      an earlier version's layout, or checkpoints with an unreadable
      ``config.json`` and no config kept in them.
  """
  root = os.path.join(workdir, "checkpoints")
  if os.path.isdir(root) and any(name.isdigit() for name in os.listdir(root)):
    raise ValueError(
        f"{root} holds checkpoints of an earlier version of sphereembed (checkpoints/<step>; "
        "this version keeps checkpoints/<phase>/<step> and another train state), which it "
        "cannot resume. Use another --workdir.")
  path = os.path.join(workdir, "config.json")
  current = config.to_dict()
  # A run that never saved a checkpoint (it failed before: bad data, an interrupt) holds
  # nothing to resume: its corrected command may reuse the workdir.
  if _has_checkpoints(workdir):
    saved, source = _read_workdir_config(path), path
    if not isinstance(saved, dict):
      kept = checkpoints.saved_config(root)
      if kept is None and isinstance(saved, str):
        raise ValueError(
            f"{path} cannot be read ({saved}), and the checkpoints in {root} keep no config to "
            "check this run against (an earlier version of sphereembed saved them). Restore "
            "that file from a copy, or use another --workdir.")
      if kept is None:
        logging.warning("%s is missing and the checkpoints in %s keep no config: resuming "
                        "without checking that the config is the same.", path, root)
      else:
        logging.warning("%s is %s; checking this run against the config kept in the "
                        "checkpoint %s.", path,
                        "missing" if saved is None else f"unreadable ({saved})", kept[0])
        saved, source = kept[1], kept[0]
    if isinstance(saved, dict):
      as_json = lambda value: json.dumps(value, default=list)
      changed = sorted(k for k in set(saved) | set(current)
                       if k not in resume_safe
                       and as_json(saved.get(k, defaults.get(k))) != as_json(current.get(k)))
      if changed:
        raise ValueError(
            f"{workdir} holds a run with a different config (fields {changed}, as saved in "
            f"{source}); resuming it would mix two experiments. Use another --workdir.")
  if write:
    write_json(path, current)


def _check_batch_fits_mesh(batch_size: int, mesh, what: str) -> None:
  if batch_size % mesh.size:
    processes = jax.process_count()
    raise ValueError(
        f"{what} = {batch_size} does not split over the {mesh.size} devices of the mesh"
        + (f" ({processes} processes)" if processes > 1 else "")
        + f"; use a multiple of {mesh.size}"
        + (", or fewer devices (config.num_devices)." if processes == 1 else "."))


def run_phase(run: Run, name: str, state, step_fn: StepFn, *, num_steps: int,
              batches: BatchStream, batch_size: int, batch_size_source: str = "the batch size",
              on_start: Callable | None = None, evaluate: Callable | None = None,
              evaluate_every: int = 0):
  """Trains ``state`` to step ``num_steps`` with ``step_fn``: the one train-step loop.

  Args:
    run: the run.
    name: the phase's name: its checkpoint folder ``checkpoints/<name>`` and
      the prefix of its metric records (``<name>_loss``, ...).
    state: a fresh train state (replicated over the mesh here; a checkpoint
      of this phase, if any, is restored into it).
    step_fn: ``(state, batch) -> (state, metrics)``, jitted; ``metrics``
      holds at least the scalar ``"loss"``.
    num_steps: the phase's last step.
    batches: ``batches(start_step, rows)``: this process's ``rows`` of the
      global batches of steps ``start_step + 1, ...`` (a function of the
      seed and the step, so that a resumed phase sees the same batches).
    batch_size: the global batch size (it must split over the mesh).
    batch_size_source: the config fields that set it, for the error message.
    on_start: ``on_start(state, first_batch) -> state``, called before step 1
      of a fresh phase (not on resumption), e.g. an initial curvature.
    evaluate: ``evaluate(state) -> {name: float}``, recorded every
      ``evaluate_every`` steps (not at the last step).
    evaluate_every: the interval of ``evaluate`` (0: never).

  Returns:
    The trained state (replicated over the mesh).

  Raises:
    ValueError: a batch that does not split over the mesh.
    FloatingPointError: the training loss became NaN or infinite.
    KeyboardInterrupt: passed on after checkpointing the last finished step
      (Ctrl-C), so that rerunning resumes where the run stopped.
    CorruptCheckpointError: no checkpoint of the phase can be restored (a damaged
      latest one falls back to the one before, with a warning).
  """
  config, mesh, writer = run.config, run.mesh, run.writer
  _check_batch_fits_mesh(batch_size, mesh, batch_size_source)
  # The same seed on every process: the same initial state, replicated.
  state = sharding.replicate(state, mesh)
  # Every checkpoint keeps the run's config (check_resumable reads it when config.json is gone).
  checkpointer = Checkpointer(run.path("checkpoints", name), config.keep_checkpoints,
                              config=config.to_dict())
  iterator = None
  start_time = time.monotonic()
  try:
    # Restored straight into the replicated shardings, on every process. A damaged latest
    # checkpoint (a disk error, a kill during the save) falls back to the one before, warning.
    state = checkpointer.restore_or_keep(state, fallback=True)
    start = int(sharding.to_host(state.step))
    run.resumed_from[name] = start
    if start < num_steps:
      logging.info("Phase %s: steps %d to %d on %d %s device(s)", name, start + 1, num_steps,
                   mesh.size, mesh.devices.flat[0].platform)
    rows = sharding.process_rows(mesh, batch_size)
    # A background thread gathers, augments and shards the next batches while
    # the devices run the current step.
    iterator = cifar.prefetch(batches(start, rows), config.prefetch_batches,
                              transform=lambda batch: sharding.shard_batch(batch, mesh))
    progress = metric_writers.ReportProgress(num_steps, config.log_every_steps, writer)
    progress(start)
    pending: list[dict] = []
    done = saved = start  # the last step finished, the last step checkpointed
    try:
      for step in range(start + 1, num_steps + 1):
        batch = next(iterator)
        if step == 1 and on_start is not None:
          state = on_start(state, batch)
        state, metrics = step_fn(state, batch)
        done = step
        pending.append(metrics)
        last = step == num_steps
        if step % config.log_every_steps == 0 or last:
          summary = {k: float(np.mean([m[k] for m in sharding.to_host(pending)]))
                     for k in pending[0]}
          pending = []
          run.last_loss[name] = summary["loss"]
          # Recorded in the files; the progress line is their one log line.
          writer.write_scalars(step, {f"{name}_{k}": v for k, v in summary.items()}, log=False)
          progress(step, extra=f"{name} loss={summary['loss']:.4f}" + "".join(
              f", {k}={v:.4g}" for k, v in sorted(summary.items()) if k != "loss"))
          if not np.isfinite(summary["loss"]):
            raise FloatingPointError(
                f"The {name} loss became {summary['loss']} at step {step}; lower "
                "config.learning_rate or check the data.")
        else:
          progress(step)
        if evaluate is not None and evaluate_every and step % evaluate_every == 0 and not last:
          writer.write_scalars(step, evaluate(state))
        if step % config.checkpoint_every_steps == 0 or last:
          checkpointer.save(step, state)
          saved = step
        writer.flush()
    except KeyboardInterrupt:
      # Ctrl-C: keep the steps done so far. A step interrupted inside the jitted call may have
      # consumed the state's buffers (donation); then the last periodic checkpoint stands.
      if done > saved:
        try:
          checkpointer.save(done, state)
          logging.warning("Interrupted: saved the state of step %d of phase %s.", done, name)
        except Exception:  # pylint: disable=broad-except
          logging.warning("Interrupted mid-step: phase %s resumes from step %d.", name, saved)
      raise
  finally:
    # Also on errors and interrupts: stop the prefetch thread, let orbax finish its threads.
    if iterator is not None:
      iterator.close()
    checkpointer.close()
  run.seconds[name] = time.monotonic() - start_time
  return state


@jax.jit
def _embed_step(state, images: jax.Array) -> dict[str, jax.Array]:
  return state.apply_fn(state.variables(), images, train=False)


def embed(state, images, batch_size: int = 1000, mesh=None) -> dict[str, np.ndarray]:
  """The model's outputs for an array of images, in eval mode: every method's embedding pass.

  Args:
    state: a train state (:class:`~sphereembed.training.state.TrainState`).
    images: ``(N, H, W, C)`` images.
    batch_size: images per forward pass (one compiled shape: the last chunk is padded).
    mesh: split every chunk over this mesh (the state replicated over it).

  Returns:
    Every output of the model (``"embedding"``, ``"logits"``, ``"kappa"``,
    HIB's ``"means"`` ...) as NumPy arrays, scalars once.

  Raises:
    ValueError: no images, or a non-positive batch size.
  """
  return map_batches(functools.partial(_embed_step, state), images, batch_size, mesh=mesh)


def map_batches(fn: Callable, images, batch_size: int, *, mesh=None, drop: tuple[str, ...] = (),
                with_index: bool = False) -> dict[str, np.ndarray]:
  """``fn`` over fixed-size chunks of ``images`` (the last one padded), outputs concatenated.

  Args:
    fn: ``fn(chunk) -> dict`` (``fn(chunk, chunk_index)`` with
      ``with_index``); every output has a leading batch axis, except scalars
      (the same for every chunk: kept once).
    images: ``(N, ...)`` array of inputs.
    batch_size: inputs per chunk (rounded up to a multiple of the mesh size).
    mesh: when given (``fn``'s parameters replicated over it), every chunk
      is split over its devices, those of every process included: each
      process feeds its rows and every process gets all the outputs.
    drop: output keys discarded per chunk (large arrays some sets don't need).
    with_index: pass the chunk's index to ``fn`` (a per-chunk random stream).

  Returns:
    ``{key: (N, ...) array}`` as NumPy arrays, scalars as 0-d arrays.

  Raises:
    ValueError: no images, or a non-positive batch size.
  """
  if len(images) == 0:
    raise ValueError("no images to map over.")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
  devices = mesh.size if mesh is not None else 1
  size = -(-min(batch_size, len(images)) // devices) * devices
  rows = sharding.process_rows(mesh, size) if mesh is not None else slice(None)
  chunks = []
  for index, start in enumerate(range(0, len(images), size)):
    chunk = np.asarray(images[start:start + size])
    count = len(chunk)
    if count < size:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - count, axis=0)])
    chunk = sharding.shard_batch(chunk[rows], mesh) if mesh is not None else chunk
    out = fn(chunk, index) if with_index else fn(chunk)
    out = sharding.to_host({k: v for k, v in out.items() if k not in drop})
    chunks.append({k: (np.asarray(v) if np.ndim(v) == 0 else np.asarray(v)[:count])
                   for k, v in out.items()})
  return {k: (chunks[0][k] if np.ndim(chunks[0][k]) == 0
              else np.concatenate([c[k] for c in chunks])) for k in chunks[0]}
