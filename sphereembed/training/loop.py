"""``train_and_evaluate``: the one training loop behind every experiment (MNIST family, CIFAR).

Data -> sampler -> augmentation -> prefetching onto a device mesh -> jitted
:func:`~sphereembed.training.steps.train_step` -> periodic metrics, progress,
evaluation and orbax checkpoints -> final nearest-centroid evaluation,
``metrics.json`` and figures in the workdir. A run restarted with the same
workdir resumes from its last checkpoint and ends with the same result as an
uninterrupted run (batches and augmentation are functions of the seed and
the step).

Data parallelism: the train step runs on a 1-D mesh of ``config.num_devices``
local devices (:mod:`sphereembed.training.sharding`): every batch is split
over the mesh's ``data`` axis and the train state (parameters, optimiser
state, centroids, batch-norm statistics) is replicated, so XLA computes the
loss, gradients, centroid sums and batch-norm statistics of the whole batch.
Evaluation splits its chunks over the mesh alike. The same code runs on one
CPU, on simulated CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``), on the GPUs of one
host and on many hosts.

Many hosts: start one process per host and call ``jax.distributed.initialize``
before anything else (``experiments.mnist`` / ``experiments.cifar``
``--distributed``). The mesh then spans the devices of every process; every
process computes the same global batch indices (the samplers are functions of
the seed and the epoch) and gathers and augments only its own rows
(:func:`sphereembed.training.sharding.process_rows`), with the random draws of
the global batch, so N processes train exactly as one process with the same
global batch and device count. Every process takes part in evaluation (the
embeddings are gathered onto all of them) and in the orbax checkpoints (the
workdir must be on a file system all hosts share); only process 0 writes
``config.json``, ``metrics.jsonl``, TensorBoard events, ``metrics.json`` and
the figures.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from absl import logging
from clu import parameter_overview
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sphereembed import data as data_lib
from sphereembed import plotting
from sphereembed.data import augment
from sphereembed.data import cifar
from sphereembed.models import SmallCNN
from sphereembed.models import resnet
from sphereembed.training import config as config_lib
from sphereembed.training import confidence_eval
from sphereembed.training import metric_writers
from sphereembed.training import sharding
from sphereembed.training.checkpoints import Checkpointer
from sphereembed.training.state import TrainState, create_train_state, state_summary
from sphereembed.training.steps import (LossSpec, embed_dataset, embed_step, nearest_centroid,
                                        train_step)

__all__ = ["evaluate", "train_and_evaluate"]


def _subset(split: data_lib.Split, indices: np.ndarray) -> data_lib.Split:
  return data_lib.Split(split.images[indices], split.labels[indices])


def _load_dataset(name: str, config) -> data_lib.Dataset:
  """``name`` from the config's sources: CIFAR's canonical pickles, IDX folders, TFDS."""
  if name in cifar.CIFAR_FOLDERS:
    return cifar.load_cifar(name, config.data_dir or None,
                            tfds_data_dir=config.tfds_data_dir or None, download=config.download)
  return data_lib.load_dataset(name, config.data_dir or None,
                               tfds_data_dir=config.tfds_data_dir or None,
                               download=config.download)


def _prepare_data(config):
  dataset = _load_dataset(config.dataset, config)
  train, test = dataset.train, dataset.test
  validation = None
  if config.validation_examples:
    if config.validation_examples >= len(train):
      raise ValueError(f"config.validation_examples = {config.validation_examples} leaves no "
                       f"training images (the training set has {len(train)}).")
    # A fixed permutation (not the run's seed): every seed holds out the same images.
    order = np.random.default_rng(12345).permutation(len(train))
    validation = _subset(train, np.sort(order[:config.validation_examples]))
    train = _subset(train, np.sort(order[config.validation_examples:]))
  if config.imbalanced_classes and config.imbalanced_fraction < 1:
    keep = {int(c): config.imbalanced_fraction for c in config.imbalanced_classes}
    train = _subset(train, data_lib.subsample_classes(train.labels, keep, seed=config.seed))
  if config.max_train_examples:
    # A stratified prefix of a fixed permutation keeps every class in small runs.
    order = np.random.default_rng(config.seed).permutation(len(train))
    train = _subset(train, np.sort(order[:config.max_train_examples]))
  if config.max_test_examples:
    test = _subset(test, np.arange(min(config.max_test_examples, len(test))))
  ood = None
  if config.ood_dataset:
    ood = _load_dataset(config.ood_dataset, config).test
    if config.max_test_examples:
      ood = _subset(ood, np.arange(min(config.max_test_examples, len(ood))))
  return dataset, train, test, validation, ood


def _make_sampler(config, train: data_lib.Split):
  if config.sampler == "balanced":
    return data_lib.ClassBalancedSampler(
        train.labels, config.classes_per_batch, config.samples_per_class, seed=config.seed,
        balance=config.balance)
  # Dropping the remainder keeps one compiled batch shape; the dropped samples
  # differ every epoch.
  return data_lib.ShuffledSampler(len(train), config.batch_size, seed=config.seed,
                                  drop_remainder=len(train) >= config.batch_size)


def _loss_spec(config) -> LossSpec:
  return LossSpec(
      name=config.loss, metric=config.metric, margin=config.margin,
      alpha_base=config.alpha_base, alpha_decay=config.alpha_decay,
      alpha_every=config.alpha_every, centroid_warmup_steps=config.centroid_warmup_steps,
      negative_weight=config.negative_weight, negative_gate=config.negative_gate,
      classifier_weight=config.classifier_weight,
      confidence="gaussian" if config.confidence.startswith("gaussian") else config.confidence,
      confidence_weight=config.confidence_weight,
      confidence_embedding_gradient=config.confidence_embedding_gradient)


# The model head each config.confidence needs.
_CONFIDENCE_HEADS = {"": None, "vmf": "kappa", "gaussian": "sigma",
                     "gaussian_diagonal": "sigma_diagonal"}

_RESNET_DEPTHS = {"resnet18": 18, "resnet34": 34}
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# The published per-channel statistics of the CIFAR training sets.
_CIFAR_NORMALIZATION = {"cifar10": (resnet.CIFAR10_MEAN, resnet.CIFAR10_STD),
                        "cifar100": (resnet.CIFAR100_MEAN, resnet.CIFAR100_STD)}


def _normalization(dataset: str, train: data_lib.Split) -> tuple[tuple[float, ...], ...]:
  """Per-channel mean and std of the [0, 1] pixels, for the ResNet's input."""
  if dataset in _CIFAR_NORMALIZATION:
    return _CIFAR_NORMALIZATION[dataset]
  # Other data: measured on (a sample of) the training images.
  sample = train.images[:10000].astype(np.float64) / 255.0
  mean = sample.mean(axis=(0, 1, 2))
  std = np.maximum(sample.std(axis=(0, 1, 2)), 1e-3)
  return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _make_model(config, num_classes: int, train: data_lib.Split):
  """The config's backbone with its embedding head."""
  head = dict(num_classes=num_classes if config.classifier_head else None,
              confidence=_CONFIDENCE_HEADS[config.confidence], kappa_max=config.kappa_max,
              confidence_feature_gradient=config.confidence_feature_gradient)
  if config.model == "small_cnn":
    return SmallCNN(config.embedding_dim, features=tuple(config.features),
                    kernel_size=config.kernel_size, downsample=config.downsample,
                    hidden=config.hidden, dropout_rate=config.dropout_rate,
                    batch_norm=config.batch_norm,
                    polyphase_gradient=config.polyphase_gradient, **head)
  mean, std = _normalization(config.dataset, train)
  return resnet.CifarResNet(config.embedding_dim, stage_sizes=resnet.STAGE_SIZES[
      _RESNET_DEPTHS[config.model]], width=config.width, mean=mean, std=std,
                            dtype=_DTYPES[config.dtype], **head)


def _kernel_mask(params):
  """True for conv and dense kernels (ndim > 1), False for biases and norm scales."""
  return jax.tree_util.tree_map(lambda x: x.ndim > 1, params)


def _make_optimizer(config, num_train_steps: int) -> optax.GradientTransformation:
  """Warm-up plus cosine decay, with AdamW or SGD (see ``default_config``)."""
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, config.learning_rate, min(config.warmup_steps, num_train_steps // 2),
      max(num_train_steps, 1))
  if config.optimizer == "adamw":
    return optax.adamw(schedule, weight_decay=config.weight_decay)
  # L2 decay added to the gradient before momentum (classic SGD weight decay).
  return optax.chain(
      optax.add_decayed_weights(config.weight_decay, mask=_kernel_mask),
      optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov))


def _make_mesh(config):
  """The 1-D data mesh of ``config.num_devices`` local devices (0 = all), or of every host's."""
  if jax.process_count() > 1:
    # Each host feeds its own devices, so the mesh must include all of them.
    if config.num_devices not in (0, jax.device_count()):
      raise ValueError(
          f"config.num_devices = {config.num_devices}, but with {jax.process_count()} processes "
          f"the mesh spans the {jax.device_count()} devices of all of them; leave it 0 (or set "
          f"{jax.device_count()}).")
    return sharding.make_mesh()
  devices = jax.local_devices()
  if config.num_devices > len(devices):
    raise ValueError(f"config.num_devices = {config.num_devices}, but only {len(devices)} "
                     f"local device(s) exist ({devices[0].platform}).")
  return sharding.make_mesh(config.num_devices or len(devices), devices=devices)


def _global_batch(config, sampler, num_examples: int) -> tuple[int, str]:
  """The size of every training batch, and the config fields that set it."""
  if config.sampler == "balanced":
    return (config.classes_per_batch * config.samples_per_class,
            "config.classes_per_batch * config.samples_per_class")
  if sampler.drop_remainder:
    return config.batch_size, "config.batch_size"
  return num_examples, "the training set (smaller than config.batch_size: one batch)"


def _check_batch_fits_mesh(config, sampler, num_examples: int, mesh) -> None:
  """Every batch must split evenly over the mesh; fail before any work."""
  size, what = _global_batch(config, sampler, num_examples)
  if size % mesh.size:
    processes = jax.process_count()
    raise ValueError(
        f"{what} = {size} does not split over the {mesh.size} devices of the mesh"
        + (f" ({processes} processes)" if processes > 1 else "")
        + f"; use a multiple of {mesh.size}"
        + (", or fewer devices (config.num_devices)." if processes == 1 else "."))


class _RowDraws:
  """A ``np.random.Generator`` for augmenting rows ``rows`` of a global batch of ``size``.

  The augmentations draw one value per image (arrays whose last axis is the
  batch). This draws them for the whole global batch and returns this
  process's rows, so a host that gathers and transforms only its own images
  gives each of them the augmentation a one-process run gives it.

  Args:
    rng: the generator of the global batch.
    rows: this process's rows.
    size: the global batch size.
  """

  def __init__(self, rng: np.random.Generator, rows: slice, size: int):
    self._rng, self._rows, self._size = rng, rows, size
    self._local = len(range(size)[rows])

  def _draw(self, method: str, size, **kwargs) -> np.ndarray:
    shape = tuple(int(n) for n in np.atleast_1d(size)) if size is not None else ()
    if not shape or shape[-1] != self._local:
      raise ValueError(f"An augmentation drew {method}(size={size}); a multi-process run "
                       f"augments its {self._local} rows only with per-image draws (last axis).")
    draws = getattr(self._rng, method)(size=shape[:-1] + (self._size,), **kwargs)
    return draws[..., self._rows]

  def integers(self, low, high=None, size=None, **kwargs) -> np.ndarray:
    return self._draw("integers", size, low=low, high=high, **kwargs)

  def random(self, size=None, **kwargs) -> np.ndarray:
    return self._draw("random", size, **kwargs)


def _train_batches(config, train: data_lib.Split, sampler, weights, start_step: int,
                   rows: slice = slice(None)):
  """This process's ``rows`` of the batches of steps ``start_step + 1, ...``.

  Augmented from ``(seed, step)``: a resumed run, or a run with another
  number of processes, draws the same augmentation for every image.
  """
  for step, indices in enumerate(sampler.iterate(start_step=start_step), start=start_step + 1):
    local = indices[rows]
    images = train.images[local]
    part = len(local) < len(indices)  # several processes: this one's rows only
    if config.random_shift:
      rng = np.random.default_rng([config.seed, step])
      images = augment.random_translate(
          images, config.random_shift, _RowDraws(rng, rows, len(indices)) if part else rng)
    if config.augment == "crop_flip":
      if part:
        # cifar.augment_batch's generator, for this process's rows.
        rng = np.random.default_rng(
            [config.seed, step, cifar._AUGMENT_STREAM])  # pylint: disable=protected-access
        images = cifar.random_crop_flip(images, _RowDraws(rng, rows, len(indices)))
      else:
        images = cifar.augment_batch(images, seed=config.seed, step=step)
    batch = {"image": images, "label": train.labels[local]}
    if weights is not None:
      batch["weight"] = weights[local]
    yield batch


def _embed_dataset(state: TrainState, images, batch_size: int, mesh) -> dict[str, np.ndarray]:
  """:func:`embed_dataset` with every chunk split over the devices of ``mesh``.

  Each process embeds its rows of every chunk; the outputs are gathered onto
  every process, which all return the same arrays.
  """
  # A chunk size the mesh divides; the last chunk is padded: one compiled shape.
  size = -(-batch_size // mesh.size) * mesh.size
  rows = sharding.process_rows(mesh, size)
  outputs = []
  for start in range(0, len(images), size):
    chunk = np.asarray(images[start:start + size])
    count = len(chunk)
    if count < size:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - count, axis=0)])
    out = sharding.to_host(embed_step(state, sharding.shard_batch(chunk[rows], mesh)))
    outputs.append({key: value[:count] for key, value in out.items()})
  return {key: np.concatenate([o[key] for o in outputs]) for key in outputs[0]}


def evaluate(state: TrainState, test: data_lib.Split, *, metric: str = "great_circle",
             batch_size: int = 1000, train: data_lib.Split | None = None,
             mesh=None) -> dict[str, Any]:
  """Nearest-centroid accuracy of the test set, and optionally against train class means.

  Args:
    state: the train state (its EMA centroids are the class prototypes).
    test: the evaluation split.
    metric: the distance used for the nearest centroid.
    batch_size: images per forward pass.
    train: when given, its class means (re-normalised) serve as a second set
      of prototypes (``test_accuracy_class_means``): the usual protocol for
      losses that have no centroids of their own.
    mesh: when given (the state replicated over it), every chunk of images
      is split over its devices, those of every process included; every
      process gets the same result.

  Returns:
    ``{"test_accuracy": ..., ...}`` plus the test embeddings, predictions and
    all model outputs under ``"embeddings"``, ``"predictions"`` and
    ``"outputs"`` (NumPy arrays).
  """
  def embed(images):
    if mesh is None:
      return embed_dataset(state, images, batch_size)
    return _embed_dataset(state, images, batch_size, mesh)

  outputs = embed(test.images)
  embeddings = outputs["embedding"]
  centroids = sharding.to_host(state.centroids)
  predictions = np.asarray(nearest_centroid(embeddings, centroids, metric))
  num_classes = centroids.shape[0]
  correct = predictions == test.labels
  per_class = [float(np.mean(correct[test.labels == k])) if np.any(test.labels == k) else None
               for k in range(num_classes)]
  present = [a for a in per_class if a is not None]
  result: dict[str, Any] = {
      "test_accuracy": float(np.mean(correct)),
      # The mean of per-class accuracies: what an imbalanced training set hurts.
      "test_balanced_accuracy": float(np.mean(present)),
      "test_accuracy_per_class": per_class,
      "embeddings": embeddings, "predictions": predictions, "outputs": outputs}
  if "logits" in outputs:
    result["test_accuracy_classifier"] = float(
        np.mean(np.argmax(outputs["logits"], -1) == test.labels))
  if train is not None:
    train_embeddings = embed(train.images)["embedding"]
    sums = np.zeros((num_classes, embeddings.shape[1]), np.float64)
    np.add.at(sums, train.labels, train_embeddings)
    means = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    class_mean_predictions = np.asarray(nearest_centroid(
        embeddings, jnp.asarray(means, embeddings.dtype), metric))
    result["test_accuracy_class_means"] = float(np.mean(class_mean_predictions == test.labels))
  return result


def _check_resumable(config, workdir: str, write: bool = True) -> None:
  """Refuses to resume a run whose training-relevant config differs; ``write``: saves the config."""
  path = os.path.join(workdir, "config.json")
  current = config.to_dict()
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      saved = json.load(f)
    # A field newer than the saved run had its default value there.
    defaults = config_lib.default_config().to_dict()
    changed = sorted(k for k in set(saved) | set(current)
                     if k not in config_lib.RESUME_SAFE_FIELDS
                     and json.dumps(saved.get(k, defaults.get(k)), default=list)
                     != json.dumps(current.get(k), default=list))
    if changed:
      raise ValueError(
          f"{workdir} holds a run with a different config (fields {changed}); resuming it would "
          "mix two experiments. Use another --workdir, or delete that one.")
  if write:
    # Written whole, then renamed: other processes never read half a file.
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      json.dump(current, f, indent=1, default=list)
    os.replace(path + ".tmp", path)


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  """Trains an embedding network as the config says and evaluates it.

  Args:
    config: an ``ml_collections.ConfigDict`` (see
      :func:`sphereembed.training.config.default_config`).
    workdir: where checkpoints, ``metrics.jsonl``, TensorBoard events,
      ``metrics.json`` and the figures go. A workdir that holds checkpoints of
      the same config is resumed.

  Returns:
    The final metrics (also written to ``workdir/metrics.json``): the
    nearest-centroid ``test_accuracy`` and its variants, the confidence
    evaluation's ``{score}/...`` keys when there is one (always for CIFAR),
    ``test_accuracy_at_80`` (ACC@80%: the accuracy on the 80% of test images
    closest to their nearest centroid) whenever it was computed, the run's
    ``train_images_per_second`` and bookkeeping.

  Raises:
    ValueError: a bad config, more devices than exist, or a batch that does
      not split evenly over the devices (of every process, when
      ``jax.distributed.initialize`` started several).
    DataNotFoundError: no source has the dataset (the message says how to
      provide it).
  """
  config = config_lib.validate_config(config)
  # Process 0 owns the run's files; every process trains, evaluates and checkpoints.
  primary = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  _check_resumable(config, workdir, write=primary)
  dataset, train, test, validation, ood = _prepare_data(config)
  num_classes = dataset.num_classes
  sampler = _make_sampler(config, train)
  mesh = _make_mesh(config)
  _check_batch_fits_mesh(config, sampler, len(train), mesh)
  # Every process draws the same global batches and feeds its own rows of them.
  rows = sharding.process_rows(mesh, _global_batch(config, sampler, len(train))[0])
  num_train_steps = config.num_epochs * sampler.num_batches
  weights = (data_lib.class_weights(train.labels, num_classes)[train.labels]
             if config.class_weighting else None)

  tx = _make_optimizer(config, num_train_steps)
  model = _make_model(config, num_classes, train)
  spec = _loss_spec(config)
  # The same seed on every process: the same initial state, replicated.
  state = sharding.replicate(create_train_state(
      model, tx, jax.random.PRNGKey(config.seed), train.images[:1], num_classes), mesh)
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), config.keep_checkpoints)
  try:
    # Restored straight into the replicated shardings, on every process.
    state = checkpointer.restore_or_keep(state)
  except BaseException:
    checkpointer.close()  # no orbax threads left behind by a failed restore
    raise
  start_step = int(sharding.to_host(state.step))
  writer = metric_writers.create_default_writer(workdir, tensorboard=config.tensorboard,
                                                just_logging=not primary)
  if start_step == 0:
    parameter_overview.log_parameter_overview(sharding.to_host(state.params))
    writer.write_hparams({**config.to_dict(), **state_summary(state),
                          "data_source": dataset.source, "num_train_examples": len(train)})
  logging.info("%s: %d train / %d test examples from %s; %d steps (%d per epoch), starting at %d; "
               "%s on %d %s device(s) of %d process(es), rows %d:%d of every batch here",
               config.dataset, len(train), len(test), dataset.source, num_train_steps,
               sampler.num_batches, start_step, config.model, mesh.size,
               mesh.devices.flat[0].platform, jax.process_count(), rows.start, rows.stop)

  progress = metric_writers.ReportProgress(num_train_steps, config.log_every_steps, writer)
  eval_every = config.eval_every_steps or sampler.num_batches
  # A background thread gathers, augments and shards the next batches while
  # the devices run the current step.
  batches = cifar.prefetch(_train_batches(config, train, sampler, weights, start_step, rows),
                           config.prefetch_batches,
                           transform=lambda batch: sharding.shard_batch(batch, mesh))
  pending: list[dict[str, jax.Array]] = []
  last_train_loss = None
  train_start = time.monotonic()
  try:
    progress(start_step)
    for step in range(start_step + 1, num_train_steps + 1):
      batch = next(batches)
      state, metrics = train_step(state, batch, spec)
      pending.append(metrics)
      last = step == num_train_steps
      if step % config.log_every_steps == 0 or last:
        summary = {k: float(np.mean([m[k] for m in sharding.to_host(pending)]))
                   for k in pending[0]}
        pending = []
        last_train_loss = summary["loss"]
        writer.write_scalars(step, {f"train_{k}": v for k, v in summary.items()})
        progress(step, extra=f"loss={summary['loss']:.4f}")
        if not np.isfinite(summary["loss"]):
          raise FloatingPointError(
              f"The training loss became {summary['loss']} at step {step}; lower "
              "config.learning_rate or check the data.")
      else:
        progress(step)
      if (step % eval_every == 0 and not last):
        result = evaluate(state, test, metric=config.metric, batch_size=config.eval_batch_size,
                          mesh=mesh)
        writer.write_scalars(step, {"test_accuracy": result["test_accuracy"],
                                    "test_balanced_accuracy": result["test_balanced_accuracy"]})
      if step % config.checkpoint_every_steps == 0 or last:
        checkpointer.save(step, state)
      writer.flush()
    train_seconds = time.monotonic() - train_start

    result = evaluate(state, test, metric=config.metric, batch_size=config.eval_batch_size,
                      train=train, mesh=mesh)
    embeddings = result.pop("embeddings")
    result.pop("predictions")
    test_outputs = result.pop("outputs")
    centroids = sharding.to_host(state.centroids)
    confidence_inputs = None
    if (validation is not None or ood is not None or config.confidence
        or config.dataset in cifar.CIFAR_FOLDERS):
      confidence_inputs = dict(
          validation_outputs=(_embed_dataset(state, validation.images, config.eval_batch_size,
                                             mesh) if validation is not None else None),
          validation_labels=validation.labels if validation is not None else None,
          ood_outputs=(_embed_dataset(state, ood.images, config.eval_batch_size, mesh)
                       if ood is not None else None))
      result.update(confidence_eval.evaluate_confidence(
          test_outputs, test.labels, centroids, **confidence_inputs))
    writer.write_scalars(num_train_steps, {k: v for k, v in result.items()
                                           if isinstance(v, float)})
  finally:
    # Also on errors and interrupts: stop the prefetch thread, flush the logs,
    # let orbax finish its threads.
    batches.close()
    writer.close()
    checkpointer.close()
  records = (metric_writers.read_jsonl(os.path.join(workdir, "metrics.jsonl")) if primary
             else [])
  if last_train_loss is None:  # resumed after the last step: the loss of the earlier run
    train_losses = [r["train_loss"] for r in records if "train_loss" in r]
    last_train_loss = train_losses[-1] if train_losses else float("nan")
  if "centroid/accuracy_at_80" in result:
    # ACC@80%: accuracy on the 80% of test images closest to their nearest centroid.
    result["test_accuracy_at_80"] = result["centroid/accuracy_at_80"]
  final = {
      **result,
      "final_train_loss": last_train_loss,
      "num_train_steps": num_train_steps,
      "resumed_from_step": start_step,
      "train_seconds_this_run": train_seconds,
      "dataset": config.dataset,
      "data_source": dataset.source,
      "embedding_dim": config.embedding_dim,
      "loss": config.loss,
      "seed": config.seed,
  }
  # Training throughput of this run, compilation and periodic evaluations included.
  images_seen = (num_train_steps - start_step) * _global_batch(config, sampler, len(train))[0]
  final.update(model=config.model, num_devices=mesh.size, num_processes=jax.process_count(),
               train_images_per_second=images_seen / max(train_seconds, 1e-9))
  if primary:
    with open(os.path.join(workdir, "metrics.json"), "w", encoding="utf-8") as f:
      json.dump(final, f, indent=1)
  if config.figures and primary:
    title = (f"{config.loss}, {config.embedding_dim}-D, {config.dataset}: nearest-centroid "
             f"test accuracy {100 * result['test_accuracy']:.2f}%")
    plotting.plot_embeddings(embeddings, test.labels, centroids,
                             os.path.join(workdir, "embeddings.png"), title=title)
    if "kappa" in test_outputs and config.embedding_dim in (2, 3):
      plotting.plot_embeddings_by_confidence(
          embeddings, test_outputs["kappa"], labels=test.labels,
          path=os.path.join(workdir, "embeddings_kappa.png"),
          title="test embeddings coloured by kappa")
    if confidence_inputs is not None:
      confidence_eval.plot_confidence_figures(workdir, test_outputs, test.labels, centroids,
                                              **confidence_inputs)
    plotting.plot_training_curves(records, os.path.join(workdir, "training_curves.png"),
                                  keys=("train_loss", "test_accuracy", "train_alpha"))
  logging.info("Final: %s", json.dumps({k: v for k, v in final.items() if k != "data_source"}))
  return final
