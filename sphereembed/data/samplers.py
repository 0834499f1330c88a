"""Deterministic batch samplers and class-imbalance helpers, in NumPy.

A sampler turns a split into batches of indices. Epoch ``e`` of a sampler
with seed ``s`` is drawn from ``np.random.default_rng([s, e])`` alone, so any
epoch can be regenerated on its own: resuming from a checkpoint taken at
global step ``g`` continues with exactly the batches an uninterrupted run
would have seen (``sampler.iterate(start_step=g)``).

* :class:`ShuffledSampler`: a fresh permutation each epoch, every example once.
* :class:`ClassBalancedSampler`: P x K batches (P classes, K examples each)
  for metric-learning losses that need positives in every batch.
* :func:`class_weights`: inverse-frequency weights for weighted losses.
* :func:`subsample_classes`: builds an imbalanced training set.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Literal

import numpy as np

__all__ = ["ClassBalancedSampler", "ShuffledSampler", "class_weights", "subsample_classes"]

Balance = Literal["natural", "uniform"]


def _check_int(name: str, value, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(f"{name} must be an integer, got {value!r}.")
  if value < minimum:
    raise ValueError(f"{name} must be >= {minimum}, got {value}.")
  return int(value)


def _check_labels(labels) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.size == 0:
    raise ValueError("labels are empty.")
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be integers of shape (N,), got {labels.dtype} {labels.shape}.")
  if labels.min() < 0:
    raise ValueError(f"labels must be non-negative, found {labels.min()}.")
  return labels


class _EpochSampler:
  """Shared logic: epochs of ``num_batches`` batches, regenerable by index."""

  _seed: int

  @property
  def num_batches(self) -> int:
    """The number of batches of every epoch."""
    raise NotImplementedError

  def epoch(self, index: int):
    raise NotImplementedError

  def _rng(self, index: int) -> np.random.Generator:
    index = _check_int("epoch index", index, 0)
    return np.random.default_rng([self._seed, index])

  def iterate(self, start_step: int = 0) -> Iterator[np.ndarray]:
    """Yields batches forever, starting at global step ``start_step``.

    Step ``g`` is batch ``g % num_batches`` of epoch ``g // num_batches``, so
    a run resumed at step ``g`` sees the batches of an uninterrupted run.
    """
    start_step = _check_int("start_step", start_step, 0)
    epoch, step = divmod(start_step, self.num_batches)
    while True:
      batches = self.epoch(epoch)
      for i in range(step, self.num_batches):
        yield batches[i]
      epoch, step = epoch + 1, 0


class ShuffledSampler(_EpochSampler):
  """Batches of a fresh random permutation each epoch.

  Every example appears exactly once per epoch; the last batch is smaller
  unless ``drop_remainder`` (then the ``num_examples % batch_size`` examples
  at the end of the permutation, different ones each epoch, are left out).

  Args:
    num_examples: the size of the split.
    batch_size: the number of indices per batch.
    seed: a non-negative integer; the epoch index is mixed into it.
    drop_remainder: drop the last, incomplete batch.

  Raises:
    ValueError: non-positive sizes, a negative seed, or ``drop_remainder``
      with ``batch_size > num_examples`` (no batch at all).

  Example:
    >>> from sphereembed.data import ShuffledSampler
    >>> sampler = ShuffledSampler(10, 4, seed=0)
    >>> [len(batch) for batch in sampler.epoch(0)]
    [4, 4, 2]
    >>> print(sorted(int(i) for batch in sampler.epoch(3) for i in batch) == list(range(10)))
    True
  """

  def __init__(self, num_examples: int, batch_size: int, *, seed: int,
               drop_remainder: bool = False):
    self.num_examples = _check_int("num_examples", num_examples, 1)
    self.batch_size = _check_int("batch_size", batch_size, 1)
    self._seed = _check_int("seed", seed, 0)
    self.drop_remainder = bool(drop_remainder)
    if self.drop_remainder and self.batch_size > self.num_examples:
      raise ValueError(
          f"drop_remainder with batch_size {self.batch_size} > num_examples "
          f"{self.num_examples} leaves no batch.")

  @property
  def num_batches(self) -> int:
    """``num_examples // batch_size``, rounded up unless ``drop_remainder``."""
    if self.drop_remainder:
      return self.num_examples // self.batch_size
    return -(-self.num_examples // self.batch_size)

  def epoch(self, index: int) -> np.ndarray | list[np.ndarray]:
    """The batches of epoch ``index`` (int64 indices).

    Returns:
      With ``drop_remainder``, an array of shape ``(num_batches, batch_size)``;
      otherwise a list of ``num_batches`` 1-D arrays. Both iterate over and
      index the batches in order.
    """
    permutation = self._rng(index).permutation(self.num_examples).astype(np.int64)
    size, count = self.batch_size, self.num_batches
    if self.drop_remainder:
      return permutation[:count * size].reshape(count, size)
    return [permutation[i:i + size] for i in range(0, self.num_examples, size)]


class ClassBalancedSampler(_EpochSampler):
  """P x K batches: ``classes_per_batch`` distinct classes, ``samples_per_class`` each.

  Every batch holds exactly P distinct classes with K indices each, stored
  class by class (``batch.reshape(P, K)`` has one class per row). Within a
  class, indices are drawn without replacement from a random permutation of
  the class; when it runs out a fresh permutation follows (avoiding repeats
  inside a batch when the class has at least K examples). A class with fewer
  than K examples is topped up by repeating its examples.

  Guarantees, for both balances: every example appears at least once in every
  epoch, and each epoch has ``num_batches`` batches. Classes absent from
  ``labels`` are never drawn.

  * ``"natural"``: classes are drawn with probability proportional to their
    examples not yet seen in the epoch (then, once exhausted, to their size),
    so class frequencies follow the data. ``num_batches`` is the shortest
    epoch that can show every example: ``ceil(N / (P*K))`` when every class
    size is a multiple of K and no class holds more than ``N / P`` examples;
    in general ``max(ceil(sum_c r_c / P), max_c r_c)`` with
    ``r_c = ceil(n_c / K)``.
  * ``"uniform"``: classes are drawn uniformly, which oversamples rare
    classes (the imbalance remedy). ``num_batches = ceil(C * max_c r_c / P)``
    for C classes: long enough for uniformly drawn classes to show the
    largest class once, so every class appears in about ``max_c r_c`` batches
    per epoch.

  In both cases a class is forced into a batch when it could otherwise not
  show all its examples before the epoch ends, which barely perturbs the
  distributions above (mostly in the last batches of an epoch).

  Args:
    labels: integer class ids of shape ``(N,)``, non-negative.
    classes_per_batch: P, at most the number of distinct labels.
    samples_per_class: K, at least 1.
    seed: a non-negative integer; the epoch index is mixed into it.
    balance: ``"natural"`` or ``"uniform"``.

  Raises:
    ValueError: empty, non-integer or negative labels, P or K below 1, P above
      the number of distinct classes, an unknown balance or a negative seed.

  Example:
    >>> import numpy as np
    >>> from sphereembed.data import ClassBalancedSampler
    >>> labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    >>> sampler = ClassBalancedSampler(labels, 2, 2, seed=0)
    >>> batches = sampler.epoch(0)
    >>> print(f"{batches.shape} {sampler.num_batches}")
    (3, 4) 3
    >>> print(all(len(set(labels[b].tolist())) == 2 for b in batches))
    True
  """

  def __init__(self, labels, classes_per_batch: int, samples_per_class: int, *, seed: int,
               balance: Balance = "natural"):
    labels = _check_labels(labels)
    self.classes_per_batch = _check_int("classes_per_batch", classes_per_batch, 1)
    self.samples_per_class = _check_int("samples_per_class", samples_per_class, 1)
    self._seed = _check_int("seed", seed, 0)
    if balance not in ("natural", "uniform"):
      raise ValueError(f"balance must be 'natural' or 'uniform', got {balance!r}.")
    self.balance = balance
    order = np.argsort(labels, kind="stable")
    self.classes, starts, sizes = np.unique(labels[order], return_index=True, return_counts=True)
    if self.classes_per_batch > len(self.classes):
      raise ValueError(
          f"classes_per_batch={self.classes_per_batch} exceeds the {len(self.classes)} distinct "
          "classes in labels.")
    self._members = [order[s:s + n].astype(np.int64) for s, n in zip(starts, sizes)]
    self._sizes = sizes.astype(np.int64)
    self.num_examples = len(labels)
    needs = -(-self._sizes // self.samples_per_class)
    p = self.classes_per_batch
    if balance == "natural":
      self._num_batches = int(max(-(-needs.sum() // p), needs.max()))
    else:
      self._num_batches = int(-(-(len(self.classes) * needs.max()) // p))

  @property
  def batch_size(self) -> int:
    """``classes_per_batch * samples_per_class``."""
    return self.classes_per_batch * self.samples_per_class

  @property
  def num_batches(self) -> int:
    """The number of batches of every epoch (see the class docstring)."""
    return self._num_batches

  def epoch(self, index: int) -> np.ndarray:
    """The batches of epoch ``index``: int64 array ``(num_batches, P * K)``."""
    rng = self._rng(index)
    p, k, num_classes = self.classes_per_batch, self.samples_per_class, len(self.classes)
    cycles = [rng.permutation(m) for m in self._members]
    positions = np.zeros(num_classes, dtype=np.int64)
    unseen = self._sizes.copy()
    batches = np.empty((self._num_batches, p * k), dtype=np.int64)
    for t in range(self._num_batches):
      remaining = self._num_batches - t
      needs = -(-unseen // k)
      # Classes that need a batch in every remaining step must be in this one.
      forced = needs == remaining
      chosen = [np.flatnonzero(forced)]
      free = p - int(forced.sum())
      pending = np.flatnonzero(~forced & (needs > 0))
      done = np.flatnonzero(~forced & (needs == 0))
      if free:
        if self.balance == "natural":
          take = min(free, len(pending))
          chosen.append(_weighted_choice(rng, pending, unseen[pending], take))
          chosen.append(_weighted_choice(rng, done, self._sizes[done], free - take))
        else:
          # The remaining steps can show every unseen example only if enough of
          # this batch goes to pending classes: sum(needs') <= P * (remaining - 1).
          minimum = max(0, int(needs.sum()) - int(forced.sum()) - p * (remaining - 1))
          first = rng.choice(pending, size=minimum, replace=False)
          rest = np.setdiff1d(np.concatenate([pending, done]), first)
          chosen += [first, rng.choice(rest, size=free - minimum, replace=False)]
      batch_classes = rng.permutation(np.concatenate(chosen))
      for j, c in enumerate(batch_classes):
        batches[t, j * k:(j + 1) * k] = self._take(rng, cycles, positions, c)
        unseen[c] = max(unseen[c] - k, 0)
    if unseen.any():  # The scheduling above makes this impossible.
      raise AssertionError("ClassBalancedSampler left examples unseen; please report this bug.")
    return batches

  def _take(self, rng, cycles, positions, c) -> np.ndarray:
    """The next K indices of class ``c``, refilling its permutation as needed."""
    k, members = self.samples_per_class, self._members[c]
    parts, count = [], 0
    while count < k:
      if positions[c] == len(cycles[c]):
        fresh = rng.permutation(members)
        if parts and len(members) >= k:
          # Move the indices already in this batch to the end of the new cycle.
          taken = np.isin(fresh, np.concatenate(parts))
          fresh = np.concatenate([fresh[~taken], fresh[taken]])
        cycles[c], positions[c] = fresh, 0
      n = min(k - count, len(cycles[c]) - positions[c])
      parts.append(cycles[c][positions[c]:positions[c] + n])
      positions[c] += n
      count += n
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def _weighted_choice(rng: np.random.Generator, items: np.ndarray, weights: np.ndarray,
                     size: int) -> np.ndarray:
  """``size`` distinct items drawn with probability proportional to ``weights`` (> 0)."""
  if size <= 0:
    return items[:0]
  if size >= len(items):
    return items
  weights = weights.astype(np.float64)
  return rng.choice(items, size=size, replace=False, p=weights / weights.sum())


def class_weights(labels, num_classes: int) -> np.ndarray:
  """Inverse class-frequency weights, normalised to mean 1 over the examples.

  ``w_c = N / (C_present * n_c)`` for a class with ``n_c > 0`` examples and 0
  for an absent class, so ``mean(w[labels]) == 1`` and every present class
  carries the same total weight ``N / C_present``.

  Args:
    labels: integer class ids of shape ``(N,)`` in ``[0, num_classes)``.
    num_classes: the number of classes C.

  Returns:
    float32 array of shape ``(num_classes,)``; index it with labels for
    per-example weights.

  Raises:
    ValueError: empty labels, labels outside ``[0, num_classes)`` or
      ``num_classes < 1``.

  Example:
    >>> import numpy as np
    >>> from sphereembed.data import class_weights
    >>> w = class_weights(np.array([0, 0, 0, 1]), 3)
    >>> print(" ".join(f"{x:.3f}" for x in w))
    0.667 2.000 0.000
  """
  labels = _check_labels(labels)
  num_classes = _check_int("num_classes", num_classes, 1)
  if labels.max() >= num_classes:
    raise ValueError(f"labels must lie in [0, {num_classes}), found {labels.max()}.")
  counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
  present = counts > 0
  weights = np.zeros(num_classes, dtype=np.float64)
  weights[present] = len(labels) / (present.sum() * counts[present])
  return weights.astype(np.float32)


def subsample_classes(labels, keep_fraction: Mapping[int, float] | float, *, seed: int,
                      classes=None) -> np.ndarray:
  """Indices of a class-wise random subset, e.g. to build an imbalanced training set.

  Class ``c`` with ``n_c`` examples keeps ``round(f_c * n_c)`` of them (at
  least one when ``f_c > 0``), chosen at random; classes without a fraction
  keep every example. Each class is drawn from ``default_rng([seed, c])``, so
  its subset does not depend on the fractions of the other classes.

  Args:
    labels: integer class ids of shape ``(N,)``, non-negative.
    keep_fraction: ``{class: fraction}``, or one fraction for ``classes``
      (for every class when ``classes`` is None). Fractions lie in [0, 1].
    seed: a non-negative integer.
    classes: the classes a scalar ``keep_fraction`` applies to.

  Returns:
    Sorted int64 indices into ``labels``.

  Raises:
    ValueError: bad labels, fractions outside [0, 1], a negative seed or
      class id, or ``classes`` given together with a dict.

  Example:
    >>> import numpy as np
    >>> from sphereembed.data import subsample_classes
    >>> labels = np.repeat([0, 1, 2], 100)
    >>> kept = subsample_classes(labels, 0.05, seed=0, classes=[0, 1])
    >>> print(np.bincount(labels[kept]).tolist())
    [5, 5, 100]
  """
  labels = _check_labels(labels)
  seed = _check_int("seed", seed, 0)
  if isinstance(keep_fraction, Mapping):
    if classes is not None:
      raise ValueError("classes must be None when keep_fraction is a dict.")
    fractions = dict(keep_fraction)
  else:
    targets = np.unique(labels) if classes is None else np.asarray(list(classes)).reshape(-1)
    fractions = {c: keep_fraction for c in targets.tolist()}
  for c, f in fractions.items():
    _check_int("class id", c, 0)
    if not 0.0 <= float(f) <= 1.0:
      raise ValueError(f"keep fractions must lie in [0, 1], got {f} for class {c}.")
  keep = np.ones(len(labels), dtype=bool)
  for c, f in fractions.items():
    members = np.flatnonzero(labels == c)
    if len(members) == 0:
      continue
    count = int(np.floor(float(f) * len(members) + 0.5))
    if f > 0:
      count = max(count, 1)
    rng = np.random.default_rng([seed, int(c)])
    keep[members] = False
    keep[rng.choice(members, size=count, replace=False)] = True
  return np.flatnonzero(keep).astype(np.int64)
