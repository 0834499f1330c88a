"""NCL + vMF concentration + a cross-entropy classifier head in 2-D (the talk's architecture v2).

As ``ncl_vmf_2d`` with a cosine classifier on the embedding trained by cross
entropy, so kappa can be compared with the classifier's max-softmax
probability (the ``softmax`` score in metrics.json).

Command (from the repository root):
  python -m experiments.mnist --config=configs/ncl_vmf_ce_2d.py

Expected result: not measured yet (session 13 added the config); metrics.json holds every
confidence metric, and the README's confidence table will hold the 3-seed values.
"""

from sphereembed.training.config import default_config


def get_config():
  config = default_config()
  config.loss = "ncl"
  config.embedding_dim = 2
  config.confidence = "vmf"
  config.confidence_embedding_gradient = False  # NCL shapes the embedding, the NLL trains kappa
  config.validation_examples = 5000
  config.ood_dataset = "fashion_mnist"
  config.classifier_head = True
  config.classifier_weight = 1.0
  return config
