r"""Trains a ResNet embedding on CIFAR-10 / CIFAR-100 and evaluates it by nearest centroid.

Usage, from the repository root:

  python -m experiments.cifar --config=configs/cifar100_ncl_1024d.py
  python -m experiments.cifar --config=configs/cifar100_ncl_2d.py \
      --config.data_dir=/data/cifar --config.seed=1 --workdir=runs/cifar100_2d_seed1

The same loop as ``experiments.mnist`` (:func:`sphereembed.training.loop.train_and_evaluate`),
with the configs' ResNet, crop-and-flip augmentation, SGD and data
parallelism over every local device (``--config.num_devices``). The data is
found as :func:`sphereembed.data.cifar.load_cifar` explains: the canonical
``cifar-10-batches-py/`` / ``cifar-100-python/`` folders or their
``.tar.gz`` archives under ``--config.data_dir``, ``$SPHEREEMBED_DATA_DIR`` or
``../shared/data``, else TFDS (``--config.download=True`` on a machine with
internet). Without ``--workdir`` each run gets a fresh ``runs/<config>/<time>``;
passing an interrupted run's workdir resumes it. Every run reports the
nearest-centroid test accuracy and ACC@80% (the accuracy on the 80% of test
images closest to their nearest centroid) in ``metrics.json``.

On many hosts, run the command on each with ``--distributed`` (or
``--coordinator_address=host0:1234 --num_processes=N --process_id=i``) and a
shared ``--workdir``: the mesh spans every host's devices and each host feeds
its own slice of every batch (see ``experiments.mnist`` and README.md).
"""

from __future__ import annotations

from absl import app
from absl import flags

# Importing experiments.mnist defines the --config, --workdir and multi-host flags, shared by
# both commands.
from experiments import mnist
from sphereembed.training.loop import train_and_evaluate

FLAGS = mnist.FLAGS


def main(argv):
  workdir = mnist.start_run(argv, "configs/<name>.py (see configs/cifar*.py)", multi_host=True)
  metrics = train_and_evaluate(FLAGS.config, workdir)
  at_80 = metrics.get("test_accuracy_at_80", float("nan"))
  print(f"nearest-centroid test accuracy: {100 * metrics['test_accuracy']:.2f}%, "
        f"ACC@80%: {100 * at_80:.2f}% (workdir {workdir})")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
