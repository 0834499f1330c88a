"""NCL with a 2-D embedding (the unit circle) on the complete MNIST.

Command (from the repository root):
  python -m experiments.mnist --config=configs/ncl_2d.py

Expected result: see the README's results table (mean and std over 3 seeds).
"""

from sphereembed.training.config import default_config


def get_config():
  config = default_config()
  config.loss = "ncl"
  config.embedding_dim = 2
  return config
