"""Image classification datasets as NumPy arrays, from local IDX folders or TFDS.

:func:`load_dataset` looks for the data in this order and uses the first
place that has it:

1. ``data_dir`` (``--config.data_dir``), when given: a canonical IDX folder
   (the four files of :data:`IDX_FILES`, gzip-compressed or not) or a folder
   that contains the dataset's folder (``mnist/``, ``fashion-mnist/``,
   ``mnist10k/``). A ``data_dir`` that does not hold the data is an error;
   the search does not go on silently.
2. The environment variable ``SPHEREEMBED_DATA_DIR`` (same two forms).
3. The default roots of :func:`default_data_roots`: ``../shared/data`` next to
   the repository and next to the working directory, and ``./data``.
4. TFDS, without TensorFlow (through ``builder.as_data_source()``): a dataset
   already prepared in ``tfds_data_dir`` (TFDS's default folder when ``None``)
   in the ``array_record`` format, or, with ``download=True`` and a reachable
   network, a fresh download.

When none has it, :class:`DataNotFoundError` lists every way to provide the
data and every place that was tried. Nothing is cached between calls.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import socket
import threading
import numpy as np

from sphereembed.data.idx import CorruptDataError, read_idx

__all__ = [
    "DATASETS",
    "DATA_DIR_ENV",
    "IDX_FILES",
    "USER_DATA_PREFIXES",
    "DataNotFoundError",
    "Dataset",
    "Split",
    "default_data_roots",
    "load_dataset",
    "load_idx_folder",
    "as_uint8_images",
    "check_dataset_name",
    "load_tfds",
    "tfds_builder",
]

DATA_DIR_ENV = "SPHEREEMBED_DATA_DIR"

#: The dataset-name prefixes of your own data (:mod:`sphereembed.data.files`).
USER_DATA_PREFIXES = ("folder:", "npz:", "tfds:")

#: The canonical MNIST file names: (split, images file, labels file).
IDX_FILES: tuple[tuple[str, str, str], ...] = (
    ("train", "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    ("test", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
)

# Where `download=True` checks that the network is reachable (TFDS's bucket).
_PROBE_ADDRESS = ("storage.googleapis.com", 443)
_PROBE_TIMEOUT_S = 2.0


class DataNotFoundError(FileNotFoundError):
  """No source provides the requested dataset; the message says how to provide it."""


@dataclasses.dataclass(frozen=True)
class Split:
  """One split of an image classification dataset.

  Attributes:
    images: uint8 array of shape ``(N, H, W, C)``.
    labels: int32 array of shape ``(N,)`` (other integer dtypes are converted).
  """

  images: np.ndarray
  labels: np.ndarray

  def __post_init__(self):
    images, labels = np.asarray(self.images), np.asarray(self.labels)
    if images.dtype != np.uint8 or images.ndim != 4:
      raise ValueError(
          f"images must be uint8 of shape (N, H, W, C), got {images.dtype} {images.shape}.")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
      raise ValueError(f"labels must be integers of shape (N,), got {labels.dtype} {labels.shape}.")
    if len(images) != len(labels):
      raise ValueError(f"{len(images)} images but {len(labels)} labels.")
    if labels.dtype != np.int32:
      info = np.iinfo(np.int32)
      if labels.size and (labels.min() < info.min or labels.max() > info.max):
        raise ValueError("labels do not fit in int32.")
      labels = labels.astype(np.int32)
    object.__setattr__(self, "images", images)
    object.__setattr__(self, "labels", labels)

  def __len__(self) -> int:
    return len(self.labels)


@dataclasses.dataclass(frozen=True)
class Dataset:
  """An image classification dataset with a train and a test split.

  Build one from your own arrays with :meth:`from_arrays`, or from a folder of
  images or an ``.npz`` file with :func:`load_dataset` (``"folder:PATH"``,
  ``"npz:PATH"``).

  Attributes:
    name: the dataset's name, as given to :func:`load_dataset`.
    train: the training split.
    test: the test split.
    num_classes: labels lie in ``[0, num_classes)``.
    source: where the data came from (a folder, or ``"tfds:<name> (<folder>)"``).
    class_names: the name of each class (``None``: the class indices are the names).
  """

  name: str
  train: Split
  test: Split
  num_classes: int
  source: str
  class_names: tuple[str, ...] | None = None

  def __post_init__(self):
    if self.num_classes < 1:
      raise ValueError(f"num_classes must be positive, got {self.num_classes}.")
    if self.class_names is not None:
      names = tuple(str(name) for name in self.class_names)
      if len(names) != self.num_classes:
        raise ValueError(f"{len(names)} class names for {self.num_classes} classes.")
      if len(set(names)) != len(names):
        raise ValueError(f"class names must be distinct, got {list(names)}.")
      object.__setattr__(self, "class_names", names)
    for split_name, split in (("train", self.train), ("test", self.test)):
      labels = split.labels
      if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
        raise ValueError(
            f"{self.name} {split_name} labels must lie in [0, {self.num_classes}), "
            f"found [{labels.min()}, {labels.max()}].")
    if self.train.images.shape[1:] != self.test.images.shape[1:]:
      raise ValueError(
          f"train images are {self.train.images.shape[1:]} but test images are "
          f"{self.test.images.shape[1:]}.")

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """``(H, W, C)`` of the images."""
    return tuple(self.train.images.shape[1:])

  def names(self) -> tuple[str, ...]:
    """:attr:`class_names`, or ``("0", "1", ...)`` when the dataset has none."""
    return self.class_names or tuple(str(k) for k in range(self.num_classes))

  @classmethod
  def from_arrays(cls, name: str, x_train, y_train, x_test, y_test, *,
                  class_names=None, source: str = "arrays") -> "Dataset":
    """A dataset from arrays: images ``(N, H, W)`` or ``(N, H, W, C)``, labels ``(N,)``.

    Images may be uint8, or floats in [0, 1] (scaled by 255) or in [0, 255];
    they are stored as uint8. Labels are integers in ``[0, K)``, or strings
    (then the sorted distinct strings are the class names). Every class must
    have training images.

    Args:
      name: the dataset's name (recorded in the run's config).
      x_train, y_train, x_test, y_test: the two splits.
      class_names: ``K`` names for integer labels (default: none).
      source: where the arrays came from, for messages and ``metrics.json``.

    Returns:
      The dataset, ``num_classes`` = the number of classes.

    Raises:
      ValueError: a message naming the array (and ``source``) for images that
        are not 3-D or 4-D, non-finite or out-of-range pixels, labels that are
        not integers or strings, mismatched lengths, fewer than 2 classes, a
        class without training images, or a test label unknown to training.

    Example:
      >>> import numpy as np
      >>> images = np.zeros((6, 8, 8), np.uint8)
      >>> data = Dataset.from_arrays("toy", images, ["cat", "dog", "cat", "dog", "cat", "dog"],
      ...                            images[:2], ["dog", "cat"])
      >>> data.class_names, data.num_classes, data.image_shape, data.test.labels.tolist()
      (('cat', 'dog'), 2, (8, 8, 1), [1, 0])
    """
    x = {"x_train": x_train, "x_test": x_test}
    y = {"y_train": np.asarray(y_train), "y_test": np.asarray(y_test)}
    images = {key: as_uint8_images(value, f"{source}: {key}") for key, value in x.items()}
    for key in y:
      if y[key].ndim != 1:
        raise ValueError(f"{source}: {key} must have shape (N,), got {y[key].shape}.")
    for split in ("train", "test"):
      if len(images[f"x_{split}"]) != len(y[f"y_{split}"]):
        raise ValueError(f"{source}: x_{split} holds {len(images[f'x_{split}'])} images but "
                         f"y_{split} {len(y[f'y_{split}'])} labels.")
    for key, value in images.items():
      if len(value) == 0:
        raise ValueError(f"{source}: {key} holds no images.")
    if images["x_train"].shape[1:] != images["x_test"].shape[1:]:
      raise ValueError(f"{source}: x_train images are {images['x_train'].shape[1:]} but x_test "
                       f"images {images['x_test'].shape[1:]}.")
    kinds = {y[key].dtype.kind for key in y if y[key].size}
    if kinds and kinds <= {"U", "S"}:
      if class_names is not None:
        raise ValueError(f"{source}: string labels are their own class names; drop class_names.")
      class_names = sorted(set(y["y_train"].astype(str).tolist()))
      index = {label: k for k, label in enumerate(class_names)}
      unknown = sorted(set(y["y_test"].astype(str).tolist()) - set(index))
      if unknown:
        raise ValueError(f"{source}: y_test has labels without training images: {unknown[:5]}.")
      labels = {key: np.asarray([index[v] for v in value.astype(str).tolist()], np.int64)
                for key, value in y.items()}
      num_classes = len(class_names)
    else:
      for key, value in y.items():
        if value.size and value.dtype.kind not in "iu":
          raise ValueError(f"{source}: {key} must hold integer (or string) labels, found "
                           f"{value.dtype}.")
        if value.size and value.min() < 0:
          raise ValueError(f"{source}: {key} has the negative label {value.min()}.")
      labels = {key: value.astype(np.int64) for key, value in y.items()}
      largest = max((int(value.max()) for value in labels.values() if value.size), default=-1)
      num_classes = len(class_names) if class_names is not None else largest + 1
      if largest >= num_classes:
        raise ValueError(f"{source}: label {largest} but only {num_classes} class names.")
    if num_classes < 2:
      raise ValueError(f"{source}: {num_classes} class(es); metric learning needs at least 2.")
    counts = np.bincount(labels["y_train"], minlength=num_classes)
    if np.any(counts == 0):
      missing = np.flatnonzero(counts == 0)
      named = [class_names[k] if class_names is not None else int(k) for k in missing[:5]]
      raise ValueError(f"{source}: class(es) {named} have no training images "
                       f"({len(missing)} of {num_classes}).")
    return cls(name, Split(images["x_train"], labels["y_train"]),
               Split(images["x_test"], labels["y_test"]), num_classes, source,
               tuple(class_names) if class_names is not None else None)


def as_uint8_images(images, what: str) -> np.ndarray:
  """``(N, H, W, C)`` uint8 from uint8, integer or float ``(N, H, W)`` / ``(N, H, W, C)`` images.

  Floats in [0, 1] are scaled by 255, floats beyond 1 are taken as 0..255
  values; anything else (NaN, negative, above 255) is a ``ValueError``
  naming ``what``.
  """
  images = np.asarray(images)
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4:
    raise ValueError(f"{what} must have shape (N, H, W) or (N, H, W, C), got {images.shape}.")
  if images.dtype == np.uint8:
    return images
  if images.dtype.kind == "f":
    if images.size and not np.all(np.isfinite(images)):
      raise ValueError(f"{what} holds NaN or infinite pixels.")
    low, high = (float(images.min()), float(images.max())) if images.size else (0.0, 0.0)
    if low < 0 or high > 255:
      raise ValueError(f"{what}: float pixels must lie in [0, 1] or [0, 255], found "
                       f"[{low:g}, {high:g}].")
    scale = 255.0 if high <= 1 else 1.0
    return np.clip(np.rint(images.astype(np.float64) * scale), 0, 255).astype(np.uint8)
  if images.dtype.kind in "iu":
    if images.size and (images.min() < 0 or images.max() > 255):
      raise ValueError(f"{what}: integer pixels must lie in [0, 255], found "
                       f"[{images.min()}, {images.max()}].")
    return images.astype(np.uint8)
  raise ValueError(f"{what} must hold uint8 or float pixels, found {images.dtype}.")


@dataclasses.dataclass(frozen=True)
class _Spec:
  folders: tuple[str, ...]  # local IDX folder names; () = TFDS only
  tfds_name: str | None  # None = local only
  num_classes: int
  image_shape: tuple[int, int, int]


#: The datasets :func:`load_dataset` knows.
DATASETS: dict[str, _Spec] = {
    "mnist": _Spec(("mnist",), "mnist", 10, (28, 28, 1)),
    "fashion_mnist": _Spec(("fashion-mnist", "fashion_mnist"), "fashion_mnist", 10, (28, 28, 1)),
    "mnist10k": _Spec(("mnist10k",), None, 10, (28, 28, 1)),
    "cifar10": _Spec((), "cifar10", 10, (32, 32, 3)),
    "cifar100": _Spec((), "cifar100", 100, (32, 32, 3)),
}


def default_data_roots() -> tuple[pathlib.Path, ...]:
  """The folders searched after ``data_dir`` and ``$SPHEREEMBED_DATA_DIR``.

  ``<repository>/../shared/data``, ``<cwd>/../shared/data`` and ``<cwd>/data``,
  where ``<repository>`` is the folder holding the ``sphereembed`` package;
  duplicates removed.
  """
  repository = pathlib.Path(__file__).resolve().parents[2]
  cwd = pathlib.Path.cwd()
  roots: list[pathlib.Path] = []
  for root in (repository.parent / "shared" / "data", cwd.parent / "shared" / "data", cwd / "data"):
    root = root.resolve()
    if root not in roots:
      roots.append(root)
  return tuple(roots)


# ----------------------------------------------------------------------------- local IDX folders


def _idx_file(folder: pathlib.Path, name: str) -> pathlib.Path | None:
  """``folder/name`` (gzip name) or its uncompressed twin, whichever exists."""
  for candidate in (folder / name, folder / name.removesuffix(".gz")):
    if candidate.is_file():
      return candidate
  return None


def _missing_files(folder: pathlib.Path) -> list[str]:
  return [name for _, *names in IDX_FILES for name in names if _idx_file(folder, name) is None]


def load_idx_folder(
    folder: str | os.PathLike,
    *,
    num_classes: int,
    image_shape: tuple[int, int, int] | None = None,
    name: str | None = None,
) -> Dataset:
  """Loads a canonical IDX folder (the four files of :data:`IDX_FILES`).

  Each file may be gzip-compressed or not (with or without the ``.gz`` suffix).
  Images must be uint8 of shape ``(N, H, W)`` or ``(N, H, W, C)``; ``(N, H, W)``
  gets a channel axis of 1.

  Args:
    folder: the folder holding the four files.
    num_classes: labels must lie in ``[0, num_classes)``.
    image_shape: the expected ``(H, W, C)``; ``None`` accepts any.
    name: the dataset's name (default: the folder's name).

  Returns:
    The dataset; ``source`` is the folder's absolute path.

  Raises:
    DataNotFoundError: a file is missing.
    CorruptDataError: a file is not valid IDX, or the files do not fit
      together (counts, shapes, dtypes, label range); the message names the file.
  """
  folder = pathlib.Path(folder).resolve()
  missing = _missing_files(folder)
  if missing:
    raise DataNotFoundError(f"{folder} lacks the IDX file(s) {', '.join(missing)}.")
  splits = {}
  for split_name, images_name, labels_name in IDX_FILES:
    images_path, labels_path = _idx_file(folder, images_name), _idx_file(folder, labels_name)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
      raise CorruptDataError(
          f"{images_path}: expected uint8 images of shape (N, H, W) or (N, H, W, C), "
          f"found {images.dtype} {images.shape}.")
    if images.ndim == 3:
      images = images[..., None]
    if len(images) == 0:
      raise CorruptDataError(f"{images_path}: the {split_name} split holds no images.")
    if image_shape is not None and images.shape[1:] != tuple(image_shape):
      raise CorruptDataError(
          f"{images_path}: expected images of shape {tuple(image_shape)}, "
          f"found {images.shape[1:]}.")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
      raise CorruptDataError(
          f"{labels_path}: expected integer labels of shape (N,), "
          f"found {labels.dtype} {labels.shape}.")
    if len(labels) != len(images):
      raise CorruptDataError(
          f"{labels_path}: {len(labels)} labels but {images_path.name} holds {len(images)} images.")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
      raise CorruptDataError(
          f"{labels_path}: labels must lie in [0, {num_classes}), "
          f"found [{labels.min()}, {labels.max()}].")
    splits[split_name] = Split(images, labels.astype(np.int32))
  return Dataset(name or folder.name, splits["train"], splits["test"], num_classes, str(folder))


def _find_idx_folder(spec: _Spec, where: pathlib.Path) -> tuple[pathlib.Path | None, str]:
  """The IDX folder for ``spec`` at ``where`` (itself or a subfolder), else why not."""
  if not where.is_dir():
    return None, "does not exist" if not where.exists() else "is not a folder"
  candidates = [where] + [where / folder for folder in spec.folders]
  partial = []
  for candidate in candidates:
    missing = _missing_files(candidate)
    if not missing:
      return candidate, "found"
    if len(missing) < 4 and candidate.is_dir():
      partial.append(f"{candidate} lacks {', '.join(missing)}")
  if partial:
    return None, "; ".join(partial)
  names = " or ".join(f"{folder}/" for folder in spec.folders)
  return None, f"neither the IDX files nor a {names} folder"


# ----------------------------------------------------------------------------- TFDS


def _network_reachable(address: tuple[str, int] = _PROBE_ADDRESS,
                       timeout: float = _PROBE_TIMEOUT_S) -> bool:
  """Whether a TCP connection to ``address`` opens within ``timeout`` seconds.

  The probe runs in a daemon thread, so that a hanging DNS lookup (which the
  socket timeout does not bound) cannot block the caller either.
  """
  result = []

  def probe():
    try:
      with socket.create_connection(address, timeout=timeout):
        result.append(True)
    except OSError:
      result.append(False)

  thread = threading.Thread(target=probe, daemon=True)
  thread.start()
  thread.join(timeout)
  return bool(result and result[0])


def _split_from_source(source) -> Split:
  """Reads a TFDS random-access data source of ``{"image", "label"}`` records."""
  n = len(source)
  if n == 0:
    raise ValueError("the split is empty.")
  records = [source[i] for i in range(n)]
  images = np.stack([np.asarray(r["image"], dtype=np.uint8) for r in records])
  labels = np.asarray([r["label"] for r in records], dtype=np.int32)
  return Split(images, labels)


def tfds_builder(tfds_name: str, tfds_data_dir: str | os.PathLike | None = None, *,
                 download: bool = False):
  """A prepared TFDS builder for ``tfds_name`` (``"name"`` or ``"name/config"``), or ``(None, why)``.

  Prepares it first when ``download`` is set and the network answers within
  2 s. Never raises for a missing dataset; never downloads otherwise.

  Returns:
    ``(builder, "found")`` or ``(None, reason)``.
  """
  if tfds_data_dir is not None:
    tfds_data_dir = os.fspath(tfds_data_dir)
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except Exception as e:  # pylint: disable=broad-except
    return None, f"tensorflow_datasets cannot be imported ({type(e).__name__}: {e})"
  try:
    builder = tfds.builder(tfds_name, data_dir=tfds_data_dir)
    where = str(builder.data_dir)
    prepared = builder.is_prepared()
  except Exception as e:  # pylint: disable=broad-except
    return None, f"no TFDS builder ({type(e).__name__}: {e})"
  if not prepared:
    if not download:
      return None, f"not prepared in {where}, and download=False"
    if not _network_reachable():
      return None, (f"not prepared in {where}; download=True but {_PROBE_ADDRESS[0]} is not "
                    f"reachable within {_PROBE_TIMEOUT_S:g} s (no internet?)")
    try:
      builder.download_and_prepare(file_format="array_record")
    except Exception as e:  # pylint: disable=broad-except
      return None, f"download into {where} failed ({type(e).__name__}: {e})"
  return builder, "found"


def load_tfds(name: str, tfds_data_dir: str | os.PathLike | None = None, *,
              download: bool = False) -> tuple[Dataset | None, str]:
  """The dataset from TFDS, or ``(None, why it is not available)``.

  The TFDS step of :func:`load_dataset` (and of
  :func:`sphereembed.data.cifar.load_cifar`) on its own: the dataset must be
  prepared in ``tfds_data_dir`` in the ``array_record`` format, which reads
  without TensorFlow, or ``download`` must be set.

  Args:
    name: a name of :data:`DATASETS` that TFDS provides (``"mnist"``,
      ``"fashion_mnist"``, ``"cifar10"``, ``"cifar100"``).
    tfds_data_dir: TFDS's data folder (TFDS's default when ``None``).
    download: let TFDS download and prepare the dataset when it is not
      prepared; only attempted when the network answers within 2 s.

  Returns:
    ``(dataset, "found")``, or ``(None, reason)`` where ``reason`` says why
    TFDS could not provide it (not installed, not prepared, no network, ...).
    Never raises for a missing or unreadable dataset, and never starts a
    download unless ``download`` is set and the network answers.

  Raises:
    ValueError: ``name`` is unknown or not in TFDS (``"mnist10k"``).
  """
  if name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}.")
  spec = DATASETS[name]
  if not spec.tfds_name:
    raise ValueError(f"{name} is not in TFDS: it must come from a local IDX folder.")
  builder, why = tfds_builder(spec.tfds_name, tfds_data_dir, download=download)
  if builder is None:
    return None, why
  where = str(builder.data_dir)
  try:
    train = _split_from_source(builder.as_data_source(split="train"))
    test = _split_from_source(builder.as_data_source(split="test"))
  except Exception as e:  # pylint: disable=broad-except
    return None, (f"prepared in {where} but not readable without TensorFlow "
                  f"({type(e).__name__}: {e}); rebuild it with --file_format=array_record")
  return Dataset(name, train, test, spec.num_classes, f"tfds:{spec.tfds_name} ({where})"), "found"


# ----------------------------------------------------------------------------- load_dataset


def _help_message(name: str, spec: _Spec, tried: list[str]) -> str:
  lines = [f"Dataset {name!r} was not found."]
  if spec.tfds_name:
    lines[0] += (" On a machine with internet, the quickest fix is to add --config.download=True "
                 "(TFDS downloads it once).")
  lines.append("Ways to provide it:")
  if spec.folders:
    files = ", ".join(f for _, *names in IDX_FILES for f in names)
    folder = spec.folders[0]
    lines += [
        f"  * --config.data_dir=/path (load_dataset(..., data_dir=...)): a folder holding the four "
        f"canonical IDX files {files} (gzip or uncompressed), or a folder containing "
        f"{folder}/ with them;",
        f"  * the environment variable {DATA_DIR_ENV}=/path (same two forms);",
        f"  * the default location ../shared/data/{folder}/ next to the repository or the working "
        f"directory (or ./data/{folder}/);",
    ]
  else:
    lines.append(
        f"  ({name} is read through TFDS only; data_dir and {DATA_DIR_ENV} are for IDX folders.)")
  if spec.tfds_name:
    lines.append(
        f"  * TFDS: --config.download=True (load_dataset(..., download=True)) on a machine with "
        f"internet, or prepare it beforehand with `tfds build {spec.tfds_name} "
        f"--file_format=array_record --data_dir=/path` and pass tfds_data_dir=/path "
        f"(--config.tfds_data_dir); TensorFlow is not needed.")
  else:
    lines.append(f"  ({name} is not in TFDS: it must come from a local IDX folder.)")
  lines.append("Tried:")
  lines += [f"  - {entry}" for entry in tried]
  return "\n".join(lines)


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    tfds_data_dir: str | os.PathLike | None = None,
    download: bool = False,
    test_fraction: float = 0.2,
    image_size: int = 0,
) -> Dataset:
  """Loads ``name`` from the first source that has it (see the module docstring).

  Args:
    name: one of ``"mnist"``, ``"fashion_mnist"``, ``"mnist10k"`` (local
      folders only), ``"cifar10"``, ``"cifar100"`` (TFDS only), or your own
      data: ``"folder:PATH"``, ``"npz:PATH"``, ``"tfds:NAME[:CONFIG]"``
      (:mod:`sphereembed.data.files`).
    data_dir: a canonical IDX folder or a folder containing the dataset's
      folder. When given, it must hold the data.
    tfds_data_dir: TFDS's data folder (TFDS's default when ``None``).
    download: let TFDS download the dataset when it is not prepared; only
      attempted when the network answers within 2 s.
    test_fraction: ``"folder:"`` data without ``train/`` and ``test/``: the
      share of each class held out for testing.
    image_size: when positive, every image is resized to this square size.

  Returns:
    The dataset: uint8 images ``(N, H, W, C)`` and int32 labels.

  Raises:
    ValueError: unknown ``name``.
    DataNotFoundError: no source has the dataset, or ``data_dir`` does not
      hold it. The message lists the ways to provide it and the places tried.
    CorruptDataError: a local folder has the files but they are invalid.
  """
  dataset = _load_any(name, data_dir, tfds_data_dir=tfds_data_dir, download=download,
                      test_fraction=test_fraction, image_size=image_size)
  if image_size and dataset.image_shape[:2] != (image_size, image_size):
    from sphereembed.data import files  # pylint: disable=import-outside-toplevel
    dataset = dataclasses.replace(
        dataset, train=Split(files.resize_images(dataset.train.images, image_size),
                             dataset.train.labels),
        test=Split(files.resize_images(dataset.test.images, image_size), dataset.test.labels))
  return dataset


def check_dataset_name(name: str) -> None:
  """Raises ``ValueError`` unless ``name`` is a known dataset or a ``folder:``/``npz:``/``tfds:`` one."""
  if name.startswith(USER_DATA_PREFIXES):
    if not name.split(":", 1)[1]:
      raise ValueError(f"dataset {name!r} lacks its path or name after the colon.")
    return
  if name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}, or your own data "
                     "as folder:PATH (a folder per class), npz:PATH (x_train, y_train, x_test, "
                     "y_test) or tfds:NAME[:CONFIG].")


def _load_any(name, data_dir, *, tfds_data_dir, download, test_fraction, image_size) -> Dataset:
  check_dataset_name(name)
  if name.startswith(USER_DATA_PREFIXES):
    from sphereembed.data import files  # pylint: disable=import-outside-toplevel
    kind, where = name.split(":", 1)
    if kind == "folder":
      return files.load_image_folder(where, test_fraction=test_fraction, image_size=image_size,
                                     name=name)
    if kind == "npz":
      return files.load_npz(where, name=name)
    return files.load_tfds_images(where, tfds_data_dir, download=download, name=name)
  spec = DATASETS[name]
  tried: list[str] = []

  def load_local(folder: pathlib.Path) -> Dataset:
    return load_idx_folder(
        folder, num_classes=spec.num_classes, image_shape=spec.image_shape, name=name)

  if data_dir is not None:
    where = pathlib.Path(data_dir).expanduser().resolve()
    if not spec.folders:
      raise DataNotFoundError(
          f"data_dir={os.fspath(data_dir)!r} was given, but {name} has no local IDX form.\n"
          + _help_message(name, spec, [f"data_dir {where}: {name} is read through TFDS only"]))
    folder, why = _find_idx_folder(spec, where)
    if folder is None:
      raise DataNotFoundError(
          f"data_dir={os.fspath(data_dir)!r} does not hold {name}: {why}.\n"
          + _help_message(name, spec, [f"data_dir {where}: {why}"]))
    return load_local(folder)
  tried.append("data_dir: not given")

  if spec.folders:
    env = os.environ.get(DATA_DIR_ENV)
    if env:
      where = pathlib.Path(env).expanduser().resolve()
      folder, why = _find_idx_folder(spec, where)
      if folder is not None:
        return load_local(folder)
      tried.append(f"${DATA_DIR_ENV}={env}: {why}")
    else:
      tried.append(f"${DATA_DIR_ENV}: not set")
    for root in default_data_roots():
      folder, why = _find_idx_folder(spec, root)
      if folder is not None:
        return load_local(folder)
      tried.append(f"default root {root}: {why}")

  if spec.tfds_name:
    dataset, why = load_tfds(name, tfds_data_dir, download=download)
    if dataset is not None:
      return dataset
    tried.append(f"TFDS {spec.tfds_name}: {why}")
  raise DataNotFoundError(_help_message(name, spec, tried))
