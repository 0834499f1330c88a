"""Softmax cross-entropy baseline: a cosine classifier on a 2-D unit embedding, evaluated by nearest centroid like the metric losses.

Command (from the repository root):
  python -m experiments.mnist --config=configs/softmax_2d.py

Expected result: see the README's results table (mean and std over 3 seeds, measured with this file).
"""

from sphereembed.training.config import default_config


def get_config():
  config = default_config()
  config.loss = "softmax"
  config.embedding_dim = 2
  # The ncl_2d budget and backbone, for a like-for-like comparison.
  config.batch_norm = True
  config.num_epochs = 20
  return config
