"""Tests of sphereembed.evaluation.retrieval against brute-force NumPy references.

The references sort each query's full list of float64 distances with
``np.argsort(kind="stable")`` (ties to the smaller reference index) and
compute every metric with explicit Python loops over the ranks. Exact ties are
made on purpose with small integer coordinates, whose distances every
computation gets exactly right; random float32 data is compared up to
near-ties.
"""

import math

import jax
import numpy as np
import pytest

from sphereembed.evaluation import retrieval
from tests.references import jit_fast_compile


@pytest.fixture(autouse=True)
def _fast_compile(monkeypatch):
  """The search kernel compiled at LLVM level 0: the tests compile dozens of
  small programs (numerics unchanged; the doctests use the default pipeline)."""
  monkeypatch.setattr(retrieval, "_search_block", jit_fast_compile(
      retrieval._search_block.__wrapped__,
      static_argnames=("block_size", "k", "metric", "exclude_self", "group")))

# ----------------------------------------------------------------------------
# Data and brute-force references.


def _integer_points(rng, n, dim=3, low=-2, high=2, dtype=np.float64):
  """Points with small integer coordinates: exact distances, many exact ties."""
  return rng.integers(low, high + 1, size=(n, dim)).astype(dtype)


def _unit_points(rng, n, dim=5, dtype=np.float64):
  x = rng.normal(size=(n, dim))
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(dtype)


def _ref_distances(query, reference, metric):
  """Full ``(Q, M)`` float64 distances by explicit differences."""
  q = np.asarray(query, np.float64)
  r = np.asarray(reference, np.float64)
  squared = ((q[:, None, :] - r[None, :, :]) ** 2).sum(-1)
  if metric == "squared_euclidean":
    return squared
  if metric == "euclidean":
    return np.sqrt(squared)
  if metric == "cosine":
    return 1.0 - q @ r.T  # unclamped: the order of -q.r
  if metric == "great_circle":
    return 2.0 * np.arcsin(np.minimum(np.sqrt(squared) / 2.0, 1.0))
  raise AssertionError(metric)


def _ref_order(distances, exclude_self):
  """Every query's references sorted by distance, ties by index; self left out."""
  distances = np.array(distances, np.float64)
  order = np.argsort(distances, axis=1, kind="stable")
  if exclude_self:
    order = np.array([[j for j in row if j != i] for i, row in enumerate(order)], dtype=np.int64)
  return order


def _relevant(query_label, reference_label):
  query_label, reference_label = np.asarray(query_label), np.asarray(reference_label)
  if query_label.ndim == 0:
    return bool(query_label == reference_label)
  return bool(np.any(query_label.astype(bool) & reference_label.astype(bool)))


def _ref_vote(neighbour_labels):
  """Majority vote; ties to the class seen first (nearest), then the smaller label column."""
  votes, first = {}, {}
  for rank, label in enumerate(neighbour_labels):
    label = np.asarray(label)
    classes = [int(label)] if label.ndim == 0 else [int(c) for c in np.flatnonzero(label)]
    for c in classes:
      votes[c] = votes.get(c, 0) + 1
      first.setdefault(c, rank)
  if not votes:
    return -1, 0
  best = min(votes, key=lambda c: (-votes[c], first[c], c))
  return best, votes[best]


def _ref_metrics(query, query_labels, reference, reference_labels, ks, metric, exclude_self,
                 knn_k):
  """Per-query metric values by loops over the fully sorted neighbour lists."""
  order = _ref_order(_ref_distances(query, reference, metric), exclude_self)
  names = (["precision_at_1", "r_precision", "map_at_r"] + [f"map_at_{k}" for k in ks]
           + [f"recall_at_{k}" for k in ks] + ["knn_correct", "relevant_count"])
  out = {name: [] for name in names}
  for i, row in enumerate(order):
    rel = [_relevant(query_labels[i], reference_labels[j]) for j in row]
    r = sum(rel)
    precision = []  # precision at each rank
    hits = 0
    for rank, is_relevant in enumerate(rel, start=1):
      hits += is_relevant
      precision.append(hits / rank)
    out["relevant_count"].append(r)
    if r == 0:
      for name in ["precision_at_1", "r_precision", "map_at_r"] + [f"map_at_{k}" for k in ks]:
        out[name].append(math.nan)
    else:
      out["precision_at_1"].append(float(rel[0]))
      out["r_precision"].append(sum(rel[:r]) / r)
      out["map_at_r"].append(sum(precision[i] for i in range(r) if rel[i]) / r)
      for k in ks:
        out[f"map_at_{k}"].append(sum(precision[i] for i in range(k) if rel[i]) / min(k, r))
    for k in ks:
      out[f"recall_at_{k}"].append(float(any(rel[:k])))
    prediction, _ = _ref_vote([reference_labels[j] for j in row[:knn_k]])
    label = np.asarray(query_labels[i])
    correct = (prediction == int(label)) if label.ndim == 0 else (
        prediction >= 0 and bool(label[prediction]))
    out["knn_correct"].append(float(correct))
  return {name: np.array(values) for name, values in out.items()}


def _ref_means(per_query, ks):
  valid = per_query["relevant_count"] > 0
  mean = lambda v, m: float(np.mean(v[m])) if m.any() else math.nan
  out = {name: mean(per_query[name], valid) for name in ("precision_at_1", "r_precision",
                                                          "map_at_r")}
  out.update({f"map_at_{k}": mean(per_query[f"map_at_{k}"], valid) for k in ks})
  everyone = np.ones_like(valid)
  out.update({f"recall_at_{k}": mean(per_query[f"recall_at_{k}"], everyone) for k in ks})
  out["knn_accuracy"] = mean(per_query["knn_correct"], everyone)
  return out


def _multi_hot(rng, n, num_labels=4, p=0.3):
  return rng.random((n, num_labels)) < p


# ----------------------------------------------------------------------------
# nearest_neighbors.


@pytest.mark.parametrize("dtype, metric, same_set", [
    (np.float32, "euclidean", True), (np.float64, "euclidean", False),
    (np.float32, "squared_euclidean", False), (np.float64, "squared_euclidean", True),
    (np.float32, "cosine", True), (np.float64, "cosine", False)])
def test_nearest_neighbors_exact_ties(dtype, metric, same_set):
  rng = np.random.default_rng(0)
  query = _integer_points(rng, 40, dtype=dtype)
  reference = None if same_set else _integer_points(rng, 70, dtype=dtype)
  k = 9
  distances, indices = retrieval.nearest_neighbors(query, reference, k=k, metric=metric,
                                                   block_size=16)
  ref_distances = _ref_distances(query, query if same_set else reference, metric)
  order = _ref_order(ref_distances, exclude_self=same_set)[:, :k]
  np.testing.assert_array_equal(indices, order)
  expected = np.take_along_axis(ref_distances, order, axis=1)
  if metric == "cosine":
    expected = np.maximum(expected, 0.0)
  assert distances.dtype == dtype and indices.dtype == np.int64
  np.testing.assert_allclose(distances, expected, rtol=1e-6, atol=1e-6)
  # The data has many exact ties, so the tie rule was exercised.
  sorted_distances = np.sort(ref_distances, axis=1)
  assert np.mean(sorted_distances[:, 1:k + 1] == sorted_distances[:, :k]) > 0.2


@pytest.mark.parametrize("block_size", [7, 32, None])
def test_nearest_neighbors_block_sizes_two_stage(block_size):
  # M = 600 and k = 3 take the two-stage (grouped) top-k; Q = 50 is no
  # multiple of 7 or 32, so the last block is padded.
  rng = np.random.default_rng(1)
  reference = _integer_points(rng, 600, dim=2, low=-4, high=4)
  query = reference[:50]
  assert retrieval._group_size(600, 3) > 1 and retrieval._group_size(600, 4) > 1
  order = _ref_order(_ref_distances(query, reference, "euclidean"), exclude_self=False)
  _, indices = retrieval.nearest_neighbors(query, reference, k=3, block_size=block_size)
  np.testing.assert_array_equal(indices, order[:, :3])
  # exclude_self=True with an explicit reference whose first rows are the queries.
  order = _ref_order(_masked_self(query, reference), exclude_self=False)
  _, indices = retrieval.nearest_neighbors(query, reference, k=3, exclude_self=True,
                                           block_size=block_size)
  np.testing.assert_array_equal(indices, order[:, :3])


def _masked_self(query, reference):
  distances = _ref_distances(query, reference, "euclidean")
  distances[np.arange(len(query)), np.arange(len(query))] = np.inf
  return distances


@pytest.mark.parametrize("dtype, k, group", [
    (np.float32, 1, 4), (np.float64, 3, 8), (np.float32, 5, 1), (np.float64, 12, 2)])
def test_smallest_k_two_stage_equals_stable_argsort(dtype, k, group):
  rng = np.random.default_rng(2)
  keys = rng.integers(0, 6, size=(9, 48)).astype(dtype)  # heavy ties
  keys[0, :] = 3  # a row of one value
  values, indices = jit_fast_compile(retrieval._smallest_k, static_argnums=(1, 2))(keys, k, group)
  order = np.argsort(keys, axis=1, kind="stable")[:, :k]
  np.testing.assert_array_equal(np.asarray(indices), order)
  np.testing.assert_array_equal(np.asarray(values), np.take_along_axis(keys, order, axis=1))


@pytest.mark.parametrize("metric", ["euclidean", "squared_euclidean", "cosine", "great_circle"])
def test_nearest_neighbors_random_unit_vectors_float64(metric):
  rng = np.random.default_rng(3)
  query, reference = _unit_points(rng, 30), _unit_points(rng, 500)
  distances, indices = retrieval.nearest_neighbors(query, reference, k=6, metric=metric)
  ref_distances = _ref_distances(query, reference, metric)
  order = _ref_order(ref_distances, exclude_self=False)[:, :6]
  np.testing.assert_array_equal(indices, order)
  np.testing.assert_allclose(distances, np.take_along_axis(ref_distances, order, axis=1),
                             rtol=1e-9, atol=1e-7)


@pytest.mark.parametrize("metric", ["euclidean", "cosine", "great_circle"])
def test_nearest_neighbors_float32_up_to_near_ties(metric):
  rng = np.random.default_rng(4)
  x = _unit_points(rng, 400, dim=8, dtype=np.float32)
  k = 10
  distances, indices = retrieval.nearest_neighbors(x, k=k, metric=metric, block_size=96)
  ref_distances = _ref_distances(x, x, metric)
  np.fill_diagonal(ref_distances, np.inf)
  expected = np.sort(ref_distances, axis=1)[:, :k]
  tolerance = 1e-5
  np.testing.assert_allclose(distances, expected, atol=tolerance)
  # Each returned neighbour is at the reference distance of its rank (up to
  # float32 rounding), so it differs from the reference only at near-ties.
  chosen = np.take_along_axis(ref_distances, indices, axis=1)
  np.testing.assert_allclose(chosen, expected, atol=tolerance)
  assert np.all(indices != np.arange(len(x))[:, None])
  order = _ref_order(ref_distances, exclude_self=False)[:, :k]
  assert np.mean(indices == order) > 0.99


def test_nearest_neighbors_jit_matches_eager():
  rng = np.random.default_rng(5)
  x = _integer_points(rng, 300, dim=2, low=-3, high=3)
  jitted = retrieval.nearest_neighbors(x, k=4, block_size=64)
  with jax.disable_jit():
    eager = retrieval.nearest_neighbors(x, k=4, block_size=64)
  np.testing.assert_array_equal(jitted[1], eager[1])
  np.testing.assert_array_equal(jitted[0], eager[0])


def test_nearest_neighbors_all_others():
  # k = M - 1: every other point, in order; the self entry is never returned.
  x = np.array([[0.0], [2.0], [1.0], [1.0]])
  distances, indices = retrieval.nearest_neighbors(x, k=3)
  assert indices.tolist() == [[2, 3, 1], [2, 3, 0], [3, 0, 1], [2, 0, 1]]
  np.testing.assert_array_equal(distances[2], [0.0, 1.0, 1.0])


# ----------------------------------------------------------------------------
# retrieval_metrics.


@pytest.mark.parametrize("dtype, labels, same_set", [
    (np.float32, "int", True), (np.float64, "int", False),
    (np.float32, "multi_hot", False), (np.float64, "multi_hot", True)])
def test_retrieval_metrics_match_brute_force(dtype, labels, same_set):
  rng = np.random.default_rng(6)
  num_queries, num_references = 60, 90
  query = _integer_points(rng, num_queries, dtype=dtype)
  reference = None if same_set else _integer_points(rng, num_references, dtype=dtype)
  if labels == "int":
    # Class 9 has one member (a lone query when the set is its own
    # reference); class 8 is missing from the reference set.
    query_labels = rng.integers(0, 4, num_queries)
    query_labels[0], query_labels[1] = 9, 8
    reference_labels = None if same_set else rng.integers(0, 4, num_references)
  else:
    query_labels = _multi_hot(rng, num_queries)
    query_labels[0] = False  # no label: a lone query
    reference_labels = None if same_set else _multi_hot(rng, num_references).astype(np.int32)
  ks = (1, 3, 10)
  got = retrieval.retrieval_metrics(query, query_labels, reference, reference_labels, ks=ks,
                                    block_size=16)
  per_query = _ref_metrics(
      query, query_labels, query if same_set else reference,
      query_labels if same_set else reference_labels, ks, "euclidean", same_set, knn_k=10)
  expected = _ref_means(per_query, ks)
  assert list(got) == list(expected)
  assert all(isinstance(v, float) for v in got.values())
  for name in expected:
    assert got[name] == pytest.approx(expected[name], abs=1e-12), name
  assert per_query["relevant_count"].min() == 0  # lone queries were present
  assert per_query["relevant_count"].max() > max(ks)  # MAP@R needed a deeper search


def test_retrieval_metrics_per_query_and_cosine():
  rng = np.random.default_rng(7)
  x = _integer_points(rng, 80, dim=4, low=-1, high=2)
  y = rng.integers(0, 3, 80)
  y[5] = 7
  ks = (2, 4)
  got = retrieval.retrieval_metrics_per_query(x, y, ks=ks, metric="cosine", knn_k=5)
  expected = _ref_metrics(x, y, x, y, ks, "cosine", True, knn_k=5)
  for name, values in expected.items():
    np.testing.assert_allclose(got[name], values, atol=1e-12, err_msg=name)
  assert np.isnan(got["map_at_r"][5]) and got["relevant_count"][5] == 0
  assert got["knn_prediction"].shape == (80,)


def test_retrieval_metrics_block_sizes_agree():
  rng = np.random.default_rng(8)
  x = _unit_points(rng, 130, dim=4)
  y = rng.integers(0, 5, 130)
  results = [retrieval.retrieval_metrics(x, y, ks=(1, 5), block_size=b) for b in (1, 9, 64, None)]
  # JAX arrays are accepted as well as NumPy ones.
  results.append(retrieval.retrieval_metrics(jax.numpy.asarray(x), jax.numpy.asarray(y), ks=(1, 5)))
  for other in results[1:]:
    assert other == results[0]


def test_retrieval_metrics_hand_computed():
  # Query 0's neighbours by rank: 1 (relevant), 2, 3, 4 (relevant); R = 2.
  x = np.array([[0.0], [0.1], [1.0], [1.2], [5.0]])
  y = np.array([0, 0, 1, 1, 0])
  scores = retrieval.retrieval_metrics_per_query(x, y, ks=(1, 2, 4))
  assert scores["relevant_count"][0] == 2
  assert scores["r_precision"][0] == 0.5
  assert scores["map_at_r"][0] == 0.5  # (1/2) * (1/1)
  assert scores["map_at_4"][0] == pytest.approx((1 + 2 / 4) / 2)
  assert scores["map_at_1"][0] == 1.0
  # Query 4's neighbours: 3, 2 (class 1), 1, 0 (class 0): MAP@R = 0, mAP@4 = (1/3 + 2/4) / 2.
  assert scores["map_at_r"][4] == 0.0
  assert scores["map_at_4"][4] == pytest.approx((1 / 3 + 2 / 4) / 2)
  assert scores["recall_at_2"][4] == 0.0 and scores["recall_at_4"][4] == 1.0


def test_all_queries_lone_gives_nan():
  x = np.array([[0.0], [1.0], [2.0]])
  metrics = retrieval.retrieval_metrics(x, [0, 1, 2], ks=(1, 2))
  assert math.isnan(metrics["precision_at_1"]) and math.isnan(metrics["map_at_r"])
  assert metrics["recall_at_2"] == 0.0 and metrics["knn_accuracy"] == 0.0


# ----------------------------------------------------------------------------
# kNN classification.


def test_knn_tie_rule_class_of_nearest_neighbour():
  # Neighbours of the query at 0 by rank: 0.1 (class 5), 0.2 (class 3),
  # 0.3 (class 3), 0.4 (class 5): a 2-2 tie that class 5, the nearest, wins.
  reference = np.array([[0.1], [0.2], [0.3], [0.4], [9.0]])
  labels = np.array([5, 3, 3, 5, 3])
  result = retrieval.knn_classify(np.array([[0.0], [0.25]]), reference, labels, k=4)
  # Query 0.25: ranks 0.2, 0.3 (class 3), then 0.1 and 0.4 at 0.15 (class 5).
  assert result.predictions.tolist() == [5, 3]
  np.testing.assert_array_equal(result.confidences, [0.5, 0.5])


@pytest.mark.parametrize("labels", ["int", "multi_hot"])
def test_knn_classify_matches_brute_force(labels):
  rng = np.random.default_rng(9)
  query, reference = _integer_points(rng, 50), _integer_points(rng, 120)
  if labels == "int":
    reference_labels = rng.integers(-2, 3, 120)  # negative class ids are fine
  else:
    reference_labels = _multi_hot(rng, 120, num_labels=5)
  k = 7
  result = retrieval.knn_classify(query, reference, reference_labels, k=k, block_size=13)
  order = _ref_order(_ref_distances(query, reference, "euclidean"), exclude_self=False)
  for i, row in enumerate(order):
    prediction, votes = _ref_vote([reference_labels[j] for j in row[:k]])
    assert result.predictions[i] == prediction
    assert result.confidences[i] == votes / k


def test_knn_classify_leave_one_out():
  x = np.array([[0.0], [0.1], [0.2], [5.0], [5.1]])
  y = np.array([1, 1, 1, 2, 2])
  result = retrieval.knn_classify(x, None, y, k=1)
  assert result.predictions.tolist() == [1, 1, 1, 2, 2]


# ----------------------------------------------------------------------------
# Clustering.


def test_clustering_metrics_match_sklearn():
  cluster = pytest.importorskip("sklearn.cluster")
  metrics = pytest.importorskip("sklearn.metrics")
  rng = np.random.default_rng(10)
  centres = rng.normal(size=(4, 6)) * 3
  labels = rng.integers(0, 4, 100)
  x = centres[labels] + rng.normal(size=(100, 6))
  got = retrieval.clustering_metrics(x, labels, seed=3)
  clusters = cluster.KMeans(n_clusters=4, n_init=1, random_state=3).fit_predict(x)
  assert got["nmi"] == pytest.approx(metrics.normalized_mutual_info_score(labels, clusters))
  assert got["ami"] == pytest.approx(metrics.adjusted_mutual_info_score(labels, clusters))
  assert 0.0 < got["ami"] <= got["nmi"] <= 1.0
  separated = retrieval.clustering_metrics(centres[labels] * 10, labels, num_clusters=4)
  assert separated == {"nmi": pytest.approx(1.0), "ami": pytest.approx(1.0)}


# ----------------------------------------------------------------------------
# Retrieval calibration (LAM).


def _ref_ece(confidences, correct, num_bins):
  total = 0.0
  for b in range(num_bins):
    low, high = b / num_bins, (b + 1) / num_bins
    members = [i for i, c in enumerate(confidences)
               if low <= c < high or (b == num_bins - 1 and c == 1.0)]
    if members:
      accuracy = np.mean([correct[i] for i in members])
      confidence = np.mean([confidences[i] for i in members])
      total += len(members) / len(confidences) * abs(accuracy - confidence)
  return total


def test_retrieval_calibration_matches_brute_force():
  rng = np.random.default_rng(11)
  num_samples, num_queries = 6, 40
  reference = _integer_points(rng, 30, dim=2)
  reference_labels = rng.integers(0, 4, 30)
  query_labels = rng.integers(0, 4, num_queries)
  samples = rng.normal(size=(num_samples, num_queries, 2)) * 1.5
  result = retrieval.retrieval_calibration(samples, query_labels, reference, reference_labels,
                                           num_bins=5)
  for i in range(num_queries):
    retrieved = []
    for s in range(num_samples):
      order = _ref_order(_ref_distances(samples[s, i:i + 1], reference, "euclidean"), False)
      retrieved.append(int(reference_labels[order[0, 0]]))
    counts = {c: retrieved.count(c) for c in set(retrieved)}
    mode = min(counts, key=lambda c: (-counts[c], c))  # ties: smallest class id
    assert result.predictions[i] == mode
    assert result.confidences[i] == counts[mode] / num_samples
    assert result.correct[i] == (mode == query_labels[i])
  assert result.ece == pytest.approx(
      _ref_ece(result.confidences, result.correct, 5), abs=1e-12)


def test_retrieval_calibration_ece_top_bin_and_agreement():
  # Every sample retrieves the same label: confidence exactly 1.0, top bin.
  reference = np.array([[0.0], [10.0]])
  samples = np.zeros((4, 3, 1))
  result = retrieval.retrieval_calibration(samples, [0, 0, 1], reference, [0, 1], num_bins=10)
  np.testing.assert_array_equal(result.confidences, 1.0)
  assert result.ece == pytest.approx(1 / 3)
  from sphereembed.evaluation import calibration  # pylint: disable=import-outside-toplevel
  expected = calibration.expected_calibration_error(result.confidences, result.correct, 10)
  assert result.ece == pytest.approx(expected)


# ----------------------------------------------------------------------------
# Bad input.

_X = np.arange(12.0).reshape(6, 2)
_Y = np.array([0, 0, 1, 1, 2, 2])


@pytest.mark.parametrize("call, message", [
    (lambda: retrieval.nearest_neighbors(_X, k=6), "larger than the 5 references"),
    (lambda: retrieval.nearest_neighbors(_X, _X, k=7), "larger than the 6 references"),
    (lambda: retrieval.nearest_neighbors(_X, k=0), "positive integer"),
    (lambda: retrieval.nearest_neighbors(_X, k=1.5), "positive integer"),
    (lambda: retrieval.nearest_neighbors(_X[:0], k=1), "empty"),
    (lambda: retrieval.nearest_neighbors(_X[0], k=1), r"shape \(N, D\)"),
    (lambda: retrieval.nearest_neighbors(_X.astype(int), k=1), "floating"),
    (lambda: retrieval.nearest_neighbors(np.where(_X == 3, np.nan, _X), k=1), "NaN or infinite"),
    (lambda: retrieval.nearest_neighbors(_X, np.full((2, 2), np.inf), k=1), "NaN or infinite"),
    (lambda: retrieval.nearest_neighbors(_X, np.ones((3, 3)), k=1), "same dimension"),
    (lambda: retrieval.nearest_neighbors(_X, k=1, metric="manhattan"), "Unknown metric"),
    (lambda: retrieval.nearest_neighbors(_X, k=1, block_size=0), "block_size"),
    (lambda: retrieval.nearest_neighbors(_X, _X[:3], k=1, exclude_self=True), "first rows"),
    (lambda: retrieval.retrieval_metrics(_X, _Y[:5]), "5 rows but there are 6"),
    (lambda: retrieval.retrieval_metrics(_X, _Y.astype(float)), "integer class ids"),
    (lambda: retrieval.retrieval_metrics(_X, _Y[:, None, None]), "must have shape"),
    (lambda: retrieval.retrieval_metrics(_X, np.full((6, 3), 2)), "only 0 and 1"),
    (lambda: retrieval.retrieval_metrics(_X, np.ones((6, 3))), "bool or integer"),
    (lambda: retrieval.retrieval_metrics(_X, _Y, ks=(1, 6)), "larger than the 5"),
    (lambda: retrieval.retrieval_metrics(_X, _Y, ks=()), "at least one"),
    (lambda: retrieval.retrieval_metrics(_X, _Y, ks=(0,)), "positive integer"),
    (lambda: retrieval.retrieval_metrics(_X, _Y, ks=(1,), knn_k=9), "knn_k"),
    (lambda: retrieval.nearest_neighbors(_X * 1e200, k=1), "too large"),
    (lambda: retrieval.retrieval_metrics(_X, _Y, _X), "without reference_labels"),
    (lambda: retrieval.retrieval_metrics(_X, _Y, None, _Y), "without reference"),
    (lambda: retrieval.retrieval_metrics(_X, _Y, _X, np.ones((6, 2), bool)), "both"),
    (lambda: retrieval.retrieval_metrics(_X, _Y, _X, _Y[:4]), "4 rows but there are 6"),
    (lambda: retrieval.knn_classify(_X, _X, _Y, k=7), "larger than"),
    (lambda: retrieval.clustering_metrics(_X, np.ones((6, 2), bool)), "integer class ids"),
    (lambda: retrieval.clustering_metrics(_X, _Y, num_clusters=7), "num_clusters"),
    (lambda: retrieval.retrieval_calibration(_X, _Y, _X, _Y), r"\(S, Q, D\)"),
    (lambda: retrieval.retrieval_calibration(_X[None], _Y, _X, _Y, num_bins=0), "num_bins"),
    (lambda: retrieval.retrieval_calibration(_X[None], _Y[:2], _X, _Y), "2 rows but there are 6"),
    (lambda: retrieval.retrieval_calibration(_X[None], _Y, np.ones((2, 3)), _Y[:2]),
     "same dimension"),
])
def test_bad_input_raises_value_error(call, message):
  with pytest.raises(ValueError, match=message):
    call()


@pytest.mark.parametrize("multi_hot", [False, True])
def test_metrics_from_neighbors_equal_our_own_search(multi_hot):
  from sphereembed.evaluation.retrieval import retrieval_metrics_from_neighbors
  rng = np.random.default_rng(3)
  x = rng.normal(size=(60, 4))
  labels = (rng.random((60, 5)) < 0.3).astype(np.int64) if multi_hot else rng.integers(0, 4, 60)
  ours = retrieval.retrieval_metrics_per_query(x, labels, ks=(1, 3), knn_k=5)
  # A brute-force leave-one-out search, in two chunks of queries.
  distances = np.linalg.norm(x[:, None] - x[None], axis=-1)
  np.fill_diagonal(distances, np.inf)
  order = np.argsort(distances, axis=1, kind="stable")[:, :59]
  chunks = [retrieval_metrics_from_neighbors(order[a:b], labels[a:b], labels, ks=(1, 3), knn_k=5,
                                             queries_in_references=True)
            for a, b in ((0, 25), (25, 60))]
  for name, value in ours.items():
    np.testing.assert_allclose(np.concatenate([c[name] for c in chunks]), value, err_msg=name)


def test_metrics_from_neighbors_refuse_short_or_foreign_lists():
  from sphereembed.evaluation.retrieval import retrieval_metrics_from_neighbors
  labels = np.array([0, 0, 0, 1])
  with pytest.raises(ValueError, match="need the nearest 3"):
    retrieval_metrics_from_neighbors([[1, 2]], [0], labels, ks=(1,))
  with pytest.raises(ValueError, match="must index the 4 references"):
    retrieval_metrics_from_neighbors([[1, 4, 2]], [0], labels, ks=(1,))
  with pytest.raises(ValueError, match="int array"):
    retrieval_metrics_from_neighbors([[1.0, 2.0, 3.0]], [0], labels, ks=(1,))
