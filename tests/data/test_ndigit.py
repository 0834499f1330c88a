"""N-digit MNIST: class split, sizes, layout, digit provenance, determinism, occlusion, cache.

Most tests run on synthetic digits whose pixels say which image they are
(digit value, split, index), so that layout and provenance are checked
exactly; one test builds the full 2-digit set from the real MNIST.
"""

import os

import numpy as np
import pytest

from sphereembed.data import DataNotFoundError, Dataset, Split, load_dataset, write_idx
from sphereembed.data import ndigit

TRAIN_MARK, TEST_MARK = 1, 2


def _fake_split(count, mark, seed):
  """Digits whose first row holds (digit, index low byte, index high byte, split mark)."""
  rng = np.random.default_rng(seed)
  labels = rng.permutation(np.arange(count) % 10).astype(np.int32)
  images = rng.integers(0, 256, size=(count, 28, 28, 1), dtype=np.uint8)
  index = np.arange(count)
  images[:, 0, 0, 0] = labels
  images[:, 0, 1, 0] = index % 256
  images[:, 0, 2, 0] = index // 256
  images[:, 0, 3, 0] = mark
  return Split(images, labels)


FAKE = Dataset("fake_mnist", _fake_split(600, TRAIN_MARK, 0), _fake_split(400, TEST_MARK, 1), 10,
               "synthetic")


def _build(num_digits=2, seed=0, num_train=1400, num_test=600, **kwargs):
  return ndigit.build_ndigit_mnist(FAKE, num_digits, seed=seed, num_train=num_train,
                                   num_test=num_test, **kwargs)


@pytest.fixture(scope="module")
def data():
  return _build()


def _blocks(images, num_digits):
  """``(n, N, 28, 28)``: the j-th 28-column block of every image."""
  n = len(images)
  return images[..., 0].reshape(n, 28, num_digits, 28).transpose(0, 2, 1, 3)


# ----------------------------------------------------------------------------- class split


@pytest.mark.parametrize("num_digits,seen_count", [(1, 7), (2, 70), (3, 700)])
def test_class_split_is_70_30_disjoint_and_seeded(num_digits, seen_count):
  seen, unseen = ndigit.class_split(num_digits, seed=3)
  assert len(seen) == seen_count and len(unseen) == 10**num_digits - seen_count
  assert seen.dtype == np.int32 and np.all(np.diff(seen) > 0) and np.all(np.diff(unseen) > 0)
  np.testing.assert_array_equal(np.sort(np.concatenate([seen, unseen])), np.arange(10**num_digits))
  again, _ = ndigit.class_split(num_digits, seed=3)
  np.testing.assert_array_equal(seen, again)
  other, _ = ndigit.class_split(num_digits, seed=4)
  assert not np.array_equal(seen, other)


def test_class_split_errors():
  with pytest.raises(ValueError, match="seen_fraction"):
    ndigit.class_split(1, seed=0, seen_fraction=0.99)
  with pytest.raises(ValueError, match="num_digits"):
    ndigit.class_split(0, seed=0)
  with pytest.raises(ValueError, match="seed"):
    ndigit.class_split(2, seed=-1)


# ----------------------------------------------------------------------------- sets


def test_sizes_types_and_classes(data):
  assert data.num_classes == 100 and data.image_shape == (28, 56, 1)
  for split, size, classes in ((data.train, 1400, data.seen_classes),
                               (data.test_seen, 600, data.seen_classes),
                               (data.test_unseen, 600, data.unseen_classes),
                               (data.test_seen_corrupted, 600, data.seen_classes),
                               (data.test_unseen_corrupted, 600, data.unseen_classes)):
    assert isinstance(split, Split) and isinstance(split, ndigit.NDigitSplit)
    assert split.images.shape == (size, 28, 56, 1) and split.images.dtype == np.uint8
    assert split.labels.dtype == np.int32 and split.digits.shape == (size, 2)
    assert split.digits.dtype == np.int32 and split.source_indices.dtype == np.int64
    # Every class of the part, balanced up to one image.
    counts = np.bincount(split.labels, minlength=100)[classes]
    assert counts.min() >= 1 and counts.max() - counts.min() <= 1
    assert np.all(np.isin(split.labels, classes))
    np.testing.assert_array_equal(split.labels, split.digits[:, 0] * 10 + split.digits[:, 1])


def test_image_layout_and_digit_provenance(data):
  """Block j shows the j-th digit of the label, taken from the right MNIST split."""
  for split, source, mark in ((data.train, FAKE.train, TRAIN_MARK),
                              (data.test_seen, FAKE.test, TEST_MARK),
                              (data.test_unseen, FAKE.test, TEST_MARK)):
    blocks = _blocks(split.images, 2)
    # Training images hold only training digits, test images only test digits.
    assert np.all(blocks[:, :, 0, 3] == mark)
    np.testing.assert_array_equal(blocks[:, :, 0, 0], split.digits)
    index = blocks[:, :, 0, 1].astype(np.int64) + 256 * blocks[:, :, 0, 2].astype(np.int64)
    np.testing.assert_array_equal(index, split.source_indices)
    np.testing.assert_array_equal(source.labels[split.source_indices], split.digits)
    for j in range(2):
      np.testing.assert_array_equal(blocks[:, j], source.images[split.source_indices[:, j], ..., 0])
      # Within a class, the digits of one position are distinct images.
      pairs = split.labels.astype(np.int64) * 10**6 + split.source_indices[:, j]
      assert len(np.unique(pairs)) == len(pairs)


def test_three_digits_layout():
  data = _build(num_digits=3, num_train=700, num_test=300)
  assert data.train.images.shape == (700, 28, 84, 1) and data.num_classes == 1000
  blocks = _blocks(data.test_unseen.images, 3)
  np.testing.assert_array_equal(blocks[:, :, 0, 0], data.test_unseen.digits)
  np.testing.assert_array_equal(data.test_unseen.labels, data.test_unseen.digits @ [100, 10, 1])
  # Label 7 of 3-digit MNIST is "007".
  seven = ndigit.compose(FAKE.test.images, FAKE.test.labels, [7], 2, 3, np.random.default_rng(0))
  np.testing.assert_array_equal(_blocks(seven.images, 3)[:, :, 0, 0], [[0, 0, 7], [0, 0, 7]])


def test_determinism_and_independent_streams(data):
  again = _build()
  for name in ("train", "test_seen", "test_unseen", "test_seen_corrupted",
               "test_unseen_corrupted"):
    np.testing.assert_array_equal(getattr(data, name).images, getattr(again, name).images)
    np.testing.assert_array_equal(getattr(data, name).labels, getattr(again, name).labels)
  other = _build(seed=1)
  assert not np.array_equal(data.seen_classes, other.seen_classes)
  # The training set does not depend on the test size, nor the split on either.
  resized = _build(num_test=100)
  np.testing.assert_array_equal(data.train.images, resized.train.images)
  np.testing.assert_array_equal(data.seen_classes, _build(num_train=10, num_test=10).seen_classes)


def test_exact_sizes_not_multiples_of_the_class_count():
  data = _build(num_train=1001, num_test=31)
  assert len(data.train) == 1001 and len(data.test_seen) == 31 and len(data.test_unseen) == 31
  counts = np.bincount(data.train.labels, minlength=100)[data.seen_classes]
  assert sorted(set(counts.tolist())) == [14, 15] and counts.sum() == 1001


def test_compose_errors():
  rng = np.random.default_rng(0)
  images, labels = FAKE.test.images, FAKE.test.labels
  with pytest.raises(ValueError, match="no image of the digit"):
    ndigit.compose(images[labels != 3], labels[labels != 3], [13], 5, 2, rng)
  with pytest.raises(ValueError, match="classes must lie"):
    ndigit.compose(images, labels, [100], 5, 2, rng)
  with pytest.raises(ValueError, match="uint8"):
    ndigit.compose(images.astype(np.float32), labels, [1], 5, 2, rng)
  with pytest.raises(ValueError, match="spell"):
    ndigit.NDigitSplit(np.zeros((1, 28, 56, 1), np.uint8), np.array([12]), np.array([[2, 1]]),
                       np.zeros((1, 2), np.int64))


# ----------------------------------------------------------------------------- occlusion


def test_corrupted_sets_occlude_one_box_inside_one_digit(data):
  clean, corrupted = data.test_seen, data.test_seen_corrupted
  np.testing.assert_array_equal(clean.labels, corrupted.labels)
  np.testing.assert_array_equal(clean.source_indices, corrupted.source_indices)
  changed = clean.images[..., 0] != corrupted.images[..., 0]
  assert np.all(corrupted.images[..., 0][changed] == 0)  # black, and only where it was not
  rows, cols = changed.any(axis=2), changed.any(axis=1)
  for n in range(len(clean)):
    r, c = np.flatnonzero(rows[n]), np.flatnonzero(cols[n])
    assert len(r) and len(c)
    # One rectangle, at most 20 x 20, inside one 28-column digit block.
    assert r[-1] - r[0] < 20 and c[-1] - c[0] < 20 and c[0] // 28 == c[-1] // 28
    box = corrupted.images[n, r[0]:r[-1] + 1, c[0]:c[-1] + 1, 0]
    assert np.all(box == 0)
  # Both digits get occluded, about equally often.
  first = np.mean(cols[:, :28].any(axis=1))
  assert 0.4 < first < 0.6


def test_occlusion_boxes_and_occlude():
  rng = np.random.default_rng(0)
  boxes = ndigit.occlusion_boxes(5000, (28, 84), 3, rng, min_size=6, max_size=12)
  top, left, height, width = boxes.T
  assert boxes.dtype == np.int32
  assert height.min() == 6 and height.max() == 12 and width.min() == 6 and width.max() == 12
  assert top.min() == 0 and (top + height).max() == 28
  assert np.all(left // 28 == (left + width - 1) // 28)
  np.testing.assert_array_equal(np.bincount(left // 28) > 1500, [True, True, True])
  np.testing.assert_array_equal(boxes, ndigit.occlusion_boxes(5000, (28, 84), 3,
                                                              np.random.default_rng(0),
                                                              min_size=6, max_size=12))
  images = np.full((5, 28, 84, 1), 200, np.uint8)
  occluded = ndigit.occlude(images, boxes[:5])
  for n, (t, l, h, w) in enumerate(boxes[:5]):
    expected = images[n, ..., 0].copy()
    expected[t:t + h, l:l + w] = 0
    np.testing.assert_array_equal(occluded[n, ..., 0], expected)
  assert images.min() == 200  # the input is untouched
  none = ndigit.occlusion_boxes(100, (28, 56), 2, rng, probability=0.0)
  np.testing.assert_array_equal(ndigit.occlude(images[:1].repeat(100, 0)[:, :, :56], none),
                                images[:1].repeat(100, 0)[:, :, :56])
  with pytest.raises(ValueError, match="max_size"):
    ndigit.occlusion_boxes(1, (28, 56), 2, rng, max_size=29)
  with pytest.raises(ValueError, match="multiple"):
    ndigit.occlusion_boxes(1, (28, 57), 2, rng)


def test_occlusion_size_sets_the_boxes_of_the_corrupted_test_sets(data):
  mild = _build(occlusion_size=(4, 6))
  # The clean sets do not depend on the occlusion; the corrupted ones do.
  np.testing.assert_array_equal(mild.test_unseen.images, data.test_unseen.images)
  np.testing.assert_array_equal(mild.train.images, data.train.images)
  for clean, corrupted in ((mild.test_seen, mild.test_seen_corrupted),
                           (mild.test_unseen, mild.test_unseen_corrupted)):
    changed = clean.images[..., 0] != corrupted.images[..., 0]
    rows, cols = changed.any(axis=2).sum(axis=1), changed.any(axis=1).sum(axis=1)
    assert rows.max() <= 6 and cols.max() <= 6 and (rows > 0).mean() > 0.99
  default = data.test_unseen_corrupted.images != data.test_unseen.images
  assert default.any(axis=2).sum(axis=1).max() > 6  # the default boxes are larger
  for bad in ((0, 5), (8, 5), (5,)):
    with pytest.raises(ValueError, match="occlusion"):
      _build(occlusion_size=bad)


def test_min_test_images_per_class_trims_the_test_classes_as_the_reference(data):
  # N = 3, 600 test images: 2 per unseen class, below 20, so 600 // 20 = 30 classes of 20.
  trimmed = _build(3, num_test=600, min_test_images_per_class=20)
  full = _build(3, num_test=600)
  for name, classes in (("seen", trimmed.seen_classes), ("unseen", trimmed.unseen_classes)):
    labels, counts = np.unique(trimmed.test_set(name).labels, return_counts=True)
    assert len(labels) == 30 and np.all(counts == 20), name
    assert set(labels) <= set(classes.tolist())
    np.testing.assert_array_equal(trimmed.test_set(f"{name}_corrupted").labels,
                                  trimmed.test_set(name).labels)
    assert len(np.unique(full.test_set(name).labels)) == min(len(classes), 600)
  np.testing.assert_array_equal(trimmed.train.images, full.train.images)
  assert not set(trimmed.test_unseen.labels.tolist()) & set(trimmed.train.labels.tolist())
  # Enough images per class (N = 2: 20 per unseen class): nothing changes.
  np.testing.assert_array_equal(_build(min_test_images_per_class=20).test_unseen.images,
                                data.test_unseen.images)
  assert len(np.unique(_build(min_test_images_per_class=21).test_unseen.labels)) == 600 // 21


def test_corrupt_train_occludes_a_fixed_share_of_the_training_images(data):
  assert ndigit.corrupt_train(data, 0.0) is data.train
  train = ndigit.corrupt_train(data, 0.3)
  np.testing.assert_array_equal(train.labels, data.train.labels)
  np.testing.assert_array_equal(train.source_indices, data.train.source_indices)
  changed = data.train.images[..., 0] != train.images[..., 0]
  assert np.all(train.images[..., 0][changed] == 0)  # black boxes only
  occluded = changed.any(axis=(1, 2))
  # The random pixels are almost never 0 where a box lands: occluded images show it.
  assert 0.25 < occluded.mean() < 0.35
  for n in np.flatnonzero(occluded)[:50]:
    cols = np.flatnonzero(changed[n].any(axis=0))
    assert cols[-1] - cols[0] < 20 and cols[0] // 28 == cols[-1] // 28  # one box in one digit
  # Fixed: the same images and boxes every call; the other sets untouched.
  np.testing.assert_array_equal(ndigit.corrupt_train(data, 0.3).images, train.images)
  np.testing.assert_array_equal(_build().test_seen_corrupted.images,
                                data.test_seen_corrupted.images)
  everything = ndigit.corrupt_train(data, 1.0)
  assert (everything.images[..., 0] != data.train.images[..., 0]).any(axis=(1, 2)).mean() > 0.99
  for bad in (-0.1, 1.5):
    with pytest.raises(ValueError, match="fraction"):
      ndigit.corrupt_train(data, bad)


# ----------------------------------------------------------------------------- datasets and cache


def test_as_dataset(data):
  dataset = data.as_dataset("unseen_corrupted")
  assert isinstance(dataset, Dataset) and dataset.num_classes == 100
  assert dataset.test is data.test_unseen_corrupted and dataset.train is data.train
  assert dataset.image_shape == (28, 56, 1)
  with pytest.raises(ValueError, match="unknown test set"):
    data.as_dataset("clean")


def _write_fake_idx(folder):
  folder.mkdir(parents=True)
  for prefix, split in (("train", FAKE.train), ("t10k", FAKE.test)):
    write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", split.images[..., 0])
    write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", split.labels.astype(np.uint8))


def test_cache_round_trip(tmp_path):
  mnist = tmp_path / "mnist"
  _write_fake_idx(mnist)
  kwargs = dict(seed=2, num_train=700, num_test=300, data_dir=mnist, cache_dir=tmp_path / "cache")
  fresh = ndigit.load_ndigit_mnist(2, **kwargs)
  files = os.listdir(tmp_path / "cache")
  assert len(files) == 1 and files[0].startswith("ndigit_mnist_n2_seed2_")
  # The second call reads the cache: it no longer needs MNIST.
  for name in os.listdir(mnist):
    os.remove(mnist / name)
  cached = ndigit.load_ndigit_mnist(2, **kwargs)
  for name in ("train", "test_seen", "test_unseen", "test_seen_corrupted",
               "test_unseen_corrupted"):
    for field in ("images", "labels", "digits", "source_indices"):
      np.testing.assert_array_equal(getattr(getattr(cached, name), field),
                                    getattr(getattr(fresh, name), field))
  np.testing.assert_array_equal(cached.unseen_classes, fresh.unseen_classes)
  assert cached.source == fresh.source and cached.seed == 2
  np.testing.assert_array_equal(fresh.train.images, _build(seed=2, num_train=700).train.images)
  # Other arguments are another file, and they need MNIST again.
  with pytest.raises(DataNotFoundError):
    ndigit.load_ndigit_mnist(2, **{**kwargs, "seed": 3})
  with pytest.raises(DataNotFoundError):
    ndigit.load_ndigit_mnist(2, **kwargs, occlusion_size=(4, 6))
  with pytest.raises(DataNotFoundError):
    ndigit.load_ndigit_mnist(2, **kwargs, min_test_images_per_class=100)
  # The default occlusion spelled out is the same file (caches of earlier versions stay valid).
  ndigit.load_ndigit_mnist(2, **kwargs, occlusion_size=(10, 20))
  assert os.listdir(tmp_path / "cache") == files


# ----------------------------------------------------------------------------- real MNIST


def test_real_two_digit_mnist():
  try:
    mnist = load_dataset("mnist")
  except DataNotFoundError:
    if os.environ.get("SPHEREEMBED_REQUIRE_DATA") == "1":
      raise
    pytest.skip("mnist not available (set SPHEREEMBED_REQUIRE_DATA=1 to make this a failure)")
  data = ndigit.build_ndigit_mnist(mnist, 2, seed=0)
  assert len(data.train) == 100_000 and len(data.test_seen) == len(data.test_unseen) == 10_000
  assert data.train.images.shape == (100_000, 28, 56, 1)
  assert len(np.unique(data.train.labels)) == 70 and len(np.unique(data.test_unseen.labels)) == 30
  assert not set(data.train.labels.tolist()) & set(data.test_unseen.labels.tolist())
  blocks = _blocks(data.train.images[:500], 2)
  for j in range(2):
    sources = data.train.source_indices[:500, j]
    np.testing.assert_array_equal(blocks[:, j], mnist.train.images[sources, ..., 0])
    np.testing.assert_array_equal(mnist.train.labels[sources], data.train.digits[:500, j])
  sources = data.test_unseen.source_indices[:500, 1]
  np.testing.assert_array_equal(_blocks(data.test_unseen.images[:500], 2)[:, 1],
                                mnist.test.images[sources, ..., 0])
