r"""Trains an embedding network on MNIST-like data and evaluates it by nearest centroid.

Usage, from the repository root:

  python -m experiments.mnist --config=configs/ncl_2d.py
  python -m experiments.mnist --config=configs/ncl_2d.py \
      --config.embedding_dim=3 --config.dataset=fashion_mnist --workdir=runs/fashion_3d

Without ``--workdir`` each run gets a fresh folder ``runs/<config>/<time>``;
passing the workdir of an interrupted run resumes it from its last checkpoint.
The data is found as ``sphereembed.data.load_dataset`` explains
(``--config.data_dir``, ``$SPHEREEMBED_DATA_DIR``, ``../shared/data``, TFDS).
"""

from __future__ import annotations

import datetime
import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from sphereembed.training.loop import train_and_evaluate

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Path to a config file with get_config().", lock_config=True)
flags.DEFINE_string("workdir", None, "Output folder; default: runs/<config>/<time>.")


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


class _QuietLibraries:
  """Drops the INFO chatter of orbax's checkpoint threads from the absl log."""

  def filter(self, record) -> bool:
    return record.levelno > logging.converter.STANDARD_INFO or "orbax" not in record.pathname


def main(argv):
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if FLAGS.config is None:
    raise app.UsageError("Pass --config=configs/<name>.py (see configs/).")
  workdir = FLAGS.workdir or default_workdir(config_flags.get_config_filename(FLAGS["config"]))
  logging.info("Workdir: %s", os.path.abspath(workdir))
  metrics = train_and_evaluate(FLAGS.config, workdir)
  print(f"nearest-centroid test accuracy: {100 * metrics['test_accuracy']:.2f}% "
        f"(workdir {workdir})")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
