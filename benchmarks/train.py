#!/usr/bin/env python3
"""Training throughput: sphereembed's jitted train step against PML + torch, on CPU.

Measures images/s of full training steps (forward, loss with mining,
backward, optimiser update) of the same small CNN in both frameworks, in the
same run:

* sphereembed: :func:`sphereembed.methods.centroid.train_step` (the
  centroid method's step that :func:`sphereembed.train_and_evaluate` runs;
  jitted, the state donated) on :class:`sphereembed.models.cnn.SmallCNN` with
  ``optax.adam``, for ``triplet_batch_hard`` (the like-for-like comparison)
  and ``ncl`` (our main loss, no PML peer). Every timed step ends with
  ``jax.block_until_ready`` on the new state and the metrics.
  With ``--cpu-devices`` (default: 1 and the number of CPUs) it also times
  the step on the experiments' data-parallel mesh with the CPU split into N
  XLA devices: one row per count.
* PML + torch: the identical architecture in torch (same layer sizes, 5x5
  convs with "same" padding, NCHW), ``BatchHardMiner`` +
  ``TripletMarginLoss(margin=0.2)`` with the euclidean distance on the unit
  embeddings, ``torch.optim.Adam``; ``torch.set_num_threads`` is left at
  torch's default (recorded).

Both sides see the same uint8 batches in the same order (P x K batches of
MNIST when :func:`sphereembed.data.load_dataset` finds it, else random
images with a P x K label structure) and convert uint8 -> float / 255 inside
the timed step. The torch model starts from a copy of the Flax initial
weights, and the two initial losses on the first batch are compared before
any timing, so the table compares two implementations of one computation.

Each (loss, framework) runs in its own subprocess (no thread pool or
allocator state shared between the frameworks); the timings are medians of
per-step wall times over at least ``--seconds`` seconds after warm-up.

Usage (from the repository root; ~1 minute on 2 cores)::

  python benchmarks/train.py --output benchmarks/RESULTS.md

A few steps only (checks that everything runs; the numbers mean nothing)::

  python benchmarks/train.py --smoke

Needs the ``bench`` extra for the PML side (``pip install -e ".[bench]"``);
without torch, ``--frameworks sphereembed`` measures our side alone. Run it on
a quiet machine: the numbers are wall-clock medians.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.util
import json
import os
import shlex
import statistics
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


# Shared with the loss benchmark: machine/version info, the timing loop, the
# PML distance/miner/loss configuration and the worker result marker.
_lb = _load_loss_benchmark()

# ---------------------------------------------------------------------------
# What is benchmarked.

ALL_LOSSES = ("triplet_batch_hard", "ncl")
ALL_FRAMEWORKS = ("sphereembed", "pml")
FRAMEWORK_LABEL = {"sphereembed": "sphereembed (JAX)", "pml": "PML + torch"}
# The PML peer of each loss (None: no peer); the benchmark key of losses.py.
PML_PEER = {"triplet_batch_hard": "batch_hard", "ncl": None}
PML_PEER_TEXT = ("BatchHardMiner + TripletMarginLoss(margin=0.2), "
                 "LpDistance(normalize_embeddings=False, p=2, power=1) for both")

TRIPLET_MARGIN = _lb.TRIPLET_MARGIN  # 0.2, both frameworks
LEARNING_RATE = 1e-3                 # Adam, both frameworks (default betas and eps agree)
def _architecture() -> dict:
  """The experiments' CNN (``sphereembed.methods.default_config()``), so the table measures it."""
  from sphereembed.methods import default_config
  config = default_config()
  return dict(features=list(config.features), kernel_size=config.kernel_size,
              downsample=config.downsample, hidden=config.hidden)
GEMM_SIZE = 2048                     # square float32 matmul that measures the machine's ceiling


def _taps(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """("same"-padded conv along one axis) -> (kernel taps that land inside the input, output size)."""
  out = -(-size // stride)
  low = max((out - 1) * stride + kernel - size, 0) // 2
  return sum(0 <= o * stride - low + k < size for o in range(out) for k in range(kernel)), out


def step_flops(arch: dict, image_shape, dim: int, batch_size: int) -> float:
  """Floating-point operations of one training step of the CNN (both frameworks).

  A multiply-add counts 2, and only conv taps that land on the input count
  (none on the "same" padding). Forward: every conv and dense layer. Backward:
  the weight gradient of every layer (as many FLOPs as its forward) and the
  input gradient of every layer but the first (the images need none). Biases,
  activations, the loss and Adam are left out, so the count is the arithmetic
  no implementation of this network can avoid (XLA's cost analysis of the
  gradient agrees to about 1%; tests/test_benchmark_train.py).
  """
  height, width = image_shape[0], image_shape[1]
  channels = image_shape[2] if len(image_shape) > 2 else 1
  stride = 2 if arch["downsample"] == "stride" else 1
  layers = []  # forward FLOPs per image of each layer, input first
  for out_channels in arch["features"]:
    (taps_h, height), (taps_w, width) = (_taps(height, arch["kernel_size"], stride),
                                         _taps(width, arch["kernel_size"], stride))
    layers.append(2 * taps_h * taps_w * channels * out_channels)
    if arch["downsample"] == "pool":
      height, width = height // 2, width // 2
    channels = out_channels
  flat = height * width * channels
  layers += [2 * flat * arch["hidden"], 2 * arch["hidden"] * dim]
  return batch_size * (3 * sum(layers) - layers[0])


def gemm_gflops(matmul, size: int = GEMM_SIZE, seconds: float = 2.0) -> float:
  """Best GFLOP/s of `matmul()` (a size x size float32 product) over `seconds` (>= 2 calls)."""
  matmul()
  best, start, calls = float("inf"), time.perf_counter(), 0
  while calls < 2 or time.perf_counter() - start < seconds:
    calls += 1
    t0 = time.perf_counter()
    matmul()
    best = min(best, time.perf_counter() - t0)
  return 2 * size ** 3 / best / 1e9


NUM_BATCHES = 16                     # distinct batches, cycled
RANDOM_SAMPLES_PER_CLASS = 8         # K of the random-data fallback (P = B / K)
FLOOR = 2.0                          # the floor: sphereembed >= 2x PML images/s
VALUE_RTOL = 1e-4                    # initial-loss agreement (float32 convs, two libraries)
SECTION_BEGIN = "<!-- train-benchmark -->"
SECTION_END = "<!-- /train-benchmark -->"


# ---------------------------------------------------------------------------
# Data: the same uint8 batches for every worker.


def _largest_divisor(n: int, at_most: int, min_quotient: int = 2) -> int:
  for p in range(min(at_most, n), 0, -1):
    if n % p == 0 and n // p >= min_quotient:
      return p
  return 1


def make_batches(source: str, batch_size: int, num_batches: int, seed: int,
                 classes_per_batch: int | None):
  """``(images, labels, info)``: ``(N, B, 28, 28, 1)`` uint8, ``(N, B)`` int32.

  ``source="mnist"``: P x K batches of the MNIST training split from
  :class:`sphereembed.data.ClassBalancedSampler` (P: ``classes_per_batch``, by
  default the largest divisor of B up to 10 with K >= 2); falls back to
  random data (with a note in ``info``) when the data cannot be found.
  ``source="random"``: uniform random images, P = B / 8 classes of K = 8.
  """
  import numpy as np
  note = None
  if source == "mnist":
    from sphereembed import data as data_lib
    try:
      dataset = data_lib.load_dataset("mnist")
    except data_lib.DataNotFoundError as e:
      first = str(e).strip().splitlines()[0]
      note = f"MNIST not found ({first[:160]}); random images used instead"
      print("NOTE: " + note, flush=True)
      source = "random"
    else:
      p = classes_per_batch or _largest_divisor(batch_size, dataset.num_classes)
      if batch_size % p:
        raise ValueError(f"batch size {batch_size} is not a multiple of P = {p}")
      sampler = data_lib.ClassBalancedSampler(dataset.train.labels, p, batch_size // p, seed=seed)
      indices = sampler.epoch(0)[:num_batches]
      images = dataset.train.images[indices]
      labels = dataset.train.labels[indices].astype(np.int32)
      # Relative to the repository: the report must not name this machine's paths.
      where = os.path.relpath(dataset.source, REPO_ROOT) if os.path.isabs(dataset.source) else dataset.source
      info = {"source": "mnist", "where": where, "num_classes": dataset.num_classes,
              "P": p, "K": batch_size // p, "image_shape": list(dataset.image_shape),
              "text": (f"MNIST training images ({where}), P x K = {p} x {batch_size // p} "
                       f"batches from `ClassBalancedSampler(seed={seed})`")}
  if source == "random":
    p = classes_per_batch or max(1, batch_size // RANDOM_SAMPLES_PER_CLASS)
    if batch_size % p:
      raise ValueError(f"batch size {batch_size} is not a multiple of P = {p}")
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(num_batches, batch_size, 28, 28, 1), dtype=np.uint8)
    labels = np.repeat(np.arange(p, dtype=np.int32), batch_size // p)
    labels = np.stack([rng.permutation(labels) for _ in range(num_batches)])
    info = {"source": "random", "where": None, "num_classes": p, "P": p, "K": batch_size // p,
            "image_shape": [28, 28, 1],
            "text": (f"random uint8 images (seed {seed}), labels P x K = {p} x {batch_size // p} "
                     "per batch")}
  if len(images) < num_batches:  # a tiny dataset: cycle what there is
    raise ValueError(f"only {len(images)} batches available, {num_batches} asked for")
  info["note"] = note
  info["num_batches"] = int(len(images))
  info["digest"] = hashlib.sha1(images.tobytes() + labels.tobytes()).hexdigest()[:12]
  return images, labels, info


# ---------------------------------------------------------------------------
# Workers (one subprocess each).


def _timing_summary(times, batch_size: int) -> dict:
  times = sorted(times)
  q1, median, q3 = (statistics.quantiles(times, n=4, method="inclusive")
                    if len(times) > 1 else (times[0],) * 3)
  return {
      "steps": len(times),
      "timed_s": sum(times),
      "median_ms": 1e3 * median,
      "q1_ms": 1e3 * q1,
      "q3_ms": 1e3 * q3,
      "min_ms": 1e3 * times[0],
      "max_ms": 1e3 * times[-1],
      "images_per_s": batch_size / median,
      "images_per_s_q1": batch_size / q3,  # slower quartile step -> fewer images/s
      "images_per_s_q3": batch_size / q1,
  }


def _time_steps(step, cfg) -> list:
  for _ in range(cfg["warmup"]):
    step()
  return _lb.timed_repeats(step, cfg["min_steps"], cfg["max_seconds"],
                           min_repeats=min(3, cfg["min_steps"]), min_seconds=cfg["seconds"],
                           max_repeats=cfg["max_steps"])


def worker_sphereembed(cfg) -> dict:
  """Times sphereembed's jitted train step; also writes the initial parameters.

  With ``cfg["cpu_devices"]`` = N > 1 the CPU is split into N XLA devices
  (``jax_num_cpu_devices``, set before JAX starts its backend) and the step
  runs on the experiments' data-parallel mesh over them, as
  ``experiments.mnist --cpu_devices=N`` trains.
  """
  import jax
  import numpy as np
  import optax

  cpu_devices = int(cfg.get("cpu_devices", 1))
  jax.config.update("jax_num_cpu_devices", cpu_devices)

  from sphereembed import losses
  from sphereembed.models.cnn import SmallCNN
  from sphereembed.methods.centroid import LossSpec, create_train_state, train_step
  from sphereembed.training import sharding

  result = {"framework": "sphereembed", "loss": cfg["loss"], "cpu_devices": cpu_devices,
            "jax_devices": [str(d) for d in jax.devices()]}
  with np.load(cfg["batches_path"]) as f:
    images, labels = f["images"], f["labels"]
  model = SmallCNN(cfg["dim"], features=tuple(cfg["features"]), kernel_size=cfg["kernel_size"],
                   downsample=cfg["downsample"], hidden=cfg["hidden"],
                   polyphase_gradient=cfg.get("polyphase", True))
  result["polyphase"] = cfg.get("polyphase", True)
  state = create_train_state(model, optax.adam(cfg["learning_rate"]),
                             jax.random.PRNGKey(cfg["seed"]), images[0],
                             cfg["num_classes"])
  if cfg["loss"] == "triplet_batch_hard":
    spec = LossSpec(name="triplet_batch_hard", margin=cfg["margin"], metric="euclidean")
  else:
    spec = LossSpec(name="ncl")
  stage = "value check"
  try:
    if cfg["loss"] == "triplet_batch_hard":
      # The initial loss on batch 0, averaged like PML's AvgNonZeroReducer
      # (over the anchors whose hardest triplet violates the margin).
      params = jax.device_get(state.params)
      embeddings = np.asarray(model.apply({"params": params}, images[0])["embedding"])
      value, stats = losses.triplet_batch_hard(embeddings, labels[0], margin=cfg["margin"],
                                               metric="euclidean", return_stats=True)
      n_active, n_valid = float(stats["num_active"]), float(stats["num_valid"])
      result["initial_loss"] = float(value)
      result["initial_comparable"] = float(value) * n_valid / n_active if n_active else 0.0
      result["initial_num_active"], result["initial_num_valid"] = n_active, n_valid
      if cfg.get("params_path"):
        save_flax_params(cfg["params_path"], params, embeddings)
    mesh = sharding.make_mesh(cpu_devices)
    holder = {"state": sharding.replicate(state, mesh), "i": 0}

    def step():
      i = holder["i"] % len(images)
      holder["i"] += 1
      # The host-to-device copy of the uint8 batch is part of the timed step on both sides.
      holder["state"], holder["metrics"] = train_step(
          holder["state"], sharding.shard_batch({"image": images[i], "label": labels[i]}, mesh),
          spec)
      jax.block_until_ready((holder["state"], holder["metrics"]))

    stage = "compile"
    t0 = time.perf_counter()
    step()  # traces, compiles and runs one step
    result["first_step_s"] = time.perf_counter() - t0
    stage = "run"
    times = _time_steps(step, cfg)
    result.update(_timing_summary(times, cfg["batch_size"]), times_s=times)
    result["final_loss"] = float(holder["metrics"]["loss"])
    result["loss_finite"] = bool(np.isfinite(result["final_loss"]))
    result["steps_total"] = int(holder["state"].step)
    a = jax.numpy.ones((GEMM_SIZE, GEMM_SIZE), jax.numpy.float32)
    product = jax.jit(jax.numpy.matmul)
    result["gemm_gflops"] = gemm_gflops(lambda: product(a, a).block_until_ready(),
                                         seconds=min(2.0, cfg["seconds"]))
    result["status"] = "ok"
  except Exception as e:  # noqa: BLE001 - every failure goes into the row
    result.update(status="error", error=f"{stage}: {type(e).__name__}: {e}"[:500],
                  traceback=traceback.format_exc()[-2000:])
  return result


def torch_model(cfg):
  """The SmallCNN architecture in torch: NCHW, "same" convs with stride 2 or 2x2 max pool, ReLU."""
  import torch
  from torch import nn
  from torch.nn import functional as F

  class TorchSmallCNN(nn.Module):
    """SmallCNN in torch; takes uint8 NHWC images like the Flax model."""

    def __init__(self, embedding_dim, features, hidden, image_shape, kernel_size, downsample):
      super().__init__()
      height, width, channels = image_shape
      layers = []
      for out in features:
        if downsample == "stride":
          # XLA's SAME padding for stride 2: total max((ceil(n/2)-1)*2 + k - n, 0), the
          # smaller half first; torch's padding="same" does not take strides.
          pads = []
          for n in (width, height):
            total = max((-(-n // 2) - 1) * 2 + kernel_size - n, 0)
            pads += [total // 2, total - total // 2]
          layers += [nn.ZeroPad2d(tuple(pads)), nn.Conv2d(channels, out, kernel_size, stride=2),
                     nn.ReLU()]
          height, width = -(-height // 2), -(-width // 2)
        else:
          layers += [nn.Conv2d(channels, out, kernel_size, padding="same"), nn.ReLU(),
                     nn.MaxPool2d(2)]
          height, width = height // 2, width // 2
        channels = out
      self.convs = nn.Sequential(*layers)
      self.dense = nn.Linear(channels * height * width, hidden)
      self.projection = nn.Linear(hidden, embedding_dim)

    def forward(self, images):
      x = images.permute(0, 3, 1, 2).float() / 255.0  # uint8 NHWC -> float NCHW, in the step
      x = torch.flatten(self.convs(x), 1)
      x = F.relu(self.dense(x))
      return F.normalize(self.projection(x), dim=1)  # x / max(||x||, 1e-12), as ours

  return TorchSmallCNN(cfg["dim"], cfg["features"], cfg["hidden"], cfg["image_shape"],
                       cfg["kernel_size"], cfg["downsample"])


def save_flax_params(path: str, params, embeddings) -> None:
  """Saves SmallCNN parameters (flattened, ``"Conv_0/kernel"`` ...) and reference embeddings."""
  import numpy as np
  from flax import traverse_util
  flat = traverse_util.flatten_dict(params, sep="/")
  np.savez(path, embeddings=np.asarray(embeddings), **{k: np.asarray(v) for k, v in flat.items()})


def copy_flax_params(model, path: str):
  """Loads :func:`save_flax_params`' file into the torch model; returns its embeddings.

  Flax kernels are HWIO (convs) and (in, out) (dense); torch's are OIHW and
  (out, in), and the flattened conv features are ordered (h, w, c) in Flax but
  (c, h, w) in torch, so the first dense kernel's rows are permuted.
  """
  import numpy as np
  import torch
  with np.load(path) as f:
    p = {k: f[k] for k in f.files}
  convs = [m for m in model.convs if isinstance(m, torch.nn.Conv2d)]
  with torch.no_grad():
    for i, conv in enumerate(convs):
      conv.weight.copy_(torch.from_numpy(p[f"Conv_{i}/kernel"].transpose(3, 2, 0, 1).copy()))
      conv.bias.copy_(torch.from_numpy(p[f"Conv_{i}/bias"]))
    # Flax flattens (h, w, c); torch flattens (c, h, w).
    kernel = p["Dense_0/kernel"]
    channels = convs[-1].out_channels
    side = int(round((kernel.shape[0] // channels) ** 0.5))
    kernel = kernel.reshape(side, side, channels, -1).transpose(3, 2, 0, 1).reshape(
        kernel.shape[1], -1)
    model.dense.weight.copy_(torch.from_numpy(kernel.copy()))
    model.dense.bias.copy_(torch.from_numpy(p["Dense_0/bias"]))
    model.projection.weight.copy_(torch.from_numpy(p["head/projection/kernel"].T.copy()))
    model.projection.bias.copy_(torch.from_numpy(p["head/projection/bias"]))
  return p["embeddings"]


def worker_pml(cfg) -> dict:
  """Times miner + loss + backward + Adam step of the torch model."""
  import numpy as np
  import torch

  if cfg.get("torch_threads"):
    torch.set_num_threads(cfg["torch_threads"])
  result = {"framework": "pml", "loss": cfg["loss"],
            "torch_num_threads": torch.get_num_threads(),
            "torch_num_interop_threads": torch.get_num_interop_threads(),
            "torch_mkldnn": bool(torch.backends.mkldnn.is_available())}
  with np.load(cfg["batches_path"]) as f:
    images, labels = f["images"], f["labels"].astype(np.int64)
  torch.manual_seed(cfg["seed"])
  model = torch_model(cfg)
  loss_fn, miner = _lb._pml_loss_and_miner(PML_PEER[cfg["loss"]])
  stage = "value check"
  try:
    if cfg.get("params_path") and os.path.exists(cfg["params_path"]):
      flax_embeddings = copy_flax_params(model, cfg["params_path"])
      result["initial_weights"] = "flax"
      with torch.no_grad():
        emb = model(torch.from_numpy(images[0]))
        lab = torch.from_numpy(labels[0])
        result["initial_loss"] = float(loss_fn(emb, lab, miner(emb, lab)))
      result["embedding_max_abs_diff"] = float(np.max(np.abs(emb.numpy() - flax_embeddings)))
    else:
      result["initial_weights"] = "torch default init"
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["learning_rate"])
    holder = {"i": 0}

    def step():
      i = holder["i"] % len(images)
      holder["i"] += 1
      optimizer.zero_grad(set_to_none=True)
      batch_labels = torch.from_numpy(labels[i])
      embeddings = model(torch.from_numpy(images[i]))
      indices = miner(embeddings, batch_labels)  # under no_grad inside PML
      loss = loss_fn(embeddings, batch_labels, indices)
      loss.backward()
      optimizer.step()
      holder["loss"] = loss

    stage = "run"
    t0 = time.perf_counter()
    step()
    result["first_step_s"] = time.perf_counter() - t0
    times = _time_steps(step, cfg)
    result.update(_timing_summary(times, cfg["batch_size"]), times_s=times)
    result["final_loss"] = float(holder["loss"].detach())
    result["loss_finite"] = bool(np.isfinite(result["final_loss"]))
    result["steps_total"] = holder["i"]
    a = torch.ones((GEMM_SIZE, GEMM_SIZE), dtype=torch.float32)
    result["gemm_gflops"] = gemm_gflops(lambda: torch.mm(a, a), seconds=min(2.0, cfg["seconds"]))
    result["status"] = "ok"
  except Exception as e:  # noqa: BLE001
    result.update(status="error", error=f"{stage}: {type(e).__name__}: {e}"[:500],
                  traceback=traceback.format_exc()[-2000:])
  return result


def worker_main(framework: str, cfg_json: str) -> int:
  cfg = json.loads(cfg_json)
  result = worker_sphereembed(cfg) if framework == "sphereembed" else worker_pml(cfg)
  sys.stdout.write(_lb.RESULT_MARK + json.dumps(result) + "\n")
  sys.stdout.flush()
  return 0


def run_worker(framework: str, cfg: dict, timeout_s: float) -> dict:
  """Runs one measurement in a fresh interpreter; never raises."""
  cmd = [sys.executable, os.path.abspath(__file__), "--worker", framework,
         "--worker-config", json.dumps(cfg)]
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
  env.setdefault("JAX_PLATFORMS", "cpu")
  t0 = time.monotonic()
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, env=env,
                          timeout=timeout_s)
  except subprocess.TimeoutExpired:
    return {"framework": framework, "loss": cfg["loss"], "status": "timeout",
            "error": f"killed after {timeout_s:g} s", "worker_wall_s": time.monotonic() - t0}
  result = None
  for line in proc.stdout.splitlines():
    if line.startswith(_lb.RESULT_MARK):
      result = json.loads(line[len(_lb.RESULT_MARK):])
  if result is None:
    last = [l for l in proc.stderr.strip().splitlines() if l.strip()][-3:]
    result = {"framework": framework, "loss": cfg["loss"], "status": "error",
              "error": (f"exit code {proc.returncode}: " + " | ".join(last))[:500]}
  result["worker_wall_s"] = time.monotonic() - t0
  return result


# ---------------------------------------------------------------------------
# The table and RESULTS.md.

TABLE_HEADER = (
    "| loss | framework | images/s (median) | spread: images/s IQR | ms/step (median) | steps "
    "| images/s of each round | sphereembed/PML |\n"
    "|---|---|---:|---:|---:|---:|---:|---:|\n")


def merge_rounds(rows: list[dict], batch_size: int) -> list[dict]:
  """One row per (loss, framework, devices): the step times of every round pooled.

  The rounds interleave the workers, so a slow spell of the machine (these are
  shared cores) lands on every row alike instead of on one of them.
  """
  merged = {}
  for row in rows:
    key = (row["loss"], row["framework"], row.get("cpu_devices", 1), row.get("polyphase", True))
    if key not in merged:
      merged[key] = {**row, "round_images_per_s": [], "times_s": []}
    target = merged[key]
    if row.get("status") != "ok":  # one failed round marks the whole row failed
      target.update(status=row.get("status", "error"), error=row.get("error"))
      continue
    target["round_images_per_s"].append(row["images_per_s"])
    target["times_s"] += row["times_s"]
    target["gemm_gflops"] = max(target.get("gemm_gflops", 0.0), row.get("gemm_gflops", 0.0))
  for target in merged.values():
    if target.get("status") == "ok" and target["times_s"]:
      target.update(_timing_summary(target["times_s"], batch_size))
  return list(merged.values())


def row_label(row) -> str:
  """The framework column: ours names its device count, and XLA's own conv gradient when used."""
  label = FRAMEWORK_LABEL[row["framework"]]
  devices = row.get("cpu_devices", 1)
  label += f", {devices} CPU devices" if devices > 1 else ""
  return label + (", XLA's conv input gradient" if not row.get("polyphase", True) else "")


def _ratio(ours, rows):
  """Our row's images/s over PML's on the same loss (None when either did not run)."""
  pml = next((r for r in rows if r["loss"] == ours["loss"] and r["framework"] == "pml"), None)
  if pml and ours.get("status") == "ok" and pml.get("status") == "ok":
    return ours["images_per_s"] / pml["images_per_s"]
  return None


def _best_ratio(rows, loss):
  """(ratio, row) of our fastest row on ``loss`` against PML, or (None, None)."""
  ratios = [(_ratio(r, rows), r) for r in rows
            if r["loss"] == loss and r["framework"] == "sphereembed"]
  ratios = [(q, r) for q, r in ratios if q is not None]
  return max(ratios, key=lambda qr: qr[0]) if ratios else (None, None)


def _num(x: float) -> str:
  return f"{x:.3g}" if x < 100 else f"{x:.0f}"


def row_text(row, rows) -> str:
  cells = [f"`{row['loss']}`", row_label(row)]
  if row.get("status") == "ok":
    cells += [_num(row["images_per_s"]),
              f"{_num(row['images_per_s_q1'])}–{_num(row['images_per_s_q3'])}",
              _num(row["median_ms"]), str(row["steps"]),
              ", ".join(_num(v) for v in row.get("round_images_per_s", [row["images_per_s"]]))]
  else:
    error = str(row.get("error", "?"))[:100].replace("|", "/").replace("\n", " ")
    cells += [f"{row.get('status', 'error')}: {error}", "—", "—", "—", "—"]
  if PML_PEER[row["loss"]] is None:
    cells.append("no PML peer")
  elif row["framework"] == "sphereembed":
    ratio = _ratio(row, rows)
    cells.append("—" if ratio is None else f"**{ratio:.2f}**")
  else:
    cells.append("(reference)")
  return "| " + " | ".join(cells) + " |"


def value_check_text(rows) -> str:
  ours = next((r for r in rows if r["loss"] == "triplet_batch_hard"
               and r["framework"] == "sphereembed"), None)
  pml = next((r for r in rows if r["loss"] == "triplet_batch_hard" and r["framework"] == "pml"),
             None)
  if not ours or not pml or "initial_comparable" not in ours or "initial_loss" not in pml:
    return "Initial-loss check: not run (needs both triplet_batch_hard workers)."
  a, b = ours["initial_comparable"], pml["initial_loss"]
  rel = abs(a - b) / max(abs(b), 1e-30)
  mark = "✓" if rel <= VALUE_RTOL else "✗ MISMATCH"
  return (f"Initial-loss check (Flax initial weights copied into the torch model, batch 0): "
          f"PML {b:.6g}, ours {ours['initial_loss']:.6g} (mean over all "
          f"{ours['initial_num_valid']:.0f} anchors), ours re-averaged over the "
          f"{ours['initial_num_active']:.0f} active anchors {a:.6g}: {mark} relative difference "
          f"{rel:.0e}; embeddings max |Δ| {pml.get('embedding_max_abs_diff', float('nan')):.1e}.")


def floor_text(rows, floor: float) -> str:
  ratio, best = _best_ratio(rows, "triplet_batch_hard")
  if ratio is None:
    return f"Floor (sphereembed ≥ {floor:g}× PML images/s on `triplet_batch_hard`): not measured."
  verdict = "met" if ratio >= floor else "**NOT met**"
  return (f"Floor (sphereembed ≥ {floor:g}× PML images/s on `triplet_batch_hard`): "
          f"{ratio:.2f}× ({row_label(best)}) — {verdict}.")


def ceiling_text(rows, flops: float, floor: float) -> str:
  """What the floor asks of the arithmetic units, against the GEMM rates measured in the run."""
  ok = [r for r in rows if r.get("status") == "ok" and r["loss"] == "triplet_batch_hard"]
  gemm = {FRAMEWORK_LABEL[r["framework"]]: r["gemm_gflops"] for r in rows
          if r.get("status") == "ok" and "gemm_gflops" in r and r.get("cpu_devices", 1) == 1}
  if not ok or not gemm:
    return "Arithmetic ceiling: not measured."
  rates = ", ".join(f"{row_label(r)} {flops / 1e6 / r['median_ms']:.0f}" for r in ok)
  text = (f"Arithmetic ceiling: one step is {flops / 1e9:.2f} GFLOP (`step_flops`: the convs' and "
          f"dense layers' multiply-adds, forward and backward, padding taps left out). Achieved GFLOP/s: {rates}. "
          f"Largest rate of a {GEMM_SIZE}x{GEMM_SIZE} float32 matmul on this machine, "
          "measured in the same workers: " + ", ".join(f"{k} {v:.0f}" for k, v in gemm.items())
          + " GFLOP/s.")
  pml = next((r for r in ok if r["framework"] == "pml"), None)
  if pml is not None:
    needed = floor * flops / 1e6 / pml["median_ms"]
    text += (f" The {floor:g}x floor needs {needed:.0f} GFLOP/s, "
             f"{100 * needed / max(gemm.values()):.0f}% of the best matmul rate, for small "
             "convolutions that run below the large-matmul rate in both frameworks.")
  return text


def section_text(rows, info, data_info, args, command, started, finished, skipped) -> str:
  ours = next((r for r in rows if r["framework"] == "sphereembed" and r.get("status") == "ok"), {})
  pml = next((r for r in rows if r["framework"] == "pml"), {})
  torch_threads = (f"`torch.get_num_threads()` = {pml['torch_num_threads']} ("
                   + ("torch's default, not set" if not args.torch_threads else
                      "set by --torch-threads")
                   + f"), interop threads {pml['torch_num_interop_threads']}, oneDNN "
                   f"{'on' if pml.get('torch_mkldnn') else 'off'}"
                   if "torch_num_threads" in pml else "torch not run")
  lines = [SECTION_BEGIN, "# Training throughput: sphereembed train step vs pytorch-metric-learning", ""]
  if args.note:
    lines += [f"> **{args.note}**", ""]
  if args.smoke:
    lines += ["> **Smoke run (a few steps): the numbers mean nothing.**", ""]
  if info["loadavg_start"][0] > 0.25 * info["cpus_available"]:
    lines += [f"> **The machine was busy (1-min load {info['loadavg_start'][0]:.2f} on "
              f"{info['cpus_available']} CPUs): torch's OpenMP threads slow down by an order of "
              "magnitude when the cores are oversubscribed, so the ratios are not "
              "meaningful.**", ""]
  lines += [
      f"Command (from the repository root): `{command}`",
      "",
      f"Started {started}, " + (f"finished {finished}." if finished else
                                "**still running / interrupted** (rows so far)."),
      "",
      f"Machine: {info['cpu']}, {info['logical_cpus']} logical CPUs ({info['cpus_available']} "
      f"available; XLA's pool uses them all, {torch_threads}), "
      + (f"{info['ram_gib']:.1f} GiB RAM" if info["ram_gib"] else "RAM unknown")
      + f", {info['os']}.",
      "",
      "Versions: " + ", ".join(
          f"{k} {info[k]}" for k in ("python", "jax", "jaxlib", "flax", "optax", "numpy",
                                     "torch", "pytorch-metric-learning")) + ".",
      "",
      f"sphereembed commit: {info['sphereembed']}.",
      "",
      "Load average (1, 5, 15 min) at the start: "
      + ", ".join(f"{v:.2f}" for v in info["loadavg_start"])
      + (f"; 1-min load at the end: {info['loadavg_end']:.2f}" if "loadavg_end" in info else "")
      + f" (on {info['cpus_available']} CPUs; anything well above 0 means other work competed "
      "for the cores).",
      "",
      f"Data: {data_info['text']}; {data_info['num_batches']} distinct batches of "
      f"B = {args.batch_size}, cycled, the same batches in the same order for both frameworks "
      f"(digest {data_info['digest']})." + (f" **{data_info['note']}.**" if data_info["note"] else ""),
      "",
      f"Model: `SmallCNN(embedding_dim={args.dim}, **{_architecture()})` (the experiments' CNN): "
      "conv blocks (\"same\" padding, stride 2 or 2x2 max pool) + ReLU, Dense + ReLU, Dense "
      f"to D = {args.dim}, L2 normalisation; the torch copy has the same layers (NCHW) and "
      "starts from the Flax initial weights. Adam, learning rate "
      f"{LEARNING_RATE:g}, default betas and eps in both.",
      "",
      f"Timing: each (loss, framework) in its own subprocess, {args.rounds} round(s) of all "
      "of them in turn (a row pools the step times of its rounds, so a slow spell of these "
      f"shared cores falls on every row alike); {args.warmup} warm-up step(s) after "
      f"the first (compiling) step, then per-step wall times over at least {args.seconds:g} s "
      f"and {args.min_steps} steps (at most {args.max_seconds:g} s). A step is the whole "
      "update from uint8 NumPy batch to new parameters: ours `train_step(state, batch, spec)` "
      "+ `jax.block_until_ready` (it also moves the class centroids and computes its metrics); "
      "with N CPU devices (`jax_num_cpu_devices`), the batch is split over a data-parallel "
      "mesh of N devices, as `experiments.mnist --cpu_devices=N` trains: N programs run side "
      "by side and XLA all-reduces the gradients, centroid sums and metrics; "
      "PML `zero_grad`, forward, `BatchHardMiner`, `TripletMarginLoss`, `backward`, "
      "`Adam.step`. Images/s = B / median step time.",
      "",
      "## Results",
      "",
      TABLE_HEADER.rstrip("\n"),
  ]
  lines += [row_text(r, rows) for r in rows]
  lines += [
      "",
      "Columns: *spread*: images/s at the slower and faster quartile step time (IQR). "
      "*sphereembed/PML*: ratio of the median images/s, > 1 means ours is faster. "
      + ("Rows marked *XLA's conv input gradient* run `SmallCNN(polyphase_gradient=False)`: "
         "the strided convolutions' input gradient as XLA computes it (a convolution over "
         "the output gradient dilated with zeros) instead of the polyphase form "
         "(`sphereembed.models.conv`, the default); the values are the same up to rounding. "
         if any(not r.get("polyphase", True) for r in rows) else "")
      + "*images/s of each round*: the median of each round alone. "
      + (f"Our first step (trace + compile + run): {ours['first_step_s']:.1f} s, excluded."
         if "first_step_s" in ours else ""),
      "",
      floor_text(rows, FLOOR),
      "",
      ceiling_text(rows, info["step_flops"], FLOOR),
      "",
      value_check_text(rows),
      "",
  ]
  if skipped:
    lines += ["Skipped:", ""] + [f"* {s}" for s in skipped] + [""]
  lines += [
      "Same computation, two implementations: PML's peer is " + PML_PEER_TEXT + " (PML's "
      "default `TripletMarginLoss` margin is 0.05, so 0.2 is set explicitly; its default "
      "distance would re-normalise the already unit embeddings). Both select, per anchor, the "
      "farthest positive and the nearest negative by the euclidean distance of the unit "
      "embeddings. PML's `AvgNonZeroReducer` averages over the anchors with a positive loss, "
      "ours over all valid anchors, so the two gradients differ by the factor "
      "num_valid / num_active (the check above compares the values with ours re-averaged); "
      "the cost per step is the same. PML computes the B x B distances twice (miner under "
      "`no_grad`, then the loss with gradients through the whole matrix); ours mines on "
      "squared distances without gradients and recomputes only the 2B chosen distances. "
      "`ncl` has no PML counterpart.",
      SECTION_END,
  ]
  return "\n".join(lines) + "\n"




# ---------------------------------------------------------------------------
# Main.


def _parse_list(text: str, allowed) -> list[str]:
  items = [t.strip() for t in text.split(",") if t.strip()]
  for item in items:
    if item not in allowed:
      raise SystemExit(f"unknown {item!r}; choose from {', '.join(allowed)}")
  return items


def _parse_devices(text: str, batch_size: int) -> list[int]:
  """``--cpu-devices``: positive counts that divide the batch (the mesh splits it evenly)."""
  try:
    counts = [int(t) for t in text.split(",") if t.strip()]
  except ValueError:
    raise SystemExit(f"--cpu-devices takes comma-separated integers, got {text!r}") from None
  bad = [n for n in counts if n < 1 or batch_size % n]
  if not counts or bad:
    raise SystemExit(f"--cpu-devices: every count must be >= 1 and divide the batch size "
                     f"{batch_size}; got {text!r}")
  return counts


def main(argv=None) -> int:
  """Runs the benchmark; returns 0, or 1 when a measurement failed."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch-size", type=int, default=256)
  parser.add_argument("--dim", type=int, default=128, help="embedding dimension D")
  parser.add_argument("--seconds", type=float, default=10.0,
                      help="minimum timed seconds per (loss, framework), after warm-up")
  parser.add_argument("--min-steps", type=int, default=10, help="minimum timed steps")
  parser.add_argument("--max-seconds", type=float, default=120.0,
                      help="stop timing after this long (once 3 steps are done)")
  parser.add_argument("--warmup", type=int, default=3, help="warm-up steps after the first one")
  parser.add_argument("--losses", default=",".join(ALL_LOSSES),
                      help=f"comma-separated subset of {','.join(ALL_LOSSES)}")
  parser.add_argument("--frameworks", default=",".join(ALL_FRAMEWORKS),
                      help="sphereembed, pml or both")
  parser.add_argument("--data", choices=("mnist", "random"), default="mnist",
                      help="MNIST P x K batches (random images when it is not found) or random")
  parser.add_argument("--classes-per-batch", type=int, default=None,
                      help="P of the P x K batches (default: 8 for MNIST at B = 256, B/8 random)")
  parser.add_argument("--cpu-devices", default=None,
                      help="comma-separated device counts for our side, one row each: the CPU "
                           "split into N XLA devices and the step run data-parallel over them "
                           "(default: 1 and the number of available CPUs)")
  parser.add_argument("--rounds", type=int, default=3,
                      help="times every worker runs, the workers interleaved; a row pools the "
                           "step times of its rounds (default %(default)s)")
  parser.add_argument("--ablate-polyphase", action="store_true",
                      help="also time our triplet_batch_hard step with XLA's own input gradient for "
                           "the strided convolutions (SmallCNN(polyphase_gradient=False)), per "
                           "device count")
  parser.add_argument("--torch-threads", type=int, default=0,
                      help="torch.set_num_threads for the PML side (default 0: torch's default)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--smoke", action="store_true",
                      help="a few steps only, to check that everything runs")
  parser.add_argument("--timeout", type=float, default=600.0,
                      help="wall-clock limit of one measurement subprocess, seconds")
  parser.add_argument("--output", default=None,
                      help="markdown file whose train-benchmark section is (re)written "
                           "(e.g. benchmarks/RESULTS.md); default: print only")
  parser.add_argument("--raw-dir", default=os.path.join("benchmarks", "_raw"),
                      help="JSON lines of every measurement go here (git-ignored)")
  parser.add_argument("--note", default="", help="a line put at the top of the section")
  parser.add_argument("--worker", choices=ALL_FRAMEWORKS, help=argparse.SUPPRESS)
  parser.add_argument("--worker-config", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)

  if args.worker:
    return worker_main(args.worker, args.worker_config)

  if args.smoke:
    args.seconds, args.min_steps, args.warmup, args.rounds = 0.0, 3, 1, 1
  command = "python benchmarks/train.py" + "".join(
      " " + shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
  loss_names = _parse_list(args.losses, ALL_LOSSES)
  frameworks = _parse_list(args.frameworks, ALL_FRAMEWORKS)
  skipped = []
  if "pml" in frameworks:
    missing = [d for d in ("torch", "pytorch-metric-learning")
               if _lb._version(d) == "not installed"]
    if missing:
      msg = (f"{' and '.join(missing)} not installed (pip install -e \".[bench]\"); "
             "no PML numbers")
      print("NOTE: " + msg, flush=True)
      skipped.append(msg)
      frameworks.remove("pml")

  cpus = len(os.sched_getaffinity(0))
  cpu_devices = _parse_devices(args.cpu_devices or ",".join(map(str, sorted({1, cpus}))),
                               args.batch_size)
  info = _lb.machine_info(cpus)
  info["flax"], info["optax"] = _lb._version("flax"), _lb._version("optax")
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
  raw_path = os.path.join(raw_dir, f"train-{datetime.datetime.now():%Y%m%d-%H%M%S}.jsonl")

  num_batches = 2 if args.smoke else NUM_BATCHES
  images, labels, data_info = make_batches(args.data, args.batch_size, num_batches, args.seed,
                                           args.classes_per_batch)
  print(f"# {command}", flush=True)
  print(f"# machine: {info['cpu']}, {info['cpus_available']} CPUs; data: {data_info['text']}; "
        f"raw results: {os.path.relpath(raw_path, REPO_ROOT)}", flush=True)
  info["step_flops"] = step_flops(_architecture(), data_info["image_shape"], args.dim,
                                  args.batch_size)
  print(TABLE_HEADER, end="", flush=True)
  rows = []
  with tempfile.TemporaryDirectory(prefix="sphereembed-train-bench-") as tmp:
    import numpy as np
    batches_path = os.path.join(tmp, "batches.npz")
    np.savez(batches_path, images=images, labels=labels)
    base = dict(batch_size=args.batch_size, dim=args.dim, **_architecture(),
                learning_rate=LEARNING_RATE, margin=TRIPLET_MARGIN, seed=args.seed,
                num_classes=data_info["num_classes"], image_shape=data_info["image_shape"],
                batches_path=batches_path, params_path=os.path.join(tmp, "params.npz"),
                torch_threads=args.torch_threads, warmup=args.warmup, seconds=args.seconds, min_steps=args.min_steps,
                max_steps=100000, max_seconds=args.max_seconds)
    for round_index in range(args.rounds):
      round_rows = []
      for loss in loss_names:
        for framework in frameworks:
          if framework == "pml" and PML_PEER[loss] is None:
            continue
          variants = [(1, True)]
          if framework == "sphereembed":
            ablate = args.ablate_polyphase and PML_PEER[loss] is not None
            variants = [(n, poly) for n in cpu_devices for poly in ((True, False) if ablate
                                                                     else (True,))]
          for devices, polyphase in variants:
            cfg = {**base, "loss": loss, "cpu_devices": devices, "polyphase": polyphase}
            row = run_worker(framework, cfg, args.timeout)
            row.update(loadavg_after=os.getloadavg()[0], round=round_index)
            round_rows.append(row)
            print(row_text(row, round_rows) + f" round {round_index + 1}/{args.rounds}",
                  flush=True)
            with open(raw_path, "a") as f:
              f.write(json.dumps({**row, "config": {k: v for k, v in cfg.items()
                                                    if not k.endswith("_path")},
                                  "data": data_info}) + "\n")
      rows += round_rows
  rows = merge_rounds(rows, args.batch_size)
  info["loadavg_end"] = os.getloadavg()[0]
  finished = datetime.datetime.now().isoformat(timespec="seconds")
  section = section_text(rows, info, data_info, args, command, started, finished, skipped)
  print("\n" + TABLE_HEADER + "\n".join(row_text(r, rows) for r in rows) + "\n")
  print(floor_text(rows, FLOOR))
  print(ceiling_text(rows, info["step_flops"], FLOOR))
  print(value_check_text(rows))
  if output:
    _lb.replace_marked_section(output, section, SECTION_BEGIN, SECTION_END)
    print(f"# section written to {args.output}", flush=True)
  for row in rows:
    if row.get("status") != "ok" and row.get("traceback"):
      print(f"# {row['framework']} {row['loss']} failed:\n{row['traceback']}", file=sys.stderr)
  return 0 if all(r.get("status") == "ok" for r in rows) else 1


if __name__ == "__main__":
  sys.exit(main())
