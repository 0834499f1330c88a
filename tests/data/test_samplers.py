"""Samplers: batch structure, coverage, determinism, balance; imbalance helpers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from sphereembed.data import ClassBalancedSampler, ShuffledSampler, class_weights, subsample_classes


def imbalanced_labels(seed=0) -> np.ndarray:
  """10 classes; 0-4 keep 10% of 200 (20 each), 5-9 keep 200; shuffled order."""
  labels = np.random.default_rng(seed).permutation(np.repeat(np.arange(10), 200))
  return labels[subsample_classes(labels, 0.1, seed=seed, classes=range(5))]


# ----------------------------------------------------------------------------- ShuffledSampler


@pytest.mark.parametrize("n,batch", [(10, 3), (12, 4), (5, 8), (1, 1)])
def test_shuffled_every_example_exactly_once(n, batch):
  sampler = ShuffledSampler(n, batch, seed=3)
  assert sampler.num_batches == -(-n // batch)
  for epoch in range(3):
    batches = list(sampler.epoch(epoch))
    assert len(batches) == sampler.num_batches
    assert [len(b) for b in batches[:-1]] == [batch] * (len(batches) - 1)
    assert 1 <= len(batches[-1]) <= batch
    flat = np.concatenate(batches)
    assert np.issubdtype(flat.dtype, np.integer)
    np.testing.assert_array_equal(np.sort(flat), np.arange(n))


def test_shuffled_drop_remainder():
  sampler = ShuffledSampler(10, 4, seed=0, drop_remainder=True)
  batches = sampler.epoch(0)
  assert sampler.num_batches == 2
  assert isinstance(batches, np.ndarray) and batches.shape == (2, 4)
  assert len(np.unique(batches)) == 8 and batches.min() >= 0 and batches.max() < 10
  # The dropped examples change between epochs.
  dropped = [frozenset(set(range(10)) - set(sampler.epoch(e).ravel().tolist())) for e in range(10)]
  assert len(set(dropped)) > 1


def test_shuffled_determinism():
  a, b = ShuffledSampler(100, 7, seed=5), ShuffledSampler(100, 7, seed=5)
  for epoch in (0, 1, 17):
    np.testing.assert_array_equal(np.concatenate(a.epoch(epoch)), np.concatenate(b.epoch(epoch)))
  assert not np.array_equal(np.concatenate(a.epoch(0)), np.concatenate(a.epoch(1)))
  other = ShuffledSampler(100, 7, seed=6)
  assert not np.array_equal(np.concatenate(a.epoch(0)), np.concatenate(other.epoch(0)))
  # An epoch does not depend on which epochs were generated before it.
  fresh = ShuffledSampler(100, 7, seed=5)
  np.testing.assert_array_equal(np.concatenate(fresh.epoch(17)), np.concatenate(a.epoch(17)))


@pytest.mark.parametrize("start", [0, 3, 4, 9])
def test_shuffled_iterate_resumes_exactly(start):
  sampler = ShuffledSampler(10, 3, seed=1)  # 4 batches per epoch.
  reference = [b for e in range(4) for b in sampler.epoch(e)]
  resumed = list(itertools.islice(sampler.iterate(start_step=start), len(reference) - start))
  for x, y in zip(resumed, reference[start:], strict=True):
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_examples=0, batch_size=1, seed=0), "num_examples"),
    (dict(num_examples=5, batch_size=0, seed=0), "batch_size"),
    (dict(num_examples=5, batch_size=-2, seed=0), "batch_size"),
    (dict(num_examples=5, batch_size=2.0, seed=0), "batch_size must be an integer"),
    (dict(num_examples=5, batch_size=2, seed=-1), "seed"),
    (dict(num_examples=5, batch_size=6, seed=0, drop_remainder=True), "leaves no batch"),
])
def test_shuffled_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    ShuffledSampler(**kwargs)


def test_negative_epoch_index():
  with pytest.raises(ValueError, match="epoch index"):
    ShuffledSampler(5, 2, seed=0).epoch(-1)


# ----------------------------------------------------------------------------- ClassBalancedSampler


def _check_pk(sampler, labels, batches, p, k):
  assert batches.shape == (sampler.num_batches, p * k)
  for batch in batches:
    rows = labels[batch].reshape(p, k)
    assert (rows == rows[:, :1]).all(), rows  # K consecutive indices of one class.
    assert len(np.unique(rows[:, 0])) == p  # P distinct classes.


@pytest.mark.parametrize("balance", ["natural", "uniform"])
@pytest.mark.parametrize("p,k", [(4, 4), (2, 3), (10, 2), (3, 1)])
def test_balanced_structure_and_coverage(balance, p, k):
  labels = imbalanced_labels()
  labels = np.concatenate([labels, [3]])  # A class size that is no multiple of K.
  sampler = ClassBalancedSampler(labels, p, k, seed=0, balance=balance)
  assert sampler.batch_size == p * k
  for epoch in range(2):
    batches = sampler.epoch(epoch)
    _check_pk(sampler, labels, batches, p, k)
    counts = np.bincount(batches.ravel(), minlength=len(labels))
    assert counts.min() >= 1, "an example was not visited in the epoch"
    for batch in batches:  # Classes with >= K examples never repeat one inside a batch.
      assert len(np.unique(batch)) == len(batch)


def test_balanced_small_classes_are_topped_up():
  labels = np.array([0, 1, 1, 2, 2, 2, 2, 2, 2])
  sampler = ClassBalancedSampler(labels, 3, 4, seed=0)
  batches = sampler.epoch(0)
  _check_pk(sampler, labels, batches, 3, 4)
  for batch in batches:
    class0 = batch[labels[batch] == 0]
    assert class0.tolist() == [0, 0, 0, 0]
    assert set(batch[labels[batch] == 1].tolist()) == {1, 2}
  assert (np.bincount(batches.ravel(), minlength=9) >= 1).all()


def test_balanced_natural_epoch_length():
  labels = np.repeat(np.arange(6), 8)  # 48 examples, sizes multiples of K=4.
  sampler = ClassBalancedSampler(labels, 3, 4, seed=0)
  assert sampler.num_batches == 4  # ceil(48 / 12)
  counts = np.bincount(sampler.epoch(0).ravel(), minlength=48)
  np.testing.assert_array_equal(counts, np.ones(48))  # Exactly once when it fits exactly.
  # A class larger than N / P needs more batches than ceil(N / (P*K)).
  skewed = np.concatenate([np.zeros(40, int), np.arange(1, 5)])
  sampler = ClassBalancedSampler(skewed, 2, 4, seed=0)
  assert sampler.num_batches == 10
  assert np.bincount(sampler.epoch(0).ravel(), minlength=44).min() >= 1


def test_balanced_natural_follows_class_sizes():
  labels = imbalanced_labels()
  sampler = ClassBalancedSampler(labels, 4, 4, seed=0, balance="natural")
  appearances = np.zeros(10)
  for epoch in range(3):
    batches = sampler.epoch(epoch)
    appearances += np.bincount(labels[batches[:, ::4]].ravel(), minlength=10)
  per_class_examples = appearances * 4 / 3
  sizes = np.bincount(labels, minlength=10)
  # Each example about once per epoch: small classes stay rare.
  np.testing.assert_allclose(per_class_examples[5:], sizes[5:], rtol=0.05)
  assert per_class_examples[:5].max() < 0.5 * per_class_examples[5:].min()


def test_balanced_uniform_equalises_classes():
  labels = imbalanced_labels()
  assert np.bincount(labels).tolist() == [20] * 5 + [200] * 5
  sampler = ClassBalancedSampler(labels, 4, 4, seed=0, balance="uniform")
  assert sampler.num_batches == 125  # ceil(10 classes * 50 batches / 4)
  appearances = np.zeros(10)
  for epoch in range(4):
    batches = sampler.epoch(epoch)
    appearances += np.bincount(labels[batches[:, ::4]].ravel(), minlength=10)
  # Every class in about P/C of the batches, whatever its size.
  expected = 4 * sampler.num_batches * 4 / 10
  np.testing.assert_allclose(appearances, expected, rtol=0.1)
  rare = np.bincount(sampler.epoch(0).ravel(), minlength=len(labels))[labels < 5]
  assert rare.mean() > 8  # Rare examples are oversampled about 10x.


def test_balanced_absent_classes_never_drawn():
  labels = np.array([7, 0, 5, 7, 0, 5, 7, 7])
  sampler = ClassBalancedSampler(labels, 3, 2, seed=1)
  np.testing.assert_array_equal(sampler.classes, [0, 5, 7])
  assert set(labels[sampler.epoch(0).ravel()].tolist()) == {0, 5, 7}


@pytest.mark.parametrize("balance", ["natural", "uniform"])
def test_balanced_determinism(balance):
  labels = imbalanced_labels()
  a = ClassBalancedSampler(labels, 4, 4, seed=2, balance=balance)
  b = ClassBalancedSampler(labels, 4, 4, seed=2, balance=balance)
  np.testing.assert_array_equal(a.epoch(5), b.epoch(5))
  assert not np.array_equal(a.epoch(0), a.epoch(1))
  c = ClassBalancedSampler(labels, 4, 4, seed=3, balance=balance)
  assert not np.array_equal(a.epoch(0), c.epoch(0))


def test_balanced_iterate_resumes_exactly():
  labels = np.repeat(np.arange(5), 6)
  sampler = ClassBalancedSampler(labels, 2, 3, seed=0)
  nb = sampler.num_batches
  reference = np.concatenate([sampler.epoch(e) for e in range(3)])
  start = nb + 2
  resumed = np.stack(list(itertools.islice(sampler.iterate(start), len(reference) - start)))
  np.testing.assert_array_equal(resumed, reference[start:])


@pytest.mark.parametrize("labels,p,k,kwargs,match", [
    ([], 1, 1, {}, "empty"),
    ([0, -1, 1], 1, 1, {}, "non-negative"),
    ([0.0, 1.0], 1, 1, {}, "integers"),
    ([[0, 1]], 1, 1, {}, "shape"),
    ([0, 1, 1], 3, 1, {}, "exceeds the 2 distinct classes"),
    ([0, 1], 0, 1, {}, "classes_per_batch"),
    ([0, 1], 1, 0, {}, "samples_per_class"),
    ([0, 1], 1, 1, {"balance": "inverse"}, "balance"),
    ([0, 1], 1, 1, {"seed": -3}, "seed"),
])
def test_balanced_bad_arguments(labels, p, k, kwargs, match):
  kwargs = {"seed": 0, **kwargs}
  with pytest.raises(ValueError, match=match):
    ClassBalancedSampler(np.asarray(labels), p, k, **kwargs)


# ----------------------------------------------------------------------------- class_weights


def test_class_weights_inverse_frequency_mean_one():
  labels = imbalanced_labels()
  weights = class_weights(labels, 12)
  assert weights.dtype == np.float32 and weights.shape == (12,)
  assert weights[labels].mean() == pytest.approx(1.0, rel=1e-6)
  assert weights[0] / weights[9] == pytest.approx(10.0, rel=1e-6)  # 200 / 20 examples.
  assert weights[10] == 0 and weights[11] == 0  # Absent classes.
  # Every present class carries the same total weight.
  totals = np.bincount(labels, weights=weights[labels], minlength=12)[:10]
  np.testing.assert_allclose(totals, totals[0], rtol=1e-6)


def test_class_weights_balanced_data_gives_ones():
  np.testing.assert_allclose(class_weights(np.repeat(np.arange(4), 3), 4), np.ones(4))


@pytest.mark.parametrize("labels,num_classes,match", [
    ([], 3, "empty"), ([0, 3], 3, r"\[0, 3\)"), ([0, -1], 3, "non-negative"), ([0], 0, "num_classes"),
])
def test_class_weights_bad_arguments(labels, num_classes, match):
  with pytest.raises(ValueError, match=match):
    class_weights(np.asarray(labels, dtype=np.int64), num_classes)


# ----------------------------------------------------------------------------- subsample_classes


def test_subsample_classes_counts_and_determinism():
  labels = np.random.default_rng(0).permutation(np.repeat(np.arange(10), 100))
  kept = subsample_classes(labels, 0.05, seed=4, classes=range(5))
  assert kept.dtype == np.int64
  assert np.all(np.diff(kept) > 0)  # Sorted, no repeats.
  assert np.bincount(labels[kept]).tolist() == [5] * 5 + [100] * 5
  np.testing.assert_array_equal(kept, subsample_classes(labels, 0.05, seed=4, classes=range(5)))
  assert not np.array_equal(kept, subsample_classes(labels, 0.05, seed=5, classes=range(5)))


def test_subsample_classes_dict_and_independence():
  labels = np.repeat(np.arange(4), 50)
  a = subsample_classes(labels, {0: 0.1, 1: 0.5}, seed=0)
  b = subsample_classes(labels, {0: 0.1, 1: 0.2, 3: 0.0}, seed=0)
  assert np.bincount(labels[a], minlength=4).tolist() == [5, 25, 50, 50]
  assert np.bincount(labels[b], minlength=4).tolist() == [5, 10, 50, 0]
  # Class 0's subset does not depend on the other classes' fractions.
  np.testing.assert_array_equal(a[labels[a] == 0], b[labels[b] == 0])


def test_subsample_classes_keeps_at_least_one():
  labels = np.repeat(np.arange(3), 10)
  kept = subsample_classes(labels, 0.01, seed=0)
  assert np.bincount(labels[kept]).tolist() == [1, 1, 1]


@pytest.mark.parametrize("fraction,kwargs,match", [
    (1.5, {}, r"\[0, 1\]"), (-0.1, {}, r"\[0, 1\]"), ({0: 2.0}, {}, r"\[0, 1\]"),
    ({0: 0.5}, {"classes": [0]}, "classes must be None"), ({-1: 0.5}, {}, "class id"),
    (0.5, {"seed": -1}, "seed"),
])
def test_subsample_classes_bad_arguments(fraction, kwargs, match):
  kwargs = {"seed": 0, **kwargs}
  with pytest.raises(ValueError, match=match):
    subsample_classes(np.repeat(np.arange(3), 4), fraction, **kwargs)


def test_random_translate_matches_a_loop_and_is_deterministic():
  from sphereembed.data.augment import random_translate
  images = np.random.default_rng(1).integers(1, 255, size=(6, 5, 7, 1)).astype(np.uint8)
  out = random_translate(images, 2, np.random.default_rng(3))
  dy, dx = np.random.default_rng(3).integers(-2, 3, size=(2, 6))
  for i in range(6):
    want = np.zeros_like(images[i])
    for r in range(5):
      for c in range(7):
        if 0 <= r - dy[i] < 5 and 0 <= c - dx[i] < 7:
          want[r, c] = images[i, r - dy[i], c - dx[i]]
    np.testing.assert_array_equal(out[i], want)
  np.testing.assert_array_equal(out, random_translate(images, 2, np.random.default_rng(3)))
  assert random_translate(images, 0, np.random.default_rng(3)) is images
