"""NCL with a 3-D embedding (the unit sphere S^2) on the complete MNIST; the figure is a sphere view.

Command (from the repository root):
  python -m experiments.mnist --config=configs/ncl_3d.py

Expected result: see the README's results table (mean and std over 3 seeds, measured with this file).
"""

from sphereembed.training.config import default_config


def get_config():
  config = default_config()
  config.loss = "ncl"
  config.embedding_dim = 3
  return config
