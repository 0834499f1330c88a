r"""Mean and standard deviation of finished runs, as a markdown table.

Usage:
  python -m experiments.summarize runs/ncl_2d/* runs/ncl_128d/*

Runs are grouped by (dataset, loss, distance, embedding_dim) from their
``metrics.json`` and ``config.json``;
the table lists nearest-centroid test accuracy (mean ± std over seeds, in %),
the number of seeds and the mean training time.
"""

from __future__ import annotations

import collections
import json
import os
import sys

import numpy as np


def summarize(workdirs: list[str]) -> str:
  """The markdown table of the ``metrics.json`` files under ``workdirs``."""
  groups = collections.defaultdict(list)
  for workdir in workdirs:
    path = os.path.join(workdir, "metrics.json")
    if not os.path.exists(path):
      continue
    with open(path, encoding="utf-8") as f:
      metrics = json.load(f)
    with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
      metric = json.load(f).get("metric", "?")
    groups[(metrics["dataset"], metrics["loss"], metric, metrics["embedding_dim"])].append(metrics)
  if not groups:
    raise SystemExit(f"No metrics.json under {workdirs}.")
  lines = ["| dataset | loss | distance | D | nearest-centroid test accuracy (%) | balanced (%) | seeds | "
           "train time (s) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  for (dataset, loss, metric, dim), runs in sorted(groups.items()):
    accuracy = 100 * np.array([r["test_accuracy"] for r in runs])
    balanced = 100 * np.array([r.get("test_balanced_accuracy", np.nan) for r in runs])
    seconds = np.mean([r["train_seconds_this_run"] for r in runs])
    std = f" ± {accuracy.std(ddof=1):.2f}" if len(runs) > 1 else ""
    lines.append(f"| {dataset} | {loss} | {metric} | {dim} | {accuracy.mean():.2f}{std} | "
                 f"{np.nanmean(balanced):.2f} | {len(runs)} | {seconds:.0f} |")
  return "\n".join(lines)


if __name__ == "__main__":
  print(summarize(sys.argv[1:]))
