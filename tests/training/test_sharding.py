"""Data parallelism: 1 and 8 simulated devices train alike (loss, params, centroids, batch norm).

The 8-device run happens in a subprocess (the device count is fixed when JAX
initialises) while this process computes the 1-device reference.
"""

import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from sphereembed.training import sharding
from tests.training import sharded_runs

ROOT = pathlib.Path(__file__).resolve().parents[2]
NUM_DEVICES = 8


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """``(reference on 1 device, the same on 8 simulated devices)`` as dicts of arrays."""
  folder = tmp_path_factory.mktemp("sharded")
  path, log = folder / "runs.npz", folder / "child.log"
  flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={NUM_DEVICES}"
  env = dict(os.environ, XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu")
  with open(log, "wb") as output:
    child = subprocess.Popen([sys.executable, "-m", "tests.training.sharded_runs", str(path)],
                             cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
      # Meanwhile, the reference on one CPU device of this process (a GPU would round differently).
      one_cpu = sharding.make_mesh(devices=jax.local_devices(backend="cpu")[:1])
      reference = sharded_runs.run_all(one_cpu)
      child.wait(timeout=600)
    finally:
      if child.poll() is None:
        child.kill()
  assert child.returncode == 0, log.read_text(errors="replace")[-4000:]
  with np.load(path) as results:
    return reference, {key: results[key] for key in results.files}


def _max_differences(reference, sharded, prefix):
  keys = [k for k in reference if k.startswith(prefix) and reference[k].dtype.kind == "f"]
  return {k: float(np.max(np.abs(reference[k].astype(np.float64) - sharded[k]))) for k in keys}


def test_the_batch_is_split_and_the_state_replicated(runs):
  _, sharded = runs
  assert int(sharded["num_devices"]) == NUM_DEVICES
  assert int(sharded["ncl/batch_devices"]) == NUM_DEVICES
  assert int(sharded["ncl/batch_shard_rows"]) == 16 // NUM_DEVICES
  assert bool(sharded["ncl/state_replicated"])
  # The state comes back with the shardings it went in with: one compilation.
  assert int(sharded["ncl/train_step_compiles"]) == 1
  # XLA inserted the cross-device reduction (gradients, loss, class sums; combined).
  assert int(sharded["ncl/all_reduces"]) >= 1
  assert bool(sharded["multi_process_path"])
  assert "not divisible by the 8 device(s)" in str(sharded["indivisible_error"])


def test_ncl_training_is_the_same_on_1_and_8_devices(runs):
  reference, sharded = runs
  assert set(k for k in reference if k.startswith("ncl/params")) == set(
      k for k in sharded if k.startswith("ncl/params"))
  differences = _max_differences(reference, sharded, "ncl/")
  # Only the order of float32 sums differs: rounding, amplified a little by Adam.
  for key in ("ncl/loss", "ncl/centroids", "ncl/adam_mu"):
    np.testing.assert_allclose(sharded[key], reference[key], rtol=1e-5, atol=1e-6, err_msg=key)
  for key in (k for k in reference if k.startswith("ncl/params")):
    np.testing.assert_allclose(sharded[key], reference[key], rtol=1e-4, atol=1e-5, err_msg=key)
  np.testing.assert_allclose(np.linalg.norm(sharded["ncl/centroids"], axis=1), 1.0, atol=1e-5)
  # The centroids moved (alpha > 0 from the first step), so the EMA was compared.
  assert float(reference["ncl/alpha"]) > 0
  assert max(differences.values()) < 1e-4, differences


def test_batch_norm_statistics_are_global_under_jit(runs):
  reference, sharded = runs
  stats = [k for k in reference if k.startswith("resnet/batch_stats")]
  assert len(stats) == 6  # mean and var of the stem's and the block's two batch norms
  for key in stats:
    np.testing.assert_allclose(sharded[key], reference[key], rtol=1e-5, atol=1e-6, err_msg=key)
  # Per-device statistics (pmap without a cross-replica mean: 2 examples per
  # device) would be off by far more than this tolerance.
  assert float(reference["resnet/per_device_stats_gap"]) > 1e-3
  for key in ["resnet/loss"] + [k for k in reference if k.startswith("resnet/params")]:
    np.testing.assert_allclose(sharded[key], reference[key], rtol=1e-4, atol=1e-5, err_msg=key)


def test_cross_batch_memory_training_is_the_same_on_1_and_8_devices(runs):
  reference, sharded = runs
  # The memory is filled from the global batch: same slots, labels and position.
  for key in ("memory/memory['labels']", "memory/memory['valid']", "memory/memory['position']"):
    np.testing.assert_array_equal(sharded[key], reference[key], err_msg=key)
  assert int(reference["memory/memory['position']"]) == (4 * 16) % 24  # it wrapped around
  assert bool(np.all(reference["memory/memory['valid']"]))
  for key in ["memory/loss", "memory/memory['embeddings']"] + [
      k for k in reference if k.startswith("memory/params")]:
    np.testing.assert_allclose(sharded[key], reference[key], rtol=1e-4, atol=1e-5, err_msg=key)


def test_make_mesh_replicate_and_shard_batch_on_this_process():
  mesh = sharding.make_mesh()
  assert mesh.axis_names == (sharding.DATA_AXIS,) and mesh.size == jax.device_count()
  with pytest.raises(ValueError, match="num_devices"):
    sharding.make_mesh(0)
  with pytest.raises(ValueError, match="num_devices"):
    sharding.make_mesh(jax.device_count() + 1)
  tree = {"w": np.ones((3, 2), np.float32), "step": np.int32(4)}
  replicated = sharding.replicate(tree, mesh)
  assert all(x.sharding.is_fully_replicated for x in jax.tree_util.tree_leaves(replicated))
  size = 2 * mesh.size
  batch = sharding.shard_batch({"image": np.zeros((size, 2, 2, 1)), "label": np.arange(size)}, mesh)
  assert batch["label"].sharding.spec == PartitionSpec(sharding.DATA_AXIS)
  np.testing.assert_array_equal(batch["label"], np.arange(size))
  with pytest.raises(ValueError, match=r"\['step'\] is a scalar"):
    sharding.shard_batch({"step": 3}, mesh)
