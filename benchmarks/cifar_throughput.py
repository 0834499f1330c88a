#!/usr/bin/env python3
"""Images/s of the CIFAR ResNet train step: the runner's jitted step on random data.

Times :func:`sphereembed.methods.centroid.train_step` exactly as the CIFAR
configs (``python -m experiments.mnist --config=configs/cifar100_ncl_1024d.py``
and the other ``configs/cifar*.py``) run it through
:func:`sphereembed.train_and_evaluate` (the centroid method): a ResNet-18
(CIFAR variant) with the unit-norm embedding head, NCL with the centroid EMA,
SGD with Nesterov momentum and kernel weight decay
(:func:`sphereembed.methods.centroid.cifar_config`), built by
:mod:`sphereembed.training.builders` as a run builds it, the state
replicated and the batch sharded over a mesh of every local device.
Inputs are random uint8 images ``(B, 32, 32, 3)`` and labels; each timed
step ends with ``jax.block_until_ready``. Compilation and ``--warmup`` steps
are excluded; the result is the median per-step wall time over at least
``--seconds`` seconds (and ``--min-steps`` steps), printed as one line.

Usage (from the repository root)::

  python benchmarks/cifar_throughput.py  # ResNet-18, batch 256, 100 classes, D=1024
  python benchmarks/cifar_throughput.py --dtype=bfloat16 --batch-size=512
  XLA_FLAGS=--xla_force_host_platform_device_count=2 python benchmarks/cifar_throughput.py

The data pipeline (gathering, crop and flip, prefetching) is not timed here;
``metrics.json`` of a real run holds ``train_images_per_second`` for the
whole loop.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from sphereembed import methods  # pylint: disable=g-import-not-at-top,wrong-import-position
from sphereembed.methods import centroid  # pylint: disable=wrong-import-position
from sphereembed.training import builders  # pylint: disable=wrong-import-position
from sphereembed.training import sharding  # pylint: disable=wrong-import-position


def _parse(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="resnet18", choices=("resnet18", "resnet34"))
  parser.add_argument("--width", type=float, default=1.0)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--batch-size", type=int, default=256)
  parser.add_argument("--num-classes", type=int, default=100)
  parser.add_argument("--embedding-dim", type=int, default=1024)
  parser.add_argument("--loss", default="ncl", choices=centroid.LOSSES)
  parser.add_argument("--num-devices", type=int, default=0, help="0 = every local device")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
  parser.add_argument("--seconds", type=float, default=30.0)
  parser.add_argument("--min-steps", type=int, default=5)
  args = parser.parse_args(argv)
  if args.batch_size < 1 or args.num_classes < 2 or args.embedding_dim < 2:
    parser.error("--batch-size must be >= 1, --num-classes and --embedding-dim >= 2.")
  if args.seconds <= 0 or args.min_steps < 1 or args.warmup < 0:
    parser.error("--seconds must be > 0, --min-steps >= 1 and --warmup >= 0.")
  return args


def build(args, images):
  """``(config, mesh, model, optimiser, loss spec)`` of the run, as the runner builds them."""
  dataset = "cifar100" if args.num_classes == 100 else "cifar10"
  config = centroid.cifar_config(dataset, args.embedding_dim, loss=args.loss)
  config.update(dict(model=args.model, width=args.width, dtype=args.dtype,
                     batch_size=args.batch_size, num_devices=args.num_devices))
  config = methods.validate_config(config)
  mesh = builders.make_mesh(config)
  model = builders.make_model(config, args.num_classes, images)
  # The schedule of configs/cifar100_*.py: 200 epochs of 50,000 // 512 steps.
  tx = builders.make_optimizer(config, 19400)
  return config, mesh, model, tx, centroid.loss_spec(config)


def main(argv=None) -> None:
  args = _parse(argv)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(args.batch_size, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, args.num_classes, size=args.batch_size).astype(np.int32)
  _, mesh, model, tx, spec = build(args, images)
  state = centroid.create_train_state(model, tx, jax.random.PRNGKey(0), images[:1],
                                      args.num_classes)
  state = sharding.replicate(state, mesh)
  batch = sharding.shard_batch({"image": images, "label": labels}, mesh)

  start = time.perf_counter()
  state, metrics = centroid.train_step(state, batch, spec)
  jax.block_until_ready((state, metrics))
  compile_seconds = time.perf_counter() - start
  for _ in range(args.warmup):
    state, metrics = centroid.train_step(state, batch, spec)
  jax.block_until_ready((state, metrics))

  times = []
  begin = time.perf_counter()
  while len(times) < args.min_steps or time.perf_counter() - begin < args.seconds:
    start = time.perf_counter()
    state, metrics = centroid.train_step(state, batch, spec)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
  median = statistics.median(times)
  device = mesh.devices.flat[0]
  print(f"cifar_throughput: {args.model} width {args.width:g} {args.dtype}, "
        f"batch {args.batch_size}, {args.num_classes} classes, D={args.embedding_dim}, "
        f"{args.loss}, SGD: "
        f"{args.batch_size / median:.1f} images/s (median step {1000 * median:.0f} ms, fastest "
        f"{1000 * min(times):.0f} ms, over {len(times)} steps; compile+first step "
        f"{compile_seconds:.1f} s; load average {os.getloadavg()[0]:.1f}) on {mesh.size} x "
        f"{device.platform} [{getattr(device, 'device_kind', '?')}], {os.cpu_count()} CPUs, "
        f"jax {jax.__version__}, python {platform.python_version()}; "
        f"loss {float(metrics['loss']):.4f}")


if __name__ == "__main__":
  main()
