"""HIB on 3-digit MNIST (1000 classes: 700 seen, 300 unseen) with a 3-D embedding.

Commands (from the repository root), point / MoG-1 / MoG-2:
  python -m experiments.mnist --config=configs/hib_n3_d3.py --config.num_components=0
  python -m experiments.mnist --config=configs/hib_n3_d3.py --config.num_components=1
  python -m experiments.mnist --config=configs/hib_n3_d3.py --config.num_components=2
Seeds: add --config.seed=1 (2, ...); each run writes its own workdir (--workdir=...).

Budget: 1500 steps of 128 images (16 classes x 8) and 512 pairs: 28 x 84 images cost about
1.5x the 2-digit ones per step, so about 5 min of training on an idle 2-core CPU, plus about
30 s of evaluation.

Measured (seeds 0 / 1 / 2, mean ± std; python -m experiments.summarize --hib <workdirs>):
  verification AP clean / corrupted, kNN accuracy clean / corrupted:
  point  0.987 ± 0.000 / 0.936 ± 0.003, 0.643 ± 0.014 / 0.273 ± 0.005
  MoG-1  0.987 ± 0.001 / 0.939 ± 0.002, 0.611 ± 0.019 / 0.244 ± 0.005
  MoG-2  0.988 ± 0.000 / 0.940 ± 0.001, 0.636 ± 0.005 / 0.257 ± 0.007
  (self-mismatch correlations: experiments/README.md). 6-10 min per run on one busy core.
"""

from sphereembed.methods import default_config


def get_config():
  config = default_config("hib")
  config.num_digits = 3
  config.embedding_dim = 3
  config.num_components = 1
  config.num_train_steps = 1500
  return config
