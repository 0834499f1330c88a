r"""Bayesian metric learning on Fashion-MNIST: LAM or one of its baselines, MNIST as OOD (issue 8).

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
:mod:`sphereembed.training.retrieval`.
"""

from __future__ import annotations

from absl import app
from absl import flags

# Importing experiments.mnist defines the --config and --workdir flags, shared by every command.
from experiments import mnist
from sphereembed.training.retrieval import train_and_evaluate

FLAGS = mnist.FLAGS


def main(argv):
  workdir = mnist.start_run(argv, "configs/<method>_fmnist.py (see configs/)", multi_host=False)
  metrics = train_and_evaluate(FLAGS.config, workdir)
  print(f"{metrics['method']}: mAP@1 {metrics['map_at_1']:.4f}, mAP@5 {metrics['map_at_5']:.4f}, "
        f"mAP@10 {metrics['map_at_10']:.4f}; OOD AUROC {metrics['ood_auroc']:.4f}, AUPRC "
        f"{metrics['ood_auprc']:.4f}; AUSC {metrics['ausc']:.4f}; ECE {metrics['ece']:.4f} "
        f"(workdir {workdir})")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
