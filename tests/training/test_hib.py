"""HIB on N-digit MNIST: model, train step, evaluation pairs, config and the experiment command."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from scipy import stats

import optax

from sphereembed import losses
from sphereembed import methods
from sphereembed.evaluation.protocols import verification
from sphereembed.methods import hib
from sphereembed.models.hib import HIBEmbedding, inverse_softplus
from sphereembed.runner import train_and_evaluate
from sphereembed.training import metric_writers
from tests.training.fake_data import write_fake_mnist

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fake_dir(tmp_path_factory):
  # Ten classes: N-digit MNIST needs every digit 0-9 in both MNIST splits.
  return write_fake_mnist(tmp_path_factory.mktemp("fake_mnist"), num_train=200, num_test=100,
                          num_classes=10)


# Small enough for seconds: 400 training and 200 test images per set (unseen: 30 classes,
# seen: 70, at least two images each), a tiny network, 6 steps.
SMALL = dict(num_train=400, num_test=200, features=(4, 8), hidden=16, classes_per_batch=4,
             samples_per_class=4, num_pairs=32, num_samples=4, num_train_steps=6, warmup_steps=1,
             learning_rate=1e-2, eval_num_samples=4, pairs_per_image=4, knn_k=3,
             uncertainty_bins=4, log_every_steps=2, checkpoint_every_steps=3,
             eval_batch_size=100, tensorboard=False)


def small_config(data_dir, **overrides):
  config = methods.default_config("hib")
  config.update(dict(SMALL, data_dir=data_dir))
  config.update(overrides)
  return config


def _images(batch=3, digits=2, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (batch, 28, 28 * digits, 1), np.uint8)


# ----------------------------------------------------------------------------- model


@pytest.mark.parametrize("components", [0, 1, 2, 3])
@pytest.mark.parametrize("digits", [1, 2, 3])
def test_model_shapes_for_every_width_and_mixture(components, digits):
  model = HIBEmbedding(3, components, features=(4, 8), hidden=8)
  images = _images(digits=digits)
  variables = model.init(jax.random.PRNGKey(0), images)
  out = model.apply(variables, images)
  assert out["means"].shape == (3, max(components, 1), 3)
  if components:
    assert out["log_sigmas"].shape == (3, components, 3)
    assert np.all(np.asarray(out["log_sigmas"]) >= model.log_sigma_min)
  else:
    assert "log_sigmas" not in out
  assert out["match_a"].shape == () and out["match_b"].shape == ()
  assert float(out["match_a"]) == pytest.approx(model.match_a_init, rel=1e-6)
  assert float(out["match_b"]) == pytest.approx(model.match_b_init, abs=1e-7)


def test_model_starts_at_the_configured_sigma_a_and_b():
  model = HIBEmbedding(2, 2, features=(4,), hidden=0, log_sigma_init=-2.0, match_a_init=3.0,
                       match_b_init=-0.5)
  images = _images()
  variables = model.init(jax.random.PRNGKey(0), images)
  out = model.apply(variables, images)
  np.testing.assert_allclose(out["log_sigmas"], -2.0, atol=1e-5)
  assert float(out["match_a"]) == pytest.approx(3.0, rel=1e-6)
  assert float(out["match_b"]) == pytest.approx(-0.5)
  assert set(variables["params"]) >= {"match_a_raw", "match_b"}


def test_point_embedding_self_mismatch_is_one_minus_sigmoid_b():
  model = HIBEmbedding(2, 0, features=(4,), hidden=8, match_b_init=1.3)
  tx = optax.adam(1e-3)
  state = hib.create_hib_state(model, tx, jax.random.PRNGKey(0), _images(1))
  outputs = hib.embed_images(state, _images(7), batch_size=4)
  samples = verification._samples(jax.random.PRNGKey(1), outputs, num_samples=8)
  assert samples.shape == (7, 1, 2)  # a point is its only sample
  eta = losses.self_mismatch(samples, outputs["match_a"], outputs["match_b"])
  np.testing.assert_allclose(eta, 1 - jax.nn.sigmoid(1.3), rtol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    ({"num_components": -1}, "num_components"),
    ({"downsample": "avg"}, "downsample"),
    ({"match_a_init": 0.0}, "match_a_init"),
    ({"log_sigma_init": -8.0}, "log_sigma_init"),
])
def test_model_rejects_bad_attributes(kwargs, match):
  model = HIBEmbedding(2, **{"features": (4,), **kwargs})
  with pytest.raises(ValueError, match=match):
    model.init(jax.random.PRNGKey(0), _images())


def test_model_rejects_images_without_channels():
  model = HIBEmbedding(2, 1, features=(4,))
  with pytest.raises(ValueError, match=r"\(B, H, W, C\)"):
    model.init(jax.random.PRNGKey(0), _images()[..., 0])


def test_inverse_softplus():
  for value in (1e-3, 1.0, 5.0, 50.0):
    assert float(jax.nn.softplus(inverse_softplus(value))) == pytest.approx(value, rel=1e-6)
  with pytest.raises(ValueError):
    inverse_softplus(0.0)


# ----------------------------------------------------------------------------- train step


@pytest.mark.parametrize("components, pairs", [(0, "sampled"), (1, "all"), (2, "sampled")])
def test_train_step_is_finite_and_moves_every_parameter(components, pairs):
  model = HIBEmbedding(2, components, features=(4, 8), hidden=8)
  state = hib.create_hib_state(model, optax.adam(1e-2), jax.random.PRNGKey(0), _images(1))
  before = jax.tree_util.tree_map(np.asarray, state.params)
  labels = np.repeat(np.arange(4), 3)
  batch = {"image": _images(12), "label": labels}
  spec = hib.HIBLossSpec(num_samples=4, pairs=pairs, num_pairs=20)
  state, metrics = hib.train_step(state, batch, spec)
  assert int(state.step) == 1
  assert all(np.isfinite(float(v)) for v in metrics.values()), metrics
  assert 0 <= float(metrics["match_negative"]) <= 1 and 0 <= float(metrics["match_positive"]) <= 1
  assert ("sigma_mean" in metrics) == (components > 0)
  if components == 0:
    assert float(metrics["kl"]) == 0.0
  changed = jax.tree_util.tree_map(lambda a, b: not np.array_equal(a, np.asarray(b)), before,
                                   state.params)
  assert changed["match_a_raw"] and changed["match_b"] and changed["means"]["kernel"]


# ----------------------------------------------------------------------------- evaluation


def test_verification_pairs_are_balanced_valid_and_deterministic():
  labels = np.repeat(np.arange(5), [2, 3, 4, 5, 6])
  partners, same = verification.verification_pairs(labels, 6, np.random.default_rng(0))
  rows = np.arange(len(labels))[:, None]
  assert partners.shape == same.shape == (len(labels), 6)
  assert same[:, :3].all() and not same[:, 3:].any()
  np.testing.assert_array_equal(labels[partners] == labels[rows], same)
  assert not np.any(partners[:, :3] == rows)  # never paired with itself
  again, _ = verification.verification_pairs(labels, 6, np.random.default_rng(0))
  np.testing.assert_array_equal(partners, again)
  # Both other members of the two-image class... only the one other image exists.
  assert np.all(partners[0, :3] == 1) and np.all(partners[1, :3] == 0)


class _TwoSets:
  """Just what the protocol reads of N-digit MNIST: the clean and occluded unseen test sets."""

  def __init__(self, clean, corrupted, labels):
    split = lambda images: type("Split", (), {"images": images, "labels": labels})()
    self._sets = {"unseen": split(clean), "unseen_corrupted": split(corrupted)}

  def test_set(self, name):
    return self._sets[name]


@pytest.mark.parametrize("stochastic", [True, False])
def test_occlusion_response_against_a_hand_computed_reference(stochastic):
  # "Images" that are their own embeddings: pixel row (x, y, sigma).
  rng = np.random.default_rng(3)
  labels = np.repeat(np.arange(4), 3)
  clean = np.concatenate([rng.normal(size=(12, 2)) + 4 * labels[:, None],
                          rng.uniform(0.1, 0.5, (12, 1))], axis=1)
  corrupted = clean + np.concatenate([rng.normal(size=(12, 2)), rng.normal(0, 0.05, (12, 1))], 1)

  def embed(images):
    rows = np.asarray(images)[:, 0, :, 0]
    out = {"means": rows[:, None, :2], "match_a": np.float32(1.0), "match_b": np.float32(0.0)}
    if stochastic:
      out["log_sigmas"] = np.log(np.repeat(rows[:, None, 2:], 2, axis=-1))
    return out

  config = ml_collections.ConfigDict(dict(
      eval_sets=("unseen",), eval_num_samples=2, pairs_per_image=2, knn_k=1, uncertainty_bins=2,
      eval_seed=0))
  data = _TwoSets(clean[:, None, :, None], corrupted[:, None, :, None], labels)
  metrics, _ = verification.evaluate(embed, data, config)
  shift = [np.hypot(*(corrupted[i, :2] - clean[i, :2])) for i in range(12)]
  class_means = [clean[labels == c, :2].mean(axis=0) for c in range(4)]
  spacing = [min(np.linalg.norm(class_means[c] - class_means[o]) for o in range(4) if o != c)
             for c in range(4)]
  np.testing.assert_allclose(metrics["unseen/corrupted/mean_shift"], np.median(shift), rtol=1e-6)
  np.testing.assert_allclose(metrics["unseen/corrupted/class_spacing"], np.median(spacing),
                             rtol=1e-6)
  if stochastic:
    growth = corrupted[:, 2] - clean[:, 2]
    np.testing.assert_allclose(metrics["unseen/corrupted/sigma_ratio"],
                               np.median(corrupted[:, 2] / clean[:, 2]), rtol=1e-5)
    assert metrics["unseen/corrupted/sigma_grows_share"] == np.mean(growth > 0)
    np.testing.assert_allclose(metrics["unseen/corrupted/sigma_shift_spearman"],
                               stats.spearmanr(growth, shift)[0], rtol=1e-6)
  else:
    assert "unseen/corrupted/sigma_ratio" not in metrics


@pytest.mark.parametrize("labels, count, match", [
    (np.array([0, 0, 1]), 2, "single image"),
    (np.array([0, 0, 0]), 2, "two classes"),
    (np.array([0, 0, 1, 1]), 3, "even"),
])
def test_verification_pairs_reject_bad_input(labels, count, match):
  with pytest.raises(ValueError, match=match):
    verification.verification_pairs(labels, count, np.random.default_rng(0))


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("bad, match", [
    ({"num_component": 2}, "Unknown config field.*num_components"),
    ({"pairs": "hard"}, "config.pairs must be one of"),
    ({"num_components": -1}, "num_components must be >= 0"),
    ({"num_train_steps": 1.5}, "must be an integer"),
    ({"eval_sets": ("unseen", "novel")}, "eval_sets"),
    ({"pairs_per_image": 5}, "even"),
    ({"num_pairs": 10_000}, "exceeds"),
    ({"positive_fraction": 1.5}, "positive_fraction"),
    ({"train_corruption": -0.5}, "train_corruption"),
    ({"train_corruption": 1.5}, "train_corruption"),
    ({"occlusion_size": (0, 10)}, "occlusion_size"),
    ({"occlusion_size": (12, 10)}, "occlusion_size"),
    ({"occlusion_size": (10, 29)}, "occlusion_size"),
    ({"occlusion_size": (10,)}, "occlusion_size"),
    ({"min_test_images_per_class": -1}, "min_test_images_per_class"),
    ({"eval_every_steps": -2}, "eval_every_steps"),
])
def test_validate_config_rejects_bad_fields(bad, match):
  with pytest.raises(ValueError, match=match):
    methods.validate_config({"method": "hib", **bad})


def test_every_hib_config_is_valid_and_documents_its_commands():
  import importlib.util
  paths = sorted((ROOT / "configs").glob("hib_n*.py"))  # hib_fmnist is the retrieval family's
  assert [p.stem for p in paths] == ["hib_n2_d2", "hib_n2_d3", "hib_n3_d2", "hib_n3_d3"]
  for path in paths:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = methods.validate_config(module.get_config())
    assert f"n{config.num_digits}_d{config.embedding_dim}" in path.stem
    for components in (0, 1, 2):
      assert (f"--config=configs/{path.name} --config.num_components={components}"
              in module.__doc__), path
    assert "Budget" in module.__doc__ and ("Measured" in module.__doc__
                                           or "Expected" in module.__doc__)


# ----------------------------------------------------------------------------- experiment


def test_command_runs_a_few_steps_and_writes_its_outputs(fake_dir, tmp_path):
  workdir = tmp_path / "run"
  overrides = [f"--config.{k}={v}" for k, v in SMALL.items()]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run(
      [sys.executable, "-m", "experiments.ndigit", "--config=configs/hib_n2_d2.py",
       "--config.num_components=2", f"--config.data_dir={fake_dir}", *overrides,
       f"--workdir={workdir}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "verification AP clean" in result.stdout
  assert "steps/s" in result.stderr and "ETA" in result.stderr  # the progress report
  metrics = json.loads((workdir / "metrics.json").read_text())
  assert metrics["model"] == "MoG-2" and metrics["num_train_steps"] == 6
  for key in ("verification_ap_clean", "verification_ap_corrupted", "knn_accuracy_clean",
              "knn_accuracy_corrupted", "seen/clean/verification_ap"):
    assert 0 <= metrics[key] <= 1, key
  for name in ("embeddings_hib.png", "uncertain_images.png", "uncertainty_bins.png",
               "training_curves.png", "config.json", "metrics.jsonl"):
    assert (workdir / name).stat().st_size > 0, name
  assert (workdir / "checkpoints" / "train" / "6").is_dir()


@pytest.mark.parametrize("argument, message", [
    ("--config.num_component=2", "num_component"),
    ("--config.method=hibb", "config.method must be one of"),
])
def test_bad_command_line_fails_before_training(tmp_path, argument, message):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run(
      [sys.executable, "-m", "experiments.ndigit", "--config=configs/hib_n2_d2.py", argument,
       f"--workdir={tmp_path / 'run'}"], cwd=ROOT, env=env, capture_output=True, text=True,
      timeout=120)
  assert result.returncode != 0
  assert message in result.stderr
  assert not (tmp_path / "run").exists()


def test_point_model_run_has_undefined_uncertainty_correlations(fake_dir, tmp_path):
  metrics = train_and_evaluate(
      small_config(fake_dir, num_components=0, eval_sets=("unseen",), figures=False),
      str(tmp_path))
  assert metrics["model"] == "point"
  assert np.isnan(metrics["eta_ap_spearman_clean"])
  assert np.isnan(metrics["eta_knn_spearman_corrupted"])
  expected = 1 - jax.nn.sigmoid(metrics["match_b"])
  assert metrics["eta_mean_clean"] == pytest.approx(float(expected), rel=1e-5)
  assert "seen/clean/verification_ap" not in metrics


@pytest.fixture(scope="module")
def straight_run(fake_dir, tmp_path_factory):
  """One uninterrupted MoG-1 run, shared by the resume tests."""
  config = small_config(fake_dir, eval_sets=("unseen",), figures=False)
  workdir = tmp_path_factory.mktemp("straight")
  return config, str(workdir), train_and_evaluate(config, str(workdir))


def test_interrupted_run_resumes_to_the_same_result(straight_run, tmp_path, monkeypatch):
  config, _, straight = straight_run
  calls = {"n": 0}
  real_step = hib.train_step

  def crashing_step(*args, **kwargs):
    calls["n"] += 1
    if calls["n"] == 5:
      raise KeyboardInterrupt("simulated preemption")
    return real_step(*args, **kwargs)

  monkeypatch.setattr(hib, "train_step", crashing_step)
  with pytest.raises(KeyboardInterrupt):
    train_and_evaluate(config, str(tmp_path))
  monkeypatch.setattr(hib, "train_step", real_step)
  # The periodic checkpoint and, on Ctrl-C, the last finished step.
  assert sorted(os.listdir(tmp_path / "checkpoints" / "train")) == ["3", "4"]
  resumed = train_and_evaluate(config, str(tmp_path))
  assert resumed["resumed_from_step"] == {"train": 4}
  for key in ("verification_ap_clean", "knn_accuracy_corrupted", "eta_mean_clean", "match_a",
              "match_b"):
    assert resumed[key] == straight[key], key


def test_periodic_evaluation_records_a_curve_and_leaves_training_alone(straight_run, tmp_path):
  config, _, straight = straight_run
  config = config.copy_and_resolve_references()
  config.eval_every_steps = 2
  result = train_and_evaluate(config, str(tmp_path))
  for key in ("verification_ap_clean", "knn_accuracy_corrupted", "match_a", "final_train_loss"):
    assert result[key] == straight[key], key
  records = metric_writers.read_jsonl(str(tmp_path / "metrics.jsonl"))
  curve = {r["step"]: r for r in records if "knn_accuracy_corrupted" in r}
  # Steps 2 and 4; the last step's evaluation is the run's final one.
  assert sorted(curve) == [2, 4, 6]
  assert curve[6]["verification_ap_clean"] == straight["verification_ap_clean"]
  assert all(np.isfinite(curve[s]["unseen/clean/verification_ap"]) for s in (2, 4))
  # The model changes between the evaluations.
  assert curve[2]["unseen/clean/eta_mean"] != curve[4]["unseen/clean/eta_mean"]


def test_resuming_with_another_config_is_refused(straight_run):
  config, workdir, _ = straight_run
  other = small_config(config.data_dir, eval_sets=("unseen",), figures=False, num_components=2)
  with pytest.raises(ValueError, match="different config.*num_components"):
    train_and_evaluate(other, workdir)


def test_corruption_and_test_class_options_reach_the_run(straight_run, tmp_path, monkeypatch):
  config, _, straight = straight_run
  shares, sizes, test_classes = [], [], []
  real = hib.ndigit.corrupt_train

  def recording(data, fraction, **occlusion):
    train = real(data, fraction, **occlusion)
    changed = train.images[..., 0] != data.train.images[..., 0]
    shares.append(np.mean(changed.any(axis=(1, 2))))
    sizes.append(max(changed.any(axis=2).sum(axis=1).max(), changed.any(axis=1).sum(axis=1).max()))
    # The test sets' boxes follow the same config.occlusion_size.
    test = data.test_unseen_corrupted.images[..., 0] != data.test_unseen.images[..., 0]
    sizes.append(test.any(axis=1).sum(axis=1).max())
    test_classes.append(len(np.unique(data.test_unseen.labels)))
    return train

  monkeypatch.setattr(hib.ndigit, "corrupt_train", recording)
  config = config.copy_and_resolve_references()
  config.train_corruption = 1.0
  config.occlusion_size = (3, 5)
  # 200 test images: 6 per unseen class, below 10: 200 // 10 = 20 classes are kept.
  config.min_test_images_per_class = 10
  corrupted = train_and_evaluate(config, str(tmp_path))
  assert len(shares) == 1 and shares[0] > 0.95
  assert 3 <= min(sizes) and max(sizes) <= 5
  assert test_classes == [20]
  # Other training images: another model (the test sets are the same).
  assert corrupted["match_a"] != straight["match_a"]
  assert json.loads((tmp_path / "config.json").read_text())["train_corruption"] == 1.0
