"""NCL + a Gaussian scale head in 2-D: N(c_y, sigma(x)^2 I) fitted by negative log-likelihood.

The talk's first confidence model: sigma is the uncertainty, and the Gaussian
class posterior softmax(-||x - c_k||^2 / (2 sigma^2)) the class probability.

Command (from the repository root):
  python -m experiments.mnist --config=configs/ncl_gauss_2d.py

Expected result: not measured yet (session 13 added the config); metrics.json holds every
confidence metric, and the README's confidence table will hold the 3-seed values.
"""

from sphereembed.training.config import default_config


def get_config():
  config = default_config()
  config.loss = "ncl"
  config.embedding_dim = 2
  config.confidence = "gaussian"
  config.confidence_embedding_gradient = False  # NCL shapes the embedding, the NLL trains sigma
  config.validation_examples = 5000
  config.ood_dataset = "fashion_mnist"
  return config
