#!/usr/bin/env python3
"""A trained model in use: its abstention, calibration and OOD refusals, and its embedding throughput.

For each workdir of a finished MNIST run (``python -m experiments.mnist
--config=configs/ncl_2d.py --workdir=W``), loads the saved model with
:func:`sphereembed.inference.load_model` and measures, with the model alone
(no training config):

* on the MNIST test set: the share of images kept at the saved threshold
  (coverage), the accuracy of the kept images, and the ECE of
  ``predict(...).confidence`` (15 bins);
* on the Fashion-MNIST test set (out of distribution): the share abstained on;
* images/s of ``TrainedModel.embed`` and of the exported function
  (:meth:`~sphereembed.inference.TrainedModel.export`,
  :func:`~sphereembed.inference.load_exported`) at batch 1 and 1,024: the
  median of timed calls after a warm-up call, each call blocked until ready.

Usage (from the repository root; the data found as ``load_dataset`` explains)::

  python benchmarks/inference.py W1 [W2 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import jax
import numpy as np

from sphereembed import inference
from sphereembed.data import load_dataset
from sphereembed.evaluation import expected_calibration_error


def _throughput(embed, images, batch: int, seconds: float) -> float:
  chunk = images[:batch]
  jax.block_until_ready(embed(chunk))  # compile
  times = []
  deadline = time.perf_counter() + seconds
  while time.perf_counter() < deadline or len(times) < 5:
    start = time.perf_counter()
    jax.block_until_ready(embed(chunk))
    times.append(time.perf_counter() - start)
  return batch / statistics.median(times)


def measure(workdir: str, seconds: float) -> dict:
  model = inference.load_model(workdir)
  mnist = load_dataset("mnist").test
  fashion = load_dataset("fashion_mnist").test
  prediction = model.predict(mnist.images)
  correct = prediction.label == mnist.labels
  kept = ~prediction.abstain
  result = {
      "workdir": workdir, "threshold": model.calibration.threshold,
      "test_accuracy": float(np.mean(correct)), "coverage": float(np.mean(kept)),
      "accuracy_kept": float(np.mean(correct[kept])),
      "ece": expected_calibration_error(prediction.confidence, correct),
      "fashion_abstained": float(np.mean(model.predict(fashion.images).abstain)),
  }
  with tempfile.TemporaryDirectory() as folder:
    model.export(os.path.join(folder, "exported"))
    exported = inference.load_exported(os.path.join(folder, "exported"))
    for name, embed in (("embed", lambda x: model.embed(x, batch_size=1024)),
                        ("exported", lambda x: exported.embed(x, batch_size=1024))):
      for batch in (1, 1024):
        result[f"{name}_images_per_s_batch_{batch}"] = _throughput(embed, mnist.images, batch,
                                                                    seconds)
  return result


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("--seconds", type=float, default=3.0, help="timing per measurement")
  args = parser.parse_args()
  print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"jax {jax.__version__}, load {os.getloadavg()[0]:.1f}")
  for workdir in args.workdirs:
    print(json.dumps(measure(workdir, args.seconds)))


if __name__ == "__main__":
  main()
