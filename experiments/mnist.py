r"""Trains and evaluates any config: the one command behind every experiment.

Usage, from the repository root:

  python -m experiments.mnist --config=configs/ncl_2d.py
  python -m experiments.mnist --config=configs/ncl_2d.py \
      --config.embedding_dim=3 --config.dataset=fashion_mnist --workdir=runs/fashion_3d
  python -m experiments.mnist --config=configs/ncl_2d.py --cpu_devices=2  # 2 cores, 2 devices
  python -m experiments.mnist --config=configs/hib_n2_d2.py   # any method: see configs/

``config.method`` picks the method (:mod:`sphereembed.methods`); every method
gets the same engine: the device mesh, ``--cpu_devices``, many hosts, resume,
checkpoints and metric writers. ``experiments.cifar``, ``experiments.ndigit``
and ``experiments.retrieval`` are the same command under their older names.

Without ``--workdir`` each run gets a fresh folder ``runs/<config>/<time>``;
passing the workdir of an interrupted run resumes it from its last checkpoint.
The data is found as ``sphereembed.data.load_dataset`` explains
(``--config.data_dir``, ``$SPHEREEMBED_DATA_DIR``, ``../shared/data``, TFDS).

Many hosts: start the same command on every host with ``--distributed`` (Cloud
TPU, SLURM, Open MPI: found automatically) or with
``--coordinator_address=host0:1234 --num_processes=N --process_id=i``, and a
``--workdir`` on a file system every host shares::

  python -m experiments.mnist --config=configs/ncl_2d.py --workdir=/shared/runs/ncl_2d \
      --coordinator_address=host0:1234 --num_processes=2 --process_id=0   # on host0
  python -m experiments.mnist --config=configs/ncl_2d.py --workdir=/shared/runs/ncl_2d \
      --coordinator_address=host0:1234 --num_processes=2 --process_id=1   # on host1
"""

from __future__ import annotations

import datetime
import os

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from sphereembed.runner import train_and_evaluate
from sphereembed.training.checkpoints import CorruptCheckpointError
from sphereembed.training.lock import WorkdirLockedError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Path to a config file with get_config().", lock_config=True)
flags.DEFINE_string("workdir", None, "Output folder; default: runs/<config>/<time>.")
# Multi-host runs (jax.distributed.initialize), shared by every command of experiments/.
flags.DEFINE_bool("distributed", False,
                  "Join a multi-process run: jax.distributed.initialize() before anything else, "
                  "with the coordinator found automatically (Cloud TPU, SLURM, Open MPI) or "
                  "given by the three flags below.")
flags.DEFINE_string("coordinator_address", None,
                    "host:port of process 0's coordinator (implies --distributed).")
flags.DEFINE_integer("num_processes", None, "How many processes (implies --distributed).")
flags.DEFINE_integer("process_id", None, "This process's index in [0, --num_processes).")
flags.DEFINE_integer(
    "cpu_devices", 1,
    "Split the CPU into this many XLA devices (jax_num_cpu_devices), so that the data-parallel "
    "mesh runs that many programs side by side: on a multi-core CPU this trains faster than one "
    "program's intra-op threads (see benchmarks/RESULTS.md). The batch must divide evenly; "
    "results equal a 1-device run up to float rounding. No effect on GPU or TPU devices. Not "
    "the default: on a CPU shared with other busy processes, XLA's in-process all-reduce between "
    "the devices can wait past its 40 s limit and abort the run.",
    lower_bound=1)


def default_workdir(config_path: str, now: datetime.datetime | None = None) -> str:
  """``runs/<config file stem>/<YYYYmmdd-HHMMSS>``: never an earlier run's folder."""
  stem = os.path.splitext(os.path.basename(config_path))[0]
  stamp = (now or datetime.datetime.now()).strftime("%Y%m%d-%H%M%S")
  path = os.path.join("runs", stem, stamp)
  suffix = 1
  while os.path.exists(path):
    suffix += 1
    path = os.path.join("runs", stem, f"{stamp}-{suffix}")
  return path


def initialize_distributed() -> None:
  """``jax.distributed.initialize`` with the flags' arguments, when they ask for several processes.

  Call it first in ``main``: before JAX does any computation. A multi-process
  run needs an explicit ``--workdir`` (the default one carries the time, which
  the hosts would not share).

  Raises:
    app.UsageError: several processes but no ``--workdir``.
  """
  given = {name: FLAGS[name].value for name in ("coordinator_address", "num_processes",
                                                "process_id") if FLAGS[name].value is not None}
  if not (FLAGS.distributed or given):
    return
  jax.distributed.initialize(**given)
  logging.info("Process %d of %d: %d of the %d devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  if jax.process_count() > 1 and not FLAGS.workdir:
    raise app.UsageError("A multi-process run needs --workdir, on a file system every host "
                         "shares (checkpoints are written by all of them).")


class _QuietLibraries:
  """Drops INFO chatter from the absl log: orbax's checkpoint threads, JAX's backend probes.

  JAX tries every backend it knows at start and logs each one this machine
  lacks ("Unable to initialize backend 'tpu'"): expected, not a problem.
  """

  def filter(self, record) -> bool:
    if record.levelno > logging.converter.STANDARD_INFO:
      return True
    return "orbax" not in record.pathname and not (
        record.pathname.endswith("xla_bridge.py")
        and "Unable to initialize backend" in record.getMessage())


def start_run(argv, usage: str = "configs/<name>.py (see configs/)") -> str:
  """The prologue of the command; returns the workdir.

  Quiets orbax's log chatter, rejects stray arguments and a missing config,
  splits the CPU into ``--cpu_devices`` devices, joins a multi-host run and
  picks the workdir.

  Args:
    argv: absl's positional arguments (the program name only, when valid).
    usage: what ``--config`` should name, for the error message.

  Raises:
    app.UsageError: on stray arguments or no config.
  """
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if FLAGS.config is None:
    raise app.UsageError(f"Pass --config={usage}.")
  if FLAGS.cpu_devices != 1:
    # Must precede JAX's backend start (the first device query or computation).
    jax.config.update("jax_num_cpu_devices", FLAGS.cpu_devices)
  initialize_distributed()
  workdir = FLAGS.workdir or default_workdir(config_flags.get_config_filename(FLAGS["config"]))
  logging.info("Workdir: %s", os.path.abspath(workdir))
  return workdir


def summary(metrics: dict) -> str:
  """The one-line result a run prints, by its method."""
  method = metrics["method"]
  if method == "centroid":
    line = f"nearest-centroid test accuracy: {100 * metrics['test_accuracy']:.2f}%"
    if "test_accuracy_at_80" in metrics:
      line += f", ACC@80%: {100 * metrics['test_accuracy_at_80']:.2f}%"
    if metrics.get("model/threshold", 0) > 0 and metrics["model/coverage"] > 0:
      line += (f"; the saved model abstains on {100 * (1 - metrics['model/coverage']):.1f}% of "
               f"the test images, {100 * metrics['model/accuracy_kept']:.2f}% accurate on the rest")
    elif metrics.get("model/threshold", 0) > 0:
      line += ("; the saved model abstains on every test image: no confidence reached the "
               "abstention target (config.abstain_level) on the validation split")
    return line
  if method == "hib":
    return (f"HIB {metrics['model']} ({metrics['headline_set']} classes): verification AP clean "
            f"{metrics['verification_ap_clean']:.4f} / corrupted "
            f"{metrics['verification_ap_corrupted']:.4f}; kNN accuracy clean "
            f"{metrics['knn_accuracy_clean']:.4f} / corrupted "
            f"{metrics['knn_accuracy_corrupted']:.4f}")
  return (f"{method}: mAP@1 {metrics['map_at_1']:.4f}, mAP@5 {metrics['map_at_5']:.4f}, "
          f"mAP@10 {metrics['map_at_10']:.4f}; OOD AUROC {metrics['ood_auroc']:.4f}, AUPRC "
          f"{metrics['ood_auprc']:.4f}; AUSC {metrics['ausc']:.4f}; ECE {metrics['ece']:.4f}")


# Errors a user can fix from the message alone: printed without a traceback.
_EXPECTED_ERRORS = (ValueError, FileNotFoundError, FloatingPointError, CorruptCheckpointError,
                    WorkdirLockedError)


def _parse_flags(argv):
  """absl's flag parsing, with a config override that names no field as a usage error."""
  try:
    return flags.FLAGS(argv)
  except AttributeError as error:  # config_flags' message for an unknown field, with a hint
    message = str(error).strip("'\"").replace("\\n", " ").replace("\\'", "'")
    raise SystemExit(f"FATAL Flags parsing error: unknown config field: {message}") from None


def main(argv):
  workdir = start_run(argv)
  try:
    metrics = train_and_evaluate(FLAGS.config, workdir)
  except KeyboardInterrupt:
    raise SystemExit(f"Interrupted; the last finished step is saved. Run the same command with "
                     f"--workdir={workdir} to resume.") from None
  except _EXPECTED_ERRORS as error:
    raise SystemExit(f"error: {error}") from None
  print(f"{summary(metrics)} (workdir {workdir})")


def run() -> None:
  """The command: flags, then :func:`main` (the aliases in experiments/ call this too)."""
  flags.mark_flags_as_required(["config"])
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
