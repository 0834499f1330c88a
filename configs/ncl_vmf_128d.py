"""NCL + a von Mises-Fisher concentration head in 128-D.

The network predicts a unit embedding and a per-sample concentration kappa;
the loss is NCL plus the vMF negative log-likelihood of the embedding around
its class centroid. At test time kappa is the confidence, and the vMF class
posterior softmax(kappa * cos) turns it into a probability, calibrated by a
temperature or by isotonic regression fitted on 5,000 held-out training images. Fashion-MNIST's test set
is the out-of-distribution set.

Command (from the repository root):
  python -m experiments.mnist --config=configs/ncl_vmf_128d.py

Measured (2-core CPU, jax 0.10.2, 10 epochs, seeds 0-2): accuracy 98.78 +- 0.06%; kappa OOD
AUROC vs Fashion-MNIST 0.988 +- 0.001 (centroid cosine 0.951); ACC@80% by kappa 99.98%; ECE of the
vMF posterior 0.008 raw, 0.008 after temperature scaling, 0.003 after isotonic regression.
Reverse pair (--config.dataset=fashion_mnist --config.ood_dataset=mnist): accuracy 90.17 +- 0.16%,
kappa OOD AUROC 0.762 +- 0.025, isotonic ECE 0.010.
"""

from sphereembed.methods import default_config


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
