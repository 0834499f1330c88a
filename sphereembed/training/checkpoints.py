"""Orbax checkpoints of the whole train state, verified by checksums; a clear error when damaged.

Every checkpoint ``directory/<step>`` is orbax's folder plus two files that
process 0 writes once orbax has committed the step:

* ``config.json``: the run's config (when the :class:`Checkpointer` was given
  one), so that a resume can be checked against the checkpoint itself
  (:func:`saved_config`), even when the workdir's ``config.json`` is gone.
* ``checksums.json``: the SHA-256 of every other file of the step folder
  (orbax's metadata included). :meth:`Checkpointer.restore_or_keep` verifies
  them before orbax reads anything, so one flipped bit anywhere is a
  :class:`CorruptCheckpointError` naming the file, never a silent resume with
  other parameters; with ``fallback=True`` an older checkpoint is restored
  instead, the damaged ones moved aside (``<step>.corrupt``), not deleted.

A checkpoint without ``checksums.json`` (an earlier version of sphereembed, or
a process killed between orbax's commit and the checksums) restores
unverified, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Any

from absl import logging
import flax.serialization
import jax
import orbax.checkpoint as ocp

__all__ = ["CHECKSUMS_FILE", "CONFIG_FILE", "Checkpointer", "CorruptCheckpointError",
           "file_sha256", "saved_config", "verify_checksums", "write_checksums"]

#: In each step folder: the SHA-256 of every other file of the folder.
CHECKSUMS_FILE = "checksums.json"
#: In each step folder: the config of the run that saved it.
CONFIG_FILE = "config.json"
_FORMAT = "sphereembed-checksums-v1"


class CorruptCheckpointError(RuntimeError):
  """A checkpoint exists but cannot be restored into the expected train state."""


def file_sha256(path: str) -> str:
  """The SHA-256 of a file's bytes, as hex (read in 1 MiB blocks)."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _files(step_dir: str) -> list[str]:
  """Every file under ``step_dir`` but the checksums (and their temporary file), sorted."""
  found = []
  for root, _, names in os.walk(step_dir):
    for name in names:
      rel = os.path.relpath(os.path.join(root, name), step_dir)
      if rel not in (CHECKSUMS_FILE, CHECKSUMS_FILE + ".tmp"):
        found.append(rel.replace(os.sep, "/"))
  return sorted(found)


def _atomic_write(path: str, text: str) -> None:
  """Writes ``text`` whole to disk, then renames: no reader ever sees half a file."""
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(path + ".tmp", path)


def _files_digest(files: dict) -> str:
  return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def write_checksums(step_dir: str) -> None:
  """Writes ``step_dir/checksums.json``: the SHA-256 of every other file of the step folder.

  The file also holds the SHA-256 of its own list, so that damage to the
  list itself is told apart from damage to the files it lists.
  """
  files = {rel: file_sha256(os.path.join(step_dir, rel)) for rel in _files(step_dir)}
  record = {"format": _FORMAT, "files": files, "files_sha256": _files_digest(files)}
  _atomic_write(os.path.join(step_dir, CHECKSUMS_FILE), json.dumps(record, sort_keys=True))


def verify_checksums(step_dir: str) -> bool:
  """Checks every file of ``step_dir`` against its ``checksums.json``.

  Returns:
    True when verified, False when the folder has no ``checksums.json``
    (a checkpoint of an earlier version: nothing to verify against).

  Raises:
    CorruptCheckpointError: a file differs from its checksum or is missing,
      or ``checksums.json`` itself is damaged; the message names the step
      folder and the file.
  """
  path = os.path.join(step_dir, CHECKSUMS_FILE)
  if not os.path.exists(path):
    return False

  def corrupt(what: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(f"The checkpoint {step_dir} cannot be restored: {what}.")

  try:
    with open(path, "rb") as f:
      record = json.loads(f.read().decode("utf-8"))
    files = record["files"]
    intact = (record.get("format") == _FORMAT and isinstance(files, dict)
              and record.get("files_sha256") == _files_digest(files))
  except (ValueError, KeyError, TypeError, AttributeError) as error:
    raise corrupt(
        f"its {CHECKSUMS_FILE} cannot be read ({type(error).__name__}: {error})") from None
  if not intact:
    raise corrupt(f"its {CHECKSUMS_FILE} does not match its own checksum")
  for rel, expected in sorted(files.items()):
    full = os.path.join(step_dir, *rel.split("/"))
    if not os.path.isfile(full):
      raise corrupt(f"the file {rel} is missing")
    if file_sha256(full) != expected:
      raise corrupt(f"the file {rel} does not match its checksum (changed on disk since the "
                    "save: a disk or copy error)")
  return True


def saved_config(directory: str) -> tuple[str, dict[str, Any]] | None:
  """The run config kept in the newest checkpoint under ``directory`` that holds a readable one.

  Args:
    directory: a :class:`Checkpointer`'s folder (``<step>/config.json``), or a
      folder of several (``<phase>/<step>/config.json``).

  Returns:
    ``(path of that config.json, config dict)``, or None when no checkpoint
    holds one (checkpoints of an earlier version).
  """
  if not os.path.isdir(directory):
    return None
  candidates = []
  for phase in [""] + sorted(os.listdir(directory)):
    folder = os.path.join(directory, phase)
    if not os.path.isdir(folder) or (phase and phase.isdigit()):
      continue
    for name in os.listdir(folder):
      path = os.path.join(folder, name, CONFIG_FILE)
      if name.isdigit() and os.path.isfile(path):
        candidates.append((os.path.getmtime(path), int(name), path))
  for _, _, path in sorted(candidates, reverse=True):
    try:
      with open(path, "rb") as f:
        config = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError):
      logging.warning("Skipping the unreadable checkpoint config %s", path)
      continue
    if isinstance(config, dict):
      return path, config
  return None


def _quiet_closed_loop_callbacks() -> None:
  """Drops the 'Event loop is closed' errors that a failed orbax restore leaves behind.

  orbax runs a restore in a fresh asyncio loop and closes it as soon as one
  read fails; TensorStore's other reads still in flight then complete into
  the closed loop, and each reports ``RuntimeError: Event loop is closed``
  through ``sys.unraisablehook`` (object None) at some later moment, dozens of
  tracebacks that bury the restore's real error. This filter drops exactly
  those and passes every other unraisable exception on; installed once.
  """
  previous = sys.unraisablehook
  if getattr(previous, "_sphereembed_quiet_loop", False):
    return

  def hook(unraisable):
    value = unraisable.exc_value
    if (unraisable.object is None and isinstance(value, RuntimeError)
        and str(value) == "Event loop is closed"):
      return
    previous(unraisable)

  hook._sphereembed_quiet_loop = True  # pylint: disable=protected-access
  sys.unraisablehook = hook


def _sync(name: str) -> None:
  """A barrier of every process (nothing with one)."""
  if jax.process_count() > 1:
    ocp.multihost.sync_global_processes(name)


class Checkpointer:
  """Saves and restores a train state under ``directory/<step>`` with orbax, verified by checksums.

  The state is stored as its Flax state dict (params, optimiser state,
  centroids, RNG, step), so a checkpoint holds plain arrays and restores
  into the structure of a freshly initialised state, and into its
  shardings: pass a state already replicated over the mesh
  (:func:`sphereembed.training.sharding.replicate`) and the restored arrays
  are replicated alike.

  With several processes (``jax.distributed.initialize``), every process
  creates the checkpointer and calls :meth:`save` and
  :meth:`restore_or_keep` with its part of the same global state; orbax
  synchronises them, process 0 writes the metadata and commits the step,
  then writes ``config.json`` and ``checksums.json``. ``directory`` must then
  be on a file system every host shares.

  Args:
    directory: the checkpoint folder (created if missing).
    max_to_keep: how many recent checkpoints to keep.
    config: the run's config as a JSON-able dict, kept in every checkpoint
      (``<step>/config.json``, see :func:`saved_config`); None: none kept.
  """

  def __init__(self, directory: str, max_to_keep: int = 2, config: dict | None = None):
    self.directory = os.path.abspath(directory)
    self._config = config
    self._primary = jax.process_index() == 0
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(int(step)))

  def save(self, step: int, state) -> None:
    """Writes ``state`` as step ``step`` (waits until it is on disk; every process calls it)."""
    saved = self._manager.save(
        int(step), args=ocp.args.StandardSave(flax.serialization.to_state_dict(state)))
    self._manager.wait_until_finished()
    step_dir = self.step_dir(step)
    # orbax skips a step not after its latest one: that folder's checksums stay as they were.
    if saved and self._primary:
      if self._config is not None:
        _atomic_write(os.path.join(step_dir, CONFIG_FILE),
                      json.dumps(self._config, indent=1, default=list))
      write_checksums(step_dir)

  def _restore(self, step: int, state):
    """Step ``step`` verified and restored into ``state``'s structure."""
    step_dir = self.step_dir(step)
    if not verify_checksums(step_dir):
      logging.warning("The checkpoint %s has no %s (saved by an earlier version of sphereembed, "
                      "or interrupted right after the save): restoring it unverified.",
                      step_dir, CHECKSUMS_FILE)
    target = flax.serialization.to_state_dict(state)
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
    _quiet_closed_loop_callbacks()
    try:
      restored = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
      return flax.serialization.from_state_dict(state, restored)
    except Exception as error:  # orbax raises many types for damaged or mismatched files
      # The first line only: TensorStore appends its whole spec (the chained error keeps it).
      lines = str(error).strip().splitlines() or [""]
      reason = lines[0][:400] + (" ..." if len(lines) > 1 or len(lines[0]) > 400 else "")
      raise CorruptCheckpointError(
          f"The checkpoint {step_dir} cannot be restored ({type(error).__name__}: {reason}). "
          "It is damaged or was written by a different model or config.") from error

  def _set_aside(self, steps: list[int]) -> None:
    """Moves damaged steps out of orbax's sight (``<step>.corrupt``), kept for inspection."""
    if self._primary:
      for step in steps:
        source = self.step_dir(step)
        target, n = source + ".corrupt", 1
        while os.path.exists(target):
          n += 1
          target = f"{source}.corrupt-{n}"
        os.replace(source, target)
        logging.warning("Moved the damaged checkpoint %s aside to %s.", source, target)
    _sync(f"sphereembed_checkpoint_set_aside_{os.path.basename(self.directory)}")
    self._manager.reload()

  def restore_or_keep(self, state, fallback: bool = False):
    """The latest checkpoint restored into ``state``'s structure, or ``state``.

    Every file of the checkpoint is first verified against its checksums.

    Args:
      state: the freshly initialised state (its structure and shardings).
      fallback: when the latest checkpoint is damaged, restore the newest
        older one that is intact instead, with a warning naming what was
        skipped; the damaged ones are moved aside (``<step>.corrupt``), so
        that training saves those steps afresh.

    Raises:
      CorruptCheckpointError: the latest checkpoint is damaged or does not
        match the state (another model or config), and (with ``fallback``)
        no older one restores either. The message names the step folder and,
        for a checksum mismatch, the file.
    """
    steps = sorted(self._manager.all_steps(), reverse=True)
    if not steps:
      return state
    errors: list[tuple[int, CorruptCheckpointError]] = []
    for step in steps if fallback else steps[:1]:
      try:
        new_state = self._restore(step, state)
      except CorruptCheckpointError as error:
        errors.append((step, error))
        if fallback and step != steps[-1]:
          logging.warning("%s Trying the checkpoint before it.", error)
        continue
      if errors:
        logging.warning("Skipped the damaged checkpoint(s) %s of %s; resuming from step %d.",
                        ", ".join(str(s) for s, _ in errors), self.directory, step)
        self._set_aside([s for s, _ in errors])
      logging.info("Restored the train state of step %d from %s", step, self.directory)
      return new_state
    latest, error = errors[0]
    if len(errors) > 1:
      remedy = (f"The {len(errors) - 1} earlier checkpoint(s) of {self.directory} cannot be "
                "restored either. Choose a new --workdir to start afresh (these checkpoints "
                "stay where they are, for inspection).")
    elif len(steps) > 1:
      remedy = ("Resume from the earlier checkpoint with restore_or_keep(state, fallback=True) "
                f"(or move {self.step_dir(latest)} out of {self.directory}), or choose a new "
                "--workdir to start afresh.")
    else:
      remedy = ("It is the only checkpoint of this phase: choose a new --workdir to start afresh "
                f"(it stays where it is, for inspection), or move {self.step_dir(latest)} out of "
                f"{self.directory} to train this phase from its start in this workdir.")
    raise CorruptCheckpointError(f"{error} {remedy}") from error.__cause__

  def close(self) -> None:
    self._manager.close()
