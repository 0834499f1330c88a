"""HIB on 2-digit MNIST (100 classes: 70 seen, 30 unseen) with a 3-D embedding.

Commands (from the repository root), point / MoG-1 / MoG-2:
  python -m experiments.ndigit --config=configs/hib_n2_d3.py --config.num_components=0
  python -m experiments.ndigit --config=configs/hib_n2_d3.py --config.num_components=1
  python -m experiments.ndigit --config=configs/hib_n2_d3.py --config.num_components=2
Seeds: add --config.seed=1 (2, ...); each run writes its own workdir (--workdir=...).

Budget: 1800 steps of 128 images (16 classes x 8) and 512 pairs (the defaults of
sphereembed.training.hib.default_hib_config): about 4 min of training on an idle 2-core CPU
(as hib_n2_d2.py; a 3-D head costs nothing extra), plus about 30 s of evaluation.

Expected result: not measured yet.
"""

from sphereembed.training.hib import default_hib_config


def get_config():
  config = default_hib_config()
  config.num_digits = 2
  config.embedding_dim = 3
  config.num_components = 1
  return config
