"""NCL with a 128-D embedding on the complete MNIST.

Command (from the repository root):
  python -m experiments.mnist --config=configs/ncl_128d.py

Expected result: see the README's results table (mean and std over 3 seeds, measured with this file).
"""

from sphereembed.training.config import default_config


def get_config():
  config = default_config()
  config.loss = "ncl"
  config.embedding_dim = 128
  return config
