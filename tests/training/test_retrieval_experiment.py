"""The LAM comparison experiment: every method end to end on tiny data, the command, errors."""

import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sphereembed import methods
from sphereembed.evaluation.protocols import retrieval as retrieval_protocol
from sphereembed.methods import retrieval
from sphereembed.models import SmallCNN
from sphereembed.runner import train_and_evaluate
from tests.training.fake_data import write_fake_mnist

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """``fashion-mnist/`` (4 classes of bars) and ``mnist/`` (another draw) under one root."""
  root = tmp_path_factory.mktemp("retrieval_data")
  write_fake_mnist(root / "fashion-mnist", num_train=160, num_test=48, num_classes=4, seed=0)
  write_fake_mnist(root / "mnist", num_train=8, num_test=40, num_classes=10, seed=1)
  return str(root)


# A few steps of a tiny network: seconds per method.
SMALL = dict(features=(4, 8), hidden=16, classes_per_batch=4, samples_per_class=4,
             num_train_steps=4, warmup_steps=1, pfe_steps=3, ensemble_size=2, hib_num_pairs=24,
             hib_num_samples=4, eval_num_samples=4, calibration_references=100,
             log_every_steps=2, checkpoint_every_steps=2, eval_batch_size=32, tensorboard=False)


def small_config(data_dir, method, **overrides):
  config = methods.default_config(method)
  config.update(dict(SMALL, data_dir=data_dir,
                     dropout_rate=0.2 if method == "mc_dropout" else 0.0))
  config.update(overrides)
  return config


FIGURES = ("roc_ood.png", "sparsification.png", "reliability.png", "retrievals.png",
           "training_curves.png")


@pytest.mark.parametrize("method", retrieval.METHODS)
def test_every_method_writes_every_metric(data_dir, tmp_path, method):
  workdir = str(tmp_path / method)
  metrics = train_and_evaluate(small_config(data_dir, method), workdir)
  with open(os.path.join(workdir, "metrics.json"), encoding="utf-8") as f:
    saved = json.load(f)
  assert saved["method"] == method
  for key in retrieval_protocol.HEADLINE_KEYS + ("map_at_r", "recall_at_1", "ood/fpr_at_95_tpr",
                                        "sparsification/ause", "calibration_accuracy"):
    assert key in saved, key
  for key in ("map_at_1", "map_at_5", "map_at_10"):
    assert 0 <= saved[key] <= 1
  stochastic = method != "deterministic"
  for key in ("ood_auroc", "ood_auprc", "ausc", "ece"):
    assert math.isfinite(saved[key]) == stochastic, key
    if stochastic:
      assert 0 <= saved[key] <= 1
  if stochastic:
    # The paper's AUSC is the area under the accuracy curve: 1 - the error area.
    assert saved["ausc"] == pytest.approx(1 - saved["sparsification/ausc"])
    assert saved["uncertainty_mean_test"] >= 0
  assert metrics["map_at_1"] == saved["map_at_1"]
  assert json.load(open(os.path.join(workdir, "config.json"), encoding="utf-8"))["method"] == method
  written = set(os.listdir(workdir))
  assert set(FIGURES if stochastic else ("training_curves.png",)) <= written
  scores = np.load(os.path.join(workdir, "scores.npz"))
  assert scores["correct"].shape == (saved["num_test_examples"],)
  if method.startswith("laplace"):
    assert saved["prior_precision"] > 0 and saved["posterior_std_mean"] > 0
    assert saved["num_posterior_params"] == 3 * (16 + 1)  # the projection: 16 -> 3, and its bias
  if stochastic:
    paths = retrieval_protocol.plot_method_comparison({method: workdir}, str(tmp_path / "compare"))
    assert [os.path.basename(p) for p in paths] == [
        "roc_ood_methods.png", "sparsification_methods.png", "reliability_methods.png"]
    assert all(os.path.exists(p) for p in paths)


def test_resume_keeps_the_result_and_refuses_another_config(data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  first = train_and_evaluate(small_config(data_dir, "laplace_online"), workdir)
  again = train_and_evaluate(small_config(data_dir, "laplace_online"), workdir)
  assert again["resumed_from_step"] == {"laplace_online": 4}
  for key in retrieval_protocol.HEADLINE_KEYS:
    assert again[key] == pytest.approx(first[key])
  # The evaluated posterior's prior is evaluation only: re-tuning it re-evaluates, never retrains.
  untuned = train_and_evaluate(
      small_config(data_dir, "laplace_online", tune_prior=False, prior_precision=1.0), workdir)
  assert untuned["resumed_from_step"] == {"laplace_online": 4}
  assert untuned["prior_precision"] == 1.0 != first["prior_precision"]
  with pytest.raises(ValueError, match="different config"):
    train_and_evaluate(small_config(data_dir, "laplace_online", margin=0.5), workdir)


def test_command_line(data_dir, tmp_path):
  workdir = tmp_path / "cli"
  overrides = [f"--config.{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}"
               for k, v in SMALL.items()]
  result = subprocess.run(
      [sys.executable, "-m", "experiments.retrieval", "--config=configs/lam_fmnist.py",
       f"--config.data_dir={data_dir}", *overrides, f"--workdir={workdir}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS="cpu", MPLCONFIGDIR=str(tmp_path / "mpl")))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "laplace_online: mAP@1" in result.stdout
  saved = json.loads((workdir / "metrics.json").read_text())
  assert saved["method"] == "laplace_online"
  assert all(key in saved for key in retrieval_protocol.HEADLINE_KEYS)


@pytest.mark.parametrize("name", ["lam_fmnist", "lam_posthoc_fmnist", "deterministic_fmnist",
                                  "mcdropout_fmnist", "ensemble_fmnist", "pfe_fmnist",
                                  "hib_fmnist"])
def test_configs_are_valid_and_document_their_command(name):
  source = (ROOT / "configs" / f"{name}.py").read_text()
  assert f"python -m experiments.mnist --config=configs/{name}.py" in source
  namespace = {}
  exec(compile(source, name, "exec"), namespace)  # pylint: disable=exec-used
  config = methods.validate_config(namespace["get_config"]())
  assert config.dataset == "fashion_mnist" and config.ood_dataset == "mnist"
  expected = {"lam_fmnist": "laplace_online", "lam_posthoc_fmnist": "laplace_posthoc",
              "mcdropout_fmnist": "mc_dropout", "hib_fmnist": "retrieval_hib"}.get(
                  name, name.removesuffix("_fmnist"))
  assert config.method == expected


@pytest.mark.parametrize("overrides, message", [
    (dict(not_a_field=1), "Unknown config field"),
    (dict(method="laplace"), "config.method must be one of"),
    (dict(method="mc_dropout", dropout_rate=0.0), "dropout_rate > 0"),
    (dict(dropout_rate=0.3), "used by 'mc_dropout' only"),
    (dict(memory_factor=1.0), "memory_factor"),
    (dict(repulsive="negatives"), "config.repulsive must be one of"),
    (dict(ood_dataset="fashion_mnist"), "must differ"),
    (dict(eval_num_samples=1), "eval_num_samples"),
    (dict(samples_per_class=1), "positive pairs"),
    (dict(method="ensemble", ensemble_size=1), "ensemble_size"),
    (dict(hib_num_pairs=10_000), "hib_num_pairs"),
    (dict(embedding_dim=1), "embedding_dim"),
    (dict(prior_precision=0.0), "prior_precision must be > 0"),
    (dict(features=(8, 0)), "positive channel counts"),
])
def test_bad_configs_fail_with_a_clear_error(overrides, message):
  config = {**methods.default_config("deterministic").to_dict(), **overrides}
  with pytest.raises(ValueError, match=message):
    methods.validate_config(config)


def test_too_little_data_fails_before_training(data_dir, tmp_path):
  with pytest.raises(ValueError, match="at least 2"):
    train_and_evaluate(small_config(data_dir, "deterministic", max_test_examples=1),
                                 str(tmp_path / "tiny"))
  with pytest.raises(ValueError, match="classes"):
    train_and_evaluate(small_config(data_dir, "deterministic", classes_per_batch=5),
                                 str(tmp_path / "few_classes"))


def test_trunk_features_feed_the_head():
  model = SmallCNN(3, features=(4,), hidden=8)
  images = np.random.default_rng(0).integers(0, 256, (5, 28, 28, 1), np.uint8)
  params = model.init(jax.random.PRNGKey(0), images)["params"]
  features = retrieval.trunk_features(model.apply, params, images)
  embed = retrieval._head_embed(3)  # pylint: disable=protected-access
  np.testing.assert_allclose(embed(params, features),
                             model.apply({"params": params}, images)["embedding"], rtol=1e-6)


def test_mls_loss_matches_its_formula():
  rng = np.random.default_rng(0)
  mu, log_sigma = rng.normal(size=(6, 3)), 0.3 * rng.normal(size=(6, 3))
  labels = np.array([0, 0, 1, 1, 1, 2])
  pairs = [(0, 1), (2, 3), (2, 4), (3, 4)]
  expected = np.mean([
      0.5 * np.sum((mu[i] - mu[j]) ** 2 / (np.exp(2 * log_sigma[i]) + np.exp(2 * log_sigma[j]))
                   + np.log(np.exp(2 * log_sigma[i]) + np.exp(2 * log_sigma[j])))
      + 1.5 * np.log(2 * np.pi) for i, j in pairs])
  got = retrieval.mls_loss(jnp.asarray(mu), jnp.asarray(log_sigma), jnp.asarray(labels))
  assert float(got) == pytest.approx(expected, rel=1e-10)
  assert float(retrieval.mls_loss(jnp.asarray(mu), jnp.asarray(log_sigma),
                                  jnp.arange(6))) == 0.0  # no positive pair
  with pytest.raises(ValueError, match="same"):
    retrieval.mls_loss(jnp.asarray(mu), jnp.asarray(log_sigma[:, :2]), jnp.asarray(labels))


def test_ensemble_alignment_is_evaluation_only(data_dir, tmp_path):
  workdir = str(tmp_path / "ensemble")
  aligned = train_and_evaluate(small_config(data_dir, "ensemble"), workdir)
  raw = train_and_evaluate(
      small_config(data_dir, "ensemble", ensemble_alignment="none"), workdir)
  assert raw["resumed_from_step"] == {"member_0": 4, "member_1": 4}
  # Rotating member 1 changes its samples, so the spread (the uncertainty) differs.
  assert raw["uncertainty_mean_test"] != pytest.approx(aligned["uncertainty_mean_test"])
  with pytest.raises(ValueError, match="ensemble_alignment"):
    methods.validate_config(small_config(data_dir, "ensemble",
                                                     ensemble_alignment="affine"))
