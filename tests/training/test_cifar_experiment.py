"""`python -m experiments.cifar` end to end on generated CIFAR in the canonical pickle format.

A tiny ResNet-18 (width 1/16) trains for a few steps on an easy generated
problem (each class has its own mean colour, which crops and flips keep):
the command writes its checkpoint and ``metrics.json`` (with ACC@80%) and
learns; the same command on 2 simulated CPU devices gives the same result;
an interrupted run resumes exactly (augmentation and batches come from the
seed and the step); missing data and unknown config keys fail with messages
that say what to do.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from sphereembed.data import DataNotFoundError
from sphereembed.data.cifar import augment_batch
from sphereembed import methods
from sphereembed.methods import centroid
from sphereembed.runner import train_and_evaluate
from sphereembed.training import builders
from sphereembed.training import engine
from tests.data.fake_cifar import write_fake_cifar
from tests.training.preemption import preempted_run

ROOT = pathlib.Path(__file__).resolve().parents[2]
STEPS = 30  # 3 epochs of 200 // 20 batches

# The committed 1024-D CIFAR-10 config, shrunk to a few CPU seconds per step.
TINY = ["--config=configs/cifar10_ncl_1024d.py", "--config.width=0.0625",
        "--config.num_epochs=3", "--config.batch_size=20", "--config.warmup_steps=2",
        "--config.log_every_steps=1", "--config.eval_every_steps=100",
        "--config.checkpoint_every_steps=10", "--config.keep_checkpoints=3",
        "--config.figures=False", "--config.tensorboard=False"]


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("fake_cifar")
  write_fake_cifar(root, num_train=200, num_test=50, num_classes=10)
  return str(root)


def _command(args, *, devices=1, cwd=ROOT):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  if devices > 1:
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
    env["XLA_FLAGS"] = flags.strip()
  return [sys.executable, "-m", "experiments.cifar", *args], env


def _final_checkpoint(workdir, step=None):
  """``(step, state dict)`` of the checkpoint of ``step`` (default: the last one)."""
  folder = os.path.join(workdir, "checkpoints", "train")
  if step is None:
    step = max(int(s) for s in os.listdir(folder) if s.isdigit())
  path = os.path.join(folder, str(step), "default")
  # Onto this process's first device, whatever mesh wrote the checkpoint.
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  with ocp.StandardCheckpointer() as checkpointer:  # closed: no orbax threads left behind
    target = jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
        checkpointer.metadata(path).item_metadata.tree)
    return step, checkpointer.restore(path, target)


def _flat(tree):
  return {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.fixture(scope="module")
def runs(cifar_dir, tmp_path_factory):
  """The tiny run on 1 device and on 2 simulated devices (concurrently): their workdirs."""
  folder = tmp_path_factory.mktemp("cifar_runs")
  children = []
  for devices in (1, 2):
    workdir, log = folder / f"devices{devices}", folder / f"devices{devices}.log"
    args, env = _command([*TINY, f"--config.data_dir={cifar_dir}", f"--workdir={workdir}"],
                         devices=devices)
    with open(log, "wb") as output:
      children.append((subprocess.Popen(args, cwd=ROOT, env=env, stdout=output,
                                        stderr=subprocess.STDOUT), workdir, log))
  try:
    for child, _, _ in children:
      child.wait(timeout=900)
  finally:
    for child, _, _ in children:
      if child.poll() is None:
        child.kill()
  for child, _, log in children:
    assert child.returncode == 0, log.read_text(errors="replace")[-4000:]
  return {devices: (workdir, log.read_text(errors="replace"))
          for devices, (_, workdir, log) in zip((1, 2), children)}


def test_tiny_resnet_run_writes_its_outputs_and_learns(runs):
  workdir, output = runs[1]
  assert "nearest-centroid test accuracy" in output and "ACC@80%" in output
  metrics = json.loads((workdir / "metrics.json").read_text())
  assert metrics["num_train_steps"] == STEPS and metrics["model"] == "resnet18"
  assert metrics["num_devices"] == 1 and metrics["dataset"] == "cifar10"
  # ACC@80% by centroid proximity is reported for every CIFAR run.
  assert metrics["test_accuracy_at_80"] == metrics["centroid/accuracy_at_80"]
  assert 0 <= metrics["test_accuracy_at_80"] <= 1
  # Ten colour classes, chance 10%: the run learns within 30 steps.
  assert metrics["test_accuracy"] >= 0.6, metrics["test_accuracy"]
  assert metrics["test_accuracy_class_means"] >= 0.8, metrics["test_accuracy_class_means"]
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  losses = [r["train_loss"] for r in records if "train_loss" in r]
  assert len(losses) == STEPS and np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.1, losses
  step, arrays = _final_checkpoint(str(workdir))
  assert step == STEPS and int(arrays["step"]) == STEPS
  # The checkpoint carries the batch-norm statistics, updated by training.
  stats = _flat(arrays["batch_stats"])
  assert len(stats) == 2 * 20  # mean and var of the ResNet-18's 20 batch norms
  assert any(np.any(v != 0) for k, v in stats.items() if k.endswith("['mean']"))
  np.testing.assert_allclose(np.linalg.norm(arrays["extras"]["centroids"], axis=1), 1.0, atol=1e-5)


def test_two_devices_give_the_result_of_one(runs):
  (one, _), (two, _) = runs[1], runs[2]
  metrics_one = json.loads((one / "metrics.json").read_text())
  metrics_two = json.loads((two / "metrics.json").read_text())
  assert metrics_two["num_devices"] == 2
  assert metrics_two["num_train_steps"] == metrics_one["num_train_steps"]
  # Only the order of float32 sums differs (each device reduces its half of the
  # batch; XLA all-reduces the gradients, class sums and batch-norm moments).
  # The state after 10 steps: parameters, optimiser state, centroids, batch norm.
  a = _flat(_final_checkpoint(str(one), 10)[1])
  b = _flat(_final_checkpoint(str(two), 10)[1])
  assert set(a) == set(b) and any("batch_stats" in key for key in a)
  for key in a:
    if np.issubdtype(a[key].dtype, np.floating):
      np.testing.assert_allclose(b[key], a[key], rtol=1e-4, atol=1e-5, err_msg=key)
    else:
      np.testing.assert_array_equal(b[key], a[key], err_msg=key)

  def losses(workdir):
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return np.array([json.loads(line)["train_loss"] for line in lines if "train_loss" in line])

  # Per step: equal up to rounding at first; by step 30 the rounding is
  # amplified to ~1e-3 (SGD at learning rate 0.2 on batches of 20, batch norm).
  np.testing.assert_allclose(losses(two)[:10], losses(one)[:10], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(losses(two), losses(one), atol=1e-2)
  assert abs(metrics_two["test_accuracy"] - metrics_one["test_accuracy"]) <= 1 / 50


def test_unknown_config_key_fails_before_training(tmp_path):
  args, env = _command(["--config=configs/cifar100_ncl_2d.py", "--config.modle=resnet34",
                        f"--workdir={tmp_path / 'run'}"])
  result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert "modle" in result.stderr and "model" in result.stderr
  assert not (tmp_path / "run").exists()


def _small_config(data_dir, **overrides):
  config = centroid.cifar_config("cifar10", 8)
  config.update(dict(data_dir=data_dir, width=1 / 16, num_epochs=2, batch_size=40, warmup_steps=2,
                     alpha_every=5.0, log_every_steps=2, checkpoint_every_steps=4,
                     eval_every_steps=100, eval_batch_size=25, figures=False, tensorboard=False))
  config.update(overrides)
  return config


def test_missing_data_names_the_ways_to_provide_it(tmp_path, monkeypatch):
  monkeypatch.setenv("SPHEREEMBED_DATA_DIR", str(tmp_path / "empty"))
  config = _small_config(str(tmp_path / "nowhere"), dataset="cifar100")
  with pytest.raises(DataNotFoundError) as info:
    train_and_evaluate(config, str(tmp_path / "work"))
  message = str(info.value)
  for needle in ("does not hold cifar100", "cifar-100-python/", "cifar-100-python.tar.gz",
                 "--config.data_dir", "SPHEREEMBED_DATA_DIR", "--config.download=True",
                 "tfds build cifar100"):
    assert needle in message, f"{needle!r} missing from:\n{message}"


def test_interrupted_run_resumes_to_the_same_result(cifar_dir, tmp_path):
  config = _small_config(cifar_dir)
  straight = train_and_evaluate(config, str(tmp_path / "straight"))

  preempted_run(config, str(tmp_path / "resumed"), centroid, at_call=7)
  assert _final_checkpoint(str(tmp_path / "resumed"))[0] == 6  # Ctrl-C saved the last finished step
  resumed = train_and_evaluate(config, str(tmp_path / "resumed"))

  assert resumed["resumed_from_step"] == {"train": 6}
  assert resumed["test_accuracy"] == straight["test_accuracy"]
  assert resumed["test_accuracy_at_80"] == straight["test_accuracy_at_80"]
  a = _flat(_final_checkpoint(str(tmp_path / "straight"))[1])
  b = _flat(_final_checkpoint(str(tmp_path / "resumed"))[1])
  for key in a:
    np.testing.assert_array_equal(b[key], a[key], err_msg=key)


def test_crop_flip_is_a_function_of_seed_and_step():
  images = np.random.default_rng(0).integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)
  first = augment_batch(images, seed=3, step=7)
  np.testing.assert_array_equal(augment_batch(images, seed=3, step=7), first)
  assert not np.array_equal(augment_batch(images, seed=3, step=8), first)


@pytest.mark.parametrize("overrides, match", [
    (dict(model="resnet50"), "config.model must be one of"),
    (dict(dtype="float16"), "config.dtype must be one of"),
    (dict(augment="mixup"), "config.augment must be one of"),
    (dict(optimizer="lamb"), "config.optimizer must be one of"),
    (dict(model="small_cnn", dtype="bfloat16"), "needs a ResNet"),
    (dict(optimizer="adamw", nesterov=True), "nesterov = True needs"),
    (dict(momentum=1.0), "momentum must lie in"),
    (dict(width=0.001), "leaves no channel"),
    (dict(random_shift=2), "crop_flip' already translates"),
    (dict(num_devices=-1), "num_devices must be >= 0"),
    (dict(prefetch_batches=0), "prefetch_batches must be > 0"),
])
def test_validate_config_rejects_bad_cifar_fields(overrides, match):
  config = centroid.cifar_config("cifar100", 4)
  config.update(overrides)
  with pytest.raises(ValueError, match=match):
    methods.validate_config(config)


def test_cifar_config_rejects_bad_arguments():
  with pytest.raises(ValueError, match="cifar10' or 'cifar100"):
    centroid.cifar_config("svhn", 4)
  with pytest.raises(ValueError, match="embedding_dim"):
    centroid.cifar_config("cifar10", 1)
  with pytest.raises(ValueError, match="loss must be one of"):
    centroid.cifar_config("cifar10", 4, loss="sphereface")


def test_more_devices_than_exist_or_an_indivisible_batch_is_refused(cifar_dir, tmp_path):
  with pytest.raises(ValueError, match="local device"):
    train_and_evaluate(_small_config(cifar_dir, num_devices=jax.local_device_count() + 1),
                            str(tmp_path / "a"))
  if jax.local_device_count() > 1:
    with pytest.raises(ValueError, match="does not split over"):
      train_and_evaluate(_small_config(cifar_dir, batch_size=jax.local_device_count() + 1),
                              str(tmp_path / "b"))


def test_sgd_decays_the_kernels_only():
  config = methods.validate_config(centroid.cifar_config("cifar10", 4))
  tx = builders.make_optimizer(config, 100)  # pylint: disable=protected-access
  params = {"conv": {"kernel": np.ones((3, 3, 1, 2)), "bias": np.ones(2)},
            "bn": {"scale": np.ones(2)}}
  zeros = jax.tree_util.tree_map(np.zeros_like, params)
  state = tx.init(params)
  for _ in range(3):  # past the first step, whose warm-up learning rate is 0
    updates, state = tx.update(zeros, state, params)
  assert np.all(np.asarray(updates["conv"]["kernel"]) < 0)
  assert np.all(np.asarray(updates["conv"]["bias"]) == 0)
  assert np.all(np.asarray(updates["bn"]["scale"]) == 0)


def test_runs_from_before_the_new_fields_still_resume(tmp_path):
  config = methods.validate_config(methods.default_config())
  old = config.to_dict()
  for field in ("model", "width", "dtype", "augment", "optimizer", "momentum", "nesterov",
                "num_devices", "prefetch_batches"):
    del old[field]  # a config.json written before these fields existed
  (tmp_path / "config.json").write_text(json.dumps(old, default=list))
  (tmp_path / "checkpoints" / "train" / "5").mkdir(parents=True)  # a run that trained
  check = lambda config: engine.check_resumable(
      config, str(tmp_path), defaults=methods.default_config().to_dict(),
      resume_safe=methods.resume_safe_fields("centroid"))
  check(config)
  (tmp_path / "config.json").write_text(json.dumps(old, default=list))
  changed = methods.default_config()
  changed.model = "resnet18"
  with pytest.raises(ValueError, match=r"different config \(fields \['model'\], as saved in"):
    check(methods.validate_config(changed))


@pytest.mark.parametrize("loss, sampler", [("ncl", "shuffled"), ("arcface", "shuffled"),
                                           ("triplet_batch_all", "balanced"),
                                           ("multi_similarity", "balanced")])
def test_cifar_config_gives_pair_losses_positives_in_every_batch(loss, sampler):
  config = centroid.cifar_config("cifar10", 8, loss=loss)
  assert config.sampler == sampler
  methods.validate_config(config)
