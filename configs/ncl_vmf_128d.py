"""NCL + a von Mises-Fisher concentration head in 128-D.

The network predicts a unit embedding and a per-sample concentration kappa;
the loss is NCL plus the vMF negative log-likelihood of the embedding around
its class centroid. At test time kappa is the confidence, and the vMF class
posterior softmax(kappa * cos) turns it into a probability, calibrated by a
temperature fitted on 5,000 held-out training images. Fashion-MNIST's test set
is the out-of-distribution set.

Command (from the repository root):
  python -m experiments.mnist --config=configs/ncl_vmf_128d.py

Expected result: not measured yet (session 13 added the config); metrics.json holds every
confidence metric, and the README's confidence table will hold the 3-seed values.
"""

from sphereembed.training.config import default_config


def get_config():
  config = default_config()
  config.loss = "ncl"
  config.embedding_dim = 128
  config.confidence = "vmf"
  config.confidence_embedding_gradient = False  # NCL shapes the embedding, the NLL trains kappa
  # In 128-D the NLL's gradient through the shared trunk dwarfs NCL's and
  # collapsed the embedding (25.9% accuracy): the kappa head reads detached features.
  config.confidence_feature_gradient = False
  config.validation_examples = 5000
  config.ood_dataset = "fashion_mnist"
  return config
