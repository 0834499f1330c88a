"""CosFace (additive cosine margin, Wang et al.) with a 2-D embedding on MNIST: the NCL comparison.

The ncl_2d backbone and budget; evaluated by the nearest of its learned class proxies (the model's head),
its confidence the cosine to that proxy.
The scale is the loss's default (pytorch-metric-learning's); the margin is 0.1, not the
default 0.35: on the circle, ten classes' proxies are at best 2 pi / 10 apart, so a sample on its
own proxy has cosine 1 - 0.35 = 0.65 after the margin against 0.81 for the next proxy, and no
embedding satisfies the loss (any margin above 1 - cos(2 pi / 10) = 0.19 is infeasible).
With 0.35, seed 0 reached 84.62% on MNIST (the other configs' protocol, below), classes merged.
Change either with --config.loss_options.NAME=VALUE.

Command (from the repository root):
  python -m experiments.mnist --config=configs/cosface_2d.py [--config.dataset=fashion_mnist]

Measured (seeds 0-2, mean ± std, 2-core CPU, jax 0.10.2, the comparison's protocol: 5,000 validation images,
the other dataset as OOD): nearest-proxy test accuracy 98.32 ± 0.15% on MNIST, 85.85 ± 4.36% on Fashion-MNIST
(one Fashion-MNIST seed merged classes: 80.83%).
Against NCL, triplet and contrastive (accuracy, OOD AUROC, ECE): docs/results/mnist.rst.
"""

from sphereembed.methods import default_config


def get_config():
  config = default_config()
  config.loss = "cosface"
  config.embedding_dim = 2
  # sphereembed.losses.cosface's keyword arguments.
  config.loss_options = {"margin": 0.1, "scale": 64.0}
  # The ncl_2d backbone and budget (batch norm, 20 epochs), for a like-for-like comparison.
  config.batch_norm = True
  config.num_epochs = 20
  # Held out of training to calibrate the saved model's confidence and choose where it abstains.
  config.validation_examples = 5000
  return config
