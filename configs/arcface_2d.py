"""ArcFace (additive angular margin, Deng et al.) with a 2-D embedding on MNIST: the NCL comparison.

The ncl_2d backbone and budget; evaluated by the nearest of its learned class proxies (the model's head),
its confidence the cosine to that proxy.
The hyper-parameters are the loss's defaults (pytorch-metric-learning's, margins in radians),
listed so that one can be changed from the command line (--config.loss_options.NAME=VALUE).

Command (from the repository root):
  python -m experiments.mnist --config=configs/arcface_2d.py [--config.dataset=fashion_mnist]

Measured (seeds 0-2, mean ± std, 2-core CPU, jax 0.10.2, the comparison's protocol: 5,000 validation images,
the other dataset as OOD): nearest-proxy test accuracy 95.57 ± 5.42% on MNIST, 61.66 ± 4.93% on Fashion-MNIST.
Classes merged on the circle on Fashion-MNIST and in one MNIST seed (89.31%).
Against NCL, triplet and contrastive (accuracy, OOD AUROC, ECE): docs/results/mnist.rst.
"""

from sphereembed.methods import default_config


def get_config():
  config = default_config()
  config.loss = "arcface"
  config.embedding_dim = 2
  # sphereembed.losses.arcface's keyword arguments.
  config.loss_options = {"margin": 0.5, "scale": 64.0}
  # The ncl_2d backbone and budget (batch norm, 20 epochs), for a like-for-like comparison.
  config.batch_norm = True
  config.num_epochs = 20
  # Held out of training to calibrate the saved model's confidence and choose where it abstains.
  config.validation_examples = 5000
  return config
