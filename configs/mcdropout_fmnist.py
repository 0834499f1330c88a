"""MC dropout on Fashion-MNIST (a baseline in the LAM comparison).

Command (from the repository root):
  python -m experiments.mnist --config=configs/mcdropout_fmnist.py
Seeds: add --config.seed=1 (2, ...) and a --workdir per seed.

The SmallCNN with dropout before the projection, trained with it; 100 dropout masks at test time.
Budget: 3000 steps of 130 images, as configs/deterministic_fmnist.py; a few minutes on a 2-core
CPU.
Measured (seeds 0 / 1 / 2, mean ± std): mAP@1 0.865 ± 0.003; OOD AUROC 0.857 ± 0.031 (0.893 /
0.835 / 0.842), AUPRC 0.885 ± 0.025; AUSC 0.974 ± 0.001 (the best ranking of the retrieval errors);
ECE 0.038 ± 0.002.
"""

from sphereembed.methods import default_config


def get_config():
  config = default_config("mc_dropout")
  config.dropout_rate = 0.2
  return config
