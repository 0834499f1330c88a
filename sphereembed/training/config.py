"""The config schema: the engine's fields, the shared checks, and how a method adds its own.

Every run's config is the engine's fields (:func:`engine_config`: the method's
name, seed, optimiser, devices, bookkeeping) plus the fields of its method
(:mod:`sphereembed.methods`), which may also change the engine's defaults.
:func:`check_fields` rejects unknown keys, wrong types and bad values before
any work starts; :func:`sphereembed.methods.validate_config` applies it with
the method's schema.
"""

from __future__ import annotations

import difflib

import ml_collections

__all__ = ["ENGINE_CHECKS", "ENGINE_RESUME_SAFE_FIELDS", "check_fields", "engine_config",
           "validate_engine_fields"]

# Fields that may change between an interrupted run and its resumption: paths,
# logging, and the same computation on another device count (up to float
# rounding) or prefetch depth (the same batches), e.g. resuming on another machine.
ENGINE_RESUME_SAFE_FIELDS = frozenset({
    "data_dir", "log_every_steps", "checkpoint_every_steps", "keep_checkpoints",
    "eval_batch_size", "tensorboard", "figures", "num_devices", "prefetch_batches",
})

#: The engine fields' per-field checks, as :func:`check_fields` takes them.
ENGINE_CHECKS = dict(
    choices={"optimizer": ("adamw", "sgd")},
    positive=("log_every_steps", "checkpoint_every_steps", "keep_checkpoints", "eval_batch_size",
              "prefetch_batches"),
    non_negative=("learning_rate", "warmup_steps", "weight_decay", "seed", "num_devices"))


def engine_config() -> ml_collections.ConfigDict:
  """The fields every run has, with the engine's defaults (a method may change them)."""
  config = ml_collections.ConfigDict()
  config.method = "centroid"  # the plug-in of sphereembed.methods that trains and evaluates
  config.seed = 0
  config.data_dir = ""  # "" -> $SPHEREEMBED_DATA_DIR, then ../shared/data, then TFDS.

  # Optimisation: linear warm-up and cosine decay of the learning rate, with
  # "adamw" (decoupled weight decay on every parameter) or "sgd" (momentum,
  # optionally Nesterov's, and L2 weight decay on the conv and dense kernels
  # only, as flax's ImageNet example does).
  config.optimizer = "adamw"
  config.learning_rate = 3e-3
  config.warmup_steps = 200
  config.weight_decay = 1e-4
  config.momentum = 0.9  # sgd only
  config.nesterov = False  # sgd only

  # Data parallelism: the batch is split over a mesh of this many local
  # devices (0 = all), the train state replicated (sphereembed.training.sharding).
  config.num_devices = 0
  config.prefetch_batches = 2  # batches prepared (and put on the devices) ahead of the step

  # Bookkeeping.
  config.log_every_steps = 100
  config.checkpoint_every_steps = 500
  config.keep_checkpoints = 2
  config.eval_batch_size = 1000
  config.tensorboard = True
  config.figures = True
  return config


def check_fields(config, default_fn, *, choices, positive=(), non_negative=()):
  """The checks every config schema shares; returns a complete, unlocked copy.

  Rejects unknown fields (naming the closest known ones), values of another
  type than the field's default, non-integer ints, values outside
  ``choices[field]``, non-positive / negative values of the listed fields and,
  where the schema has ``features``, anything but positive channel counts.
  Missing fields take their default from ``default_fn()``.
  """
  reference = default_fn()
  given = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
  unknown = sorted(set(given) - set(reference))
  if unknown:
    hints = {k: difflib.get_close_matches(k, list(reference), n=2) for k in unknown}
    raise ValueError(f"Unknown config field(s) {unknown}; did you mean {hints}? "
                     f"Known fields: {sorted(reference)}.")
  merged = default_fn()
  for key, value in given.items():
    default = reference[key]
    if isinstance(default, bool) != isinstance(value, bool) or (
        isinstance(default, (int, float)) and not isinstance(value, (int, float))) or (
        isinstance(default, str) and not isinstance(value, str)) or (
        isinstance(default, tuple) and not isinstance(value, (tuple, list))) or (
        isinstance(default, dict | ml_collections.ConfigDict)
        and not isinstance(value, dict | ml_collections.ConfigDict)):
      raise ValueError(f"config.{key} must be of type {type(default).__name__} like its "
                       f"default {default!r}, got {value!r}.")
    if isinstance(default, int) and not isinstance(default, bool):
      if float(value) != int(value):
        raise ValueError(f"config.{key} must be an integer, got {value!r}.")
      value = int(value)
    elif isinstance(default, float):
      value = float(value)
    if isinstance(default, tuple):
      value = tuple(value)
    merged[key] = value
  for key, allowed in choices.items():
    if merged[key] not in allowed:
      raise ValueError(f"config.{key} must be one of {allowed}, got {merged[key]!r}.")
  for key in positive:
    if not merged[key] > 0:
      raise ValueError(f"config.{key} must be > 0, got {merged[key]!r}.")
  for key in non_negative:
    if not merged[key] >= 0:
      raise ValueError(f"config.{key} must be >= 0, got {merged[key]!r}.")
  # Every schema with a conv trunk names its channels in "features".
  if "features" in merged and (not merged.features or not all(
      isinstance(c, int) and c > 0 for c in merged.features)):
    raise ValueError(f"config.features must be positive channel counts, got {merged.features}.")
  return merged


def validate_engine_fields(config) -> None:
  """The engine's checks that span fields, on a merged config (the per-field ones: :data:`ENGINE_CHECKS`).

  Raises:
    ValueError: an out-of-range combination of engine fields.
  """
  if not 0 <= config.momentum < 1:
    raise ValueError(f"config.momentum must lie in [0, 1), got {config.momentum}.")
  if config.nesterov and (config.optimizer != "sgd" or config.momentum == 0):
    raise ValueError("config.nesterov = True needs config.optimizer = 'sgd' and "
                     f"config.momentum > 0 (got {config.optimizer!r}, {config.momentum}).")
