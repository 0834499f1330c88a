"""HIB on 3-digit MNIST (1000 classes: 700 seen, 300 unseen) with a 3-D embedding.

Commands (from the repository root), point / MoG-1 / MoG-2:
  python -m experiments.mnist --config=configs/hib_n3_d3.py --config.num_components=0
  python -m experiments.mnist --config=configs/hib_n3_d3.py --config.num_components=1
  python -m experiments.mnist --config=configs/hib_n3_d3.py --config.num_components=2
Seeds: add --config.seed=1 (2, ...); each run writes its own workdir (--workdir=...).

Budget: 1500 steps of 128 images (16 classes x 8) and 512 pairs: 28 x 84 images cost about
1.5x the 2-digit ones per step, so about 5 min of training on an idle 2-core CPU, plus about
30 s of evaluation. The test sets are the reference generator's: 100 of the 300 unseen
(and 100 of the 700 seen) numbers, 100 images each (min_test_images_per_class).

Measured (seeds 0 / 1 / 2, mean ± std; python -m experiments.summarize --hib <workdirs>):
  verification AP clean / corrupted, kNN accuracy clean / corrupted:
  point  0.989 ± 0.000 / 0.941 ± 0.003, 0.835 ± 0.006 / 0.459 ± 0.007
  MoG-1  0.988 ± 0.000 / 0.943 ± 0.002, 0.817 ± 0.017 / 0.431 ± 0.011
  MoG-2  0.989 ± 0.001 / 0.944 ± 0.000, 0.832 ± 0.001 / 0.441 ± 0.010
  About 5 min per run on one core of the 2-core CPU, the other busy.
  (the paper's values beside these, and the correlations: docs/results/hib.rst)
"""

from sphereembed.methods import default_config


def get_config():
  config = default_config("hib")
  config.num_digits = 3
  config.embedding_dim = 3
  config.num_components = 1
  config.num_train_steps = 1500
  # The reference generator's N = 3 test sets: 100 random classes of 100 images each.
  config.min_test_images_per_class = 100
  return config
