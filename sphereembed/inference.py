"""Use a trained model: load it, embed, predict with calibrated confidence, abstain, search, export.

A finished run leaves its model in ``workdir/model/``: everything needed to
use it without the training config or optimiser state.

* ``model.json``: the format version, the network's own architecture
  settings, the input image shape, the class names, the metric, the kept
  :class:`~sphereembed.prediction.Calibration` (temperature, isotonic map,
  abstention threshold) and what it was trained and measured on;
* ``arrays.msgpack``: parameters, batch-norm statistics and class centroids
  (Flax's msgpack: plain arrays, nothing in it can run code), with its
  SHA-256 in ``model.json``.

:func:`load_model` reads it into a :class:`TrainedModel`; :class:`Index` is a
searchable gallery of embeddings with open-set identification;
:meth:`TrainedModel.export` writes the network as a serialised
``jax.export`` function (StableHLO) that :func:`load_exported` runs without
sphereembed's model code.

Example (after ``python -m experiments.mnist --config=configs/ncl_2d.py
--workdir=/tmp/ncl_2d``)::

  from sphereembed import inference
  model = inference.load_model("/tmp/ncl_2d")
  prediction = model.predict(images)          # uint8 (N, 28, 28) or (N, 28, 28, 1)
  prediction.label, prediction.confidence, prediction.abstain
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from typing import Any, Hashable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sphereembed import geometry
from sphereembed.data import files as data_files
from sphereembed.data import sources as data_sources
from sphereembed.prediction import Calibration, Prediction, confidence_scores
from sphereembed.training.checkpoints import file_sha256

__all__ = [
    "FORMAT_VERSION",
    "ExportedModel",
    "Index",
    "ModelArtifact",
    "ModelFormatError",
    "ModelNotFoundError",
    "Prediction",
    "TrainedModel",
    "load_exported",
    "load_model",
]

FORMAT = "sphereembed-model"
#: The version of the files :class:`ModelArtifact` writes; :func:`load_model` reads this one.
FORMAT_VERSION = 1
MODEL_FOLDER = "model"
_ARRAYS_FILE = "arrays.msgpack"
_EXPORT_FILE = "network.stablehlo"
_UNKNOWN = "unknown"


class ModelNotFoundError(FileNotFoundError):
  """The folder holds no finished model."""


class ModelFormatError(ValueError):
  """The model's files are damaged, or were written by another version of sphereembed."""


# ----------------------------------------------------------------------------
# Architecture: the network's own settings, rebuilt without the config.


def _model_classes() -> dict[str, type]:
  from sphereembed.models import SmallCNN  # pylint: disable=import-outside-toplevel
  from sphereembed.models.resnet import CifarResNet  # pylint: disable=import-outside-toplevel
  return {"SmallCNN": SmallCNN, "CifarResNet": CifarResNet}


def _to_json(value):
  if isinstance(value, (tuple, list)):
    return [_to_json(v) for v in value]
  if isinstance(value, (bool, int, float, str)) or value is None:
    return value
  try:
    return {"dtype": np.dtype(value).name}
  except TypeError as error:
    raise TypeError(f"cannot record the model setting {value!r}.") from error


def _from_json(value):
  if isinstance(value, list):
    return tuple(_from_json(v) for v in value)
  if isinstance(value, dict) and set(value) == {"dtype"}:
    return jnp.dtype(value["dtype"])
  return value


def architecture(model) -> dict[str, Any]:
  """The network's class and constructor settings, as JSON (:func:`build_model` rebuilds it)."""
  name = type(model).__name__
  if name not in _model_classes():
    raise ValueError(f"cannot save a {name}; known networks: {', '.join(_model_classes())}.")
  settings = {field.name: _to_json(getattr(model, field.name))
              for field in dataclasses.fields(model)
              if field.init and field.name not in ("parent", "name")}
  return {"class": name, "settings": settings}


def build_model(description: dict[str, Any]):
  """The network of :func:`architecture`'s description."""
  classes = _model_classes()
  if description.get("class") not in classes:
    raise ModelFormatError(f"unknown network {description.get('class')!r}; this version knows "
                           f"{', '.join(classes)}.")
  settings = {k: _from_json(v) for k, v in description.get("settings", {}).items()}
  try:
    return classes[description["class"]](**settings)
  except TypeError as error:
    raise ModelFormatError(f"the network settings do not fit {description['class']} ({error}).") \
        from error


# ----------------------------------------------------------------------------
# Writing.


def _write_folder(folder: str, write) -> None:
  """Writes a folder atomically: into a sibling, then renamed over ``folder``."""
  folder = os.path.abspath(folder)
  staging, old = f"{folder}.partial-{os.getpid()}", f"{folder}.old-{os.getpid()}"
  shutil.rmtree(staging, ignore_errors=True)
  os.makedirs(staging)
  write(staging)
  if os.path.exists(folder):
    os.replace(folder, old)
  os.replace(staging, folder)
  shutil.rmtree(old, ignore_errors=True)


@dataclasses.dataclass
class ModelArtifact:
  """What a finished run keeps of its model (written by the runner as ``workdir/model``).

  Attributes:
    model: the Flax network (its settings are saved, not the training config).
    params: its parameters.
    batch_stats: its batch-norm statistics (``{}`` without batch norm).
    centroids: ``(K, D)`` unit class centroids.
    class_names: ``K`` names.
    image_shape: ``(H, W, C)`` of the images it was trained on.
    metric: the distance of its nearest-centroid predictions.
    calibration: the kept calibration and abstention threshold.
    info: what it was trained on and measured (dataset, method, test
      accuracy, ...), JSON-ready.
  """

  model: Any
  params: Any
  batch_stats: Any
  centroids: Any
  class_names: Sequence[str]
  image_shape: tuple[int, int, int]
  metric: str
  calibration: Calibration
  info: dict[str, Any] = dataclasses.field(default_factory=dict)

  def save(self, folder: str) -> None:
    """Writes ``model.json`` and ``arrays.msgpack`` into ``folder`` (replaced atomically)."""
    import flax.serialization  # pylint: disable=import-outside-toplevel

    arrays = jax.tree_util.tree_map(np.asarray, {
        "params": self.params, "batch_stats": self.batch_stats or {},
        "centroids": self.centroids})
    description = {
        "format": FORMAT, "version": FORMAT_VERSION,
        "architecture": architecture(self.model),
        "image_shape": [int(n) for n in self.image_shape],
        "class_names": [str(name) for name in self.class_names],
        "metric": self.metric,
        "calibration": self.calibration.to_dict(),
        "info": self.info,
    }

    def write(staging):
      path = os.path.join(staging, _ARRAYS_FILE)
      with open(path, "wb") as f:
        f.write(flax.serialization.msgpack_serialize(arrays))
      description["arrays"] = {"file": _ARRAYS_FILE, "sha256": file_sha256(path)}
      with open(os.path.join(staging, "model.json"), "w") as f:
        json.dump(description, f, indent=1)

    _write_folder(folder, write)


# ----------------------------------------------------------------------------
# Using a model: what a loaded and an exported model share.


class _Predictor:
  """Embedding, confidence and prediction from a network's outputs (subclasses give :meth:`_apply`)."""

  centroids: np.ndarray
  class_names: tuple[str, ...]
  image_shape: tuple[int, int, int]
  metric: str
  calibration: Calibration

  def _apply(self, images: np.ndarray) -> dict[str, Any]:
    raise NotImplementedError

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def prepare(self, images) -> np.ndarray:
    """uint8 ``(N, H, W, C)`` of the model's size from ``(N, H, W)``/``(N, H, W, C)`` uint8 or float images.

    Floats in [0, 1] are scaled by 255 (floats in [0, 255] are taken as
    they are), as the training data were; other sizes are resized
    (bilinear), as ``config.image_size`` resizes training images.
    """
    images = data_sources.as_uint8_images(images, "images")
    height, width, channels = self.image_shape
    if images.shape[3] != channels:
      raise ValueError(f"the model takes {channels}-channel images, got {images.shape[3]} "
                       f"channels (images of shape {images.shape}).")
    if images.shape[1:3] != (height, width):
      if height != width:
        raise ValueError(f"the model takes {height}x{width} images, got "
                         f"{images.shape[1]}x{images.shape[2]}.")
      images = data_files.resize_images(images, height)
    return images

  def outputs(self, images, batch_size: int = 1024) -> dict[str, np.ndarray]:
    """Every output of the network (``"embedding"``, maybe ``"kappa"``, ``"log_sigma"``, ``"logits"``).

    Any number of images, in chunks of ``batch_size`` (a smaller set is
    padded to a power of two: few compiled shapes).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
      raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    images = self.prepare(images)
    count = len(images)
    if count == 0:
      raise ValueError("no images.")
    size = batch_size if count >= batch_size else 1 << (count - 1).bit_length()
    chunks = []
    for start in range(0, count, size):
      chunk = images[start:start + size]
      n = len(chunk)
      if n < size:
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - n, axis=0)])
      out = self._apply(chunk)
      chunks.append({k: np.asarray(v)[:n] for k, v in out.items() if np.ndim(v) > 0})
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}

  def embed(self, images, batch_size: int = 1024) -> jax.Array:
    """``(N, D)`` unit embeddings of ``images``."""
    return jnp.asarray(self.outputs(images, batch_size)["embedding"])

  def confidence(self, images, batch_size: int = 1024) -> np.ndarray:
    """``(N,)`` the confidence head's ``kappa`` (vMF) or ``sigma`` (Gaussian; per-axis: their mean).

    Raises:
      ValueError: the model has no confidence head (use :meth:`predict`'s
        calibrated ``confidence``).
    """
    outputs = self.outputs(images, batch_size)
    if "kappa" in outputs:
      return outputs["kappa"]
    if "log_sigma" in outputs:
      log_sigma = outputs["log_sigma"]
      return np.exp(log_sigma if log_sigma.ndim == 1 else log_sigma.mean(axis=1))
    raise ValueError("this model has no kappa or sigma head; predict(images).confidence is its "
                     "calibrated confidence.")

  def predict_outputs(self, outputs: dict[str, np.ndarray]) -> Prediction:
    """The :class:`~sphereembed.prediction.Prediction` for outputs of :meth:`outputs`."""
    score = self.calibration.score
    logits, _ = confidence_scores(outputs, self.centroids, only=score)[score]
    return self.calibration.predict(logits)

  def predict(self, images, batch_size: int = 1024) -> Prediction:
    """Labels, calibrated confidence, abstention and class probabilities of ``images``.

    Returns:
      A :class:`~sphereembed.prediction.Prediction`: ``label`` ``(N,)``
      (``class_names[label]`` names it), ``confidence`` ``(N,)`` the
      calibrated probability of being right, ``abstain`` ``(N,)``
      (confidence below the kept threshold) and ``probabilities`` ``(N, K)``.
    """
    return self.predict_outputs(self.outputs(images, batch_size))


class TrainedModel(_Predictor):
  """A trained network with its centroids, class names and calibration (:func:`load_model`).

  Attributes:
    model: the Flax network.
    variables: its ``params`` (and ``batch_stats``).
    centroids: ``(K, D)`` class centroids.
    class_names: the ``K`` class names.
    image_shape: ``(H, W, C)`` it takes (other sizes are resized).
    metric: its nearest-centroid distance.
    calibration: the kept :class:`~sphereembed.prediction.Calibration`.
    info: what it was trained on and measured.
  """

  def __init__(self, model, variables, centroids, class_names, image_shape, metric: str,
               calibration: Calibration, info: dict[str, Any] | None = None):
    self.model = model
    self.variables = variables
    self.centroids = np.asarray(centroids)
    self.class_names = tuple(class_names)
    self.image_shape = tuple(int(n) for n in image_shape)
    self.metric = metric
    self.calibration = calibration
    self.info = dict(info or {})
    self._forward = jax.jit(lambda variables, x: model.apply(variables, x, train=False))

  def _apply(self, images):
    return self._forward(self.variables, images)

  def export(self, path: str) -> None:
    """Writes the network as a ``jax.export`` function with the centroids, class names and calibration.

    ``path`` becomes a folder with ``network.stablehlo`` (StableHLO, batch
    dimension symbolic, lowered for CPU, and for CUDA and TPU where this
    jax can lower them) and ``model.json`` (no architecture: the network is
    the StableHLO). :func:`load_exported` reads it.
    """
    from jax import export as jax_export  # pylint: disable=import-outside-toplevel

    forward = jax.jit(lambda x: self.model.apply(self.variables, x, train=False))
    batch, = jax_export.symbolic_shape("batch")
    spec = jax.ShapeDtypeStruct((batch, *self.image_shape), jnp.uint8)
    try:
      exported = jax_export.export(forward, platforms=("cpu", "cuda", "tpu"))(spec)
    except Exception:  # pylint: disable=broad-except
      exported = jax_export.export(forward)(spec)  # this backend only
    description = {
        "format": FORMAT + "-exported", "version": FORMAT_VERSION,
        "image_shape": list(self.image_shape), "class_names": list(self.class_names),
        "metric": self.metric, "calibration": self.calibration.to_dict(),
        "centroids": np.asarray(self.centroids, np.float64).tolist(),
        "platforms": list(exported.platforms), "info": self.info,
    }

    def write(staging):
      network = os.path.join(staging, _EXPORT_FILE)
      with open(network, "wb") as f:
        f.write(exported.serialize())
      description["network"] = {"file": _EXPORT_FILE, "sha256": file_sha256(network)}
      with open(os.path.join(staging, "model.json"), "w") as f:
        json.dump(description, f)

    _write_folder(path, write)


class ExportedModel(_Predictor):
  """A model exported by :meth:`TrainedModel.export`, run from its StableHLO (:func:`load_exported`).

  Same :meth:`embed`, :meth:`predict`, :meth:`confidence` and
  :meth:`outputs` as :class:`TrainedModel` (equal up to float rounding).
  """

  def __init__(self, exported, centroids, class_names, image_shape, metric, calibration, info):
    self._exported = exported
    self._call = jax.jit(exported.call)  # traced once per batch shape, not per call
    self.centroids = np.asarray(centroids)
    self.class_names = tuple(class_names)
    self.image_shape = tuple(image_shape)
    self.metric = metric
    self.calibration = calibration
    self.info = info

  def _apply(self, images):
    return self._call(jnp.asarray(images))


# ----------------------------------------------------------------------------
# Loading.


def _model_folder(path: str) -> str:
  path = os.path.abspath(os.path.expanduser(os.fspath(path)))
  if os.path.isfile(os.path.join(path, "model.json")):
    return path
  folder = os.path.join(path, MODEL_FOLDER)
  if os.path.isfile(os.path.join(folder, "model.json")):
    return folder
  if not os.path.isdir(path):
    raise ModelNotFoundError(f"{path} does not exist.")
  hint = ""
  if os.path.isdir(os.path.join(path, "checkpoints")):
    hint = (" It holds checkpoints of an unfinished run: rerun the run's command with the same "
            "--workdir to finish it; the model is written when training and evaluation end.")
  raise ModelNotFoundError(f"{path} holds no trained model ({folder}/model.json is missing)."
                           + hint)


def _read_description(folder: str, expected_format: str) -> dict[str, Any]:
  path = os.path.join(folder, "model.json")
  try:
    with open(path, encoding="utf-8") as f:
      description = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
    raise ModelFormatError(f"{path} is not readable JSON ({type(error).__name__}: {error}).") \
        from error
  if not isinstance(description, dict) or description.get("format") != expected_format:
    raise ModelFormatError(f"{path} is not a {expected_format} description.")
  version = description.get("version")
  if version != FORMAT_VERSION:
    raise ModelFormatError(
        f"{path} was written in model format version {version}; this sphereembed reads version "
        f"{FORMAT_VERSION}. Use the sphereembed version that trained it"
        + (", or a newer sphereembed." if isinstance(version, int) and version > FORMAT_VERSION
           else "."))
  return description


def _checked_bytes(folder: str, entry: Any) -> bytes:
  if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
    raise ModelFormatError(f"{folder}/model.json does not name its data file.")
  path = os.path.join(folder, os.path.basename(entry["file"]))
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as error:
    raise ModelFormatError(f"{path} cannot be read ({error}).") from error
  if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
    raise ModelFormatError(f"{path} does not match the checksum in model.json: the file is "
                           "damaged or was replaced.")
  return data


def _calibration(folder: str, description: dict[str, Any]) -> Calibration:
  try:
    return Calibration.from_dict(description["calibration"])
  except (KeyError, TypeError, ValueError) as error:
    raise ModelFormatError(f"{folder}/model.json has no valid calibration ({error}).") from error


def _fields(folder: str, description: dict[str, Any]):
  try:
    image_shape = tuple(int(n) for n in description["image_shape"])
    class_names = tuple(str(n) for n in description["class_names"])
    metric = description["metric"]
  except (KeyError, TypeError, ValueError) as error:
    raise ModelFormatError(f"{folder}/model.json lacks a field ({error}).") from error
  if len(image_shape) != 3 or metric not in geometry.METRICS:
    raise ModelFormatError(f"{folder}/model.json has a bad image shape or metric.")
  return image_shape, class_names, metric


def load_model(workdir: str) -> TrainedModel:
  """The trained model of a finished run (``workdir`` or ``workdir/model``).

  Needs no optimiser state and no training config: the network is rebuilt
  from its own saved settings.

  Args:
    workdir: the run's ``--workdir``, or its ``model`` folder.

  Returns:
    The :class:`TrainedModel`.

  Raises:
    ModelNotFoundError: the folder holds no finished model (the message says
      how to finish an interrupted run).
    ModelFormatError: damaged files, or files of another format version.
  """
  import flax.serialization  # pylint: disable=import-outside-toplevel

  folder = _model_folder(workdir)
  description = _read_description(folder, FORMAT)
  image_shape, class_names, metric = _fields(folder, description)
  model = build_model(description.get("architecture", {}))
  data = _checked_bytes(folder, description.get("arrays"))
  try:
    arrays = flax.serialization.msgpack_restore(data)
  except Exception as error:  # msgpack raises several types
    raise ModelFormatError(f"{folder}/{_ARRAYS_FILE} is not readable ({error}).") from error
  expected = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *image_shape), jnp.uint8)))
  variables = {"params": arrays.get("params")}
  if expected.get("batch_stats"):
    variables["batch_stats"] = arrays.get("batch_stats")
  _check_like(variables, {k: expected[k] for k in variables}, f"{folder}/{_ARRAYS_FILE}")
  centroids = np.asarray(arrays.get("centroids"))
  if centroids.shape != (len(class_names), model.embedding_dim):
    raise ModelFormatError(f"{folder}/{_ARRAYS_FILE}: centroids of shape {centroids.shape}, "
                           f"expected ({len(class_names)}, {model.embedding_dim}).")
  return TrainedModel(model, jax.tree_util.tree_map(jnp.asarray, variables), centroids,
                      class_names, image_shape, metric, _calibration(folder, description),
                      description.get("info", {}))


def _check_like(tree, expected, where: str) -> None:
  """Raises ModelFormatError unless ``tree`` has ``expected``'s structure, shapes and dtypes."""
  flat, structure = jax.tree_util.tree_flatten_with_path(tree)
  flat_expected, expected_structure = jax.tree_util.tree_flatten_with_path(expected)
  if structure != expected_structure:
    raise ModelFormatError(f"{where} does not hold the arrays of the network described in "
                           "model.json (different parameter names).")
  for (path, value), (_, spec) in zip(flat, flat_expected):
    if np.shape(value) != spec.shape or np.asarray(value).dtype != spec.dtype:
      raise ModelFormatError(
          f"{where}: {jax.tree_util.keystr(path)} is {np.asarray(value).dtype} "
          f"{np.shape(value)}, the network expects {spec.dtype} {spec.shape}.")


def load_exported(path: str) -> ExportedModel:
  """A model written by :meth:`TrainedModel.export`; imports none of sphereembed's model code.

  Raises:
    ModelNotFoundError: no ``model.json`` in ``path``.
    ModelFormatError: damaged files or another format version.
  """
  from jax import export as jax_export  # pylint: disable=import-outside-toplevel

  folder = os.path.abspath(os.path.expanduser(os.fspath(path)))
  if not os.path.isfile(os.path.join(folder, "model.json")):
    raise ModelNotFoundError(f"{folder} holds no exported model (model.json is missing).")
  description = _read_description(folder, FORMAT + "-exported")
  image_shape, class_names, metric = _fields(folder, description)
  data = _checked_bytes(folder, description.get("network"))
  try:
    exported = jax_export.deserialize(bytearray(data))
  except Exception as error:  # pylint: disable=broad-except
    raise ModelFormatError(f"{folder}/{_EXPORT_FILE} is not a readable jax.export function "
                           f"({error}).") from error
  centroids = np.asarray(description.get("centroids"), np.float64)
  if centroids.ndim != 2 or len(centroids) != len(class_names):
    raise ModelFormatError(f"{folder}/model.json: centroids of shape {centroids.shape}.")
  return ExportedModel(exported, centroids.astype(np.float32), class_names, image_shape, metric,
                       _calibration(folder, description), description.get("info", {}))


# ----------------------------------------------------------------------------
# A searchable gallery.


class Index:
  """A gallery of embeddings: exact k-nearest-neighbour search and open-set identification.

  Search is exact and blocked (:func:`sphereembed.evaluation.nearest_neighbors`).
  :meth:`identify` returns each query's nearest label, or ``"unknown"`` when
  the nearest match is farther than :attr:`threshold`, which
  :meth:`calibrate` sets from labelled validation queries (the enrolment flow
  of :class:`sphereembed.evaluation.EnrolmentGallery`, kept on disk by
  :meth:`save` / :meth:`load`).

  Args:
    embeddings: ``(M, D)`` gallery embeddings (unit vectors for ``"cosine"``
      and ``"great_circle"``).
    labels: ``(M,)`` their labels (ints or strings).
    ids: ``(M,)`` optional item ids (default ``0..M-1``).
    metric: the distance (default ``"cosine"``, ``1 - cos``).
    threshold: the identification distance threshold (``None``: every
      query gets its nearest label until :meth:`calibrate`).

  Example:
    >>> import numpy as np
    >>> index = Index(np.eye(3), ["a", "b", "c"], threshold=0.1)
    >>> distances, indices, labels = index.search(np.array([[0.9, 0.1, 0.0]]), k=2)
    >>> labels.tolist(), index.identify(np.array([[0.0, 0.6, 0.8], [0.0, 0.0, 1.0]])).tolist()
    ([['a', 'b']], ['unknown', 'c'])
  """

  def __init__(self, embeddings, labels, ids=None, *, metric: str = "cosine",
               threshold: float | None = None):
    if metric not in geometry.METRICS:
      raise ValueError(f"Unknown metric {metric!r}; expected one of {geometry.METRICS}.")
    self.metric = metric
    self.threshold = None if threshold is None else _check_threshold(threshold)
    self._embeddings = np.zeros((0, 0), np.float32)
    self._labels = np.zeros(0, object)
    self._ids = np.zeros(0, object)
    self.add(embeddings, labels, ids)

  def __len__(self) -> int:
    return len(self._labels)

  @property
  def embeddings(self) -> np.ndarray:
    return self._embeddings

  @property
  def labels(self) -> np.ndarray:
    return self._labels

  @property
  def ids(self) -> np.ndarray:
    return self._ids

  def add(self, embeddings, labels, ids=None) -> None:
    """Adds ``(M, D)`` embeddings with their labels (and ids; default: running numbers)."""
    embeddings = np.asarray(embeddings, np.float32)
    labels = np.asarray(labels)
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
      raise ValueError(f"embeddings must have shape (M, D) with M >= 1, got {embeddings.shape}.")
    if not np.all(np.isfinite(embeddings)):
      raise ValueError("embeddings contain NaN or infinite values.")
    if labels.shape != embeddings.shape[:1]:
      raise ValueError(f"{len(embeddings)} embeddings but labels of shape {labels.shape}.")
    if labels.dtype.kind not in "iuUS":
      raise ValueError(f"labels must be integers or strings, got {labels.dtype}.")
    if len(self) and embeddings.shape[1] != self._embeddings.shape[1]:
      raise ValueError(f"embeddings have dimension {embeddings.shape[1]}, the index "
                       f"{self._embeddings.shape[1]}.")
    if ids is None:
      ids = np.arange(len(self), len(self) + len(embeddings))
    ids = np.asarray(ids)
    if ids.shape != labels.shape:
      raise ValueError(f"{len(embeddings)} embeddings but ids of shape {ids.shape}.")
    self._embeddings = embeddings if not len(self) else np.concatenate([self._embeddings,
                                                                        embeddings])
    self._labels = np.concatenate([self._labels, labels.astype(object)])
    self._ids = np.concatenate([self._ids, ids.astype(object)])

  def search(self, queries, k: int = 1):
    """The ``k`` nearest gallery items of every query, exact.

    Returns:
      ``(distances (Q, k), indices (Q, k), labels (Q, k))``, nearest first.
    """
    from sphereembed.evaluation import nearest_neighbors  # pylint: disable=import-outside-toplevel

    queries = np.asarray(queries, np.float32)
    distances, indices = nearest_neighbors(queries, self._embeddings, k=k, metric=self.metric)
    return distances, indices, self._labels[indices]

  def calibrate(self, queries, labels, *, target_far: float | None = None) -> float:
    """Sets :attr:`threshold` from labelled validation queries, some of them unknown to the gallery.

    A query's nearest match is *accepted* when its distance is at most the
    threshold; it is right when the nearest label is the query's own. The
    threshold is the most accurate one, or the one with the largest
    true-accept rate whose false-accept rate is at most ``target_far``
    (:func:`sphereembed.evaluation.calibrate_threshold`). When every nearest
    match is right, the threshold accepts them all (the largest distance);
    when none is, it accepts nothing.

    Returns:
      The threshold.
    """
    from sphereembed.evaluation import calibrate_threshold  # pylint: disable=import-outside-toplevel

    distances, _, nearest = self.search(queries, k=1)
    labels = np.asarray(labels).astype(object)
    if labels.shape != distances.shape[:1]:
      raise ValueError(f"{len(distances)} queries but labels of shape {labels.shape}.")
    right = nearest[:, 0] == labels
    if right.all():  # no wrong match to reject: accept every match seen
      self.threshold = _check_threshold(distances.max())
    elif not right.any():  # no right match to accept: reject all
      self.threshold = float(np.nextafter(max(float(distances.min()), 0.0), -np.inf)
                             if distances.min() > 0 else 0.0)
    else:
      self.threshold = calibrate_threshold(distances[:, 0], right, target_far=target_far)
    return self.threshold

  def identify(self, queries, unknown: Hashable = _UNKNOWN) -> np.ndarray:
    """The nearest label of each query, or ``unknown`` beyond :attr:`threshold` (``(Q,)`` objects)."""
    distances, _, labels = self.search(queries, k=1)
    result = labels[:, 0].copy()
    if self.threshold is not None:
      result[distances[:, 0] > self.threshold] = unknown
    return result

  def save(self, path: str) -> None:
    """Writes the index as one ``.npz`` (plain arrays, no pickles)."""
    labels, ids = self._labels, self._ids
    np.savez(path if str(path).endswith(".npz") else f"{path}",
             embeddings=self._embeddings, labels=_plain(labels), ids=_plain(ids),
             metric=np.asarray(self.metric),
             threshold=np.asarray(np.nan if self.threshold is None else self.threshold))

  @classmethod
  def load(cls, path: str) -> "Index":
    """The index written by :meth:`save` (read with ``allow_pickle=False``)."""
    try:
      with np.load(path, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    except Exception as error:  # pylint: disable=broad-except
      raise ValueError(f"{path} is not an index written by Index.save ({error}).") from error
    missing = {"embeddings", "labels", "ids", "metric", "threshold"} - set(arrays)
    if missing:
      raise ValueError(f"{path} lacks {sorted(missing)}: not an index written by Index.save.")
    threshold = float(arrays["threshold"])
    return cls(arrays["embeddings"], arrays["labels"], arrays["ids"], metric=str(arrays["metric"]),
               threshold=None if np.isnan(threshold) else threshold)


def _plain(values: np.ndarray) -> np.ndarray:
  """Object labels or ids as an int or unicode array (``np.savez`` without pickles)."""
  items = values.tolist()
  if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in items):
    return np.asarray(items, np.int64)
  return np.asarray([str(v) for v in items])


def _check_threshold(threshold) -> float:
  threshold = float(threshold)
  if not np.isfinite(threshold) or threshold < 0:
    raise ValueError(f"threshold must be a finite distance >= 0, got {threshold}.")
  return threshold
