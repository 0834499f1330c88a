#!/usr/bin/env python3
"""Exact kNN and retrieval metrics at Fashion-MNIST scale: sphereembed vs faiss-cpu and scikit-learn.

All 70,000 Fashion-MNIST images (training and test split together, 7,000 per
class) get a D = 128 embedding: random unit vectors by default (the labels are
the real ones), or, with ``--embeddings pca``, the pixels projected on their
first 128 principal components and L2-normalised (a real neighbourhood
structure, so the metrics mean something). Every image is a query against all
the others (leave-one-out), and two tasks are timed in the same run:

* ``knn``: the exact 10 nearest neighbours of every image, by
  :func:`sphereembed.evaluation.retrieval.nearest_neighbors` (blocked, jitted
  ``lax.top_k``), faiss-cpu ``IndexFlatL2`` (``search`` with k + 1, the image
  itself dropped) and scikit-learn ``NearestNeighbors(algorithm="brute")``
  (``kneighbors()`` without ``X``, which leaves each sample out).
* ``metrics``: P@1, R-precision, MAP@R, mAP@k and recall@k for k in
  {1, 5, 10} and the 10-NN accuracy. Ours is
  :func:`~sphereembed.evaluation.retrieval.retrieval_metrics` (one search
  ``max(R)`` = 6,999 deep, blocked). The peers search the same depth in
  chunks of queries and hand each chunk's neighbour lists to the same NumPy
  metric code that ours uses, so the difference is the search.

Each (task, framework) runs in its own subprocess: wall time of the whole
call (ours includes its JIT compilation; a second, warm call is timed too for
``knn``), and peak memory as the increase of the process' VmHWM over its
level after imports and data loading. The neighbour lists of the three
frameworks are compared (identical, or different only between neighbours
whose float64 distances are equal within a tolerance: ties), and so are the
metric values.

Usage (from the repository root; about 15 minutes on 2 cores)::

  python benchmarks/retrieval.py --output benchmarks/RESULTS.md
  python benchmarks/retrieval.py --smoke          # 3,000 images, prints only

Needs ``faiss-cpu`` and ``scikit-learn`` (the ``bench`` and ``test`` extras);
a missing peer is skipped with a note. Run it on a quiet machine: the numbers
are wall-clock times.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.util
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
import traceback

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_loss_benchmark():
  """benchmarks/losses.py as a module (benchmarks/ is not a package)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "losses.py")
  spec = importlib.util.spec_from_file_location("sphereembed_benchmark_losses", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# Shared with the loss benchmark: machine/version info, VmHWM helpers, the
# worker result marker.
_lb = _load_loss_benchmark()

ALL_TASKS = ("knn", "metrics")
ALL_FRAMEWORKS = ("sphereembed", "faiss", "sklearn")
FRAMEWORK_LABEL = {"sphereembed": "sphereembed (JAX)", "faiss": "faiss-cpu `IndexFlatL2`",
                   "sklearn": "scikit-learn `NearestNeighbors` (brute)"}
PEER_PACKAGE = {"faiss": "faiss-cpu", "sklearn": "scikit-learn"}
KS = (1, 5, 10)
KNN_K = 10                # neighbours of the knn task and voters of knn_accuracy
FLOOR = 2.0               # the floor: ours within 2x of faiss-cpu's wall time
TIE_TOLERANCE = 1e-5      # float64 distance gap below which two neighbours count as tied
PEER_CHUNK = 1024         # queries per peer search call in the metrics task
SECTION_BEGIN = "<!-- retrieval-benchmark -->"
SECTION_END = "<!-- /retrieval-benchmark -->"




# ---------------------------------------------------------------------------
# Data (made once in the parent, read by every worker).


def make_data(kind: str, dim: int, seed: int, limit: int | None):
  """``(embeddings, labels, info)``: float32 ``(N, dim)`` unit rows and int64 labels."""
  import numpy as np
  from sphereembed import data as data_lib
  note = None
  try:
    dataset = data_lib.load_dataset("fashion_mnist")
  except data_lib.DataNotFoundError as e:
    first = str(e).strip().splitlines()[0]
    note = f"Fashion-MNIST not found ({first[:160]}); random labels 0-9 used instead"
    print("NOTE: " + note, flush=True)
    dataset = None
  rng = np.random.default_rng(seed)
  if dataset is not None:
    images = np.concatenate([dataset.train.images, dataset.test.images])
    labels = np.concatenate([dataset.train.labels, dataset.test.labels]).astype(np.int64)
    source = os.path.relpath(dataset.source, REPO_ROOT) if os.path.isabs(dataset.source) else (
        dataset.source)
  else:
    images, labels, source = None, rng.integers(0, 10, 70000), None
  if limit:
    labels = labels[:limit]
    images = None if images is None else images[:limit]
  n = len(labels)
  if kind == "pca":
    if images is None:
      raise SystemExit("--embeddings pca needs the Fashion-MNIST images")
    pixels = images.reshape(n, -1).astype(np.float64) / 255.0
    pixels -= pixels.mean(axis=0)
    # Principal axes from the D x D covariance (cheaper than an SVD of N x D).
    _, vectors = np.linalg.eigh(pixels.T @ pixels)
    x = pixels @ vectors[:, ::-1][:, :dim]
    text = f"the pixels on their first {dim} principal components, L2-normalised"
  else:
    x = rng.standard_normal((n, dim))
    text = f"random standard-normal vectors (seed {seed}), L2-normalised"
  x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
  counts = np.bincount(labels)
  info = {"kind": kind, "n": n, "dim": dim, "source": source, "note": note,
          "class_counts": counts.tolist(),
          "digest": hashlib.sha1(x.tobytes() + labels.tobytes()).hexdigest()[:12],
          "text": (f"{n:,} Fashion-MNIST images" + (f" ({source}, training + test split)"
                                                     if source else "")
                   + f" with {text}, float32, D = {dim}; labels: the 10 classes "
                   f"({counts.min():,}-{counts.max():,} images each)")}
  return x, labels, info


# ---------------------------------------------------------------------------
# Workers (one subprocess each).


def _drop_self(distances, indices):
  """``(Q, k + 1)`` lists of a search that included the query itself -> ``(Q, k)``.

  Removes the query's own index where it was found and the last entry
  otherwise (the same rule as sphereembed's kernel).
  """
  import numpy as np
  k = indices.shape[1] - 1
  rows = np.arange(len(indices))[:, None]
  own = indices == rows
  position = np.where(own.any(axis=1), own.argmax(axis=1), k)
  keep = np.arange(k)[None, :]
  keep = keep + (keep >= position[:, None])
  return (np.take_along_axis(distances, keep, axis=1), np.take_along_axis(indices, keep, axis=1))


def _faiss_index(x, threads):
  import faiss
  faiss.omp_set_num_threads(threads)
  index = faiss.IndexFlatL2(x.shape[1])
  index.add(x)
  return index


def _chunked_search(search, n, depth):
  """``search(start, stop, depth + 1)`` over query chunks, the query itself dropped."""
  for start in range(0, n, PEER_CHUNK):
    stop = min(start + PEER_CHUNK, n)
    distances, indices = search(start, stop, depth + 1)
    distances, indices = _drop_self(distances, indices - start)
    yield start, stop, indices + start


def _peer_metrics(search, labels, ks=KS, knn_k=KNN_K):
  """The metrics of ``retrieval_metrics`` from a peer's search, with our metric code."""
  import numpy as np
  from sphereembed.evaluation import retrieval
  # Leave-one-out: each query's R counts the other images of its class.
  depth = int(max(max(ks), knn_k, np.bincount(labels).max() - 1))
  blocks = [retrieval.retrieval_metrics_from_neighbors(
      indices, labels[start:stop], labels, ks=ks, knn_k=knn_k, queries_in_references=True)
            for start, stop, indices in _chunked_search(search, len(labels), depth)]
  per_query = {name: np.concatenate([b[name] for b in blocks]) for name in blocks[0]}
  return per_query, depth


def _means(per_query, ks=KS):
  """The averages of ``retrieval_metrics`` (lone queries out of P@1, R-precision, MAP@R, mAP@k)."""
  import numpy as np
  valid = per_query["relevant_count"] > 0
  out = {}
  for name in ["precision_at_1", "r_precision", "map_at_r"] + [f"map_at_{k}" for k in ks]:
    out[name] = float(np.mean(per_query[name][valid])) if valid.any() else math.nan
  for name in [f"recall_at_{k}" for k in ks] + ["knn_correct"]:
    out["knn_accuracy" if name == "knn_correct" else name] = float(np.mean(per_query[name]))
  return out


def worker(framework: str, task: str, cfg: dict) -> dict:
  """Runs one (task, framework) measurement in this process."""
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import numpy as np
  result = {"framework": framework, "task": task}
  stage = "import"
  try:
    if framework == "sphereembed":
      import jax
      from sphereembed.evaluation import retrieval
      result["jax_devices"] = [str(d) for d in jax.devices()]
    elif framework == "faiss":
      import faiss
      result["faiss_threads"] = cfg["threads"]
    else:
      from sklearn.neighbors import NearestNeighbors
      result["sklearn_n_jobs"] = cfg["threads"]
    stage = "data"
    with np.load(cfg["data_path"]) as f:
      x, labels = f["embeddings"], f["labels"]
    baseline = _lb.current_rss_bytes()
    result["peak_reset"] = _lb.reset_peak_rss()
    result["baseline_rss_bytes"] = baseline

    if task == "knn":
      k = cfg["k"]
      if framework == "sphereembed":
        def run():
          return retrieval.nearest_neighbors(x, k=k)
      elif framework == "faiss":
        def run():
          index = _faiss_index(x, cfg["threads"])
          squared, indices = index.search(x, k + 1)
          squared, indices = _drop_self(squared, indices)
          return np.sqrt(np.maximum(squared, 0)), indices
      else:
        def run():
          model = NearestNeighbors(n_neighbors=k, algorithm="brute", n_jobs=cfg["threads"])
          return model.fit(x).kneighbors()  # X=None: each sample left out
    else:
      if framework == "sphereembed":
        def run():
          per_query = retrieval.retrieval_metrics_per_query(x, labels, ks=KS, knn_k=KNN_K)
          return per_query, int(per_query["relevant_count"].max())
      elif framework == "faiss":
        def run():
          index = _faiss_index(x, cfg["threads"])
          return _peer_metrics(lambda a, b, depth: index.search(x[a:b], depth), labels)
      else:
        def run():
          model = NearestNeighbors(algorithm="brute", n_jobs=cfg["threads"]).fit(x)
          return _peer_metrics(
              lambda a, b, depth: model.kneighbors(x[a:b], n_neighbors=depth), labels)

    times = []
    for _ in range(cfg["repeats"][task]):
      stage = f"run {len(times) + 1}"
      t0 = time.perf_counter()
      output = run()
      times.append(time.perf_counter() - t0)
      result["peak_rss_increase_bytes"] = _lb.peak_rss_bytes() - baseline
    result["times_s"] = times
    result["peak_rss_bytes"] = _lb.peak_rss_bytes()
    stage = "save"
    if task == "knn":
      distances, indices = output
      np.savez(cfg["out_path"], distances=np.asarray(distances, np.float64),
               indices=np.asarray(indices, np.int64))
    else:
      per_query, depth = output
      result["depth"] = depth
      result["metrics"] = _means(per_query)
      np.savez(cfg["out_path"], map_at_r=per_query["map_at_r"])
    result["status"] = "ok"
  except Exception as e:  # noqa: BLE001
    result.update(status="error", error=f"{stage}: {type(e).__name__}: {e}"[:500],
                  traceback=traceback.format_exc()[-2000:])
  return result


def worker_main(spec: str, cfg_json: str) -> int:
  framework, task = spec.split(":")
  result = worker(framework, task, json.loads(cfg_json))
  sys.stdout.write(_lb.RESULT_MARK + json.dumps(result) + "\n")
  sys.stdout.flush()
  return 0


def run_worker(framework: str, task: str, cfg: dict, timeout_s: float) -> dict:
  """Runs one measurement in a fresh interpreter; never raises."""
  cmd = [sys.executable, os.path.abspath(__file__), "--worker", f"{framework}:{task}",
         "--worker-config", json.dumps(cfg)]
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
  env.setdefault("JAX_PLATFORMS", "cpu")
  t0 = time.monotonic()
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, env=env,
                          timeout=timeout_s)
  except subprocess.TimeoutExpired:
    return {"framework": framework, "task": task, "status": "timeout",
            "error": f"killed after {timeout_s:g} s", "worker_wall_s": time.monotonic() - t0}
  result = None
  for line in proc.stdout.splitlines():
    if line.startswith(_lb.RESULT_MARK):
      result = json.loads(line[len(_lb.RESULT_MARK):])
  if result is None:
    last = [l for l in proc.stderr.strip().splitlines() if l.strip()][-3:]
    result = {"framework": framework, "task": task, "status": "error",
              "error": (f"exit code {proc.returncode}: " + " | ".join(last))[:500]}
  result["worker_wall_s"] = time.monotonic() - t0
  return result


# ---------------------------------------------------------------------------
# Checks across frameworks.


def compare_neighbours(x, ours_path: str, peer_path: str) -> dict:
  """Where the two neighbour lists differ, are the neighbours tied (float64 distances)?"""
  import numpy as np
  with np.load(ours_path) as f:
    ours = f["indices"]
  with np.load(peer_path) as f:
    peer = f["indices"]
  different = ours != peer
  rows = np.nonzero(different.any(axis=1))[0]
  gap = 0.0
  if len(rows):
    q = x[rows].astype(np.float64)[:, None, :]
    d_ours = np.linalg.norm(q - x[ours[rows]].astype(np.float64), axis=-1)
    d_peer = np.linalg.norm(q - x[peer[rows]].astype(np.float64), axis=-1)
    gap = float(np.max(np.abs(d_ours - d_peer)))
  return {"identical_fraction": float(1 - different.mean()), "rows_different": int(len(rows)),
          "max_rank_distance_gap": gap, "up_to_ties": bool(gap <= TIE_TOLERANCE)}


def compare_metrics(ours: dict, peer: dict) -> float:
  return max(abs(ours[name] - peer[name]) for name in ours)


# ---------------------------------------------------------------------------
# The table and RESULTS.md.

TABLE_HEADER = ("| task | framework | wall s | warm wall s | ours / peer | peak ΔRSS MB | "
                "neighbours vs ours | metric values vs ours |\n"
                "|---|---|---:|---:|---:|---:|---|---|\n")


def _ok(row):
  return row is not None and row.get("status") == "ok"


def _row(rows, task, framework):
  return next((r for r in rows if r["task"] == task and r["framework"] == framework), None)


def _ratio(rows, task, framework, warm=False):
  """Our wall time over the peer's (first call; ``warm``: best call)."""
  ours, peer = _row(rows, task, "sphereembed"), _row(rows, task, framework)
  if not (_ok(ours) and _ok(peer)):
    return None
  pick = min if warm else (lambda t: t[0])
  return pick(ours["times_s"]) / pick(peer["times_s"])


def row_text(row, rows) -> str:
  cells = [row["task"], FRAMEWORK_LABEL[row["framework"]]]
  if not _ok(row):
    error = str(row.get("error", "?"))[:120].replace("|", "/").replace("\n", " ")
    return "| " + " | ".join(cells + [f"{row.get('status', 'error')}: {error}"] + ["—"] * 5) + " |"
  times = row["times_s"]
  cells += [f"{times[0]:.1f}", f"{min(times[1:]):.1f}" if len(times) > 1 else "—"]
  if row["framework"] == "sphereembed":
    cells.append("(ours)")
  else:
    ratio = _ratio(rows, row["task"], row["framework"])
    cells.append("—" if ratio is None else f"**{ratio:.2f}**")
  cells.append(f"{row['peak_rss_increase_bytes'] / 2**20:.0f}")
  check = row.get("neighbour_check")
  if row["framework"] == "sphereembed" or row["task"] != "knn":
    cells.append("—")
  elif check is None:
    cells.append("not compared")
  else:
    verdict = "✓ identical up to ties" if check["up_to_ties"] else "✗ DIFFERENT"
    cells.append(f"{verdict}: {100 * check['identical_fraction']:.4f}% identical, "
                 f"{check['rows_different']} rows differ, max gap "
                 f"{check['max_rank_distance_gap']:.1e}")
  if row["task"] == "metrics" and row["framework"] != "sphereembed":
    diff = row.get("metric_max_abs_diff")
    cells.append("—" if diff is None else f"max \\|Δ\\| {diff:.1e}")
  else:
    cells.append("—")
  return "| " + " | ".join(cells) + " |"


def floor_text(rows) -> str:
  parts = []
  for task in ALL_TASKS:
    ratio = _ratio(rows, task, "faiss")
    if ratio is None:
      parts.append(f"{task}: not measured")
      continue
    warm = _ratio(rows, task, "faiss", warm=True)
    verdict = "met" if ratio <= FLOOR else "**NOT met**"
    parts.append(f"{task}: ours / faiss = {ratio:.2f}× (first calls"
                 + (f"; {warm:.2f}× best calls" if warm is not None and task == "knn" else "")
                 + f") — {verdict}")
  return f"Floor (ours within {FLOOR:g}× of faiss-cpu's wall time): " + "; ".join(parts) + "."


def section_text(rows, info, data_info, args, command, started, finished, skipped) -> str:
  lines = [SECTION_BEGIN, "# Retrieval benchmark: exact kNN and retrieval metrics vs faiss-cpu "
           "and scikit-learn", ""]
  if args.note:
    lines += [f"> **{args.note}**", ""]
  if args.smoke:
    lines += ["> **Smoke run (a subset): the numbers mean nothing.**", ""]
  if info["loadavg_start"][0] > 0.25 * info["cpus_available"]:
    lines += [f"> **The machine was busy (1-min load {info['loadavg_start'][0]:.2f} on "
              f"{info['cpus_available']} CPUs at the start): all three frameworks compete with "
              "other work for the cores, so the times are inflated and noisy.**", ""]
  ours = _row(rows, "metrics", "sphereembed") or {}
  lines += [
      f"Command (from the repository root): `{command}`",
      "",
      f"Started {started}, " + (f"finished {finished}." if finished else
                                "**still running / interrupted** (rows so far)."),
      "",
      f"Machine: {info['cpu']}, {info['logical_cpus']} logical CPUs ({info['cpus_available']} "
      f"available; XLA's pool and sphereembed's 2 block threads, faiss's OpenMP threads and "
      f"scikit-learn's `n_jobs` all use {args.threads}), "
      + (f"{info['ram_gib']:.1f} GiB RAM" if info["ram_gib"] else "RAM unknown")
      + f", {info['os']}.",
      "",
      "Versions: " + ", ".join(
          f"{k} {info[k]}" for k in ("python", "jax", "jaxlib", "numpy", "faiss-cpu",
                                     "scikit-learn")) + ".",
      "",
      f"sphereembed commit: {info['sphereembed']}.",
      "",
      "Load average (1, 5, 15 min) at the start: "
      + ", ".join(f"{v:.2f}" for v in info["loadavg_start"])
      + (f"; 1-min load after each row: "
         + ", ".join(f"{r['loadavg_after']:.2f}" for r in rows) if rows else "")
      + f" (on {info['cpus_available']} CPUs; anything well above 0 means other work competed "
      "for the cores).",
      "",
      f"Data: {data_info['text']} (digest {data_info['digest']})."
      + (f" **{data_info['note']}.**" if data_info["note"] else ""),
      "",
      f"Tasks: every image is a query against all the others (leave-one-out). *knn*: the exact "
      f"{KNN_K} nearest neighbours (euclidean). *metrics*: P@1, R-precision, MAP@R, mAP@k and "
      f"recall@k for k in {{{', '.join(map(str, KS))}}}, {KNN_K}-NN accuracy; MAP@R needs each query's top R "
      f"(R = {ours.get('depth', 'max R')} here), so every framework searches that deep. "
      "Ours: `nearest_neighbors(x, k=10)` and `retrieval_metrics_per_query(x, labels)` with "
      "their defaults. Peers (knn): faiss `IndexFlatL2.search(x, 11)` minus each image "
      "itself; scikit-learn `NearestNeighbors(n_neighbors=10, algorithm=\"brute\")"
      ".kneighbors()`. Peers (metrics): the same searches "
      f"{ours.get('depth', 'max R')} + 1 deep in chunks of {PEER_CHUNK} queries, each chunk's "
      "lists handed to our metric code (`retrieval_metrics_from_neighbors`), so only the search "
      "differs.",
      "",
      f"Timing: each (task, framework) in its own subprocess; *wall s* is the first call "
      f"(ours: including JIT compilation), *warm wall s* the best of the further calls "
      f"({args.repeats_knn} calls for knn, {args.repeats_metrics} for metrics). *peak ΔRSS*: "
      "the subprocess' VmHWM minus its RSS after imports and data loading (ours: including "
      "XLA's compiler).",
      "",
      "## Results",
      "",
      TABLE_HEADER.rstrip("\n"),
  ]
  lines += [row_text(r, rows) for r in rows]
  metrics_rows = [r for r in rows if r["task"] == "metrics" and _ok(r)]
  lines += ["", floor_text(rows), ""]
  if metrics_rows:
    names = list(metrics_rows[0]["metrics"])
    lines += ["Metric values (identical up to ties across frameworks, see the last column):", "",
              "| framework | " + " | ".join(f"`{n}`" for n in names) + " |",
              "|---|" + "---:|" * len(names)]
    for r in metrics_rows:
      lines.append(f"| {FRAMEWORK_LABEL[r['framework']]} | "
                   + " | ".join(f"{r['metrics'][n]:.4f}" for n in names) + " |")
    lines.append("")
  lines += [
      "Columns: *ours / peer*: our wall time over the peer's (first calls), < 1 means ours is "
      "faster. *neighbours vs ours*: the fraction of (query, rank) entries with the same "
      "reference index as ours; where they differ, *max gap* is the largest difference of the "
      "float64 distances of the two neighbours at the same rank, and the lists count as "
      f"identical up to ties when it is at most {TIE_TOLERANCE:g} (float32 rounding of "
      "near-equal distances orders them differently in each library). *metric values vs "
      "ours*: the largest absolute difference over all metrics.",
      "",
  ]
  if skipped:
    lines += ["Skipped:", ""] + [f"* {s}" for s in skipped] + [""]
  lines.append(SECTION_END)
  return "\n".join(lines) + "\n"




# ---------------------------------------------------------------------------
# Main.


def _parse_list(text: str, allowed) -> list[str]:
  items = [t.strip() for t in text.split(",") if t.strip()]
  for item in items:
    if item not in allowed:
      raise SystemExit(f"unknown {item!r}; choose from {', '.join(allowed)}")
  return items


def main(argv=None) -> int:
  """Runs the benchmark; returns 0, or 1 when a measurement failed."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--embeddings", choices=("random", "pca"), default="random",
                      help="random unit vectors (default) or the pixels' first D principal "
                           "components")
  parser.add_argument("--dim", type=int, default=128, help="embedding dimension D")
  parser.add_argument("--tasks", default=",".join(ALL_TASKS),
                      help=f"comma-separated subset of {','.join(ALL_TASKS)}")
  parser.add_argument("--frameworks", default=",".join(ALL_FRAMEWORKS),
                      help=f"comma-separated subset of {','.join(ALL_FRAMEWORKS)}")
  parser.add_argument("--repeats-knn", type=int, default=2, help="calls timed in the knn task")
  parser.add_argument("--repeats-metrics", type=int, default=1,
                      help="calls timed in the metrics task")
  parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                      help="faiss OpenMP threads and scikit-learn n_jobs (default: all cores)")
  parser.add_argument("--limit", type=int, default=None,
                      help="use only the first N images (default: all 70,000)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--smoke", action="store_true", help="3,000 images, to check that it runs")
  parser.add_argument("--timeout", type=float, default=1800.0,
                      help="wall-clock limit of one measurement subprocess, seconds")
  parser.add_argument("--output", default=None,
                      help="markdown file whose retrieval-benchmark section is (re)written "
                           "(e.g. benchmarks/RESULTS.md); default: print only")
  parser.add_argument("--raw-dir", default=os.path.join("benchmarks", "_raw"),
                      help="JSON lines of every measurement go here (git-ignored)")
  parser.add_argument("--note", default="", help="a line put at the top of the section")
  parser.add_argument("--worker", help=argparse.SUPPRESS)
  parser.add_argument("--worker-config", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)

  if args.worker:
    return worker_main(args.worker, args.worker_config)
  if args.smoke:
    args.limit = args.limit or 3000

  command = "python benchmarks/retrieval.py" + "".join(
      " " + shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
  tasks = _parse_list(args.tasks, ALL_TASKS)
  frameworks = _parse_list(args.frameworks, ALL_FRAMEWORKS)
  skipped = []
  for framework in [f for f in frameworks if f != "sphereembed"]:
    if _lb.version(PEER_PACKAGE[framework]) == "not installed":
      msg = f"{PEER_PACKAGE[framework]} not installed (pip install {PEER_PACKAGE[framework]})"
      print("NOTE: " + msg, flush=True)
      skipped.append(msg)
      frameworks.remove(framework)

  info = _lb.machine_info(args.threads)
  info["sphereembed"] = _lb.git_commit()
  for dist in ("faiss-cpu", "scikit-learn"):
    info[dist] = _lb.version(dist)
  info["loadavg_start"] = os.getloadavg()
  if info["loadavg_start"][0] > 0.25 * info["cpus_available"]:
    print(f"WARNING: 1-minute load average {info['loadavg_start'][0]:.2f} on "
          f"{info['cpus_available']} CPUs: the machine is busy and timings will be noisy.",
          flush=True)
  started = datetime.datetime.now().isoformat(timespec="seconds")
  output = None
  if args.output:
    output = args.output if os.path.isabs(args.output) else os.path.join(REPO_ROOT, args.output)
  raw_dir = args.raw_dir if os.path.isabs(args.raw_dir) else os.path.join(REPO_ROOT, args.raw_dir)
  os.makedirs(raw_dir, exist_ok=True)
  raw_path = os.path.join(raw_dir, f"retrieval-{datetime.datetime.now():%Y%m%d-%H%M%S}.jsonl")

  x, labels, data_info = make_data(args.embeddings, args.dim, args.seed, args.limit)
  print(f"# {command}", flush=True)
  print(f"# machine: {info['cpu']}, {info['cpus_available']} CPUs; data: {data_info['text']}; "
        f"raw results: {os.path.relpath(raw_path, REPO_ROOT)}", flush=True)
  print(TABLE_HEADER, end="", flush=True)
  rows = []
  with tempfile.TemporaryDirectory(prefix="sphereembed-retrieval-bench-") as tmp:
    import numpy as np
    data_path = os.path.join(tmp, "data.npz")
    np.savez(data_path, embeddings=x, labels=labels)
    for task in tasks:
      for framework in frameworks:
        out_path = os.path.join(tmp, f"{task}-{framework}.npz")
        cfg = dict(data_path=data_path, out_path=out_path, k=KNN_K, threads=args.threads,
                   repeats={"knn": args.repeats_knn, "metrics": args.repeats_metrics})
        row = run_worker(framework, task, cfg, args.timeout)
        row["loadavg_after"] = os.getloadavg()[0]
        ours = _row(rows, task, "sphereembed")
        if _ok(row) and _ok(ours) and framework != "sphereembed":
          if task == "knn":
            row["neighbour_check"] = compare_neighbours(
                x, os.path.join(tmp, f"{task}-sphereembed.npz"), out_path)
          else:
            row["metric_max_abs_diff"] = compare_metrics(ours["metrics"], row["metrics"])
        rows.append(row)
        print(row_text(row, rows), flush=True)
        with open(raw_path, "a") as f:
          f.write(json.dumps({**row, "config": {k: v for k, v in cfg.items()
                                                if not k.endswith("_path")},
                              "data": data_info}) + "\n")
  info["loadavg_end"] = os.getloadavg()[0]
  finished = datetime.datetime.now().isoformat(timespec="seconds")
  print("\n" + floor_text(rows))
  for row in rows:
    if row["task"] == "metrics" and _ok(row):
      print(f"# {row['framework']} metrics: "
            + ", ".join(f"{k} {v:.4f}" for k, v in row["metrics"].items()))
  if output:
    section = section_text(rows, info, data_info, args, command, started, finished, skipped)
    _lb.replace_marked_section(output, section, SECTION_BEGIN, SECTION_END)
    print(f"# section written to {args.output}", flush=True)
  for row in rows:
    if not _ok(row) and row.get("traceback"):
      print(f"# {row['framework']} {row['task']} failed:\n{row['traceback']}", file=sys.stderr)
  return 0 if all(_ok(r) for r in rows) else 1


if __name__ == "__main__":
  sys.exit(main())
