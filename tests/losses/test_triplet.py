"""Verification tests for the triplet losses against brute-force NumPy references.

The references enumerate pairs and triplets with explicit Python loops and
compute distances in float64 with their own loop; they never call the library.
The large-batch test uses a chunked, vectorised NumPy reference instead.

float32 cases are drawn so that no triplet sits within ``GAP`` of a decision
boundary (``d_ap - d_an + margin = 0`` or ``d_an = d_ap``): rounding of the
float32 distances could legitimately flip such a comparison, which would make
the comparison with the float64 reference meaningless rather than wrong.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sphereembed.losses import triplet_batch_all, triplet_batch_hard, triplet_semi_hard
from tests.references import numeric_grad, ref_distance

METRICS = ("euclidean", "squared_euclidean", "cosine", "great_circle")
LOSSES = {
    "batch_all": triplet_batch_all,
    "batch_hard": triplet_batch_hard,
    "semi_hard": triplet_semi_hard,
}
STATS_KEYS = {"fraction_active", "num_active", "num_valid"}
TOL = {
    np.float32: dict(rtol=1e-4, atol=1e-6),
    np.float64: dict(rtol=1e-9, atol=1e-12),
}
GAP = 1e-5  # float32 cases keep every decision at least this far from a tie.


# ----------------------------------------------------------------------------
# Brute-force references (float64, explicit loops).


def ref_pairwise(x: np.ndarray, metric: str) -> np.ndarray:
  n = x.shape[0]
  d = np.zeros((n, n), np.float64)
  for i in range(n):
    for j in range(n):
      if i != j:
        d[i, j] = ref_distance(x[i], x[j], metric)
  return d


def ref_relations(labels: np.ndarray):
  """pos[i][j] / neg[i][j] for valid pairs (i != j), by explicit loops."""
  labels = np.asarray(labels)
  n = labels.shape[0]
  pos = [[False] * n for _ in range(n)]
  neg = [[False] * n for _ in range(n)]
  for i in range(n):
    for j in range(n):
      if i == j:
        continue
      if labels.ndim == 1:
        share = int(labels[i]) == int(labels[j])
      else:
        share = any(bool(labels[i, c]) and bool(labels[j, c]) for c in range(labels.shape[1]))
      pos[i][j] = share
      neg[i][j] = not share
  return pos, neg


def ref_triplets(pos, neg) -> np.ndarray:
  """All valid (a, p, n) triplets by a triple loop, shape (T, 3)."""
  n = len(pos)
  out = []
  for a in range(n):
    for p in range(n):
      if not pos[a][p]:
        continue
      for m in range(n):
        if neg[a][m]:
          out.append((a, p, m))
  return np.asarray(out, np.int64).reshape(-1, 3)


def _hinge(x: float, soft: bool) -> float:
  return float(np.logaddexp(0.0, x)) if soft else max(x, 0.0)


def _weighted(num: float, den: float) -> float:
  return num / den if den > 0 else 0.0


def _stats(num_active: int, num_valid: int) -> dict:
  return {
      "fraction_active": num_active / num_valid if num_valid else 0.0,
      "num_active": float(num_active),
      "num_valid": float(num_valid),
  }


def ref_batch_all(d, triplets, margin, reduction, soft, weights):
  total = active_w = valid_w = 0.0
  num_active = 0
  for a, p, n in triplets:
    x = d[a, p] - d[a, n] + margin
    w = 1.0 if weights is None else float(weights[a])
    total += w * _hinge(x, soft)
    valid_w += w
    if x > 0:
      active_w += w
      num_active += 1
  if reduction == "sum":
    loss = total
  elif reduction == "mean" or soft:
    loss = _weighted(total, valid_w)
  else:
    loss = _weighted(total, active_w)
  return loss, _stats(num_active, len(triplets))


def ref_batch_hard(d, pos, neg, margin, soft, weights):
  total = den = 0.0
  num_valid = num_active = 0
  for a in range(len(pos)):
    dp = [d[a, p] for p in range(len(pos)) if pos[a][p]]
    dn = [d[a, n] for n in range(len(pos)) if neg[a][n]]
    if not dp or not dn:
      continue
    x = max(dp) - min(dn) + margin
    w = 1.0 if weights is None else float(weights[a])
    total += w * _hinge(x, soft)
    den += w
    num_valid += 1
    num_active += x > 0
  return _weighted(total, den), _stats(num_active, num_valid)


def ref_semi_hard_selection(d, pos, neg):
  """{(a, p): selected negative index} (first index among exact ties)."""
  out = {}
  for a in range(len(pos)):
    negatives = [n for n in range(len(pos)) if neg[a][n]]
    if not negatives:
      continue
    for p in range(len(pos)):
      if not pos[a][p]:
        continue
      harder = [n for n in negatives if d[a, n] > d[a, p]]
      if harder:
        out[(a, p)] = min(harder, key=lambda n: d[a, n])
      else:
        out[(a, p)] = max(negatives, key=lambda n: d[a, n])
  return out


def ref_semi_hard(d, pos, neg, margin, soft, weights):
  total = den = 0.0
  num_active = 0
  selection = ref_semi_hard_selection(d, pos, neg)
  for (a, p), n in selection.items():
    x = d[a, p] - d[a, n] + margin
    w = 1.0 if weights is None else float(weights[a])
    total += w * _hinge(x, soft)
    den += w
    num_active += x > 0
  return _weighted(total, den), _stats(num_active, len(selection))


def min_decision_gap(d, pos, neg, triplets, margin) -> float:
  """Distance of the closest decision (hinge sign, semi-hard order, batch-hard sign) to a tie."""
  gaps = [np.inf]
  if len(triplets):
    a, p, n = triplets.T
    gaps.append(np.min(np.abs(d[a, p] - d[a, n] + margin)))
    gaps.append(np.min(np.abs(d[a, p] - d[a, n])))
  for a in range(len(pos)):
    dp = [d[a, p] for p in range(len(pos)) if pos[a][p]]
    dn = [d[a, n] for n in range(len(pos)) if neg[a][n]]
    if dp and dn:
      gaps.append(abs(max(dp) - min(dn) + margin))
  return float(min(gaps))


# ----------------------------------------------------------------------------
# Random cases.


def make_embeddings(rng, batch, dim, metric, dtype):
  x = rng.normal(size=(batch, dim))
  if metric in ("cosine", "great_circle"):
    x /= np.linalg.norm(x, axis=1, keepdims=True)
  else:
    x *= 0.6
  return x.astype(dtype)


def make_labels(rng, batch, num_classes, form):
  if form == "int":
    return rng.integers(0, num_classes, size=batch).astype(np.int32)
  if form == "int64":  # large, non-contiguous int64 class ids (beyond the int32 range)
    return rng.integers(0, num_classes, size=batch).astype(np.int64) * 1_000_000_007 + 5
  hot = (rng.random((batch, num_classes)) < 0.35).astype(np.int32)
  if form == "bool":
    return hot.astype(bool)
  if form == "float":
    return hot.astype(np.float32)
  return hot


@functools.lru_cache(maxsize=None)
def make_case(batch, num_classes, form, metric, dtype_name, seed, margin=0.2, dim=6):
  """Embeddings, labels, weights and the float64 reference structures."""
  dtype = np.dtype(dtype_name).type
  rng = np.random.default_rng([batch, num_classes, len(form), METRICS.index(metric), seed])
  labels = make_labels(rng, batch, num_classes, form)
  pos, neg = ref_relations(labels)
  triplets = ref_triplets(pos, neg)
  for _ in range(100):
    x = make_embeddings(rng, batch, dim, metric, dtype)
    d = ref_pairwise(x, metric)
    if dtype is np.float64 or min_decision_gap(d, pos, neg, triplets, margin) > GAP:
      break
  else:
    raise AssertionError("could not draw a float32 case away from ties")
  weights = rng.uniform(0.2, 2.0, size=batch).astype(dtype)
  if batch > 2:
    weights[0] = 0.0  # a zero weight must drop that anchor's terms
  return x, labels, weights, d, pos, neg, triplets


def case_from(x, labels, weights, metric):
  """A reference case (as make_case returns) for given inputs."""
  pos, neg = ref_relations(labels)
  return x, labels, weights, ref_pairwise(x, metric), pos, neg, ref_triplets(pos, neg)


def reference(loss_name, case, *, margin, reduction="mean_active", soft=False, weights=None):
  x, labels, _, d, pos, neg, triplets = case
  if loss_name == "batch_all":
    return ref_batch_all(d, triplets, margin, reduction, soft, weights)
  if loss_name == "batch_hard":
    return ref_batch_hard(d, pos, neg, margin, soft, weights)
  return ref_semi_hard(d, pos, neg, margin, soft, weights)


def call(loss_name, x, labels, *, reduction="mean_active", **kwargs):
  if loss_name == "batch_all":
    kwargs["reduction"] = reduction
  return LOSSES[loss_name](x, labels, **kwargs)


# ----------------------------------------------------------------------------
# Evaluation helpers. XLA compilation dominates the run time on CPU, so one
# jitted function evaluates many loss variants (loss, reduction, soft margin,
# weights) at once, and same-shaped cases are stacked with `lax.map` (which
# traces the unbatched function once; no batching rule is involved).

# (loss, reduction, soft_margin, weighted)
FULL_VARIANTS = (
    ("batch_all", "mean_active", False, False),
    ("batch_all", "mean_active", False, True),
    ("batch_all", "mean", False, True),
    ("batch_all", "sum", False, False),
    ("batch_all", "mean_active", True, True),
    ("batch_all", "mean", True, False),
    ("batch_all", "sum", True, True),
    ("batch_hard", "mean_active", False, False),
    ("batch_hard", "mean_active", False, True),
    ("batch_hard", "mean_active", True, True),
    ("semi_hard", "mean_active", False, False),
    ("semi_hard", "mean_active", False, True),
    ("semi_hard", "mean_active", True, True),
)
MEDIUM_VARIANTS = (
    ("batch_all", "mean_active", False, False),
    ("batch_all", "mean", False, True),
    ("batch_all", "sum", True, True),
    ("batch_all", "mean_active", True, True),
    ("batch_hard", "mean_active", False, True),
    ("semi_hard", "mean_active", False, False),
    ("semi_hard", "mean_active", True, True),
)
BASIC_VARIANTS = (
    ("batch_all", "mean_active", False, True),
    ("batch_all", "mean", True, False),
    ("batch_hard", "mean_active", False, True),
    ("semi_hard", "mean_active", False, True),
)


def run_variants(x, labels, weights, margin, *, metric, variants, grad):
  out = []
  for name, reduction, soft, weighted in variants:
    def f(e, name=name, reduction=reduction, soft=soft, weighted=weighted):
      return call(name, e, labels, reduction=reduction, metric=metric, margin=margin,
                  soft_margin=soft, weights=weights if weighted else None, return_stats=True)
    if grad:
      (loss, stats), g = jax.value_and_grad(f, has_aux=True)(x)
      out.append((loss, stats, g))
    else:
      loss, stats = f(x)
      out.append((loss, stats))
  return out


@functools.lru_cache(maxsize=None)
def stacked_evaluator(metric, variants, grad=False):
  one = functools.partial(run_variants, metric=metric, variants=variants, grad=grad)
  return jax.jit(lambda *stacked: jax.lax.map(lambda c: one(*c), stacked))


def evaluate_stacked(cases, metric, margins, variants, grad=False):
  """Evaluates ``variants`` on each (x, labels, weights, ...) case; the margin is traced."""
  xs = jnp.stack([jnp.asarray(c[0]) for c in cases])
  ls = jnp.stack([jnp.asarray(c[1]) for c in cases])
  ws = jnp.stack([jnp.asarray(c[2]) for c in cases])
  ms = jnp.asarray(np.broadcast_to(margins, (len(cases),)), xs.dtype)
  out = stacked_evaluator(metric, variants, grad)(xs, ls, ws, ms)
  return [[jax.tree_util.tree_map(lambda v, i=i: v[i], o) for o in out] for i in range(len(cases))]


def check_cases(cases, metric, dtype, variants, margins=0.2):
  tol = TOL[dtype]
  margins = np.broadcast_to(margins, (len(cases),))
  results = evaluate_stacked(cases, metric, margins, variants)
  for case, margin, result in zip(cases, margins, results):
    for (name, reduction, soft, weighted), (got_loss, got_stats) in zip(variants, result):
      w = case[2] if weighted else None
      want_loss, want_stats = reference(name, case, margin=float(margin), reduction=reduction,
                                        soft=soft, weights=w)
      where = (f"{name} B={len(case[1])} reduction={reduction} soft={soft} weighted={weighted} "
               f"metric={metric} margin={margin}")
      assert got_loss.shape == () and got_loss.dtype == dtype, where
      assert set(got_stats) == STATS_KEYS, where
      chex.assert_trees_all_close(got_loss, want_loss, **tol, custom_message=where)
      chex.assert_trees_all_close(got_stats, want_stats, **tol, custom_message=where)


# ----------------------------------------------------------------------------
# Values against the brute-force references.

# id: (metric, dtype, batch, class counts of the stacked cases, label form, variants).
# Batches of 1 and 2 never have a valid triplet: see the degenerate-batch test.
VALUE_CONFIGS = {
    "euclidean-f32-B17": ("euclidean", np.float32, 17, (2, 3, 8), "int", BASIC_VARIANTS),
    "euclidean-f64-B17": ("euclidean", np.float64, 17, (2, 3, 8), "int", FULL_VARIANTS),
    "cosine-f32-B17-int64": ("cosine", np.float32, 17, (3, 8), "int64", BASIC_VARIANTS),
    "cosine-f64-B17-bool": ("cosine", np.float64, 17, (4, 4), "bool", BASIC_VARIANTS),
    "great_circle-f64-B5-multi": ("great_circle", np.float64, 5, (3, 3, 3), "multi", BASIC_VARIANTS),
    "great_circle-f32-B64": ("great_circle", np.float32, 64, (5, 40), "int", MEDIUM_VARIANTS),
    "euclidean-f64-B64-multi": ("euclidean", np.float64, 64, (6,), "multi", BASIC_VARIANTS),
}


@pytest.mark.parametrize("config", list(VALUE_CONFIGS))
def test_matches_reference(config):
  metric, dtype, batch, class_counts, form, variants = VALUE_CONFIGS[config]
  cases = [make_case(batch, c, form, metric, np.dtype(dtype).name, seed)
           for seed, c in enumerate(class_counts)]
  check_cases(cases, metric, dtype, variants)


def test_matches_reference_margins_and_float_multi_hot():
  # Margins 0, 1 and negative; multi-hot labels given as floats 0.0 / 1.0; float32.
  margins = (0.2, 0.0, 1.0, -0.3)
  cases = [make_case(17, 4, "float", "squared_euclidean", "float32", seed, margin=m)
           for seed, m in enumerate(margins)]
  check_cases(cases, "squared_euclidean", np.float32, BASIC_VARIANTS, margins=margins)


def test_hand_computed_values():
  # Docstring example: x = [0, 0.1, 0.15] on a line, labels [0, 0, 1]. Triplets:
  # (0,1,2): 0.1 - 0.15 + 0.2 = 0.15 and (1,0,2): 0.1 - 0.05 + 0.2 = 0.25; both are
  # also each anchor's hardest and semi-hard triplet (anchor 1 has no negative
  # farther than 0.1, so the largest one, 0.05, is used). Every loss is 0.2.
  x = jnp.array([[0.0, 0.0], [0.1, 0.0], [0.15, 0.0]], jnp.float64)
  labels = jnp.array([0, 0, 1])
  values = jax.jit(lambda e, l: [fn(e, l) for fn in LOSSES.values()])(x, labels)
  chex.assert_trees_all_close(values, [0.2, 0.2, 0.2], rtol=1e-12)


def test_reductions_and_anchor_weights_by_hand():
  x = jnp.array([[0.0], [1.0], [0.5], [3.0]], jnp.float64)
  labels = jnp.array([0, 0, 1, 2])
  # Triplets: (0,1,2): 1 - 0.5 + 0.2 = 0.7, (0,1,3): 1 - 3 + 0.2 < 0,
  #           (1,0,2): 1 - 0.5 + 0.2 = 0.7, (1,0,3): 1 - 2 + 0.2 < 0.
  f = jax.jit(lambda e, l, w: [
      triplet_batch_all(e, l, reduction=r, weights=w, return_stats=True)
      for r in ("mean_active", "mean", "sum")])
  (ma, stats), (mean, _), (total, _) = f(x, labels, None)
  chex.assert_trees_all_close((ma, mean, total), (0.7, 1.4 / 4, 1.4), rtol=1e-12)
  chex.assert_trees_all_close(
      stats, {"fraction_active": 0.5, "num_active": 2.0, "num_valid": 4.0}, rtol=1e-12)
  # Anchor weights 3 and 1 (the others have no triplet): mean_active (3*0.7 + 0.7) / (3 + 1),
  # mean (3*0.7 + 0.7) / (3*2 + 1*2), sum 3*0.7 + 0.7; stats stay unweighted.
  w = jnp.array([3.0, 1.0, 5.0, 7.0], jnp.float64)
  (ma, stats), (mean, _), (total, _) = f(x, labels, w)
  chex.assert_trees_all_close((ma, mean, total), (0.7, 2.8 / 8, 2.8), rtol=1e-12)
  chex.assert_trees_all_close(stats["num_active"], 2.0)
  # batch-hard with weights: anchors 0, 1 -> 0.7; anchors 3, 4 (d_ap = 0.1, hardest
  # negatives at 2.5 / 2.6) -> 0. Weighted mean (3*0.7 + 1*0.7) / (3 + 1 + 2 + 2).
  x2 = jnp.array([[0.0], [1.0], [0.5], [3.0], [3.1]], jnp.float64)
  labels2 = jnp.array([0, 0, 1, 2, 2])
  w2 = jnp.array([3.0, 1.0, 5.0, 2.0, 2.0], jnp.float64)
  bh = jax.jit(lambda e, l, w: triplet_batch_hard(e, l, weights=w, return_stats=True))
  loss, stats = bh(x2, labels2, w2)
  chex.assert_trees_all_close(loss, 2.8 / 8, rtol=1e-12)
  chex.assert_trees_all_close(
      stats, {"fraction_active": 0.5, "num_active": 2.0, "num_valid": 4.0}, rtol=1e-12)


# ----------------------------------------------------------------------------
# Semi-hard mining and its gradient.

_semi_hard_value_and_grad = jax.jit(jax.value_and_grad(triplet_semi_hard))


def test_semi_hard_selects_smallest_harder_negative_and_its_gradient():
  # Anchor a=0, positive p=1 at d=0.3; negatives n1 at 0.4 (semi-hard), n2 at 2.
  x = np.array([[0.0, 0.0], [0.3, 0.0], [0.4, 0.0], [2.0, 0.0]])
  labels = np.array([0, 0, 1, 2])
  # (0,1): n1 -> 0.3 - 0.4 + 0.2 = 0.1; (1,0): negatives at 0.1 and 1.7 -> 1.7 -> 0.
  loss, grad = _semi_hard_value_and_grad(jnp.asarray(x), jnp.asarray(labels))
  chex.assert_trees_all_close(loss, 0.05, rtol=1e-12)
  # d loss / d x_n1 = -0.5 * d d(0, n1) / d x_n1 = -0.5 * unit(x_n1 - x_0).
  chex.assert_trees_all_close(grad[2], jnp.array([-0.5, 0.0]), atol=1e-12)
  chex.assert_trees_all_close(grad[3], jnp.zeros(2), atol=1e-12)
  f = reference_loss_of("semi_hard", labels, "euclidean", 0.2, "mean_active", False, None)
  chex.assert_trees_all_close(grad, numeric_grad(f, x), atol=1e-7)


def test_semi_hard_falls_back_to_largest_negative_and_its_gradient():
  # No negative is farther than the positive: the largest negative distance is used.
  x = np.array([[0.0, 0.0], [1.0, 0.0], [0.2, 0.0], [0.5, 0.0]])
  labels = np.array([0, 0, 1, 2])
  # (0,1): negatives of 0 at 0.2 (n=2) and 0.5 (n=3): largest 0.5: 1 - 0.5 + 0.2 = 0.7.
  # (1,0): negatives of 1 at 0.8 (n=2) and 0.5 (n=3): largest 0.8: 1 - 0.8 + 0.2 = 0.4.
  loss, grad = _semi_hard_value_and_grad(jnp.asarray(x), jnp.asarray(labels))
  chex.assert_trees_all_close(loss, 0.55, rtol=1e-12)
  # n=2 receives -0.5 * d d(1, 2)/dx_2 = -0.5 * unit(x_2 - x_1) = [+0.5, 0];
  # n=3 receives -0.5 * unit(x_3 - x_0) = [-0.5, 0].
  chex.assert_trees_all_close(grad[2], jnp.array([0.5, 0.0]), atol=1e-12)
  chex.assert_trees_all_close(grad[3], jnp.array([-0.5, 0.0]), atol=1e-12)
  f = reference_loss_of("semi_hard", labels, "euclidean", 0.2, "mean_active", False, None)
  chex.assert_trees_all_close(grad, numeric_grad(f, x), atol=1e-7)


def test_semi_hard_negative_at_exactly_the_positive_distance_is_not_harder():
  # A negative at exactly d_ap is not "harder" (strict >): the next one is chosen.
  x = jnp.array([[0.0], [0.5], [-0.5], [0.75]], jnp.float64)
  labels = jnp.array([0, 0, 1, 2])
  # (0,1): d_ap = 0.5, negatives at 0.5 (not > d_ap) and 0.75 -> 0.5 - 0.75 + 0.2 < 0 -> 0
  #        (choosing the tied one would give 0.2).
  # (1,0): d_ap = 0.5, negatives at 1.0 and 0.25 -> 1.0 -> 0.5 - 1 + 0.2 < 0 -> 0.
  loss, stats = jax.jit(lambda e, l: triplet_semi_hard(e, l, return_stats=True))(x, labels)
  chex.assert_trees_all_close(loss, 0.0, atol=1e-15)
  chex.assert_trees_all_close(stats["num_active"], 0.0)
  chex.assert_trees_all_close(stats["num_valid"], 2.0)


# ----------------------------------------------------------------------------
# Gradients against central finite differences of the reference.


def reference_loss_of(loss_name, labels, metric, margin, reduction, soft, weights):
  pos, neg = ref_relations(labels)
  triplets = ref_triplets(pos, neg)

  def f(x):
    d = ref_pairwise(x, metric)
    case = (x, labels, None, d, pos, neg, triplets)
    return reference(loss_name, case, margin=margin, reduction=reduction, soft=soft,
                     weights=weights)[0]

  return f


def smooth_case(metric, labels, seed, dim=3):
  """A small float64 case whose mining decisions are all at least 1e-3 from a tie."""
  rng = np.random.default_rng([seed, METRICS.index(metric)])
  batch = len(labels)
  pos, neg = ref_relations(labels)
  triplets = ref_triplets(pos, neg)
  for _ in range(500):
    x = make_embeddings(rng, batch, dim, metric, np.float64)
    d = ref_pairwise(x, metric)
    gaps = [min_decision_gap(d, pos, neg, triplets, 0.2)]
    for a in range(batch):
      dp = sorted(d[a, p] for p in range(batch) if pos[a][p])
      dn = sorted(d[a, n] for n in range(batch) if neg[a][n])
      gaps.extend(np.diff(dp))  # unique hardest positive
      gaps.extend(np.diff(dn))  # unique hardest / semi-hard negative
    if min(gaps) > 1e-3:
      return x, rng.uniform(0.2, 2.0, size=batch)
  raise AssertionError("no smooth case found")


GRAD_VARIANTS = {
    "euclidean": (
        ("batch_all", "mean_active", False, True),
        ("batch_all", "sum", True, False),
        ("batch_hard", "mean_active", True, True),
        ("semi_hard", "mean_active", True, False),
    ),
    "squared_euclidean": BASIC_VARIANTS[:1] + BASIC_VARIANTS[2:],
    "cosine": BASIC_VARIANTS[:1] + BASIC_VARIANTS[2:],
    "great_circle": BASIC_VARIANTS[:1] + BASIC_VARIANTS[2:],
}
GRAD_LABELS = {
    "int": np.array([0, 0, 1, 1, 2, 0, 1], np.int32),
    # Sample 6 has no label: it is everybody's negative and nobody's positive.
    "multi": np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1], [0, 1, 1], [1, 0, 0],
                       [0, 0, 0]], np.int32),
}


@pytest.mark.parametrize("metric", METRICS)
def test_gradient_matches_finite_differences(metric):
  form = "multi" if metric == "cosine" else "int"
  labels = GRAD_LABELS[form]
  x, weights = smooth_case(metric, labels, seed=3)
  variants = GRAD_VARIANTS[metric]
  (result,) = evaluate_stacked([(x, labels, weights)], metric, 0.2, variants, grad=True)
  for (name, reduction, soft, weighted), (value, _, grad) in zip(variants, result):
    where = f"{name} reduction={reduction} soft={soft} weighted={weighted}"
    f = reference_loss_of(name, labels, metric, 0.2, reduction, soft, weights if weighted else None)
    assert f(x) > 1e-3, "the case must have active triplets to test anything: " + where
    assert np.all(np.isfinite(np.asarray(grad))), where
    chex.assert_trees_all_close(value, f(x), rtol=1e-9, custom_message=where)
    want = numeric_grad(f, x)
    if metric == "great_circle":
      # Defined on the sphere: compare the tangential parts (the radial part depends
      # on how the distance extends off the sphere; see geometry.pairwise_distances).
      grad, want = tangential(grad, x), tangential(want, x)
    chex.assert_trees_all_close(grad, want, atol=1e-6, rtol=1e-5, custom_message=where)


def tangential(g, points):
  g, points = np.asarray(g), np.asarray(points)
  return g - np.sum(g * points, axis=1, keepdims=True) * points


# ----------------------------------------------------------------------------
# Transformations: jit, vmap.


def _transformed_losses(e, l_int, l_multi, w):
  """Values, stats and gradients with int labels; values and stats with multi-hot labels."""
  out = []
  for name in LOSSES:
    f = lambda e, n=name: LOSSES[n](e, l_int, weights=w, return_stats=True)
    (loss, stats), g = jax.value_and_grad(f, has_aux=True)(e)
    out.append((loss, stats, g))
  out.append(triplet_batch_all(e, l_int, weights=w, soft_margin=True, return_stats=True))
  for name in LOSSES:
    out.append(LOSSES[name](e, l_multi, weights=w, return_stats=True))
  return out


def test_jit_eager_and_vmap_agree():
  int_cases = [make_case(9, 3, "int", "euclidean", "float64", s) for s in range(4)]
  rng = np.random.default_rng(10)
  multi_cases = [case_from(c[0], make_labels(rng, 9, 3, "multi"), c[2], "euclidean")
                 for c in int_cases]
  xs = jnp.stack([jnp.asarray(c[0]) for c in int_cases])
  ls = jnp.stack([jnp.asarray(c[1]) for c in int_cases])
  ms = jnp.stack([jnp.asarray(c[1]) for c in multi_cases])
  ws = jnp.stack([jnp.asarray(c[2]) for c in int_cases])
  single = jax.jit(_transformed_losses)
  looped = [single(xs[i], ls[i], ms[i], ws[i]) for i in range(4)]

  # jit == eager, on the first case. Eager execution of a new shape is slow on CPU
  # (each op compiles), so only plain eager calls (the path on which the value
  # checks run) and one eager gradient.
  args = (xs[0], ls[0], ws[0])
  eager = [LOSSES[n](args[0], args[1], weights=args[2], return_stats=True) for n in LOSSES]
  chex.assert_trees_all_close(eager, [o[:2] for o in looped[0][:3]], rtol=1e-12, atol=1e-14)
  g = jax.grad(lambda e: triplet_batch_hard(e, args[1], weights=args[2]))(args[0])
  chex.assert_trees_all_close(g, looped[0][1][2], rtol=1e-12, atol=1e-14)

  # vmap over a leading axis == a Python loop.
  batched = jax.jit(jax.vmap(_transformed_losses))(xs, ls, ms, ws)
  looped = jax.tree_util.tree_map(lambda *v: jnp.stack(v), *looped)
  chex.assert_trees_all_close(batched, looped, rtol=1e-12, atol=1e-14)

  # And the values are the reference values.
  names = [(n, False, int_cases) for n in LOSSES] + [("batch_all", True, int_cases)] + [
      (n, False, multi_cases) for n in LOSSES]
  for (name, soft, cases), out in zip(names, batched):
    for i, case in enumerate(cases):
      want = reference(name, case, margin=0.2, soft=soft, weights=int_cases[i][2])
      got = (out[0][i], {k: v[i] for k, v in out[1].items()})
      chex.assert_trees_all_close(got, want, rtol=1e-9, atol=1e-12,
                                  custom_message=f"{name} soft={soft} case {i}")


# ----------------------------------------------------------------------------
# Degenerate batches: exact zero with a zero gradient.

DEGENERATE = {
    # id: (label sets stacked (same shape), metric, dtype)
    "int_one_class_singletons": (
        [np.zeros(6, np.int32), np.arange(6, dtype=np.int32), np.full(6, 7, np.int32),
         np.array([4, 1, 9, 0, 2, 3], np.int32)],
        "euclidean", np.float32),
    "one_sample": ([np.array([3], np.int32), np.array([0], np.int32)], "great_circle", np.float64),
    # Two samples: either no negative or no positive.
    "two_samples": ([np.array([0, 0], np.int32), np.array([0, 5], np.int32)], "cosine", np.float32),
    "multi_hot": (
        [np.ones((6, 3), np.int32),  # one class
         np.array([[1, 0, 0], [1, 1, 0], [1, 0, 1], [1, 1, 1], [1, 0, 0], [1, 1, 0]],
                  np.int32),  # everybody shares label 0: no negatives
         np.zeros((6, 3), np.int32),  # no labels: no positives
         np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0], [0, 0, 0], [0, 0, 0]],
                  np.int32)],  # nobody shares a label
        "squared_euclidean", np.float64),
}
DEGENERATE_VARIANTS = (
    ("batch_all", "mean", True, False),
    ("batch_all", "sum", False, True),
    ("batch_hard", "mean_active", True, True),
    ("semi_hard", "mean_active", False, False),
)


@pytest.mark.parametrize("degenerate", list(DEGENERATE))
def test_nothing_to_average_gives_zero_with_zero_gradient(degenerate):
  label_sets, metric, dtype = DEGENERATE[degenerate]
  rng = np.random.default_rng(5)
  cases = [(make_embeddings(rng, len(l), 4, metric, dtype), l,
            rng.uniform(0.5, 2.0, size=len(l)).astype(dtype)) for l in label_sets]
  results = evaluate_stacked(cases, metric, 0.2, DEGENERATE_VARIANTS, grad=True)
  for labels, result in zip(label_sets, results):
    for variant, (loss, stats, grad) in zip(DEGENERATE_VARIANTS, result):
      where = f"{variant} labels={labels.tolist()}"
      assert loss.dtype == dtype, where
      assert float(loss) == 0.0, where
      assert np.all(np.asarray(grad) == 0.0), where
      chex.assert_trees_all_close(
          stats, {"fraction_active": 0.0, "num_active": 0.0, "num_valid": 0.0},
          custom_message=where)


DUPLICATE_VARIANTS = (
    ("batch_all", "mean_active", False, False),
    ("batch_hard", "mean_active", True, False),
    ("semi_hard", "mean_active", False, False),
)


@pytest.mark.parametrize(
    "metric,dtype",
    [("euclidean", np.float32), ("great_circle", np.float64)],
    ids=lambda v: getattr(v, "__name__", v))
def test_duplicate_and_zero_embeddings_are_finite(metric, dtype):
  rng = np.random.default_rng(6)
  labels = np.array([0, 0, 1, 1, 2, 0, 1, 2], np.int32)
  base = make_embeddings(rng, 8, 5, metric, dtype)
  some = base.copy()
  some[1] = some[0]  # a duplicated positive
  some[2] = some[0]  # a duplicated negative
  some[6] = some[3]
  kinds = {"zeros": np.zeros_like(base), "all_duplicates": np.repeat(base[:1], 8, axis=0),
           "some_duplicates": some}
  cases = [(x, labels, np.ones(8, dtype)) for x in kinds.values()]
  results = evaluate_stacked(cases, metric, 0.2, DUPLICATE_VARIANTS, grad=True)
  for kind, result in zip(kinds, results):
    for (name, _, soft, _), (loss, _, grad) in zip(DUPLICATE_VARIANTS, result):
      where = f"{kind} {name} soft={soft}"
      assert np.isfinite(float(loss)), where
      assert np.all(np.isfinite(np.asarray(grad))), where
      if kind != "some_duplicates":
        # All pairwise distances are equal (0, or 1 for the cosine of zero vectors), so
        # every triplet, hardest triplet and mined triplet is d - d + margin. float32
        # Euclidean distances of duplicates carry Gram-form rounding (see test_geometry).
        want = float(np.logaddexp(0.0, 0.2)) if soft else 0.2
        tol = 2e-3 if dtype is np.float32 else 1e-6
        chex.assert_trees_all_close(loss, want, atol=tol, custom_message=where)


# ----------------------------------------------------------------------------
# Input validation.

GOOD_X = np.random.default_rng(7).normal(size=(4, 3)).astype(np.float32)
GOOD_L = np.array([0, 0, 1, 1], np.int32)

BAD_STATIC = {
    "embeddings_1d": (GOOD_X[:, 0], GOOD_L, {}),
    "embeddings_3d": (GOOD_X[None], GOOD_L, {}),
    "embeddings_int": (GOOD_X.astype(np.int32), GOOD_L, {}),
    "labels_wrong_length": (GOOD_X, GOOD_L[:3], {}),
    "labels_float_ids": (GOOD_X, GOOD_L.astype(np.float32), {}),
    "labels_3d": (GOOD_X, GOOD_L[:, None, None], {}),
    "multi_hot_wrong_rows": (GOOD_X, np.ones((3, 2), np.int32), {}),
    "weights_wrong_shape": (GOOD_X, GOOD_L, {"weights": np.ones(3, np.float32)}),
    "weights_2d": (GOOD_X, GOOD_L, {"weights": np.ones((4, 1), np.float32)}),
    "unknown_metric": (GOOD_X, GOOD_L, {"metric": "manhattan"}),
}


@pytest.mark.parametrize("under_jit", [False, True])
@pytest.mark.parametrize("bad", list(BAD_STATIC))
@pytest.mark.parametrize("loss_name", list(LOSSES))
def test_bad_shapes_and_dtypes_raise(loss_name, bad, under_jit):
  x, labels, kwargs = BAD_STATIC[bad]
  static = {k: v for k, v in kwargs.items() if k != "weights"}
  weights = kwargs.get("weights")
  fn = functools.partial(LOSSES[loss_name], **static)
  if under_jit:
    with pytest.raises(ValueError):
      jax.jit(lambda e, l, w: fn(e, l, weights=w))(
          jnp.asarray(x), jnp.asarray(labels), None if weights is None else jnp.asarray(weights))
  else:
    with pytest.raises(ValueError):
      fn(jnp.asarray(x), jnp.asarray(labels), weights=weights)


@pytest.mark.parametrize("under_jit", [False, True])
def test_bad_reduction_and_margin_raise(under_jit):
  wrap = jax.jit if under_jit else (lambda f: f)
  x, labels = jnp.asarray(GOOD_X), jnp.asarray(GOOD_L)
  with pytest.raises(ValueError):
    wrap(lambda e, l: triplet_batch_all(e, l, reduction="max"))(x, labels)
  for loss in LOSSES.values():
    with pytest.raises(ValueError):
      wrap(lambda e, l, loss=loss: loss(e, l, margin=np.array([0.1, 0.2])))(x, labels)


def _with(value, index):
  x = GOOD_X.copy()
  x[index] = value
  return x


BAD_VALUES = {
    "nan_embedding": (_with(np.nan, (2, 1)), GOOD_L),
    "inf_embedding": (_with(np.inf, (0, 0)), GOOD_L),
    "negative_label": (GOOD_X, np.array([0, -1, 1, 1], np.int32)),
    "multi_hot_two": (GOOD_X, np.array([[1, 0], [2, 0], [0, 1], [0, 1]], np.int32)),
    "multi_hot_minus_one": (GOOD_X, np.array([[1, 0], [1, 0], [0, -1], [0, 1]], np.int32)),
    "multi_hot_half": (GOOD_X, np.array([[1, 0], [0.5, 0], [0, 1], [0, 1]], np.float32)),
    "multi_hot_nan": (GOOD_X, np.array([[1, 0], [np.nan, 0], [0, 1], [0, 1]], np.float32)),
}


@pytest.mark.parametrize("bad", list(BAD_VALUES))
@pytest.mark.parametrize("loss_name", list(LOSSES))
def test_bad_values_raise_eagerly(loss_name, bad):
  x, labels = BAD_VALUES[bad]
  with pytest.raises(ValueError):
    LOSSES[loss_name](jnp.asarray(x), jnp.asarray(labels))
  with pytest.raises(ValueError):  # NumPy inputs too.
    LOSSES[loss_name](x, labels)


# ----------------------------------------------------------------------------
# Large batch: jit + value_and_grad against a chunked vectorised reference.


def vectorised_distances(x, metric):
  """Chunked explicit differences (not the Gram form), float64."""
  x = np.asarray(x, np.float64)
  sq = np.zeros((x.shape[0], x.shape[0]))
  for start in range(0, x.shape[0], 128):
    sq[start:start + 128] = np.sum((x[start:start + 128, None, :] - x[None, :, :]) ** 2, axis=-1)
  if metric == "squared_euclidean":
    return sq
  if metric == "euclidean":
    return np.sqrt(sq)
  raise AssertionError(metric)


def vectorised_reference(x, labels, metric, margin, soft=False):
  """Batch-all (mean_active, or mean with soft) and semi-hard losses, their dL/dd and stats.

  One anchor at a time, all its (positive, negative) triplets as a (P, N) array.
  """
  d = vectorised_distances(x, metric)
  b = len(labels)
  same = labels[:, None] == labels[None, :]
  pos, neg = same & ~np.eye(b, dtype=bool), ~same
  ba_sum, ba_active, ba_valid, ba_dd = 0.0, 0, 0, np.zeros((b, b))
  sh_sum, sh_active, sh_valid, sh_dd = 0.0, 0, 0, np.zeros((b, b))
  for a in range(b):
    p_idx, n_idx = np.flatnonzero(pos[a]), np.flatnonzero(neg[a])
    if not len(p_idx) or not len(n_idx):
      continue
    dp, dn = d[a, p_idx], d[a, n_idx]
    xt = dp[:, None] - dn[None, :] + margin  # (P, N)
    act = xt > 0
    ba_active += int(act.sum())
    ba_valid += xt.size
    if soft:
      ba_sum += np.sum(np.logaddexp(0.0, xt))
      s = 1.0 / (1.0 + np.exp(-xt))  # d softplus
      ba_dd[a, p_idx] += s.sum(axis=1)
      ba_dd[a, n_idx] -= s.sum(axis=0)
    else:
      ba_sum += np.sum(np.where(act, xt, 0.0))
      ba_dd[a, p_idx] += act.sum(axis=1)
      ba_dd[a, n_idx] -= act.sum(axis=0)
    harder = dn[None, :] > dp[:, None]
    sel = np.where(harder.any(axis=1), np.argmin(np.where(harder, dn[None, :], np.inf), axis=1),
                   np.argmax(dn))
    xs = dp - dn[sel] + margin
    sh_sum += np.sum(np.maximum(xs, 0.0))
    sh_active += int(np.sum(xs > 0))
    sh_valid += len(p_idx)
    on = (xs > 0).astype(float)
    sh_dd[a, p_idx] += on
    np.add.at(sh_dd[a], n_idx[sel], -on)
  ba_den = ba_valid if soft else ba_active
  ba = (ba_sum / ba_den if ba_den else 0.0, ba_dd / max(ba_den, 1))
  sh = (sh_sum / sh_valid if sh_valid else 0.0, sh_dd / max(sh_valid, 1))
  stats = {
      "batch_all": {"fraction_active": ba_active / max(ba_valid, 1),
                    "num_active": float(ba_active), "num_valid": float(ba_valid)},
      "semi_hard": {"fraction_active": sh_active / max(sh_valid, 1),
                    "num_active": float(sh_active), "num_valid": float(sh_valid)},
  }
  return d, ba, sh, stats


def embedding_grad_from_distance_grad(x, d, dd, metric):
  """Chain rule dL/dx from dL/dd for (squared) Euclidean distances."""
  x = np.asarray(x, np.float64)
  s = dd + dd.T
  if metric == "euclidean":
    h = np.where(d > 0, s / np.where(d > 0, d, 1.0), 0.0)
  else:
    h = 2.0 * s
  return x * h.sum(axis=1, keepdims=True) - h @ x


def _batch_all_and_semi_hard(e, l, margin, *, metric, soft):
  kw = dict(margin=margin, metric=metric, return_stats=True)
  return (jax.value_and_grad(lambda e: triplet_batch_all(e, l, soft_margin=soft, **kw),
                             has_aux=True)(e),
          jax.value_and_grad(lambda e: triplet_semi_hard(e, l, **kw), has_aux=True)(e))


_large_evaluator = jax.jit(_batch_all_and_semi_hard, static_argnames=("metric", "soft"))


def check_large(x, labels, metric, margin, soft):
  dtype = x.dtype.type
  d, ba, sh, stats = vectorised_reference(x, labels, metric, margin, soft)
  tol = dict(rtol=1e-4, atol=1e-6) if dtype is np.float32 else dict(rtol=1e-9, atol=1e-12)
  results = _large_evaluator(jnp.asarray(x), jnp.asarray(labels), jnp.asarray(margin, dtype),
                             metric=metric, soft=soft)
  ties = len(np.unique(d)) < d.size // 4
  for name, ((loss, got_stats), grad), (want, dd) in zip(("batch_all", "semi_hard"), results,
                                                         (ba, sh)):
    where = f"{name} ties={ties}"
    assert loss.dtype == dtype, where
    assert np.all(np.isfinite(np.asarray(grad))), where
    chex.assert_trees_all_close(loss, want, **tol, custom_message=where)
    chex.assert_trees_all_close(got_stats, stats[name], **tol, custom_message=where)
    if not ties:  # the loss is differentiable here
      want_grad = embedding_grad_from_distance_grad(x, d, dd, metric)
      scale = np.abs(want_grad).max()
      assert scale > 0, where
      chex.assert_trees_all_close(grad, want_grad, rtol=0, atol=10 * tol["rtol"] * scale,
                                  custom_message=where)


def test_large_batch_matches_vectorised_reference():
  """B = 1024, D = 32, float32, under jit with value_and_grad."""
  rng = np.random.default_rng(8)
  # Random unit vectors, 256 classes of ~4: many anchors with few positives each.
  x = rng.normal(size=(1024, 32))
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  labels = rng.integers(0, 256, size=1024).astype(np.int32)
  check_large(x.astype(np.float32), labels, "euclidean", 0.2, soft=False)
  # Binary codes: squared distances are Hamming distances, so the Euclidean distances
  # sqrt(k) tie exactly in huge numbers, and with margin 1, d_ap + margin == d_an
  # happens exactly (sqrt(k^2) + 1 == sqrt((k+1)^2)): hinge 0, not active. 16 classes.
  x = rng.integers(0, 2, size=(1024, 32)).astype(np.float32)
  labels = rng.integers(0, 16, size=1024).astype(np.int32)
  check_large(x, labels, "euclidean", 1.0, soft=False)


def test_soft_margin_batch_all_in_uneven_chunks():
  # Soft margin is O(B^3), processed in chunks of anchors: at B = 200 the chunk size
  # 2**22 // 200**2 = 104 does not divide the batch.
  rng = np.random.default_rng(9)
  x = rng.normal(size=(200, 8))
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  labels = rng.integers(0, 3, size=200).astype(np.int32)
  check_large(x, labels, "euclidean", 0.2, soft=True)
