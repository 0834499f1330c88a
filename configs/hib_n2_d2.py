"""HIB on 2-digit MNIST (100 classes: 70 seen, 30 unseen) with a 2-D embedding.

Commands (from the repository root), point / MoG-1 / MoG-2:
  python -m experiments.mnist --config=configs/hib_n2_d2.py --config.num_components=0
  python -m experiments.mnist --config=configs/hib_n2_d2.py --config.num_components=1
  python -m experiments.mnist --config=configs/hib_n2_d2.py --config.num_components=2
Seeds: add --config.seed=1 (2, ...); each run writes its own workdir (--workdir=...).

Budget: 1800 steps of 128 images (16 classes x 8) and 512 pairs (the defaults of
sphereembed.methods.default_config("hib")): about 2 minutes of training on an idle 2-core
CPU (120-130 s measured), plus about 15 s of evaluation.

Measured (seeds 0 / 1 / 2, mean ± std; unseen classes, see
sphereembed.evaluation.protocols.verification for the protocol; python -m experiments.summarize
--hib <workdirs>): verification AP clean / corrupted, kNN accuracy clean / corrupted:
  point  0.983 ± 0.002 / 0.866 ± 0.009, 0.907 ± 0.002 / 0.444 ± 0.025
  MoG-1  0.984 ± 0.001 / 0.870 ± 0.007, 0.901 ± 0.006 / 0.442 ± 0.014
  MoG-2  0.983 ± 0.000 / 0.872 ± 0.002, 0.892 ± 0.010 / 0.440 ± 0.005
  (Oh, Murphy, Pan, Roth, Schroff, Gallagher, "Modeling Uncertainty with Hedged Instance
  Embedding", ICLR 2019, beside these, and the correlations: docs/results/hib.rst)
"""

from sphereembed.methods import default_config


def get_config():
  config = default_config("hib")
  config.num_digits = 2
  config.embedding_dim = 2
  config.num_components = 1
  return config
