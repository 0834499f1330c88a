"""Deterministic contrastive embedding on Fashion-MNIST (the baseline of LAM, issue 8).

Command (from the repository root):
  python -m experiments.retrieval --config=configs/deterministic_fmnist.py
Seeds: add --config.seed=1 (2, ...) and a --workdir per seed.

Budget: 3000 steps of 130 images (10 classes x 13, about 6.5 epochs) of the SmallCNN with a 3-D
unit embedding (the paper's code: D = 3, margin 0.7), then the evaluation (MNIST test set as
OOD). The same network (seed for seed) is the MAP of configs/lam_posthoc_fmnist.py, the mean of
configs/pfe_fmnist.py and member 0 of configs/ensemble_fmnist.py.

Measured (seed 0, one run, on a 2-core CPU shared with other jobs, load 6-10): mAP@1 0.874,
mAP@5 0.846, mAP@10 0.839; 324 s of training, 12 s of evaluation.
The paper's Fashion-MNIST row: mAP@1 0.78.
"""

from sphereembed.training.retrieval import default_retrieval_config


def get_config():
  config = default_retrieval_config()
  config.method = "deterministic"
  return config
