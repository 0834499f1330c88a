"""The experiment config schema: every field, its default and its checks.

Config files in ``configs/`` start from :func:`default_config` and change a
few fields. :func:`validate_config` rejects unknown keys, wrong types and
bad values before any work starts.
"""

from __future__ import annotations

import difflib

import ml_collections

__all__ = ["RESUME_SAFE_FIELDS", "check_fields", "cifar_config", "default_config", "validate_config"]

# Fields that may change between an interrupted run and its resumption.
RESUME_SAFE_FIELDS = frozenset({
    "data_dir", "tfds_data_dir", "download", "log_every_steps", "eval_every_steps",
    "checkpoint_every_steps", "keep_checkpoints", "eval_batch_size", "tensorboard", "figures",
    # The same computation on another device count (up to float rounding), or
    # another prefetch depth (the same batches): e.g. resuming on another machine.
    "num_devices", "prefetch_batches",
})


def default_config() -> ml_collections.ConfigDict:
  """Every field of an experiment (MNIST family and CIFAR), with its default."""
  config = ml_collections.ConfigDict()

  # Data: "mnist", "fashion_mnist", "mnist10k" (local IDX folders) or TFDS;
  # "cifar10", "cifar100" (the canonical python-pickle folders or archives,
  # sphereembed.data.cifar.load_cifar, or TFDS).
  config.dataset = "mnist"
  config.data_dir = ""  # "" -> $SPHEREEMBED_DATA_DIR, then ../shared/data, then TFDS.
  config.tfds_data_dir = ""
  config.download = False  # let TFDS download (machines with internet only)
  config.max_train_examples = 0  # 0 = all; small values for smoke runs
  config.max_test_examples = 0
  # Held out from the training images (not trained on): temperature scaling.
  config.validation_examples = 0
  # Out-of-distribution test set for the confidence evaluation ("" = none).
  config.ood_dataset = ""
  # Imbalance: keep this fraction of the listed classes' training samples.
  config.imbalanced_classes = ()
  config.imbalanced_fraction = 1.0
  config.class_weighting = False  # inverse-frequency sample weights in the loss
  config.random_shift = 0  # augmentation: random translation by up to this many pixels
  # Augmentation "crop_flip": CIFAR's random 32x32 crop of the image padded by
  # 4 pixels plus a random horizontal flip (sphereembed.data.cifar.augment_batch).
  config.augment = "none"
  config.prefetch_batches = 2  # batches prepared (and put on the devices) ahead of the step

  # Batches: "shuffled" (batch_size) or "balanced" (P classes x K samples).
  config.sampler = "balanced"
  config.batch_size = 128
  config.classes_per_batch = 10
  config.samples_per_class = 13
  config.balance = "natural"  # "uniform" oversamples rare classes

  # Model: "small_cnn" (features, kernel_size, downsample, hidden, dropout_rate)
  # or a CIFAR ResNet, "resnet18" / "resnet34" (width; batch norm), each with
  # the unit-norm embedding head.
  config.model = "small_cnn"
  config.width = 1.0  # ResNets: channel multiplier of 64/128/256/512
  config.dtype = "float32"  # ResNets: "bfloat16" computes the backbone in bfloat16
  config.embedding_dim = 2
  config.features = (32, 64)
  config.kernel_size = 5
  config.downsample = "stride"  # or "pool" (stride-1 conv + 2x2 max pool)
  config.hidden = 128
  config.dropout_rate = 0.0
  config.batch_norm = False  # small_cnn: batch norm after each conv and the dense layer
  # small_cnn: the strided convs' input gradient in polyphase form on CPU (sphereembed.models.conv;
  # same values, faster). Reverse mode only, which is all training needs.
  config.polyphase_gradient = True
  config.classifier_head = False

  # Loss: "ncl", "triplet_batch_hard", "triplet_semi_hard", "triplet_batch_all",
  # "contrastive" or "softmax" (all evaluated by nearest centroid).
  config.loss = "ncl"
  config.metric = "euclidean"  # chord distance; great_circle did as well (see the README)
  config.margin = 0.2
  config.negative_weight = 0.7
  config.negative_gate = 0.0
  config.classifier_weight = 0.0
  # Per-sample confidence: "" (none), "vmf" (a kappa head trained by the vMF
  # NLL around the class centroid), "gaussian" (an isotropic sigma head,
  # Gaussian NLL) or "gaussian_diagonal" (one sigma per axis).
  config.confidence = ""
  config.confidence_weight = 1.0
  config.confidence_embedding_gradient = True  # False: the NLL does not move the embedding
  config.confidence_feature_gradient = True  # False: the NLL trains the confidence head only
  config.kappa_max = 1000.0
  # Centroid EMA: alpha = alpha_base * alpha_decay ** (step / alpha_every).
  config.alpha_base = 0.25
  config.alpha_decay = 0.65
  config.alpha_every = 1000.0
  config.centroid_warmup_steps = 0

  # Optimisation: linear warm-up and cosine decay of the learning rate, with
  # "adamw" (decoupled weight decay on every parameter) or "sgd" (momentum,
  # optionally Nesterov's, and L2 weight decay on the conv and dense kernels
  # only, as flax's ImageNet example does).
  config.optimizer = "adamw"
  config.num_epochs = 10
  config.learning_rate = 3e-3
  config.warmup_steps = 200
  config.weight_decay = 1e-4
  config.momentum = 0.9  # sgd only
  config.nesterov = False  # sgd only
  config.seed = 0

  # Data parallelism: the batch is split over a mesh of this many local
  # devices (0 = all), the train state replicated (sphereembed.training.sharding).
  config.num_devices = 0

  # Bookkeeping.
  config.log_every_steps = 100
  config.eval_every_steps = 0  # 0 = once per epoch
  config.checkpoint_every_steps = 500
  config.keep_checkpoints = 2
  config.eval_batch_size = 1000
  config.tensorboard = True
  config.figures = True
  return config


def cifar_config(dataset: str, embedding_dim: int, loss: str = "ncl") -> ml_collections.ConfigDict:
  """The GPU recipe of the ``configs/cifar*.py`` experiments.

  A CIFAR ResNet-18 (batch norm, float32 compute; ``dtype="bfloat16"`` is
  an option), random crop and flip, batch 512, SGD with Nesterov momentum
  0.9, learning rate 0.2 (flax's ImageNet rule 0.1 x batch / 256), 5 warm-up
  epochs then cosine decay, L2 weight decay 5e-4 on the kernels (the usual
  CIFAR value), 200 epochs. The centroid EMA decays over the run about as
  much as in the MNIST configs (``alpha_every`` 4000 of 19,400 steps).
  NCL draws shuffled batches; the triplet losses draw P x K batches (10
  classes x 48 images) so that every anchor has positives.

  Args:
    dataset: ``"cifar10"`` or ``"cifar100"``.
    embedding_dim: the embedding size ``D``.
    loss: the loss (see :func:`default_config`).

  Returns:
    An unlocked ``ConfigDict`` (callers may change fields).

  Raises:
    ValueError: an unknown ``dataset``, a ``D`` below 2 or an unknown loss.
  """
  if dataset not in ("cifar10", "cifar100"):
    raise ValueError(f"dataset must be 'cifar10' or 'cifar100', got {dataset!r}.")
  if isinstance(embedding_dim, bool) or not isinstance(embedding_dim, int) or embedding_dim < 2:
    raise ValueError(f"embedding_dim must be an integer >= 2, got {embedding_dim!r}.")
  if loss not in _CHOICES["loss"]:
    raise ValueError(f"loss must be one of {_CHOICES['loss']}, got {loss!r}.")
  config = default_config()
  config.dataset = dataset
  config.model = "resnet18"
  config.width = 1.0
  config.dtype = "float32"
  config.augment = "crop_flip"
  config.embedding_dim = embedding_dim
  config.loss = loss
  if loss.startswith("triplet") or loss == "contrastive":
    config.sampler = "balanced"
    config.classes_per_batch = 10
    config.samples_per_class = 48
  else:
    config.sampler = "shuffled"
    config.batch_size = 512
  config.optimizer = "sgd"
  config.learning_rate = 0.2
  config.momentum = 0.9
  config.nesterov = True
  config.weight_decay = 5e-4
  config.num_epochs = 200
  config.warmup_steps = 485  # 5 epochs of 50,000 // 512 steps
  config.alpha_every = 4000.0
  config.log_every_steps = 100
  config.checkpoint_every_steps = 2000
  config.eval_batch_size = 1000
  return config


_CHOICES = {
    "sampler": ("shuffled", "balanced"),
    "balance": ("natural", "uniform"),
    "downsample": ("stride", "pool"),
    "loss": ("ncl", "triplet_batch_hard", "triplet_semi_hard", "triplet_batch_all",
             "contrastive", "softmax"),
    "metric": ("euclidean", "squared_euclidean", "cosine", "great_circle"),
    "confidence": ("", "vmf", "gaussian", "gaussian_diagonal"),
    "ood_dataset": ("", "mnist", "fashion_mnist", "mnist10k", "cifar10", "cifar100"),
    "model": ("small_cnn", "resnet18", "resnet34"),
    "dtype": ("float32", "bfloat16"),
    "augment": ("none", "crop_flip"),
    "optimizer": ("adamw", "sgd"),
}
_POSITIVE = ("kernel_size", "batch_size", "classes_per_batch", "samples_per_class", "embedding_dim", "hidden",
             "num_epochs", "log_every_steps", "checkpoint_every_steps", "keep_checkpoints",
             "eval_batch_size", "alpha_every", "kappa_max", "width", "prefetch_batches")
_NON_NEGATIVE = ("max_train_examples", "max_test_examples", "validation_examples", "margin", "negative_weight",
                 "negative_gate", "classifier_weight", "confidence_weight", "centroid_warmup_steps", "learning_rate",
                 "warmup_steps", "weight_decay", "seed", "random_shift", "eval_every_steps", "dropout_rate",
                 "num_devices")


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
        isinstance(default, tuple) and not isinstance(value, (tuple, list))):
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


def validate_config(config) -> ml_collections.ConfigDict:
  """Checks a config against :func:`default_config`; returns a locked copy.

  Args:
    config: a ``ConfigDict`` (or a dict) with a subset of the default fields.
      Missing fields take their default.

  Returns:
    A complete, locked ``ConfigDict``.

  Raises:
    ValueError: on an unknown field (with the closest known names), a value
      of the wrong type or an out-of-range value.
  """
  merged = check_fields(config, default_config, choices=_CHOICES, positive=_POSITIVE,
                        non_negative=_NON_NEGATIVE)
  if not 0 < merged.imbalanced_fraction <= 1:
    raise ValueError(f"config.imbalanced_fraction must lie in (0, 1], got "
                     f"{merged.imbalanced_fraction}.")
  if not 0 <= merged.momentum < 1:
    raise ValueError(f"config.momentum must lie in [0, 1), got {merged.momentum}.")
  if merged.nesterov and (merged.optimizer != "sgd" or merged.momentum == 0):
    raise ValueError("config.nesterov = True needs config.optimizer = 'sgd' and "
                     f"config.momentum > 0 (got {merged.optimizer!r}, {merged.momentum}).")
  if merged.model == "small_cnn" and merged.dtype != "float32":
    raise ValueError(f"config.dtype = {merged.dtype!r} needs a ResNet (config.model = "
                     "'resnet18' or 'resnet34'); the small CNN computes in float32.")
  if merged.model != "small_cnn" and merged.batch_norm:
    raise ValueError("config.batch_norm switches batch norm on in the small CNN; the ResNets "
                     "always have it (leave config.batch_norm = False).")
  if merged.model != "small_cnn" and round(64 * merged.width) < 1:
    raise ValueError(f"config.width = {merged.width} leaves no channel (64 * width must round "
                     "to >= 1).")
  if merged.augment == "crop_flip" and merged.random_shift:
    raise ValueError("config.augment = 'crop_flip' already translates the images (by up to 4 "
                     "pixels); set config.random_shift = 0.")
  if merged.loss == "softmax" and not merged.classifier_head:
    merged.classifier_head = True  # the softmax baseline is its classifier head
  if merged.classifier_weight > 0 and not merged.classifier_head:
    raise ValueError("config.classifier_weight > 0 needs config.classifier_head = True.")
  merged.lock()
  return merged
