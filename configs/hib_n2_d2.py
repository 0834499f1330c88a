"""HIB on 2-digit MNIST (100 classes: 70 seen, 30 unseen) with a 2-D embedding.

Commands (from the repository root), point / MoG-1 / MoG-2:
  python -m experiments.ndigit --config=configs/hib_n2_d2.py --config.num_components=0
  python -m experiments.ndigit --config=configs/hib_n2_d2.py --config.num_components=1
  python -m experiments.ndigit --config=configs/hib_n2_d2.py --config.num_components=2
Seeds: add --config.seed=1 (2, ...); each run writes its own workdir (--workdir=...).

Budget: 1800 steps of 128 images (16 classes x 8) and 512 pairs (the defaults of
sphereembed.training.hib.default_hib_config): about 4 min of training at the ~7.5 steps/s of an
idle 2-core CPU (7-8 min measured on a heavily shared one), plus about 30 s of evaluation.

Measured (seed 0, one run each, jax on a shared 2-core CPU; unseen classes, see
sphereembed.training.hib for the protocol): point: clean AP 0.980, corrupted AP 0.863, kNN
accuracy clean 0.891 / corrupted 0.432; MoG-1: clean AP 0.983, corrupted AP 0.879, kNN 0.897 /
0.459. MoG-2: not measured yet. (The talk: clean AP 0.987 / 0.989 / 0.990 and kNN accuracy
0.871 / 0.879 / 0.888 for point / MoG-1 / MoG-2.)
"""

from sphereembed.training.hib import default_hib_config


def get_config():
  config = default_hib_config()
  config.num_digits = 2
  config.embedding_dim = 2
  config.num_components = 1
  return config
