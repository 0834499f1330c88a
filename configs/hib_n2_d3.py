"""HIB on 2-digit MNIST (100 classes: 70 seen, 30 unseen) with a 3-D embedding.

Commands (from the repository root), point / MoG-1 / MoG-2:
  python -m experiments.mnist --config=configs/hib_n2_d3.py --config.num_components=0
  python -m experiments.mnist --config=configs/hib_n2_d3.py --config.num_components=1
  python -m experiments.mnist --config=configs/hib_n2_d3.py --config.num_components=2
Seeds: add --config.seed=1 (2, ...); each run writes its own workdir (--workdir=...).

Budget: 1800 steps of 128 images (16 classes x 8) and 512 pairs (the defaults of
sphereembed.methods.default_config("hib")): about 2 min of training on an idle 2-core CPU
(as hib_n2_d2.py; a 3-D head costs nothing extra), plus about 30 s of evaluation.

Measured (seeds 0 / 1 / 2, mean ± std; python -m experiments.summarize --hib <workdirs>):
  verification AP clean / corrupted, kNN accuracy clean / corrupted:
  point  0.988 ± 0.002 / 0.885 ± 0.008, 0.945 ± 0.004 / 0.497 ± 0.015
  MoG-1  0.990 ± 0.002 / 0.891 ± 0.004, 0.945 ± 0.015 / 0.499 ± 0.014
  MoG-2  0.991 ± 0.001 / 0.889 ± 0.003, 0.952 ± 0.001 / 0.499 ± 0.011
  About 4 min per run on one core of the 2-core CPU, the other busy.
  (the paper's values beside these, and the correlations: docs/results/hib.rst)
"""

from sphereembed.methods import default_config


def get_config():
  config = default_config("hib")
  config.num_digits = 2
  config.embedding_dim = 3
  config.num_components = 1
  return config
