"""NCL with a 2-D embedding (the unit circle) on the complete MNIST.

Command (from the repository root):
  python -m experiments.mnist --config=configs/ncl_2d.py

Measured on a 2-core CPU (jax 0.10.2, 20 epochs = 10,380 steps of 10 x 13 images; 3 seeds):
nearest-centroid test accuracy 98.73 +- 0.03% (98.77, 98.71, 98.71). The training time for the
README's first command is in the README (these three ran on a shared machine).
With the polyphase convolution gradient (config.polyphase_gradient, the default; the same values
up to rounding): 98.86 +- 0.03% (98.84, 98.90, 98.84).
The trajectory depends on XLA's CPU thread count (the convolutions' summation order): seed 0 pinned
to one core (taskset -c 1) gave 98.66% (bit for bit the training loop the one runner replaced, also
pinned), on both cores 98.84% (the value above).
Before batch norm (the same budget, the plain CNN): 98.36 +- 0.24% (98.47, 98.53, 98.08); with
10 epochs 98.33 +- 0.18%.
"""

from sphereembed.methods import default_config


def get_config():
  config = default_config()
  config.loss = "ncl"
  config.embedding_dim = 2
  # Batch norm: +0.3 points over the plain CNN (seed 0: 98.77% against 98.47%), same budget.
  config.batch_norm = True
  # 20 epochs, not the default 10: the centroids keep spreading over the circle.
  config.num_epochs = 20
  # Held out of training to calibrate the saved model's confidence and choose where it abstains.
  config.validation_examples = 5000
  return config
