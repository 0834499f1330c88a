"""Pair construction from batches: counts, flags, sampling shares, determinism, jit."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sphereembed.data.pairs import Pairs, all_pairs, pair_counts, sample_pairs
from tests.references import jit_fast_compile

_sample = jit_fast_compile(sample_pairs, static_argnames=("num_pairs", "positive_fraction"))


def _pk_labels(p, k, seed=0):
  """A shuffled P x K batch: P distinct classes, K samples each."""
  rng = np.random.default_rng(seed)
  classes = rng.choice(1000, p, replace=False)
  return rng.permutation(np.repeat(classes, k)).astype(np.int32)


@pytest.mark.parametrize("p,k", [(1, 1), (1, 4), (4, 1), (8, 4), (5, 3)])
def test_all_pairs_of_a_pk_batch(p, k):
  labels = _pk_labels(p, k)
  pairs = all_pairs(labels)
  expected = list(itertools.combinations(range(p * k), 2))
  assert list(zip(pairs.first.tolist(), pairs.second.tolist())) == expected
  assert pairs.first.dtype == jnp.int32 and pairs.is_same.dtype == jnp.bool_
  np.testing.assert_array_equal(pairs.is_same, [labels[i] == labels[j] for i, j in expected])
  positives, negatives = pair_counts(p, k)
  assert int(pairs.is_same.sum()) == positives and int((~pairs.is_same).sum()) == negatives
  assert positives == p * k * (k - 1) // 2 and negatives == k * k * p * (p - 1) // 2


def test_all_pairs_multi_hot_and_jit():
  hot = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0]])
  pairs = jax.jit(all_pairs)(hot)
  # (0,1) share label 0, (1,2) label 1; a row without labels matches nobody.
  assert pairs.is_same.tolist() == [True, False, False, True, False, False]
  ids = np.array([3, 3, 1, 3])
  np.testing.assert_array_equal(jax.jit(all_pairs)(ids).is_same, all_pairs(ids).is_same)


@pytest.mark.parametrize("fraction", [0.0, 0.75])
def test_sample_pairs_share_distinct_and_valid(fraction):
  labels = _pk_labels(8, 4, seed=1)  # 48 positive and 448 negative pairs
  pairs = _sample(jax.random.key(0), labels, num_pairs=64, positive_fraction=fraction)
  assert isinstance(pairs, Pairs) and pairs.first.shape == (64,)
  first, second, same = (np.asarray(x) for x in pairs)
  assert np.all(first < second) and np.all(second < 32)
  assert len(set(zip(first.tolist(), second.tolist()))) == 64  # no pair twice
  np.testing.assert_array_equal(same, labels[first] == labels[second])
  assert same.sum() == round(64 * fraction)
  assert np.all(same[:same.sum()]) and not np.any(same[same.sum():])  # positives first


def test_sample_pairs_is_uniform_over_positive_pairs():
  labels = _pk_labels(3, 3, seed=2)  # 9 positive pairs
  counts = {}
  for seed in range(300):
    pairs = _sample(jax.random.key(seed), labels, num_pairs=6, positive_fraction=0.5)
    for i, j in zip(pairs.first[:3].tolist(), pairs.second[:3].tolist()):
      counts[i, j] = counts.get((i, j), 0) + 1
  assert len(counts) == 9
  # 300 * 3 / 9 = 100 draws each; a binomial with sd ~ 9.
  assert all(60 < c < 140 for c in counts.values()), counts


def test_sample_pairs_shortfall_is_filled_and_flagged():
  labels = np.array([0, 0, 1, 2, 3])  # a single positive pair among 10
  pairs = _sample(jax.random.key(1), labels, num_pairs=6, positive_fraction=0.5)
  same = np.asarray(pairs.is_same)
  assert same.sum() == 1 and same[0]
  assert len(set(zip(pairs.first.tolist(), pairs.second.tolist()))) == 6
  everything = _sample(jax.random.key(1), labels, num_pairs=10, positive_fraction=0.5)
  assert sorted(zip(everything.first.tolist(), everything.second.tolist())) == list(
      itertools.combinations(range(5), 2))


def test_sample_pairs_is_deterministic_given_the_key():
  # The signature of test_sample_pairs_share_distinct_and_valid[0.75] (compiled once).
  labels = _pk_labels(8, 4, seed=3)
  a = _sample(jax.random.key(5), labels, num_pairs=64, positive_fraction=0.75)
  b = _sample(jax.random.key(5), labels, num_pairs=64, positive_fraction=0.75)
  c = _sample(jax.random.key(6), labels, num_pairs=64, positive_fraction=0.75)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a.first, c.first) or not np.array_equal(a.second, c.second)
  # An int seed is the PRNGKey of that seed; eager equals jit.
  eager = sample_pairs(7, labels, 64, positive_fraction=0.75)
  jitted = _sample(jax.random.PRNGKey(7), labels, num_pairs=64, positive_fraction=0.75)
  for x, y in zip(eager, jitted):
    np.testing.assert_array_equal(x, y)


def test_errors():
  with pytest.raises(ValueError, match="exceeds"):
    sample_pairs(0, np.array([0, 1, 2]), 4)
  with pytest.raises(ValueError, match="positive_fraction"):
    sample_pairs(0, np.array([0, 1, 2]), 2, positive_fraction=1.5)
  with pytest.raises(ValueError, match="integer"):
    all_pairs(np.array([0.0, 1.0]))
  with pytest.raises(ValueError, match="non-negative"):
    all_pairs(np.array([0, -1]))
  with pytest.raises(ValueError, match="shape"):
    all_pairs(np.zeros((2, 2, 2), np.int32))
  with pytest.raises(ValueError, match=">= 1"):
    pair_counts(0, 4)
