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
    "DataNotFoundError",
    "Dataset",
    "Split",
    "default_data_roots",
    "load_dataset",
    "load_idx_folder",
    "load_tfds",
]

DATA_DIR_ENV = "SPHEREEMBED_DATA_DIR"

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

  Attributes:
    name: the dataset's name, as given to :func:`load_dataset`.
    train: the training split.
    test: the test split.
    num_classes: labels lie in ``[0, num_classes)``.
    source: where the data came from (a folder, or ``"tfds:<name> (<folder>)"``).
  """

  name: str
  train: Split
  test: Split
  num_classes: int
  source: str

  def __post_init__(self):
    if self.num_classes < 1:
      raise ValueError(f"num_classes must be positive, got {self.num_classes}.")
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
  if tfds_data_dir is not None:
    tfds_data_dir = os.fspath(tfds_data_dir)
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except Exception as e:  # pylint: disable=broad-except
    return None, f"tensorflow_datasets cannot be imported ({type(e).__name__}: {e})"
  try:
    builder = tfds.builder(spec.tfds_name, data_dir=tfds_data_dir)
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
  try:
    train = _split_from_source(builder.as_data_source(split="train"))
    test = _split_from_source(builder.as_data_source(split="test"))
  except Exception as e:  # pylint: disable=broad-except
    return None, (f"prepared in {where} but not readable without TensorFlow "
                  f"({type(e).__name__}: {e}); rebuild it with --file_format=array_record")
  return Dataset(name, train, test, spec.num_classes, f"tfds:{spec.tfds_name} ({where})"), "found"


# ----------------------------------------------------------------------------- load_dataset


def _help_message(name: str, spec: _Spec, tried: list[str]) -> str:
  lines = [f"Dataset {name!r} was not found. Ways to provide it:"]
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
) -> Dataset:
  """Loads ``name`` from the first source that has it (see the module docstring).

  Args:
    name: one of ``"mnist"``, ``"fashion_mnist"``, ``"mnist10k"`` (local
      folders only), ``"cifar10"``, ``"cifar100"`` (TFDS only).
    data_dir: a canonical IDX folder or a folder containing the dataset's
      folder. When given, it must hold the data.
    tfds_data_dir: TFDS's data folder (TFDS's default when ``None``).
    download: let TFDS download the dataset when it is not prepared; only
      attempted when the network answers within 2 s.

  Returns:
    The dataset: uint8 images ``(N, H, W, C)`` and int32 labels.

  Raises:
    ValueError: unknown ``name``.
    DataNotFoundError: no source has the dataset, or ``data_dir`` does not
      hold it. The message lists the ways to provide it and the places tried.
    CorruptDataError: a local folder has the files but they are invalid.
  """
  if name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}.")
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
