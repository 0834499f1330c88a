"""CIFAR from canonical pickles (generated here), augmentation and prefetching (hermetic)."""

from __future__ import annotations

import os
import pathlib
import pickle
import time
import warnings

import numpy as np
import pytest

from sphereembed.data import ClassBalancedSampler, ShuffledSampler, cifar, sources
from sphereembed.data.cifar import (
    CIFAR_ARCHIVES,
    CIFAR_URL,
    augment_batch,
    augment_rng,
    load_cifar,
    load_cifar_folder,
    load_png_samples,
    prefetch,
    random_crop_flip,
    read_cifar_batch,
    train_batches,
)
from sphereembed.data.idx import CorruptDataError
from sphereembed.data.sources import DATA_DIR_ENV, DataNotFoundError
from tests.data.fake_cifar import write_fake_cifar

SAMPLES = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cifar-samples"


@pytest.fixture(autouse=True)
def hermetic(monkeypatch, tmp_path):
  """No env var, no default roots, and TFDS pointed at an empty folder."""
  monkeypatch.delenv(DATA_DIR_ENV, raising=False)
  monkeypatch.setattr(sources, "default_data_roots", lambda: ())
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds-default"))


def _assert_matches(dataset, written):
  for split, (images, labels) in (("train", written["train"]), ("test", written["test"])):
    got = getattr(dataset, split)
    np.testing.assert_array_equal(got.images, images)
    np.testing.assert_array_equal(got.labels, labels)
    assert got.images.dtype == np.uint8 and got.images.shape[1:] == (32, 32, 3)
    assert got.labels.dtype == np.int32


# ----------------------------------------------------------------------------- loading


def test_cifar10_from_the_folder_or_its_parent(tmp_path):
  written = write_fake_cifar(tmp_path / "root", num_train=50, num_test=10, num_classes=10)
  for data_dir in (written["folder"], tmp_path / "root"):
    dataset = load_cifar("cifar10", data_dir)
    _assert_matches(dataset, written)
    assert dataset.name == "cifar10" and dataset.num_classes == 10
    assert dataset.source == str(pathlib.Path(written["folder"]).resolve())
    assert len(dataset.train) == 50 and dataset.image_shape == (32, 32, 3)


def test_the_canonical_layout_is_channel_planes():
  # Pixel (row 0, column 1) of image 0 is data[0, 1], data[0, 1025], data[0, 2049].
  data = (np.arange(3072) % 251).astype(np.uint8)[None]
  path = pathlib.Path(os.environ["TFDS_DATA_DIR"]).parent / "batch"
  with open(path, "wb") as f:
    pickle.dump({b"data": data, b"labels": [4]}, f, protocol=2)
  images, labels = read_cifar_batch(path)
  assert images[0, 0, 1].tolist() == [1, 1025 % 251, 2049 % 251]
  assert images[0, 1, 0].tolist() == [32, 32 + 1024 % 251, (32 + 2048) % 251]
  assert labels.tolist() == [4]


def test_numpy_1_pickles_load_without_warnings(tmp_path):
  # The real files reference numpy.core.multiarray (NumPy 1), which NumPy 2
  # renamed numpy._core and deprecated.
  data = np.arange(2 * 3072).astype(np.uint8).reshape(2, 3072)
  raw = pickle.dumps({b"data": data, b"labels": [1, 2]}, protocol=2)
  raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
  assert b"numpy.core.multiarray\n_reconstruct" in raw
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    images, labels = read_cifar_batch(tmp_path / "batch", raw=raw)
  np.testing.assert_array_equal(images.transpose(0, 3, 1, 2).reshape(2, 3072), data)
  assert labels.tolist() == [1, 2]


def test_cifar100_fine_and_coarse(tmp_path):
  written = write_fake_cifar(tmp_path, num_train=120, num_test=40, num_classes=100)
  fine = load_cifar("cifar100", tmp_path)
  _assert_matches(fine, written)
  assert fine.name == "cifar100" and fine.num_classes == 100
  coarse = load_cifar("cifar100", tmp_path, label_mode="coarse")
  assert coarse.name == "cifar100_coarse" and coarse.num_classes == 20
  np.testing.assert_array_equal(coarse.train.labels, written["train"][1] // 5)
  np.testing.assert_array_equal(coarse.test.images, written["test"][0])


def test_the_downloaded_archive_is_read_without_extracting(tmp_path):
  written = write_fake_cifar(tmp_path / "dl", num_train=50, num_test=10, archive=True)
  archive = tmp_path / "dl" / CIFAR_ARCHIVES["cifar10"]
  only_archive = tmp_path / "only"
  only_archive.mkdir()
  (only_archive / archive.name).write_bytes(archive.read_bytes())
  for data_dir in (archive, only_archive):
    dataset = load_cifar("cifar10", data_dir)
    _assert_matches(dataset, written)
    assert dataset.source.endswith(archive.name)


def test_environment_variable_and_default_roots(tmp_path, monkeypatch):
  written = write_fake_cifar(tmp_path / "env", num_train=50, num_test=10)
  monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "env"))
  _assert_matches(load_cifar("cifar10"), written)
  monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "nowhere"))
  monkeypatch.setattr(sources, "default_data_roots", lambda: (tmp_path / "none", tmp_path / "env"))
  _assert_matches(load_cifar("cifar10"), written)


def test_missing_data_names_every_way_to_provide_it(tmp_path, monkeypatch):
  monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "unset"))
  with pytest.raises(DataNotFoundError) as info:
    load_cifar("cifar100")
  message = str(info.value)
  for needle in (CIFAR_URL, "cifar-100-python.tar.gz", "cifar-100-python/", "data_dir",
                 DATA_DIR_ENV, "tfds_data_dir", "download=True", "tfds build cifar100",
                 str(tmp_path / "unset"), "TFDS cifar100:"):
    assert needle in message, needle
  with pytest.raises(DataNotFoundError, match="coarse labels are read from the local"):
    load_cifar("cifar100", label_mode="coarse")


def test_tfds_mock_data_when_no_local_copy(tmp_path, monkeypatch):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
  with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
    dataset = load_cifar("cifar10", tfds_data_dir=tmp_path / "tfds")
  assert dataset.source.startswith("tfds:cifar10") and dataset.num_classes == 10
  assert dataset.train.images.shape == (6, 32, 32, 3) and dataset.train.images.dtype == np.uint8
  assert dataset.test.labels.dtype == np.int32


def test_a_data_dir_without_the_data_is_an_error(tmp_path):
  write_fake_cifar(tmp_path / "c100", num_train=10, num_test=10, num_classes=20)
  with pytest.raises(DataNotFoundError, match="does not hold cifar10") as info:
    load_cifar("cifar10", tmp_path / "c100")
  assert CIFAR_URL in str(info.value) and "cifar-10-batches-py" in str(info.value)
  with pytest.raises(DataNotFoundError, match="does not exist"):
    load_cifar("cifar10", tmp_path / "missing")
  written = write_fake_cifar(tmp_path / "partial", num_train=50, num_test=10)
  os.remove(os.path.join(written["folder"], "data_batch_3"))
  with pytest.raises(DataNotFoundError, match="lacks data_batch_3"):
    load_cifar("cifar10", tmp_path / "partial")
  with pytest.raises(DataNotFoundError, match="lacks the CIFAR file"):
    load_cifar_folder(written["folder"])


def test_bad_arguments():
  with pytest.raises(ValueError, match="unknown dataset"):
    load_cifar("cifar1000")
  with pytest.raises(ValueError, match="cifar100 only"):
    load_cifar("cifar10", label_mode="coarse")
  with pytest.raises(ValueError, match="label_mode"):
    load_cifar("cifar100", label_mode="superclass")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_pickles_raise_corrupt_data_naming_the_file(tmp_path, damage):
  written = write_fake_cifar(tmp_path, num_train=50, num_test=10)
  path = pathlib.Path(written["folder"]) / "data_batch_2"
  raw = path.read_bytes()
  path.write_bytes({"truncate": raw[:len(raw) // 2], "garbage": b"\x00not a pickle" * 10,
                    "empty": b""}[damage])
  with pytest.raises(CorruptDataError, match="data_batch_2.*download it again"):
    load_cifar("cifar10", tmp_path)


@pytest.mark.parametrize("content,match", [
    ({b"data": np.zeros((2, 3072), np.uint8)}, "no 'labels' entry"),
    ({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}, r"uint8 of shape \(N, 3072\)"),
    ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "found float32"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "must be 2 ints"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, r"must lie in \[0, 10\)"),
    ([1, 2, 3], "expected a pickled dict"),
])
def test_malformed_content_raises_corrupt_data(tmp_path, content, match):
  written = write_fake_cifar(tmp_path, num_train=50, num_test=10)
  with open(os.path.join(written["folder"], "test_batch"), "wb") as f:
    pickle.dump(content, f, protocol=2)
  with pytest.raises(CorruptDataError, match=match):
    load_cifar("cifar10", tmp_path)


class _Exploit:
  def __reduce__(self):
    return (os.system, ("touch PWNED",))


def test_pickles_cannot_run_code(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  written = write_fake_cifar(tmp_path, num_train=50, num_test=10)
  with open(os.path.join(written["folder"], "test_batch"), "wb") as f:
    pickle.dump({b"data": _Exploit(), b"labels": []}, f, protocol=2)
  with pytest.raises(CorruptDataError, match="refusing to load the global"):
    load_cifar("cifar10", tmp_path)
  assert not (tmp_path / "PWNED").exists()


def test_a_truncated_archive_raises_corrupt_data(tmp_path):
  write_fake_cifar(tmp_path, num_train=50, num_test=10, archive=True)
  archive = tmp_path / CIFAR_ARCHIVES["cifar10"]
  archive.write_bytes(archive.read_bytes()[:300])
  with pytest.raises(CorruptDataError, match="cifar-10-python.tar.gz"):
    load_cifar("cifar10", archive)


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="../shared/data/cifar-samples is not here")
@pytest.mark.parametrize("name,first_label", [("cifar10", 3), ("cifar100", 49)])
def test_png_samples_of_real_cifar(name, first_label):
  split = load_png_samples(SAMPLES, name)
  assert split.images.shape == (20, 32, 32, 3) and split.images.dtype == np.uint8
  assert int(split.labels[0]) == first_label
  assert 20 < split.images.mean() < 235 and split.images.std() > 20  # real photos, not blanks
  with pytest.raises(DataNotFoundError):
    load_png_samples(SAMPLES, "svhn")


# ----------------------------------------------------------------------------- augmentation


def _crops_and_flips(image, padding):
  padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
  height, width = image.shape[:2]
  for dy in range(2 * padding + 1):
    for dx in range(2 * padding + 1):
      crop = padded[dy:dy + height, dx:dx + width]
      yield crop
      yield crop[:, ::-1]


def test_random_crop_flip_gives_a_padded_crop_maybe_mirrored():
  rng = np.random.default_rng(0)
  images = rng.integers(1, 256, size=(16, 8, 8, 3), dtype=np.uint8)
  out = random_crop_flip(images, np.random.default_rng(1), padding=2)
  assert out.shape == images.shape and out.dtype == np.uint8
  for image, augmented in zip(images, out):
    assert any(np.array_equal(augmented, c) for c in _crops_and_flips(image, 2))
  # Both flips and several offsets occur.
  mirrored = [np.array_equal(o, i[:, ::-1]) for o, i in zip(
      random_crop_flip(images, np.random.default_rng(2), padding=0), images)]
  assert 0 < sum(mirrored) < len(images)
  assert len({(o == 0).sum() for o in out}) > 3
  np.testing.assert_array_equal(random_crop_flip(images, rng, padding=0, flip=False), images)


def test_augmentation_depends_on_seed_and_step_only():
  images = np.random.default_rng(0).integers(0, 256, size=(8, 32, 32, 3), dtype=np.uint8)
  a = augment_batch(images, seed=3, step=7)
  np.testing.assert_array_equal(a, augment_batch(images, seed=3, step=7))
  assert not np.array_equal(a, augment_batch(images, seed=3, step=8))
  assert not np.array_equal(a, augment_batch(images, seed=4, step=7))
  with pytest.raises(ValueError, match=">= 0"):
    augment_batch(images, seed=-1, step=0)
  with pytest.raises(ValueError, match="padding"):
    random_crop_flip(images, np.random.default_rng(0), padding=-1)
  with pytest.raises(ValueError, match="B, H, W, C"):
    random_crop_flip(images[0], np.random.default_rng(0))


def test_augment_rng_is_the_generator_of_augment_batch():
  images = np.random.default_rng(0).integers(0, 256, size=(8, 32, 32, 3), dtype=np.uint8)
  np.testing.assert_array_equal(random_crop_flip(images, augment_rng(3, 7)),
                                augment_batch(images, seed=3, step=7))
  stream = cifar._AUGMENT_STREAM  # pylint: disable=protected-access
  np.testing.assert_array_equal(augment_rng(3, 7).integers(0, 2**31, size=16),
                                np.random.default_rng([3, 7, stream]).integers(0, 2**31, size=16))
  assert not np.array_equal(augment_rng(3, 7).random(4), augment_rng(3, 8).random(4))
  # Apart from the samplers' default_rng([seed, epoch]) streams.
  assert not np.array_equal(augment_rng(3, 7).random(4), np.random.default_rng([3, 7]).random(4))
  with pytest.raises(ValueError, match=">= 0"):
    augment_rng(0, -1)


@pytest.mark.parametrize("balanced", [False, True])
@pytest.mark.parametrize("start_step", [0, 1, 5, 13])
def test_train_batches_number_steps_as_the_training_loop(tmp_path, balanced, start_step):
  # The training loop runs step start_step + 1 first after start_step (1-based
  # steps), on the sampler's batch start_step, augmented from [seed, step].
  write_fake_cifar(tmp_path, num_train=50, num_test=10)
  train = load_cifar("cifar10", tmp_path).train
  sampler = (ClassBalancedSampler(train.labels, 4, 3, seed=1) if balanced
             else ShuffledSampler(len(train), 8, seed=1, drop_remainder=True))
  seed = 5
  first = next(train_batches(train, sampler, seed=seed, start_step=start_step))
  raw = next(train_batches(train, sampler, seed=seed, start_step=start_step, augment=False))
  indices = next(sampler.iterate(start_step))
  np.testing.assert_array_equal(raw["image"], train.images[indices])
  np.testing.assert_array_equal(first["label"], train.labels[indices])
  np.testing.assert_array_equal(first["image"],
                                augment_batch(raw["image"], seed=seed, step=start_step + 1))
  assert not np.array_equal(first["image"], augment_batch(raw["image"], seed=seed, step=start_step))
  # And every later batch i (from 0) is step start_step + 1 + i.
  batches = train_batches(train, sampler, seed=seed, start_step=start_step)
  for i, indices in zip(range(4), sampler.iterate(start_step)):
    np.testing.assert_array_equal(
        next(batches)["image"],
        augment_batch(train.images[indices], seed=seed, step=start_step + 1 + i))


@pytest.mark.parametrize("balanced", [False, True])
def test_resumed_batches_repeat_the_uninterrupted_ones(tmp_path, balanced):
  written = write_fake_cifar(tmp_path, num_train=50, num_test=10)
  train = load_cifar("cifar10", tmp_path).train
  sampler = (ClassBalancedSampler(train.labels, 4, 3, seed=1) if balanced
             else ShuffledSampler(len(train), 8, seed=1, drop_remainder=True))
  full = [b for _, b in zip(range(9), train_batches(train, sampler, seed=5))]
  resumed = [b for _, b in zip(range(4), train_batches(train, sampler, seed=5, start_step=5))]
  for x, y in zip(full[5:], resumed):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])
  assert full[0]["image"].dtype == np.uint8 and full[0]["label"].dtype == np.int32
  raw = next(train_batches(train, sampler, seed=5, augment=False))
  assert not np.array_equal(raw["image"], full[0]["image"])
  index = {img.tobytes(): i for i, img in enumerate(written["train"][0])}
  assert all(img.tobytes() in index for img in raw["image"])


# ----------------------------------------------------------------------------- prefetch


def test_prefetch_keeps_order_and_applies_the_transform():
  with prefetch(range(100), size=3, transform=lambda x: 2 * x) as items:
    assert list(items) == [2 * x for x in range(100)]
    with pytest.raises(StopIteration):
      next(items)


def test_prefetch_runs_ahead_by_size_items():
  produced = []

  def source():
    for i in range(50):
      produced.append(i)
      yield i

  items = prefetch(source(), size=4)
  deadline = time.monotonic() + 5
  while len(produced) < 5 and time.monotonic() < deadline:
    time.sleep(0.01)
  time.sleep(0.1)
  # 4 waiting in the queue and one more in the producer's hands, no further.
  assert len(produced) == 5
  assert next(items) == 0
  items.close()
  assert not items._thread.is_alive()  # pylint: disable=protected-access
  with pytest.raises(StopIteration):
    next(items)


def test_prefetch_raises_the_producers_error_in_order():
  def source():
    yield 1
    yield 2
    raise RuntimeError("broken batch")

  items = prefetch(source(), size=2)
  assert next(items) == 1 and next(items) == 2
  with pytest.raises(RuntimeError, match="broken batch"):
    next(items)
  with pytest.raises(StopIteration):
    next(items)


@pytest.mark.parametrize("size", [0, -1, 1.5, True])
def test_prefetch_rejects_bad_sizes(size):
  with pytest.raises(ValueError, match="positive integer"):
    prefetch(range(3), size=size)
