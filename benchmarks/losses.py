#!/usr/bin/env python3
"""Loss benchmark: sphereembed against pytorch-metric-learning (PML), on CPU.

For every loss, batch size B and embedding dimension D this times one
forward + backward pass and measures peak memory, for sphereembed
(``jax.jit(jax.value_and_grad(loss))``) and for its PML counterpart, on the
same inputs: unit-normalised standard-normal embeddings made in NumPy with a
fixed seed, labels ``arange(B) % P``.

Every (loss, B, D, framework) measurement runs in its own subprocess, with a
wall-clock timeout and a memory cap, so that PML's O(B^3) triplet enumeration
running out of memory (or time) is recorded as "OOM"/"timeout" in its row
instead of killing the run or swapping the machine. Rows are printed as they
complete and RESULTS.md is rewritten after each configuration.

Usage (full grid, the defaults)::

  python benchmarks/losses.py --output benchmarks/RESULTS.md

A quick subset::

  python benchmarks/losses.py --batch-sizes 128,512 --dims 2,128 \
      --losses batch_all,semi_hard --repeats 5 --output /tmp/RESULTS.md

Needs the ``bench`` extra (``pip install -e ".[bench]"``: the CPU build of
torch and pytorch-metric-learning). Run it on a quiet machine: the numbers
are wall-clock medians.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib
import importlib.metadata
import json
import os
import platform
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import time
import traceback

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ---------------------------------------------------------------------------
# What is benchmarked.

ALL_LOSSES = ("batch_all", "batch_hard", "semi_hard", "contrastive", "ntxent", "ncl",
              "arcface", "cosface", "subcenter_arcface", "normalized_softmax", "proxy_anchor",
              "proxy_nca", "multi_similarity", "circle", "lifted_structure")
DEFAULT_BATCH_SIZES = (128, 512, 2048, 4096)
DEFAULT_DIMS = (2, 128, 1024)

NUM_CLASSES = 10       # P: labels are arange(B) % P
TRIPLET_MARGIN = 0.2   # triplet losses, both frameworks
CONTRASTIVE_MARGIN = 1.0  # ours margin; PML ContrastiveLoss(pos_margin=0, neg_margin=1)
TEMPERATURE = 0.1      # ntxent, both frameworks
ARCFACE_MARGIN = 0.5   # radians (ours), the same angle in degrees for PML
NUM_SUBCENTERS = 3     # subcenter_arcface, both frameworks (PML's default)
# Losses with class proxies: ours get them as an argument and differentiate
# with respect to them too (PML's proxies are parameters that backward() reaches).
PROXY_LOSSES = ("arcface", "cosface", "subcenter_arcface", "normalized_softmax", "proxy_anchor",
                "proxy_nca")

# sphereembed function name and keyword arguments of each loss.
OURS = {
    "batch_all": ("triplet_batch_all",
                  dict(margin=TRIPLET_MARGIN, metric="euclidean", reduction="mean_active")),
    "batch_hard": ("triplet_batch_hard", dict(margin=TRIPLET_MARGIN, metric="euclidean")),
    "semi_hard": ("triplet_semi_hard", dict(margin=TRIPLET_MARGIN, metric="euclidean")),
    "contrastive": ("contrastive", dict(margin=CONTRASTIVE_MARGIN, metric="euclidean")),
    "ntxent": ("ntxent", dict(temperature=TEMPERATURE)),
    "ncl": ("ncl", dict(metric="great_circle")),
    # The new losses with PML's defaults (ArcFace's margin in radians).
    "arcface": ("arcface", dict(margin=ARCFACE_MARGIN, scale=64.0)),
    "cosface": ("cosface", dict(margin=0.35, scale=64.0)),
    "subcenter_arcface": ("subcenter_arcface",
                          dict(num_subcenters=NUM_SUBCENTERS, margin=ARCFACE_MARGIN, scale=64.0)),
    "normalized_softmax": ("normalized_softmax", dict(temperature=0.05)),
    "proxy_anchor": ("proxy_anchor", dict(margin=0.1, alpha=32.0)),
    "proxy_nca": ("proxy_nca", dict(softmax_scale=1.0)),
    "multi_similarity": ("multi_similarity", dict(alpha=2.0, beta=50.0, base=0.5)),
    "circle": ("circle", dict(margin=0.4, gamma=80.0)),
    "lifted_structure": ("lifted_structure", dict(pos_margin=0.0, neg_margin=1.0)),
}

# The PML peer, as written in the table's notes.
PML_PEER = {
    "batch_all": "TripletMarginLoss(margin=0.2), no miner",
    "batch_hard": "BatchHardMiner + TripletMarginLoss(margin=0.2)",
    "semi_hard": 'TripletMarginMiner(margin=0.2, type_of_triplets="semihard") + TripletMarginLoss(margin=0.2)',
    "contrastive": "ContrastiveLoss(pos_margin=0, neg_margin=1)",
    "ntxent": "NTXentLoss(temperature=0.1) (CosineSimilarity)",
    "ncl": None,  # PML has no N-Centroids loss
    "arcface": "ArcFaceLoss(margin=28.65 deg = 0.5 rad, scale=64)",
    "cosface": "CosFaceLoss(margin=0.35, scale=64)",
    "subcenter_arcface": "SubCenterArcFaceLoss(margin=28.65 deg, scale=64, sub_centers=3)",
    "normalized_softmax": "NormalizedSoftmaxLoss(temperature=0.05)",
    "proxy_anchor": "ProxyAnchorLoss(margin=0.1, alpha=32)",
    "proxy_nca": "ProxyNCALoss(softmax_scale=1)",
    "multi_similarity": "MultiSimilarityLoss(alpha=2, beta=50, base=0.5)",
    "circle": "CircleLoss(m=0.4, gamma=80)",
    "lifted_structure": "GeneralizedLiftedStructureLoss(neg_margin=1, pos_margin=0)",
}

# How the two loss values are compared (see SEMANTICS below):
#   "same": same definition, compare ours with PML directly;
#   "ours_avg_nonzero": compare PML with ours re-averaged over non-zero terms;
#   "differs": different definitions; PML is checked against a NumPy
#              float64 reference of PML's own semantics instead.
VALUE_CHECK = {
    "batch_all": "same",
    "batch_hard": "ours_avg_nonzero",
    "semi_hard": "differs",
    "contrastive": "differs",
    "ntxent": "differs",
    "ncl": None,
    **{loss: "same" for loss in ("arcface", "cosface", "subcenter_arcface", "normalized_softmax",
                                 "proxy_anchor", "proxy_nca", "multi_similarity", "circle",
                                 "lifted_structure")},
}

# The losses whose PML value `pml_reference` recomputes in NumPy (the new
# losses are checked against PML by benchmarks/pml_check_new_losses.py).
PML_REFERENCE_LOSSES = ("batch_all", "batch_hard", "semi_hard", "contrastive", "ntxent")

RTOL = 1e-4  # float32 sums of up to millions of terms in different orders

SEMANTICS = """\
## Where PML's semantics differ from ours (read the ratios with this in mind)

Common to all rows: float32 inputs; unit vectors, so PML's distances are built
with `LpDistance(normalize_embeddings=False, p=2)` (plain `torch.cdist`) for the
triplet and contrastive losses, and the miners are given that same distance
object (PML miners otherwise default to a normalising distance). Ours uses
`metric="euclidean"` (Gram-matrix form, exact zero diagonal, zero subgradient
at d = 0). The gradient is taken with respect to the embeddings only. PML
timings include the miner (run under `no_grad`), the loss and `backward()`;
ours include everything inside `jax.value_and_grad`.

* **batch_all**: same definition. PML's `TripletMarginLoss` without a miner
  enumerates all B·(B/P−1)·(B−B/P) triplets as int64 index tensors (O(B³)
  memory: about 0.3 GB at B = 512, 20 GB at B = 2048, 150 GB at B = 4096, plus
  the gathered distances; for B³ ≥ 2³¹, i.e. B ≥ 1291, it switches to a Python
  loop over anchors) and its default `AvgNonZeroReducer` averages the losses
  that are > 0. That is our `reduction="mean_active"` (sum over the number
  of triplets with d_ap − d_an + margin > 0). Ours sorts each anchor's
  negatives and counts with binary searches: O(B²) memory, O(B² log B) time.
  The check compares the two values directly.
* **batch_hard**: same triplets (per anchor: farthest positive, nearest
  negative), *different averaging*. PML's `BatchHardMiner` +
  `TripletMarginLoss` keeps the default `AvgNonZeroReducer`, i.e. the mean
  over the anchors whose hardest triplet has a positive loss; ours is the mean
  over all anchors that have a positive and a negative (zeros included). The
  check compares PML with ours re-averaged over the active anchors
  (`loss * num_valid / num_active` from `return_stats=True`); at D ≥ 128
  essentially every anchor is active and the raw values coincide too.
* **semi_hard**: *different mining*. PML's
  `TripletMarginMiner(type_of_triplets="semihard")` keeps **all** triplets with
  0 < d_an − d_ap ≤ margin (after building all B³ triplets, hence O(B³) memory
  like batch-all) and `TripletMarginLoss` averages the non-zero ones. Ours is
  FaceNet's rule (the TensorFlow Addons convention): **one** negative per
  positive pair, the nearest one farther than the positive, falling back to
  the farthest negative when there is none, averaged over all positive pairs
  (zeros included). The values are not comparable; the check validates PML
  against a NumPy float64 reference of PML's rule. PML does more arithmetic
  per batch (all triplets) for a different loss, so the ratio is a
  cost-of-the-usual-tool comparison, not a like-for-like one.
* **contrastive**: *different per-pair terms and averaging*. Ours (Hadsell et
  al.): over unordered pairs i < j, `0.5·d²` for positives and
  `0.5·relu(margin − d)²` for negatives, the mean over **all** pairs.
  PML's `ContrastiveLoss(pos_margin=0, neg_margin=1)`: over ordered pairs,
  `relu(d − 0)` for positives and `relu(1 − d)` for negatives (not squared,
  no 0.5), each averaged over its **non-zero** terms by `AvgNonZeroReducer`,
  and the two means added. No PML setting reproduces ours (`power=2` squares
  the distance inside the hinge, not the hinge). The check validates PML
  against a NumPy reference of PML's formula. Both are O(B²).
* **ntxent**: *different denominator and averaging*. Ours is the supervised
  contrastive loss L_out (Khosla et al.; NT-Xent when each sample has one
  positive): per anchor i, the mean over its positives p of
  −log(exp(s_ip/T) / Σ_{k≠i} exp(s_ik/T)) (other positives stay in the
  denominator), then the mean over anchors. PML's `NTXentLoss` with labels:
  per ordered positive pair (a, p), −log(exp(s_ap/T) / (exp(s_ap/T) +
  Σ_{n negative of a} exp(s_an/T))) (other positives removed from the
  denominator), the mean over pairs. With one positive per anchor both are
  SimCLR's NT-Xent; with P = 10 classes they differ. Memory: PML builds
  (#positive pairs × #negative pairs) matrices, O(B⁴/P) here (6 GB as bool,
  then 24 GB as float32, at B = 512), so it runs out of memory from B = 512
  on; ours is O(B²).
* **ncl**: no PML counterpart (N-Centroids Loss, great-circle distance to P
  fixed unit centroids); ours only.
* **arcface, cosface, subcenter_arcface, normalized_softmax, proxy_anchor,
  proxy_nca**: same definitions as PML (checked in float64 to ~1e-14 by
  `benchmarks/pml_check_new_losses.py`); PML's defaults, with ArcFace's
  margin 0.5 rad = 28.65° on both sides. The P class proxies (P·3 sub-center
  proxies) are random unit vectors, the same for both; they are an argument
  of ours and a parameter of PML's loss module, and **both frameworks
  differentiate with respect to embeddings and proxies**
  (`jax.value_and_grad(loss, argnums=(0, 2))`). All are O(B·P) in both.
* **multi_similarity, circle, lifted_structure**: same definitions as PML
  (all pairs, no miner; PML's `MultiSimilarityLoss`, `CircleLoss`,
  `GeneralizedLiftedStructureLoss` with their default distances). Both O(B²).
"""

# ---------------------------------------------------------------------------
# Small helpers shared by the parent and the workers.


def _proc_status_kib(field: str, pid: str = "self") -> int | None:
  try:
    with open(f"/proc/{pid}/status") as f:
      for line in f:
        if line.startswith(field + ":"):
          return int(line.split()[1])
  except (OSError, ValueError):
    return None
  return None


def peak_rss_bytes() -> int:
  """Peak resident set size of this process (VmHWM; ru_maxrss as a fallback)."""
  kib = _proc_status_kib("VmHWM")
  if kib is None:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return kib * 1024


def current_rss_bytes() -> int:
  kib = _proc_status_kib("VmRSS")
  return (kib or 0) * 1024


def reset_peak_rss() -> bool:
  """Resets VmHWM to the current RSS (Linux >= 4.0); False where unsupported."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def make_inputs(batch_size: int, dim: int, seed: int, num_classes: int):
  """Same arrays in every process: float32 unit vectors, int labels, centroids."""
  import numpy as np
  rng = np.random.default_rng([seed, batch_size, dim])
  x = rng.standard_normal((batch_size, dim))
  x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
  labels = (np.arange(batch_size) % num_classes).astype(np.int64)
  c = np.random.default_rng([seed, 1, dim]).standard_normal((num_classes, dim))
  centroids = (c / np.linalg.norm(c, axis=1, keepdims=True)).astype(np.float32)
  digest = hashlib.sha1(x.tobytes() + labels.tobytes()).hexdigest()[:12]
  return x, labels, centroids, digest


def make_proxies(loss: str, dim: int, seed: int, num_classes: int):
  """Float32 unit proxies of a proxy loss: (P, D), or (P * NUM_SUBCENTERS, D) for sub-centers."""
  import numpy as np
  rows = num_classes * (NUM_SUBCENTERS if loss == "subcenter_arcface" else 1)
  p = np.random.default_rng([seed, 2, dim]).standard_normal((rows, dim))
  return (p / np.linalg.norm(p, axis=1, keepdims=True)).astype(np.float32)


def is_oom_message(text: str) -> bool:
  text = text.lower()
  return any(s in text for s in (
      "can't allocate memory", "cannot allocate memory", "out of memory",
      "resource_exhausted", "bad_alloc", "memoryerror", "failed to allocate"))


def pml_memory_estimate_bytes(loss: str, batch_size: int, num_classes: int):
  """Lower bound of PML's dominant allocation (None where it is O(B^2)).

  batch_all / semi_hard: the int64 (anchor, positive, negative) index tensors
  of all triplets; ntxent: its (#positive pairs x #negative pairs) matrix,
  counted at 1 byte per entry (the bool comparison allocated first; the float32
  copy that follows is 4x larger).
  """
  sizes = [batch_size // num_classes + (k < batch_size % num_classes)
           for k in range(num_classes)]
  pos_pairs = sum(s * (s - 1) for s in sizes)
  neg_pairs = sum(s * (batch_size - s) for s in sizes)
  if loss in ("batch_all", "semi_hard"):
    triplets = sum(s * (s - 1) * (batch_size - s) for s in sizes)
    return 3 * 8 * triplets
  if loss == "ntxent":
    return pos_pairs * neg_pairs
  return None


def timed_repeats(step, repeats: int, max_seconds: float, min_repeats: int = 3,
                  min_seconds: float = 1.0, max_repeats: int = 2000):
  """Times `step()` at least `repeats` times and for at least `min_seconds`
  (millisecond-scale steps then get hundreds of samples and a stable median),
  at most `max_repeats` times; stops early once `max_seconds` have been spent
  (after at least min(min_repeats, repeats) calls). Returns seconds per call."""
  times = []
  start = time.perf_counter()
  while len(times) < max_repeats:
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - start
    if len(times) >= min(min_repeats, repeats) and elapsed > max_seconds:
      break
    if len(times) >= repeats and elapsed >= min_seconds:
      break
  return times


def _timing_summary(times):
  return {
      "median_ms": 1e3 * statistics.median(times),
      "min_ms": 1e3 * min(times),
      "max_ms": 1e3 * max(times),
      "repeats": len(times),
  }


# ---------------------------------------------------------------------------
# Workers (one subprocess each).


def _worker_setup(cfg):
  """Pins the process to `threads` cores before any numeric library loads."""
  threads = cfg["threads"]
  cpus = sorted(os.sched_getaffinity(0))
  if threads < len(cpus):
    os.sched_setaffinity(0, cpus[:threads])
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ.setdefault("OMP_NUM_THREADS", str(threads))
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _apply_memory_cap(cfg):
  """Caps the address space at the current size plus the memory cap plus slack,
  so a huge allocation fails at once (torch raises) instead of swapping."""
  cap = int(cfg["memory_cap_gb"] * 2**30)
  if cap <= 0:
    return
  vm_size = (_proc_status_kib("VmSize") or 0) * 1024
  limit = vm_size + cap + int(cfg["address_space_slack_gb"] * 2**30)
  try:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
  except (ValueError, OSError):
    pass


def worker_ours(cfg):
  _worker_setup(cfg)
  result = {"framework": "ours"}
  x, labels, centroids, digest = make_inputs(cfg["batch_size"], cfg["dim"], cfg["seed"],
                                             cfg["num_classes"])
  result["input_digest"] = digest
  import functools

  import jax
  import jax.numpy as jnp
  from sphereembed import losses

  name, kwargs = OURS[cfg["loss"]]
  fn = getattr(losses, name)
  xj = jax.device_put(x)
  lj = jax.device_put(labels.astype("int32"))
  extra = (jax.device_put(centroids),) if cfg["loss"] == "ncl" else ()
  argnums = 0
  if cfg["loss"] in PROXY_LOSSES:
    extra = (jax.device_put(make_proxies(cfg["loss"], cfg["dim"], cfg["seed"],
                                         cfg["num_classes"])),)
    argnums = (0, 2)  # embeddings and proxies, as PML's backward()
  loss_fn = functools.partial(fn, **kwargs)
  jax.block_until_ready((xj, lj, extra))
  baseline = peak_rss_bytes()
  _apply_memory_cap(cfg)
  stage = "compile"
  try:
    t0 = time.perf_counter()
    compiled = jax.jit(jax.value_and_grad(loss_fn, argnums=argnums)).lower(
        xj, lj, *extra).compile()
    result["compile_s"] = time.perf_counter() - t0
    result["compile_rss_increase_bytes"] = max(0, peak_rss_bytes() - baseline)
    mem = compiled.memory_analysis()
    if mem is not None:
      result["xla_temp_bytes"] = int(mem.temp_size_in_bytes)
      result["xla_argument_bytes"] = int(mem.argument_size_in_bytes)
      result["xla_output_bytes"] = int(mem.output_size_in_bytes)
      result["xla_bytes"] = (result["xla_temp_bytes"] + result["xla_argument_bytes"]
                             + result["xla_output_bytes"])
    # Peak RSS of the runs alone: the compiler's own peak is reported above.
    result["rss_peak_reset"] = reset_peak_rss()
    run_baseline = current_rss_bytes() if result["rss_peak_reset"] else baseline
    stage = "run"
    value, grad = compiled(xj, lj, *extra)
    jax.block_until_ready((value, grad))
    result["loss_value"] = float(value)
    result["grad_finite"] = all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grad))

    def step():
      jax.block_until_ready(compiled(xj, lj, *extra))

    result.update(_timing_summary(timed_repeats(step, cfg["repeats"], cfg["max_seconds"])))
    result["rss_increase_bytes"] = max(0, peak_rss_bytes() - run_baseline)
    stage = "value check"
    if VALUE_CHECK.get(cfg["loss"]) == "ours_avg_nonzero":
      # Ours re-averaged over the active (non-zero) terms, as PML's AvgNonZeroReducer does.
      value, stats = jax.jit(functools.partial(fn, **kwargs, return_stats=True))(xj, lj)
      n_active, n_valid = float(stats["num_active"]), float(stats["num_valid"])
      result["num_active"], result["num_valid"] = n_active, n_valid
      result["comparable_value"] = float(value) * n_valid / n_active if n_active else 0.0
    elif VALUE_CHECK.get(cfg["loss"]) == "same":
      result["comparable_value"] = result["loss_value"]
    result["status"] = "ok"
  except Exception as e:  # noqa: BLE001 - every failure goes into the row
    msg = f"{type(e).__name__}: {e}"
    result["status"] = "OOM" if is_oom_message(msg) else "error"
    result["error"] = f"{stage}: {msg}"[:500]
    result["traceback"] = traceback.format_exc()[-2000:]
  return result


def pml_loss_and_miner(loss: str, dim: int | None = None, num_classes: int = NUM_CLASSES,
                       proxies=None):
  """PML's loss object and miner (``None`` when it mines nothing) for one of our losses.

  The proxy losses need ``dim`` and ``num_classes``; ``proxies`` (the NumPy
  array of :func:`make_proxies`) then replaces their random initial weights.
  """
  import math

  import torch
  from pytorch_metric_learning import distances, losses, miners
  lp = distances.LpDistance(normalize_embeddings=False, p=2, power=1)
  if loss in PROXY_LOSSES:
    if dim is None:
      raise ValueError(f"{loss} needs the embedding dimension")
    degrees = math.degrees(ARCFACE_MARGIN)
    module, attr, transpose = {
        "arcface": (lambda: losses.ArcFaceLoss(num_classes, dim, margin=degrees, scale=64),
                    "W", True),
        "cosface": (lambda: losses.CosFaceLoss(num_classes, dim, margin=0.35, scale=64),
                    "W", True),
        "subcenter_arcface": (lambda: losses.SubCenterArcFaceLoss(
            num_classes=num_classes, embedding_size=dim, margin=degrees, scale=64,
            sub_centers=NUM_SUBCENTERS), "W", True),
        "normalized_softmax": (lambda: losses.NormalizedSoftmaxLoss(
            num_classes, dim, temperature=0.05), "W", True),
        "proxy_anchor": (lambda: losses.ProxyAnchorLoss(num_classes, dim, margin=0.1, alpha=32),
                         "proxies", False),
        "proxy_nca": (lambda: losses.ProxyNCALoss(num_classes, dim, softmax_scale=1),
                      "proxies", False),
    }[loss]
    module = module()
    if proxies is not None:
      getattr(module, attr).data = torch.from_numpy((proxies.T if transpose else proxies).copy())
    return module, None
  if loss == "multi_similarity":
    return losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5), None
  if loss == "circle":
    return losses.CircleLoss(m=0.4, gamma=80), None
  if loss == "lifted_structure":
    return losses.GeneralizedLiftedStructureLoss(neg_margin=1, pos_margin=0), None
  if loss == "batch_all":
    return losses.TripletMarginLoss(margin=TRIPLET_MARGIN, distance=lp), None
  if loss == "batch_hard":
    return (losses.TripletMarginLoss(margin=TRIPLET_MARGIN, distance=lp),
            miners.BatchHardMiner(distance=lp))
  if loss == "semi_hard":
    return (losses.TripletMarginLoss(margin=TRIPLET_MARGIN, distance=lp),
            miners.TripletMarginMiner(margin=TRIPLET_MARGIN, type_of_triplets="semihard",
                                      distance=lp))
  if loss == "contrastive":
    return losses.ContrastiveLoss(pos_margin=0, neg_margin=CONTRASTIVE_MARGIN, distance=lp), None
  if loss == "ntxent":
    return losses.NTXentLoss(temperature=TEMPERATURE), None
  raise ValueError(f"no PML peer for {loss!r}")


# The old private name, still used by benchmarks/train.py.
_pml_loss_and_miner = pml_loss_and_miner


def pml_reference(loss: str, x, labels) -> float:
  """PML's semantics in NumPy float64 (validates the SEMANTICS notes).

  Loops over anchors, so memory stays O(B^2); it runs only after PML itself
  succeeded, so the O(B^3)-time triplet references never see a large B.
  """
  import numpy as np
  x = x.astype(np.float64)
  sq = np.sum(x * x, axis=1)
  d = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0))
  same = labels[:, None] == labels[None, :]
  off = ~np.eye(len(x), dtype=bool)
  pos, neg = same & off, ~same
  m = TRIPLET_MARGIN
  if loss in ("batch_all", "semi_hard"):
    total, count = 0.0, 0
    for a in range(len(x)):
      dp, dn = d[a, pos[a]], d[a, neg[a]]
      gap = dn[None, :] - dp[:, None]  # d_an - d_ap
      if loss == "semi_hard":
        l = np.where((gap > 0) & (gap <= m), m - gap, 0.0)
      else:
        l = np.maximum(m - gap, 0.0)
      total += l[l > 0].sum()
      count += int((l > 0).sum())
    return total / count if count else 0.0
  if loss == "batch_hard":
    hp = np.where(pos, d, -np.inf).max(axis=1)
    hn = np.where(neg, d, np.inf).min(axis=1)
    valid = pos.any(axis=1) & neg.any(axis=1)
    l = np.maximum(hp - hn + m, 0)[valid]
    return float(l[l > 0].mean()) if (l > 0).any() else 0.0
  if loss == "contrastive":
    lp = np.maximum(d[pos], 0)
    ln = np.maximum(CONTRASTIVE_MARGIN - d[neg], 0)
    return float((lp[lp > 0].mean() if (lp > 0).any() else 0)
                 + (ln[ln > 0].mean() if (ln > 0).any() else 0))
  if loss == "ntxent":
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = u @ u.T / TEMPERATURE
    terms = []
    for a in range(len(x)):
      sp, sn = s[a, pos[a]], s[a, neg[a]]
      mx = max(sp.max(initial=-np.inf), sn.max(initial=-np.inf))
      neg_sum = np.exp(sn - mx).sum()
      terms.append(-(sp - mx - np.log(np.exp(sp - mx) + neg_sum)))
    terms = np.concatenate(terms)
    return float(terms.mean()) if terms.size else 0.0
  raise ValueError(loss)


def worker_pml(cfg):
  _worker_setup(cfg)
  result = {"framework": "pml"}
  x, labels, _, digest = make_inputs(cfg["batch_size"], cfg["dim"], cfg["seed"],
                                     cfg["num_classes"])
  result["input_digest"] = digest
  import torch
  torch.set_num_threads(cfg["threads"])
  proxies = None
  if cfg["loss"] in PROXY_LOSSES:
    proxies = make_proxies(cfg["loss"], cfg["dim"], cfg["seed"], cfg["num_classes"])
  loss_fn, miner = pml_loss_and_miner(cfg["loss"], cfg["dim"], cfg["num_classes"], proxies)
  emb = torch.from_numpy(x.copy()).requires_grad_(True)  # a leaf tensor
  labels_t = torch.from_numpy(labels.copy())
  baseline = peak_rss_bytes()
  result["rss_peak_reset"] = reset_peak_rss()
  run_baseline = current_rss_bytes() if result["rss_peak_reset"] else baseline
  _apply_memory_cap(cfg)
  holder = {}

  def step():
    emb.grad = None
    loss_fn.zero_grad(set_to_none=True)  # the proxies of the proxy losses
    indices = miner(emb, labels_t) if miner is not None else None
    loss = loss_fn(emb, labels_t, indices)
    loss.backward()
    holder["loss"] = loss
    holder["indices"] = indices

  stage = "run"
  try:
    step()  # warm-up; also the value
    result["loss_value"] = float(holder["loss"].detach())
    result["grad_finite"] = bool(torch.isfinite(emb.grad).all())
    if holder["indices"] is not None:
      result["num_mined"] = int(len(holder["indices"][0]))
    holder.clear()
    result.update(_timing_summary(timed_repeats(step, cfg["repeats"], cfg["max_seconds"])))
    result["rss_increase_bytes"] = max(0, peak_rss_bytes() - run_baseline)
    holder.clear()
    stage = "reference"
    if (VALUE_CHECK.get(cfg["loss"]) is not None and cfg.get("reference", True)
        and cfg["loss"] in PML_REFERENCE_LOSSES):
      result["reference_value"] = pml_reference(cfg["loss"], x, labels)
    result["status"] = "ok"
  except Exception as e:  # noqa: BLE001
    msg = f"{type(e).__name__}: {e}"
    result["status"] = "OOM" if is_oom_message(msg) else "error"
    result["error"] = f"{stage}: {msg}"[:500]
    result["traceback"] = traceback.format_exc()[-2000:]
  return result


RESULT_MARK = "@@RESULT@@ "


def worker_main(framework: str, cfg_json: str) -> int:
  cfg = json.loads(cfg_json)
  result = worker_ours(cfg) if framework == "ours" else worker_pml(cfg)
  sys.stdout.write(RESULT_MARK + json.dumps(result) + "\n")
  sys.stdout.flush()
  return 0


# ---------------------------------------------------------------------------
# Parent: run the workers, watch them, write the table.


def run_worker(framework: str, cfg: dict, timeout_s: float, rss_kill_bytes: int) -> dict:
  """Runs one measurement in a fresh interpreter; never raises."""
  cmd = [sys.executable, os.path.abspath(__file__), "--worker", framework,
         "--worker-config", json.dumps(cfg)]
  t0 = time.monotonic()
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          cwd=REPO_ROOT, start_new_session=True)
  # Drain the pipes in threads so a chatty worker cannot block.
  import threading
  out_chunks, err_chunks = [], []
  readers = [threading.Thread(target=lambda s=s, c=c: c.append(s.read()), daemon=True)
             for s, c in ((proc.stdout, out_chunks), (proc.stderr, err_chunks))]
  for r in readers:
    r.start()
  killed_for = None
  peak_seen = 0
  while proc.poll() is None:
    rss = (_proc_status_kib("VmRSS", str(proc.pid)) or 0) * 1024
    peak_seen = max(peak_seen, rss)
    if rss_kill_bytes and rss > rss_kill_bytes:
      killed_for = "memory"
    elif time.monotonic() - t0 > timeout_s:
      killed_for = "timeout"
    if killed_for:
      try:
        os.killpg(proc.pid, signal.SIGKILL)  # the worker's own session
      except ProcessLookupError:
        pass
      proc.wait()
      break
    time.sleep(0.05)
  for r in readers:
    r.join(timeout=10)
  wall = time.monotonic() - t0
  out, err = "".join(out_chunks), "".join(err_chunks)
  result = None
  for line in out.splitlines():
    if line.startswith(RESULT_MARK):
      result = json.loads(line[len(RESULT_MARK):])
  if result is None:
    result = {"framework": framework}
    if killed_for == "timeout":
      result.update(status="timeout", error=f"killed after {timeout_s:.0f} s")
    elif killed_for == "memory":
      result.update(status="OOM", error=f"RSS above {rss_kill_bytes / 2**30:.1f} GiB, killed")
    elif proc.returncode == -signal.SIGKILL:
      result.update(status="OOM", error="killed by SIGKILL (kernel OOM killer?)")
    else:
      last = [l for l in err.strip().splitlines() if l.strip()][-3:]
      msg = f"exit code {proc.returncode}: " + " | ".join(last)
      result.update(status="OOM" if is_oom_message(err) else "error", error=msg[:500])
  result["worker_wall_s"] = wall
  result["worker_peak_rss_seen_bytes"] = peak_seen
  return result


def git_commit() -> str:
  try:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                          text=True, check=True).stdout.strip()
    # --no-optional-locks: never take the index lock (others share the checkout).
    dirty = subprocess.run(
        ["git", "--no-optional-locks", "status", "--porcelain", "--", "sphereembed"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    # Porcelain lines are "XY path": no strip() before slicing, or the first
    # line's leading status blank goes and its path loses a letter.
    files = [line[3:] for line in dirty.splitlines() if line.strip()]
    if files:
      return f"{head} + uncommitted changes in {', '.join(files)}"
    return head
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def replace_marked_section(path: str, section: str, begin_marker: str, end_marker: str) -> None:
  """Writes ``section`` into ``path`` between ``begin_marker`` and ``end_marker``.

  An existing marked section is replaced, otherwise the section is appended;
  the rest of the file (the other benchmarks' sections) is kept. The file is
  read right before writing and replaced atomically, since several
  benchmarks write their own sections of the same RESULTS.md.
  """
  old = ""
  if os.path.exists(path):
    with open(path) as f:
      old = f.read()
  begin, end = old.find(begin_marker), old.find(end_marker)
  if begin >= 0 and end > begin:
    new = old[:begin] + section.rstrip("\n") + old[end + len(end_marker):]
    if not new.endswith("\n"):
      new += "\n"
  else:
    new = (old.rstrip("\n") + "\n\n" if old.strip() else "") + section
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(new)
  os.replace(tmp, path)


def version(dist: str) -> str:
  """The installed version of the distribution ``dist``, or ``"not installed"``."""
  try:
    return importlib.metadata.version(dist)
  except importlib.metadata.PackageNotFoundError:
    return "not installed"


# The old private name, still used by benchmarks/train.py.
_version = version


def machine_info(threads: int) -> dict:
  cpu = "unknown"
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    cpu = platform.processor() or "unknown"
  mem_kib = None
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemTotal:"):
          mem_kib = int(line.split()[1])
  except OSError:
    pass
  return {
      "cpu": cpu,
      "logical_cpus": os.cpu_count(),
      "cpus_available": len(os.sched_getaffinity(0)),
      "threads_used": threads,
      "ram_gib": None if mem_kib is None else mem_kib / 2**20,
      "os": platform.platform(),
      "python": platform.python_version(),
      "jax": version("jax"),
      "jaxlib": version("jaxlib"),
      "numpy": version("numpy"),
      "torch": version("torch"),
      "pytorch-metric-learning": version("pytorch-metric-learning"),
      "sphereembed": git_commit(),
  }


def _fmt_ms(r):
  if r is None:
    return "—"
  if r.get("status") != "ok":
    return _status_text(r)
  ms = r["median_ms"]
  return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def _status_text(r):
  status = r.get("status", "error")
  if status == "OOM" and r.get("needs_bytes"):
    return f"OOM (needs ≥ {r['needs_bytes'] / 1e9:.3g} GB)"
  if status in ("OOM", "timeout"):
    return status
  if status == "skipped":
    return r.get("error", "skipped")
  return "error: " + r.get("error", "?")[:80].replace("|", "/").replace("\n", " ")


def _mb(nbytes):
  return "—" if nbytes is None else f"{nbytes / 2**20:.1f}"


def _val(v):
  return "—" if v is None else f"{v:.6g}"


def check_text(loss, ours, pml) -> str:
  mode = VALUE_CHECK.get(loss)
  if mode is None or pml is None:
    return "no peer"
  if pml.get("status") != "ok":
    return "—"
  if mode == "differs":
    ref = pml.get("reference_value")
    if ref is None:
      return "n/a (definitions differ)"
    rel = abs(pml["loss_value"] - ref) / max(abs(ref), 1e-30)
    mark = "✓" if rel <= RTOL else "✗"
    return f"n/a, defs differ; PML = ref(PML) {mark} {rel:.0e}"
  if ours is None or ours.get("status") != "ok" or ours.get("comparable_value") is None:
    return "—"
  a, b = ours["comparable_value"], pml["loss_value"]
  rel = abs(a - b) / max(abs(b), 1e-30)
  mark = "✓" if rel <= RTOL else "✗ MISMATCH"
  what = "" if mode == "same" else f" (ours avg-nonzero {a:.6g})"
  return f"{mark} {rel:.0e}{what}"


SECTION_BEGIN = "<!-- loss-benchmark -->"
SECTION_END = "<!-- /loss-benchmark -->"
TABLE_HEADER = (
    "| loss | B | D | ours ms | PML ms | PML/ours | ours compile s | ours XLA MB "
    "| ours ΔRSS MB | PML ΔRSS MB | ours loss | PML loss | value check |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")


def row_text(row) -> str:
  ours, pml = row["ours"], row["pml"]
  ratio = "—"
  if ours and pml and ours.get("status") == "ok" and pml.get("status") == "ok":
    ratio = f"{pml['median_ms'] / ours['median_ms']:.2f}"
  ok_o = ours is not None and ours.get("status") == "ok"
  ok_p = pml is not None and pml.get("status") == "ok"
  cells = [
      row["loss"], str(row["B"]), str(row["D"]),
      _fmt_ms(ours), _fmt_ms(pml) if pml is not None else "no peer", ratio,
      f"{ours['compile_s']:.2f}" if ok_o else "—",
      _mb(ours.get("xla_bytes")) if ok_o else "—",
      _mb(ours.get("rss_increase_bytes")) if ok_o else "—",
      _mb(pml.get("rss_increase_bytes")) if ok_p else "—",
      _val(ours.get("loss_value")) if ok_o else "—",
      _val(pml.get("loss_value")) if ok_p else "—",
      check_text(row["loss"], ours, pml),
  ]
  return "| " + " | ".join(cells) + " |"


def write_results(path, rows, info, args, command, started, finished, skipped, note):
  lines = [SECTION_BEGIN, "# Loss benchmark: sphereembed vs pytorch-metric-learning", ""]
  if note:
    lines += [f"> **{note}**", ""]
  lines += [
      f"Command (from the repository root): `{command}`",
      "",
      f"Started {started}, " + (f"finished {finished}." if finished else "**still running / "
                                "interrupted** (rows so far)."),
      "",
      "Machine: " + f"{info['cpu']}, {info['logical_cpus']} logical CPUs "
      f"({info['cpus_available']} available, {info['threads_used']} used by each framework: "
      f"XLA's pool through the CPU affinity, `torch.set_num_threads({info['threads_used']})`), "
      + (f"{info['ram_gib']:.1f} GiB RAM" if info['ram_gib'] else "RAM unknown")
      + f", {info['os']}.",
      "",
      "Versions: " + ", ".join(
          f"{k} {info[k]}" for k in ("python", "jax", "jaxlib", "numpy", "torch",
                                     "pytorch-metric-learning")) + ".",
      "",
      f"sphereembed commit: {info['sphereembed']}.",
      "",
      "Load average (1, 5, 15 min) at the start: "
      + ", ".join(f"{v:.2f}" for v in info["loadavg_start"])
      + (f"; 1-min load after the last row: {rows[-1]['loadavg_after']:.2f}" if rows else "")
      + f" (on {info['cpus_available']} CPUs; anything well above 0 means other work "
      "competed for the cores).",
      "",
      f"Settings: P = {args.num_classes} classes (labels `arange(B) % P`), seed {args.seed}, "
      f"float32 unit-normalised standard-normal embeddings (NumPy), triplet margin "
      f"{TRIPLET_MARGIN}, contrastive margin {CONTRASTIVE_MARGIN}, NT-Xent temperature "
      f"{TEMPERATURE}, euclidean distance (the proxy and pair-weighting losses: PML's defaults, "
      f"see below); median of at least {args.repeats} forward+backward "
      f"calls and at least 1 s of them (fewer once {args.max_seconds:g} s are spent, at least 3) after one warm-up "
      f"call; each measurement in its own subprocess with a {args.timeout:g} s timeout and a "
      f"{args.memory_cap_gb:g} GiB memory cap.",
      "",
      "## Results",
      "",
      TABLE_HEADER.rstrip("\n"),
  ]
  lines += [row_text(r) for r in rows]
  lines += [
      "",
      "Columns: *ours ms* / *PML ms*: median wall time of one forward+backward pass "
      "(ours: the compiled `jax.jit(jax.value_and_grad(loss))` with `block_until_ready`, "
      "compile excluded; PML: miner + loss + `loss.backward()` on a leaf tensor). "
      "*PML/ours* > 1 means ours is faster. *ours compile s*: `lower` + `compile`. "
      "*ours XLA MB*: XLA's compiled memory analysis, temp + argument + output bytes. "
      "*ΔRSS MB*: increase of the subprocess' peak RSS (VmHWM) over its level after "
      "imports and input creation (for ours, measured after compilation with the peak "
      "reset, so it covers the runs only; the compiler's own peak is in the raw JSON as "
      "`compile_rss_increase_bytes`). *value check*: relative difference of the loss "
      f"values, ✓ within {RTOL:g}; see below for which values are compared. OOM: an "
      "allocation failed under the memory cap (or the process was killed above it); "
      "timeout: killed after the timeout.",
      "",
  ]
  if skipped:
    lines += ["Skipped:", ""] + [f"* {s}" for s in skipped] + [""]
  lines += [SEMANTICS.rstrip("\n"), SECTION_END]
  # Its own section only: the other benchmarks' sections of RESULTS.md are kept.
  replace_marked_section(path, "\n".join(lines) + "\n", SECTION_BEGIN, SECTION_END)


def ours_available(loss: str):
  """(True, None) if the sphereembed loss imports, else (False, reason)."""
  name = OURS[loss][0]
  probe = (f"import sphereembed.losses as m; f = m.{name}; print('ok')")
  res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                       cwd=REPO_ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  if res.returncode == 0 and res.stdout.strip().endswith("ok"):
    return True, None
  last = [l for l in res.stderr.strip().splitlines() if l.strip()][-1:] or ["?"]
  return False, last[0][:200]


def parse_list(text, cast):
  return [cast(t) for t in text.split(",") if t.strip()]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch-sizes", default=",".join(map(str, DEFAULT_BATCH_SIZES)))
  parser.add_argument("--dims", default=",".join(map(str, DEFAULT_DIMS)))
  parser.add_argument("--losses", default=",".join(ALL_LOSSES),
                      help=f"comma-separated subset of {','.join(ALL_LOSSES)}")
  parser.add_argument("--frameworks", default="ours,pml", help="ours, pml or both")
  parser.add_argument("--repeats", type=int, default=10, help="timed calls per measurement")
  parser.add_argument("--max-seconds", type=float, default=30.0,
                      help="stop repeating once this much time is spent (after 3 calls)")
  parser.add_argument("--timeout", type=float, default=300.0,
                      help="wall-clock limit of one measurement subprocess, seconds")
  parser.add_argument("--memory-cap-gb", type=float, default=4.0,
                      help="memory a measurement may add over its baseline, GiB")
  parser.add_argument("--address-space-slack-gb", type=float, default=2.0,
                      help=argparse.SUPPRESS)
  parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                      help="cores for both frameworks (default: all available)")
  parser.add_argument("--num-classes", type=int, default=NUM_CLASSES)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--no-reference", action="store_true",
                      help="skip the NumPy check of PML's values")
  parser.add_argument("--output", default=os.path.join("benchmarks", "RESULTS.md"))
  parser.add_argument("--raw-dir", default=os.path.join("benchmarks", "_raw"),
                      help="JSON lines of every measurement go here (git-ignored)")
  parser.add_argument("--note", default="", help="a line put at the top of the output")
  parser.add_argument("--worker", choices=("ours", "pml"), help=argparse.SUPPRESS)
  parser.add_argument("--worker-config", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)

  if args.worker:
    return worker_main(args.worker, args.worker_config)

  command = "python benchmarks/losses.py" + "".join(
      " " + shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
  batch_sizes = parse_list(args.batch_sizes, int)
  dims = parse_list(args.dims, int)
  loss_names = parse_list(args.losses, str)
  for name in loss_names:
    if name not in ALL_LOSSES:
      parser.error(f"unknown loss {name!r}; choose from {', '.join(ALL_LOSSES)}")
  frameworks = set(parse_list(args.frameworks, str))
  output = os.path.join(REPO_ROOT, args.output) if not os.path.isabs(args.output) else args.output
  raw_dir = args.raw_dir if os.path.isabs(args.raw_dir) else os.path.join(REPO_ROOT, args.raw_dir)
  os.makedirs(raw_dir, exist_ok=True)
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  raw_path = os.path.join(raw_dir, f"losses-{stamp}.jsonl")

  info = machine_info(args.threads)
  started = datetime.datetime.now().isoformat(timespec="seconds")
  info["loadavg_start"] = os.getloadavg()
  if info["loadavg_start"][0] > 0.25 * info["cpus_available"]:
    print(f"WARNING: 1-minute load average {info['loadavg_start'][0]:.2f} on "
          f"{info['cpus_available']} CPUs: the machine is busy and timings will be noisy "
          "(torch's OpenMP threads degrade badly when the cores are oversubscribed).",
          flush=True)
  skipped = []
  have_ours = {}
  if "ours" in frameworks:
    for name in loss_names:
      ok, why = ours_available(name)
      have_ours[name] = ok
      if not ok:
        msg = (f"ours `{name}` (sphereembed.losses.{OURS[name][0]}) is not importable yet: "
               f"{why}; its rows have no 'ours' numbers")
        print("NOTE: skipping " + msg, flush=True)
        skipped.append(msg)
  if "pml" in frameworks:
    try:
      importlib.metadata.version("pytorch-metric-learning")
    except importlib.metadata.PackageNotFoundError:
      msg = 'pytorch-metric-learning is not installed (pip install -e ".[bench]"); no PML numbers'
      print("NOTE: " + msg, flush=True)
      skipped.append(msg)
      frameworks.discard("pml")

  print(f"# {command}", flush=True)
  print(f"# machine: {info['cpu']}, {info['cpus_available']} CPUs, threads {args.threads}; "
        f"raw results: {os.path.relpath(raw_path, REPO_ROOT)}", flush=True)
  print(TABLE_HEADER, end="", flush=True)
  rows = []
  rss_kill = int((args.memory_cap_gb + args.address_space_slack_gb + 1.5) * 2**30)
  t_start = time.monotonic()
  for loss in loss_names:
    for batch_size in batch_sizes:
      for dim in dims:
        cfg = dict(loss=loss, batch_size=batch_size, dim=dim, seed=args.seed,
                   num_classes=args.num_classes, repeats=args.repeats,
                   max_seconds=args.max_seconds, threads=args.threads,
                   memory_cap_gb=args.memory_cap_gb,
                   address_space_slack_gb=args.address_space_slack_gb,
                   reference=not args.no_reference)
        row = {"loss": loss, "B": batch_size, "D": dim, "ours": None, "pml": None}
        if "ours" in frameworks:
          if have_ours.get(loss):
            row["ours"] = run_worker("ours", cfg, args.timeout, rss_kill)
          else:
            row["ours"] = {"status": "skipped", "error": "not importable"}
        if "pml" in frameworks and PML_PEER[loss] is not None:
          row["pml"] = run_worker("pml", cfg, args.timeout, rss_kill)
          needs = pml_memory_estimate_bytes(loss, batch_size, args.num_classes)
          if needs:
            row["pml"]["needs_bytes"] = needs
        if row["ours"] and row["pml"] and "input_digest" in row["ours"] \
            and "input_digest" in row["pml"]:
          row["inputs_identical"] = row["ours"]["input_digest"] == row["pml"]["input_digest"]
          if not row["inputs_identical"]:
            print("WARNING: the two frameworks saw different inputs!", flush=True)
        row["loadavg_after"] = os.getloadavg()[0]
        rows.append(row)
        print(row_text(row), flush=True)
        with open(raw_path, "a") as f:
          f.write(json.dumps({**row, "config": cfg}) + "\n")
        write_results(output, rows, info, args, command, started, None, skipped, args.note)
  finished = datetime.datetime.now().isoformat(timespec="seconds")
  write_results(output, rows, info, args, command, started, finished, skipped, args.note)
  print(f"# done in {time.monotonic() - t_start:.0f} s; table written to {args.output}",
        flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
