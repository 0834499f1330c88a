"""Tests of multi_similarity, circle and lifted_structure.

Every loss is compared with a brute-force NumPy reference written as explicit
Python loops over anchors and pairs (float64), in float32 and float64, with
int and multi-hot labels, with and without references; gradients with finite
differences of the reference (for the circle loss with its self-paced
weights frozen, as the loss defines them).
"""

import math

import chex
import jax
import numpy as np
import pytest

from sphereembed.losses import circle, lifted_structure, multi_similarity
from tests.references import jit_fast_compile, numeric_grad

TOLERANCES = {np.float32: dict(rtol=2e-5, atol=2e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}

LOSSES = {
    "multi_similarity": (multi_similarity, dict(alpha=2.0, beta=50.0, base=0.5)),
    "multi_similarity_mined": (multi_similarity, dict(mine=True, epsilon=0.1)),
    "circle": (circle, dict(margin=0.4, gamma=80.0)),
    "lifted_structure": (lifted_structure, dict(pos_margin=0.0, neg_margin=1.0)),
}
# Milder hyper-parameters for the finite-difference checks.
GRAD_KWARGS = {
    "multi_similarity": dict(alpha=2.0, beta=5.0, base=0.3),
    "multi_similarity_mined": dict(alpha=2.0, beta=5.0, base=0.3, mine=True, epsilon=0.3),
    "circle": dict(margin=0.3, gamma=4.0),
    "lifted_structure": dict(pos_margin=0.1, neg_margin=1.2),
}


def _static(fn):
  return ("mine",) if fn is multi_similarity else ()


_JITTED = {name: jit_fast_compile(fn, static_argnames=_static(fn))
           for name, (fn, _) in LOSSES.items()}
_GRADS = {name: jit_fast_compile(jax.grad(fn), static_argnames=_static(fn))
          for name, (fn, _) in LOSSES.items()}


# ----------------------------------------------------------------------------
# Brute-force references.


def _unit(v):
  v = np.asarray(v, np.float64)
  norm = math.sqrt(sum(float(a) * float(a) for a in v))
  return v / max(norm, 1e-12)


def _cos(u, v):
  return sum(float(a) * float(b) for a, b in zip(_unit(u), _unit(v)))


def _dist(u, v):
  return math.sqrt(sum((float(a) - float(b)) ** 2 for a, b in zip(_unit(u), _unit(v))))


def _logsumexp(values):
  m = max(values)
  return m + math.log(sum(math.exp(v - m) for v in values))


def _softplus(x):
  return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def _is_positive(a, b):
  a, b = np.asarray(a), np.asarray(b)
  if a.ndim == 0:
    return int(a) == int(b)
  return any(a[c] > 0 and b[c] > 0 for c in range(a.shape[0]))


def _pairs(x, labels, references, reference_labels, reference_mask, i):
  """(j, positive?) for the usable partners of anchor i."""
  if references is None:
    return [(j, _is_positive(labels[i], labels[j])) for j in range(len(x)) if j != i]
  out = []
  for j in range(len(references)):
    usable = True
    if reference_mask is not None:
      mask = np.asarray(reference_mask)
      usable = bool(mask[j] if mask.ndim == 1 else mask[i, j])
    if usable:
      out.append((j, _is_positive(labels[i], reference_labels[j])))
  return out


def _reference(name, x, labels, weights=None, references=None, reference_labels=None,
               reference_mask=None, frozen=None, **kwargs):
  """The loss, one anchor and one pair at a time (``frozen``: the circle
  loss's self-paced weights taken from these embeddings instead of ``x``)."""
  refs = x if references is None else references
  frozen_refs = frozen if references is None else references
  weights = np.ones(len(x)) if weights is None else np.asarray(weights, np.float64)
  per_anchor = []
  for i in range(len(x)):
    partners = _pairs(x, labels, references, reference_labels, reference_mask, i)
    if name.startswith("multi_similarity"):
      alpha, beta = kwargs.get("alpha", 2.0), kwargs.get("beta", 50.0)
      base, epsilon = kwargs.get("base", 0.5), kwargs.get("epsilon", 0.1)
      sims = [(_cos(x[i], refs[j]), pos) for j, pos in partners]
      if kwargs.get("mine", False):
        max_negative = max([s for s, pos in sims if not pos], default=-math.inf)
        min_positive = min([s for s, pos in sims if pos], default=math.inf)
        sims = [(s, pos) for s, pos in sims
                if (pos and s - epsilon < max_negative) or (not pos and s + epsilon > min_positive)]
      positive = _logsumexp([0.0] + [-alpha * (s - base) for s, pos in sims if pos]) / alpha
      negative = _logsumexp([0.0] + [beta * (s - base) for s, pos in sims if not pos]) / beta
      per_anchor.append(positive + negative)
    elif name == "circle":
      m, gamma = kwargs.get("margin", 0.4), kwargs.get("gamma", 80.0)
      positive, negative = [], []
      for j, pos in partners:
        s = _cos(x[i], refs[j])
        s0 = s if frozen is None else _cos(frozen[i], frozen_refs[j])
        if pos:
          positive.append(-gamma * max(0.0, 1 + m - s0) * (s - (1 - m)))
        else:
          negative.append(gamma * max(0.0, s0 + m) * (s - m))
      per_anchor.append(_softplus(_logsumexp(positive) + _logsumexp(negative))
                        if positive and negative else 0.0)
    else:
      pos_margin, neg_margin = kwargs.get("pos_margin", 0.0), kwargs.get("neg_margin", 1.0)
      positive = [_dist(x[i], refs[j]) - pos_margin for j, pos in partners if pos]
      negative = [neg_margin - _dist(x[i], refs[j]) for j, pos in partners if not pos]
      total = (_logsumexp(positive) if positive else 0.0) + (
          _logsumexp(negative) if negative else 0.0)
      per_anchor.append(max(0.0, total))
  # Reducers: circle averages the non-zero terms (PML's AvgNonZeroReducer), the others all.
  keep = [l > 0 if name == "circle" else True for l in per_anchor]
  norm = sum(w for w, k in zip(weights, keep) if k)
  total = sum(w * l for w, l, k in zip(weights, per_anchor, keep) if k)
  return total / norm if norm > 0 else 0.0


def _embeddings(rng, n, dim, dtype):
  return (rng.normal(size=(n, dim)) * rng.uniform(0.5, 2.0, (n, 1))).astype(dtype)


def _labels(rng, n, num_classes, form):
  if form == "int":
    return rng.integers(0, num_classes, n).astype(np.int32)
  hot = rng.random((n, num_classes)) < 1.5 / num_classes
  return {"multi_hot": hot.astype(np.int32), "multi_hot_bool": hot,
          "multi_hot_float": hot.astype(np.float32)}[form]


# ----------------------------------------------------------------------------
# Values.


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("form", ["int", "multi_hot"])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_matches_reference(name, form, dtype):
  kwargs = LOSSES[name][1]
  rng = np.random.default_rng(len(name) + len(form))
  x = _embeddings(rng, 20, 4, dtype)
  labels = _labels(rng, 20, 4, form)
  weights = rng.uniform(0.0, 2.0, 20).astype(dtype)
  weights[:2] = 0.0
  loss = _JITTED[name](x, labels, weights=weights, **kwargs)
  assert loss.dtype == dtype and loss.shape == ()
  expected = _reference(name, x, labels, weights, **kwargs)
  chex.assert_trees_all_close(loss, np.asarray(expected, dtype), **TOLERANCES[dtype])


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_label_forms_agree(name):
  kwargs = LOSSES[name][1]
  rng = np.random.default_rng(1)
  x = _embeddings(rng, 12, 3, np.float64)
  ids = rng.integers(0, 4, 12).astype(np.int32)
  one_hot = np.eye(4, dtype=np.int32)[ids]
  expected = _reference(name, x, ids, **kwargs)
  for labels in (ids, one_hot.astype(bool)):
    chex.assert_trees_all_close(_JITTED[name](x, labels, **kwargs), expected, rtol=1e-10)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_references_match_reference(name):
  dtype = np.float64
  kwargs = LOSSES[name][1]
  rng = np.random.default_rng(2)
  x, labels = _embeddings(rng, 10, 4, dtype), _labels(rng, 10, 3, "int")
  refs, ref_labels = _embeddings(rng, 15, 4, dtype), _labels(rng, 15, 3, "int")
  masks = [rng.random(15) < 0.7, rng.random((10, 15)) < 0.7]
  for mask in masks:
    loss = _JITTED[name](x, labels, references=refs, reference_labels=ref_labels,
                         reference_mask=mask, **kwargs)
    expected = _reference(name, x, labels, None, refs, ref_labels, mask, **kwargs)
    chex.assert_trees_all_close(loss, np.asarray(expected, dtype), **TOLERANCES[dtype])


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_batch_as_references_is_the_batch_loss(name):
  form = "multi_hot"
  kwargs = LOSSES[name][1]
  rng = np.random.default_rng(3)
  x, labels = _embeddings(rng, 12, 3, np.float64), _labels(rng, 12, 3, form)
  chex.assert_trees_all_close(
      _JITTED[name](x, labels, references=x, reference_labels=labels,
                    reference_mask=~np.eye(12, dtype=bool), **kwargs),
      _JITTED[name](x, labels, **kwargs), rtol=1e-12)


# ----------------------------------------------------------------------------
# Gradients, jit, vmap.


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradients_match_finite_differences(name):
  kwargs = GRAD_KWARGS[name]
  rng = np.random.default_rng(5)
  x = _embeddings(rng, 7, 3, np.float64)
  labels = np.array([0, 0, 1, 1, 1, 2, 0], np.int32)
  weights = np.array([1.0, 0.5, 2.0, 1.0, 1.5, 1.0, 0.7])
  grad = _GRADS[name](x, labels, weights=weights, **kwargs)
  numerical = numeric_grad(
      lambda e: _reference(name, e, labels, weights, frozen=x, **kwargs), x)
  chex.assert_trees_all_close(grad, numerical, rtol=1e-6, atol=1e-8)
  assert np.abs(numerical).max() > 1e-3


@pytest.mark.parametrize("name", ["multi_similarity", "circle", "lifted_structure"])
def test_reference_gradients_match_finite_differences(name):
  kwargs = GRAD_KWARGS[name]
  rng = np.random.default_rng(6)
  x, labels = _embeddings(rng, 4, 3, np.float64), np.array([0, 1, 1, 2], np.int32)
  refs, ref_labels = _embeddings(rng, 6, 3, np.float64), np.array([0, 1, 2, 2, 0, 1], np.int32)
  mask = np.array([True, True, False, True, True, True])

  def loss(e, r):
    return LOSSES[name][0](e, labels, references=r, reference_labels=ref_labels,
                           reference_mask=mask, **kwargs)

  gx, gr = jit_fast_compile(jax.grad(loss, argnums=(0, 1)))(x, refs)
  nx = numeric_grad(lambda e: _reference(name, e, labels, None, refs, ref_labels, mask,
                                         frozen=x, **kwargs), x)
  nr = None
  if name != "circle":  # the circle loss's frozen weights would need the base-point references
    nr = numeric_grad(lambda r: _reference(name, x, labels, None, r, ref_labels, mask, **kwargs),
                      refs)
  chex.assert_trees_all_close(gx, nx, rtol=1e-6, atol=1e-8)
  if nr is not None:
    chex.assert_trees_all_close(gr, nr, rtol=1e-6, atol=1e-8)
  np.testing.assert_array_equal(gr[2], 0.0)  # masked-out reference


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_jit_equals_eager(name):
  fn, kwargs = LOSSES[name]
  rng = np.random.default_rng(7)
  x, labels = _embeddings(rng, 10, 3, np.float32), _labels(rng, 10, 3, "int")
  weights = rng.random(10).astype(np.float32)
  eager = fn(x, labels, weights=weights, **kwargs)
  jitted = jax.jit(fn, static_argnames=_static(fn))(x, labels, weights=weights, **kwargs)
  chex.assert_trees_all_close(eager, jitted, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_vmap_equals_loop(name):
  form = "multi_hot" if name == "circle" else "int"
  fn, kwargs = LOSSES[name]
  rng = np.random.default_rng(8)
  x = np.stack([_embeddings(rng, 10, 3, np.float64) for _ in range(3)])
  labels = np.stack([_labels(rng, 10, 3, form) for _ in range(3)])
  batched = jit_fast_compile(jax.vmap(lambda e, l: fn(e, l, **kwargs)))(x, labels)
  looped = np.array([_JITTED[name](x[v], labels[v], **kwargs) for v in range(3)])
  chex.assert_trees_all_close(batched, looped, rtol=1e-12)
  assert len(set(np.round(looped, 8))) == 3


# ----------------------------------------------------------------------------
# Edge cases.


@pytest.mark.parametrize("labels", [np.zeros(5, np.int32), np.arange(5, dtype=np.int32)],
                         ids=["one_class", "singletons"])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_one_class_and_singletons(name, labels):
  kwargs = LOSSES[name][1]
  x = _embeddings(np.random.default_rng(9), 5, 3, np.float64)
  loss = _JITTED[name](x, labels, **kwargs)
  chex.assert_trees_all_close(loss, _reference(name, x, labels, **kwargs), rtol=1e-10, atol=1e-14)
  if name in ("circle", "multi_similarity_mined"):  # no anchor with both kinds of pairs
    assert float(loss) == 0.0
    np.testing.assert_array_equal(_GRADS[name](x, labels, **kwargs), 0.0)
  assert np.all(np.isfinite(_GRADS[name](x, labels, **kwargs)))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_identical_and_zero_embeddings(name):
  kwargs = LOSSES[name][1]
  labels = np.array([0, 0, 1, 1, 2], np.int32)
  for x in (np.tile([[0.3, -1.0, 2.0]], (5, 1)), np.zeros((5, 3))):
    chex.assert_trees_all_close(_JITTED[name](x, labels, **kwargs),
                                _reference(name, x, labels, **kwargs), rtol=1e-10, atol=1e-14)
    assert np.all(np.isfinite(_GRADS[name](x, labels, **kwargs)))


@pytest.mark.parametrize("batch_size", [0, 1])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_empty_and_single_sample(name, batch_size):
  kwargs = LOSSES[name][1]
  x, labels = np.ones((batch_size, 3)), np.zeros((batch_size,), np.int32)
  assert float(_JITTED[name](x, labels, **kwargs)) == 0.0
  if batch_size == 0:
    grad = _GRADS[name](x, labels, **kwargs)
    assert grad.shape == (0, 3)


def test_empty_references_give_zero():
  x, labels = np.ones((3, 2)), np.zeros(3, np.int32)
  for name in ("multi_similarity", "circle", "lifted_structure"):
    loss = _JITTED[name](x, labels, references=np.ones((4, 2)),
                         reference_labels=np.zeros(4, np.int32),
                         reference_mask=np.zeros(4, bool), **LOSSES[name][1])
    assert float(loss) == 0.0


# ----------------------------------------------------------------------------
# Errors.


BAD_HYPERPARAMETERS = {
    "multi_similarity": [("alpha", 0.0), ("alpha", -1.0), ("beta", math.nan), ("beta", 0.0),
                         ("base", math.inf), ("base", 1j), ("alpha", [1.0, 2.0])],
    "multi_similarity_mined": [("epsilon", -0.1), ("epsilon", math.nan)],
    "circle": [("margin", -0.1), ("margin", math.nan), ("margin", 2j), ("gamma", 0.0),
               ("gamma", -1.0), ("gamma", math.inf)],
    "lifted_structure": [("pos_margin", -0.1), ("pos_margin", math.nan), ("neg_margin", -1.0),
                         ("neg_margin", math.inf), ("neg_margin", 1j)],
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_bad_hyperparameters_raise(name):
  fn, kwargs = LOSSES[name]
  rng = np.random.default_rng(10)
  x, labels = _embeddings(rng, 4, 3, np.float32), _labels(rng, 4, 2, "int")
  for key, value in BAD_HYPERPARAMETERS[name]:
    with pytest.raises(ValueError):
      fn(x, labels, **{**kwargs, key: value})


@pytest.mark.parametrize("name", ["multi_similarity", "circle", "lifted_structure"])
def test_bad_inputs_raise(name):
  fn, kwargs = LOSSES[name]
  rng = np.random.default_rng(11)
  x, labels = _embeddings(rng, 4, 3, np.float32), _labels(rng, 4, 2, "int")
  refs, ref_labels = _embeddings(rng, 5, 3, np.float32), _labels(rng, 5, 2, "int")
  bad = [
      dict(labels=labels[:3]),
      dict(labels=labels.astype(np.float32)),
      dict(labels=-labels - 1),
      dict(x=x[0]),
      dict(x=np.full_like(x, np.nan)),
      dict(weights=-np.ones(4, np.float32)),
      dict(references=refs),                                     # no reference_labels
      dict(reference_labels=ref_labels),                         # no references
      dict(references=refs[:, :2], reference_labels=ref_labels),
      dict(references=refs.astype(np.float64), reference_labels=ref_labels),
      dict(references=refs, reference_labels=ref_labels[:4]),
      dict(references=refs, reference_labels=np.eye(2, dtype=np.int32)[ref_labels]),
      dict(references=refs, reference_labels=ref_labels, reference_mask=np.ones(4, bool)),
      dict(references=refs, reference_labels=ref_labels, reference_mask=np.ones(5)),
      dict(references=np.full_like(refs, np.inf), reference_labels=ref_labels),
  ]
  for case in bad:
    args = dict(x=x, labels=labels)
    args.update(case)
    e, l = args.pop("x"), args.pop("labels")
    with pytest.raises(ValueError):
      fn(e, l, **kwargs, **args)
