"""Softmax cross-entropy baseline: a cosine classifier on a 2-D unit embedding, evaluated by nearest centroid like the metric losses.

Command (from the repository root):
  python -m experiments.mnist --config=configs/softmax_2d.py

Measured (2-core CPU, jax 0.10.2, the ncl_2d backbone and budget: batch norm, 20 epochs):
nearest-centroid test accuracy 98.23 +- 0.09% over seeds 0-2 (98.24, 98.13, 98.31; --config.seed=S),
its classifier 98.24 +- 0.11%; ncl_2d 98.73 +- 0.03% on the same budget.
"""

from sphereembed.methods import default_config


def get_config():
  config = default_config()
  config.loss = "softmax"
  config.embedding_dim = 2
  # The ncl_2d budget and backbone, for a like-for-like comparison.
  config.batch_norm = True
  config.num_epochs = 20
  return config
