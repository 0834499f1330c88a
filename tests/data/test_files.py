"""Your own data: image folders, .npz archives, TFDS by name, arrays; every bad input named."""

import os
import types

import numpy as np
import pytest
from PIL import Image

from sphereembed.data import CorruptDataError, DataNotFoundError, Dataset, files, load_dataset
from sphereembed.data import sources


def _write_class(folder, name, count, *, size=(12, 10), mode="RGB", value=0):
  os.makedirs(os.path.join(folder, name), exist_ok=True)
  rng = np.random.default_rng(value)
  channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
  for i in range(count):
    pixels = rng.integers(0, 255, (size[1], size[0], channels), dtype=np.uint8)
    image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)
    image.save(os.path.join(folder, name, f"{i:03d}.png"))


def test_folder_with_train_and_test(tmp_path):
  for split, count in (("train", 4), ("test", 2)):
    for k, name in enumerate(["cat", "dog", "emu"]):
      _write_class(tmp_path / split, name, count, value=k)
  data = load_dataset(f"folder:{tmp_path}")
  assert data.class_names == ("cat", "dog", "emu")
  assert data.num_classes == 3 and data.image_shape == (10, 12, 3)
  assert data.train.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
  assert len(data.test) == 6
  expected = np.asarray(Image.open(tmp_path / "train" / "dog" / "001.png"))
  np.testing.assert_array_equal(data.train.images[5], expected)


def test_folder_held_out_fraction_is_stratified_and_fixed(tmp_path):
  for k, name in enumerate(["a", "b"]):
    _write_class(tmp_path, name, 10, mode="L", value=k)
  first = files.load_image_folder(tmp_path, test_fraction=0.3)
  again = files.load_image_folder(tmp_path, test_fraction=0.3)
  assert np.bincount(first.test.labels).tolist() == [3, 3]
  assert np.bincount(first.train.labels).tolist() == [7, 7]
  np.testing.assert_array_equal(first.test.images, again.test.images)
  assert first.image_shape == (10, 12, 1)
  # No image is in both splits.
  train = {img.tobytes() for img in first.train.images}
  assert not any(img.tobytes() in train for img in first.test.images)


def test_folder_resizes_with_image_size(tmp_path):
  _write_class(tmp_path, "a", 3, size=(12, 10))
  _write_class(tmp_path, "b", 3, size=(20, 8))
  with pytest.raises(CorruptDataError, match="mixed image sizes.*image_size"):
    load_dataset(f"folder:{tmp_path}")
  data = load_dataset(f"folder:{tmp_path}", image_size=16)
  assert data.image_shape == (16, 16, 3)


@pytest.mark.parametrize("case", ["one_class", "empty_class", "unreadable", "truncated",
                                  "mixed_channels", "unknown_test_class", "missing"])
def test_folder_errors_name_the_culprit(tmp_path, case):
  root = tmp_path / "data"
  _write_class(root, "a", 3, value=0)
  match = None
  if case == "one_class":
    match = "one class"
  elif case == "empty_class":
    os.makedirs(root / "empty")
    match = "empty.*holds no image files"
  elif case == "unreadable":
    _write_class(root, "b", 3)
    (root / "b" / "001.png").write_bytes(b"this is not a png")
    match = "001.png: not a readable image"
  elif case == "truncated":
    _write_class(root, "b", 3)
    data = (root / "b" / "002.png").read_bytes()
    (root / "b" / "002.png").write_bytes(data[:len(data) // 2])
    match = "002.png: not a readable image"
  elif case == "mixed_channels":
    _write_class(root, "b", 3, mode="L")
    match = "mixed channel counts.*has 3.*has 1"
  elif case == "unknown_test_class":
    root = tmp_path / "split"
    for k, name in enumerate(["a", "b"]):
      _write_class(root / "train", name, 2, value=k)
    _write_class(root / "test", "zebra", 2)
    match = "zebra: a class absent from the training folder"
  elif case == "missing":
    root = tmp_path / "nowhere"
    match = "is not a folder"
  with pytest.raises((CorruptDataError, DataNotFoundError), match=match):
    load_dataset(f"folder:{root}")


def test_npz_arrays(tmp_path):
  rng = np.random.default_rng(0)
  path = tmp_path / "data.npz"
  np.savez(path, x_train=rng.uniform(0, 1, (8, 5, 6)).astype(np.float32),
           y_train=np.array([0, 1, 2, 0, 1, 2, 0, 1]), x_test=rng.uniform(0, 1, (3, 5, 6)),
           y_test=np.array([2, 1, 0]), class_names=np.array(["x", "y", "z"]))
  data = load_dataset(f"npz:{path}")
  assert data.image_shape == (5, 6, 1) and data.train.images.dtype == np.uint8
  assert data.class_names == ("x", "y", "z")
  with np.load(path) as archive:
    np.testing.assert_array_equal(data.train.images[..., 0],
                                  np.rint(archive["x_train"].astype(np.float64) * 255))


def test_npz_string_labels(tmp_path):
  path = tmp_path / "data.npz"
  images = np.zeros((4, 3, 3, 3), np.uint8)
  np.savez(path, x_train=images, y_train=np.array(["b", "a", "b", "a"]), x_test=images[:1],
           y_test=np.array(["b"]))
  data = load_dataset(f"npz:{path}")
  assert data.class_names == ("a", "b") and data.train.labels.tolist() == [1, 0, 1, 0]


@pytest.mark.parametrize("case,match", [
    ("lengths", "x_train holds 4 images but y_train 3 labels"),
    ("float_labels", "y_train must hold integer"),
    ("missing", "lacks the array.*y_test"),
    ("object", "not a readable .npz of plain arrays"),
    ("one_class", "1 class"),
    ("absent_class", "have no training images"),
    ("nan_pixels", "NaN or infinite"),
    ("not_a_zip", "not a readable .npz"),
    ("empty_test", "x_test holds no images"),
])
def test_npz_errors_name_the_file(tmp_path, case, match):
  path = tmp_path / "bad.npz"
  images = np.zeros((4, 3, 3), np.uint8)
  arrays = dict(x_train=images, y_train=np.array([0, 1, 0, 1]), x_test=images[:2],
                y_test=np.array([0, 1]))
  if case == "lengths":
    arrays["y_train"] = np.array([0, 1, 0])
  elif case == "float_labels":
    arrays["y_train"] = np.array([0.0, 1.5, 0.0, 1.0])
  elif case == "missing":
    del arrays["y_test"]
  elif case == "object":
    arrays["y_train"] = np.array([0, "a", None, 1], dtype=object)
  elif case == "one_class":
    arrays["y_train"] = np.zeros(4, int)
    arrays["y_test"] = np.zeros(2, int)
  elif case == "absent_class":
    arrays["y_train"] = np.array([0, 2, 0, 2])
  elif case == "nan_pixels":
    arrays["x_train"] = np.full((4, 3, 3), np.nan)
  elif case == "empty_test":
    arrays["x_test"], arrays["y_test"] = images[:0], np.zeros(0, int)
  np.savez(path, **arrays)
  if case == "not_a_zip":
    path.write_bytes(b"garbage")
  with pytest.raises((CorruptDataError, ValueError), match=match) as error:
    load_dataset(f"npz:{path}")
  assert "bad.npz" in str(error.value)


def test_unknown_dataset_lists_the_ways_to_bring_data():
  with pytest.raises(ValueError, match="unknown dataset 'kmnist'.*folder:PATH.*npz:PATH"):
    load_dataset("kmnist")
  with pytest.raises(ValueError, match="lacks its path"):
    load_dataset("folder:")


def test_tfds_by_name_uses_its_label_names(monkeypatch):
  rng = np.random.default_rng(0)
  records = {split: [{"image": rng.integers(0, 255, (4, 4, 3), dtype=np.uint8), "label": i % 2}
                     for i in range(n)] for split, n in (("train", 6), ("test", 2))}
  info = types.SimpleNamespace(
      supervised_keys=("image", "label"),
      features={"image": None, "label": types.SimpleNamespace(names=["no", "yes"])},
      splits={"train": None, "test": None})
  builder = types.SimpleNamespace(info=info, data_dir="/fake",
                                  as_data_source=lambda split: records[split])
  asked = []

  def fake_builder(name, tfds_data_dir=None, *, download=False):
    asked.append(name)
    return builder, "found"

  monkeypatch.setattr(sources, "tfds_builder", fake_builder)
  data = load_dataset("tfds:my_set:config1")
  assert asked == ["my_set/config1"]
  assert data.class_names == ("no", "yes") and len(data.train) == 6 and data.num_classes == 2


def test_tfds_missing_says_how_to_prepare(monkeypatch):
  monkeypatch.setattr(sources, "tfds_builder",
                      lambda *a, **k: (None, "not prepared in /x, and download=False"))
  with pytest.raises(DataNotFoundError, match="tfds build my_set.*download=True"):
    load_dataset("tfds:my_set")


def test_from_arrays_checks_and_converts():
  images = np.zeros((4, 2, 2, 3), np.float64)
  data = Dataset.from_arrays("toy", images, [0, 1, 0, 1], images[:1], [1],
                             class_names=["left", "right"])
  assert data.names() == ("left", "right") and data.train.images.dtype == np.uint8
  with pytest.raises(ValueError, match="test labels|y_test has labels"):
    Dataset.from_arrays("toy", images, ["a", "b", "a", "b"], images[:1], ["c"])
  with pytest.raises(ValueError, match="label 2 but only 2 class names"):
    Dataset.from_arrays("toy", images, [0, 1, 2, 1], images[:1], [1], class_names=["a", "b"])
  with pytest.raises(ValueError, match="pixels must lie in"):
    Dataset.from_arrays("toy", images - 1, [0, 1, 0, 1], images[:1], [1])
