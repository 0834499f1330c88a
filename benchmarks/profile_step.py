#!/usr/bin/env python3
"""Where the train step's time goes: XLA's operations ranked by time, from a ``jax.profiler`` trace.

Profiles the gradient of ``triplet_batch_hard`` through ``SmallCNN`` (the
network of ``benchmarks/train.py``) on random images, and prints the
operations of the compiled program that took the most time per step. Run it
on one core to see what one of ``--cpu_devices=2``'s halves spends its time on:

  taskset -c 0 python benchmarks/profile_step.py --batch 128
  taskset -c 0 python benchmarks/profile_step.py --batch 128 --no-polyphase  # XLA's own gradient

Operation names are XLA's (``ynn_fusion.N``: fused kernels; a convolution with
``lhs_dilate`` in the HLO shows up as ``convolution-base-dilated``).
``--dump-hlo`` writes the compiled HLO next to the trace to map names to
operations.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import tempfile


def profile(batch: int, steps: int, polyphase: bool, trace_dir: str, dump_hlo: bool):
  """(ms per step of every traced XLA operation, the number of steps)."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from sphereembed import losses
  from sphereembed.models.cnn import SmallCNN
  from sphereembed.methods import default_config

  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.random((batch, 28, 28, 1), dtype=np.float32))
  labels = jnp.asarray(np.arange(batch) % 8)
  config = default_config()  # the experiments' CNN, as benchmarks/train.py times it
  model = SmallCNN(128, features=tuple(config.features), kernel_size=config.kernel_size,
                   downsample=config.downsample, hidden=config.hidden,
                   polyphase_gradient=polyphase)
  params = model.init(jax.random.PRNGKey(0), images)

  def loss(p):
    embeddings = model.apply(p, images)["embedding"]
    return losses.triplet_batch_hard(embeddings, labels, margin=0.2, metric="euclidean")

  grad = jax.jit(jax.grad(loss))
  if dump_hlo:
    with open(os.path.join(trace_dir, "step.hlo.txt"), "w", encoding="utf-8") as f:
      f.write(grad.lower(params).compile().as_text())
  for _ in range(3):
    jax.block_until_ready(grad(params))
  jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
  for _ in range(steps):
    jax.block_until_ready(grad(params))
  jax.profiler.stop_trace()
  path = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True))[-1]
  with gzip.open(path) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  totals = collections.Counter()
  for event in events:
    if event.get("ph") == "X":
      totals[event["name"]] += event["dur"] / 1e3 / steps  # microseconds -> ms per step
  return totals


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--steps", type=int, default=20, help="profiled steps (after 3 warm-up)")
  parser.add_argument("--top", type=int, default=15, help="how many operations to list")
  parser.add_argument("--no-polyphase", dest="polyphase", action="store_false",
                      help="XLA's own input gradient for the strided convolutions")
  parser.add_argument("--dump-hlo", action="store_true", help="also write the compiled HLO")
  parser.add_argument("--trace-dir", default=None, help="keep the trace here (default: temporary)")
  args = parser.parse_args(argv)
  with tempfile.TemporaryDirectory(prefix="sphereembed-profile-") as tmp:
    trace_dir = args.trace_dir or tmp
    os.makedirs(trace_dir, exist_ok=True)
    totals = profile(args.batch, args.steps, args.polyphase, trace_dir, args.dump_hlo)
  step = totals.get("ThunkExecutor::Execute", 0.0)
  print(f"# batch {args.batch}, polyphase gradient {'on' if args.polyphase else 'off'}, "
        f"{os.cpu_count()} CPUs, {len(os.sched_getaffinity(0))} available; the program: "
        f"{step:.2f} ms per step")
  print("| operation | ms per step | share |")
  print("|---|---:|---:|")
  wrappers = ("ThunkExecutor::Execute", "PjitFunction", "$", "CommonPjRt", "ParseArguments",
              "AllocateOutputBuffers", "Handle inputs", "end: ")
  ops = [(name, ms) for name, ms in totals.most_common() if not name.startswith(wrappers)]
  for name, ms in ops[:args.top]:
    print(f"| {name} | {ms:.2f} | {100 * ms / step if step else float('nan'):.0f}% |")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
