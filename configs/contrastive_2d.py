"""Contrastive loss (margin 0.5, chord distance) with a 2-D embedding: the NCL comparison.

Command (from the repository root):
  python -m experiments.mnist --config=configs/contrastive_2d.py

Measured (2-core CPU, jax 0.10.2, the ncl_2d backbone and budget: batch norm, 20 epochs):
nearest-centroid test accuracy 98.55 +- 0.04% over seeds 0-2 (98.51, 98.58, 98.56;
--config.seed=S); ncl_2d 98.73 +- 0.03% on the same budget.
"""

from sphereembed.methods import default_config


def get_config():
  config = default_config()
  config.loss = "contrastive"
  config.embedding_dim = 2
  # The ncl_2d budget and backbone, for a like-for-like comparison.
  config.batch_norm = True
  config.num_epochs = 20
  config.margin = 0.5
  return config
