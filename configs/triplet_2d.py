"""Batch-all triplet loss (margin 0.2, chord distance) with a 2-D embedding: the NCL comparison.

Batch-hard mining (``--config.loss=triplet_batch_hard``) collapsed here: every embedding went to one
point, the loss sat at the margin (0.2) from step ~900 on, and accuracy ended at 38.37% (seed 0).

Command (from the repository root):
  python -m experiments.mnist --config=configs/triplet_2d.py

Expected result: see the README's results table (mean and std over 3 seeds, measured with this file).
"""

from sphereembed.training.config import default_config


def get_config():
  config = default_config()
  config.loss = "triplet_batch_all"
  config.embedding_dim = 2
  # The ncl_2d budget and backbone, for a like-for-like comparison.
  config.batch_norm = True
  config.num_epochs = 20
  return config
