"""ArcFace (additive angular margin, Deng et al.) with a 128-D embedding on MNIST: the NCL comparison.

The ncl_128d backbone and budget; evaluated by the nearest of its learned class proxies (the model's head),
its confidence the cosine to that proxy.
The hyper-parameters are the loss's defaults (pytorch-metric-learning's, margins in radians),
listed so that one can be changed from the command line (--config.loss_options.NAME=VALUE).

Command (from the repository root):
  python -m experiments.mnist --config=configs/arcface_128d.py [--config.dataset=fashion_mnist]

Measured (seeds 0-2, mean ± std, 2-core CPU, jax 0.10.2, the comparison's protocol: 5,000 validation images,
the other dataset as OOD): nearest-proxy test accuracy 99.50 ± 0.01% on MNIST, 91.33 ± 0.06% on Fashion-MNIST.
Against NCL, triplet and contrastive (accuracy, OOD AUROC, ECE): docs/results/mnist.rst.
"""

from sphereembed.methods import default_config


def get_config():
  config = default_config()
  config.loss = "arcface"
  config.embedding_dim = 128
  # sphereembed.losses.arcface's keyword arguments.
  config.loss_options = {"margin": 0.5, "scale": 64.0}
  # The ncl_128d backbone and budget (batch norm, +-2 pixel shifts, 10 epochs).
  config.batch_norm = True
  config.random_shift = 2
  # Held out of training to calibrate the saved model's confidence and choose where it abstains.
  config.validation_examples = 5000
  return config
