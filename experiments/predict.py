r"""Predicts with a trained model: a label, a calibrated confidence and an abstention per image.

Usage, from the repository root::

  python -m experiments.predict --workdir=runs/ncl_2d/20261204-120000 --images=my_images/
  python -m experiments.predict --workdir=W --images=test.npz --output=predictions.jsonl
  python -m experiments.predict --workdir=W --images=queries/ --gallery=enrolled/

``--images`` is a folder of image files (PNG, JPEG, ...; sub-folders named
after the model's classes give the true labels, and the summary their
accuracy), or an ``.npz`` with ``x`` (or ``images``, ``x_test``) and
optionally ``y`` (``labels``, ``y_test``). Images of another size are resized
to the model's, and image files converted to its channels (grey or colour).

``--gallery`` adds open-set identification against labelled images (a folder
of class folders, an ``.npz`` as above, or an index written by
``sphereembed.inference.Index.save``): each line gets the nearest gallery
item's label, or ``unknown`` beyond the index's threshold.

Writes one JSON line per image to ``--output`` (file, label, class_name,
confidence, abstain, and true_label, identity, distance where known) and
prints a summary.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys

from absl import app
from absl import flags
from absl import logging
import numpy as np

from sphereembed import inference
from sphereembed.data import files as data_files
from sphereembed.data.idx import CorruptDataError

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "The trained run's workdir (or its model/ folder).")
flags.DEFINE_string("images", None, "A folder of images (class sub-folders optional) or an .npz.")
flags.DEFINE_string("gallery", None, "Labelled images or an Index .npz, for identification.")
flags.DEFINE_string("output", "predictions.jsonl", "Where the JSON lines go.")
flags.DEFINE_integer("batch_size", 1024, "Images read and predicted at a time.", lower_bound=1)

_IMAGE_KEYS = ("x", "images", "x_test")
_LABEL_KEYS = ("y", "labels", "y_test")


class Inputs:
  """Images to predict, read lazily in chunks: file paths, or an array from an .npz."""

  def __init__(self, names: list[str], labels: list[str | None], array=None, files=None):
    self.names, self.labels, self._array, self._files = names, labels, array, files

  def __len__(self) -> int:
    return len(self.names)

  def chunk(self, start: int, stop: int, size: int, channels: int) -> np.ndarray:
    """Images ``start:stop``; files are read at ``size`` x ``size`` with ``channels`` channels."""
    if self._array is not None:
      return self._array[start:stop]
    return np.stack([data_files.read_image(path, size, channels)
                     for path in self._files[start:stop]])


def read_inputs(path: str, class_names: tuple[str, ...]) -> Inputs:
  """The images at ``path`` (a folder or an .npz) with their true labels where given."""
  where = pathlib.Path(path).expanduser()
  if where.is_dir():
    files, labels = [], []
    for item in sorted(where.iterdir()):
      if item.is_file() and item.suffix.lower() in data_files.IMAGE_EXTENSIONS:
        files.append(item)
        labels.append(None)
      elif item.is_dir() and not item.name.startswith("."):
        for image in sorted(item.iterdir()):
          if image.is_file() and image.suffix.lower() in data_files.IMAGE_EXTENSIONS:
            files.append(image)
            labels.append(item.name)
    if not files:
      raise FileNotFoundError(f"{where} holds no image files ({', '.join(data_files.IMAGE_EXTENSIONS)}"
                              ") directly or in sub-folders.")
    return Inputs([str(f) for f in files], labels, files=files)
  if where.is_file():
    try:
      with np.load(where, allow_pickle=False) as archive:
        image_key = next((k for k in _IMAGE_KEYS if k in archive.files), None)
        if image_key is None:
          raise CorruptDataError(f"{where} holds none of the image arrays {', '.join(_IMAGE_KEYS)} "
                                 f"(it holds {', '.join(archive.files)}).")
        images = archive[image_key]
        label_key = next((k for k in _LABEL_KEYS if k in archive.files), None)
        truth = archive[label_key] if label_key else None
    except CorruptDataError:
      raise
    except Exception as error:  # pylint: disable=broad-except
      raise CorruptDataError(f"{where}: not a readable .npz of plain arrays "
                             f"({type(error).__name__}: {error}).") from error
    if truth is not None and len(truth) != len(images):
      raise CorruptDataError(f"{where}: {len(images)} images but {len(truth)} labels.")
    if truth is None:
      labels = [None] * len(images)
    elif truth.dtype.kind in "iu":
      if truth.size and (truth.min() < 0 or truth.max() >= len(class_names)):
        raise CorruptDataError(f"{where}: labels must lie in [0, {len(class_names)}), found "
                               f"[{truth.min()}, {truth.max()}].")
      labels = [class_names[k] for k in truth.tolist()]
    else:
      labels = [str(v) for v in truth.tolist()]
    return Inputs([f"{where}[{i}]" for i in range(len(images))], labels, array=images)
  raise FileNotFoundError(f"{where} does not exist.")


def _file_format(model) -> tuple[int, int]:
  """``(size, channels)`` image files are read at: the model's (size 0 for non-square models)."""
  height, width, channels = model.image_shape
  return (height if height == width else 0), (channels if channels in (1, 3, 4) else 0)


def _embed_all(model, inputs: Inputs, batch_size: int) -> np.ndarray:
  return np.concatenate([
      np.asarray(model.embed(inputs.chunk(start, start + batch_size, *_file_format(model))))
      for start in range(0, len(inputs), batch_size)])


def build_gallery(path: str, model, batch_size: int) -> inference.Index:
  """An :class:`~sphereembed.inference.Index` from a saved index or from labelled images."""
  if path.endswith(".npz"):
    with np.load(path, allow_pickle=False) as archive:
      if "embeddings" in archive.files:
        return inference.Index.load(path)
  gallery = read_inputs(path, model.class_names)
  if any(label is None for label in gallery.labels):
    raise ValueError(f"{path}: every gallery image needs a label (class sub-folders, or y in "
                     "the .npz).")
  return inference.Index(_embed_all(model, gallery, batch_size), np.asarray(gallery.labels))


def predict(workdir: str, images: str, output: str, gallery: str | None = None,
            batch_size: int = 1024) -> dict:
  """Writes the JSON lines of every image; returns the summary's numbers."""
  model = inference.load_model(workdir)
  inputs = read_inputs(images, model.class_names)
  index = build_gallery(gallery, model, batch_size) if gallery else None
  known = set(model.class_names)
  counts = {"images": 0, "abstained": 0, "labelled": 0, "correct": 0, "kept_labelled": 0,
            "kept_correct": 0}
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  with open(output, "w", encoding="utf-8") as out:
    for start in range(0, len(inputs), batch_size):
      stop = min(start + batch_size, len(inputs))
      outputs = model.outputs(inputs.chunk(start, stop, *_file_format(model)), batch_size)
      prediction = model.predict_outputs(outputs)
      identified = distances = None
      if index is not None:
        distances, _, _ = index.search(outputs["embedding"], k=1)
        identified = index.identify(outputs["embedding"])
      for i in range(stop - start):
        label = int(prediction.label[i])
        line = {"file": inputs.names[start + i], "label": label,
                "class_name": model.class_names[label],
                "confidence": round(float(prediction.confidence[i]), 6),
                "abstain": bool(prediction.abstain[i])}
        truth = inputs.labels[start + i]
        if truth is not None:
          line["true_label"] = truth
          if truth in known:
            right = truth == model.class_names[label]
            counts["labelled"] += 1
            counts["correct"] += right
            if not prediction.abstain[i]:
              counts["kept_labelled"] += 1
              counts["kept_correct"] += right
        if index is not None:
          identity = identified[i]
          line["identity"] = int(identity) if isinstance(identity, (int, np.integer)) else \
              str(identity)
          line["distance"] = round(float(distances[i, 0]), 6)
        out.write(json.dumps(line) + "\n")
      counts["images"] += stop - start
      counts["abstained"] += int(np.sum(prediction.abstain))
      if len(inputs) > batch_size:
        print(f"predicted {stop} of {len(inputs)} images", file=sys.stderr, flush=True)
  return counts


def summary(counts: dict, output: str) -> str:
  n = counts["images"]
  line = (f"{n} images: abstained on {counts['abstained']} "
          f"({100 * counts['abstained'] / n:.1f}%)")
  if counts["labelled"]:
    line += (f"; accuracy {100 * counts['correct'] / counts['labelled']:.2f}% on the "
             f"{counts['labelled']} labelled")
    if counts["kept_labelled"]:
      line += (f", {100 * counts['kept_correct'] / counts['kept_labelled']:.2f}% on the "
               f"{counts['kept_labelled']} kept")
  return line + f". Predictions in {output}"


_EXPECTED_ERRORS = (ValueError, FileNotFoundError, CorruptDataError)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  try:
    counts = predict(FLAGS.workdir, FLAGS.images, FLAGS.output, FLAGS.gallery, FLAGS.batch_size)
  except _EXPECTED_ERRORS as error:
    raise SystemExit(f"error: {error}") from None
  print(summary(counts, FLAGS.output))


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir", "images"])
  app.run(main)
