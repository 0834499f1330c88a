r"""Trains a Hedged Instance Embedding model on N-digit MNIST and evaluates it.

Usage, from the repository root:

  python -m experiments.ndigit --config=configs/hib_n2_d2.py
  python -m experiments.ndigit --config=configs/hib_n2_d2.py --config.num_components=0 \
      --config.seed=1 --workdir=runs/hib_n2_d2_point_seed1

``--config.num_components`` picks the model: 0 for the point embedding, 1 for
MoG-1 (one Gaussian), 2 for MoG-2. Without ``--workdir`` each run gets a fresh
folder ``runs/<config>/<time>``; passing the workdir of an interrupted run
resumes it from its last checkpoint. MNIST is found as
``sphereembed.data.load_dataset`` explains (``--config.data_dir``,
``$SPHEREEMBED_DATA_DIR``, ``../shared/data``, TFDS); the N-digit sets are
generated from it on the fly (or cached under ``--config.cache_dir``). The
protocol of the evaluation is in :mod:`sphereembed.evaluation.protocols.verification`.

The same command as ``experiments.mnist`` (one runner serves every config), kept
under this name so that the commands above keep working.
"""

from __future__ import annotations

from experiments import mnist

if __name__ == "__main__":
  mnist.run()
