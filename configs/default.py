"""Every field of an MNIST-family experiment, with its default (NCL in 2-D on MNIST).

The fields and their meaning are in :func:`sphereembed.methods.default_config`;
the other configs start from it and change a few fields.

Command (a quick smoke run):
  python -m experiments.mnist --config=configs/default.py --config.num_epochs=1
"""

from sphereembed.methods import default_config


def get_config():
  return default_config()
