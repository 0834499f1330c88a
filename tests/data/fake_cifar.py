"""Generated CIFAR in the canonical python-pickle format, whose classes a tiny CNN separates."""

import os
import pickle
import tarfile

import numpy as np

from sphereembed.data.cifar import CIFAR_ARCHIVES, CIFAR_FILES, CIFAR_FOLDERS


def fake_cifar_arrays(num_examples, num_classes, seed=0):
  """Images whose mean colour is their class's (robust to crops and flips), plus noise.

  Returns ``(data, labels)``: uint8 ``(N, 3072)`` rows of red, green, blue
  planes (the canonical layout) and int64 labels, every class present.
  """
  rng = np.random.default_rng(seed)
  palette = np.random.default_rng(1234).integers(30, 226, size=(num_classes, 3))
  labels = np.arange(num_examples) % num_classes
  rng.shuffle(labels)
  noise = rng.normal(0.0, 20.0, size=(num_examples, 32, 32, 3))
  images = np.clip(palette[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)
  return images.transpose(0, 3, 1, 2).reshape(num_examples, -1), labels


def write_fake_cifar(directory, num_train=100, num_test=20, num_classes=10, seed=0,
                     archive=False):
  """Writes ``cifar-10-batches-py/`` (up to 10 classes) or ``cifar-100-python/`` in ``directory``.

  CIFAR-10's train set is spread over ``data_batch_1`` ... ``data_batch_5``
  (``num_train`` must be a multiple of 5); CIFAR-100 gets ``train`` and
  ``test`` with fine labels and coarse labels ``fine // 5``. Keys are bytes,
  as in the canonical (Python 2) pickles.

  Args:
    directory: the folder to write into (created).
    num_train, num_test: the split sizes.
    num_classes: 10 or fewer for CIFAR-10, more for CIFAR-100 (at most 100).
    seed: the images' seed.
    archive: also write the ``.tar.gz`` archive next to the folder.

  Returns:
    ``{"folder": path, "train": (images NHWC, labels), "test": (images, labels)}``.
  """
  name = "cifar10" if num_classes <= 10 else "cifar100"
  if num_classes > 100 or (name == "cifar10" and num_train % 5):
    raise ValueError("num_classes must be <= 100, and num_train a multiple of 5 for CIFAR-10.")
  folder = os.path.join(os.fspath(directory), CIFAR_FOLDERS[name])
  os.makedirs(folder, exist_ok=True)
  result = {"folder": folder}
  for split, count, split_seed in (("train", num_train, seed), ("test", num_test, seed + 1)):
    data, labels = fake_cifar_arrays(count, num_classes, split_seed)
    result[split] = (data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels)
    files = CIFAR_FILES[name][split]
    for i, (rows, row_labels) in enumerate(zip(np.array_split(data, len(files)),
                                               np.array_split(labels, len(files)))):
      content = {b"batch_label": f"fake {split} batch {i + 1}".encode(), b"data": rows,
                 b"filenames": [f"fake_{j}.png".encode() for j in range(len(rows))]}
      if name == "cifar10":
        content[b"labels"] = [int(v) for v in row_labels]
      else:
        content[b"fine_labels"] = [int(v) for v in row_labels]
        content[b"coarse_labels"] = [int(v) // 5 for v in row_labels]
      with open(os.path.join(folder, files[i]), "wb") as f:
        pickle.dump(content, f, protocol=2)
  if archive:
    with tarfile.open(os.path.join(os.fspath(directory), CIFAR_ARCHIVES[name]), "w:gz") as tar:
      tar.add(folder, arcname=CIFAR_FOLDERS[name])
  return result
