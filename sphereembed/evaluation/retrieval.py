"""Retrieval and kNN metrics from one exact, blocked top-k search.

Every metric here is computed from the exact nearest neighbours of each
query, found by :func:`nearest_neighbors`: the queries are processed in
blocks of ``block_size`` rows, and each block's ranking keys against all
``M`` references are reduced to their ``k`` smallest with ``jax.lax.top_k``
inside one jitted kernel, so memory stays at a few blocks (a 70,000 x 70,000
search at D = 128 needs well under 1 GB) and nothing of size ``Q x M`` is
ever built.

Conventions shared by every function:

* **Self-exclusion.** With ``reference=None`` the query set is its own
  reference set and each query's own entry is left out (leave-one-out).
  ``exclude_self=True`` with an explicit reference leaves out reference row
  ``i`` for query ``i`` (the query set is the first rows of the reference set,
  pytorch-metric-learning's ``ref_includes_query``).
* **Order and ties.** Neighbours are ranked by a key that one matmul gives:
  ``|r|^2 - 2 q.r`` for ``"euclidean"``, ``"squared_euclidean"`` and
  ``"great_circle"`` (the squared distance of
  :func:`sphereembed.geometry.pairwise_distances` minus the query's own
  ``|q|^2``: the same order), ``-q.r`` for ``"cosine"``. Equal keys go to the
  smaller reference index. The distances returned are computed from the keys
  of the ``k`` results (``|q|^2 + key`` clamped at 0, then the square root;
  ``1 + key`` clamped at 0 for cosine; ``2 arcsin(chord / 2)`` for the great
  circle), so they never decrease along a row. ``"cosine"`` and
  ``"great_circle"`` expect unit vectors, as in ``geometry``; the great-circle
  order is the chord's, which is exact for unit vectors.
* **Labels.** Integer class ids ``(N,)``, or multi-hot ``(N, L)`` (bool, or
  integers 0/1). A reference is *relevant* to a query when it has the
  query's class id, or, for multi-hot labels, when they share at least one
  label. A query without any relevant reference (after self-exclusion) is a
  *lone* query.
* Results are NumPy arrays and Python floats, computed in float64 on the host
  from the neighbour lists; the search itself runs in the embeddings' dtype.

Speed on CPU: for small ``k`` the kernel first keeps, per row, the ``k``
groups of about ``sqrt(M / k)`` consecutive references with the smallest
minimum (they hold the ``k`` nearest), so that the top-k step is cheap and the
matmul dominates. XLA's CPU top-k is a partial sort for float32 but a full
sort of each row for float64, so a deep search (MAP@R over big classes) is
much slower in float64 than in float32. Blocks run in two host threads,
which keeps both cores busy during XLA's single-threaded top-k.
"""

from __future__ import annotations

import concurrent.futures
import functools
import math
import os
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sphereembed import geometry

__all__ = [
    "KNNPrediction",
    "RetrievalCalibration",
    "clustering_metrics",
    "knn_classify",
    "nearest_neighbors",
    "retrieval_calibration",
    "retrieval_metrics",
    "retrieval_metrics_from_neighbors",
    "retrieval_metrics_per_query",
]

# The keys of one block, (block_size, M) in the embeddings' dtype, are kept
# near this size when block_size is not given (measured: larger blocks fall out
# of the cache and are slower on CPU).
_BLOCK_BYTES = 32 * 2**20
# Blocks run in this many host threads at most: XLA's CPU top-k is
# single-threaded, so two blocks in flight keep two cores busy.
_MAX_WORKERS = 2


# ----------------------------------------------------------------------------
# Input checks.


def _embeddings(x, name: str, ndim: int = 2) -> np.ndarray:
  """A non-empty, finite floating host array of rank ``ndim``.

  The dtype is the one JAX computes in: float64 becomes float32 unless x64
  is enabled, and float16/bfloat16 are searched in float32.
  """
  x = np.asarray(x)
  if x.ndim != ndim:
    shape = "(N, D)" if ndim == 2 else "(S, Q, D)"
    raise ValueError(f"{name} must have shape {shape}, got shape {x.shape}.")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"{name} must have a floating dtype, got {x.dtype}.")
  if x.shape[-2] == 0 or x.shape[-1] == 0:
    raise ValueError(f"{name} is empty (shape {x.shape}).")
  dtype = jax.dtypes.canonicalize_dtype(x.dtype)
  if dtype.itemsize < 4:
    dtype = np.dtype(np.float32)
  x = x.astype(dtype, copy=False)
  if not np.all(np.isfinite(x)):
    bad = np.argwhere(~np.isfinite(x))
    raise ValueError(
        f"{name} contain {len(bad)} NaN or infinite values (first at index {tuple(bad[0])}).")
  return x


def _labels(labels, num_rows: int, name: str, allow_multi_hot: bool = True) -> np.ndarray:
  """Integer ids ``(N,)`` as int64, or multi-hot ``(N, L)`` 0/1 labels as bool."""
  labels = np.asarray(labels)
  if labels.ndim == 1:
    if not np.issubdtype(labels.dtype, np.integer):
      raise ValueError(
          f"{name} of shape (N,) must be integer class ids, got dtype {labels.dtype}.")
    labels = labels.astype(np.int64)
  elif labels.ndim == 2 and allow_multi_hot:
    if not (labels.dtype == np.bool_ or np.issubdtype(labels.dtype, np.integer)):
      raise ValueError(f"multi-hot {name} must be bool or integer 0/1, got dtype {labels.dtype}.")
    if not np.all((labels == 0) | (labels == 1)):
      raise ValueError(f"multi-hot {name} must contain only 0 and 1 (or False/True).")
    labels = labels.astype(bool)
  else:
    expected = "(N,) integer class ids or (N, L) multi-hot" if allow_multi_hot else (
        "(N,) integer class ids")
    raise ValueError(f"{name} must have shape {expected}, got shape {labels.shape}.")
  if labels.shape[0] != num_rows:
    raise ValueError(
        f"{name} have {labels.shape[0]} rows but there are {num_rows} embeddings.")
  return labels


def _same_kind(query_labels: np.ndarray, reference_labels: np.ndarray) -> None:
  if query_labels.ndim != reference_labels.ndim or (
      query_labels.ndim == 2 and query_labels.shape[1] != reference_labels.shape[1]):
    raise ValueError(
        f"query and reference labels must both be class ids (N,) or both multi-hot with the "
        f"same number of columns, got shapes {query_labels.shape} and {reference_labels.shape}.")


def _pair(query, reference, exclude_self):
  """Checked ``(query, reference, exclude_self)``; ``reference=None`` is the query set."""
  query = _embeddings(query, "query")
  if reference is None:
    reference = query
    exclude_self = True if exclude_self is None else bool(exclude_self)
  else:
    reference = _embeddings(reference, "reference")
    exclude_self = bool(exclude_self)
    if reference.shape[1] != query.shape[1]:
      raise ValueError(
          f"query and reference must have the same dimension, got {query.shape[1]} and "
          f"{reference.shape[1]}.")
    if exclude_self and reference.shape[0] < query.shape[0]:
      raise ValueError(
          f"exclude_self=True needs the queries to be the first rows of the reference set, "
          f"but there are {query.shape[0]} queries and {reference.shape[0]} references.")
  dtype = np.promote_types(query.dtype, reference.dtype)
  return query.astype(dtype, copy=False), reference.astype(dtype, copy=False), exclude_self


def _check_metric(metric) -> None:
  if metric not in geometry.METRICS:
    raise ValueError(f"Unknown metric {metric!r}; expected one of {geometry.METRICS}.")


def _check_k(k, available: int, name: str = "k") -> int:
  if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"{name} must be a positive integer, got {k!r}.")
  if k > available:
    raise ValueError(
        f"{name} = {k} is larger than the {available} references available to each query "
        "(the reference set, minus the query itself when it is excluded).")
  return int(k)


# ----------------------------------------------------------------------------
# The blocked search.


def _group_size(num_references: int, k: int) -> int:
  """References per group of the two-stage top-k; 1 means a plain ``top_k``.

  The two stages cost about ``M / s`` (group minima) plus ``k * s``
  (candidates) per row, smallest at ``s = sqrt(M / k)``; below 8 the saving
  over one ``top_k`` of the whole row is not worth the extra passes.
  """
  s = math.isqrt(num_references // max(k, 1))
  return 1 if s < 8 else min(s, 1024)


def _smallest_k(keys: jax.Array, k: int, group: int) -> tuple[jax.Array, jax.Array]:
  """The ``k`` smallest entries of each row of ``keys`` and their column indices.

  Order: ascending value, then ascending column (``lax.top_k`` puts the lower
  index first among equal values). With ``group > 1`` the columns (a multiple
  of ``group``) are split into consecutive groups; the ``k`` smallest entries
  lie in the ``k`` groups whose minima come first in that order (a group
  after them has ``k`` strictly smaller entries, one in each), so only those
  ``k * group`` candidates are searched. The groups are taken in column
  order, so that ties are still resolved by column.
  """
  if group <= 1:
    values, indices = jax.lax.top_k(-keys, k)
    return -values, indices
  rows, columns = keys.shape
  num_groups = columns // group
  grouped = keys.reshape(rows * num_groups, group)
  _, chosen = jax.lax.top_k(-jnp.min(grouped, axis=-1).reshape(rows, num_groups), k)
  chosen = jnp.sort(chosen, axis=-1)
  # A gather of whole rows of `grouped` (XLA's CPU gather is slow per element).
  flat = (chosen + num_groups * jnp.arange(rows, dtype=chosen.dtype)[:, None]).reshape(-1)
  candidates = jnp.take(grouped, flat, axis=0, mode="clip").reshape(rows, k * group)
  columns_of = (chosen[:, :, None] * group + jnp.arange(group, dtype=chosen.dtype)).reshape(
      rows, k * group)
  values, positions = jax.lax.top_k(-candidates, k)
  return -values, jnp.take_along_axis(columns_of, positions, axis=1)


def _augment(x: np.ndarray, metric: str, reference: bool) -> np.ndarray:
  """Rows whose dot products are the ranking keys: ``key(q, r) = q' . r'``.

  Euclidean metrics: ``q' = [q, 1]``, ``r' = [-2 r, |r|^2]``, so the key is
  ``|r|^2 - 2 q.r``, the squared distance minus the query's own ``|q|^2``
  (same order in each row). Cosine: ``q' = [q, 1]``, ``r' = [-r, 0]``, the
  key ``-q.r``. One matmul then yields the keys, with no elementwise pass
  over the ``(block, M)`` matrix before the reduction.
  """
  column = np.ones((x.shape[0], 1), x.dtype)
  if not reference:
    return np.concatenate([x, column], axis=1)
  if metric == "cosine":
    return np.concatenate([-x, 0 * column], axis=1)
  return np.concatenate([-2 * x, np.sum(np.square(x), axis=1, keepdims=True)], axis=1)


@functools.partial(jax.jit, static_argnames=("block_size", "k", "metric", "exclude_self", "group"))
def _search_block(query, start, reference, *, block_size, k, metric, exclude_self, group):
  """Top-k of rows ``start : start + block_size`` of the (padded) augmented queries.

  ``reference`` holds the augmented references (:func:`_augment`), padded
  with rows whose key is huge. Returns ``(distances, indices)``.
  """
  block = jax.lax.dynamic_slice_in_dim(query, start, block_size, axis=0)
  # HIGHEST: GPUs and TPUs would otherwise round the products to bf16/tf32.
  keys = jnp.matmul(block, reference.T, precision=jax.lax.Precision.HIGHEST)
  values, indices = _smallest_k(keys, k + int(exclude_self), group)
  if exclude_self:
    # Drop the query's own entry where it was found, else the last one: the
    # k nearest others, in the same order.
    rows = start + jnp.arange(block_size, dtype=indices.dtype)
    own = jnp.argmax(jnp.concatenate(
        [indices == rows[:, None], jnp.ones((block_size, 1), bool)], axis=1), axis=1)
    keep = jnp.arange(k)[None, :]
    keep = keep + (keep >= own[:, None])
    values = jnp.take_along_axis(values, keep, axis=1)
    indices = jnp.take_along_axis(indices, keep, axis=1)
  if metric == "cosine":
    similarity_gap = 1 + values  # 1 - q.r
    return jnp.where(similarity_gap > 0, similarity_gap, 0), indices
  vectors = block[:, :-1]
  squared = jnp.sum(jnp.square(vectors), axis=1, keepdims=True) + values
  # `where`, not `maximum`: exact +0.0 for cancelled distances.
  squared = jnp.where(squared > 0, squared, 0)
  if metric == "squared_euclidean":
    return squared, indices
  chord = jnp.sqrt(squared)
  if metric == "euclidean":
    return chord, indices
  # great_circle from the chord: monotone in the key, so the order is kept.
  return 2 * jnp.arcsin(jnp.minimum(chord / 2, 1)), indices


def _default_block_size(num_queries: int, num_references: int, itemsize: int) -> int:
  rows = max(_BLOCK_BYTES // max(num_references * itemsize, 1), 8)
  rows = 1 << (rows.bit_length() - 1)  # a power of two: fewer distinct compilations
  return max(1, min(rows, 4096, num_queries))


def _run_blocks(query, reference, *, k, metric, exclude_self, block_size,
                on_block: Callable[[int, int, np.ndarray, np.ndarray], object]) -> list:
  """Searches all queries block by block; returns ``on_block``'s results in order.

  ``on_block(start, stop, distances, indices)`` receives the host arrays of
  queries ``start:stop`` (padding rows removed) and runs in the worker thread,
  so that per-block reductions overlap with the next block's search.
  """
  num_queries, num_references = query.shape[0], reference.shape[0]
  huge = np.finfo(query.dtype).max / 4
  for x in (query, reference):
    # |key| <= |r|^2 + 2 |q| |r| stays below the padding key `huge`.
    with np.errstate(over="ignore"):
      too_large = np.max(np.sum(np.square(x, dtype=np.float64), axis=1)) >= huge / 4
    if too_large:
      raise ValueError(
          f"embeddings are too large for {query.dtype}: their squared norms reach the overflow "
          "range.")
  if block_size is None:
    block_size = _default_block_size(num_queries, num_references, query.dtype.itemsize)
  elif isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or (
      block_size < 1):
    raise ValueError(f"block_size must be a positive integer, got {block_size!r}.")
  block_size = int(min(block_size, num_queries))
  num_blocks = -(-num_queries // block_size)
  padded = num_blocks * block_size
  query = _augment(query, metric, reference=False)
  if padded > num_queries:  # one block shape for all: one compilation
    query = np.pad(query, ((0, padded - num_queries), (0, 0)))
  k_search = k + int(exclude_self)
  group = _group_size(num_references, k_search)
  reference = _augment(reference, metric, reference=True)
  if group > 1 and num_references % group:
    # Padding references: key |r|^2 - 2 q.r = huge, never among the k nearest.
    pad = np.zeros((-num_references % group, reference.shape[1]), reference.dtype)
    pad[:, -1] = huge
    reference = np.concatenate([reference, pad])
  # On the device once; the kernel slices its block out of the padded queries.
  query, reference = jnp.asarray(query), jnp.asarray(reference)
  kernel = functools.partial(
      _search_block, block_size=block_size, k=k, metric=metric, exclude_self=exclude_self,
      group=group)

  def work(index):
    start = index * block_size
    stop = min(start + block_size, num_queries)
    distances, indices = kernel(query, np.int32(start), reference)
    distances, indices = np.asarray(distances), np.asarray(indices)
    return on_block(start, stop, distances[:stop - start], indices[:stop - start])

  cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  workers = min(num_blocks, _MAX_WORKERS, cpus or 1)
  if workers <= 1:
    return [work(index) for index in range(num_blocks)]
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    return list(pool.map(work, range(num_blocks)))


def nearest_neighbors(
    query,
    reference=None,
    *,
    k: int,
    metric: geometry.Metric = "euclidean",
    exclude_self: bool | None = None,
    block_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """Exact ``k`` nearest references of every query, by a blocked top-k search.

  The queries are processed ``block_size`` rows at a time; each block's
  ranking keys against all references (one matmul) are reduced to their
  ``k`` smallest with ``jax.lax.top_k`` in one jitted kernel (the last block
  is padded, so there is one compilation). Peak memory is a few blocks of
  ``block_size x M`` keys; the default ``block_size`` keeps one block near
  32 MB. Blocks run in up to two host threads.

  Order and ties: ascending distance, equal keys in ascending reference
  index; see the module docstring for the keys and how the returned
  distances follow from them (as :func:`sphereembed.geometry.pairwise_distances`
  computes them, up to rounding).

  Args:
    query: ``(Q, D)`` floating array.
    reference: ``(M, D)`` floating array, or ``None`` to search the queries
      themselves.
    k: number of neighbours, ``1 <= k <= M`` (``M - 1`` when the query itself
      is excluded).
    metric: a metric of :func:`sphereembed.geometry.pairwise_distances`:
      ``"euclidean"``, ``"squared_euclidean"``, ``"cosine"`` or
      ``"great_circle"``.
    exclude_self: leave out reference ``i`` for query ``i``. ``None`` (the
      default) means ``True`` when ``reference`` is ``None`` and ``False``
      otherwise; ``True`` with a reference set requires the queries to be its
      first ``Q`` rows.
    block_size: queries per block (default: chosen from ``M``).

  Returns:
    ``(distances, indices)``: NumPy arrays of shape ``(Q, k)``, the distances
    in the dtype of the search (the embeddings' float32 or float64; float64
    needs x64 enabled, float16 and bfloat16 are searched in float32) and the
    reference indices as int64.

  Raises:
    ValueError: for arrays that are not 2-D floating, empty or non-finite,
      mismatched dimensions, squared norms near the dtype's overflow range,
      an unknown metric, or ``k`` out of range.

  Example:
    >>> import numpy as np
    >>> from sphereembed.evaluation.retrieval import nearest_neighbors
    >>> points = np.array([[0.0], [1.0], [2.0], [4.0]])
    >>> distances, indices = nearest_neighbors(points, k=2)
    >>> indices.tolist()  # point 1 is as far from 0 as from 2: index 0 comes first
    [[1, 2], [0, 2], [1, 0], [2, 1]]
    >>> print([f"{d:.1f}" for d in distances[1]])
    ['1.0', '1.0']
  """
  _check_metric(metric)
  query, reference, exclude_self = _pair(query, reference, exclude_self)
  k = _check_k(k, reference.shape[0] - int(exclude_self))
  blocks = _run_blocks(query, reference, k=k, metric=metric, exclude_self=exclude_self,
                       block_size=block_size, on_block=lambda start, stop, d, i: (d, i))
  distances = np.concatenate([d for d, _ in blocks])
  indices = np.concatenate([i for _, i in blocks]).astype(np.int64)
  return distances, indices


# ----------------------------------------------------------------------------
# Labels: relevance, relevant counts and votes.


def _packed(hot: np.ndarray) -> np.ndarray:
  """Multi-hot rows ``(N, L)`` as ``(N, W)`` uint64 bit sets."""
  bits = np.packbits(hot, axis=1)
  bits = np.pad(bits, ((0, 0), (0, -bits.shape[1] % 8)))
  return np.ascontiguousarray(bits).view(np.uint64)


class _Labels:
  """Query and reference labels prepared for relevance tests.

  Class ids are compared as int64; multi-hot labels as 64-bit words.
  """

  def __init__(self, query_labels: np.ndarray, reference_labels: np.ndarray):
    self.multi_hot = query_labels.ndim == 2
    if self.multi_hot:
      self.query, self.reference = _packed(query_labels), _packed(reference_labels)
    else:
      self.query, self.reference = query_labels, reference_labels

  def relevance(self, start: int, stop: int, indices: np.ndarray) -> np.ndarray:
    """``(b, k)`` bool: reference ``indices[i, j]`` is relevant to query ``start + i``."""
    if not self.multi_hot:
      return self.reference[indices] == self.query[start:stop, None]
    # Rows in chunks, so the (rows, k, words) temporary stays small.
    words = self.query.shape[1]
    step = max(1, (4 * 2**20) // max(indices.shape[1] * words, 1))
    query = self.query[start:stop, None]
    out = np.empty(indices.shape, bool)
    for i in range(0, indices.shape[0], step):
      out[i:i + step] = (self.reference[indices[i:i + step]] & query[i:i + step]).any(axis=-1)
    return out

  def self_relevance(self, num_queries: int) -> np.ndarray:
    """``(Q,)`` bool: reference ``i`` (the query's own entry) is relevant to query ``i``."""
    if not self.multi_hot:
      return self.reference[:num_queries] == self.query
    return (self.reference[:num_queries] & self.query).any(axis=-1)

  def relevant_counts(self, exclude_self: bool) -> np.ndarray:
    """``(Q,)`` int64: number of references relevant to each query (``R``)."""
    num_queries = self.query.shape[0]
    if not self.multi_hot:
      classes, counts = np.unique(self.reference, return_counts=True)
      position = np.minimum(np.searchsorted(classes, self.query), len(classes) - 1)
      counts = np.where(classes[position] == self.query, counts[position], 0)
    else:
      # Distinct label sets of the references with their multiplicities.
      patterns, multiplicity = np.unique(self.reference, axis=0, return_counts=True)
      counts = np.empty(num_queries, np.int64)
      step = max(1, (16 * 2**20) // max(patterns.size, 1))
      for i in range(0, num_queries, step):
        shares = (self.query[i:i + step, None, :] & patterns[None]).any(axis=-1)
        counts[i:i + step] = shares.astype(np.int64) @ multiplicity
    if exclude_self:
      counts = counts - self.self_relevance(num_queries)
    return counts.astype(np.int64)

  def votes(self, indices: np.ndarray):
    """``(rows, codes, ranks)`` of every vote of the neighbours ``indices`` ``(b, k)``.

    A neighbour votes for its class id, or for each of its multi-hot labels
    (the code is the label's column).
    """
    rows = np.broadcast_to(np.arange(indices.shape[0])[:, None], indices.shape)
    ranks = np.broadcast_to(np.arange(indices.shape[1])[None, :], indices.shape)
    if not self.multi_hot:
      return rows.ravel(), self.reference[indices].ravel(), ranks.ravel()
    columns = self.reference.shape[1] * 64
    hot = np.unpackbits(self.reference[indices].view(np.uint8), axis=-1,
                        count=columns)  # (b, k, L')
    row, rank, code = np.nonzero(hot)
    return row, code.astype(np.int64), rank


def _majority(rows: np.ndarray, codes: np.ndarray, ranks: np.ndarray, num_rows: int):
  """Per row, the code with the most votes and its vote count.

  Ties: the code whose first vote has the smallest rank, then the smallest
  code. Rows without any vote get code -1 and 0 votes (the default code is
  only used where a vote exists).
  """
  prediction = np.full(num_rows, -1, np.int64)
  count = np.zeros(num_rows, np.int64)
  if rows.size == 0:
    return prediction, count
  order = np.lexsort((ranks, codes, rows))
  rows, codes, ranks = rows[order], codes[order], ranks[order]
  starts = np.ones(rows.size, bool)
  starts[1:] = (rows[1:] != rows[:-1]) | (codes[1:] != codes[:-1])
  run = np.cumsum(starts) - 1
  run_count = np.bincount(run)
  run_row, run_code, run_first = rows[starts], codes[starts], ranks[starts]
  # Best run per row: most votes, then earliest first vote, then smallest code
  # (runs of a row are already in ascending code order).
  best = np.lexsort((run_first, -run_count, run_row))
  first_of_row = np.ones(best.size, bool)
  first_of_row[1:] = run_row[best][1:] != run_row[best][:-1]
  chosen = best[first_of_row]
  prediction[run_row[chosen]] = run_code[chosen]
  count[run_row[chosen]] = run_count[chosen]
  return prediction, count


# ----------------------------------------------------------------------------
# kNN classification.


class KNNPrediction(NamedTuple):
  """Majority-vote kNN predictions.

  Attributes:
    predictions: ``(Q,)`` predicted class ids (for multi-hot labels: the
      predicted label's column, -1 when no neighbour has any label).
    confidences: ``(Q,)`` float64 vote share of the prediction, ``votes / k``.
  """
  predictions: np.ndarray
  confidences: np.ndarray


def knn_classify(
    query,
    reference,
    reference_labels,
    *,
    k: int,
    metric: geometry.Metric = "euclidean",
    exclude_self: bool | None = None,
    block_size: int | None = None,
) -> KNNPrediction:
  """Majority vote of the ``k`` nearest references (exact search, blocked).

  Each of the ``k`` neighbours votes for its class (a multi-hot neighbour for
  each of its labels); the class with the most votes wins. Tie rule: among
  the classes with the most votes, the one whose nearest member comes first
  in the neighbour order (that is, the class of the nearest neighbour among
  the tied classes); for multi-hot labels, remaining ties (labels of the same
  neighbour) go to the smaller label column.

  Args:
    query: ``(Q, D)`` floating array.
    reference: ``(M, D)`` floating array, or ``None`` for leave-one-out
      classification of the queries themselves.
    reference_labels: ``(M,)`` integer class ids or ``(M, L)`` multi-hot
      labels of the reference set (of the queries when ``reference`` is
      ``None``).
    k: number of voting neighbours.
    metric: a metric of :func:`sphereembed.geometry.pairwise_distances`.
    exclude_self: as in :func:`nearest_neighbors`.
    block_size: queries per search block.

  Returns:
    A :class:`KNNPrediction` of NumPy arrays.

  Raises:
    ValueError: as :func:`nearest_neighbors`, and for labels that are not
      integer ids or 0/1 multi-hot rows matching the references.

  Example:
    >>> import numpy as np
    >>> from sphereembed.evaluation.retrieval import knn_classify
    >>> reference = np.array([[0.0], [1.0], [2.0], [10.0]])
    >>> result = knn_classify(np.array([[1.4], [9.0]]), reference, [7, 7, 3, 3], k=3)
    >>> result.predictions.tolist(), result.confidences.round(3).tolist()
    ([7, 3], [0.667, 0.667])
  """
  _check_metric(metric)
  query, reference_array, exclude_self = _pair(query, reference, exclude_self)
  reference_labels = _labels(reference_labels, reference_array.shape[0], "reference_labels")
  k = _check_k(k, reference_array.shape[0] - int(exclude_self))
  labels = _Labels(reference_labels[:0], reference_labels)

  def on_block(start, stop, distances, indices):
    return _majority(*labels.votes(indices), stop - start)

  blocks = _run_blocks(query, reference_array, k=k, metric=metric, exclude_self=exclude_self,
                       block_size=block_size, on_block=on_block)
  predictions = np.concatenate([p for p, _ in blocks])
  votes = np.concatenate([v for _, v in blocks])
  return KNNPrediction(predictions, votes / k)


# ----------------------------------------------------------------------------
# Retrieval metrics.


def _ks(ks) -> tuple[int, ...]:
  if isinstance(ks, (int, np.integer)):
    ks = (ks,)
  ks = tuple(ks)
  if not ks:
    raise ValueError("ks must hold at least one cut-off k.")
  for k in ks:
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
      raise ValueError(f"every k in ks must be a positive integer, got {k!r}.")
  return tuple(dict.fromkeys(int(k) for k in ks))  # duplicates dropped, order kept


def _per_query(relevant: np.ndarray, counts: np.ndarray, ks, knn) -> dict[str, np.ndarray]:
  """Per-query metrics of one block from its ``(b, K)`` relevance matrix.

  ``counts`` are the ``R`` of the queries; entries of lone queries (``R = 0``)
  are NaN for P@1, R-precision, MAP@R and mAP@k.
  """
  rows, depth = relevant.shape
  ranks = np.arange(1, depth + 1)
  hits = np.cumsum(relevant, axis=1)  # relevant references among the first i
  # sum over relevant ranks i of precision@i, accumulated along the ranks.
  precision_sum = np.cumsum(np.where(relevant, hits / ranks, 0.0), axis=1)
  lone = counts == 0
  last = np.clip(counts, 1, depth) - 1  # rank R (clipped only for lone queries)
  take = lambda a, i: np.take_along_axis(a, i[:, None], axis=1)[:, 0]
  nan_if_lone = lambda v: np.where(lone, np.nan, v)
  safe_counts = np.maximum(counts, 1)
  out = {
      "precision_at_1": nan_if_lone(relevant[:, 0].astype(np.float64)),
      "r_precision": nan_if_lone(take(hits, last) / safe_counts),
      "map_at_r": nan_if_lone(take(precision_sum, last) / safe_counts),
  }
  for k in ks:
    out[f"map_at_{k}"] = nan_if_lone(precision_sum[:, k - 1] / np.minimum(k, safe_counts))
  for k in ks:
    out[f"recall_at_{k}"] = hits[:, k - 1].astype(bool).astype(np.float64)
  out["knn_correct"] = knn.astype(np.float64)
  return out


def retrieval_metrics_per_query(
    query,
    query_labels,
    reference=None,
    reference_labels=None,
    *,
    ks: Sequence[int] = (1, 5, 10),
    metric: geometry.Metric = "euclidean",
    knn_k: int | None = None,
    exclude_self: bool | None = None,
    block_size: int | None = None,
) -> dict[str, np.ndarray]:
  """Per-query values of the metrics that :func:`retrieval_metrics` averages.

  For per-sample analyses (e.g. the correlation of a query's uncertainty
  with its MAP@R). Arguments and conventions as :func:`retrieval_metrics`.

  Returns:
    A dict of ``(Q,)`` NumPy arrays: ``precision_at_1``, ``r_precision``,
    ``map_at_r``, ``map_at_{k}`` (float64, NaN for lone queries),
    ``recall_at_{k}`` (0.0 or 1.0), ``knn_correct`` (0.0 or 1.0),
    ``knn_prediction`` (int64 class id, or label column for multi-hot labels,
    -1 when no neighbour has a label) and ``relevant_count`` (``R``, int64).

  Example:
    >>> import numpy as np
    >>> from sphereembed.evaluation.retrieval import retrieval_metrics_per_query
    >>> x = np.array([[0.0], [1.0], [2.0], [3.0]])
    >>> scores = retrieval_metrics_per_query(x, [0, 1, 0, 2], ks=(1,))
    >>> scores["map_at_r"].tolist(), scores["relevant_count"].tolist()
    ([0.0, nan, 0.0, nan], [1, 0, 1, 0])
  """
  _check_metric(metric)
  same_set = reference is None
  if same_set and reference_labels is not None:
    raise ValueError("reference_labels given without reference.")
  if not same_set and reference_labels is None:
    raise ValueError("reference given without reference_labels.")
  query, reference_array, exclude_self = _pair(query, reference, exclude_self)
  query_labels = _labels(query_labels, query.shape[0], "query_labels")
  if same_set:
    reference_labels = query_labels
  else:
    reference_labels = _labels(reference_labels, reference_array.shape[0], "reference_labels")
    _same_kind(query_labels, reference_labels)
  available = reference_array.shape[0] - int(exclude_self)
  ks = _ks(ks)
  for k in ks:
    _check_k(k, available, "every k in ks")
  knn_k = _check_k(max(ks) if knn_k is None else knn_k, available, "knn_k")

  labels = _Labels(query_labels, reference_labels)
  counts = labels.relevant_counts(exclude_self)
  # MAP@R and R-precision need the top R of every query: search that deep.
  depth = int(max(max(ks), knn_k, counts.max()))

  def on_block(start, stop, distances, indices):
    return _block_metrics(labels, start, stop, indices, counts[start:stop], ks, knn_k)

  blocks = _run_blocks(query, reference_array, k=depth, metric=metric, exclude_self=exclude_self,
                       block_size=block_size, on_block=on_block)
  result = {name: np.concatenate([b[name] for b in blocks]) for name in blocks[0]}
  result["relevant_count"] = counts
  return result


def _block_metrics(labels: _Labels, start: int, stop: int, indices: np.ndarray,
                   counts: np.ndarray, ks, knn_k: int) -> dict[str, np.ndarray]:
  """Per-query metrics of queries ``start:stop`` from their ranked neighbours ``indices``."""
  relevant = labels.relevance(start, stop, indices)
  prediction, _ = _majority(*labels.votes(indices[:, :knn_k]), stop - start)
  if labels.multi_hot:
    hot = np.unpackbits(labels.query[start:stop].view(np.uint8), axis=-1)
    correct = (prediction >= 0) & hot[np.arange(stop - start), np.maximum(prediction, 0)].astype(
        bool)
  else:
    correct = prediction == labels.query[start:stop]
  out = _per_query(relevant, counts, ks, correct)
  out["knn_prediction"] = prediction
  return out


def retrieval_metrics_from_neighbors(
    neighbors,
    query_labels,
    reference_labels,
    *,
    ks: Sequence[int] = (1, 5, 10),
    knn_k: int | None = None,
    queries_in_references: bool = False,
) -> dict[str, np.ndarray]:
  """The per-query metrics of :func:`retrieval_metrics_per_query` from neighbour lists you searched.

  For neighbours found by another search (faiss, an approximate index, a
  database): the metrics are then computed exactly as for our own search.
  Queries may be passed in chunks, each with its rows of ``query_labels``.

  Args:
    neighbors: ``(Q, depth)`` int indices into the references, nearest first,
      each query's own entry left out when ``queries_in_references``.
    query_labels: ``(Q,)`` int class ids or ``(Q, L)`` multi-hot labels.
    reference_labels: the labels of all references, of the same kind.
    ks: the cut-offs of mAP@k and recall@k.
    knn_k: the neighbours of the kNN vote (default ``max(ks)``).
    queries_in_references: the queries are references too (a leave-one-out
      evaluation): each query's own entry is not counted among its ``R``
      relevant references.

  Returns:
    The dict of :func:`retrieval_metrics_per_query`.

  Raises:
    ValueError: indices out of range, or lists shorter than a query's ``R``
      (MAP@R and R-precision need the top ``R``), ``max(ks)`` or ``knn_k``.

  Example:
    >>> import numpy as np
    >>> from sphereembed.evaluation.retrieval import retrieval_metrics_from_neighbors
    >>> scores = retrieval_metrics_from_neighbors([[1, 2], [0, 2]], [0, 1], [0, 1, 0], ks=(1,))
    >>> scores["precision_at_1"].tolist(), scores["map_at_r"].tolist()
    ([0.0, 0.0], [0.25, 0.0])
  """
  neighbors = np.asarray(neighbors)
  if neighbors.ndim != 2 or not np.issubdtype(neighbors.dtype, np.integer):
    raise ValueError(f"neighbors must be a (Q, depth) int array, got {neighbors.dtype} "
                     f"{neighbors.shape}.")
  query_labels = _labels(query_labels, neighbors.shape[0], "query_labels")
  reference_labels = np.asarray(reference_labels)
  reference_labels = _labels(reference_labels,
                             reference_labels.shape[0] if reference_labels.ndim else 0,
                             "reference_labels")
  _same_kind(query_labels, reference_labels)
  if neighbors.size and (neighbors.min() < 0 or neighbors.max() >= reference_labels.shape[0]):
    raise ValueError(f"neighbors must index the {reference_labels.shape[0]} references, got "
                     f"values in [{neighbors.min()}, {neighbors.max()}].")
  ks = _ks(ks)
  knn_k = max(ks) if knn_k is None else knn_k
  labels = _Labels(query_labels, reference_labels)
  counts = labels.relevant_counts(exclude_self=False)
  if queries_in_references:
    # Each query is among the references and relevant to itself (with any label): one fewer.
    counts = counts - (query_labels.any(axis=1) if labels.multi_hot else 1)
  depth = neighbors.shape[1]
  needed = int(max(max(ks), knn_k, counts.max(initial=0)))
  if depth < needed:
    raise ValueError(f"neighbors has {depth} per query; MAP@R, R-precision, the ks and knn_k "
                     f"need the nearest {needed}.")
  result = _block_metrics(labels, 0, neighbors.shape[0], neighbors, counts, ks, knn_k)
  result["relevant_count"] = counts
  return result


def retrieval_metrics(
    query,
    query_labels,
    reference=None,
    reference_labels=None,
    *,
    ks: Sequence[int] = (1, 5, 10),
    metric: geometry.Metric = "euclidean",
    knn_k: int | None = None,
    exclude_self: bool | None = None,
    block_size: int | None = None,
) -> dict[str, float]:
  """Retrieval and kNN metrics of queries against a labelled reference set.

  All metrics come from one exact top-k search (:func:`nearest_neighbors`,
  blocked). With ``R`` the number of references relevant to a query (see the
  module docstring; its own entry excluded when the query set is the
  reference set) and ``rel_i`` whether the neighbour at rank ``i`` is
  relevant, ``P@i`` the fraction of relevant neighbours among the first
  ``i``:

  * ``precision_at_1``: ``rel_1``.
  * ``r_precision``: ``P@R``, the fraction of relevant ones among the first
    ``R`` neighbours.
  * ``map_at_r``: MAP@R, ``(1 / R) sum_{i <= R} rel_i P@i`` (Musgrave et al.).
  * ``map_at_{k}``: mAP@k, ``(1 / min(k, R)) sum_{i <= k} rel_i P@i`` (the
    LAM code's convention; 1 when the first ``min(k, R)`` are all relevant).
  * ``recall_at_{k}``: 1 when at least one of the first ``k`` neighbours is
    relevant, else 0 (so ``recall_at_1`` equals ``precision_at_1`` when there
    are no lone queries).
  * ``knn_accuracy``: accuracy of the majority vote of the ``knn_k``
    nearest neighbours (default ``max(ks)``), with the tie rule of
    :func:`knn_classify`; for multi-hot labels a prediction is correct when
    the query has the predicted label.

  Each is averaged over the queries. Lone queries (``R = 0``) are left out of
  P@1, R-precision, MAP@R and mAP@k, as pytorch-metric-learning's
  ``AccuracyCalculator`` does (those metrics are NaN if every query is
  lone); they stay in recall@k and the kNN accuracy, where they count as
  misses. MAP@R is exact: the search goes ``max(R)`` deep (the largest
  relevant set), so its cost grows with the largest class; memory stays a
  few blocks of ``block_size x max(R)`` entries.

  Args:
    query: ``(Q, D)`` floating array.
    query_labels: ``(Q,)`` integer class ids or ``(Q, L)`` multi-hot labels.
    reference: ``(M, D)`` floating array, or ``None``: the queries are their
      own reference set, each query's own entry left out.
    reference_labels: labels of ``reference``, of the same kind as
      ``query_labels``; ``None`` exactly when ``reference`` is.
    ks: the cut-offs of mAP@k and recall@k; each at most the number of
      references available to a query.
    metric: a metric of :func:`sphereembed.geometry.pairwise_distances`.
    knn_k: neighbours voting in ``knn_accuracy`` (default ``max(ks)``).
    exclude_self: as in :func:`nearest_neighbors` (default: only when
      ``reference`` is ``None``).
    block_size: queries per search block.

  Returns:
    A flat dict of Python floats with the keys ``precision_at_1``,
    ``r_precision``, ``map_at_r``, ``map_at_{k}`` and ``recall_at_{k}`` for
    each k in ``ks``, and ``knn_accuracy``.

  Raises:
    ValueError: for embeddings that are not 2-D floating, empty or
      non-finite; labels that are not integer ids or 0/1 multi-hot rows, or
      whose length differs from the embeddings'; mismatched label kinds; a
      ``k`` larger than the references available; an unknown metric.

  References:
    Musgrave, Belongie & Lim, "A Metric Learning Reality Check", ECCV 2020
    (MAP@R, R-precision); Warburg et al., "Bayesian Metric Learning for
    Uncertainty Quantification in Image Retrieval", NeurIPS 2023 (mAP@k).

  Example:
    >>> import numpy as np
    >>> from sphereembed.evaluation.retrieval import retrieval_metrics
    >>> x = np.array([[0.0], [0.1], [1.0], [1.2], [5.0]])
    >>> metrics = retrieval_metrics(x, [0, 0, 1, 1, 0], ks=(1, 2))
    >>> print({name: f"{value:.3f}" for name, value in metrics.items()})
    {'precision_at_1': '0.800', 'r_precision': '0.600', 'map_at_r': '0.600',
     'map_at_1': '0.800', 'map_at_2': '0.600', 'recall_at_1': '0.800',
     'recall_at_2': '0.800', 'knn_accuracy': '0.800'}
  """
  scores = retrieval_metrics_per_query(
      query, query_labels, reference, reference_labels, ks=ks, metric=metric, knn_k=knn_k,
      exclude_self=exclude_self, block_size=block_size)
  ks = _ks(ks)
  valid = scores["relevant_count"] > 0

  def mean(values, over):
    return float(np.mean(values[over])) if np.any(over) else math.nan

  everyone = np.ones_like(valid)
  out = {name: mean(scores[name], valid) for name in ("precision_at_1", "r_precision", "map_at_r")}
  out.update({f"map_at_{k}": mean(scores[f"map_at_{k}"], valid) for k in ks})
  out.update({f"recall_at_{k}": mean(scores[f"recall_at_{k}"], everyone) for k in ks})
  out["knn_accuracy"] = mean(scores["knn_correct"], everyone)
  return out


# ----------------------------------------------------------------------------
# Clustering.


def clustering_metrics(embeddings, labels, *, num_clusters: int | None = None, seed: int = 0,
                       n_init: int = 1) -> dict[str, float]:
  """NMI and AMI between k-means clusters of the embeddings and the class labels.

  Clusters come from scikit-learn's ``KMeans`` (k-means++ initialisation,
  euclidean; on unit embeddings this groups by angle as well), with
  ``num_clusters`` clusters, by default the number of distinct labels, as
  pytorch-metric-learning's ``AccuracyCalculator`` does. NMI is
  ``normalized_mutual_info_score`` (arithmetic normalisation), AMI
  ``adjusted_mutual_info_score``, both from scikit-learn.

  Args:
    embeddings: ``(N, D)`` floating array.
    labels: ``(N,)`` integer class ids.
    num_clusters: number of k-means clusters (default: distinct labels).
    seed: ``random_state`` of ``KMeans``.
    n_init: number of k-means runs (the best inertia is kept).

  Returns:
    ``{"nmi": ..., "ami": ...}`` as Python floats.

  Raises:
    ImportError: when scikit-learn is not installed.
    ValueError: for bad embeddings or labels, or ``num_clusters`` outside
      ``[1, N]``.

  Example:
    >>> import numpy as np
    >>> from sphereembed.evaluation.retrieval import clustering_metrics
    >>> x = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]])
    >>> print({name: f"{value:.2f}" for name, value in clustering_metrics(x, [0, 0, 1, 1]).items()})
    {'nmi': '1.00', 'ami': '1.00'}
  """
  try:
    from sklearn import cluster, metrics  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(
        "clustering_metrics needs scikit-learn: pip install scikit-learn") from e
  embeddings = _embeddings(embeddings, "embeddings")
  labels = _labels(labels, embeddings.shape[0], "labels", allow_multi_hot=False)
  if num_clusters is None:
    num_clusters = len(np.unique(labels))
  if isinstance(num_clusters, bool) or not isinstance(num_clusters, (int, np.integer)) or not (
      1 <= num_clusters <= embeddings.shape[0]):
    raise ValueError(
        f"num_clusters must be an integer in [1, {embeddings.shape[0]}], got {num_clusters!r}.")
  kmeans = cluster.KMeans(n_clusters=int(num_clusters), n_init=n_init, random_state=seed)
  clusters = kmeans.fit_predict(embeddings)
  return {"nmi": float(metrics.normalized_mutual_info_score(labels, clusters)),
          "ami": float(metrics.adjusted_mutual_info_score(labels, clusters))}


# ----------------------------------------------------------------------------
# Retrieval calibration (LAM protocol).


class RetrievalCalibration(NamedTuple):
  """Predictions and confidences of stochastic-embedding 1-NN retrieval.

  Attributes:
    predictions: ``(Q,)`` int64 predicted class ids (the mode of the samples'
      1-NN labels).
    confidences: ``(Q,)`` float64 vote shares of the predictions, in
      ``(0, 1]``.
    correct: ``(Q,)`` bool, prediction equals the query's label.
    ece: expected calibration error of ``(confidences, correct)`` as a
      fraction.
  """
  predictions: np.ndarray
  confidences: np.ndarray
  correct: np.ndarray
  ece: float


def _expected_calibration_error(confidences: np.ndarray, correct: np.ndarray,
                                num_bins: int) -> float:
  """ECE with equal-width bins over [0, 1], the top bin closed (a confidence of 1.0 lands in it)."""
  edges = np.arange(num_bins + 1) / num_bins
  bins = np.clip(np.searchsorted(edges, confidences, side="right") - 1, 0, num_bins - 1)
  count = np.bincount(bins, minlength=num_bins)
  confidence_sum = np.bincount(bins, weights=confidences, minlength=num_bins)
  correct_sum = np.bincount(bins, weights=correct.astype(np.float64), minlength=num_bins)
  return float(np.sum(np.abs(correct_sum - confidence_sum)) / len(confidences))


def retrieval_calibration(
    sample_embeddings,
    query_labels,
    reference,
    reference_labels,
    *,
    num_bins: int = 15,
    metric: geometry.Metric = "euclidean",
    block_size: int | None = None,
) -> RetrievalCalibration:
  """Calibration of 1-NN retrieval with stochastic embeddings (the LAM protocol).

  Each query comes as ``S`` sampled embeddings (e.g. draws from a Laplace
  posterior or from MC dropout). Every sample retrieves its nearest reference
  (exact search); the prediction is the mode of the ``S`` retrieved labels,
  ties going to the smallest class id (the convention of ``torch.mode`` and
  ``scipy.stats.mode``), and the confidence is the mode's vote share
  ``count / S``. The ECE uses equal-width bins over [0, 1] with the top bin
  closed (a confidence of exactly 1.0 lands in it), as
  :func:`sphereembed.evaluation.calibration.expected_calibration_error`.

  Args:
    sample_embeddings: ``(S, Q, D)`` floating array, ``S`` samples of each of
      the ``Q`` query embeddings.
    query_labels: ``(Q,)`` integer class ids.
    reference: ``(M, D)`` floating array (a set distinct from the queries).
    reference_labels: ``(M,)`` integer class ids.
    num_bins: bins of the ECE.
    metric: a metric of :func:`sphereembed.geometry.pairwise_distances`.
    block_size: queries per search block.

  Returns:
    A :class:`RetrievalCalibration`.

  Raises:
    ValueError: for bad shapes, empty or non-finite embeddings, labels that
      are not integer ids of matching length, ``num_bins < 1``.

  References:
    Warburg, Miani, Brack & Hauberg, "Bayesian Metric Learning for
    Uncertainty Quantification in Image Retrieval", NeurIPS 2023.

  Example:
    >>> import numpy as np
    >>> from sphereembed.evaluation.retrieval import retrieval_calibration
    >>> reference = np.array([[0.0], [1.0]])
    >>> # S = 3 samples of Q = 2 queries; their 1-NN labels are [0, 0, 1] and [1, 0, 0].
    >>> samples = np.array([[[0.1], [0.9]], [[0.2], [0.4]], [[0.7], [0.3]]])
    >>> result = retrieval_calibration(samples, [0, 1], reference, [0, 1], num_bins=10)
    >>> result.predictions.tolist(), result.confidences.round(3).tolist(), result.correct.tolist()
    ([0, 0], [0.667, 0.667], [True, False])
    >>> print(f"{result.ece:.3f}")  # one bin: confidence 0.667, accuracy 0.5
    0.167
  """
  _check_metric(metric)
  if isinstance(num_bins, bool) or not isinstance(num_bins, (int, np.integer)) or num_bins < 1:
    raise ValueError(f"num_bins must be a positive integer, got {num_bins!r}.")
  samples = _embeddings(sample_embeddings, "sample_embeddings", ndim=3)
  num_samples, num_queries = samples.shape[:2]
  query_labels = _labels(query_labels, num_queries, "query_labels", allow_multi_hot=False)
  reference = _embeddings(reference, "reference")
  reference_labels = _labels(reference_labels, reference.shape[0], "reference_labels",
                             allow_multi_hot=False)
  if reference.shape[1] != samples.shape[2]:
    raise ValueError(
        f"sample_embeddings and reference must have the same dimension, got {samples.shape[2]} "
        f"and {reference.shape[1]}.")
  retrieved = np.empty((num_queries, num_samples), np.int64)
  for s in range(num_samples):
    _, indices = nearest_neighbors(samples[s], reference, k=1, metric=metric,
                                   exclude_self=False, block_size=block_size)
    retrieved[:, s] = reference_labels[indices[:, 0]]
  rows = np.repeat(np.arange(num_queries), num_samples)
  # All votes share rank 0, so ties go to the smallest class id.
  predictions, votes = _majority(rows, retrieved.ravel(), np.zeros(rows.size, np.int64),
                                 num_queries)
  confidences = votes / num_samples
  correct = predictions == query_labels
  return RetrievalCalibration(predictions, confidences, correct,
                              _expected_calibration_error(confidences, correct, int(num_bins)))
