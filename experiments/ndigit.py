r"""Trains a Hedged Instance Embedding model on N-digit MNIST and evaluates it (issue 7).

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
protocol of the evaluation is in :mod:`sphereembed.training.hib`.
"""

from __future__ import annotations

from absl import app
from absl import flags

# Importing experiments.mnist defines the --config and --workdir flags, shared by every command.
from experiments import mnist
from sphereembed.training.hib import train_and_evaluate

FLAGS = mnist.FLAGS


def main(argv):
  workdir = mnist.start_run(argv, "configs/hib_<name>.py (see configs/)", multi_host=False)
  metrics = train_and_evaluate(FLAGS.config, workdir)
  print(f"HIB {metrics['model']} ({metrics['headline_set']} classes): verification AP clean "
        f"{metrics['verification_ap_clean']:.4f} / corrupted "
        f"{metrics['verification_ap_corrupted']:.4f}; kNN accuracy clean "
        f"{metrics['knn_accuracy_clean']:.4f} / corrupted {metrics['knn_accuracy_corrupted']:.4f} "
        f"(workdir {workdir})")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
