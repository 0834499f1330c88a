"""Deep ensemble of 5 contrastive networks on Fashion-MNIST (a baseline of LAM, issue 8).

Command (from the repository root):
  python -m experiments.retrieval --config=configs/ensemble_fmnist.py
Seeds: add --config.seed=1 (2, ...) and a --workdir per seed.

Budget: five trainings of configs/deterministic_fmnist.py (3000 steps each, different
initialisations and batch orders; member 0 is the deterministic network of the same seed), so
about five times its time; the members' embeddings are the samples.
"""

from sphereembed.training.retrieval import default_retrieval_config


def get_config():
  config = default_retrieval_config()
  config.method = "ensemble"
  config.ensemble_size = 5
  return config
