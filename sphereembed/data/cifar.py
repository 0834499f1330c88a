"""CIFAR-10 / CIFAR-100 from the canonical python-pickle files, augmentation and prefetching.

:func:`load_cifar` returns a :class:`~sphereembed.data.sources.Dataset`
(uint8 images ``(N, 32, 32, 3)``, int32 labels) from the first place that
has the data:

1. ``data_dir`` (``--config.data_dir``), when given: the extracted folder
   (``cifar-10-batches-py/`` with ``data_batch_1`` ... ``data_batch_5`` and
   ``test_batch``; ``cifar-100-python/`` with ``train`` and ``test``), a
   folder containing it, the downloaded archive (``cifar-10-python.tar.gz``,
   ``cifar-100-python.tar.gz``, read without extracting) or a folder
   containing the archive. A ``data_dir`` that does not hold the data is an
   error; the search does not go on silently.
2. The environment variable ``SPHEREEMBED_DATA_DIR`` (same forms).
3. The default roots of :func:`~sphereembed.data.sources.default_data_roots`
   (``../shared/data`` next to the repository and the working directory,
   ``./data``).
4. TFDS (fine labels only), as in :func:`~sphereembed.data.sources.load_dataset`:
   prepared in ``tfds_data_dir`` in the ``array_record`` format, or
   downloaded with ``download=True`` when the network answers.

Nothing is ever fetched otherwise. When no place has the data,
:class:`~sphereembed.data.sources.DataNotFoundError` names every way to
provide it (including the download page :data:`CIFAR_URL`) and every place
tried; a damaged or truncated file raises
:class:`~sphereembed.data.idx.CorruptDataError` naming the file. The pickles
are read by an unpickler that accepts NumPy arrays and plain containers only,
so a tampered file cannot run code.

The input pipeline: :func:`random_crop_flip` (random 32x32 crop of the image
zero-padded by 4 pixels, and a horizontal flip with probability 1/2, in
NumPy), :func:`augment_batch` (the same, seeded by ``(seed, step)`` so a
resumed run repeats the augmentation of an uninterrupted one),
:func:`augment_rng` (the generator it draws from), :func:`train_batches` (a
sampler's index batches turned into augmented ``{"image", "label"}``
batches, steps numbered as in the training loop) and :func:`prefetch` (a
background thread keeping a few batches ready, optionally already on the
device).

References:
  A. Krizhevsky, "Learning Multiple Layers of Features from Tiny Images",
  2009. https://www.cs.toronto.edu/~kriz/cifar.html
"""

from __future__ import annotations

import io
import os
import pathlib
import pickle
import queue
import tarfile
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from sphereembed.data import augment as augment_lib
from sphereembed.data import sources
from sphereembed.data.idx import CorruptDataError
from sphereembed.data.sources import DATA_DIR_ENV, DataNotFoundError, Dataset, Split

__all__ = [
    "CIFAR_ARCHIVES",
    "CIFAR_FILES",
    "CIFAR_FOLDERS",
    "CIFAR_URL",
    "LABEL_MODES",
    "augment_batch",
    "augment_rng",
    "load_cifar",
    "load_cifar_folder",
    "load_png_samples",
    "prefetch",
    "random_crop_flip",
    "read_cifar_batch",
    "train_batches",
]

#: Where the canonical files are downloaded from (the "python version" archives).
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"

#: The folder each archive extracts to.
CIFAR_FOLDERS: dict[str, str] = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}

#: The downloaded archives.
CIFAR_ARCHIVES: dict[str, str] = {
    "cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}

#: The pickle files of each split, in order.
CIFAR_FILES: dict[str, dict[str, tuple[str, ...]]] = {
    "cifar10": {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
    "cifar100": {"train": ("train",), "test": ("test",)},
}

#: CIFAR-100's label sets: 100 fine classes or 20 coarse superclasses.
LABEL_MODES: dict[str, int] = {"fine": 100, "coarse": 20}

_IMAGE_SIZE = 32
_PIXELS = 3 * _IMAGE_SIZE * _IMAGE_SIZE
# The trailing stream id keeps augmentation draws apart from the samplers'
# np.random.default_rng([seed, epoch]) streams of the same seed.
_AUGMENT_STREAM = 1


# ----------------------------------------------------------------------------- reading pickles


class _ArrayUnpickler(pickle.Unpickler):
  """Unpickles dicts, lists, strings, numbers and NumPy arrays, nothing that runs code."""

  _ALLOWED = {
      ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
      ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
      ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
  }

  def find_class(self, module: str, name: str):
    if (module, name) not in self._ALLOWED:
      raise pickle.UnpicklingError(f"refusing to load the global {module}.{name}")
    if module.startswith("numpy.core"):
      # NumPy 2 moved numpy.core to numpy._core and warns on the old name.
      try:
        return super().find_class("numpy._core" + module.removeprefix("numpy.core"), name)
      except (ImportError, AttributeError):
        pass
    return super().find_class(module, name)


def _unpickle(raw: bytes, where: str) -> dict[str, Any]:
  """The pickled dict with str keys (Python 2 pickles give bytes keys)."""
  try:
    value = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
  except Exception as e:  # pylint: disable=broad-except
    # Truncation surfaces as EOFError or UnpicklingError, damage as about anything.
    raise CorruptDataError(
        f"{where}: not a readable CIFAR pickle ({type(e).__name__}: {e}); the file is probably "
        f"truncated or corrupted, download it again from {CIFAR_URL}.") from e
  if not isinstance(value, dict):
    raise CorruptDataError(f"{where}: expected a pickled dict, found {type(value).__name__}.")
  return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in value.items()}


def read_cifar_batch(path: str | os.PathLike, label_key: str = "labels",
                     *, raw: bytes | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Reads one canonical CIFAR pickle (``data_batch_1``, ``test_batch``, ``train``, ...).

  The file is a pickled dict whose ``"data"`` is a uint8 ``(N, 3072)`` array,
  each row an image's red, green then blue 32x32 planes, and whose
  ``label_key`` (``"labels"`` for CIFAR-10, ``"fine_labels"`` or
  ``"coarse_labels"`` for CIFAR-100) is a list of ``N`` ints.

  Args:
    path: the file (named in errors; not opened when ``raw`` is given).
    label_key: the key of the labels.
    raw: the file's bytes, when they come from elsewhere (an archive).

  Returns:
    ``(images, labels)``: uint8 ``(N, 32, 32, 3)`` (channels last) and int64 ``(N,)``.

  Raises:
    FileNotFoundError: the file does not exist.
    CorruptDataError: the file is not a readable pickle (truncated, damaged),
      or lacks the keys or shapes above; the message names the file.

  Example:
    >>> import os, pickle, tempfile
    >>> import numpy as np
    >>> from sphereembed.data.cifar import read_cifar_batch
    >>> data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...   path = os.path.join(tmp, "data_batch_1")
    ...   with open(path, "wb") as f:
    ...     pickle.dump({b"data": data, b"labels": [3, 7]}, f, protocol=2)
    ...   images, labels = read_cifar_batch(path)
    >>> print(images.shape, images.dtype, labels.tolist(), images[0, 0, 1].tolist())
    (2, 32, 32, 3) uint8 [3, 7] [1, 1, 1]
  """
  where = os.fspath(path)
  if raw is None:
    with open(path, "rb") as f:
      raw = f.read()
  content = _unpickle(raw, where)
  for key in ("data", label_key):
    if key not in content:
      raise CorruptDataError(
          f"{where}: no {key!r} entry (found {', '.join(sorted(content)) or 'none'}).")
  data = content["data"]
  if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or (
      data.shape[1] != _PIXELS):
    found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
    raise CorruptDataError(f"{where}: 'data' must be uint8 of shape (N, {_PIXELS}), found {found}.")
  try:
    labels = np.asarray(content[label_key])
  except Exception as e:  # pylint: disable=broad-except
    raise CorruptDataError(f"{where}: {label_key!r} is not a list of ints ({e}).") from e
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or len(labels) != len(data):
    raise CorruptDataError(
        f"{where}: {label_key!r} must be {len(data)} ints, found {labels.dtype} {labels.shape}.")
  # Rows are channel-major planes; NHWC is what the models and augmentation take.
  images = np.ascontiguousarray(data.reshape(-1, 3, _IMAGE_SIZE, _IMAGE_SIZE).transpose(0, 2, 3, 1))
  return images, labels.astype(np.int64)


# ----------------------------------------------------------------------------- locating the data


def _check_name(name: str, label_mode: str) -> None:
  if name not in CIFAR_FOLDERS:
    raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(CIFAR_FOLDERS)}.")
  if label_mode not in LABEL_MODES:
    raise ValueError(f"label_mode must be one of {', '.join(LABEL_MODES)}, got {label_mode!r}.")
  if name == "cifar10" and label_mode != "fine":
    raise ValueError("coarse labels exist for cifar100 only.")


def _file_names(name: str) -> list[str]:
  return [f for files in CIFAR_FILES[name].values() for f in files]


def _find(name: str, where: pathlib.Path) -> tuple[pathlib.Path | None, str]:
  """The extracted folder or the archive for ``name`` at ``where``, else why not."""
  archive = CIFAR_ARCHIVES[name]
  if where.is_file():
    if where.name.endswith((".tar.gz", ".tgz", ".tar")):
      return where, "found"
    return None, f"is a file but not a {archive} archive"
  if not where.is_dir():
    return None, "does not exist"
  folder = CIFAR_FOLDERS[name]
  partial = []
  for candidate in (where, where / folder):
    missing = [f for f in _file_names(name) if not (candidate / f).is_file()]
    if not missing:
      return candidate, "found"
    if len(missing) < len(_file_names(name)):
      partial.append(f"{candidate} lacks {', '.join(missing)}")
  if (where / archive).is_file():
    return where / archive, "found"
  if partial:
    return None, "; ".join(partial)
  return None, f"neither the files of {folder}/, nor a {folder}/ folder, nor {archive}"


def _read_archive(path: pathlib.Path, name: str) -> dict[str, bytes]:
  """The pickles of ``name`` in a downloaded archive, by file name."""
  wanted = set(_file_names(name))
  found: dict[str, bytes] = {}
  try:
    with tarfile.open(path, "r:*") as archive:
      for member in archive:
        base = member.name.rsplit("/", 1)[-1]
        if member.isfile() and base in wanted and base not in found:
          found[base] = archive.extractfile(member).read()
  except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
    raise CorruptDataError(
        f"{path}: not a readable archive ({type(e).__name__}: {e}); the file is probably "
        f"truncated or corrupted, download it again from {CIFAR_URL}.") from e
  missing = sorted(wanted - set(found))
  if missing:
    raise CorruptDataError(f"{path}: the archive lacks {', '.join(missing)}.")
  return found


def load_cifar_folder(path: str | os.PathLike, name: str = "cifar10", *,
                      label_mode: str = "fine") -> Dataset:
  """Loads CIFAR from an extracted canonical folder or a downloaded archive.

  Args:
    path: ``cifar-10-batches-py/`` or ``cifar-100-python/`` (the files
      directly inside), or the ``.tar.gz`` archive.
    name: ``"cifar10"`` or ``"cifar100"``.
    label_mode: ``"fine"`` (100 classes) or ``"coarse"`` (20 superclasses),
      CIFAR-100 only.

  Returns:
    The dataset; ``source`` is the absolute path, ``name`` is ``name`` (with
    ``"_coarse"`` appended for coarse labels).

  Raises:
    ValueError: unknown ``name`` or ``label_mode``.
    DataNotFoundError: a file is missing from the folder.
    CorruptDataError: a file is damaged, or the files do not fit together
      (shapes, label range); the message names the file.
  """
  _check_name(name, label_mode)
  path = pathlib.Path(path).expanduser().resolve()
  archive = path.is_file()
  if archive:
    contents = _read_archive(path, name)
  else:
    missing = [f for f in _file_names(name) if not (path / f).is_file()]
    if missing:
      raise DataNotFoundError(f"{path} lacks the CIFAR file(s) {', '.join(missing)}.")
    contents = {f: (path / f).read_bytes() for f in _file_names(name)}

  def location(file_name: str) -> str:
    return f"{path}:{file_name}" if archive else str(path / file_name)

  num_classes = 10 if name == "cifar10" else LABEL_MODES[label_mode]
  label_key = "labels" if name == "cifar10" else f"{label_mode}_labels"
  splits = {}
  for split_name, files in CIFAR_FILES[name].items():
    images, labels = [], []
    for f in files:
      batch_images, batch_labels = read_cifar_batch(location(f), label_key, raw=contents[f])
      if batch_labels.size and (batch_labels.min() < 0 or batch_labels.max() >= num_classes):
        raise CorruptDataError(
            f"{location(f)}: {label_key!r} must lie in [0, {num_classes}), "
            f"found [{batch_labels.min()}, {batch_labels.max()}].")
      images.append(batch_images)
      labels.append(batch_labels)
    splits[split_name] = Split(np.concatenate(images), np.concatenate(labels).astype(np.int32))
  full_name = name if label_mode == "fine" else f"{name}_coarse"
  return Dataset(full_name, splits["train"], splits["test"], num_classes, str(path))


def _help_message(name: str, label_mode: str, tried: list[str]) -> str:
  folder, archive = CIFAR_FOLDERS[name], CIFAR_ARCHIVES[name]
  files = ", ".join(_file_names(name))
  lines = [
      f"Dataset {name!r} was not found. Ways to provide it:",
      f"  * download {archive} (the \"python version\") from {CIFAR_URL} on a machine with "
      f"internet; extracting it (tar xzf {archive}) gives {folder}/ with {files};",
      f"  * --config.data_dir=/path (load_cifar(..., data_dir=...)): {folder}/ itself, a folder "
      f"containing {folder}/, the archive {archive}, or a folder containing the archive;",
      f"  * the environment variable {DATA_DIR_ENV}=/path (same forms);",
      f"  * the default location ../shared/data/{folder}/ (or ../shared/data/{archive}) next to "
      f"the repository or the working directory, or ./data/{folder}/;",
  ]
  if label_mode == "fine":
    lines.append(
        f"  * TFDS: --config.download=True (load_cifar(..., download=True)) on a machine with "
        f"internet, or prepare it beforehand with `tfds build {name} --file_format=array_record "
        f"--data_dir=/path` and pass tfds_data_dir=/path (--config.tfds_data_dir); TensorFlow is "
        f"not needed.")
  else:
    lines.append("  (coarse labels are read from the local pickles only, not from TFDS.)")
  lines.append("Tried:")
  lines += [f"  - {entry}" for entry in tried]
  return "\n".join(lines)


def load_cifar(
    name: str = "cifar10",
    data_dir: str | os.PathLike | None = None,
    *,
    label_mode: str = "fine",
    tfds_data_dir: str | os.PathLike | None = None,
    download: bool = False,
) -> Dataset:
  """Loads CIFAR-10 or CIFAR-100 from the first place that has it (see the module docstring).

  Args:
    name: ``"cifar10"`` or ``"cifar100"``.
    data_dir: the extracted folder, a folder containing it, the archive or a
      folder containing the archive. When given, it must hold the data.
    label_mode: ``"fine"`` or ``"coarse"`` (CIFAR-100's 20 superclasses).
    tfds_data_dir: TFDS's data folder (TFDS's default when ``None``).
    download: let TFDS download the dataset when it is not prepared; only
      attempted when the network answers within 2 s.

  Returns:
    The dataset: uint8 images ``(N, 32, 32, 3)`` and int32 labels; 50,000
    train and 10,000 test images for the real files.

  Raises:
    ValueError: unknown ``name`` or ``label_mode``.
    DataNotFoundError: no place has the dataset, or ``data_dir`` does not
      hold it. The message lists the ways to provide it and the places tried.
    CorruptDataError: the files are there but damaged or inconsistent.
  """
  _check_name(name, label_mode)
  tried: list[str] = []

  def load(found: pathlib.Path) -> Dataset:
    return load_cifar_folder(found, name, label_mode=label_mode)

  if data_dir is not None:
    where = pathlib.Path(data_dir).expanduser().resolve()
    found, why = _find(name, where)
    if found is None:
      raise DataNotFoundError(
          f"data_dir={os.fspath(data_dir)!r} does not hold {name}: {why}.\n"
          + _help_message(name, label_mode, [f"data_dir {where}: {why}"]))
    return load(found)
  tried.append("data_dir: not given")

  env = os.environ.get(DATA_DIR_ENV)
  if env:
    found, why = _find(name, pathlib.Path(env).expanduser().resolve())
    if found is not None:
      return load(found)
    tried.append(f"${DATA_DIR_ENV}={env}: {why}")
  else:
    tried.append(f"${DATA_DIR_ENV}: not set")
  for root in sources.default_data_roots():
    found, why = _find(name, root)
    if found is not None:
      return load(found)
    tried.append(f"default root {root}: {why}")

  if label_mode == "fine":
    dataset, why = sources.load_tfds(name, tfds_data_dir, download=download)
    if dataset is not None:
      return dataset
    tried.append(f"TFDS {name}: {why}")
  else:
    tried.append("TFDS: not tried (coarse labels)")
  raise DataNotFoundError(_help_message(name, label_mode, tried))


def load_png_samples(folder: str | os.PathLike, name: str = "cifar10") -> Split:
  """Reads PNG files named ``<name>_<index>_<label>.png`` (e.g. ``../shared/data/cifar-samples``).

  For smoke tests on real CIFAR images where only a few are at hand.

  Args:
    folder: the folder of PNG files.
    name: the file-name prefix (``"cifar10"``, ``"cifar100"``).

  Returns:
    The images (uint8 ``(N, H, W, 3)``), ordered by index, and their labels.

  Raises:
    DataNotFoundError: no matching file.
    CorruptDataError: a file cannot be decoded or its size differs from the others.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top  (matplotlib's dependency)

  folder = pathlib.Path(folder)
  entries = []
  for path in folder.glob(f"{name}_*_*.png"):
    parts = path.stem.split("_")
    if len(parts) == 3 and parts[0] == name and parts[1].isdigit() and parts[2].isdigit():
      entries.append((int(parts[1]), int(parts[2]), path))
  if not entries:
    raise DataNotFoundError(f"{folder} holds no {name}_<index>_<label>.png file.")
  images, labels = [], []
  for _, label, path in sorted(entries):
    try:
      with Image.open(path) as image:
        images.append(np.asarray(image.convert("RGB"), dtype=np.uint8))
    except Exception as e:  # pylint: disable=broad-except
      raise CorruptDataError(f"{path}: not a readable PNG ({type(e).__name__}: {e}).") from e
    if images[-1].shape != images[0].shape:
      raise CorruptDataError(f"{path}: {images[-1].shape} differs from {images[0].shape}.")
    labels.append(label)
  return Split(np.stack(images), np.asarray(labels, np.int32))


# ----------------------------------------------------------------------------- augmentation


def random_crop_flip(images: np.ndarray, rng: np.random.Generator, *, padding: int = 4,
                     flip: bool = True) -> np.ndarray:
  """The standard CIFAR augmentation: random crop with zero padding, random horizontal flip.

  Each image is zero-padded by ``padding`` pixels on every side and cropped
  back to its size at a random offset (a shift by up to ``padding`` pixels
  per axis, :func:`~sphereembed.data.augment.random_translate`), then
  mirrored left-right with probability 1/2. Vectorised over the batch.

  Args:
    images: ``(B, H, W, C)`` array (uint8 stays uint8).
    rng: the generator that draws the offsets and flips.
    padding: the zero padding, hence the largest shift (0: no crop).
    flip: whether to flip.

  Returns:
    An array of the shape and dtype of ``images``.

  Example:
    >>> import numpy as np
    >>> from sphereembed.data.cifar import random_crop_flip
    >>> x = np.ones((3, 32, 32, 3), np.uint8)
    >>> y = random_crop_flip(x, np.random.default_rng(0))
    >>> print(y.shape, y.dtype, bool(np.all(y[:, 4:28, 4:28] == 1)))
    (3, 32, 32, 3) uint8 True
  """
  images = np.asarray(images)
  if images.ndim != 4:
    raise ValueError(f"images must have shape (B, H, W, C), got {images.shape}.")
  if padding < 0:
    raise ValueError(f"padding must be >= 0, got {padding}.")
  out = augment_lib.random_translate(images, padding, rng)
  if flip:
    mirrored = rng.random(len(images)) < 0.5
    out = np.where(mirrored[:, None, None, None], out[:, :, ::-1], out)
  return out


def augment_rng(seed: int, step: int) -> np.random.Generator:
  """The generator :func:`augment_batch` draws the augmentation of step ``step`` from.

  A function of ``(seed, step)`` alone, on a stream of its own (apart from
  the samplers' ``np.random.default_rng([seed, epoch])``). For code that
  augments part of a batch itself (e.g. one process's rows) with the draws
  :func:`augment_batch` makes for the whole batch.

  Args:
    seed: the run's non-negative seed.
    step: the global step of the batch (non-negative).

  Returns:
    A fresh ``np.random.Generator``; equal arguments give equal streams.

  Raises:
    ValueError: a negative ``seed`` or ``step``.

  Example:
    >>> import numpy as np
    >>> from sphereembed.data.cifar import augment_batch, augment_rng, random_crop_flip
    >>> x = np.arange(2 * 8 * 8 * 3, dtype=np.uint8).reshape(2, 8, 8, 3)
    >>> ours = random_crop_flip(x, augment_rng(0, 5), padding=2)
    >>> bool(np.array_equal(ours, augment_batch(x, seed=0, step=5, padding=2)))
    True
  """
  if seed < 0 or step < 0:
    raise ValueError(f"seed and step must be >= 0, got {seed} and {step}.")
  return np.random.default_rng([seed, step, _AUGMENT_STREAM])


def augment_batch(images: np.ndarray, *, seed: int, step: int, padding: int = 4,
                  flip: bool = True) -> np.ndarray:
  """:func:`random_crop_flip` drawn from ``(seed, step)`` alone (:func:`augment_rng`).

  A run resumed at step ``g`` augments batch ``g`` exactly as an
  uninterrupted run does.

  Args:
    images: ``(B, H, W, C)`` array.
    seed: the run's non-negative seed.
    step: the global step of the batch.
    padding: the zero padding (largest shift).
    flip: whether to flip.

  Returns:
    The augmented batch.
  """
  return random_crop_flip(images, augment_rng(seed, step), padding=padding, flip=flip)


def train_batches(split: Split, sampler, *, seed: int, start_step: int = 0, augment: bool = True,
                  padding: int = 4, flip: bool = True) -> Iterator[dict[str, np.ndarray]]:
  """Augmented ``{"image", "label"}`` batches of a sampler, for the steps after ``start_step``.

  Steps are numbered as in the training loop: ``start_step`` is the number of
  steps already taken (0 for a fresh run, the checkpoint's step for a resumed
  one), and the first batch yielded is that of step ``start_step + 1``. It
  holds the sampler's batch ``start_step`` (``sampler.iterate(start_step)``
  counts batches from 0) augmented as ``augment_batch(images, seed=seed,
  step=start_step + 1)``; the ``i``-th batch yielded (from 0) is augmented as
  step ``start_step + 1 + i``. A run resumed at ``start_step = g`` therefore
  gets the batches an uninterrupted run gets after its step ``g``.

  Args:
    split: the training split.
    sampler: a :class:`~sphereembed.data.ShuffledSampler` or
      :class:`~sphereembed.data.ClassBalancedSampler` (anything with
      ``iterate(start_step)`` yielding index arrays).
    seed: the augmentation seed (see :func:`augment_batch`).
    start_step: the steps already taken; the first batch is step ``start_step + 1``.
    augment: apply :func:`augment_batch` (``False``: the raw images).
    padding: the crop's zero padding.
    flip: whether to flip.

  Yields:
    ``{"image": uint8 (B, H, W, C), "label": int32 (B,)}`` forever.
  """
  for step, indices in enumerate(sampler.iterate(start_step), start=start_step + 1):
    images = split.images[indices]
    if augment:
      images = augment_batch(images, seed=seed, step=step, padding=padding, flip=flip)
    yield {"image": images, "label": split.labels[indices]}


# ----------------------------------------------------------------------------- prefetching


class _Raised:
  """Carries an exception from the producer thread to the consumer."""

  def __init__(self, error: BaseException):
    self.error = error


_END = object()


class _Prefetcher:
  """The iterator :func:`prefetch` returns; ``close()`` (or ``with``) stops its thread."""

  def __init__(self, iterator: Iterable, size: int, transform: Callable | None):
    self._source = iter(iterator)
    self._queue: queue.Queue = queue.Queue(maxsize=size)
    self._transform = transform
    self._stop = threading.Event()
    self._done = False
    self._thread = threading.Thread(target=self._produce, name="prefetch", daemon=True)
    self._thread.start()

  def _put(self, item) -> bool:
    """Puts ``item`` unless stopped; the timeout lets a stop interrupt a full queue."""
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.05)
        return True
      except queue.Full:
        continue
    return False

  def _produce(self) -> None:
    try:
      for item in self._source:
        if self._transform is not None:
          item = self._transform(item)
        if not self._put(item):
          return
    except BaseException as e:  # pylint: disable=broad-except
      self._put(_Raised(e))
      return
    self._put(_END)

  def __iter__(self) -> _Prefetcher:
    return self

  def __next__(self):
    if self._done:
      raise StopIteration
    item = self._queue.get()
    if item is _END:
      self._done = True
      raise StopIteration
    if isinstance(item, _Raised):
      self._done = True
      raise item.error
    return item

  def close(self) -> None:
    """Stops the producer thread; later ``next`` calls raise ``StopIteration``."""
    self._done = True
    self._stop.set()
    self._thread.join(timeout=5.0)

  def __enter__(self) -> _Prefetcher:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def prefetch(iterator: Iterable, size: int = 2, *,
             transform: Callable | None = None) -> _Prefetcher:
  """Iterates ``iterator`` in a background thread, keeping ``size`` items ready.

  The producer thread runs ahead of the consumer by at most ``size`` items,
  so host-side work (gathering, augmentation, and with ``transform`` the
  transfer to the device, e.g. :func:`sphereembed.training.sharding.shard_batch`)
  overlaps the accelerator's step. The order is kept; an exception in the
  producer is raised by the ``next`` call that reaches it. NumPy releases the
  GIL in its copies, and JAX dispatch is asynchronous, so one thread suffices.

  Args:
    iterator: any iterable (an infinite generator is fine).
    size: how many items to keep ready (>= 1).
    transform: applied to each item in the background thread.

  Returns:
    An iterator with ``close()``, usable as a context manager (the thread is
    a daemon: an iterator never closed does not keep the process alive).

  Example:
    >>> from sphereembed.data.cifar import prefetch
    >>> with prefetch(iter(range(5)), size=2, transform=lambda x: x * x) as items:
    ...   print(list(items))
    [0, 1, 4, 9, 16]
  """
  if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
    raise ValueError(f"size must be a positive integer, got {size!r}.")
  return _Prefetcher(iterator, int(size), transform)
