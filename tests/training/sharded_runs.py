"""Short training runs for the 1- vs 8-device equivalence test (tests/training/test_sharding.py).

Imported by the test for the 1-device reference, and run as a script in a
subprocess for N simulated devices, since the device count is fixed when JAX
initialises::

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.training.sharded_runs OUT.npz

Both runs use the library's own pieces unchanged (``create_train_state``,
the jitted ``train_step``, ``replicate`` and ``shard_batch``); the ResNet
run's train state carries the batch-norm statistics, which ``train_step``
threads through every step.
"""

from __future__ import annotations

import sys
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sphereembed.models import SmallCNN
from sphereembed.models.resnet import CifarResNet
from sphereembed.training import sharding
from sphereembed.methods.centroid import LossSpec, create_train_state, train_step

NUM_CLASSES = 6
CLASSES_PER_BATCH, SAMPLES_PER_CLASS = 4, 4  # P x K = 16: 2 examples per device on 8
IMAGE_SHAPE = (16, 16, 3)
STEPS = 4


def pk_batch(step: int) -> dict[str, np.ndarray]:
  """A P x K batch, class by class, so that each class spans two of 8 devices."""
  rng = np.random.default_rng([7, step])
  classes = rng.choice(NUM_CLASSES, CLASSES_PER_BATCH, replace=False)
  labels = np.repeat(classes, SAMPLES_PER_CLASS).astype(np.int32)
  palette = np.random.default_rng(0).integers(40, 216, size=(NUM_CLASSES, 3))
  noise = rng.normal(0, 25, size=(len(labels), *IMAGE_SHAPE))
  images = np.clip(palette[labels][:, None, None] + noise, 0, 255).astype(np.uint8)
  return {"image": images, "label": labels}


def _flatten(prefix: str, tree) -> dict[str, np.ndarray]:
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  return {f"{prefix}{jax.tree_util.keystr(path)}": np.asarray(leaf) for path, leaf in leaves}


def ncl_run(mesh=None) -> dict[str, np.ndarray]:
  """NCL with a tiny SmallCNN, Adam and the centroid EMA from step 0; ``mesh=None``: no sharding."""
  model = SmallCNN(8, features=(4, 8), kernel_size=3, hidden=16)
  tx = optax.adam(1e-2)
  # One jitted init, with the threefry that compiles ~10x faster on CPU.
  init = jax.jit(create_train_state, static_argnums=(0, 1, 4))
  with jax.threefry_partitionable(False):
    state = init(model, tx, jax.random.PRNGKey(0), jnp.zeros((1, *IMAGE_SHAPE), jnp.uint8),
                 NUM_CLASSES)
  spec = LossSpec(name="ncl", alpha_base=0.5, alpha_every=2)
  out = {}
  if mesh is not None:
    state = sharding.replicate(state, mesh)
  loss_values = []
  for step in range(STEPS):
    batch = pk_batch(step)
    if mesh is not None:
      batch = sharding.shard_batch(batch, mesh)
      out["batch_devices"] = np.asarray(len(batch["image"].sharding.device_set))
      out["batch_shard_rows"] = np.asarray(batch["image"].addressable_shards[0].data.shape[0])
      if step == 0:
        # The program train_step compiles for this mesh (the same compilation
        # its call below reuses): count the collectives XLA inserted.
        hlo = train_step.lower(state, batch, spec).compile().as_text()
        out["all_reduces"] = np.asarray(hlo.count("all-reduce("))
    state, metrics = train_step(state, batch, spec)
    loss_values.append(np.asarray(metrics["loss"]))
  out["loss"] = np.stack(loss_values)
  out["alpha"] = np.asarray(metrics["alpha"])
  out.update(_flatten("params", state.params))
  out["centroids"] = np.asarray(state.extras["centroids"])
  out["adam_mu"] = np.concatenate(
      [np.ravel(x) for x in jax.tree_util.tree_leaves(state.opt_state[0].mu)])
  if mesh is not None:
    out["state_replicated"] = np.asarray(all(
        x.sharding.is_fully_replicated for x in jax.tree_util.tree_leaves(state)))
    # pylint: disable-next=protected-access
    out["train_step_compiles"] = np.asarray(train_step._cache_size())
  return out


def memory_run(mesh=None) -> dict[str, np.ndarray]:
  """A pair loss with a cross-batch memory: multi-similarity against 24 slots.

  The memory (24 slots, 16 images a step) wraps around within the run, and
  the head carries learned proxies (unused by this loss, but in the params).
  """
  model = SmallCNN(8, features=(4, 8), kernel_size=3, hidden=16, num_proxies=NUM_CLASSES)
  tx = optax.adam(1e-2)
  init = jax.jit(create_train_state, static_argnums=(0, 1, 4), static_argnames="memory_size")
  with jax.threefry_partitionable(False):
    state = init(model, tx, jax.random.PRNGKey(2), jnp.zeros((1, *IMAGE_SHAPE), jnp.uint8),
                 NUM_CLASSES, memory_size=24)
  spec = LossSpec(name="multi_similarity", memory_size=24)
  if mesh is not None:
    state = sharding.replicate(state, mesh)
  loss_values = []
  for step in range(STEPS):
    batch = pk_batch(200 + step)
    if mesh is not None:
      batch = sharding.shard_batch(batch, mesh)
    state, metrics = train_step(state, batch, spec)
    loss_values.append(np.asarray(metrics["loss"]))
  out = {"loss": np.stack(loss_values)}
  out.update(_flatten("params", state.params))
  out.update(_flatten("memory", state.extras["memory"]))
  return out


def resnet_run(mesh=None) -> dict[str, np.ndarray]:
  """A tiny CIFAR ResNet trained by ``train_step``, which threads ``batch_stats``."""
  model = CifarResNet(8, stage_sizes=(1,), width=1 / 16)
  tx = optax.sgd(0.1, momentum=0.9)
  init = jax.jit(create_train_state, static_argnums=(0, 1, 4))
  with jax.threefry_partitionable(False):
    state = init(model, tx, jax.random.PRNGKey(1), jnp.zeros((1, *IMAGE_SHAPE), jnp.uint8),
                 NUM_CLASSES)
  spec = LossSpec(name="ncl", alpha_base=0.5, alpha_every=2)
  if mesh is not None:
    state = sharding.replicate(state, mesh)
  loss_values = []
  for step in range(STEPS - 1):
    batch = pk_batch(100 + step)
    if mesh is not None:
      batch = sharding.shard_batch(batch, mesh)
    state, metrics = train_step(state, batch, spec)
    loss_values.append(np.asarray(metrics["loss"]))
  params, batch_stats = state.params, state.batch_stats
  out = {"loss": np.stack(loss_values), "centroids": np.asarray(state.extras["centroids"])}
  if mesh is None or mesh.size == 1:
    # What per-device statistics (pmap without a cross-replica mean) would
    # give: the statistics of one device's 2 examples instead of all 16.
    stats = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])[1])
    variables = {"params": params, "batch_stats": batch_stats}
    whole, part = stats(variables, batch["image"]), stats(variables, batch["image"][:2])
    out["per_device_stats_gap"] = np.asarray(max(
        float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree_util.tree_leaves(whole),
                                                        jax.tree_util.tree_leaves(part))))
  out.update(_flatten("params", params))
  out.update(_flatten("batch_stats", batch_stats))
  return out


def multi_process_path_matches(mesh) -> bool:
  """The multi-process branches of ``shard_batch`` and ``replicate`` build the same arrays."""
  batch, tree = pk_batch(0), {"w": np.arange(6.0).reshape(2, 3), "step": np.int32(3)}
  single = sharding.shard_batch(batch, mesh), sharding.replicate(tree, mesh)
  with mock.patch.object(jax, "process_count", lambda: 2):
    multi = sharding.shard_batch(batch, mesh), sharding.replicate(tree, mesh)
  return all(
      a.sharding == b.sharding and np.array_equal(np.asarray(a), np.asarray(b))
      for a, b in zip(jax.tree_util.tree_leaves(single), jax.tree_util.tree_leaves(multi)))


def run_all(mesh=None) -> dict[str, np.ndarray]:
  results = {f"ncl/{k}": v for k, v in ncl_run(mesh).items()}
  results.update({f"resnet/{k}": v for k, v in resnet_run(mesh).items()})
  results.update({f"memory/{k}": v for k, v in memory_run(mesh).items()})
  return results


def main(path: str) -> None:
  mesh = sharding.make_mesh()
  results = run_all(mesh)
  results["num_devices"] = np.asarray(mesh.size)
  results["multi_process_path"] = np.asarray(multi_process_path_matches(mesh))
  try:
    sharding.shard_batch({"image": np.zeros((12, 2), np.uint8)}, mesh)
    results["indivisible_error"] = np.asarray("no error")
  except ValueError as e:
    results["indivisible_error"] = np.asarray(str(e))
  np.savez(path, **results)


if __name__ == "__main__":
  jax.config.update("jax_enable_x64", True)  # as tests/conftest.py does for the reference
  main(sys.argv[1])
