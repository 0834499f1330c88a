r"""NCL against the proxy, pair-weighting and metric losses: the runs of one comparison table.

Every loss trains the same small CNN on the same budget (the ``ncl_2d`` / ``ncl_128d``
recipes), holds out the same 5,000 training images to calibrate its confidence, and
is tested on the other dataset as out-of-distribution images (MNIST <-> Fashion-MNIST).
Each run is one ``experiments.mnist`` command in its own workdir; finished runs are
skipped and interrupted ones resume, so the queue can be stopped and started again.

Usage (from the repository root):
  python -m experiments.compare_losses --root=runs/compare             # run what is missing
  python -m experiments.compare_losses --root=runs/compare --dry_run   # list the commands
  python -m experiments.compare_losses --root=runs/compare --table     # the table so far

``--seeds``, ``--dims``, ``--datasets`` and ``--losses`` restrict the queue. Seeds go
first in the order: every configuration's seed 0 before any seed 1.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys

import numpy as np

# name -> (config file by dimension, extra flags). The triplet and contrastive rows use
# the NCL configs with another loss where no config of their own exists (128-D).
_LOSSES = {
    "ncl": ({2: "ncl_2d", 128: "ncl_128d"}, []),
    "arcface": ({2: "arcface_2d", 128: "arcface_128d"}, []),
    "cosface": ({2: "cosface_2d", 128: "cosface_128d"}, []),
    "proxy_anchor": ({2: "proxy_anchor_2d", 128: "proxy_anchor_128d"}, []),
    "multi_similarity": ({2: "multi_similarity_2d", 128: "multi_similarity_128d"}, []),
    "triplet": ({2: "ncl_2d", 128: "ncl_128d"}, ["--config.loss=triplet_batch_all"]),
    "contrastive": ({2: "ncl_2d", 128: "ncl_128d"},
                    ["--config.loss=contrastive", "--config.margin=0.5"]),
}
_OOD = {"mnist": "fashion_mnist", "fashion_mnist": "mnist"}
# The table's columns beyond accuracy: the OOD AUROC of the max cosine to a prototype, the ECE
# of its softmax calibrated by a temperature, and of the saved model's isotonic map, and the
# share of test images the saved model keeps at its 99%-accuracy threshold.
_COLUMNS = {"centroid/ood_auroc": "OOD AUROC", "centroid/calibrated/ece": "ECE (temperature)",
            "model/ece": "ECE (isotonic)", "model/coverage": "kept at 99%"}


def runs(seeds, dims, datasets, losses):
  """``(workdir name, command arguments)`` of every run, seeds first."""
  for seed in seeds:
    for dim in dims:
      for dataset in datasets:
        for loss in losses:
          configs, flags = _LOSSES[loss]
          name = f"{loss}_{dim}d_{dataset}_s{seed}"
          yield name, [f"--config=configs/{configs[dim]}.py", *flags,
                       f"--config.dataset={dataset}", f"--config.ood_dataset={_OOD[dataset]}",
                       "--config.validation_examples=5000", f"--config.seed={seed}"]


def _cell(values, scale: float, digits: int) -> str:
  values = scale * np.asarray(values, np.float64)
  if not values.size:
    return "—"
  spread = f" ± {np.std(values, ddof=1):.{digits}f}" if values.size > 1 else ""
  return f"{np.mean(values):.{digits}f}{spread}"


def table(root: str, queue) -> str:
  """Markdown: one row per (dataset, D, loss), mean ± std over the finished seeds."""
  groups = collections.defaultdict(list)
  for name, _ in queue:
    path = os.path.join(root, name, "metrics.json")
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        groups[name.rsplit("_s", 1)[0]].append(json.load(f))
  header = ["dataset", "D", "loss", "accuracy (%)", *_COLUMNS.values(), "seeds"]
  lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
  for key, results in groups.items():
    loss, rest = key.split(f"_{results[0]['embedding_dim']}d_")
    cells = [rest, str(results[0]["embedding_dim"]), loss,
             _cell([r["test_accuracy"] for r in results], 100, 2),
             *(_cell([r[m] for r in results if m in r], 1, 4) for m in _COLUMNS),
             str(len(results))]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--root", default="runs/compare", help="one workdir per run under it")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--dims", default="2,128")
  parser.add_argument("--datasets", default="mnist,fashion_mnist")
  parser.add_argument("--losses", default=",".join(_LOSSES))
  parser.add_argument("--dry_run", action="store_true", help="print the missing runs' commands")
  parser.add_argument("--table", action="store_true", help="print the table of finished runs")
  args = parser.parse_args(argv)
  losses = args.losses.split(",")
  unknown = sorted(set(losses) - set(_LOSSES))
  if unknown:
    parser.error(f"unknown losses {unknown}; known: {sorted(_LOSSES)}")
  queue = list(runs([int(s) for s in args.seeds.split(",")],
                    [int(d) for d in args.dims.split(",")], args.datasets.split(","), losses))
  if args.table:
    print(table(args.root, queue))
    return
  for name, flags in queue:
    workdir = os.path.join(args.root, name)
    if os.path.exists(os.path.join(workdir, "metrics.json")):
      continue
    command = [sys.executable, "-m", "experiments.mnist", *flags, f"--workdir={workdir}"]
    print(" ".join(command[1:]), flush=True)
    if not args.dry_run:
      result = subprocess.run(command, check=False)
      if result.returncode:
        print(f"{name}: exit status {result.returncode}", file=sys.stderr, flush=True)


if __name__ == "__main__":
  main()
