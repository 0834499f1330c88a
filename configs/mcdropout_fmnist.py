"""MC dropout on Fashion-MNIST (a baseline of LAM, issue 8).

Command (from the repository root):
  python -m experiments.retrieval --config=configs/mcdropout_fmnist.py
Seeds: add --config.seed=1 (2, ...) and a --workdir per seed.

The SmallCNN with dropout before the projection, trained with it; 100 dropout masks at test time.
Budget: 3000 steps of 130 images, as configs/deterministic_fmnist.py; a few minutes on a 2-core
CPU.
"""

from sphereembed.training.retrieval import default_retrieval_config


def get_config():
  config = default_retrieval_config()
  config.method = "mc_dropout"
  config.dropout_rate = 0.2
  return config
