#!/usr/bin/env python3
"""vMF log-normaliser benchmark: sphereembed against TFP (JAX substrate) and SciPy, on CPU.

On 10^6 (d, kappa) pairs (d drawn from the test grid {2, 3, 4, 8, 16, 64,
128, 512, 1024, 4096}, kappa log-uniform in [1e-8, 1e5], a fixed seed) it
measures, in one run and on the same arrays:

* throughput (pairs/s) of ``log C_d(kappa)`` alone and of its value with its
  kappa-gradient (``jax.value_and_grad`` of the sum, i.e. every elementwise
  derivative) for

  - sphereembed: :func:`sphereembed.distributions.vmf_log_normalizer`
    (static ``dim``, one jitted call per distinct d);
  - TFP: ``(d/2-1) log k - (d/2) log 2 pi - log_bessel_ive(d/2-1, k) - k`` with
    ``tensorflow_probability.substrates.jax.math.log_bessel_ive``, jitted,
    one call per d (its gradient is TFP's custom gradient);
  - SciPy: the same formula with ``scipy.special.ive`` in NumPy, and
    ``-ive(d/2, k) / ive(d/2-1, k)`` as the gradient (no autodiff there);

* accuracy against mpmath (40 digits): the largest relative error of the value
  and of the kappa-gradient on a subsample (the 27 x 10 grid of the tests
  plus random pairs), and the number of non-finite values and gradients over
  all 10^6 pairs.

float32 and float64 are both measured (``--dtypes``). In float32 the
reference is the exact value at the float32-rounded kappa.

Usage (from the repository root; ~5 minutes on 2 cores)::

  python benchmarks/vmf.py --output benchmarks/RESULTS.md

A quick run (numbers mean little)::

  python benchmarks/vmf.py --pairs 100000 --repeats 1 --subsample 20

Needs the ``bench`` extra for TFP (``pip install -e ".[bench]"``; its JAX
substrate imports without TensorFlow). Run it on a quiet machine: the
numbers are wall-clock medians; the load average is recorded.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib.util
import json
import math
import os
import shlex
import statistics
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)


def _load_loss_benchmark():
  """benchmarks/losses.py as a module (benchmarks/ is not a package)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "losses.py")
  spec = importlib.util.spec_from_file_location("sphereembed_benchmark_losses", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# Shared with the other benchmarks: machine and version information.
_lb = _load_loss_benchmark()

DIMS = (2, 3, 4, 8, 16, 64, 128, 512, 1024, 4096)
KAPPA_RANGE = (1e-8, 1e5)
FRAMEWORKS = ("sphereembed", "tfp", "scipy")
SECTION_BEGIN = "<!-- vmf-benchmark -->"
SECTION_END = "<!-- /vmf-benchmark -->"
FLOOR_TEXT = "sphereembed at least TFP's throughput (value and value+gradient) with better accuracy"


# ---------------------------------------------------------------------------
# Inputs and references.


def make_pairs(count: int, seed: int):
  """``(dims, kappas)``: d uniform over DIMS, log10 kappa uniform over the range."""
  import numpy as np
  rng = np.random.default_rng(seed)
  dims = rng.choice(np.asarray(DIMS), size=count)
  low, high = (math.log10(x) for x in KAPPA_RANGE)
  kappas = 10.0 ** rng.uniform(low, high, size=count)
  return dims, kappas


def accuracy_points(per_dim: int, seed: int):
  """The tests' grid (27 half decades x DIMS) plus ``per_dim`` random kappas per d."""
  import numpy as np
  rng = np.random.default_rng([seed, 1])
  grid = np.logspace(-8, 5, 27)
  points = []
  for d in DIMS:
    extra = 10.0 ** rng.uniform(-8, 5, per_dim)
    points += [(d, float(k)) for k in np.concatenate([grid, extra])]
  return points


@functools.lru_cache(maxsize=None)
def _debye_polynomials(count):
  from fractions import Fraction
  polys = [[Fraction(1)]]
  for _ in range(count):
    u = polys[-1]
    out = [Fraction(0)] * (len(u) + 3)
    for i, c in enumerate(u):
      out[i + 1] += i * c / 2 + c / (8 * (i + 1))
      out[i + 3] += -i * c / 2 - 5 * c / (8 * (i + 3))
    polys.append(out)
  return polys


def _log_besseli(order, z):
  """mpmath's ``log I_v(z)``; Debye's expansion (16 terms, error < 1e-45) for
  orders >= 1000 at z in (3e3, 2e5), where mpmath's series takes seconds."""
  import mpmath
  if order >= 1000 and 3000 < z < 2e5:
    v = mpmath.mpf(order)
    t = z / v
    s = mpmath.sqrt(1 + t * t)
    p = 1 / s
    total = sum(sum(mpmath.mpf(c.numerator) / c.denominator * p**j for j, c in enumerate(u)) / v**k
                for k, u in enumerate(_debye_polynomials(16)))
    return (v * (s + mpmath.log(t / (1 + s))) - mpmath.log(2 * mpmath.pi * v) / 2
            - mpmath.log(s) / 2 + mpmath.log(total))
  return mpmath.log(mpmath.besseli(order, z))


@functools.lru_cache(maxsize=None)
def reference(dim: int, kappa: float):
  """``(log C_d(kappa), A_d(kappa))`` at 40 digits."""
  import mpmath
  with mpmath.workdps(40):
    k = mpmath.mpf(kappa)
    v = mpmath.mpf(dim) / 2 - 1
    log_i, log_next = _log_besseli(v, k), _log_besseli(v + 1, k)
    return (float(v * mpmath.log(k) - (v + 1) * mpmath.log(2 * mpmath.pi) - log_i),
            float(mpmath.exp(log_next - log_i)))


# ---------------------------------------------------------------------------
# The three implementations: value and (value, gradient) per d.


def _ours(dtype):
  import jax
  import jax.numpy as jnp
  from sphereembed.distributions import vmf_log_normalizer

  @functools.lru_cache(maxsize=None)
  def compiled(dim):
    value = jax.jit(lambda k: vmf_log_normalizer(k, dim))
    both = jax.jit(jax.value_and_grad(lambda k: jnp.sum(vmf_log_normalizer(k, dim))))
    return value, both

  return compiled


def _tfp(dtype):
  import jax
  import jax.numpy as jnp
  from tensorflow_probability.substrates import jax as tfp

  def log_normalizer(k, dim):
    v = 0.5 * dim - 1.0
    return (v * jnp.log(k) - 0.5 * dim * math.log(2 * math.pi)
            - (tfp.math.log_bessel_ive(jnp.asarray(v, k.dtype), k) + k))

  @functools.lru_cache(maxsize=None)
  def compiled(dim):
    value = jax.jit(lambda k: log_normalizer(k, dim))
    both = jax.jit(jax.value_and_grad(lambda k: jnp.sum(log_normalizer(k, dim))))
    return value, both

  return compiled


def _scipy(dtype):
  import numpy as np
  import scipy.special

  def value(k, dim):
    v = 0.5 * dim - 1.0
    with np.errstate(all="ignore"):
      return (v * np.log(k) - 0.5 * dim * math.log(2 * math.pi)
              - (np.log(scipy.special.ive(v, k)) + k)).astype(dtype)

  def both(k, dim):
    v = 0.5 * dim - 1.0
    with np.errstate(all="ignore"):
      ive = scipy.special.ive(v, k)
      out = (v * np.log(k) - 0.5 * dim * math.log(2 * math.pi) - (np.log(ive) + k)).astype(dtype)
      return out, (-scipy.special.ive(v + 1.0, k) / ive).astype(dtype)

  @functools.lru_cache(maxsize=None)
  def compiled(dim):
    return functools.partial(value, dim=dim), functools.partial(both, dim=dim)

  return compiled


IMPLEMENTATIONS = {"sphereembed": _ours, "tfp": _tfp, "scipy": _scipy}
LABELS = {"sphereembed": "sphereembed (JAX, jit)", "tfp": "TFP JAX substrate (jit)",
          "scipy": "SciPy `ive` (NumPy)"}


def evaluate_all(compiled, groups, which: int):
  """Runs every d group through ``compiled(d)[which]``; returns the outputs."""
  import jax
  return [jax.block_until_ready(compiled(d)[which](k)) for d, k in groups]


def time_framework(compiled, groups, repeats: int, min_seconds: float):
  """Median seconds for the whole 10^6 pairs, value and value+gradient."""
  out = {}
  for which, name in ((0, "value"), (1, "value_and_grad")):
    t0 = time.perf_counter()
    evaluate_all(compiled, groups, which)  # compiles (jit) or warms up
    out[f"{name}_first_s"] = time.perf_counter() - t0
    times = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_seconds:
      t0 = time.perf_counter()
      evaluate_all(compiled, groups, which)
      times.append(time.perf_counter() - t0)
      if len(times) >= 50:
        break
    out[f"{name}_s"] = statistics.median(times)
    out[f"{name}_repeats"] = len(times)
  return out


def nonfinite_counts(compiled, groups):
  import numpy as np
  values = evaluate_all(compiled, groups, 0)
  count_value = sum(int(np.sum(~np.isfinite(np.asarray(v)))) for v in values)
  count_grad = 0
  for d, k in groups:
    _, grad = compiled(d)[1](k)
    count_grad += int(np.sum(~np.isfinite(np.asarray(grad))))
  return count_value, count_grad


def accuracy(compiled, points, dtype):
  """Largest errors against mpmath on ``points`` ((d, kappa) pairs)."""
  import numpy as np
  by_dim = {}
  for d, k in points:
    by_dim.setdefault(d, []).append(k)
  worst = {"value_rel": 0.0, "value_rel_well_conditioned": 0.0, "value_mixed": 0.0,
           "grad_rel": 0.0, "nonfinite": 0}
  where = {}
  for d, ks in by_dim.items():
    k = np.asarray(ks, np.float64).astype(dtype)
    exact = np.array([reference(d, float(x)) for x in k.astype(np.float64)])
    value, (_, grad) = compiled(d)[0](k), compiled(d)[1](k)
    value = np.asarray(value, np.float64)
    grad = np.asarray(grad, np.float64)
    bad = ~np.isfinite(value) | ~np.isfinite(grad)
    worst["nonfinite"] += int(np.sum(bad))
    with np.errstate(all="ignore"):
      error = np.abs(value - exact[:, 0])
      rel = np.where(bad, np.inf, error / np.abs(exact[:, 0]))
      sensitivity = k.astype(np.float64) * exact[:, 1]  # |kappa d/dkappa log C_d|
      mixed = np.where(bad, np.inf, error / np.maximum(np.abs(exact[:, 0]), sensitivity))
      well = sensitivity <= np.abs(exact[:, 0])
      grad_rel = np.where(bad, np.inf, np.abs(grad + exact[:, 1]) / exact[:, 1])
    for key, errors in (("value_rel", rel), ("value_rel_well_conditioned", np.where(well, rel, 0.0)),
                        ("value_mixed", mixed), ("grad_rel", grad_rel)):
      i = int(np.argmax(errors))
      if key not in where or errors[i] > worst[key]:
        worst[key] = float(errors[i])
        where[key] = (int(d), float(k[i]))
  worst["where"] = where
  worst["points"] = len(points)
  return worst


# ---------------------------------------------------------------------------
# The report.


def _fmt_rate(pairs, seconds):
  rate = pairs / seconds
  return f"{rate / 1e6:.2f} M/s" if rate >= 1e5 else f"{rate / 1e3:.1f} k/s"


def _fmt_err(x):
  return "inf" if not math.isfinite(x) else f"{x:.1e}"


def table_header(pairs: int) -> str:
  return (
      "| dtype | implementation | value: pairs/s | value+grad: pairs/s | first call s (value, +grad) "
      "| max rel err, value | … where κ·A_d ≤ \\|log C_d\\| | mixed err, value | max rel err, gradient "
      f"| non-finite value / grad (of {pairs:,}) |\n"
      "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")


def row_text(row, pairs) -> str:
  if row.get("status") != "ok":
    return (f"| {row['dtype']} | {LABELS[row['framework']]} | {row.get('status')}: "
            f"{str(row.get('error', ''))[:80]} | | | | | | | |")
  acc = row["accuracy"]
  return (f"| {row['dtype']} | {LABELS[row['framework']]} | {_fmt_rate(pairs, row['value_s'])} "
          f"| {_fmt_rate(pairs, row['value_and_grad_s'])} "
          f"| {row['value_first_s']:.1f}, {row['value_and_grad_first_s']:.1f} "
          f"| {_fmt_err(acc['value_rel'])} | {_fmt_err(acc['value_rel_well_conditioned'])} "
          f"| {_fmt_err(acc['value_mixed'])} | {_fmt_err(acc['grad_rel'])} "
          f"| {row['nonfinite_value']} / {row['nonfinite_grad']} |")


def floor_text(rows) -> str:
  lines = []
  for dtype in sorted({r["dtype"] for r in rows}):
    ours = next((r for r in rows if r["dtype"] == dtype and r["framework"] == "sphereembed"
                 and r.get("status") == "ok"), None)
    peer = next((r for r in rows if r["dtype"] == dtype and r["framework"] == "tfp"
                 and r.get("status") == "ok"), None)
    if not ours or not peer:
      lines.append(f"* {dtype}: not measured (needs both sphereembed and TFP).")
      continue
    speed_value = peer["value_s"] / ours["value_s"]
    speed_both = peer["value_and_grad_s"] / ours["value_and_grad_s"]
    a, b = ours["accuracy"], peer["accuracy"]
    better = (a["value_mixed"] <= b["value_mixed"] and a["grad_rel"] <= b["grad_rel"]
              and ours["nonfinite_value"] + ours["nonfinite_grad"]
              <= peer["nonfinite_value"] + peer["nonfinite_grad"])
    met = speed_value >= 1 and speed_both >= 1 and better
    lines.append(
        f"* {dtype}: sphereembed/TFP throughput **{speed_value:.1f}×** (value) and "
        f"**{speed_both:.1f}×** (value+gradient); errors (mixed value, gradient) "
        f"{_fmt_err(a['value_mixed'])}, {_fmt_err(a['grad_rel'])} vs TFP's "
        f"{_fmt_err(b['value_mixed'])}, {_fmt_err(b['grad_rel'])}: "
        + ("**met**." if met else "**NOT met**."))
  return "\n".join(lines)


def section_text(rows, info, args, command, started, finished) -> str:
  pairs = args.pairs
  busy = info["loadavg_start"][0] > 0.25 * info["cpus_available"]
  lines = [SECTION_BEGIN, "# vMF log-normaliser: sphereembed vs TFP (JAX) and SciPy", ""]
  if args.note:
    lines += [f"> **{args.note}**", ""]
  if busy:
    lines += [f"> **The machine was busy (1-min load {info['loadavg_start'][0]:.2f} on "
              f"{info['cpus_available']} CPUs): absolute rates are low and noisy; the ratios are "
              "taken in the same run, one implementation after the other on the same arrays.**",
              ""]
  lines += [
      f"Command (from the repository root): `{command}`",
      "",
      f"Started {started}, finished {finished}.",
      "",
      f"Machine: {info['cpu']}, {info['logical_cpus']} logical CPUs ({info['cpus_available']} "
      "available; XLA's thread pool uses them all, SciPy one), "
      + (f"{info['ram_gib']:.1f} GiB RAM" if info["ram_gib"] else "RAM unknown") + f", {info['os']}.",
      "",
      "Versions: " + ", ".join(f"{k} {info[k]}" for k in (
          "python", "jax", "jaxlib", "numpy", "scipy", "tfp-nightly", "mpmath")) + ".",
      "",
      f"sphereembed commit: {info['sphereembed']}.",
      "",
      "Load average (1, 5, 15 min) at the start: "
      + ", ".join(f"{v:.2f}" for v in info["loadavg_start"])
      + f"; 1-min load at the end: {info['loadavg_end']:.2f} (on {info['cpus_available']} CPUs; "
      "anything well above 0 means other work competed for the cores).",
      "",
      f"Workload: {pairs:,} (d, κ) pairs, d uniform over {{{', '.join(map(str, DIMS))}}}, "
      f"log10 κ uniform over [-8, 5], seed {args.seed}; each implementation evaluates all pairs, "
      "one call per distinct d (our `dim` is static; TFP and SciPy get the same groups). "
      f"Timings: median over at least {args.repeats} passes and {args.min_seconds:g} s after a "
      "first (compiling / warm-up) pass, each pass ending with `block_until_ready`. "
      "*value+grad* is `jax.value_and_grad` of the sum (all elementwise κ-derivatives); SciPy's "
      "gradient is `-ive(d/2, κ)/ive(d/2-1, κ)`.",
      "",
      f"Accuracy: against mpmath at 40 digits on {rows[0]['accuracy']['points'] if rows else 0} "
      f"pairs (the tests' grid of 27 half decades × 10 d plus {args.subsample} random κ per d); "
      "non-finite counts over all pairs. *max rel err, value*: |Δ| / |log C_d|. log C_d crosses 0 "
      "for d ≥ 19, where no finite-precision evaluation keeps a small relative error (its terms "
      "are ~κ·A_d large), so the table also gives the relative error where κ·A_d ≤ |log C_d| and "
      "the *mixed* error |Δ| / max(|log C_d|, κ·A_d) (the error a relative change of κ of that "
      "size would cause). *gradient*: |Δ| / A_d against -A_d. In float32 the reference is the "
      "exact value at the float32-rounded κ.",
      "",
      "## Results",
      "",
      table_header(pairs).rstrip("\n"),
  ]
  lines += [row_text(r, pairs) for r in rows]
  lines += ["", f"Floor ({FLOOR_TEXT}):", "", floor_text(rows), ""]
  notes = []
  for r in rows:
    if r.get("status") == "ok":
      w = r["accuracy"]["where"]
      notes.append(f"* {r['dtype']} {r['framework']}: worst value error at (d, κ) = "
                   f"{w.get('value_rel')}, worst mixed at {w.get('value_mixed')}, worst gradient "
                   f"at {w.get('grad_rel')}.")
  lines += ["Where the largest errors are:", ""] + notes + ["", SECTION_END]
  return "\n".join(lines) + "\n"




# ---------------------------------------------------------------------------
# Main.


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--pairs", type=int, default=1_000_000, help="number of (d, kappa) pairs")
  parser.add_argument("--dtypes", default="float32,float64")
  parser.add_argument("--frameworks", default=",".join(FRAMEWORKS))
  parser.add_argument("--repeats", type=int, default=5, help="minimum timed passes")
  parser.add_argument("--min-seconds", type=float, default=2.0, help="minimum timed seconds")
  parser.add_argument("--subsample", type=int, default=25,
                      help="random kappas per d for the accuracy columns (on top of the grid)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--output", default=None,
                      help="markdown file whose vmf-benchmark section is (re)written")
  parser.add_argument("--raw-dir", default=os.path.join("benchmarks", "_raw"),
                      help="JSON lines of every measurement go here (git-ignored)")
  parser.add_argument("--note", default="", help="a line put at the top of the section")
  args = parser.parse_args(argv)

  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax
  jax.config.update("jax_enable_x64", True)
  import numpy as np

  command = "python benchmarks/vmf.py" + "".join(
      " " + shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
  frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
  dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
  if "tfp" in frameworks and importlib.util.find_spec("tensorflow_probability") is None:
    print('NOTE: TFP not installed (pip install -e ".[bench]"); skipping it', flush=True)
    frameworks.remove("tfp")
  info = _lb.machine_info(len(os.sched_getaffinity(0)))
  for dist in ("scipy", "tfp-nightly", "mpmath"):
    info[dist] = _lb.version(dist)
  info["loadavg_start"] = os.getloadavg()
  if info["loadavg_start"][0] > 0.25 * info["cpus_available"]:
    print(f"WARNING: 1-minute load average {info['loadavg_start'][0]:.2f} on "
          f"{info['cpus_available']} CPUs: the machine is busy and timings will be noisy.",
          flush=True)
  started = datetime.datetime.now().isoformat(timespec="seconds")
  raw_dir = args.raw_dir if os.path.isabs(args.raw_dir) else os.path.join(REPO_ROOT, args.raw_dir)
  os.makedirs(raw_dir, exist_ok=True)
  raw_path = os.path.join(raw_dir, f"vmf-{datetime.datetime.now():%Y%m%d-%H%M%S}.jsonl")

  dims, kappas = make_pairs(args.pairs, args.seed)
  points = accuracy_points(args.subsample, args.seed)
  print(f"# {command}", flush=True)
  print(f"# computing {len(points)} mpmath references", flush=True)
  t0 = time.perf_counter()
  for dtype in dtypes:
    for d, k in points:
      reference(d, float(np.float64(k).astype(dtype)))
  print(f"# references: {time.perf_counter() - t0:.0f} s", flush=True)
  print(table_header(args.pairs), end="", flush=True)

  rows = []
  for dtype_name in dtypes:
    dtype = np.dtype(dtype_name).type
    groups_np = [(int(d), kappas[dims == d].astype(dtype)) for d in DIMS]
    for framework in frameworks:
      row = {"framework": framework, "dtype": dtype_name, "pairs": args.pairs}
      try:
        compiled = IMPLEMENTATIONS[framework](dtype)
        if framework == "scipy":
          groups = groups_np
        else:
          groups = [(d, jax.device_put(k)) for d, k in groups_np]
        row.update(time_framework(compiled, groups, args.repeats, args.min_seconds))
        row["nonfinite_value"], row["nonfinite_grad"] = nonfinite_counts(compiled, groups)
        row["accuracy"] = accuracy(compiled, points, dtype)
        row["status"] = "ok"
      except Exception as e:  # noqa: BLE001 - every failure goes into the row
        row["status"] = "error"
        row["error"] = f"{type(e).__name__}: {e}"
      row["loadavg_after"] = os.getloadavg()[0]
      rows.append(row)
      print(row_text(row, args.pairs), flush=True)
      with open(raw_path, "a") as f:
        f.write(json.dumps(row) + "\n")
  info["loadavg_end"] = os.getloadavg()[0]
  finished = datetime.datetime.now().isoformat(timespec="seconds")
  print()
  print(floor_text(rows))
  if args.output:
    output = args.output if os.path.isabs(args.output) else os.path.join(REPO_ROOT, args.output)
    section = section_text(rows, info, args, command, started, finished)
    _lb.replace_marked_section(output, section, SECTION_BEGIN, SECTION_END)
    print(f"# section written to {args.output}", flush=True)
  print(f"# raw results: {os.path.relpath(raw_path, REPO_ROOT)}", flush=True)
  return 0 if all(r.get("status") == "ok" for r in rows) else 1


if __name__ == "__main__":
  sys.exit(main())
