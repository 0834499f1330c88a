r"""Mean and standard deviation of finished runs, as a markdown table.

Usage:
  python -m experiments.summarize runs/ncl_2d/* runs/ncl_128d/*
  python -m experiments.summarize runs/final6/vmf2_s* \
      --metrics=kappa/ood_auroc,kappa/isotonic/ece,softmax/ood_auroc
  python -m experiments.summarize --hib runs/hib/*      # HIB runs
  python -m experiments.summarize --retrieval runs/ret/* --figures=runs/ret/compare

Runs are grouped by their ``config.json`` with the seed left out (so the
seeds of one config form a row) and labelled by (dataset, loss, distance,
embedding_dim) plus, when the grouped runs differ in more, the fields that
differ. The table lists nearest-centroid test accuracy (mean ± std over
seeds, in %), the number of seeds and the mean training time, and with
``--metrics`` any other number in ``metrics.json`` (mean ± std, as stored:
fractions stay fractions).
"""

from __future__ import annotations

import argparse
import collections
import json
import os

import numpy as np

# Fields that never tell two experiments apart.
_IGNORED = {"seed", "data_dir", "tfds_data_dir", "download", "log_every_steps", "eval_every_steps",
            "checkpoint_every_steps", "keep_checkpoints", "eval_batch_size", "tensorboard", "figures"}


def _mean_std(values, scale: float = 1.0, digits: int = 2) -> str:
  values = scale * np.asarray(values, np.float64)
  if np.all(np.isnan(values)):
    return "—"
  std = f" ± {np.nanstd(values, ddof=1):.{digits}f}" if np.sum(~np.isnan(values)) > 1 else ""
  return f"{np.nanmean(values):.{digits}f}{std}"


def summarize(workdirs: list[str], metrics: tuple[str, ...] = ()) -> str:
  """The markdown table of the ``metrics.json`` files under ``workdirs``.

  Args:
    workdirs: run folders; those without ``metrics.json`` are skipped.
    metrics: extra ``metrics.json`` keys, one column each.

  Returns:
    The table as a string.
  """
  groups = collections.defaultdict(list)
  configs = {}
  for workdir in workdirs:
    path = os.path.join(workdir, "metrics.json")
    if not os.path.exists(path):
      continue
    with open(path, encoding="utf-8") as f:
      result = json.load(f)
    with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
      config = json.load(f)
    key = json.dumps({k: v for k, v in sorted(config.items()) if k not in _IGNORED})
    configs[key] = config
    groups[key].append(result)
  if not groups:
    raise SystemExit(f"No metrics.json under {workdirs}.")
  # The fields that differ between groups label the rows beyond the usual four.
  fields = sorted({k for c in configs.values() for k in c if k not in _IGNORED})
  varying = [k for k in fields
             if len({json.dumps(c.get(k)) for c in configs.values()}) > 1
             and k not in ("dataset", "loss", "metric", "embedding_dim")]
  header = ["dataset", "loss", "distance", "D", *varying, "nearest-centroid test accuracy (%)",
            "balanced (%)", *metrics, "seeds", "train time (s)"]
  lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
  rows = []
  for key, runs in groups.items():
    config = configs[key]
    cells = [str(runs[0]["dataset"]), str(runs[0]["loss"]), str(config.get("metric", "?")),
             str(runs[0]["embedding_dim"]), *(str(config.get(k)) for k in varying),
             _mean_std([r["test_accuracy"] for r in runs], 100),
             _mean_std([r.get("test_balanced_accuracy", np.nan) for r in runs], 100),
             *(_mean_std([r.get(m, np.nan) for r in runs], digits=4) for m in metrics),
             str(len(runs)), f"{np.mean([r['train_seconds_this_run'] for r in runs]):.0f}"]
    rows.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines + sorted(rows))


def _finished_runs(workdirs: list[str], key) -> dict:
  """``key(workdir, metrics) -> [(workdir, metrics), ...]`` of the workdirs with a ``metrics.json``."""
  groups = collections.defaultdict(list)
  for workdir in workdirs:
    path = os.path.join(workdir, "metrics.json")
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        result = json.load(f)
      groups[key(workdir, result)].append((workdir, result))
  if not groups:
    raise SystemExit(f"No metrics.json under {workdirs}.")
  return groups


# The N = 2, D = 2 numbers (clean verification AP, clean kNN accuracy) of Oh, Murphy, Pan, Roth,
# Schroff, Gallagher, "Modeling Uncertainty with Hedged Instance Embedding", ICLR 2019.
PAPER_HIB = {"point": (0.987, 0.871), "MoG-1": (0.989, 0.879), "MoG-2": (0.990, 0.888)}
_HIB_COLUMNS = ("verification_ap_clean", "verification_ap_corrupted", "knn_accuracy_clean",
                "knn_accuracy_corrupted", "eta_ap_spearman_clean", "eta_ap_spearman_corrupted",
                "eta_knn_spearman_clean", "eta_knn_spearman_corrupted")


def summarize_hib(workdirs: list[str]) -> str:
  """The HIB table of ``config.method = "hib"`` runs: one row per (N, D, model), mean ± std over seeds."""
  groups = _finished_runs(workdirs, lambda _, result: (
      result["num_digits"], result["embedding_dim"], result["num_components"]))
  header = ["N", "D", "model", *(c.replace("_", " ") for c in _HIB_COLUMNS), "seeds",
            "train time (s)"]
  lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
  for (digits, dim, components), runs in sorted(groups.items()):
    runs = [result for _, result in runs]
    model = "point" if components == 0 else f"MoG-{components}"
    cells = [str(digits), str(dim), model]
    for column in _HIB_COLUMNS:
      cell = _mean_std([r.get(column, np.nan) for r in runs], digits=3)
      paper = PAPER_HIB.get(model) if (digits, dim) == (2, 2) else None
      if paper and column in ("verification_ap_clean", "knn_accuracy_clean"):
        cell += f" ({paper[column.startswith('knn')]:.3f})"
      cells.append(cell)
    cells += [str(len(runs)), f"{np.mean([r['train_seconds_this_run'] for r in runs]):.0f}"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


# The LAM paper's Fashion-MNIST (MNIST as OOD) cells, beside our rows.
PAPER_LAM = {"deterministic": {"map_at_1": 0.78},
             "laplace_posthoc": {"ood_auroc": 0.96, "ausc": 0.86},
             "laplace_online": {"map_at_1": 0.81, "ood_auroc": 0.98, "ausc": 0.89, "ece": 0.02}}
_RETRIEVAL_COLUMNS = ("map_at_1", "map_at_5", "map_at_10", "ood_auroc", "ood_auprc", "ausc", "ece")


def _retrieval_label(workdir: str, result: dict) -> str:
  """The method, and for the Laplace methods their posterior structure (``config.json``)."""
  method = result["method"]
  if not method.startswith("laplace"):
    return method
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    return f"{method} ({json.load(f)['structure']})"


def _retrieval_runs(workdirs: list[str]) -> dict[str, list[tuple[str, dict]]]:
  """Retrieval runs (LAM and its baselines) by method (and posterior structure), ``(workdir, metrics)`` by seed."""
  groups = _finished_runs(workdirs, _retrieval_label)
  return {label: sorted(runs, key=lambda run: run[1]["seed"]) for label, runs in groups.items()}


def summarize_retrieval(workdirs: list[str], groups: dict | None = None) -> str:
  """The retrieval table: one row per method, mean ± std over seeds, the paper's cells in parentheses.

  ``groups``: the runs as :func:`_retrieval_runs` reads them, when the caller has them already.
  """
  from sphereembed.methods.retrieval import METHODS  # pylint: disable=import-outside-toplevel
  groups = groups if groups is not None else _retrieval_runs(workdirs)
  header = ["method", "mAP@1", "mAP@5", "mAP@10", "OOD AUROC", "OOD AUPRC", "AUSC", "ECE", "seeds",
            "train time (s)"]
  lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]

  def order(label):
    method = label.split(" ")[0]
    return (METHODS.index(method) if method in METHODS else len(METHODS), label)

  for label in sorted(groups, key=order):
    runs = [result for _, result in groups[label]]
    paper = PAPER_LAM.get(label.split(" ")[0], {})
    cells = [label]
    for column in _RETRIEVAL_COLUMNS:
      cell = _mean_std([r.get(column, np.nan) for r in runs], digits=3)
      if column in paper:
        cell += f" ({paper[column]:.2f})"
      cells.append(cell)
    # The sum over the trained networks (ensemble members, PFE's base); older runs kept only
    # the per-network train_seconds.
    seconds = [r.get("train_seconds_this_run", sum(r["train_seconds"].values())) for r in runs]
    cells += [str(len(runs)), f"{np.mean(seconds):.0f}"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("--metrics", default="", help="comma-separated metrics.json keys")
  parser.add_argument("--hib", action="store_true", help="HIB runs (config.method = hib)")
  parser.add_argument("--retrieval", action="store_true", help="retrieval runs (LAM and its baselines)")
  parser.add_argument("--figures", default="",
                      help="with --retrieval: folder for the figures comparing the methods "
                      "(the lowest seed of each)")
  args = parser.parse_args(argv)
  if args.figures and not args.retrieval:
    parser.error("--figures needs --retrieval")
  if args.hib:
    print(summarize_hib(args.workdirs))
  elif args.retrieval:
    groups = _retrieval_runs(args.workdirs)
    print(summarize_retrieval(args.workdirs, groups))
    if args.figures:
      # pylint: disable-next=import-outside-toplevel
      from sphereembed.evaluation.protocols.retrieval import plot_method_comparison
      first = {label: runs[0][0] for label, runs in groups.items()}
      for path in plot_method_comparison(first, args.figures):
        print(f"wrote {path}")
  else:
    print(summarize(args.workdirs, tuple(m for m in args.metrics.split(",") if m)))


if __name__ == "__main__":
  main()
