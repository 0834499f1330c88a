"""Your own data: a folder of images per class, an ``.npz`` of arrays, any TFDS image dataset.

:func:`sphereembed.data.load_dataset` reads these names (``--config.dataset``):

* ``"folder:PATH"``: one sub-folder per class holding image files (PNG,
  JPEG, BMP, GIF, TIFF, WebP; read by Pillow), either under ``PATH/train/``
  and ``PATH/test/``, or directly under ``PATH`` (then a stratified
  ``test_fraction`` of each class, drawn with a fixed seed, is the test
  split). The sub-folder names, sorted, are the class names.
* ``"npz:PATH"``: a NumPy archive with ``x_train``, ``y_train``, ``x_test``,
  ``y_test`` and optionally ``class_names`` (see
  :meth:`~sphereembed.data.Dataset.from_arrays` for what they may hold). It
  is read with ``allow_pickle=False``: an archive cannot run code.
* ``"tfds:NAME"`` or ``"tfds:NAME:CONFIG"``: a TFDS image classification
  dataset prepared (``array_record`` format) in ``tfds_data_dir``, or
  downloaded with ``download=True``; its ``train`` and ``test`` splits (or
  the first splits TFDS lists), its label names as class names.

Every error names the file or class at fault.
"""

from __future__ import annotations

import os
import pathlib
import warnings

from absl import logging
import numpy as np

from sphereembed.data.idx import CorruptDataError
from sphereembed.data.sources import DataNotFoundError, Dataset

__all__ = ["IMAGE_EXTENSIONS", "load_image_folder", "load_npz", "load_tfds_images",
           "read_image", "resize_images"]

#: The image files a class folder may hold (other files are ignored).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def read_image(path: str | os.PathLike, size: int = 0, channels: int = 0) -> np.ndarray:
  """One image file as uint8 ``(H, W, C)`` (``C`` = 1 grey, 3 colour, 4 with alpha).

  Args:
    path: the file.
    size: when positive, the image is resized to ``size x size`` (bilinear).
    channels: when positive (1, 3 or 4), the image is converted to that many
      channels (grey, RGB, RGBA); otherwise it keeps its own.

  Raises:
    CorruptDataError: the file is not an image Pillow can read in full.
  """
  from PIL import Image  # pylint: disable=import-outside-toplevel

  try:
    with warnings.catch_warnings():
      # A huge image is an error here, not a warning (Pillow's decompression-bomb guard).
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      with Image.open(path) as image:
        image.load()  # decodes now: a truncated file fails here
        if channels:
          image = image.convert({1: "L", 3: "RGB", 4: "RGBA"}[channels])
        elif image.mode not in ("L", "RGB", "RGBA"):
          image = image.convert(_target_mode(image))
        if size:
          image = image.resize((size, size), Image.Resampling.BILINEAR)
        pixels = np.asarray(image, np.uint8)
  except Exception as error:  # Pillow raises many types for bad files
    raise CorruptDataError(f"{path}: not a readable image ({type(error).__name__}: {error}).") \
        from error
  return pixels[..., None] if pixels.ndim == 2 else pixels


def _target_mode(image) -> str:
  """``"L"``, ``"RGB"`` or ``"RGBA"``: the plain mode of a palette, 1-bit, 16-bit, CMYK ... image."""
  if image.mode in ("1", "I", "I;16", "I;16B", "I;16L", "F", "LA", "La"):
    return "L"
  if image.mode in ("PA", "RGBa") or (image.mode == "P" and "transparency" in image.info):
    return "RGBA"
  return "RGB"


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
  """uint8 images ``(N, H, W, C)`` resized to ``(N, size, size, C)`` (bilinear, Pillow)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel

  images = np.asarray(images)
  if images.shape[1:3] == (size, size):
    return images
  out = np.empty((len(images), size, size, images.shape[3]), np.uint8)
  for i, pixels in enumerate(images):
    image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    resized = np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), np.uint8)
    out[i] = resized[..., None] if resized.ndim == 2 else resized
  return out


def _class_folders(root: pathlib.Path) -> list[pathlib.Path]:
  return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                key=lambda p: p.name)


def _image_files(folder: pathlib.Path) -> list[pathlib.Path]:
  return sorted(p for p in folder.iterdir()
                if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _read_split(files: list[tuple[pathlib.Path, int]], size: int, what: str) -> np.ndarray:
  """The images of ``files`` stacked; one shape and channel count, else an error naming two files."""
  images, first = [], None
  for i, (path, _) in enumerate(files):
    pixels = read_image(path, size)
    if first is None:
      first = (path, pixels.shape)
    elif pixels.shape != first[1]:
      _, shape = first
      if pixels.shape[2] != shape[2]:
        raise CorruptDataError(
            f"{what}: mixed channel counts: {first[0]} has {shape[2]}, {path} has "
            f"{pixels.shape[2]} (1 = grey, 3 = RGB, 4 = RGBA). Convert the images to one mode.")
      raise CorruptDataError(
          f"{what}: mixed image sizes: {first[0]} is {shape[1]}x{shape[0]}, {path} is "
          f"{pixels.shape[1]}x{pixels.shape[0]}. Set config.image_size (image_size=) to resize "
          "them all to one square size.")
    images.append(pixels)
    if (i + 1) % 10000 == 0:
      logging.info("%s: read %d of %d images", what, i + 1, len(files))
  return np.stack(images)


def _list_classes(root: pathlib.Path, class_names=None) -> tuple[list[str], list[tuple]]:
  """``(class names, [(file, label)])`` of a folder of class folders."""
  folders = _class_folders(root)
  if class_names is None:
    class_names = [folder.name for folder in folders]
    if not folders:
      raise DataNotFoundError(f"{root} holds no class folders (one sub-folder of images per class).")
  index = {name: k for k, name in enumerate(class_names)}
  files = []
  for folder in folders:
    if folder.name not in index:
      raise CorruptDataError(f"{folder}: a class absent from the training folder "
                             f"({', '.join(class_names[:10])}{', ...' if len(class_names) > 10 else ''}).")
    images = _image_files(folder)
    if not images:
      raise CorruptDataError(f"{folder}: the class {folder.name!r} holds no image files "
                             f"({', '.join(IMAGE_EXTENSIONS)}).")
    files += [(path, index[folder.name]) for path in images]
  return list(class_names), files


def load_image_folder(path: str | os.PathLike, *, test_fraction: float = 0.2,
                      image_size: int = 0, split_seed: int = 0,
                      name: str | None = None) -> Dataset:
  """A dataset from a folder of class folders of image files.

  Args:
    path: ``PATH`` with ``train/`` and ``test/`` (each one folder per class),
      or with the class folders themselves.
    test_fraction: without ``train/`` and ``test/``: the share of each
      class held out as the test split (at least one image per class), drawn
      with ``split_seed``: the same images for every run.
    image_size: when positive, every image is resized to a square of this
      size (needed when the files differ in size).
    split_seed: the held-out split's seed.
    name: the dataset's name (default ``"folder:PATH"``).

  Returns:
    The dataset, with the class folders' names as ``class_names``.

  Raises:
    DataNotFoundError: ``path`` is not a folder, or holds no class folders.
    CorruptDataError: an empty class folder, an unreadable or truncated image,
      mixed channel counts or sizes (each naming the files), or fewer than 2
      classes.
    ValueError: ``test_fraction`` outside (0, 1).
  """
  root = pathlib.Path(path).expanduser().resolve()
  name = name or f"folder:{path}"
  if not root.is_dir():
    raise DataNotFoundError(f"{root} is not a folder (dataset {name!r}).")
  if (root / "train").is_dir() and (root / "test").is_dir():
    class_names, train_files = _list_classes(root / "train")
    _, test_files = _list_classes(root / "test", class_names)
  else:
    if not 0 < test_fraction < 1:
      raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}.")
    class_names, files = _list_classes(root)
    labels = np.asarray([label for _, label in files])
    rng = np.random.default_rng(split_seed)
    test_index = []
    for k in range(len(class_names)):
      members = np.flatnonzero(labels == k)
      if len(members) < 2:
        raise CorruptDataError(f"{root / class_names[k]}: one image; a class needs at least 2 "
                               "(one to train on, one to test).")
      count = min(max(1, int(round(test_fraction * len(members)))), len(members) - 1)
      test_index += rng.choice(members, count, replace=False).tolist()
    held_out = set(test_index)
    train_files = [f for i, f in enumerate(files) if i not in held_out]
    test_files = [files[i] for i in sorted(held_out)]
  if len(class_names) < 2:
    raise CorruptDataError(f"{root}: one class ({class_names[0]!r}); metric learning needs at "
                           "least 2.")
  logging.info("Reading %d + %d images of %d classes from %s", len(train_files), len(test_files),
               len(class_names), root)
  x_train = _read_split(train_files, image_size, f"{root} (train)")
  x_test = _read_split(test_files, image_size, f"{root} (test)")
  if x_train.shape[1:] != x_test.shape[1:]:
    raise CorruptDataError(f"{root}: train images are {x_train.shape[1:]}, test images "
                           f"{x_test.shape[1:]}. Set config.image_size to resize both.")
  return Dataset.from_arrays(name, x_train, np.asarray([label for _, label in train_files]),
                             x_test, np.asarray([label for _, label in test_files]),
                             class_names=class_names, source=str(root))


def load_npz(path: str | os.PathLike, *, name: str | None = None) -> Dataset:
  """A dataset from an ``.npz`` of ``x_train``, ``y_train``, ``x_test``, ``y_test`` (+ ``class_names``).

  Read with ``allow_pickle=False``: object arrays are refused, nothing in the
  file can run code.

  Raises:
    DataNotFoundError: no such file.
    CorruptDataError: not a readable ``.npz``, a missing or object array.
    ValueError: arrays that do not make a dataset
      (:meth:`~sphereembed.data.Dataset.from_arrays`), naming the file.
  """
  where = pathlib.Path(path).expanduser().resolve()
  if not where.is_file():
    raise DataNotFoundError(f"{where} does not exist (dataset {name or f'npz:{path}'!r}).")
  keys = ("x_train", "y_train", "x_test", "y_test")
  try:
    with np.load(where, allow_pickle=False) as archive:
      missing = [key for key in keys if key not in archive.files]
      if missing:
        raise CorruptDataError(f"{where} lacks the array(s) {', '.join(missing)} (it holds "
                               f"{', '.join(archive.files) or 'nothing'}).")
      arrays = {key: archive[key] for key in keys}
      class_names = archive["class_names"].tolist() if "class_names" in archive.files else None
  except CorruptDataError:
    raise
  except Exception as error:  # zipfile, ValueError for object arrays, OSError
    raise CorruptDataError(f"{where}: not a readable .npz of plain arrays "
                           f"({type(error).__name__}: {error}).") from error
  return Dataset.from_arrays(name or f"npz:{path}", **arrays, class_names=class_names,
                             source=str(where))


def load_tfds_images(spec: str, tfds_data_dir: str | os.PathLike | None = None, *,
                     download: bool = False, name: str | None = None) -> Dataset:
  """A TFDS image classification dataset: ``spec`` is ``"NAME"`` or ``"NAME:CONFIG"``.

  Read without TensorFlow (``builder.as_data_source()``), so the dataset must
  be prepared in the ``array_record`` format, or ``download`` set on a
  machine with internet.

  Raises:
    DataNotFoundError: TFDS cannot provide it (the message says why).
    CorruptDataError: its features are not ``(image, label)``.
  """
  from sphereembed.data import sources  # pylint: disable=import-outside-toplevel

  tfds_name = spec.replace(":", "/", 1)
  name = name or f"tfds:{spec}"
  builder, why = sources.tfds_builder(tfds_name, tfds_data_dir, download=download)
  if builder is None:
    raise DataNotFoundError(
        f"TFDS cannot provide {tfds_name}: {why}. Prepare it with `tfds build {tfds_name} "
        "--file_format=array_record --data_dir=/path` and pass --config.tfds_data_dir=/path, or "
        "set --config.download=True on a machine with internet.")
  info = builder.info
  image_key, label_key = info.supervised_keys or ("image", "label")
  if image_key not in info.features or label_key not in info.features:
    raise CorruptDataError(f"TFDS {tfds_name}: expected (image, label) features, found "
                           f"{sorted(info.features)}.")
  splits = list(info.splits)
  train_split = "train" if "train" in splits else splits[0]
  test_split = "test" if "test" in splits else next(s for s in splits if s != train_split)
  arrays = {}
  for key, split in (("train", train_split), ("test", test_split)):
    source = builder.as_data_source(split=split)
    records = [source[i] for i in range(len(source))]
    arrays[f"x_{key}"] = np.stack([np.asarray(r[image_key]) for r in records])
    arrays[f"y_{key}"] = np.asarray([r[label_key] for r in records])
  class_names = getattr(info.features[label_key], "names", None)
  return Dataset.from_arrays(name, **arrays, class_names=class_names,
                             source=f"tfds:{tfds_name} ({builder.data_dir})")
