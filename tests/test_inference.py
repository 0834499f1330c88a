"""A trained model as an artifact: saved by the runner, loaded, predicted with, searched, exported."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from sphereembed import inference, methods
from sphereembed.data import Dataset
from sphereembed.prediction import Calibration
from sphereembed.runner import train_and_evaluate

ROOT = pathlib.Path(__file__).resolve().parents[1]
CLASSES = ("ankle", "bag", "coat", "dress")


def _bars(count: int, seed: int, size=(16, 16), channels=3):
  """Class k is a bright bar in row band k, plus noise: separable in a few steps."""
  rng = np.random.default_rng(seed)
  labels = np.arange(count) % len(CLASSES)
  images = rng.integers(0, 80, size=(count, *size, channels), dtype=np.uint8)
  for i, label in enumerate(labels):
    images[i, 1 + 4 * label:3 + 4 * label, 2:size[1] - 2] = 250
  return images, labels


def _config(**overrides):
  config = methods.default_config()
  config.update({**dict(features=(4, 8), hidden=16, embedding_dim=3, classes_per_batch=4,
                        samples_per_class=4, num_epochs=3, log_every_steps=5,
                        checkpoint_every_steps=10, tensorboard=False, figures=False,
                        warmup_steps=1, validation_examples=48, abstain_level=0.95,
                        eval_batch_size=32), **overrides})
  return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A short vMF run on arrays; the artifact the runner saved is kept in memory too."""
  workdir = str(tmp_path_factory.mktemp("run"))
  x_train, y_train = _bars(240, 0)
  x_test, y_test = _bars(64, 1)
  dataset = Dataset.from_arrays("bars", x_train, y_train, x_test, y_test, class_names=CLASSES)
  saved = []
  original = inference.ModelArtifact.save

  def keep(self, folder):
    saved.append(self)
    original(self, folder)

  inference.ModelArtifact.save = keep
  try:
    metrics = train_and_evaluate(_config(confidence="vmf"), workdir, dataset=dataset)
  finally:
    inference.ModelArtifact.save = original
  return dict(workdir=workdir, metrics=metrics, artifact=saved[0], x_test=x_test, y_test=y_test,
              x_train=x_train, y_train=y_train)


def test_loaded_model_embeds_exactly_as_the_trained_one(trained):
  artifact = trained["artifact"]
  model = inference.load_model(trained["workdir"])
  assert model.class_names == CLASSES and model.image_shape == (16, 16, 3)
  variables = {"params": artifact.params}
  if artifact.batch_stats:
    variables["batch_stats"] = artifact.batch_stats
  forward = jax.jit(lambda v, x: artifact.model.apply(v, x, train=False))
  images = trained["x_test"][:32]
  expected = np.asarray(forward(variables, images)["embedding"])
  got = np.asarray(model.embed(images, batch_size=32))
  np.testing.assert_array_equal(got, expected)
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(model.centroids, np.asarray(artifact.centroids))


def test_predict_reproduces_the_runs_measurements(trained):
  model = inference.load_model(trained["workdir"])
  metrics = trained["metrics"]
  prediction = model.predict(trained["x_test"])
  kept = ~prediction.abstain
  correct = prediction.label == trained["y_test"]
  assert np.mean(kept) == pytest.approx(metrics["model/coverage"])
  if kept.any():
    assert np.mean(correct[kept]) == pytest.approx(metrics["model/accuracy_kept"])
  assert prediction.probabilities.shape == (64, 4)
  np.testing.assert_allclose(prediction.probabilities.sum(axis=1), 1.0, rtol=1e-9)
  assert np.all((prediction.confidence >= 0) & (prediction.confidence <= 1))
  np.testing.assert_array_equal(prediction.abstain,
                                prediction.confidence < model.calibration.threshold)
  assert model.calibration.score == "kappa" and model.calibration.num_examples == 48
  assert model.confidence(trained["x_test"][:5]).shape == (5,)


def test_any_batch_size_and_input_form(trained):
  model = inference.load_model(trained["workdir"])
  images = trained["x_test"][:7]
  whole = np.asarray(model.embed(images, batch_size=64))
  np.testing.assert_allclose(np.asarray(model.embed(images, batch_size=3)), whole, atol=1e-6)
  np.testing.assert_allclose(np.asarray(model.embed(images[:1])), whole[:1], atol=1e-6)
  floats = images.astype(np.float32) / 255.0
  np.testing.assert_allclose(np.asarray(model.embed(floats)), whole, atol=1e-6)
  bigger = np.repeat(np.repeat(images, 2, axis=1), 2, axis=2)
  assert model.embed(bigger).shape == (7, 3)  # resized to 16 x 16
  with pytest.raises(ValueError, match="3-channel images, got 1"):
    model.embed(images[..., :1])
  with pytest.raises(ValueError, match="no images"):
    model.embed(images[:0])


def test_exported_function_matches_in_a_fresh_process(trained, tmp_path):
  model = inference.load_model(trained["workdir"])
  model.export(str(tmp_path / "exported"))
  images = trained["x_test"][:20]
  np.save(tmp_path / "images.npy", images)
  script = f"""
import sys, json
import numpy as np
from sphereembed import inference
exported = inference.load_exported({str(tmp_path / 'exported')!r})
images = np.load({str(tmp_path / 'images.npy')!r})
prediction = exported.predict(images)
np.save({str(tmp_path / 'embed.npy')!r}, np.asarray(exported.embed(images)))
np.save({str(tmp_path / 'confidence.npy')!r}, prediction.confidence)
print(json.dumps({{"models": sorted(m for m in sys.modules if m.startswith("sphereembed.models")),
                  "labels": prediction.label.tolist()}}))
"""
  done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                        timeout=300, check=True)
  report = json.loads(done.stdout.strip().splitlines()[-1])
  assert report["models"] == []
  expected = model.predict(images)
  assert report["labels"] == expected.label.tolist()
  np.testing.assert_allclose(np.load(tmp_path / "embed.npy"), np.asarray(model.embed(images)),
                             atol=1e-5)
  np.testing.assert_allclose(np.load(tmp_path / "confidence.npy"), expected.confidence, atol=1e-5)


def test_missing_or_unfinished_model_is_a_clear_error(tmp_path):
  with pytest.raises(inference.ModelNotFoundError, match="does not exist"):
    inference.load_model(str(tmp_path / "nowhere"))
  os.makedirs(tmp_path / "run" / "checkpoints")
  with pytest.raises(inference.ModelNotFoundError, match="unfinished run.*same --workdir") as error:
    inference.load_model(str(tmp_path / "run"))
  assert "delete" not in str(error.value).lower()


def _copy_model(trained, tmp_path):
  import shutil  # pylint: disable=import-outside-toplevel
  target = tmp_path / "model"
  shutil.copytree(os.path.join(trained["workdir"], "model"), target)
  return target


def test_damaged_or_foreign_files_are_refused(trained, tmp_path):
  folder = _copy_model(trained, tmp_path)
  arrays = folder / "arrays.msgpack"
  data = bytearray(arrays.read_bytes())
  data[len(data) // 2] ^= 1
  arrays.write_bytes(bytes(data))
  with pytest.raises(inference.ModelFormatError, match="does not match the checksum") as error:
    inference.load_model(str(folder))
  assert "delete" not in str(error.value).lower()

  folder = _copy_model(trained, tmp_path / "v2")
  description = json.loads((folder / "model.json").read_text())
  description["version"] = 99
  (folder / "model.json").write_text(json.dumps(description))
  with pytest.raises(inference.ModelFormatError, match="version 99.*reads version 1"):
    inference.load_model(str(folder))

  folder = _copy_model(trained, tmp_path / "arch")
  description = json.loads((folder / "model.json").read_text())
  description["architecture"]["settings"]["hidden"] = 32
  (folder / "model.json").write_text(json.dumps(description))
  with pytest.raises(inference.ModelFormatError, match="the network expects"):
    inference.load_model(str(folder))

  folder = _copy_model(trained, tmp_path / "garbage")
  (folder / "model.json").write_text("{not json")
  with pytest.raises(inference.ModelFormatError, match="not readable JSON"):
    inference.load_model(str(folder))


def test_index_search_matches_brute_force_and_round_trips(tmp_path):
  rng = np.random.default_rng(0)
  gallery = rng.normal(size=(300, 8))
  gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
  labels = np.array([f"id{i % 30}" for i in range(300)])
  index = inference.Index(gallery[:200], labels[:200])
  index.add(gallery[200:], labels[200:], ids=np.arange(1000, 1100))
  queries = rng.normal(size=(17, 8))
  queries /= np.linalg.norm(queries, axis=1, keepdims=True)
  distances, indices, found = index.search(queries, k=5)
  brute = 1 - queries @ gallery.T
  for q in range(17):
    order = np.argsort(brute[q], kind="stable")[:5]
    np.testing.assert_array_equal(indices[q], order)
    np.testing.assert_allclose(distances[q], brute[q, order], atol=1e-5)
    assert found[q].tolist() == labels[order].tolist()
  index.threshold = 0.3
  path = str(tmp_path / "gallery.npz")
  index.save(path)
  loaded = inference.Index.load(path)
  assert loaded.threshold == 0.3 and loaded.metric == "cosine"
  assert loaded.ids[-1] == 1099 and loaded.labels.tolist() == labels.tolist()
  np.testing.assert_array_equal(loaded.search(queries, k=5)[1], indices)


def test_identify_says_unknown_for_far_queries():
  index = inference.Index(np.eye(3), [10, 20, 30])
  near = np.array([[0.99, 0.14, 0.0]])
  far = np.array([[0.577, 0.577, 0.577]])
  queries = np.concatenate([near, far, near, far])
  threshold = index.calibrate(queries, [10, 99, 10, 99])
  assert 0.009 <= threshold < 0.42  # the near distance, 1 - 0.99
  assert index.identify(np.concatenate([near, far])).tolist() == [10, "unknown"]


def test_calibration_threshold_and_round_trip():
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 4, 3000)
  logits = 3 * np.eye(4)[labels] + rng.normal(0, 1.5, (3000, 4))
  accurate = Calibration.fit(logits, labels, target="accuracy", level=0.97)
  prediction = accurate.predict(logits)
  kept = ~prediction.abstain
  assert np.mean(prediction.label[kept] == labels[kept]) >= 0.97
  # Keeping the next-lower confidence level too would miss the target (largest coverage).
  lower = prediction.confidence[prediction.abstain].max()
  wider = prediction.confidence >= lower
  assert np.mean(prediction.label[wider] == labels[wider]) < 0.97
  covering = Calibration.fit(logits, labels, target="coverage", level=0.6)
  assert np.mean(~covering.predict(logits).abstain) >= 0.6
  again = Calibration.from_dict(json.loads(json.dumps(accurate.to_dict())))
  np.testing.assert_array_equal(again.predict(logits).confidence, prediction.confidence)
  with pytest.raises(ValueError, match="abstention level"):
    Calibration.fit(logits, labels, level=1.5)
  with pytest.raises(ValueError, match="unknown calibration fields"):
    Calibration.from_dict({"temperatur": 1.0})


def test_train_on_a_folder_then_predict_from_the_command_line(tmp_path):
  """The README's own-data flow: PNG class folders -> experiments.mnist -> experiments.predict."""
  images, labels = _bars(96, 2, size=(20, 20))
  for i, (image, label) in enumerate(zip(images, labels)):
    folder = tmp_path / "photos" / CLASSES[label]
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / f"{i:03d}.png")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  workdir = tmp_path / "run"
  train = [sys.executable, "-m", "experiments.mnist", "--config=configs/ncl_2d.py",
           f"--config.dataset=folder:{tmp_path / 'photos'}", f"--workdir={workdir}",
           "--config.features=(4,8)", "--config.hidden=16", "--config.classes_per_batch=4",
           "--config.samples_per_class=4", "--config.num_epochs=3",
           "--config.validation_examples=16", "--config.image_size=16",
           "--config.figures=False", "--config.batch_norm=False"]
  done = subprocess.run(train, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "nearest-centroid test accuracy" in done.stdout
  output = tmp_path / "predictions.jsonl"
  predict = [sys.executable, "-m", "experiments.predict", f"--workdir={workdir}",
             f"--images={tmp_path / 'photos'}", f"--output={output}",
             f"--gallery={tmp_path / 'photos'}"]
  done = subprocess.run(predict, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "96 images: abstained on" in done.stdout and "labelled" in done.stdout
  lines = [json.loads(line) for line in output.read_text().splitlines()]
  assert len(lines) == 96
  assert {"file", "label", "class_name", "confidence", "abstain", "true_label", "identity",
          "distance"} <= set(lines[0])
  assert all(line["class_name"] == CLASSES[line["label"]] for line in lines)
  # The gallery is the same images: every image finds itself at distance 0.
  assert all(line["identity"] == line["true_label"] for line in lines)
  bad = subprocess.run(predict[:4] + [f"--images={tmp_path / 'none'}"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
  assert bad.returncode != 0 and "Traceback" not in bad.stderr
  assert "does not exist" in bad.stderr


def test_hundred_thousand_classes_train_and_predict(tmp_path):
  """A short run with 100,000 classes: nothing allocates batch x classes x dim."""
  num_classes = 100_000
  rng = np.random.default_rng(0)
  x_train = rng.integers(0, 255, (num_classes, 4, 4), dtype=np.uint8)
  y_train = np.arange(num_classes)
  dataset = Dataset.from_arrays("many", x_train, y_train, x_train[:64], y_train[:64])
  config = _config(features=(2,), hidden=8, embedding_dim=4, sampler="shuffled", batch_size=32,
                   num_epochs=1, max_train_examples=96, validation_examples=0,
                   kernel_size=3)
  metrics = train_and_evaluate(config, str(tmp_path), dataset=dataset)
  assert 0 <= metrics["test_accuracy"] <= 1
  model = inference.load_model(str(tmp_path))
  assert model.centroids.shape == (num_classes, 4) and len(model.class_names) == num_classes
  prediction = model.predict(x_train[:8])
  assert prediction.probabilities.shape == (8, num_classes)
