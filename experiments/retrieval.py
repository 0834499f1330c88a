r"""Bayesian metric learning on Fashion-MNIST: LAM or one of its baselines, MNIST as OOD.

Usage, from the repository root (one config per method):

  python -m experiments.retrieval --config=configs/lam_fmnist.py
  python -m experiments.retrieval --config=configs/lam_posthoc_fmnist.py
  python -m experiments.retrieval --config=configs/deterministic_fmnist.py --config.seed=1 \
      --workdir=runs/deterministic_fmnist_seed1

The other methods: ``configs/mcdropout_fmnist.py``, ``configs/ensemble_fmnist.py``,
``configs/pfe_fmnist.py``, ``configs/hib_fmnist.py``. Without ``--workdir`` each
run gets a fresh folder ``runs/<config>/<time>``; passing the workdir of an
interrupted run resumes it from its last checkpoint. Fashion-MNIST and MNIST
are found as ``sphereembed.data.load_dataset`` explains (``--config.data_dir``,
``$SPHEREEMBED_DATA_DIR``, ``../shared/data``, TFDS). The protocol is in
:mod:`sphereembed.evaluation.protocols.retrieval`.

The same command as ``experiments.mnist`` (one runner serves every config), kept
under this name so that the commands above keep working.
"""

from __future__ import annotations

from experiments import mnist

if __name__ == "__main__":
  mnist.run()
