"""HIB on 3-digit MNIST (1000 classes: 700 seen, 300 unseen) with a 2-D embedding.

Commands (from the repository root), point / MoG-1 / MoG-2:
  python -m experiments.mnist --config=configs/hib_n3_d2.py --config.num_components=0
  python -m experiments.mnist --config=configs/hib_n3_d2.py --config.num_components=1
  python -m experiments.mnist --config=configs/hib_n3_d2.py --config.num_components=2
Seeds: add --config.seed=1 (2, ...); each run writes its own workdir (--workdir=...).

Budget: 1500 steps of 128 images (16 classes x 8) and 512 pairs: 28 x 84 images cost about
1.5x the 2-digit ones per step, so about 5 min of training on an idle 2-core CPU, plus about
30 s of evaluation. The test sets are the reference generator's: 100 of the 300 unseen
(and 100 of the 700 seen) numbers, 100 images each (min_test_images_per_class).

Measured (seeds 0 / 1 / 2, mean ± std; python -m experiments.summarize --hib <workdirs>):
  verification AP clean / corrupted, kNN accuracy clean / corrupted:
  point  0.970 ± 0.001 / 0.906 ± 0.004, 0.486 ± 0.007 / 0.269 ± 0.008
  MoG-1  0.971 ± 0.001 / 0.908 ± 0.002, 0.517 ± 0.007 / 0.276 ± 0.010
  MoG-2  0.969 ± 0.003 / 0.909 ± 0.007, 0.504 ± 0.020 / 0.268 ± 0.009
  About 5 min per run on one core of the 2-core CPU, the other busy.
  (the paper's values beside these, and the correlations: docs/results/hib.rst)
"""

from sphereembed.methods import default_config


def get_config():
  config = default_config("hib")
  config.num_digits = 3
  config.embedding_dim = 2
  config.num_components = 1
  config.num_train_steps = 1500
  # The reference generator's N = 3 test sets: 100 random classes of 100 images each.
  config.min_test_images_per_class = 100
  return config
