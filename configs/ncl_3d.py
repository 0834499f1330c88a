"""NCL with a 3-D embedding (the unit sphere S^2) on the complete MNIST; the figure is a sphere view.

Command (from the repository root):
  python -m experiments.mnist --config=configs/ncl_3d.py

Expected result: not yet measured at full size with this recipe (the ncl_2d one: batch norm, 20
epochs); it should fall between ncl_2d (98.73%) and ncl_128d (99.32%). Its workdir gets the two-view
sphere figure embeddings.png.
"""

from sphereembed.training.config import default_config


def get_config():
  config = default_config()
  config.loss = "ncl"
  config.embedding_dim = 3
  config.batch_norm = True  # the ncl_2d recipe
  config.num_epochs = 20
  return config
