"""A tiny MNIST-like IDX folder whose classes a small CNN separates in a few steps."""

import os

import numpy as np

from sphereembed.data import write_idx


def write_fake_mnist(folder, num_train=240, num_test=60, num_classes=4, seed=0) -> str:
  """Class k is a bright horizontal bar in row band k, plus noise; canonical file names."""
  rng = np.random.default_rng(seed)
  os.makedirs(folder, exist_ok=True)
  for prefix, count in (("train", num_train), ("t10k", num_test)):
    labels = np.arange(count) % num_classes
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(count, 28, 28), dtype=np.uint8)
    for i, label in enumerate(labels):
      band = 2 + 6 * int(label)
      images[i, band:band + 4, 4:24] = 250
    write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"), images)
    write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz"), labels.astype(np.uint8))
  return str(folder)
