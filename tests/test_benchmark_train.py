"""benchmarks/train.py runs end to end (smoke mode) and its torch model is the Flax one."""

from __future__ import annotations

import functools
import importlib.util
import pathlib
import re

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_script():
  spec = importlib.util.spec_from_file_location("sphereembed_benchmark_train",
                                                ROOT / "benchmarks" / "train.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_smoke_sphereembed_side_writes_its_section(tmp_path):
  train = _load_script()
  results = tmp_path / "RESULTS.md"
  results.write_text("# Loss benchmark\n\nkept as is\n")
  argv = ["--smoke", "--batch-size", "16", "--dim", "8", "--frameworks", "sphereembed",
          "--losses", "triplet_batch_hard", "--data", "random", "--output", str(results),
          "--raw-dir", str(tmp_path / "raw")]
  assert train.main(argv) == 0
  text = results.read_text()
  assert text.startswith("# Loss benchmark\n\nkept as is\n")
  row = re.search(r"^\| `triplet_batch_hard` \| sphereembed \(JAX\) \| ([0-9.e+]+) \|", text,
                  flags=re.M)
  assert row, text
  assert float(row.group(1)) > 0
  assert "batch_size" in next((tmp_path / "raw").iterdir()).read_text()


def test_section_is_replaced_not_appended(tmp_path):
  train = _load_script()
  results = tmp_path / "RESULTS.md"
  results.write_text("# Loss benchmark\n\nkept as is\n")
  for run in ("first", "second"):
    train._lb.replace_marked_section(
        str(results), f"{train.SECTION_BEGIN}\n{run} run\n{train.SECTION_END}\n",
        train.SECTION_BEGIN, train.SECTION_END)
  text = results.read_text()
  assert text.startswith("# Loss benchmark\n\nkept as is\n")
  assert text.count(train.SECTION_BEGIN) == 1 and text.count(train.SECTION_END) == 1
  assert "second run" in text and "first run" not in text


@pytest.mark.parametrize("kernel_size, downsample", [(5, "stride"), (3, "stride"), (5, "pool")])
def test_torch_model_and_loss_match_flax(tmp_path, kernel_size, downsample):
  pytest.importorskip("torch")
  pytest.importorskip("pytorch_metric_learning")
  import jax
  import torch

  from sphereembed import losses
  from sphereembed.models.cnn import SmallCNN

  train = _load_script()
  cfg = {"dim": 8, "features": [4, 8], "hidden": 16, "image_shape": [28, 28, 1],
         "kernel_size": kernel_size, "downsample": downsample}
  images = np.random.default_rng(0).integers(0, 256, size=(12, 28, 28, 1), dtype=np.uint8)
  labels = np.repeat(np.arange(3), 4)
  model = SmallCNN(cfg["dim"], features=tuple(cfg["features"]), hidden=cfg["hidden"],
                   kernel_size=kernel_size, downsample=downsample)
  # Random parameters of the right shapes (model.init would compile its initialisers).
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)["params"]
  rng = np.random.default_rng(1)
  params = jax.tree_util.tree_map(
      lambda s: (0.3 * rng.standard_normal(s.shape)).astype(np.float32), shapes)
  embeddings = np.asarray(jax.jit(model.apply)({"params": params}, images)["embedding"])
  train.save_flax_params(str(tmp_path / "params.npz"), params, embeddings)

  torch_model = train.torch_model(cfg)
  train.copy_flax_params(torch_model, str(tmp_path / "params.npz"))
  loss_fn, miner = train._lb.pml_loss_and_miner("batch_hard")
  with torch.no_grad():
    out = torch_model(torch.from_numpy(images))
    labels_t = torch.from_numpy(labels)
    pml_loss = float(loss_fn(out, labels_t, miner(out, labels_t)))
  np.testing.assert_allclose(out.numpy(), embeddings, atol=1e-5)
  ours, stats = jax.jit(functools.partial(losses.triplet_batch_hard, margin=0.2,
                                          metric="euclidean", return_stats=True))(
                                              embeddings, labels.astype(np.int32))
  active = float(stats["num_active"])
  assert active > 0
  np.testing.assert_allclose(pml_loss, float(ours) * float(stats["num_valid"]) / active,
                             rtol=1e-4)


@pytest.mark.parametrize("downsample", ["stride", "pool"])
def test_step_flops_matches_xla_cost_analysis(downsample):
  """The benchmark's arithmetic count is XLA's count of the same gradient, to ~1%."""
  import jax
  import jax.numpy as jnp

  from sphereembed.models.cnn import SmallCNN

  train = _load_script()
  arch = dict(features=[8, 16], kernel_size=5, downsample=downsample, hidden=32)
  model = SmallCNN(16, features=(8, 16), kernel_size=5, downsample=downsample, hidden=32)
  images = jnp.ones((4, 28, 28, 1))
  params = model.init(jax.random.PRNGKey(0), images)["params"]

  def objective(p):
    return jnp.sum(model.apply({"params": p}, images)["embedding"] ** 2)

  cost = jax.jit(jax.grad(objective)).lower(params).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  ours = train.step_flops(arch, (28, 28, 1), 16, 4)
  # XLA also counts the elementwise work (bias, ReLU, normalisation) we leave out.
  assert ours <= cost["flops"] <= 1.05 * ours


def test_floor_takes_our_fastest_row_and_names_its_device_count():
  train = _load_script()
  rows = [
      {"framework": "sphereembed", "loss": "triplet_batch_hard", "status": "ok",
       "images_per_s": 3000.0, "cpu_devices": 1},
      {"framework": "sphereembed", "loss": "triplet_batch_hard", "status": "ok",
       "images_per_s": 9000.0, "cpu_devices": 2},
      {"framework": "pml", "loss": "triplet_batch_hard", "status": "ok", "images_per_s": 4000.0},
  ]
  assert train._ratio(rows[0], rows) == pytest.approx(0.75)
  text = train.floor_text(rows, 2.0)
  assert "2.25× (sphereembed (JAX), 2 CPU devices) — met" in text
  rows[1]["status"] = "error"
  assert "0.75× (sphereembed (JAX)) — **NOT met**" in train.floor_text(rows, 2.0)


@pytest.mark.parametrize("text", ["3", "0,2", "two", ""])
def test_cpu_devices_must_divide_the_batch(text):
  train = _load_script()
  with pytest.raises(SystemExit, match="cpu-devices"):
    train._parse_devices(text, 256)
  assert train._parse_devices("1,2,4", 256) == [1, 2, 4]


def test_rounds_pool_their_step_times_into_one_row():
  train = _load_script()
  rows = [
      {"framework": "pml", "loss": "triplet_batch_hard", "status": "ok", "images_per_s": 100.0,
       "times_s": [0.1, 0.1], "initial_loss": 0.5},
      {"framework": "pml", "loss": "triplet_batch_hard", "status": "ok", "images_per_s": 50.0,
       "times_s": [0.2, 0.2, 0.2]},
      {"framework": "sphereembed", "loss": "triplet_batch_hard", "status": "timeout",
       "cpu_devices": 2, "error": "killed"},
  ]
  merged = train.merge_rounds(rows, batch_size=10)
  assert len(merged) == 2
  pml = merged[0]
  assert pml["steps"] == 5 and pml["median_ms"] == pytest.approx(200.0)
  assert pml["round_images_per_s"] == [100.0, 50.0] and pml["initial_loss"] == 0.5
  assert merged[1]["status"] == "timeout" and "—" in train.row_text(merged[1], merged)


@pytest.mark.parametrize("polyphase", [True, False])
def test_profile_step_ranks_xla_operations(capsys, polyphase):
  spec = importlib.util.spec_from_file_location("sphereembed_benchmark_profile",
                                                ROOT / "benchmarks" / "profile_step.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  argv = ["--batch", "8", "--steps", "2", "--top", "40"] + ([] if polyphase else ["--no-polyphase"])
  assert module.main(argv) == 0
  out = capsys.readouterr().out
  rows = re.findall(r"^\| (\S+) \| ([0-9.]+) \| ", out, flags=re.M)
  assert rows and all(float(ms) >= 0 for _, ms in rows)
  # XLA's own input gradient of the strided conv is the dilated convolution; the polyphase one is not.
  assert any(name.startswith("convolution-base-dilated") for name, _ in rows) != polyphase


def test_cifar_throughput_builds_the_runners_step():
  """benchmarks/cifar_throughput.py builds its step from the public API.

  No step runs here: the ResNet compiles slowly (run the script for that).
  """
  spec = importlib.util.spec_from_file_location("sphereembed_benchmark_cifar",
                                                ROOT / "benchmarks" / "cifar_throughput.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  from sphereembed.methods import centroid

  args = module._parse(["--width", "0.125", "--batch-size", "8", "--num-classes", "10",
                        "--embedding-dim", "16", "--loss", "triplet_batch_hard"])
  images = np.zeros((8, 32, 32, 3), np.uint8)
  config, mesh, model, _, loss = module.build(args, images)
  assert config.method == "centroid" and config.dataset == "cifar10" and config.optimizer == "sgd"
  assert mesh.size >= 1 and model.embedding_dim == 16
  assert isinstance(loss, centroid.LossSpec) and loss.name == "triplet_batch_hard"
  with pytest.raises(SystemExit):
    module._parse(["--loss", "no_such_loss"])
