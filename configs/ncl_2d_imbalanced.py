"""NCL in 2-D on an imbalanced MNIST (classes 0-4 keep 5% of their training images).

Shows the imbalance handling: the class-balanced sampler in "uniform" mode
draws every class equally often, so the rare classes get as many gradient
steps as the common ones. Compare with the naive run:

Command (from the repository root):
  python -m experiments.mnist --config=configs/ncl_2d_imbalanced.py
  python -m experiments.mnist --config=configs/ncl_2d_imbalanced.py --config.sampler=shuffled

Expected result: see the README's imbalance table (test_balanced_accuracy of both commands).
"""

from sphereembed.methods import default_config


def get_config():
  config = default_config()
  config.loss = "ncl"
  config.embedding_dim = 2
  config.imbalanced_classes = (0, 1, 2, 3, 4)
  config.imbalanced_fraction = 0.05
  config.sampler = "balanced"
  config.balance = "uniform"
  return config
