"""NCL + a Gaussian scale head in 2-D: N(c_y, sigma(x)^2 I) fitted by negative log-likelihood.

The first confidence model of the N-Centroids reference results: sigma is the uncertainty, and the
Gaussian class posterior softmax(-||x - c_k||^2 / (2 sigma^2)) the class probability.

Command (from the repository root):
  python -m experiments.mnist --config=configs/ncl_gauss_2d.py

Measured (2-core CPU, jax 0.10.2, 10 epochs, seeds 0-2): accuracy 97.52 +- 0.06%; sigma OOD
AUROC vs Fashion-MNIST 0.989 +- 0.004 (centroid cosine 0.889); ACC@80% by sigma 99.85%; ECE of the
Gaussian posterior after isotonic regression 0.003.
"""

from sphereembed.methods import default_config


def get_config():
  config = default_config()
  config.loss = "ncl"
  config.embedding_dim = 2
  config.confidence = "gaussian"
  config.confidence_embedding_gradient = False  # NCL shapes the embedding, the NLL trains sigma
  config.validation_examples = 5000
  config.ood_dataset = "fashion_mnist"
  return config
