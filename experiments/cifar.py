r"""Trains a ResNet embedding on CIFAR-10 / CIFAR-100 and evaluates it by nearest centroid.

Usage, from the repository root:

  python -m experiments.cifar --config=configs/cifar100_ncl_1024d.py
  python -m experiments.cifar --config=configs/cifar100_ncl_2d.py \
      --config.data_dir=/data/cifar --config.seed=1 --workdir=runs/cifar100_2d_seed1

The same loop as ``experiments.mnist`` (:func:`sphereembed.train_and_evaluate`),
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

The same command as ``experiments.mnist`` (one runner serves every config), kept
under this name so that the commands above keep working.
"""

from __future__ import annotations

from experiments import mnist

if __name__ == "__main__":
  mnist.run()
