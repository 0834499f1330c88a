"""Multi-host training: 2 processes x 2 CPU devices train as 1 process x 4 devices.

``jax.distributed.initialize`` works on CPU (the collectives go over gloo), so
the test starts two processes of this module that join one run through the
flags of ``experiments.mnist`` (``--coordinator_address``, ``--num_processes``,
``--process_id``), next to a one-process reference with 4 simulated devices::

  XLA_FLAGS=--xla_force_host_platform_device_count=2 python -m tests.training.test_multihost \\
      --workdir=W --coordinator_address=localhost:PORT --num_processes=2 --process_id=I DATA

The two processes run :func:`sphereembed.train_and_evaluate`
on a tiny MNIST-like folder, are preempted after a checkpoint and resume
from it (orbax saves and restores in both processes); the reference runs
straight through. The test compares their losses, final checkpoints and
metrics.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from sphereembed.data import Split
from sphereembed import methods
from sphereembed.methods import centroid
from sphereembed.runner import train_and_evaluate
from sphereembed.training import builders
from sphereembed.training import metric_writers
from sphereembed.training import sharding
from tests.training.fake_data import write_fake_mnist

ROOT = pathlib.Path(__file__).resolve().parents[2]
NUM_STEPS = 5
PREEMPTED_AT = 5  # the step that never runs in the first attempt (Ctrl-C saves step 4)


def small_config(data_dir):
  """5 steps of 48 images (12 per device), shifted, class-weighted, evaluated twice."""
  config = methods.default_config()
  config.update(dict(
      data_dir=data_dir, sampler="shuffled", batch_size=48, num_epochs=1, features=(4, 8),
      hidden=16, embedding_dim=2, learning_rate=1e-3, warmup_steps=1, random_shift=2,
      class_weighting=True, log_every_steps=1, eval_every_steps=2, checkpoint_every_steps=3,
      eval_batch_size=32, tensorboard=False, figures=False))
  return config


def _worker(argv) -> None:
  """One process: with several, preempted and resumed; alone, straight through."""
  from experiments import mnist  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from absl import logging  # pylint: disable=import-outside-toplevel
  data_dir, = mnist.FLAGS(argv)[1:]
  logging.set_verbosity(logging.INFO)  # the log file shows the run, as the command's would
  mnist.initialize_distributed()
  config, workdir = small_config(data_dir), mnist.FLAGS.workdir
  if jax.process_count() > 1:
    _preempt(config, workdir)
  results = {"run": train_and_evaluate(config, workdir)}
  mesh = sharding.make_mesh()
  rows = sharding.process_rows(mesh, 48)
  try:
    sharding.process_rows(mesh, 6)
    indivisible = "no error"
  except ValueError as error:
    indivisible = str(error)
  results.update(process_index=jax.process_index(), process_count=jax.process_count(),
                 device_count=jax.device_count(), local_device_count=jax.local_device_count(),
                 rows=[rows.start, rows.stop], indivisible_error=indivisible)
  with open(os.path.join(workdir, f"process{jax.process_index()}.json"), "w") as f:
    json.dump(results, f)


def _preempt(config, workdir) -> None:
  """Runs until step ``PREEMPTED_AT`` and stops there, in every process at once."""
  real_step, calls = centroid.train_step, [0]

  def preempted_step(*args, **kwargs):
    calls[0] += 1
    if calls[0] == PREEMPTED_AT:  # in every process at once, as a preemption would
      raise KeyboardInterrupt("simulated preemption")
    return real_step(*args, **kwargs)

  centroid.train_step = preempted_step
  try:
    train_and_evaluate(config, workdir)
    raise AssertionError("the preempted run finished")
  except KeyboardInterrupt:
    pass
  finally:
    centroid.train_step = real_step


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(args, devices, log):
  flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
  env = dict(os.environ, XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu")
  return subprocess.Popen([sys.executable, "-m", "tests.training.test_multihost", *args],
                          cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def _run_all(folder):
  """The workdirs of the 2-process run (preempted, resumed) and of the 1-process reference."""
  data = write_fake_mnist(folder / "data")
  port = _free_port()
  jobs = {}
  logs = {name: open(folder / f"{name}.log", "wb") for name in ("process0", "process1", "single")}
  try:
    for i in range(2):
      jobs[f"process{i}"] = _start(
          [f"--workdir={folder / 'multi'}", f"--coordinator_address=localhost:{port}",
           "--num_processes=2", f"--process_id={i}", data], 2, logs[f"process{i}"])
    jobs["single"] = _start([f"--workdir={folder / 'single'}", data], 4, logs["single"])
    deadline = time.monotonic() + 400
    # A failed process leaves its peer waiting in a collective: stop at the first failure.
    while any(job.poll() is None for job in jobs.values()) and time.monotonic() < deadline:
      if any(job.poll() not in (None, 0) for job in jobs.values()):
        break
      time.sleep(0.2)
  finally:
    for job in jobs.values():
      if job.poll() is None:
        job.kill()
        job.wait()
    for log in logs.values():
      log.close()
  for name, job in jobs.items():
    assert job.returncode == 0, (name, (folder / f"{name}.log").read_text(errors="replace")[-4000:])
  return folder / "multi", folder / "single"


def _load(path):
  with open(path) as f:
    return json.load(f)


def _final_checkpoint(workdir):
  """The last step and its arrays, restored onto this process's device."""
  import jax  # pylint: disable=import-outside-toplevel
  steps = sorted(int(s) for s in os.listdir(workdir / "checkpoints" / "train") if s.isdigit())
  path = workdir / "checkpoints" / "train" / str(steps[-1]) / "default"
  checkpointer = ocp.StandardCheckpointer()
  # Saved on 4 devices: the restore needs a target on the devices here.
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                                  checkpointer.metadata(path).item_metadata)
  return steps[-1], checkpointer.restore(path, target)


def _flat(tree):
  import jax  # pylint: disable=import-outside-toplevel
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in
          jax.tree_util.tree_leaves_with_path(tree)}


def test_two_processes_train_as_one_process_with_four_devices(tmp_path):
  # One test, not several sharing a fixture: pytest-xdist would start the runs once per worker.
  multi, single = _run_all(tmp_path)

  first, second = _load(multi / "process0.json"), _load(multi / "process1.json")
  assert (first["process_count"], first["device_count"], first["local_device_count"]) == (2, 4, 2)
  assert second["process_index"] == 1
  # Process i feeds rows [24 i, 24 (i + 1)) of every 48-image batch.
  assert (first["rows"], second["rows"]) == ([0, 24], [24, 48])
  assert "batch of 6 does not split over the 4 devices" in first["indivisible_error"]
  reference = _load(single / "process0.json")
  assert (reference["process_count"], reference["device_count"]) == (1, 4)

  def timeless(metrics):
    return {k: v for k, v in metrics.items() if "second" not in k}

  # Every process evaluates the gathered embeddings: the same metrics everywhere.
  assert timeless(first["run"]) == timeless(second["run"])
  assert first["run"]["num_devices"] == 4 and first["run"]["num_processes"] == 2
  assert first["run"]["resumed_from_step"] == {"train": PREEMPTED_AT - 1}  # saved on Ctrl-C

  records = {name: [r for r in metric_writers.read_jsonl(workdir / "metrics.jsonl")
                    if "train_loss" in r]
             for name, workdir in (("multi", multi), ("single", single))}
  # Only process 0 writes metrics.jsonl: steps 1-4 before the preemption, which saved step 4 in
  # every process, then step 5: no step replayed, no record twice.
  assert [r["step"] for r in records["multi"]] == [1, 2, 3, 4, 5]
  assert [r["step"] for r in records["single"]] == list(range(1, NUM_STEPS + 1))
  losses = {name: np.array([{r["step"]: r["train_loss"] for r in rs}[step]
                            for step in range(1, NUM_STEPS + 1)]) for name, rs in records.items()}
  # The first step is the same computation; then only the order of float32
  # sums across devices differs (gloo's all-reduce between the processes).
  assert losses["multi"][0] == losses["single"][0]
  np.testing.assert_allclose(losses["multi"], losses["single"], rtol=1e-5, atol=1e-5)

  (step, multi_state), (_, single_state) = _final_checkpoint(multi), _final_checkpoint(single)
  assert step == NUM_STEPS
  multi_state, single_state = _flat(multi_state), _flat(single_state)
  assert multi_state.keys() == single_state.keys()
  for key in ("['step']", "['rng']"):
    np.testing.assert_array_equal(multi_state[key], single_state[key])
  # Rounding differences after 5 Adam steps: ~1e-7 of the loss at step 2, up to ~2e-5
  # of the weights and centroids at step 5 (Adam's moments, not compared, amplify them).
  compared = [k for k in multi_state if k.startswith("['params']")] + ["['extras']['centroids']"]
  assert len(compared) == 9
  for key in compared:
    np.testing.assert_allclose(multi_state[key], single_state[key], rtol=1e-4, atol=5e-5,
                               err_msg=key)
  a, b = first["run"], reference["run"]
  assert abs(a["test_accuracy"] - b["test_accuracy"]) <= 1 / 60  # one of 60 test images
  np.testing.assert_allclose(a["final_train_loss"], b["final_train_loss"], rtol=1e-5)
  for name in ("config.json", "metrics.json"):
    assert (multi / name).stat().st_size > 0, name
  assert not list(multi.glob("*.tmp"))


@pytest.mark.parametrize("augmentation", [dict(random_shift=2), dict(augment="crop_flip")])
def test_each_host_builds_its_rows_of_the_global_batch(augmentation):
  rng = np.random.default_rng(0)
  train = Split(rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8),
                rng.integers(0, 4, 40).astype(np.int32))
  config = methods.validate_config(dict(
      sampler="shuffled", batch_size=12, dataset="cifar10", **augmentation))
  sampler = builders.make_sampler(config, train.labels)
  weights = np.arange(40, dtype=np.float32)

  def batches(rows):
    # pylint: disable-next=protected-access
    it = centroid.train_batches(config, train, sampler, weights, 3, rows)
    return [next(it) for _ in range(4)]

  whole = batches(slice(None))
  hosts = [batches(slice(i * 4, (i + 1) * 4)) for i in range(3)]  # 3 hosts, 4 rows each
  for step, batch in enumerate(whole):
    for key in ("image", "label", "weight"):
      np.testing.assert_array_equal(
          np.concatenate([host[step][key] for host in hosts]), batch[key], err_msg=key)
  # The augmentation did change the images.
  assert not np.array_equal(whole[0]["image"], train.images[next(sampler.iterate(3))])


def test_row_draws_refuse_draws_that_are_not_per_image():
  # pylint: disable-next=protected-access
  draws = centroid._RowDraws(np.random.default_rng(0), slice(2, 4), 6)
  full = np.random.default_rng(0).integers(0, 9, size=(2, 6))
  np.testing.assert_array_equal(draws.integers(0, 9, size=(2, 2)), full[:, 2:4])
  with pytest.raises(ValueError, match="per-image draws"):
    draws.random(size=(2, 3))


def test_process_rows_and_to_host_on_one_process():
  mesh = sharding.make_mesh()
  assert sharding.process_rows(mesh, 4 * mesh.size) == slice(0, 4 * mesh.size)
  tree = {"w": sharding.replicate(np.arange(3.0), mesh), "n": 2}
  out = sharding.to_host(tree)
  np.testing.assert_array_equal(out["w"], np.arange(3.0))
  assert int(out["n"]) == 2


if __name__ == "__main__":
  _worker(sys.argv)
