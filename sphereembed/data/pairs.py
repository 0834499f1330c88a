"""Pairs from a labelled batch, for pair losses such as HIB's match loss.

* :func:`all_pairs`: every pair ``i < j`` of a batch with its same-class flag
  (for a P x K batch of :class:`~sphereembed.data.ClassBalancedSampler`:
  ``P K (K - 1) / 2`` positive and ``K^2 P (P - 1) / 2`` negative pairs, see
  :func:`pair_counts`);
* :func:`sample_pairs`: a fixed number of distinct pairs with a configurable
  share of positives, drawn uniformly from the positive and from the negative
  pairs, deterministic given a PRNG key.

Unlike the rest of :mod:`sphereembed.data` this module uses JAX: both
functions take the labels of the batch on the device and are jit-compatible
(the batch size and the number of pairs are static), so that the pairs can be
built inside a jitted training step. Indices are int32 and refer to rows of
the batch: ``embeddings[pairs.first]`` and ``embeddings[pairs.second]``.
The work after the argument checks is a jitted kernel, so that eager calls
compile one program rather than one per primitive.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sphereembed.losses import checks, masks

__all__ = ["Pairs", "all_pairs", "pair_counts", "sample_pairs"]


class Pairs(NamedTuple):
  """Pairs of rows of a batch (a pytree: it passes through ``jit``).

  Attributes:
    first: ``(M,)`` int32 row of the first member.
    second: ``(M,)`` int32 row of the second member.
    is_same: ``(M,)`` bool, whether the two rows share a class.
  """

  first: jax.Array
  second: jax.Array
  is_same: jax.Array


def _check_int(name: str, value, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(f"{name} must be an integer, got {value!r}.")
  if value < minimum:
    raise ValueError(f"{name} must be >= {minimum}, got {value}.")
  return int(value)


def _labels(labels) -> jax.Array:
  """Static checks (int ``(B,)`` or multi-hot ``(B, C)``); value checks when concrete."""
  labels = jnp.asarray(labels)
  if labels.ndim not in (1, 2):
    raise ValueError(f"labels must have shape (B,) or (B, C), got {labels.shape}.")
  labels = checks.check_labels(labels, labels.shape[0])
  if checks.is_concrete(labels):
    checks.validate_labels(labels)
  return labels


def _upper_triangle(batch_size: int) -> tuple[jax.Array, jax.Array]:
  # NumPy at trace time: the indices are constants of the compiled program.
  first, second = np.triu_indices(batch_size, k=1)
  return jnp.asarray(first, jnp.int32), jnp.asarray(second, jnp.int32)


def pair_counts(classes_per_batch: int, samples_per_class: int) -> tuple[int, int]:
  """``(positives, negatives)`` among the pairs ``i < j`` of a P x K batch.

  ``P K (K - 1) / 2`` positives (pairs within a class) and
  ``K^2 P (P - 1) / 2`` negatives (pairs across classes); together
  ``B (B - 1) / 2`` with ``B = P K``.

  Args:
    classes_per_batch: ``P >= 1``.
    samples_per_class: ``K >= 1``.

  Returns:
    The two counts, Python ints.

  Raises:
    ValueError: non-integer or non-positive arguments.

  Example:
    >>> from sphereembed.data.pairs import pair_counts
    >>> pair_counts(4, 3)  # 66 pairs among 12 samples
    (12, 54)
  """
  p = _check_int("classes_per_batch", classes_per_batch, 1)
  k = _check_int("samples_per_class", samples_per_class, 1)
  return p * k * (k - 1) // 2, k * k * p * (p - 1) // 2


def all_pairs(labels: jax.Array) -> Pairs:
  """Every pair ``i < j`` of a batch with its same-class flag.

  Pairs come in row-major order of the upper triangle:
  ``(0, 1), (0, 2), ..., (0, B-1), (1, 2), ...``. ``is_same`` is ``True``
  when the labels are equal (int labels) or share a label (multi-hot labels;
  a row without any label matches nobody).

  Args:
    labels: ``(B,)`` int class ids or ``(B, C)`` multi-hot labels; may be
      traced (``B`` is static).

  Returns:
    :class:`Pairs` of length ``B (B - 1) / 2``.

  Raises:
    ValueError: on bad shapes or dtypes and, outside ``jit``, negative class
      ids or multi-hot entries other than 0/1.

  Example:
    >>> import jax.numpy as jnp
    >>> from sphereembed.data.pairs import all_pairs
    >>> pairs = all_pairs(jnp.array([0, 0, 1]))
    >>> print(pairs.first.tolist(), pairs.second.tolist(), pairs.is_same.tolist())
    [0, 0, 1] [1, 2, 2] [True, False, False]
  """
  return _all_pairs_kernel(_labels(labels))


@jax.jit
def _all_pairs_kernel(labels):
  first, second = _upper_triangle(labels.shape[0])
  same = masks.positive_mask(labels)
  return Pairs(first, second, same[first, second])


def _as_key(key) -> jax.Array:
  """A JAX PRNG key, or a non-negative int seed turned into one."""
  if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
    return jax.random.PRNGKey(_check_int("seed", key, 0))
  return key


def sample_pairs(key, labels: jax.Array, num_pairs: int, *,
                 positive_fraction: float = 0.5) -> Pairs:
  """``num_pairs`` distinct pairs ``i < j`` with a given share of positives.

  ``round(num_pairs * positive_fraction)`` pairs are drawn uniformly without
  replacement from the positive pairs of the batch and the rest uniformly
  without replacement from the negative pairs; no pair appears twice.
  Positives come first in the result, then negatives. When the batch holds
  fewer positive (negative) pairs than asked for, the shortfall is filled
  with pairs of the other kind; ``is_same`` always states the truth, so count
  it (``pairs.is_same.sum()``) rather than assume the share. Deterministic
  given the key; jit-compatible (``num_pairs`` and ``positive_fraction`` are
  static).

  Args:
    key: a JAX PRNG key, or a non-negative Python int seed (turned into
      ``jax.random.PRNGKey(seed)``; under ``jit`` pass a key, or keep the
      seed static).
    labels: ``(B,)`` int class ids or ``(B, C)`` multi-hot labels.
    num_pairs: the number of pairs, at most ``B (B - 1) / 2``.
    positive_fraction: the share of positive pairs, in ``[0, 1]``.

  Returns:
    :class:`Pairs` of length ``num_pairs``.

  Raises:
    ValueError: on bad labels (see :func:`all_pairs`), ``num_pairs`` not in
      ``[0, B (B - 1) / 2]``, or ``positive_fraction`` outside ``[0, 1]``.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from sphereembed.data.pairs import sample_pairs
    >>> labels = jnp.array([0, 0, 1, 1, 2, 2])  # 3 positive, 12 negative pairs
    >>> pairs = sample_pairs(jax.random.key(0), labels, 8, positive_fraction=0.25)
    >>> print(pairs.is_same.tolist())
    [True, True, False, False, False, False, False, False]
  """
  labels = _labels(labels)
  batch_size = labels.shape[0]
  total = batch_size * (batch_size - 1) // 2
  num_pairs = _check_int("num_pairs", num_pairs, 0)
  if num_pairs > total:
    raise ValueError(
        f"num_pairs = {num_pairs} exceeds the {total} distinct pairs of a batch of {batch_size}.")
  positive_fraction = float(positive_fraction)
  if not 0.0 <= positive_fraction <= 1.0:
    raise ValueError(f"positive_fraction must lie in [0, 1], got {positive_fraction}.")
  num_positive = int(np.floor(num_pairs * positive_fraction + 0.5))
  return _sample_pairs_kernel(_as_key(key), labels, num_positive, num_pairs - num_positive)


@functools.partial(jax.jit, static_argnames=("num_positive", "num_negative"))
def _sample_pairs_kernel(key, labels, num_positive, num_negative):
  everything = _all_pairs_kernel(labels)
  total = everything.first.shape[0]
  key_positive, key_negative = jax.random.split(key)
  same = everything.is_same
  chosen = []
  taken = jnp.zeros((total,), bool)
  # Uniform scores in [0, 1) plus 2 for the wanted kind: top_k takes random
  # pairs of that kind first, then (only on a shortfall) of the other kind;
  # minus 4 keeps the negatives' draw off pairs already taken.
  if num_positive:
    score = jax.random.uniform(key_positive, (total,)) + 2.0 * same
    chosen.append(jax.lax.top_k(score, num_positive)[1])
    taken = taken.at[chosen[-1]].set(True)
  if num_negative:
    score = jax.random.uniform(key_negative, (total,)) + 2.0 * ~same - 4.0 * taken
    chosen.append(jax.lax.top_k(score, num_negative)[1])
  index = jnp.concatenate(chosen) if chosen else jnp.zeros((0,), jnp.int32)
  return Pairs(everything.first[index], everything.second[index], same[index])
