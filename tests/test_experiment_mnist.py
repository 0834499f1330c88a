"""The command line of the main job: `python -m experiments.mnist --config=configs/...`."""

import datetime
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

from experiments import mnist
from sphereembed import methods
from tests.training.fake_data import write_fake_mnist

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Every config: one runner serves them all (each method's own tests check its schema further).
CONFIGS = sorted((ROOT / "configs").glob("*.py"))


def _run(args, tmp_path, timeout=300):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "experiments.mnist", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_command_runs_a_few_steps_and_writes_its_outputs(tmp_path):
  data = write_fake_mnist(tmp_path / "data")
  workdir = tmp_path / "run"
  result = _run(["--config=configs/ncl_2d.py", f"--config.data_dir={data}",
                 "--config.num_epochs=1", "--config.validation_examples=48", "--config.sampler=shuffled", "--config.batch_size=48",
                 "--config.features=(4, 8)",
                 "--config.log_every_steps=2", f"--workdir={workdir}"], tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "nearest-centroid test accuracy" in result.stdout
  assert "steps/s" in result.stderr and "ETA" in result.stderr  # the progress report
  metrics = json.loads((workdir / "metrics.json").read_text())
  # 240 fake images, 48 held out for the calibration: 4 batches of 48.
  assert metrics["num_train_steps"] == 4 and 0 <= metrics["test_accuracy"] <= 1
  assert (workdir / "embeddings.png").stat().st_size > 0
  assert (workdir / "checkpoints" / "train" / "4").is_dir()
  assert (workdir / "model" / "model.json").is_file() and (workdir / "FIGURES.md").is_file()
  assert 0 < metrics["model/coverage"] <= 1


def test_cpu_devices_flag_trains_on_a_mesh_of_that_many_cpu_devices(tmp_path):
  data = write_fake_mnist(tmp_path / "data")
  workdir = tmp_path / "run"
  result = _run(["--config=configs/ncl_2d.py", f"--config.data_dir={data}", "--cpu_devices=2",
                 "--config.validation_examples=0", "--config.num_epochs=1", "--config.sampler=shuffled", "--config.batch_size=48",
                 "--config.features=(4, 8)", "--config.figures=False", f"--workdir={workdir}"],
                tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  metrics = json.loads((workdir / "metrics.json").read_text())
  assert metrics["num_devices"] == 2 and metrics["num_train_steps"] == 5
  assert 0 <= metrics["test_accuracy"] <= 1


def test_every_command_name_trains_any_method_on_the_cpu_devices(tmp_path):
  # experiments.ndigit is the one runner under its older name: HIB on a 2-device mesh.
  data = write_fake_mnist(tmp_path / "data", num_train=200, num_test=100, num_classes=10)
  workdir = tmp_path / "run"
  result = subprocess.run(
      [sys.executable, "-m", "experiments.ndigit", "--config=configs/hib_n2_d2.py",
       f"--config.data_dir={data}", "--cpu_devices=2", "--config.num_train=400",
       "--config.num_test=200", "--config.features=(4, 8)", "--config.hidden=16",
       "--config.classes_per_batch=4", "--config.samples_per_class=4", "--config.num_pairs=32",
       "--config.num_train_steps=4", "--config.eval_sets=('unseen',)", "--config.pairs_per_image=4",
       "--config.figures=False", f"--workdir={workdir}"], cwd=ROOT,
      env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "HIB MoG-1 (unseen classes): verification AP clean" in result.stdout
  metrics = json.loads((workdir / "metrics.json").read_text())
  assert metrics["method"] == "hib" and metrics["num_devices"] == 2


def test_unknown_override_fails_before_training(tmp_path):
  result = _run(["--config=configs/ncl_2d.py", "--config.embeding_dim=3",
                 f"--workdir={tmp_path / 'run'}"], tmp_path, timeout=120)
  assert result.returncode != 0
  assert "embeding_dim" in result.stderr and 'Did you mean "embedding_dim"' in result.stderr
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "run").exists()


def test_a_run_that_failed_before_training_is_one_message_and_its_workdir_reusable(tmp_path):
  workdir = tmp_path / "run"
  result = _run(["--config=configs/ncl_2d.py", f"--config.data_dir={tmp_path / 'missing'}",
                 f"--workdir={workdir}"], tmp_path, timeout=120)
  assert result.returncode == 1
  assert "error: data_dir=" in result.stderr and "Traceback" not in result.stderr
  # The corrected command, another config in the same workdir: nothing was trained, so it runs.
  data = write_fake_mnist(tmp_path / "data")
  result = _run(["--config=configs/ncl_2d.py", f"--config.data_dir={data}",
                 "--config.num_epochs=1", "--config.validation_examples=0",
                 "--config.sampler=shuffled", "--config.batch_size=48",
                 "--config.features=(4, 8)", "--config.figures=False", f"--workdir={workdir}"],
                tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.loads((workdir / "metrics.json").read_text())["num_train_steps"] == 5


def test_default_workdir_never_reuses_a_folder(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  now = datetime.datetime(2026, 1, 2, 3, 4, 5)
  first = mnist.default_workdir("configs/ncl_2d.py", now)
  assert first == os.path.join("runs", "ncl_2d", "20260102-030405")
  os.makedirs(first)
  second = mnist.default_workdir("configs/ncl_2d.py", now)
  assert second != first and not os.path.exists(second)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_config_is_valid_and_documents_its_command(path):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = methods.validate_config(module.get_config())
  assert f"--config=configs/{path.name}" in module.__doc__
  if path.stem != "default":
    assert "Measured" in module.__doc__ or "Expected" in module.__doc__
  assert config.embedding_dim >= 2


def test_summarize_groups_seeds_into_mean_and_std(tmp_path):
  from experiments import summarize
  for seed, accuracy in enumerate((0.98, 0.99)):
    workdir = tmp_path / f"run{seed}"
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps({"metric": "euclidean"}))
    (workdir / "metrics.json").write_text(json.dumps({
        "dataset": "mnist", "loss": "ncl", "embedding_dim": 2, "test_accuracy": accuracy,
        "test_balanced_accuracy": accuracy, "train_seconds_this_run": 10.0 * (seed + 1)}))
  table = summarize.summarize([str(tmp_path / "run0"), str(tmp_path / "run1"), str(tmp_path)])
  assert "| mnist | ncl | euclidean | 2 | 98.50 ± 0.71 | 98.50 ± 0.71 | 2 | 15 |" in table
  # Another config forms its own row, labelled by the field that differs;
  # extra metrics get a column each (a missing key shows a dash).
  for seed, auroc in enumerate((0.9, 0.8)):
    workdir = tmp_path / f"vmf{seed}"
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps({"metric": "euclidean", "confidence": "vmf",
                                                     "seed": seed}))
    (workdir / "metrics.json").write_text(json.dumps({
        "dataset": "mnist", "loss": "ncl", "embedding_dim": 2, "test_accuracy": 0.97,
        "kappa/ood_auroc": auroc, "train_seconds_this_run": 10.0}))
  table = summarize.summarize([str(p) for p in sorted(tmp_path.iterdir())],
                              metrics=("kappa/ood_auroc",))
  assert "| mnist | ncl | euclidean | 2 | None | 98.50 ± 0.71 | 98.50 ± 0.71 | — | 2 | 15 |" in table
  assert "| mnist | ncl | euclidean | 2 | vmf | 97.00 ± 0.00 | — | 0.8500 ± 0.0707 | 2 | 10 |" in table


def test_summarize_hib_groups_models_and_recipes_and_shows_the_papers_numbers(tmp_path):
  from experiments import summarize
  runs = [("mog1_s0", 1, 0.98, 0, -0.8), ("mog1_s1", 1, 0.96, 0, -0.6), ("point", 0, 0.97, 0, None),
          ("mog1_trim", 1, 0.95, 100, -1.0)]
  for name, components, ap, trim, binned in runs:
    workdir = tmp_path / name
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps({
        "seed": int(name.endswith("s1")), "num_components": components,
        "min_test_images_per_class": trim, "cache_dir": name}))
    metrics = {"num_digits": 3, "embedding_dim": 2, "num_components": components,
               "verification_ap_clean": ap, "knn_accuracy_clean": 0.5,
               "eta_ap_spearman_clean": float("nan"), "train_seconds_this_run": 100.0}
    if binned is not None:
      metrics["eta_ap_binned_spearman_clean"] = binned
    (workdir / "metrics.json").write_text(json.dumps(metrics))
  performance, binned = summarize.summarize_hib(
      [str(p) for p in sorted(tmp_path.iterdir())]).split("\n\n")
  rows = performance.splitlines()
  assert rows[0].startswith("| N | D | model | min_test_images_per_class | verification ap clean |")
  # Seeds of one recipe form a row; a different recipe (trimmed test sets) is its own row; the
  # cache folder is no recipe. The point model comes first; the paper's N = 3, D = 2 cells beside.
  assert rows[2:] == [
      "| 3 | 2 | point | 0 | 0.970 (0.978) | — | 0.500 (0.554) | — | — | — | — | — | 1 | 100 |",
      "| 3 | 2 | MoG-1 | 0 | 0.970 ± 0.014 (0.981) | — | 0.500 ± 0.000 (0.591) | — | — | — | — | — "
      "| 2 | 100 |",
      "| 3 | 2 | MoG-1 | 100 | 0.950 (0.981) | — | 0.500 (0.591) | — | — | — | — | — | 1 | 100 |"]
  # Bin-level correlations with the paper's sign (more uncertain, worse: positive), stochastic
  # models only.
  assert binned.splitlines()[2:] == ["| 3 | 2 | MoG-1 | 0 | 0.70 ± 0.14 (0.63) | — | — | — | 2 |",
                                     "| 3 | 2 | MoG-1 | 100 | 1.00 (0.63) | — | — | — | 1 |"]


def test_summarize_retrieval_orders_methods_and_shows_the_papers_cells(tmp_path):
  from experiments import summarize
  runs = [("laplace_online", 1, 0.90, {"laplace_online": 50.0}),
          ("laplace_online", 0, 0.86, {"laplace_online": 70.0}),
          ("deterministic", 0, 0.80, {"deterministic": 40.0}),
          ("pfe", 0, 0.85, {"deterministic": 40.0, "pfe": 20.0})]
  for method, seed, map1, seconds in runs:
    workdir = tmp_path / f"{method}_{seed}"
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps({"method": method, "structure": "full"}))
    nan = float("nan") if method == "deterministic" else 0.5
    (workdir / "metrics.json").write_text(json.dumps({
        "method": method, "seed": seed, "map_at_1": map1, "map_at_5": map1, "map_at_10": map1,
        "ood_auroc": nan, "ood_auprc": nan, "ausc": nan, "ece": nan, "train_seconds": seconds}))
  table = summarize.summarize_retrieval([str(p) for p in sorted(tmp_path.iterdir())])
  rows = table.splitlines()[2:]
  assert [row.split(" | ")[0] for row in rows] == ["| deterministic", "| laplace_online (full)",
                                                   "| pfe"]
  assert rows[0].startswith("| deterministic | 0.800 (0.78) | 0.800 | 0.800 | — | — | — | — | 1 | 40 |")
  assert rows[1] == ("| laplace_online (full) | 0.880 ± 0.028 (0.81) | 0.880 ± 0.028 | 0.880 ± 0.028 | "
                     "0.500 ± 0.000 (0.98) | 0.500 ± 0.000 | 0.500 ± 0.000 (0.89) | "
                     "0.500 ± 0.000 (0.02) | 2 | 60 |")
  assert rows[2].endswith("| 1 | 60 |")  # PFE's time includes its base network


def test_summary_line_says_when_the_model_abstains_on_everything():
  base = {"method": "centroid", "test_accuracy": 0.72, "model/threshold": 1.0}
  line = mnist.summary({**base, "model/coverage": 0.0, "model/accuracy_kept": float("nan")})
  assert "abstains on every test image" in line and "nan" not in line
  line = mnist.summary({**base, "model/coverage": 0.9, "model/accuracy_kept": 0.99})
  assert "abstains on 10.0% of the test images, 99.00% accurate" in line


def test_compare_losses_lists_its_runs_and_tables_the_finished_ones(tmp_path, capsys):
  from experiments import compare_losses
  compare_losses.main(["--root", str(tmp_path), "--seeds=0,1", "--dims=2",
                       "--datasets=fashion_mnist", "--losses=ncl,arcface", "--dry_run"])
  commands = capsys.readouterr().out.splitlines()
  assert len(commands) == 4 and "--config=configs/arcface_2d.py" in commands[1]
  assert "--config.ood_dataset=mnist" in commands[0] and "--config.seed=1" in commands[2]
  for seed, accuracy in ((0, 0.90), (1, 0.92)):
    run = tmp_path / f"ncl_2d_fashion_mnist_s{seed}"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({
        "embedding_dim": 2, "test_accuracy": accuracy, "centroid/ood_auroc": 0.8,
        "centroid/calibrated/ece": 0.01, "model/ece": 0.02, "model/coverage": 0.5}))
  compare_losses.main(["--root", str(tmp_path), "--seeds=0,1", "--dims=2",
                       "--datasets=fashion_mnist", "--losses=ncl,arcface", "--table"])
  table = capsys.readouterr().out
  assert "| fashion_mnist | 2 | ncl | 91.00 ± 1.41 | 0.8000 ± 0.0000 |" in table
  assert "arcface" not in table  # not run yet
