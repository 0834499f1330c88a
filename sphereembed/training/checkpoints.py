"""Orbax checkpoints of the whole train state, with a clear error when one is damaged."""

from __future__ import annotations

import os

from absl import logging
import flax.serialization
import jax
import orbax.checkpoint as ocp

__all__ = ["Checkpointer", "CorruptCheckpointError"]


class CorruptCheckpointError(RuntimeError):
  """A checkpoint exists but cannot be restored into the expected train state."""


class Checkpointer:
  """Saves and restores a train state under ``directory/<step>`` with orbax.

  The state is stored as its Flax state dict (params, optimiser state,
  centroids, RNG, step), so a checkpoint holds plain arrays and restores
  into the structure of a freshly initialised state, and into its
  shardings: pass a state already replicated over the mesh
  (:func:`sphereembed.training.sharding.replicate`) and the restored arrays
  are replicated alike.

  With several processes (``jax.distributed.initialize``), every process
  creates the checkpointer and calls :meth:`save` and
  :meth:`restore_or_keep` with its part of the same global state; orbax
  synchronises them, process 0 writes the metadata and commits the step.
  ``directory`` must then be on a file system every host shares.

  Args:
    directory: the checkpoint folder (created if missing).
    max_to_keep: how many recent checkpoints to keep.
  """

  def __init__(self, directory: str, max_to_keep: int = 2):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state) -> None:
    """Writes ``state`` as step ``step`` (waits until it is on disk; every process calls it)."""
    self._manager.save(int(step), args=ocp.args.StandardSave(flax.serialization.to_state_dict(state)))
    self._manager.wait_until_finished()

  def restore_or_keep(self, state):
    """The latest checkpoint restored into ``state``'s structure, or ``state``.

    Raises:
      CorruptCheckpointError: when the latest checkpoint cannot be read or
        does not match the state (another model or config, truncated files).
    """
    step = self.latest_step()
    if step is None:
      return state
    target = flax.serialization.to_state_dict(state)
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
    try:
      restored = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
      new_state = flax.serialization.from_state_dict(state, restored)
    except Exception as error:  # orbax raises many types for damaged or mismatched files
      raise CorruptCheckpointError(
          f"The checkpoint {os.path.join(self.directory, str(step))} cannot be restored "
          f"({type(error).__name__}: {error}). It is damaged or was written by a different "
          "model or config. Delete that folder to resume from an earlier checkpoint, or choose a "
          "new --workdir to start afresh.") from error
    logging.info("Restored the train state of step %d from %s", step, self.directory)
    return new_state

  def close(self) -> None:
    self._manager.close()
