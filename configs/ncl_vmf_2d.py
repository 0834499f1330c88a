"""NCL + a von Mises-Fisher concentration head in 2-D.

The first vMF confidence architecture of the N-Centroids reference results. The network predicts a
unit embedding and a per-sample concentration kappa; the loss is NCL plus the vMF negative
log-likelihood of the embedding around its class centroid. At test time kappa is the confidence,
and the vMF class posterior softmax(kappa * cos) turns it into a probability, calibrated by a
temperature or by isotonic regression fitted on 5,000 held-out training images. Fashion-MNIST's
test set is the out-of-distribution set.

Command (from the repository root):
  python -m experiments.mnist --config=configs/ncl_vmf_2d.py

Measured (2-core CPU, jax 0.10.2, 10 epochs, seeds 0-2): accuracy 97.45 +- 0.09%; kappa OOD
AUROC vs Fashion-MNIST 0.936 +- 0.016 (centroid cosine 0.681); ACC@80% by kappa 99.77%; ECE of the
vMF posterior 0.014 raw, 0.037 after temperature scaling, 0.004 after isotonic regression.
"""

from sphereembed.methods import default_config


def get_config():
  config = default_config()
  config.loss = "ncl"
  config.embedding_dim = 2
  config.confidence = "vmf"
  config.confidence_embedding_gradient = False  # NCL shapes the embedding, the NLL trains kappa
  config.validation_examples = 5000
  config.ood_dataset = "fashion_mnist"
  return config
