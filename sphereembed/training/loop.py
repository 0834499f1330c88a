"""``train_and_evaluate``: the one training loop behind every MNIST-family experiment.

Data -> sampler -> jitted :func:`~sphereembed.training.steps.train_step` ->
periodic metrics, progress, evaluation and orbax checkpoints -> final
nearest-centroid evaluation, ``metrics.json`` and figures in the workdir.
A run restarted with the same workdir resumes from its last checkpoint and
ends with the same result as an uninterrupted run.
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
from sphereembed.models import SmallCNN
from sphereembed.training import config as config_lib
from sphereembed.training import confidence_eval
from sphereembed.training import metric_writers
from sphereembed.training.checkpoints import Checkpointer
from sphereembed.training.state import TrainState, create_train_state, state_summary
from sphereembed.training.steps import LossSpec, embed_dataset, nearest_centroid, train_step

__all__ = ["evaluate", "train_and_evaluate"]


def _subset(split: data_lib.Split, indices: np.ndarray) -> data_lib.Split:
  return data_lib.Split(split.images[indices], split.labels[indices])


def _prepare_data(config):
  dataset = data_lib.load_dataset(config.dataset, config.data_dir or None,
                                  tfds_data_dir=config.tfds_data_dir or None,
                                  download=config.download)
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
    ood = data_lib.load_dataset(config.ood_dataset, config.data_dir or None,
                                tfds_data_dir=config.tfds_data_dir or None,
                                download=config.download).test
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


def evaluate(state: TrainState, test: data_lib.Split, *, metric: str = "great_circle",
             batch_size: int = 1000, train: data_lib.Split | None = None) -> dict[str, Any]:
  """Nearest-centroid accuracy of the test set, and optionally against train class means.

  Args:
    state: the train state (its EMA centroids are the class prototypes).
    test: the evaluation split.
    metric: the distance used for the nearest centroid.
    batch_size: images per forward pass.
    train: when given, its class means (re-normalised) serve as a second set
      of prototypes (``test_accuracy_class_means``): the usual protocol for
      losses that have no centroids of their own.

  Returns:
    ``{"test_accuracy": ..., ...}`` plus the test embeddings, predictions and
    all model outputs under ``"embeddings"``, ``"predictions"`` and
    ``"outputs"`` (NumPy arrays).
  """
  outputs = embed_dataset(state, test.images, batch_size)
  embeddings = outputs["embedding"]
  predictions = np.asarray(nearest_centroid(embeddings, state.centroids, metric))
  num_classes = state.centroids.shape[0]
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
    train_embeddings = embed_dataset(state, train.images, batch_size)["embedding"]
    sums = np.zeros((num_classes, embeddings.shape[1]), np.float64)
    np.add.at(sums, train.labels, train_embeddings)
    means = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    class_mean_predictions = np.asarray(nearest_centroid(
        embeddings, jnp.asarray(means, embeddings.dtype), metric))
    result["test_accuracy_class_means"] = float(np.mean(class_mean_predictions == test.labels))
  return result


def _check_resumable(config, workdir: str) -> None:
  """Refuses to resume a run whose training-relevant config differs."""
  path = os.path.join(workdir, "config.json")
  current = config.to_dict()
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      saved = json.load(f)
    changed = sorted(k for k in set(saved) | set(current)
                     if k not in config_lib.RESUME_SAFE_FIELDS
                     and json.dumps(saved.get(k)) != json.dumps(current.get(k), default=list))
    if changed:
      raise ValueError(
          f"{workdir} holds a run with a different config (fields {changed}); resuming it would "
          "mix two experiments. Use another --workdir, or delete that one.")
  with open(path, "w", encoding="utf-8") as f:
    json.dump(current, f, indent=1, default=list)


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  """Trains an embedding network as the config says and evaluates it.

  Args:
    config: an ``ml_collections.ConfigDict`` (see
      :func:`sphereembed.training.config.default_config`).
    workdir: where checkpoints, ``metrics.jsonl``, TensorBoard events,
      ``metrics.json`` and the figures go. A workdir that holds checkpoints of
      the same config is resumed.

  Returns:
    The final metrics (also written to ``workdir/metrics.json``).
  """
  config = config_lib.validate_config(config)
  os.makedirs(workdir, exist_ok=True)
  _check_resumable(config, workdir)
  dataset, train, test, validation, ood = _prepare_data(config)
  num_classes = dataset.num_classes
  sampler = _make_sampler(config, train)
  num_train_steps = config.num_epochs * sampler.num_batches
  weights = (data_lib.class_weights(train.labels, num_classes)[train.labels]
             if config.class_weighting else None)

  schedule = optax.warmup_cosine_decay_schedule(
      0.0, config.learning_rate, min(config.warmup_steps, num_train_steps // 2),
      max(num_train_steps, 1))
  tx = optax.adamw(schedule, weight_decay=config.weight_decay)
  model = SmallCNN(config.embedding_dim, num_classes if config.classifier_head else None,
                   features=tuple(config.features), kernel_size=config.kernel_size,
                   downsample=config.downsample, hidden=config.hidden,
                   dropout_rate=config.dropout_rate,
                   confidence=_CONFIDENCE_HEADS[config.confidence], kappa_max=config.kappa_max)
  spec = _loss_spec(config)
  state = create_train_state(model, tx, jax.random.PRNGKey(config.seed), train.images[:1],
                             num_classes)
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), config.keep_checkpoints)
  state = checkpointer.restore_or_keep(state)
  start_step = int(state.step)
  writer = metric_writers.create_default_writer(workdir, tensorboard=config.tensorboard)
  if start_step == 0:
    parameter_overview.log_parameter_overview(state.params)
    writer.write_hparams({**config.to_dict(), **state_summary(state),
                          "data_source": dataset.source, "num_train_examples": len(train)})
  logging.info("%s: %d train / %d test examples from %s; %d steps (%d per epoch), starting at %d",
               config.dataset, len(train), len(test), dataset.source, num_train_steps,
               sampler.num_batches, start_step)

  progress = metric_writers.ReportProgress(num_train_steps, config.log_every_steps, writer)
  eval_every = config.eval_every_steps or sampler.num_batches
  batches = sampler.iterate(start_step=start_step)
  pending: list[dict[str, jax.Array]] = []
  train_start = time.monotonic()
  try:
    progress(start_step)
    for step in range(start_step + 1, num_train_steps + 1):
      indices = next(batches)
      images = train.images[indices]
      if config.random_shift:
        # Seeded by (seed, step): a resumed run draws the same shifts.
        images = augment.random_translate(images, config.random_shift,
                                          np.random.default_rng([config.seed, step]))
      batch = {"image": images, "label": train.labels[indices]}
      if weights is not None:
        batch["weight"] = weights[indices]
      state, metrics = train_step(state, batch, spec)
      pending.append(metrics)
      last = step == num_train_steps
      if step % config.log_every_steps == 0 or last:
        summary = {k: float(np.mean([m[k] for m in jax.device_get(pending)])) for k in pending[0]}
        pending = []
        writer.write_scalars(step, {f"train_{k}": v for k, v in summary.items()})
        progress(step, extra=f"loss={summary['loss']:.4f}")
        if not np.isfinite(summary["loss"]):
          raise FloatingPointError(
              f"The training loss became {summary['loss']} at step {step}; lower "
              "config.learning_rate or check the data.")
      else:
        progress(step)
      if (step % eval_every == 0 and not last):
        result = evaluate(state, test, metric=config.metric, batch_size=config.eval_batch_size)
        writer.write_scalars(step, {"test_accuracy": result["test_accuracy"],
                                    "test_balanced_accuracy": result["test_balanced_accuracy"]})
      if step % config.checkpoint_every_steps == 0 or last:
        checkpointer.save(step, state)
      writer.flush()
    train_seconds = time.monotonic() - train_start

    result = evaluate(state, test, metric=config.metric, batch_size=config.eval_batch_size,
                      train=train)
    embeddings = result.pop("embeddings")
    result.pop("predictions")
    test_outputs = result.pop("outputs")
    if validation is not None or ood is not None or config.confidence:
      result.update(confidence_eval.evaluate_confidence(
          test_outputs, test.labels, np.asarray(state.centroids),
          validation_outputs=(embed_dataset(state, validation.images, config.eval_batch_size)
                              if validation is not None else None),
          validation_labels=validation.labels if validation is not None else None,
          ood_outputs=(embed_dataset(state, ood.images, config.eval_batch_size)
                       if ood is not None else None)))
    writer.write_scalars(num_train_steps, {k: v for k, v in result.items()
                                           if isinstance(v, float)})
  finally:
    # Also on errors and interrupts: flush the logs, let orbax finish its threads.
    writer.close()
    checkpointer.close()
  records = metric_writers.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  train_losses = [r["train_loss"] for r in records if "train_loss" in r]
  final = {
      **result,
      "final_train_loss": train_losses[-1] if train_losses else float("nan"),
      "num_train_steps": num_train_steps,
      "resumed_from_step": start_step,
      "train_seconds_this_run": train_seconds,
      "dataset": config.dataset,
      "data_source": dataset.source,
      "embedding_dim": config.embedding_dim,
      "loss": config.loss,
      "seed": config.seed,
  }
  with open(os.path.join(workdir, "metrics.json"), "w", encoding="utf-8") as f:
    json.dump(final, f, indent=1)
  if config.figures:
    title = (f"{config.loss}, {config.embedding_dim}-D, {config.dataset}: nearest-centroid "
             f"test accuracy {100 * result['test_accuracy']:.2f}%")
    plotting.plot_embeddings(embeddings, test.labels, np.asarray(state.centroids),
                             os.path.join(workdir, "embeddings.png"), title=title)
    if "kappa" in test_outputs and config.embedding_dim in (2, 3):
      plotting.plot_embeddings_by_confidence(
          embeddings, test_outputs["kappa"], labels=test.labels,
          path=os.path.join(workdir, "embeddings_kappa.png"),
          title="test embeddings coloured by kappa")
    plotting.plot_training_curves(records, os.path.join(workdir, "training_curves.png"),
                                  keys=("train_loss", "test_accuracy", "train_alpha"))
  logging.info("Final: %s", json.dumps({k: v for k, v in final.items() if k != "data_source"}))
  return final
