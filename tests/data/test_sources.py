"""Dataset resolution and loading, on generated IDX folders (hermetic)."""

from __future__ import annotations

import pathlib
import socket
import time

import numpy as np
import pytest

from sphereembed.data import (
    DATA_DIR_ENV,
    CorruptDataError,
    DataNotFoundError,
    Dataset,
    Split,
    load_dataset,
    write_idx,
)
from sphereembed.data import sources

ORIGINAL_DEFAULT_ROOTS = sources.default_data_roots
FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
         "t10k-labels-idx1-ubyte.gz")


def make_idx_folder(folder, *, n_train=30, n_test=10, seed=0, shape=(28, 28), num_classes=10,
                    gz=True):
  """Writes a fake MNIST-like dataset with the canonical file names; returns its arrays."""
  rng = np.random.default_rng(seed)
  folder.mkdir(parents=True, exist_ok=True)
  arrays = {}
  for prefix, n in (("train", n_train), ("t10k", n_test)):
    images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    labels = (np.arange(n) % num_classes).astype(np.uint8)
    suffix = ".gz" if gz else ""
    write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    arrays[prefix] = (images, labels)
  return arrays


@pytest.fixture(autouse=True)
def hermetic(monkeypatch, tmp_path):
  """No env var, no default roots, and TFDS pointed at an empty folder."""
  monkeypatch.delenv(DATA_DIR_ENV, raising=False)
  monkeypatch.setattr(sources, "default_data_roots", lambda: ())
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds-default"))


def _assert_matches(dataset: Dataset, arrays):
  images, labels = arrays["train"]
  np.testing.assert_array_equal(dataset.train.images[..., 0], images)
  np.testing.assert_array_equal(dataset.train.labels, labels)
  images, labels = arrays["t10k"]
  np.testing.assert_array_equal(dataset.test.images[..., 0], images)
  np.testing.assert_array_equal(dataset.test.labels, labels)
  assert dataset.train.images.dtype == np.uint8 and dataset.train.images.shape[1:] == (28, 28, 1)
  assert dataset.train.labels.dtype == np.int32


def test_data_dir_is_the_folder(tmp_path):
  arrays = make_idx_folder(tmp_path / "anything")
  dataset = load_dataset("mnist", tmp_path / "anything")
  _assert_matches(dataset, arrays)
  assert dataset.name == "mnist" and dataset.num_classes == 10
  assert dataset.source == str((tmp_path / "anything").resolve())
  assert len(dataset.train) == 30 and len(dataset.test) == 10


@pytest.mark.parametrize("name,folder", [("mnist", "mnist"), ("fashion_mnist", "fashion-mnist"),
                                         ("fashion_mnist", "fashion_mnist"), ("mnist10k", "mnist10k")])
def test_data_dir_is_a_root(tmp_path, name, folder):
  arrays = make_idx_folder(tmp_path / "root" / folder)
  make_idx_folder(tmp_path / "root" / "other", seed=1)
  dataset = load_dataset(name, str(tmp_path / "root"))
  _assert_matches(dataset, arrays)
  assert dataset.source.endswith(folder)


def test_uncompressed_files(tmp_path):
  arrays = make_idx_folder(tmp_path / "mnist", gz=False)
  _assert_matches(load_dataset("mnist", tmp_path), arrays)


@pytest.mark.parametrize("form", ["folder", "root"])
def test_env_var(tmp_path, monkeypatch, form):
  arrays = make_idx_folder(tmp_path / "root" / "mnist")
  monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "root" / "mnist" if form == "folder" else tmp_path / "root"))
  _assert_matches(load_dataset("mnist"), arrays)


def test_precedence_data_dir_then_env_then_default(tmp_path, monkeypatch):
  explicit = make_idx_folder(tmp_path / "explicit" / "mnist", seed=1)
  env = make_idx_folder(tmp_path / "env" / "mnist", seed=2)
  default = make_idx_folder(tmp_path / "default" / "mnist", seed=3)
  monkeypatch.setattr(sources, "default_data_roots", lambda: (tmp_path / "nothing", tmp_path / "default"))
  _assert_matches(load_dataset("mnist"), default)
  monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "env"))
  _assert_matches(load_dataset("mnist"), env)
  _assert_matches(load_dataset("mnist", tmp_path / "explicit"), explicit)


def test_unusable_env_var_falls_through_to_default_roots(tmp_path, monkeypatch):
  default = make_idx_folder(tmp_path / "default" / "mnist")
  monkeypatch.setattr(sources, "default_data_roots", lambda: (tmp_path / "default",))
  monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "does-not-exist"))
  _assert_matches(load_dataset("mnist"), default)


def test_original_default_roots():
  roots = ORIGINAL_DEFAULT_ROOTS()
  repository = pathlib.Path(sources.__file__).resolve().parents[2]
  assert (repository / "sphereembed").is_dir()
  assert roots[0] == (repository.parent / "shared" / "data").resolve()
  assert (pathlib.Path.cwd() / "data").resolve() in roots
  assert len(set(roots)) == len(roots)


def test_given_data_dir_without_data_does_not_fall_through(tmp_path, monkeypatch):
  make_idx_folder(tmp_path / "env" / "mnist")
  monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "env"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(DataNotFoundError, match="does not hold mnist"):
    load_dataset("mnist", tmp_path / "empty")
  with pytest.raises(DataNotFoundError, match="does not exist"):
    load_dataset("mnist", tmp_path / "absent")


def test_partial_folder_names_missing_files(tmp_path):
  make_idx_folder(tmp_path / "mnist")
  (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
  with pytest.raises(DataNotFoundError) as info:
    load_dataset("mnist", tmp_path)
  assert "lacks t10k-labels-idx1-ubyte.gz" in str(info.value)
  assert isinstance(info.value, FileNotFoundError)


def test_not_found_message_names_every_way(tmp_path, monkeypatch):
  monkeypatch.setattr(sources, "default_data_roots", lambda: (tmp_path / "root-a", tmp_path / "root-b"))
  start = time.monotonic()
  with pytest.raises(DataNotFoundError) as info:
    load_dataset("mnist", tfds_data_dir=tmp_path / "tfds")
  assert time.monotonic() - start < 10
  message = str(info.value)
  for fragment in ("--config.data_dir=", *FILES, DATA_DIR_ENV, "../shared/data/mnist/", "TFDS",
                   "--config.download=True", "tfds build mnist", "array_record",
                   "Tried:", "data_dir: not given", f"${DATA_DIR_ENV}: not set",
                   str(tmp_path / "root-a"), str(tmp_path / "root-b"),
                   f"not prepared in {tmp_path / 'tfds'}", "download=False"):
    assert fragment in message, f"{fragment!r} missing from:\n{message}"


def test_not_found_local_only_dataset(tmp_path):
  with pytest.raises(DataNotFoundError) as info:
    load_dataset("mnist10k", tfds_data_dir=tmp_path / "tfds")
  message = str(info.value)
  assert "mnist10k is not in TFDS" in message and "../shared/data/mnist10k/" in message
  assert "tfds build" not in message


def test_tfds_only_dataset_rejects_data_dir(tmp_path):
  make_idx_folder(tmp_path / "cifar10")
  with pytest.raises(DataNotFoundError, match="through TFDS only"):
    load_dataset("cifar10", tmp_path)


def test_unknown_name():
  with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
    load_dataset("svhn")


def test_download_without_network_fails_fast(tmp_path, monkeypatch):
  monkeypatch.setattr(sources, "_network_reachable", lambda *a, **k: False)
  start = time.monotonic()
  with pytest.raises(DataNotFoundError) as info:
    load_dataset("cifar10", tfds_data_dir=tmp_path / "tfds", download=True)
  assert time.monotonic() - start < 10
  assert "download=True but storage.googleapis.com is not reachable" in str(info.value)


def test_download_failure_is_reported(tmp_path, monkeypatch):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  def fail(self, *args, **kwargs):
    raise RuntimeError("simulated download failure")

  monkeypatch.setattr(sources, "_network_reachable", lambda *a, **k: True)
  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", fail)
  with pytest.raises(DataNotFoundError, match="simulated download failure"):
    load_dataset("mnist", tfds_data_dir=tmp_path / "tfds", download=True)


def test_network_probe_is_bounded_when_dns_hangs(monkeypatch):
  def hang(*args, **kwargs):
    time.sleep(30)

  monkeypatch.setattr(socket, "create_connection", hang)
  start = time.monotonic()
  assert sources._network_reachable(timeout=0.5) is False
  assert time.monotonic() - start < 3


def test_network_probe_on_this_machine_returns_quickly():
  start = time.monotonic()
  assert isinstance(sources._network_reachable(), bool)
  assert time.monotonic() - start < 5


def test_tfds_prepared_dataset_is_read_without_tensorflow(tmp_path, monkeypatch):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
  with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
    dataset = load_dataset("cifar100", tfds_data_dir=tmp_path / "tfds")
  assert dataset.source.startswith("tfds:cifar100")
  assert dataset.num_classes == 100
  assert dataset.train.images.shape == (6, 32, 32, 3) and dataset.train.images.dtype == np.uint8
  assert dataset.test.labels.dtype == np.int32
  assert dataset.train.labels.min() >= 0 and dataset.train.labels.max() < 100


# ----------------------------------------------------------------------------- bad files


def test_count_mismatch(tmp_path):
  make_idx_folder(tmp_path / "mnist")
  write_idx(tmp_path / "mnist" / "train-labels-idx1-ubyte.gz", np.zeros(29, np.uint8))
  with pytest.raises(CorruptDataError, match=r"train-labels-idx1-ubyte.gz: 29 labels but .* 30 images"):
    load_dataset("mnist", tmp_path)


def test_labels_out_of_range(tmp_path):
  make_idx_folder(tmp_path / "mnist")
  write_idx(tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz", np.full(10, 10, np.uint8))
  with pytest.raises(CorruptDataError, match=r"t10k-labels-idx1-ubyte.gz: labels must lie in \[0, 10\)"):
    load_dataset("mnist", tmp_path)


def test_wrong_image_shape(tmp_path):
  make_idx_folder(tmp_path / "mnist", shape=(32, 32))
  with pytest.raises(CorruptDataError, match=r"train-images-idx3-ubyte.gz: expected images of shape"):
    load_dataset("mnist", tmp_path)


def test_wrong_image_dtype(tmp_path):
  make_idx_folder(tmp_path / "mnist")
  write_idx(tmp_path / "mnist" / "train-images-idx3-ubyte.gz", np.zeros((30, 28, 28), np.float32))
  with pytest.raises(CorruptDataError, match="expected uint8 images"):
    load_dataset("mnist", tmp_path)


def test_corrupt_file_is_named(tmp_path):
  make_idx_folder(tmp_path / "mnist")
  path = tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz"
  path.write_bytes(path.read_bytes()[:-30])
  with pytest.raises(CorruptDataError) as info:
    load_dataset("mnist", tmp_path)
  assert str(path) in str(info.value)


def test_nothing_is_cached(tmp_path):
  arrays = make_idx_folder(tmp_path / "mnist")
  first = load_dataset("mnist", tmp_path)
  first.train.images[...] = 0
  _assert_matches(load_dataset("mnist", tmp_path), arrays)


# ----------------------------------------------------------------------------- containers


def test_split_validation():
  images = np.zeros((4, 2, 2, 1), np.uint8)
  split = Split(images, np.arange(4, dtype=np.int64))
  assert split.labels.dtype == np.int32 and len(split) == 4
  with pytest.raises(ValueError, match="4 images but 3 labels"):
    Split(images, np.arange(3))
  with pytest.raises(ValueError, match="labels must be integers"):
    Split(images, np.zeros((4, 1), np.int32))
  with pytest.raises(ValueError, match="labels must be integers"):
    Split(images, np.zeros(4, np.float32))
  with pytest.raises(ValueError, match="uint8"):
    Split(images.astype(np.float32), np.arange(4))
  with pytest.raises(ValueError, match=r"\(N, H, W, C\)"):
    Split(images[..., 0], np.arange(4))


def test_dataset_validation():
  split = Split(np.zeros((4, 2, 2, 1), np.uint8), np.arange(4))
  dataset = Dataset("toy", split, split, 4, "memory")
  assert dataset.image_shape == (2, 2, 1)
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
    Dataset("toy", split, split, 3, "memory")
  other = Split(np.zeros((4, 3, 3, 1), np.uint8), np.arange(4))
  with pytest.raises(ValueError, match="train images are"):
    Dataset("toy", split, other, 4, "memory")


def test_an_empty_idx_split_is_refused_naming_the_file(tmp_path):
  from sphereembed.data import CorruptDataError, write_idx  # pylint: disable=import-outside-toplevel
  from sphereembed.data.sources import load_idx_folder  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  for prefix, count in (("train", 8), ("t10k", 0)):
    write_idx(str(tmp_path / f"{prefix}-images-idx3-ubyte.gz"),
              rng.integers(0, 255, (count, 4, 4), dtype=np.uint8))
    write_idx(str(tmp_path / f"{prefix}-labels-idx1-ubyte.gz"), np.zeros(count, np.uint8))
  with pytest.raises(CorruptDataError, match="t10k-images-idx3-ubyte.gz: the test split holds no"):
    load_idx_folder(tmp_path, num_classes=10)
