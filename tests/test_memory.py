"""Tests of the cross-batch memory: ring-buffer order, losses against the memory, jit.

The buffer is checked against a Python list simulation (one row at a time);
the losses against brute-force loops over the memory slots (float64).
"""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sphereembed import losses
from sphereembed.memory import Memory, memory_init, memory_loss, memory_update
from tests.references import jit_fast_compile

# One compilation per signature (eager calls compile every primitive per shape).
_update = jit_fast_compile(memory_update)
_loss = jit_fast_compile(memory_loss, static_argnums=(0,), static_argnames=("include_batch",))


def _simulate(size, batches):
  """Ring buffer by hand: slots[j] = (embedding, label) or None, the next position,
  and the slot of each row of the last batch (None when a later row overwrote it)."""
  slots, position, own = [None] * size, 0, []
  for embeddings, labels in batches:
    own = []
    for i in range(len(labels)):
      slots[position] = (np.asarray(embeddings[i], np.float64), labels[i])
      own.append(position)
      position = (position + 1) % size
    for i in range(len(labels)):
      if i < len(labels) - size:
        own[i] = None
  return slots, position, own


def _apply(size, dim, batches, dtype=jnp.float64):
  memory = memory_init(size, dim, dtype)
  for embeddings, labels in batches:
    memory = _update(memory, embeddings, labels)
  return memory


def _assert_matches_simulation(memory, slots, position):
  assert int(memory.position) == position
  for j, slot in enumerate(slots):
    assert bool(memory.valid[j]) == (slot is not None)
    if slot is not None:
      np.testing.assert_array_equal(memory.embeddings[j], slot[0])
      np.testing.assert_array_equal(memory.labels[j], slot[1])


def _batch(rng, n, dim, num_classes=3):
  return rng.normal(size=(n, dim)), rng.integers(0, num_classes, n).astype(np.int32)


# ----------------------------------------------------------------------------
# The ring buffer.


def test_init():
  memory = memory_init(4, 3, jnp.float32)
  assert isinstance(memory, Memory)
  assert memory.embeddings.shape == (4, 3) and memory.embeddings.dtype == jnp.float32
  assert memory.labels.shape == (4,) and not np.any(memory.valid)
  assert int(memory.position) == 0
  assert memory_init(4, 3, num_labels=5).labels.shape == (4, 5)
  for bad in (dict(size=0, dim=3), dict(size=2.5, dim=3), dict(size=4, dim=-1),
              dict(size=4, dim=3, dtype=jnp.int32)):
    with pytest.raises(ValueError):
      memory_init(**bad)


def test_fifo_order_and_wrap_around():
  rows = np.arange(12, dtype=np.float64).reshape(6, 2)
  memory = memory_init(5, 2, jnp.float64)
  memory = memory_update(memory, rows[:3], np.array([0, 1, 2], np.int32))
  assert memory.labels.tolist() == [0, 1, 2, 0, 0]
  assert memory.valid.tolist() == [True, True, True, False, False]
  assert int(memory.position) == 3
  memory = memory_update(memory, rows[3:], np.array([3, 4, 5], np.int32))
  # Rows 3, 4 fill slots 3, 4; row 5 wraps to slot 0 (overwriting the oldest, row 0).
  assert memory.labels.tolist() == [5, 1, 2, 3, 4]
  np.testing.assert_array_equal(memory.embeddings, rows[[5, 1, 2, 3, 4]])
  assert all(memory.valid.tolist()) and int(memory.position) == 1


def test_batch_bigger_than_memory_keeps_the_newest():
  memory = memory_update(memory_init(4, 1, jnp.float64), np.zeros((1, 1)), np.array([9]))
  labels = np.arange(10, 16, dtype=np.int32)
  memory = memory_update(memory, labels[:, None].astype(np.float64), labels)
  # From position 1, rows 2..5 (labels 12..15) land in slots 3, 0, 1, 2.
  assert memory.labels.tolist() == [13, 14, 15, 12]
  np.testing.assert_array_equal(memory.embeddings[:, 0], [13, 14, 15, 12])
  assert int(memory.position) == (1 + 6) % 4


def test_random_sequences_match_simulation():
  rng = np.random.default_rng(0)
  for size in (1, 4):
    batches = [_batch(rng, int(n), 2) for n in (0, 2, 2 * size + 1, 3, 1)]
    slots, position, _ = _simulate(size, batches)
    _assert_matches_simulation(_apply(size, 2, batches), slots, position)


def test_update_is_jittable_and_scannable():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(5, 3, 2))
  labels = rng.integers(0, 4, (5, 3)).astype(np.int32)

  def body(memory, batch):
    return memory_update(memory, *batch), None

  scanned, _ = jax.lax.scan(body, memory_init(4, 2, jnp.float64), (x, labels))
  eager = _apply(4, 2, list(zip(x, labels)))
  chex.assert_trees_all_equal(scanned, eager)
  chex.assert_trees_all_equal(jax.jit(memory_update)(eager, x[0], labels[0]),
                              memory_update(eager, x[0], labels[0]))


def test_update_casts_and_cuts_gradients():
  memory = memory_init(3, 2, jnp.float32)
  x = np.ones((2, 2))
  assert memory_update(memory, x, np.array([1, 2])).embeddings.dtype == jnp.float32
  grad = jax.grad(lambda e: jnp.sum(memory_update(memory, e, np.array([1, 2])).embeddings))(x)
  np.testing.assert_array_equal(grad, 0.0)


def test_update_errors():
  memory = memory_init(3, 2)
  with pytest.raises(ValueError):
    memory_update(memory, np.ones((2, 3), np.float32), np.array([0, 1]))
  with pytest.raises(ValueError):
    memory_update(memory, np.ones((2, 2), np.float32), np.eye(2, dtype=np.int32))
  with pytest.raises(ValueError):
    memory_update(memory, np.ones((2, 2), np.float32), np.array([0, 1, 2]))


# ----------------------------------------------------------------------------
# Losses against the memory, by brute force over the slots.


def _unit(v):
  return v / max(math.sqrt(float(np.sum(v * v))), 1e-12)


def _multi_similarity_pairs(x_i, partners, alpha=2.0, beta=50.0, base=0.5):
  positives = [-alpha * (float(np.dot(_unit(x_i), _unit(r))) - base) for r, pos in partners if pos]
  negatives = [beta * (float(np.dot(_unit(x_i), _unit(r))) - base) for r, pos in partners if not pos]

  def log1p_sum(values):
    m = max([0.0] + values)
    return m + math.log(math.exp(-m) + sum(math.exp(v - m) for v in values))

  return log1p_sum(positives) / alpha + log1p_sum(negatives) / beta


def _memory_reference(kind, x, labels, slots, own, include_batch, margin=1.0, weights=None):
  """The loss over (query, slot) pairs, one slot at a time."""
  weights = np.ones(len(x)) if weights is None else weights
  per_query, pair_terms = [], []
  for i in range(len(x)):
    partners = []
    for j, slot in enumerate(slots):
      if slot is None or (include_batch and own[i] == j):
        continue
      partners.append((slot[0], int(slot[1]) == int(labels[i])))
    if kind == "multi_similarity":
      per_query.append(_multi_similarity_pairs(x[i], partners))
    else:
      for r, pos in partners:
        d = math.sqrt(float(np.sum((x[i] - r) ** 2)))
        pair_terms.append((weights[i], 0.5 * d * d if pos else 0.5 * max(0.0, margin - d) ** 2))
  if kind == "multi_similarity":
    return float(np.sum(weights * np.array(per_query)) / np.sum(weights)) if len(x) else 0.0
  norm = sum(w for w, _ in pair_terms)
  return sum(w * t for w, t in pair_terms) / norm if norm > 0 else 0.0


LOSS_FNS = {"multi_similarity": losses.multi_similarity, "contrastive": losses.contrastive}


@pytest.mark.parametrize("include_batch", [True, False])
@pytest.mark.parametrize("kind", sorted(LOSS_FNS))
def test_loss_matches_brute_force(kind, include_batch):
  rng = np.random.default_rng(2)
  size, dim = 7, 3
  history = [_batch(rng, 4, dim), _batch(rng, 5, dim)]  # 9 rows through 7 slots: wrapped
  memory = _apply(size, dim, history)
  x, labels = _batch(rng, 4, dim)
  weights = rng.uniform(0.5, 2.0, 4)
  slots_before, _, _ = _simulate(size, history)
  slots_after, _, own = _simulate(size, history + [(x, labels)])
  slots = slots_after if include_batch else slots_before
  fn = jit_fast_compile(lambda e, l, m, w: memory_loss(
      LOSS_FNS[kind], e, l, m, include_batch=include_batch, weights=w))
  expected = _memory_reference(kind, x, labels, slots, own, include_batch, weights=weights)
  chex.assert_trees_all_close(fn(x, labels, memory, weights), expected, rtol=1e-10)


@pytest.mark.parametrize("kind", sorted(LOSS_FNS))
def test_partly_filled_memory_masks_invalid_slots(kind):
  rng = np.random.default_rng(3)
  memory = _apply(10, 3, [_batch(rng, 3, 3)])  # 3 of 10 slots valid
  x, labels = _batch(rng, 2, 3)
  slots, _, own = _simulate(10, [_batch(np.random.default_rng(3), 3, 3), (x, labels)])
  chex.assert_trees_all_close(
      _loss(LOSS_FNS[kind], x, labels, memory),
      _memory_reference(kind, x, labels, slots, own, True), rtol=1e-10)


def test_batch_bigger_than_memory_loss():
  rng = np.random.default_rng(4)
  memory = _apply(3, 2, [_batch(rng, 2, 2)])
  x, labels = _batch(rng, 5, 2)
  slots, _, own = _simulate(3, [_batch(np.random.default_rng(4), 2, 2), (x, labels)])
  assert own[:2] == [None, None]
  chex.assert_trees_all_close(
      _loss(losses.multi_similarity, x, labels, memory),
      _memory_reference("multi_similarity", x, labels, slots, own, True), rtol=1e-10)


def test_empty_memory_and_empty_batch():
  memory = memory_init(4, 2, jnp.float64)
  x, labels = np.ones((3, 2)), np.zeros(3, np.int32)
  assert float(_loss(losses.multi_similarity, x, labels, memory, include_batch=False)) == 0.0
  assert float(_loss(losses.contrastive, x, labels, memory, include_batch=False)) == 0.0
  empty = _loss(losses.multi_similarity, np.zeros((0, 2)), np.zeros(0, np.int32), memory)
  assert float(empty) == 0.0


@pytest.mark.parametrize("name", ["circle", "lifted_structure"])
def test_other_pair_losses_use_the_memory_as_references(name):
  rng = np.random.default_rng(5)
  memory = _apply(6, 3, [_batch(rng, 4, 3)])
  x, labels = _batch(rng, 3, 3)
  fn = getattr(losses, name)
  expected = jit_fast_compile(fn)(x, labels, references=memory.embeddings,
                                 reference_labels=memory.labels, reference_mask=memory.valid)
  chex.assert_trees_all_close(_loss(fn, x, labels, memory, include_batch=False), expected,
                              rtol=1e-12)


def _triplet_reference(kind, x, labels, slots, own, margin, weights):
  """The triplet losses with anchors from the batch and partners from the memory slots."""
  numerator = denominator = 0.0
  for i in range(len(x)):
    partners = [(math.sqrt(float(np.sum((x[i] - slot[0]) ** 2))), int(slot[1]) == int(labels[i]))
                for j, slot in enumerate(slots) if slot is not None and own[i] != j]
    positives = [d for d, same in partners if same]
    negatives = [d for d, same in partners if not same]
    if not positives or not negatives:
      continue
    if kind == "triplet_batch_all":
      terms = [p - n + margin for p in positives for n in negatives]
      numerator += weights[i] * sum(max(t, 0.0) for t in terms)
      denominator += weights[i] * sum(t > 0 for t in terms)  # mean over the active triplets
    elif kind == "triplet_batch_hard":
      numerator += weights[i] * max(max(positives) - min(negatives) + margin, 0.0)
      denominator += weights[i]
    else:  # semi-hard: the nearest negative beyond the positive, else the farthest
      for p in positives:
        beyond = [n for n in negatives if n > p]
        n = min(beyond) if beyond else max(negatives)
        numerator += weights[i] * max(p - n + margin, 0.0)
        denominator += weights[i]
  return numerator / denominator if denominator > 0 else 0.0


@pytest.mark.parametrize("kind", ["triplet_batch_all", "triplet_batch_hard", "triplet_semi_hard"])
def test_triplet_losses_mine_the_memory(kind):
  rng = np.random.default_rng(8)
  size, dim = 9, 3
  history = [_batch(rng, 5, dim), _batch(rng, 6, dim)]  # 11 rows through 9 slots: wrapped
  memory = _apply(size, dim, history)
  x, labels = _batch(rng, 5, dim)
  weights = rng.uniform(0.5, 2.0, 5)
  slots, _, own = _simulate(size, history + [(x, labels)])
  fn = jit_fast_compile(lambda e, l, m, w: memory_loss(
      getattr(losses, kind), e, l, m, margin=0.3, weights=w))
  expected = _triplet_reference(kind, x, labels, slots, own, 0.3, weights)
  assert expected > 0
  chex.assert_trees_all_close(fn(x, labels, memory, weights), expected, rtol=1e-10)
  # Gradients reach the queries only, and agree with jit.
  grad = jax.grad(lambda e: memory_loss(getattr(losses, kind), e, labels, memory, margin=0.3))
  chex.assert_trees_all_close(grad(x), jit_fast_compile(grad)(x), rtol=1e-10)


def test_triplet_references_without_memory_equal_the_batch_form():
  rng = np.random.default_rng(9)
  x, labels = _batch(rng, 8, 3)
  for name in ("triplet_batch_all", "triplet_batch_hard", "triplet_semi_hard"):
    fn = getattr(losses, name)
    # The batch as its own references, minus each anchor's own row: the plain loss.
    chex.assert_trees_all_close(
        fn(x, labels, references=x, reference_labels=labels,
           reference_mask=~np.eye(8, dtype=bool)), fn(x, labels), rtol=1e-12)


def test_gradient_flows_to_queries_only():
  rng = np.random.default_rng(6)
  memory = _apply(6, 3, [_batch(rng, 5, 3)])
  x, labels = _batch(rng, 3, 3)
  gx, gm = jit_fast_compile(jax.grad(
      lambda e, m: memory_loss(losses.multi_similarity, e, labels, memory._replace(embeddings=m)),
      argnums=(0, 1)))(x, memory.embeddings)
  assert np.abs(gx).max() > 1e-3
  np.testing.assert_array_equal(gm, 0.0)


def test_jit_training_step_equals_eager():
  rng = np.random.default_rng(7)
  memory = _apply(8, 3, [_batch(rng, 5, 3)])
  x, labels = _batch(rng, 4, 3)

  def step(memory, x, labels):
    loss, grad = jax.value_and_grad(
        lambda e: memory_loss(losses.multi_similarity, e, labels, memory, alpha=3.0))(x)
    return loss, grad, memory_update(memory, x, labels)

  loss, grad, updated = jax.jit(step)(memory, x, labels)
  # Eagerly (op by op, value checks on): the same loss and memory.
  chex.assert_trees_all_close(
      memory_loss(losses.multi_similarity, x, labels, memory, alpha=3.0), loss, rtol=1e-10)
  chex.assert_trees_all_close(memory_update(memory, x, labels), updated, rtol=0)
  assert np.abs(grad).max() > 1e-3


def test_multi_hot_memory():
  rng = np.random.default_rng(8)
  memory = memory_init(6, 2, jnp.float64, num_labels=3)
  hot = (rng.random((4, 3)) < 0.5).astype(np.int32)
  memory = _update(memory, rng.normal(size=(4, 2)), hot)
  x, labels = rng.normal(size=(2, 2)), np.array([[1, 0, 0], [0, 1, 1]], np.int32)
  expected = jit_fast_compile(losses.multi_similarity)(
      x, labels, references=memory.embeddings, reference_labels=memory.labels,
      reference_mask=memory.valid)
  chex.assert_trees_all_close(
      _loss(losses.multi_similarity, x, labels, memory, include_batch=False), expected,
      rtol=1e-12)


def test_loss_errors():
  memory = memory_init(4, 2, jnp.float64)
  x, labels = np.ones((3, 2)), np.zeros(3, np.int32)
  with pytest.raises(ValueError, match="reference form"):
    memory_loss(losses.ncl, x, labels, memory)
  with pytest.raises(ValueError):
    memory_loss(losses.multi_similarity, x.astype(np.float32), labels, memory)
  with pytest.raises(ValueError):
    memory_loss(losses.multi_similarity, np.ones((3, 5)), labels, memory)
  with pytest.raises(ValueError):
    memory_loss(losses.multi_similarity, x, labels, memory, alpha=-1.0)
