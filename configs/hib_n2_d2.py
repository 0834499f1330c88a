"""HIB on 2-digit MNIST (100 classes: 70 seen, 30 unseen) with a 2-D embedding.

Commands (from the repository root), point / MoG-1 / MoG-2:
  python -m experiments.mnist --config=configs/hib_n2_d2.py --config.num_components=0
  python -m experiments.mnist --config=configs/hib_n2_d2.py --config.num_components=1
  python -m experiments.mnist --config=configs/hib_n2_d2.py --config.num_components=2
Seeds: add --config.seed=1 (2, ...); each run writes its own workdir (--workdir=...).

Budget: 1800 steps of 128 images (16 classes x 8) and 512 pairs (the defaults of
sphereembed.methods.default_config("hib")): about 2 minutes of training on an idle 2-core
CPU (120-130 s measured), plus about 15 s of evaluation.

Measured (means over seeds 0-2; unseen classes, see sphereembed.evaluation.protocols.verification for the
protocol; tables in docs/results/hib.rst): clean / corrupted verification AP: point 0.982 /
0.862, MoG-1 0.983 / 0.867, MoG-2 0.983 / 0.870; kNN accuracy clean / corrupted: point
0.906 / 0.433, MoG-1 0.901 / 0.438, MoG-2 0.889 / 0.436. (Oh, Murphy, Pan, Roth, Schroff,
Gallagher, "Modeling Uncertainty with Hedged Instance Embedding", ICLR 2019: clean AP 0.987 /
0.989 / 0.990 and kNN accuracy 0.871 / 0.879 / 0.888 for point / MoG-1 / MoG-2.)
"""

from sphereembed.methods import default_config


def get_config():
  config = default_config("hib")
  config.num_digits = 2
  config.embedding_dim = 2
  config.num_components = 1
  return config
