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


def _varying_fields(configs, ignored) -> list[str]:
  """The config fields, outside ``ignored``, whose values differ between ``configs``, sorted."""
  fields = sorted({k for c in configs for k in c if k not in ignored})
  return [k for k in fields if len({json.dumps(c.get(k)) for c in configs}) > 1]


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
  varying = _varying_fields(configs.values(),
                           _IGNORED | {"dataset", "loss", "metric", "embedding_dim"})
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


# Oh, Murphy, Pan, Roth, Schroff, Gallagher, "Modeling Uncertainty with Hedged Instance Embedding",
# ICLR 2019: verification AP and kNN accuracy, clean and corrupted, by (N, D) and model.
PAPER_HIB = {
    (2, 2): {"point": (0.987, 0.880, 0.871, 0.583), "MoG-1": (0.989, 0.907, 0.879, 0.760),
             "MoG-2": (0.990, 0.912, 0.888, 0.757)},
    (2, 3): {"point": (0.996, 0.913, 0.942, 0.874), "MoG-1": (0.996, 0.926, 0.953, 0.909),
             "MoG-2": (0.996, 0.932, 0.939, 0.885)},
    (3, 2): {"point": (0.978, 0.886, 0.554, 0.274), "MoG-1": (0.981, 0.899, 0.591, 0.350),
             "MoG-2": (0.976, 0.904, 0.540, 0.351)},
    (3, 3): {"point": (0.987, 0.901, 0.795, 0.522), "MoG-1": (0.989, 0.922, 0.770, 0.555),
             "MoG-2": (0.991, 0.925, 0.766, 0.598)},
}
# The same paper's correlations between self-mismatch and performance over bins of self-mismatch,
# printed positive for "more uncertain, worse": AP and kNN accuracy, clean and corrupted.
PAPER_HIB_CORRELATIONS = {
    (2, 2): {"MoG-1": (0.74, 0.81, 0.71, 0.47), "MoG-2": (0.43, 0.79, 0.57, 0.43)},
    (3, 3): {"MoG-1": (0.51, 0.85, 0.74, 0.67), "MoG-2": (0.39, 0.79, 0.54, 0.34)},
    (3, 2): {"MoG-1": (0.63, 0.82, 0.76, 0.49), "MoG-2": (0.28, 0.76, 0.29, 0.50)},
}
_HIB_CELLS = ("verification_ap_clean", "verification_ap_corrupted", "knn_accuracy_clean",
              "knn_accuracy_corrupted")
_HIB_SPEARMAN = ("eta_ap_spearman_clean", "eta_ap_spearman_corrupted", "eta_knn_spearman_clean",
                 "eta_knn_spearman_corrupted")
_HIB_BINNED = ("eta_ap_binned_spearman_clean", "eta_ap_binned_spearman_corrupted",
               "eta_knn_binned_spearman_clean", "eta_knn_binned_spearman_corrupted")
# Fields that are a HIB row's own label (N, D, model), not a difference between recipes.
_HIB_LABEL_FIELDS = {"num_digits", "embedding_dim", "num_components", "cache_dir"}


def _hib_groups(workdirs: list[str]) -> tuple[list[str], dict]:
  """HIB runs grouped by (N, D, model) and the other config fields that differ between runs.

  Returns the names of those other fields and ``{(N, D, model, *values): [metrics, ...]}``; a run
  without a ``config.json`` counts as one with the default recipe.
  """
  groups = _finished_runs(workdirs, lambda workdir, _: workdir)
  configs = {}
  for workdir in groups:
    path = os.path.join(workdir, "config.json")
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        configs[workdir] = json.load(f)
    else:
      configs[workdir] = {}
  varying = _varying_fields(configs.values(), _IGNORED | _HIB_LABEL_FIELDS)
  rows = collections.defaultdict(list)
  for workdir, runs in groups.items():
    result = runs[0][1]
    components = result["num_components"]
    model = "point" if components == 0 else f"MoG-{components}"
    label = (result["num_digits"], result["embedding_dim"], model,
             *(json.dumps(configs[workdir].get(k)) for k in varying))
    rows[label].append(result)

  def order(item):
    digits, dim, model, *values = item[0]
    return digits, dim, model != "point", model, values  # point first, then MoG-1, MoG-2, ...

  return varying, dict(sorted(rows.items(), key=order))


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
  return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def summarize_hib(workdirs: list[str]) -> str:
  """The HIB tables of ``config.method = "hib"`` runs, mean ± std over seeds.

  The first table has one row per (N, D, model) and recipe (the config fields
  that differ between the runs, seed aside): verification AP and kNN accuracy,
  clean and corrupted, with Oh et al.'s value in parentheses, and the per-image
  Spearman correlations of self-mismatch with each image's AP and kNN
  correctness (negative: more uncertain, worse). The second has the bin-level
  correlations of the stochastic models (``eta_*_binned_spearman``) with their
  sign turned to the paper's (positive: more uncertain, worse), the paper's
  value in parentheses.
  """
  varying, groups = _hib_groups(workdirs)
  header = ["N", "D", "model", *varying, *(c.replace("_", " ") for c in _HIB_CELLS + _HIB_SPEARMAN),
            "seeds", "train time (s)"]
  rows, binned_rows = [], []
  for (digits, dim, model, *values), runs in groups.items():
    label = [str(digits), str(dim), model, *values]
    paper = PAPER_HIB.get((digits, dim), {}).get(model)
    cells = []
    for i, column in enumerate(_HIB_CELLS):
      cell = _mean_std([r.get(column, np.nan) for r in runs], digits=3)
      cells.append(cell + (f" ({paper[i]:.3f})" if paper and cell != "—" else ""))
    cells += [_mean_std([r.get(c, np.nan) for r in runs], digits=3) for c in _HIB_SPEARMAN]
    seconds = np.mean([r.get("train_seconds_this_run", np.nan) for r in runs])
    rows.append([*label, *cells, str(len(runs)), f"{seconds:.0f}"])
    if model != "point":
      paper = PAPER_HIB_CORRELATIONS.get((digits, dim), {}).get(model)
      cells = []
      for i, column in enumerate(_HIB_BINNED):
        cell = _mean_std([-r.get(column, np.nan) for r in runs], digits=2)
        cells.append(cell + (f" ({paper[i]:.2f})" if paper and cell != "—" else ""))
      binned_rows.append([*label, *cells, str(len(runs))])
  tables = [_markdown_table(header, rows)]
  if binned_rows:
    tables.append(_markdown_table(
        ["N", "D", "model", *varying,
         *("−" + c.replace("_", " ") for c in _HIB_BINNED),
         "seeds"], binned_rows))
  return "\n\n".join(tables)


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
