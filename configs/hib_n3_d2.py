"""HIB on 3-digit MNIST (1000 classes: 700 seen, 300 unseen) with a 2-D embedding.

Commands (from the repository root), point / MoG-1 / MoG-2:
  python -m experiments.ndigit --config=configs/hib_n3_d2.py --config.num_components=0
  python -m experiments.ndigit --config=configs/hib_n3_d2.py --config.num_components=1
  python -m experiments.ndigit --config=configs/hib_n3_d2.py --config.num_components=2
Seeds: add --config.seed=1 (2, ...); each run writes its own workdir (--workdir=...).

Budget: 1500 steps of 128 images (16 classes x 8) and 512 pairs: 28 x 84 images cost about
1.5x the 2-digit ones per step, so about 5 min of training on an idle 2-core CPU (estimated
from the 2-digit runs, not timed), plus about 30 s of evaluation.

Expected result: not measured yet.
"""

from sphereembed.training.hib import default_hib_config


def get_config():
  config = default_hib_config()
  config.num_digits = 3
  config.embedding_dim = 2
  config.num_components = 1
  config.num_train_steps = 1500
  return config
