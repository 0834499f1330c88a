"""train_and_evaluate end to end on a tiny IDX folder: outputs, resume, bad configs and data."""

import json
import os

import numpy as np
import orbax.checkpoint as ocp
import pytest

from sphereembed.data import DataNotFoundError
from sphereembed import methods
from sphereembed.methods import centroid
from sphereembed.runner import train_and_evaluate
from sphereembed.training.checkpoints import CorruptCheckpointError
from tests.training.fake_data import write_fake_mnist
from tests.training.preemption import preempted_run


@pytest.fixture(scope="module")
def fake_dir(tmp_path_factory):
  return write_fake_mnist(tmp_path_factory.mktemp("fake_mnist"))


def small_config(data_dir, **overrides):
  config = methods.default_config()
  config.update(dict(
      data_dir=data_dir, sampler="shuffled", batch_size=32, num_epochs=3, features=(4, 8), hidden=32,
      warmup_steps=2, learning_rate=1e-2, log_every_steps=2, checkpoint_every_steps=4,
      eval_batch_size=64, embedding_dim=2))
  config.update(overrides)
  return config


def _final_arrays(workdir):
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints", "train")) if s.isdigit())
  restored = ocp.StandardCheckpointer().restore(
      os.path.join(workdir, "checkpoints", "train", str(steps[-1]), "default"))
  return steps[-1], restored


def test_run_writes_checkpoints_metrics_and_figures(fake_dir, tmp_path):
  metrics = train_and_evaluate(small_config(fake_dir), str(tmp_path))
  for name in ("metrics.json", "metrics.jsonl", "embeddings.png", "training_curves.png",
               "config.json"):
    assert os.path.getsize(tmp_path / name) > 0, name
  assert os.listdir(tmp_path / "tensorboard")
  with open(tmp_path / "metrics.json") as f:
    saved = json.load(f)
  assert saved["test_accuracy"] == metrics["test_accuracy"]
  # Four well-separated bar classes: far above the 25% of chance after 21 steps.
  assert metrics["test_accuracy"] > 0.6, metrics
  assert metrics["num_train_steps"] == 21
  step, arrays = _final_arrays(str(tmp_path))
  assert step == 21 and int(arrays["step"]) == 21
  np.testing.assert_allclose(np.linalg.norm(arrays["extras"]["centroids"], axis=1), 1.0, atol=1e-5)
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert any("train_loss" in r for r in records) and any("steps_per_sec" in r for r in records)


def test_interrupted_run_resumes_to_the_same_result(fake_dir, tmp_path):
  config = small_config(fake_dir, figures=False, tensorboard=False)
  straight = train_and_evaluate(config, str(tmp_path / "straight"))

  preempted_run(config, str(tmp_path / "resumed"), centroid, at_call=11)
  # Ctrl-C at step 11 saved the state of step 10, the last finished one.
  assert _final_arrays(str(tmp_path / "resumed"))[0] == 10
  resumed = train_and_evaluate(config, str(tmp_path / "resumed"))

  assert resumed["resumed_from_step"] == {"train": 10}
  assert resumed["test_accuracy"] == straight["test_accuracy"]
  _, a = _final_arrays(str(tmp_path / "straight"))
  _, b = _final_arrays(str(tmp_path / "resumed"))
  import jax
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_corrupt_checkpoint_gives_a_clear_error(fake_dir, tmp_path):
  config = small_config(fake_dir, num_epochs=1, figures=False, tensorboard=False)
  train_and_evaluate(config, str(tmp_path))
  data_root = tmp_path / "checkpoints" / "train"  # every checkpoint: no fallback
  damaged = 0
  for root, _, files in os.walk(data_root):
    for name in files:
      if name not in ("_METADATA", "commit_success.txt"):
        with open(os.path.join(root, name), "r+b") as f:
          f.truncate(max(os.path.getsize(os.path.join(root, name)) // 3, 1))
        damaged += 1
  assert damaged
  with pytest.raises(CorruptCheckpointError, match="cannot be restored"):
    train_and_evaluate(config, str(tmp_path))


def test_resuming_with_another_config_is_refused(fake_dir, tmp_path):
  config = small_config(fake_dir, num_epochs=1, figures=False, tensorboard=False)
  train_and_evaluate(config, str(tmp_path))
  with pytest.raises(ValueError, match="different config.*embedding_dim"):
    train_and_evaluate(small_config(fake_dir, num_epochs=1, embedding_dim=3), str(tmp_path))


def test_missing_data_names_the_ways_to_provide_it(tmp_path):
  config = small_config(str(tmp_path / "nowhere"))
  with pytest.raises(DataNotFoundError, match="data_dir"):
    train_and_evaluate(config, str(tmp_path / "work"))


def test_balanced_sampler_and_class_weighting_run(fake_dir, tmp_path):
  config = small_config(fake_dir, sampler="balanced", classes_per_batch=4, samples_per_class=8,
                        class_weighting=True, imbalanced_classes=(0, 1),
                        imbalanced_fraction=0.25, num_epochs=1, figures=False,
                        tensorboard=False)
  metrics = train_and_evaluate(config, str(tmp_path))
  assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["num_train_steps"] > 0


@pytest.mark.parametrize("bad, match", [
    ({"embeding_dim": 3}, "Unknown config field.*embedding_dim"),
    ({"loss": "sphereface"}, "config.loss must be one of"),
    ({"batch_size": 0}, "config.batch_size must be > 0"),
    ({"num_epochs": 1.5}, "must be an integer"),
    ({"learning_rate": "fast"}, "must be of type float"),
    ({"imbalanced_fraction": 0.0}, "imbalanced_fraction"),
    ({"classifier_weight": 1.0}, "classifier_head"),
    ({"model": "resnet18", "batch_norm": True}, "ResNets always have it"),
    ({"features": (0, 3)}, "positive channel counts"),
    ({"loss": "arcface", "loss_options": {"alpha": 2.0}}, r"it takes \['margin', 'scale'\]"),
    ({"loss": "ncl", "loss_options": {"margin": 2.0}}, "it has none there"),
    ({"loss": "multi_similarity", "loss_options": {"mine": 1.0}}, "must be a bool"),
    ({"loss": "circle", "loss_options": {"gamma": "big"}}, "must be a number"),
    ({"loss": "cosface", "loss_options": 3.0}, "must be of type ConfigDict"),
    ({"loss": "ncl", "memory_size": 64}, "memory form"),
    ({"loss": "subcenter_arcface", "loss_options": {"num_subcenters": 0}}, "positive integer"),
    ({"loss": "subcenter_arcface", "loss_options": {"num_subcenters": 2.5}}, "positive integer"),
    ({"loss": "proxy_anchor", "confidence": "vmf"}, "evaluated by its proxies"),
])
def test_validate_config_rejects_bad_fields(bad, match):
  with pytest.raises(ValueError, match=match):
    methods.validate_config(bad)


def test_validate_config_fills_defaults_and_locks():
  config = methods.validate_config({"loss": "softmax"})
  assert config.classifier_head and config.embedding_dim == 2
  with pytest.raises(AttributeError):
    config.new_field = 1


@pytest.mark.parametrize("confidence,head_key", [("vmf", "kappa"), ("gaussian", "sigma")])
def test_confidence_run_reports_calibration_and_ood(tmp_path, confidence, head_key):
  root = tmp_path / "data"
  write_fake_mnist(root / "mnist")
  write_fake_mnist(root / "fashion-mnist", seed=1)
  config = small_config(str(root), confidence=confidence, validation_examples=40,
                        ood_dataset="fashion_mnist", tensorboard=False, classifier_head=True,
                        classifier_weight=1.0)
  metrics = train_and_evaluate(config, str(tmp_path / "run"))
  for score in ("centroid", head_key, "softmax"):
    for key in ("accuracy", "accuracy_at_80", "probabilities/ece", "probabilities/brier",
                "calibrated/ece", "temperature", "ood_auroc", "ood_auprc", "calibrated/ood_auroc",
                "isotonic/ece", "isotonic/accuracy_at_80"):
      value = metrics[f"{score}/{key}"]
      assert np.isfinite(value), (score, key)
    assert 0 <= metrics[f"{score}/calibrated/ece"] <= 1
    assert 0 <= metrics[f"{score}/isotonic/ece"] <= 1
    assert 0 <= metrics[f"{score}/ood_auroc"] <= 1
  # Every score but the classifier's predicts the nearest centroid.
  assert metrics[f"{head_key}/accuracy"] == metrics["centroid/accuracy"] == metrics["test_accuracy"]
  if confidence == "vmf":
    assert os.path.getsize(tmp_path / "run" / "embeddings_kappa.png") > 0
  for figure in (f"confidence_boxplot_{head_key}.png", f"reliability_{head_key}_isotonic.png",
                 "risk_coverage.png", "ood_roc.png"):
    assert os.path.getsize(tmp_path / "run" / figure) > 0


def test_validation_split_is_held_out(fake_dir):
  config = methods.validate_config(small_config(fake_dir, validation_examples=40))
  data = centroid.prepare_data(config)
  train, validation = data.train, data.validation
  assert len(validation) == 40 and len(train) == 200
  train_rows = {row.tobytes() for row in train.images}
  assert not any(row.tobytes() in train_rows for row in validation.images)
  with pytest.raises(ValueError, match="leaves no training images"):
    centroid.prepare_data(methods.validate_config(small_config(fake_dir, validation_examples=240)))


def test_checkpoints_of_the_earlier_layout_are_refused(fake_dir, tmp_path):
  (tmp_path / "checkpoints" / "8" / "default").mkdir(parents=True)  # checkpoints/<step>
  with pytest.raises(ValueError, match="earlier version of sphereembed"):
    train_and_evaluate(small_config(fake_dir), str(tmp_path))


@pytest.mark.parametrize("loss, options, per_class", [
    ("proxy_anchor", {"margin": 0.1, "alpha": 32.0}, 1),
    ("subcenter_arcface", {"num_subcenters": 2, "scale": 16.0}, 2)])
def test_proxy_loss_run_is_evaluated_by_its_proxies_and_saved(fake_dir, tmp_path, loss, options,
                                                               per_class):
  from sphereembed import geometry, inference
  config = small_config(fake_dir, loss=loss, embedding_dim=8, figures=False,
                        tensorboard=False, validation_examples=40)
  config.loss_options = options
  metrics = train_and_evaluate(config, str(tmp_path))
  assert metrics["test_accuracy"] > 0.6, metrics
  assert 0 <= metrics["test_accuracy_centroids"] <= 1
  step, arrays = _final_arrays(str(tmp_path))
  proxies = np.asarray(geometry.l2_normalize(np.asarray(arrays["params"]["head"]["proxies"])))
  # MNIST's ten classes (four appear in the fake data), per_class proxies each.
  assert proxies.shape == (10 * per_class, 8)
  model = inference.load_model(str(tmp_path))
  # The saved prototypes are unit proxies (a sub-center of each class), the directions the
  # loss trained.
  assert model.centroids.shape == (10, 8)
  for k in range(10):
    rows = proxies[k * per_class:(k + 1) * per_class]
    assert np.min(np.abs(rows - model.centroids[k]).max(axis=1)) < 1e-6, k
  with open(tmp_path / "config.json") as f:
    assert json.load(f)["loss_options"] == options


def test_memory_run_resumes_with_its_memory(fake_dir, tmp_path):
  config = small_config(fake_dir, loss="multi_similarity", memory_size=100, figures=False,
                        tensorboard=False, embedding_dim=8)
  metrics = train_and_evaluate(config, str(tmp_path / "whole"))
  assert metrics["test_accuracy"] > 0.6, metrics
  _, whole = _final_arrays(str(tmp_path / "whole"))
  memory = whole["extras"]["memory"]
  # 21 steps of 32 images through 100 slots.
  assert int(memory["position"]) == (21 * 32) % 100 and bool(np.all(memory["valid"]))

  preempted_run(config, str(tmp_path / "resumed"), centroid, at_call=11)
  resumed = train_and_evaluate(config, str(tmp_path / "resumed"))
  assert resumed["resumed_from_step"] == {"train": 10}
  _, again = _final_arrays(str(tmp_path / "resumed"))
  import jax
  for x, y in zip(jax.tree_util.tree_leaves(whole), jax.tree_util.tree_leaves(again)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
