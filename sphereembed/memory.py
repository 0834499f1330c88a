"""Cross-batch memory (XBM) as explicit functional state.

XBM (Wang et al. 2020) keeps the embeddings and labels of the last ``M``
samples in a FIFO ring buffer and scores each batch against all of them, so a
pair loss sees ``B x M`` pairs instead of ``B x B``. Here the buffer is a
:class:`Memory` pytree (no hidden state): :func:`memory_init` creates it,
:func:`memory_update` enqueues a batch and returns the new memory, and
:func:`memory_loss` evaluates a pair loss with the batch as queries and the
memory entries as references. Everything is jit-compatible with static
shapes (the position and the valid flags are arrays).

A training step, as PML's ``CrossBatchMemory``::

  def step(params, memory, x, y):
    def loss_fn(params):
      e = model.apply(params, x)
      return memory_loss(losses.multi_similarity, e, y, memory), e
    (loss, e), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return grads, memory_update(memory, e, y)

Example:
  >>> import jax.numpy as jnp
  >>> from sphereembed.memory import memory_init, memory_update
  >>> memory = memory_init(3, 2)
  >>> memory = memory_update(memory, jnp.ones((2, 2)), jnp.array([4, 5]))
  >>> memory = memory_update(memory, jnp.zeros((2, 2)), jnp.array([6, 7]))
  >>> memory.labels.tolist(), memory.valid.tolist(), int(memory.position)
  ([7, 5, 6], [True, True, True], 1)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from sphereembed import geometry
from sphereembed.losses import _common, checks
from sphereembed.losses._pair_weighting import (
    check_hyperparameter,
    check_pair_inputs,
    pair_masks_with_references,
)
from sphereembed.losses._pairs import contrastive

__all__ = ["Memory", "memory_init", "memory_loss", "memory_update"]


class Memory(NamedTuple):
  """The state of a cross-batch memory of ``M`` slots (a pytree).

  Its fields:

  * ``embeddings``: ``(M, D)`` stored embeddings (no gradient flows into them);
  * ``labels``: ``(M,)`` int class ids, or ``(M, C)`` multi-hot labels;
  * ``valid``: ``(M,)`` bool, the slots written at least once;
  * ``position``: int32 scalar, the next slot to write (the oldest entry once
    the memory is full).
  """

  embeddings: jax.Array
  labels: jax.Array
  valid: jax.Array
  position: jax.Array


def memory_init(size: int, dim: int, dtype=jnp.float32, *,
                num_labels: int | None = None) -> Memory:
  """An empty memory of ``size`` slots for ``dim``-dimensional embeddings.

  Args:
    size: the number of slots ``M`` (a positive int).
    dim: the embedding dimension ``D``.
    dtype: the floating dtype of the stored embeddings.
    num_labels: ``None`` for int class ids (``(M,)`` int32 labels), or ``C``
      for multi-hot labels (``(M, C)`` int32).

  Returns:
    A :class:`Memory` with zero embeddings, no valid slot and position 0.

  Raises:
    ValueError: for a non-positive size, a negative dim or a non-floating dtype.
  """
  if int(size) != size or size < 1:
    raise ValueError(f"size must be a positive int, got {size!r}.")
  if int(dim) != dim or dim < 0:
    raise ValueError(f"dim must be a non-negative int, got {dim!r}.")
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"dtype must be floating, got {dtype}.")
  label_shape = (size,) if num_labels is None else (size, int(num_labels))
  return Memory(
      embeddings=jnp.zeros((size, dim), dtype),
      labels=jnp.zeros(label_shape, jnp.int32),
      valid=jnp.zeros((size,), bool),
      position=jnp.zeros((), jnp.int32),
  )


def _check_memory(memory: Memory, embeddings: jax.Array, labels: jax.Array):
  embeddings = checks.check_embeddings(embeddings)
  labels = checks.check_labels(labels, embeddings.shape[0])
  size, dim = memory.embeddings.shape
  if embeddings.shape[1] != dim:
    raise ValueError(f"embeddings must have shape (B, {dim}) to match the memory, "
                     f"got {embeddings.shape}.")
  if labels.shape[1:] != memory.labels.shape[1:]:
    raise ValueError(f"labels must have shape (B,) + {memory.labels.shape[1:]} to match the "
                     f"memory, got {labels.shape}.")
  return embeddings, labels, size


def _enqueue(memory: Memory, embeddings: jax.Array, labels: jax.Array):
  """The updated memory and, per batch row, its slot (or -1 when not stored)."""
  size = memory.embeddings.shape[0]
  batch_size = embeddings.shape[0]
  kept = min(batch_size, size)  # the newest `kept` rows are stored
  rows = jnp.arange(batch_size, dtype=jnp.int32)
  slots = (memory.position + rows) % size
  stored = rows >= batch_size - kept
  new_slots = slots[batch_size - kept:]
  updated = Memory(
      embeddings=memory.embeddings.at[new_slots].set(
          jax.lax.stop_gradient(embeddings[batch_size - kept:]).astype(memory.embeddings.dtype)),
      labels=memory.labels.at[new_slots].set(labels[batch_size - kept:].astype(memory.labels.dtype)),
      valid=memory.valid.at[new_slots].set(True),
      position=((memory.position + batch_size) % size).astype(jnp.int32),
  )
  return updated, jnp.where(stored, slots, -1)


def memory_update(memory: Memory, embeddings: jax.Array, labels: jax.Array) -> Memory:
  """Enqueues a batch: FIFO ring buffer with wrap-around.

  Row ``i`` of the batch goes to slot ``(position + i) % M`` and the position
  advances by ``B``. A batch larger than the memory keeps its newest ``M``
  rows (the last ones), in the slots they would have reached. The stored
  embeddings are cast to the memory's dtype and cut from the gradient.

  Args:
    memory: the current :class:`Memory`.
    embeddings: ``(B, D)`` floating array.
    labels: ``(B,)`` int ids (``(B, C)`` multi-hot for a multi-hot memory).

  Returns:
    The new :class:`Memory`.

  Raises:
    ValueError: on shapes that do not match the memory.
  """
  embeddings, labels, _ = _check_memory(memory, embeddings, labels)
  return _enqueue(memory, embeddings, labels)[0]


def _contrastive_references(embeddings, labels, references, reference_labels, reference_mask,
                            *, margin=1.0, metric="euclidean", weights=None):
  """:func:`sphereembed.losses.contrastive`'s terms over (query, reference) pairs.

  ``0.5 d^2`` for positive pairs, ``0.5 relu(margin - d)^2`` for negative
  ones; the mean over the usable pairs, pair ``(i, j)`` weighted by ``w_i``.
  """
  (embeddings, labels, weights, references, reference_labels,
   reference_mask) = check_pair_inputs(embeddings, labels, weights, references,
                                       reference_labels, reference_mask)
  dtype = embeddings.dtype
  margin = check_hyperparameter(margin, "margin", dtype)
  if metric not in geometry.METRICS:
    raise ValueError(f"Unknown metric {metric!r}; expected one of {geometry.METRICS}.")
  positives, negatives = pair_masks_with_references(labels, reference_labels, reference_mask)
  if metric == "euclidean":
    squared = geometry.pairwise_distances(embeddings, references, "squared_euclidean")
    distances = geometry.safe_sqrt(squared)
  else:
    distances = geometry.pairwise_distances(embeddings, references, metric)
    squared = jnp.square(distances)
  terms = 0.5 * jnp.where(positives, squared, jnp.square(jax.nn.relu(margin - distances)))
  pair_weights = None if weights is None else weights[:, None]
  return _common.weighted_mean(terms, positives | negatives, pair_weights)


def memory_loss(loss_fn: Callable, embeddings: jax.Array, labels: jax.Array, memory: Memory, *,
                include_batch: bool = True, **kwargs) -> jax.Array:
  """A pair loss between the batch (queries) and the memory entries (references).

  With ``include_batch=True`` (PML's ``CrossBatchMemory``), the batch is
  first enqueued into a copy of ``memory`` (as :func:`memory_update`; the
  returned loss does not change ``memory``) and scored against all valid
  slots of that copy except each query's own slot (PML removes these
  self-comparisons). With ``include_batch=False`` it is scored against the
  valid slots of ``memory`` as given. Invalid (never written) slots are
  masked out. The references carry no gradient: only the queries do.

  ``loss_fn`` is :func:`sphereembed.losses.contrastive` (its terms over the
  (query, reference) pairs: the mean of ``0.5 d^2`` over positive pairs and
  ``0.5 relu(margin - d)^2`` over negative ones, ``margin`` and ``metric``
  taken from ``kwargs``) or any loss with the ``references=``,
  ``reference_labels=`` and ``reference_mask=`` keywords:
  :func:`~sphereembed.losses.multi_similarity`,
  :func:`~sphereembed.losses.circle`,
  :func:`~sphereembed.losses.lifted_structure`.

  Args:
    loss_fn: the pair loss (see above).
    embeddings: ``(B, D)`` query embeddings.
    labels: ``(B,)`` int ids (``(B, C)`` multi-hot for a multi-hot memory).
    memory: the :class:`Memory` (its dtype must be the embeddings').
    include_batch: also score against the batch's own (detached) entries.
    **kwargs: keyword arguments of ``loss_fn`` (hyper-parameters, ``weights``).

  Returns:
    The scalar loss.

  Raises:
    ValueError: on shapes that do not match the memory, and for a
      ``loss_fn`` without a reference form (e.g. the triplet losses).

  References:
    Wang, Zhang, Huang & Scott, "Cross-Batch Memory for Embedding Learning",
    CVPR 2020.

  Example:
    >>> import jax.numpy as jnp
    >>> from sphereembed import losses
    >>> from sphereembed.memory import memory_init, memory_loss, memory_update
    >>> stored = jnp.array([[0.0, 1.0]], jnp.float32)
    >>> memory = memory_update(memory_init(4, 2), stored, jnp.array([1]))
    >>> x, y = jnp.array([[1.0, 0.0], [1.0, 0.0]], jnp.float32), jnp.array([0, 0])
    >>> # each query: its twin (s = 1) and the stored negative (s = 0).
    >>> loss = memory_loss(losses.multi_similarity, x, y, memory)
    >>> print(f"{loss:.4f}")
    0.1566
  """
  embeddings, labels, size = _check_memory(memory, embeddings, labels)
  if memory.embeddings.dtype != embeddings.dtype:
    raise ValueError(f"the memory holds {memory.embeddings.dtype} embeddings, the batch is "
                     f"{embeddings.dtype}.")
  batch_size = embeddings.shape[0]
  if include_batch:
    references, slots = _enqueue(memory, embeddings, labels)
    own_slot = jnp.arange(size, dtype=jnp.int32)[None, :] == slots[:, None]
    reference_mask = references.valid[None, :] & ~own_slot
  else:
    references = memory
    reference_mask = jnp.broadcast_to(memory.valid[None, :], (batch_size, size))
  reference_embeddings = jax.lax.stop_gradient(references.embeddings)
  if loss_fn is contrastive:
    return _contrastive_references(embeddings, labels, reference_embeddings, references.labels,
                                   reference_mask, **kwargs)
  try:
    parameters = inspect.signature(loss_fn).parameters
  except (TypeError, ValueError):
    parameters = {}
  if not all(name in parameters for name in ("references", "reference_labels", "reference_mask")):
    raise ValueError(
        f"{getattr(loss_fn, '__name__', loss_fn)!r} has no reference form (the keywords "
        "references=, reference_labels=, reference_mask=); use contrastive, a triplet loss, "
        "multi_similarity, circle or lifted_structure.")
  return loss_fn(embeddings, labels, references=reference_embeddings,
                 reference_labels=references.labels, reference_mask=reference_mask, **kwargs)
