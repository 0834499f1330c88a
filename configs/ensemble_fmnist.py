"""Deep ensemble of 5 contrastive networks on Fashion-MNIST (a baseline in the LAM comparison).

Command (from the repository root):
  python -m experiments.mnist --config=configs/ensemble_fmnist.py
Seeds: add --config.seed=1 (2, ...) and a --workdir per seed.

Budget: five trainings of configs/deterministic_fmnist.py (3000 steps each, different
initialisations and batch orders; member 0 is the deterministic network of the same seed), so
about five times its time; the members' embeddings are the samples.
Measured (seeds 0 / 1 / 2, mean ± std, members aligned by orthogonal Procrustes): mAP@1
0.867 ± 0.013; OOD AUROC 0.682 ± 0.051, AUPRC 0.705 ± 0.030; AUSC 0.864 ± 0.013 (about a random
ranking); ECE 0.125 ± 0.065 (seeds 0 and 1 under-confident). Seed 0 without the alignment
(--config.ensemble_alignment=none): AUROC 0.538, AUSC 0.820, ECE 0.131.
"""

from sphereembed.methods import default_config


def get_config():
  config = default_config("ensemble")
  config.ensemble_size = 5
  return config
