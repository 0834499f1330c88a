"""Post-hoc LAM on Fashion-MNIST: a Laplace posterior over the deterministic network's last layer.

Command (from the repository root):
  python -m experiments.retrieval --config=configs/lam_posthoc_fmnist.py
Seeds: add --config.seed=1 (2, ...) and a --workdir per seed.

Budget: configs/deterministic_fmnist.py's training (6000 steps), then one epoch of the same
batches accumulates the diagonal GGN of the last layer and the marginal likelihood tunes the
prior precision (seconds); a few minutes on a 2-core CPU.
The paper's Fashion-MNIST row (post-hoc LAM): OOD AUROC 0.96, AUSC 0.86.
"""

from sphereembed.training.retrieval import default_retrieval_config


def get_config():
  config = default_retrieval_config()
  config.method = "laplace_posthoc"
  config.tune_prior = True
  return config
