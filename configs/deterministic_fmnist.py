"""Deterministic contrastive embedding on Fashion-MNIST (the baseline in the LAM comparison).

LAM, the Laplacian Metric Learner: Warburg, Miani, Brack, Hauberg,
"Bayesian Metric Learning for Uncertainty Quantification in Image Retrieval", NeurIPS 2023.

Command (from the repository root):
  python -m experiments.mnist --config=configs/deterministic_fmnist.py
Seeds: add --config.seed=1 (2, ...) and a --workdir per seed.

Budget: 3000 steps of 130 images (10 classes x 13, about 6.5 epochs) of the SmallCNN with a 3-D
unit embedding (the paper's code: D = 3, margin 0.7), then the evaluation (MNIST test set as
OOD). The same network (seed for seed) is the MAP of configs/lam_posthoc_fmnist.py, the mean of
configs/pfe_fmnist.py and member 0 of configs/ensemble_fmnist.py.

Measured (seeds 0 / 1 / 2, mean ± std; one CPU core, the other busy): mAP@1 0.869 ± 0.005,
mAP@5 0.841 ± 0.006, mAP@10 0.833 ± 0.006; 2-5 minutes of training, 12-30 s of evaluation.
The paper's Fashion-MNIST row: mAP@1 0.78.
"""

from sphereembed.methods import default_config


def get_config():
  config = default_config("deterministic")
  return config
