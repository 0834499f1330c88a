"""Batch-hard triplet loss (margin 0.2 rad, great-circle distance) with a 2-D embedding: the NCL comparison.

Command (from the repository root):
  python -m experiments.mnist --config=configs/triplet_2d.py

Expected result: see the README's results table (mean and std over 3 seeds, measured with this file).
"""

from sphereembed.training.config import default_config


def get_config():
  config = default_config()
  config.loss = "triplet_batch_hard"
  config.embedding_dim = 2
  return config
