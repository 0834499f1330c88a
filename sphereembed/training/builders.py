"""Builders from a config: the model, the optimiser, the batch sampler and the device mesh.

Public, so that methods, benchmarks and notebooks build exactly what a run
builds. Each reads the config fields it needs; the model fields are those of
:func:`sphereembed.methods.default_config` (``model``, ``embedding_dim``,
``features``, ...), absent ones take the model's own defaults.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sphereembed import data as data_lib
from sphereembed.models import SmallCNN
from sphereembed.models import resnet
from sphereembed.training import sharding

__all__ = ["CONFIDENCE_HEADS", "global_batch_size", "make_mesh", "make_model", "make_optimizer",
           "limit_examples", "make_sampler"]

#: The model head each ``config.confidence`` needs.
CONFIDENCE_HEADS = {"": None, "vmf": "kappa", "gaussian": "sigma",
                    "gaussian_diagonal": "sigma_diagonal"}

_RESNET_DEPTHS = {"resnet18": 18, "resnet34": 34}
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# The published per-channel statistics of the CIFAR training sets.
_CIFAR_NORMALIZATION = {"cifar10": (resnet.CIFAR10_MEAN, resnet.CIFAR10_STD),
                        "cifar100": (resnet.CIFAR100_MEAN, resnet.CIFAR100_STD)}


def _normalization(dataset: str, images: np.ndarray) -> tuple[tuple[float, ...], ...]:
  """Per-channel mean and std of the [0, 1] pixels, for the ResNet's input."""
  if dataset in _CIFAR_NORMALIZATION:
    return _CIFAR_NORMALIZATION[dataset]
  # Other data: measured on (a sample of) the training images.
  sample = np.asarray(images[:10000]).astype(np.float64) / 255.0
  mean = sample.mean(axis=(0, 1, 2))
  std = np.maximum(sample.std(axis=(0, 1, 2)), 1e-3)
  return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def make_model(config, num_classes: int | None = None, train_images=None, *,
               num_proxies: int | None = None, **overrides):
  """The config's backbone with its unit-norm embedding head.

  Args:
    config: a config with the model fields (``model``, ``embedding_dim``,
      ``features``, ``kernel_size``, ``downsample``, ``hidden``, ...).
    num_classes: the classifier head's size, used when
      ``config.classifier_head`` is set.
    train_images: the training images; a ResNet on data other than CIFAR
      normalises its input by their per-channel statistics.
    num_proxies: learned class proxies in the head, for the proxy losses
      (``None``: none).
    **overrides: head or trunk attributes that replace the config's
      (``confidence``, ``dropout_rate``, ...).

  Returns:
    A :class:`~sphereembed.models.SmallCNN` or
    :class:`~sphereembed.models.resnet.CifarResNet`.
  """
  get = config.get
  head = dict(num_classes=num_classes if get("classifier_head", False) else None,
              confidence=CONFIDENCE_HEADS[get("confidence", "")],
              kappa_max=get("kappa_max", 1000.0),
              confidence_feature_gradient=get("confidence_feature_gradient", True),
              num_proxies=num_proxies)
  head.update({k: v for k, v in overrides.items() if k in head})
  trunk = {k: v for k, v in overrides.items() if k not in head}
  name = get("model", "small_cnn")
  if name == "small_cnn":
    settings = dict(features=tuple(config.features), kernel_size=config.kernel_size,
                    downsample=config.downsample, hidden=config.hidden,
                    dropout_rate=get("dropout_rate", 0.0), batch_norm=get("batch_norm", False),
                    polyphase_gradient=get("polyphase_gradient", False))
    return SmallCNN(config.embedding_dim, **{**settings, **trunk}, **head)
  mean, std = _normalization(config.dataset, train_images)
  return resnet.CifarResNet(config.embedding_dim, stage_sizes=resnet.STAGE_SIZES[
      _RESNET_DEPTHS[name]], width=config.width, mean=mean, std=std,
                            dtype=_DTYPES[config.dtype], **trunk, **head)


def _kernel_mask(params):
  """True for conv and dense kernels (ndim > 1), False for biases and norm scales."""
  return jax.tree_util.tree_map(lambda x: x.ndim > 1, params)


def make_optimizer(config, num_train_steps: int) -> optax.GradientTransformation:
  """Warm-up plus cosine decay, with AdamW or SGD (see :func:`~sphereembed.training.config.engine_config`).

  With ``config.proxy_learning_rate_multiplier`` other than 1 (the proxy
  losses), the head's class proxies (parameters named ``"proxies"``) get
  their own optimiser with the learning rate multiplied: Kim et al. train
  Proxy-Anchor's proxies 100x faster than the network.

  Args:
    config: a config with the engine's optimiser fields.
    num_train_steps: the length of the schedule (the warm-up is capped at half of it).
  """
  def optimizer(peak: float) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, peak, min(config.warmup_steps, num_train_steps // 2), max(num_train_steps, 1))
    if config.optimizer == "adamw":
      return optax.adamw(schedule, weight_decay=config.weight_decay)
    # L2 decay added to the gradient before momentum (classic SGD weight decay).
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay, mask=_kernel_mask),
        optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov))

  multiplier = config.get("proxy_learning_rate_multiplier", 1.0)
  if multiplier == 1.0:
    return optimizer(config.learning_rate)
  return optax.multi_transform(
      {"proxies": optimizer(config.learning_rate * multiplier),
       "network": optimizer(config.learning_rate)}, _proxy_labels)


def _proxy_labels(params):
  """``"proxies"`` for the class-proxy parameters, ``"network"`` for the others."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: "proxies" if getattr(path[-1], "key", None) == "proxies" else "network",
      params)


def make_sampler(config, labels: np.ndarray, seed: int | None = None):
  """The batch sampler of the config: P x K class-balanced, or shuffled batches.

  Args:
    config: a config with ``classes_per_batch`` and ``samples_per_class``,
      and optionally ``sampler`` (``"balanced"`` or ``"shuffled"`` with
      ``batch_size``) and ``balance``.
    labels: the training labels.
    seed: the batch order's seed (default ``config.seed``).
  """
  seed = config.seed if seed is None else seed
  if config.get("sampler", "balanced") == "balanced":
    return data_lib.ClassBalancedSampler(
        labels, config.classes_per_batch, config.samples_per_class, seed=seed,
        balance=config.get("balance", "natural"))
  # Dropping the remainder keeps one compiled batch shape; the dropped samples
  # differ every epoch.
  return data_lib.ShuffledSampler(len(labels), config.batch_size, seed=seed,
                                  drop_remainder=len(labels) >= config.batch_size)


def global_batch_size(config, sampler, num_examples: int) -> tuple[int, str]:
  """The size of every training batch of ``sampler``, and the config fields that set it."""
  if isinstance(sampler, data_lib.ClassBalancedSampler):
    return (config.classes_per_batch * config.samples_per_class,
            "config.classes_per_batch * config.samples_per_class")
  if sampler.drop_remainder:
    return config.batch_size, "config.batch_size"
  return num_examples, "the training set (smaller than config.batch_size: one batch)"


def make_mesh(config):
  """The 1-D data mesh of ``config.num_devices`` local devices (0 = all), or of every host's.

  Raises:
    ValueError: more devices than exist, or a device count other than all
      of them in a multi-process run.
  """
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


def limit_examples(split, count: int, *, seed: int | None = None):
  """The first ``count`` examples of ``split`` or, with a ``seed``, a fixed random subset of them.

  The subset keeps the examples' order (sorted indices of a seeded
  permutation), so every method and resumed run of the same seed sees the
  same images. ``count = 0`` (or ``count >= len(split)``) keeps everything.

  Args:
    split: a :class:`sphereembed.data.Split`.
    count: how many examples to keep (0: all).
    seed: ``None`` for the first ``count``; else the permutation's seed.
  """
  if not count or count >= len(split):
    return split
  if seed is None:
    keep = np.arange(count)
  else:
    keep = np.sort(np.random.default_rng(seed).permutation(len(split))[:count])
  return data_lib.Split(split.images[keep], split.labels[keep])
