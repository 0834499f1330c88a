"""NCL with a 3-D embedding (the unit sphere S^2) on the complete MNIST; the figure is a sphere view.

Command (from the repository root):
  python -m experiments.mnist --config=configs/ncl_3d.py

Measured (seed 0, batch norm, 20 epochs, on one busy CPU core, interrupted at step 5000 and
resumed from its checkpoint): 99.06% nearest-centroid test accuracy, between ncl_2d (98.73%) and
ncl_128d (99.32%). Its workdir gets the two-view sphere figure embeddings.png.
"""

from sphereembed.methods import default_config


def get_config():
  config = default_config()
  config.loss = "ncl"
  config.embedding_dim = 3
  config.batch_norm = True  # the ncl_2d recipe
  config.num_epochs = 20
  return config
