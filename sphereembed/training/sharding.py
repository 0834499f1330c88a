"""Data parallelism over a device mesh with ``jax.sharding``: one code path for 1 to N devices.

The batch is split along its leading axis over the mesh's ``"data"`` axis;
parameters, optimiser state, centroids and batch-norm statistics are
replicated. The jitted train step (:func:`sphereembed.training.steps.train_step`)
runs unchanged: ``jit`` propagates the input shardings, so every device
computes the forward and backward pass of its slice, and XLA inserts the
all-reduces wherever the program reduces over the batch (the loss's mean,
hence the gradients; the per-class sums and counts of the centroid EMA,
:func:`sphereembed.centroids.class_sums`; the batch-norm mean and variance).
The result is the computation of the whole batch on one device, up to float
rounding: there is no per-device loss, no gradient averaging by hand, no
per-device centroid or batch-norm statistics to drift apart, and no gather
whose order could differ between ranks (the usual pitfalls of
``DistributedDataParallel`` metric learning, where each rank sees only its
own pairs unless embeddings are gathered).

Single host, any number of local devices (1 CPU, 8 simulated CPU devices
with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``, one or several
GPUs)::

  mesh = make_mesh()
  state = replicate(create_train_state(model, tx, key, sample, num_classes), mesh)
  for batch in batches:  # global batches, size divisible by mesh.size
    state, metrics = train_step(state, shard_batch(batch, mesh), spec)

Many hosts: start the same program on every host, call
``jax.distributed.initialize()`` first (on Cloud TPU and under SLURM or
Open MPI it finds the coordinator itself; elsewhere pass
``coordinator_address="host0:1234", num_processes=N, process_id=i``), then
build the mesh over all devices of all hosts (``make_mesh()``). Every host
creates the same initial state (same seed) and calls :func:`replicate`;
each host feeds its own part of the global batch (e.g. a sampler seeded
with ``seed + jax.process_index()``, or a global sampler's batch sliced
``[i * B // N:(i + 1) * B // N]`` for process ``i``) to :func:`shard_batch`,
which assembles the global array with
``jax.make_array_from_process_local_data``: the global batch is the
hosts' batches concatenated in process order. Metrics come back fully
replicated (``float(metrics["loss"])`` works on every host); write logs and
checkpoints from ``jax.process_index() == 0`` (Orbax coordinates
multi-host checkpoints itself).

References:
  https://docs.jax.dev/en/latest/notebooks/Distributed_arrays_and_automatic_parallelization.html
  https://docs.jax.dev/en/latest/multi_process.html
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "DATA_AXIS",
    "batch_sharding",
    "make_mesh",
    "replicate",
    "replicated_sharding",
    "shard_batch",
]

#: The name of the mesh axis the batch is split over.
DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None, *,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh of ``num_devices`` devices along the axis :data:`DATA_AXIS`.

  Args:
    num_devices: how many devices; ``None``: all of ``devices``. With
      several processes, leave it ``None`` so that the mesh spans every host.
    devices: the devices to take them from (default ``jax.devices()``, the
      global devices of every process).

  Returns:
    The mesh (automatic sharding propagation, ``jit`` decides the layouts
    of intermediates).

  Raises:
    ValueError: ``num_devices`` below 1 or above the number of devices.

  Example:
    >>> from sphereembed.training.sharding import make_mesh
    >>> mesh = make_mesh(1)
    >>> print(mesh.axis_names, mesh.size)
    ('data',) 1
  """
  devices = list(jax.devices() if devices is None else devices)
  if num_devices is None:
    num_devices = len(devices)
  if isinstance(num_devices, bool) or not 1 <= int(num_devices) <= len(devices):
    raise ValueError(
        f"num_devices must lie in [1, {len(devices)}] (the devices available), got {num_devices}.")
  # Mesh(...) rather than jax.make_mesh, whose default axis type is now
  # Explicit (sharding in types); the train step relies on automatic propagation.
  return Mesh(np.asarray(devices[:int(num_devices)]), (DATA_AXIS,))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  """A full copy on every device of ``mesh``."""
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """The leading axis split over :data:`DATA_AXIS`, the other axes whole."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places every array of ``tree`` (e.g. a ``TrainState``) on every device of ``mesh``.

  With several processes, every process must pass the same values (create
  the state from the same seed).

  Args:
    tree: a pytree of arrays (static fields such as ``apply_fn`` are kept).
    mesh: the mesh.

  Returns:
    The same pytree of fully replicated ``jax.Array`` s.
  """
  sharding = replicated_sharding(mesh)
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)
  # Each process holds the whole value: its "local data" is the global array.
  return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x), np.shape(x)),
      tree)


def shard_batch(batch: Any, mesh: Mesh) -> Any:
  """Splits every array of ``batch`` along its leading axis over the mesh's data axis.

  With one process, ``batch`` is the global batch. With several, it is this
  process's part, and the global batch is the processes' parts concatenated
  in process order (``jax.make_array_from_process_local_data``).

  Args:
    batch: a pytree of arrays sharing the batch as leading axis, e.g.
      ``{"image": (B, H, W, C), "label": (B,)}``.
    mesh: the mesh (see :func:`make_mesh`).

  Returns:
    The same pytree of global ``jax.Array`` s sharded by :func:`batch_sharding`.

  Raises:
    ValueError: a scalar leaf, or a leading size not divisible by this
      process's devices in the mesh (each device gets an equal slice).

  Example:
    >>> import numpy as np
    >>> from sphereembed.training.sharding import make_mesh, shard_batch
    >>> batch = shard_batch({"label": np.arange(4)}, make_mesh(1))
    >>> print(tuple(batch["label"].sharding.spec), batch["label"].shape)
    ('data',) (4,)
  """
  sharding = batch_sharding(mesh)
  local_devices = len(mesh.local_devices)

  def put(path, leaf):
    leaf = leaf if isinstance(leaf, jax.Array) else np.asarray(leaf)
    name = jax.tree_util.keystr(path) or "the batch"
    if leaf.ndim == 0:
      raise ValueError(f"{name} is a scalar; every batch entry needs a leading batch axis.")
    if leaf.shape[0] % local_devices:
      raise ValueError(
          f"{name} has a batch of {leaf.shape[0]}, not divisible by the {local_devices} "
          f"device(s) of the mesh's {DATA_AXIS!r} axis"
          + (" on this process" if jax.process_count() > 1 else "")
          + f"; use a batch size that is a multiple of {local_devices}.")
    if jax.process_count() == 1:
      return jax.device_put(leaf, sharding)
    return jax.make_array_from_process_local_data(sharding, np.asarray(leaf))

  return jax.tree_util.tree_map_with_path(put, batch)
