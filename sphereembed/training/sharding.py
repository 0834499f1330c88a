"""Data parallelism over a device mesh with ``jax.sharding``: one code path for 1 to N devices.

The batch is split along its leading axis over the mesh's ``"data"`` axis;
parameters, optimiser state, centroids and batch-norm statistics are
replicated. A jitted train step (e.g. :func:`sphereembed.methods.centroid.train_step`)
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
  state = replicate(init_train_state(model.apply, params, tx, key), mesh)
  for batch in batches:  # global batches, size divisible by mesh.size
    state, metrics = train_step(state, shard_batch(batch, mesh), spec)

Many hosts (multi-controller JAX: one process per host, each driving its
local devices): every process calls ``jax.distributed.initialize()`` first
(on Cloud TPU and under SLURM or Open MPI it finds the coordinator itself;
elsewhere pass ``coordinator_address="host0:1234", num_processes=N,
process_id=i``; on CPU the collectives go over gloo), then runs the same
program on a mesh over the devices of every host (``make_mesh()``)::

  mesh = make_mesh()                                 # jax.devices(): all hosts
  state = replicate(init_train_state(...), mesh)     # same seed on every host
  rows = process_rows(mesh, global_batch_size)       # this host's slice
  for indices in sampler:                            # the same global indices everywhere
    local = {"image": images[indices[rows]], "label": labels[indices[rows]]}
    state, metrics = train_step(state, shard_batch(local, mesh), spec)
  params = to_host(state.params)                     # NumPy, on every host

:func:`shard_batch` assembles the global array with
``jax.make_array_from_process_local_data``: the global batch is the hosts'
slices in mesh order, so a run on N hosts sees exactly the batches of a run
in one process. Metrics come back fully replicated (``float(metrics["loss"])``
works on every host); :func:`to_host` gathers sharded outputs (e.g.
embeddings) onto every host. Write logs and figures from
``jax.process_index() == 0`` only; every host takes part in Orbax
checkpoints (on a file system all hosts share).
:func:`sphereembed.training.engine.run_phase` does all of this for every method.

References:
  https://docs.jax.dev/en/latest/notebooks/Distributed_arrays_and_automatic_parallelization.html
  https://docs.jax.dev/en/latest/multi_process.html
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
from jax.experimental import multihost_utils
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "DATA_AXIS",
    "batch_sharding",
    "make_mesh",
    "process_rows",
    "replicate",
    "replicated_sharding",
    "shard_batch",
    "to_host",
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
  # Grouped by process (a stable sort: one process keeps its order), so that
  # every host feeds one contiguous slice of the batch (process_rows).
  devices = sorted(jax.devices() if devices is None else devices, key=lambda d: d.process_index)
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


def process_rows(mesh: Mesh, global_size: int) -> slice:
  """The rows of a global batch that this process feeds to :func:`shard_batch`.

  ``slice(0, global_size)`` with one process; with several, the contiguous
  block that the mesh puts on this process's devices (process ``i`` of ``N``
  with equal device counts: rows ``[i * global_size // N, (i + 1) *
  global_size // N)``). Every host computes the same global batch (e.g. the
  same sampler indices) and keeps these rows.

  Args:
    mesh: the mesh (see :func:`make_mesh`).
    global_size: the global batch size.

  Returns:
    The slice of this process's rows.

  Raises:
    ValueError: ``global_size`` not divisible by the mesh's devices, or
      this process's devices not adjacent in the mesh.

  Example:
    >>> from sphereembed.training.sharding import make_mesh, process_rows
    >>> process_rows(make_mesh(1), 8)
    slice(0, 8, None)
  """
  if global_size % mesh.size:
    raise ValueError(f"A global batch of {global_size} does not split over the {mesh.size} "
                     f"devices of the mesh; use a multiple of {mesh.size}.")
  indices = batch_sharding(mesh).addressable_devices_indices_map((global_size,))
  blocks = sorted({(index[0].start or 0, global_size if index[0].stop is None else index[0].stop)
                   for index in indices.values()})
  if not blocks or any(stop != start for (_, stop), (start, _) in zip(blocks, blocks[1:])):
    raise ValueError(f"This process's devices hold rows {blocks} of the batch: not one "
                     "contiguous block (build the mesh with make_mesh, which groups devices by "
                     "process).")
  return slice(blocks[0][0], blocks[-1][1])


def to_host(tree: Any) -> Any:
  """NumPy copies of the arrays of ``tree`` on every process.

  With one process this is ``jax.device_get``. With several, an array that
  spans other hosts' devices is read from a local replica when it is fully
  replicated (the train state, metrics) and otherwise gathered from every
  host (``multihost_utils.process_allgather``, e.g. batch-sharded embeddings),
  so every process gets the same global value.

  Args:
    tree: a pytree of ``jax.Array`` s, NumPy arrays or scalars.

  Returns:
    The same pytree of NumPy arrays.
  """
  if jax.process_count() == 1:
    return jax.device_get(tree)

  def get(leaf):
    if not isinstance(leaf, jax.Array) or leaf.is_fully_addressable:
      return np.asarray(leaf)
    if leaf.is_fully_replicated:
      return np.asarray(leaf.addressable_data(0))
    return multihost_utils.process_allgather(leaf, tiled=True)

  return jax.tree_util.tree_map(get, tree)
