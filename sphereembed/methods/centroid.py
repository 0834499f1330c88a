"""The centroid family: an embedding network with EMA class centroids, evaluated by nearest centroid.

``config.method = "centroid"``. One train step minimises the loss of
``config.loss`` (:data:`LOSSES`: NCL, the triplet losses, contrastive,
NT-Xent, the siamese cosine loss, softmax, the proxy losses
(:data:`PROXY_LOSSES`: ArcFace, CosFace, normalised softmax, Proxy-Anchor,
Proxy-NCA, with learned proxies in the model's head) and the pair-weighting
losses (multi-similarity, circle, lifted structure); the triplet, contrastive
and pair-weighting losses optionally against a cross-batch memory,
``config.memory_size``), optionally plus a confidence negative
log-likelihood (a vMF ``kappa`` or Gaussian ``sigma`` head, around the
current centroids) and a classifier cross-entropy, and moves the class
centroids by an EMA of the batch's class means: explicit state in the train
state's extras (``state.extras["centroids"]``), so every loss is evaluated by
nearest centroid; the proxy losses by their nearest proxy (the EMA
centroids' accuracy is reported beside it).

Data -> sampler -> augmentation (random shift; CIFAR's crop and flip, drawn
from ``(seed, step)``) -> the engine's phase ``"train"``
(:func:`sphereembed.training.engine.run_phase`: mesh, prefetch, checkpoints,
writers) -> the nearest-centroid evaluation (accuracy, balanced accuracy,
per class, against training class means) -> the confidence protocol
(:mod:`sphereembed.evaluation.protocols.confidence`) when the run has a
validation split, an OOD set, a confidence head, or CIFAR data -> figures.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from sphereembed import centroids as centroids_lib
from sphereembed import data as data_lib
from sphereembed import geometry, losses
from sphereembed import inference
from sphereembed import memory as memory_lib
from sphereembed import plotting
from sphereembed import prediction as prediction_lib
from sphereembed.data import augment
from sphereembed.data import cifar
from sphereembed.data import files as data_files
from sphereembed.data import pairs as pairs_lib
from sphereembed.evaluation import calibration as eval_calibration
from sphereembed.evaluation.protocols import confidence as confidence_protocol
from sphereembed.methods.base import Method, default_config, register
from sphereembed.training import builders
from sphereembed.training import engine
from sphereembed.training import metric_writers
from sphereembed.training import sharding
from sphereembed.training.state import TrainState, init_train_state

__all__ = [
    "CONFIDENCE_LOSSES",
    "LOSSES",
    "LossSpec",
    "MEMORY_LOSSES",
    "PROXY_LOSSES",
    "cifar_config",
    "create_train_state",
    "embed_dataset",
    "evaluate",
    "loss_spec",
    "nearest_centroid",
    "num_proxies",
    "prepare_data",
    "prototypes",
    "train_batches",
    "train_step",
]

# The triplet and contrastive losses (config.margin and config.metric).
_METRIC_LOSSES: dict[str, Callable] = {
    "triplet_batch_hard": losses.triplet_batch_hard,
    "triplet_semi_hard": losses.triplet_semi_hard,
    "triplet_batch_all": losses.triplet_batch_all,
    "contrastive": losses.contrastive,
}
# The losses with learned class proxies (params["head"]["proxies"]: one per class, or
# num_subcenters per class for subcenter_arcface).
_PROXY_LOSSES: dict[str, Callable] = {
    "arcface": losses.arcface,
    "cosface": losses.cosface,
    "subcenter_arcface": losses.subcenter_arcface,
    "normalized_softmax": losses.normalized_softmax,
    "proxy_anchor": losses.proxy_anchor,
    "proxy_nca": losses.proxy_nca,
}
# The pair-weighting losses (all pairs of the batch, or the batch against a memory).
_PAIR_WEIGHTING_LOSSES: dict[str, Callable] = {
    "multi_similarity": losses.multi_similarity,
    "circle": losses.circle,
    "lifted_structure": losses.lifted_structure,
}

LOSSES: tuple[str, ...] = (
    "ncl", "triplet_batch_hard", "triplet_semi_hard", "triplet_batch_all", "contrastive",
    "ntxent", "siamese_cosine", "softmax", *_PROXY_LOSSES, *_PAIR_WEIGHTING_LOSSES)

#: The losses with learned class proxies in the model's head.
PROXY_LOSSES: tuple[str, ...] = tuple(_PROXY_LOSSES)
# The losses with a reference form (sphereembed.memory.memory_loss).
_MEMORY_LOSS_FNS: dict[str, Callable] = {**_METRIC_LOSSES, **_PAIR_WEIGHTING_LOSSES}
#: The losses that can score the batch against a cross-batch memory (``config.memory_size``).
MEMORY_LOSSES: tuple[str, ...] = tuple(_MEMORY_LOSS_FNS)
# The keyword arguments of config.loss_options: each loss's hyper-parameters (their
# defaults are the loss's own, pytorch-metric-learning's).
_LOSS_OPTIONS: dict[str, tuple[str, ...]] = {
    "arcface": ("margin", "scale"), "cosface": ("margin", "scale"),
    "subcenter_arcface": ("num_subcenters", "margin", "scale"),
    "normalized_softmax": ("temperature",), "proxy_anchor": ("margin", "alpha"),
    "proxy_nca": ("softmax_scale",), "multi_similarity": ("alpha", "beta", "base", "mine",
                                                          "epsilon"),
    "circle": ("margin", "gamma"), "lifted_structure": ("pos_margin", "neg_margin"),
}

CONFIDENCE_LOSSES: tuple[str, ...] = ("", "vmf", "gaussian")



# ----------------------------------------------------------------------------
# Config.


def _fields() -> ml_collections.ConfigDict:
  """The centroid family's fields (the engine's defaults are this family's)."""
  config = ml_collections.ConfigDict()

  # Data: "mnist", "fashion_mnist", "mnist10k" (local IDX folders) or TFDS;
  # "cifar10", "cifar100" (the canonical python-pickle folders or archives,
  # sphereembed.data.cifar.load_cifar, or TFDS); your own data as
  # "folder:PATH", "npz:PATH" or "tfds:NAME[:CONFIG]" (sphereembed.data.files).
  config.dataset = "mnist"
  config.tfds_data_dir = ""
  config.download = False  # let TFDS download (machines with internet only)
  # folder: data without train/ and test/ folders: this share of each class is the test split.
  config.test_fraction = 0.2
  config.image_size = 0  # > 0: resize every image to image_size x image_size
  config.max_train_examples = 0  # 0 = all; else a fixed random subset (smoke runs)
  config.max_test_examples = 0  # 0 = all; else the first N test (and OOD test) images
  # Held out from the training images (not trained on): calibration of the
  # confidence and the saved model's abstention threshold. A count, or a
  # share of the training images (validation_fraction; not both).
  config.validation_examples = 0
  config.validation_fraction = 0.0
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

  # Loss: one of LOSSES (evaluated by nearest centroid; the proxy losses by nearest proxy).
  config.loss = "ncl"
  config.metric = "euclidean"  # chord distance; great_circle did as well
  config.margin = 0.2  # triplet and contrastive losses
  config.temperature = 0.1  # ntxent
  config.siamese_scale = 10.0  # siamese_cosine: logit = scale * cos + bias, on all pairs
  config.siamese_bias = -5.0
  config.negative_weight = 0.7
  config.negative_gate = 0.0
  config.classifier_weight = 0.0
  # The proxy and pair-weighting losses' hyper-parameters, by their keyword names
  # (e.g. {"margin": 0.5, "scale": 64.0} for arcface; absent ones take the loss's
  # default, pytorch-metric-learning's). Config files list them, so that
  # --config.loss_options.margin=0.3 can change one.
  config.loss_options = ml_collections.ConfigDict()
  # The proxy losses: the class proxies' learning rate over the network's (Kim et al.
  # train Proxy-Anchor's 100x faster).
  config.proxy_learning_rate_multiplier = 1.0
  # Cross-batch memory (XBM): > 0 scores each batch against the last memory_size
  # training embeddings too (MEMORY_LOSSES: the triplet, contrastive and pair-weighting losses).
  config.memory_size = 0
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

  config.num_epochs = 10
  config.eval_every_steps = 0  # 0 = once per epoch

  # The saved model abstains below the calibrated confidence that keeps
  # abstain_level accuracy (abstain_target = "accuracy") or coverage
  # ("coverage") on the validation split (validation_examples or validation_fraction > 0).
  config.abstain_target = "accuracy"
  config.abstain_level = 0.99
  return config


# The name a dataset passed from Python (train_and_evaluate(..., dataset=...)) gets in the config.
_ARRAYS_PREFIX = "arrays:"

_CHOICES = {
    "sampler": ("shuffled", "balanced"),
    "balance": ("natural", "uniform"),
    "downsample": ("stride", "pool"),
    "loss": LOSSES,
    "metric": ("euclidean", "squared_euclidean", "cosine", "great_circle"),
    "confidence": ("", "vmf", "gaussian", "gaussian_diagonal"),
    "model": ("small_cnn", "resnet18", "resnet34"),
    "dtype": ("float32", "bfloat16"),
    "augment": ("none", "crop_flip"),
    "abstain_target": ("accuracy", "coverage"),
}
_POSITIVE = ("kernel_size", "batch_size", "classes_per_batch", "samples_per_class",
             "embedding_dim", "hidden", "num_epochs", "alpha_every", "kappa_max", "width",
             "temperature", "proxy_learning_rate_multiplier")
_NON_NEGATIVE = ("max_train_examples", "max_test_examples", "validation_examples", "margin",
                 "negative_weight", "negative_gate", "classifier_weight", "confidence_weight",
                 "centroid_warmup_steps", "random_shift", "eval_every_steps", "dropout_rate",
                 "image_size", "memory_size")


def _validate(merged) -> None:
  if not merged.dataset.startswith(_ARRAYS_PREFIX):
    data_lib.check_dataset_name(merged.dataset)
  if merged.ood_dataset:
    data_lib.check_dataset_name(merged.ood_dataset)
  if not 0 <= merged.validation_fraction < 1:
    raise ValueError(f"config.validation_fraction must lie in [0, 1), got "
                     f"{merged.validation_fraction}.")
  if merged.validation_fraction and merged.validation_examples:
    raise ValueError("set config.validation_examples or config.validation_fraction, not both.")
  if not 0 < merged.test_fraction < 1:
    raise ValueError(f"config.test_fraction must lie in (0, 1), got {merged.test_fraction}.")
  if not 0 < merged.abstain_level <= 1:
    raise ValueError(f"config.abstain_level must lie in (0, 1], got {merged.abstain_level}.")
  if not 0 < merged.imbalanced_fraction <= 1:
    raise ValueError(f"config.imbalanced_fraction must lie in (0, 1], got "
                     f"{merged.imbalanced_fraction}.")
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
  options = dict(merged.loss_options)
  if options:
    allowed = _LOSS_OPTIONS.get(merged.loss, ())
    unknown = sorted(set(options) - set(allowed))
    if unknown:
      raise ValueError(
          f"config.loss_options {unknown} are not hyper-parameters of loss {merged.loss!r}; "
          + (f"it takes {list(allowed)}." if allowed else
             "it has none there (its hyper-parameters are config fields: margin, temperature, "
             "...)."))
    for key, value in options.items():
      if isinstance(value, bool) != (key == "mine") or not isinstance(value, (int, float)):
        raise ValueError(f"config.loss_options.{key} must be "
                         f"{'a bool' if key == 'mine' else 'a number'}, got {value!r}.")
    subcenters = options.get("num_subcenters", 1)
    if subcenters != int(subcenters) or subcenters < 1:
      raise ValueError(f"config.loss_options.num_subcenters must be a positive integer, got "
                       f"{options['num_subcenters']!r}.")
  if merged.memory_size and merged.loss not in MEMORY_LOSSES:
    raise ValueError(f"config.memory_size needs a loss with a memory form, one of "
                     f"{MEMORY_LOSSES}; got loss {merged.loss!r}.")
  if merged.loss in PROXY_LOSSES and merged.confidence:
    # The confidence NLLs are fitted around the EMA centroids, not the proxies.
    raise ValueError(f"config.confidence = {merged.confidence!r} is fitted around the class "
                     f"centroids; the proxy loss {merged.loss!r} is evaluated by its proxies. "
                     "Use it with ncl or a metric loss.")
  if merged.loss == "softmax" and not merged.classifier_head:
    merged.classifier_head = True  # the softmax baseline is its classifier head
  if merged.classifier_weight > 0 and not merged.classifier_head:
    raise ValueError("config.classifier_weight > 0 needs config.classifier_head = True.")


def cifar_config(dataset: str, embedding_dim: int, loss: str = "ncl") -> ml_collections.ConfigDict:
  """The GPU recipe of the ``configs/cifar*.py`` experiments.

  A CIFAR ResNet-18 (batch norm, float32 compute; ``dtype="bfloat16"`` is
  an option), random crop and flip, batch 512, SGD with Nesterov momentum
  0.9, learning rate 0.2 (flax's ImageNet rule 0.1 x batch / 256), 5 warm-up
  epochs then cosine decay, L2 weight decay 5e-4 on the kernels (the usual
  CIFAR value), 200 epochs. The centroid EMA decays over the run about as
  much as in the MNIST configs (``alpha_every`` 4000 of 19,400 steps).
  NCL and the proxy losses draw shuffled batches; the triplet, contrastive
  and pair-weighting losses draw P x K batches (10 classes x 48 images) so
  that every anchor has positives.

  Args:
    dataset: ``"cifar10"`` or ``"cifar100"``.
    embedding_dim: the embedding size ``D``.
    loss: one of :data:`LOSSES`.

  Returns:
    An unlocked ``ConfigDict`` (callers may change fields).

  Raises:
    ValueError: an unknown ``dataset``, a ``D`` below 2 or an unknown loss.
  """
  if dataset not in ("cifar10", "cifar100"):
    raise ValueError(f"dataset must be 'cifar10' or 'cifar100', got {dataset!r}.")
  if isinstance(embedding_dim, bool) or not isinstance(embedding_dim, int) or embedding_dim < 2:
    raise ValueError(f"embedding_dim must be an integer >= 2, got {embedding_dim!r}.")
  if loss not in LOSSES:
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}.")
  config = default_config("centroid")
  config.dataset = dataset
  config.model = "resnet18"
  config.width = 1.0
  config.dtype = "float32"
  config.augment = "crop_flip"
  config.embedding_dim = embedding_dim
  config.loss = loss
  if loss.startswith("triplet") or loss == "contrastive" or loss in _PAIR_WEIGHTING_LOSSES:
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


# ----------------------------------------------------------------------------
# The train step.


@dataclasses.dataclass(frozen=True)
class LossSpec:
  """What the train step minimises, and how the centroids move.

  Attributes:
    name: one of :data:`LOSSES`.
    metric: the distance of the metric losses and of NCL.
    margin: the margin of the triplet and contrastive losses.
    temperature: NT-Xent's temperature.
    siamese_scale, siamese_bias: the siamese cosine loss's logit
      ``scale * cos + bias`` (:func:`sphereembed.losses.siamese_cosine_bce`,
      on every pair of the batch).
    alpha_base, alpha_decay, alpha_every: the EMA schedule of the centroids
      (:func:`sphereembed.centroids.ema_alpha`).
    centroid_warmup_steps: the centroids stay at their random initial
      positions (alpha = 0) for this many steps. A fresh network maps every
      image to nearly the same point; moving the centroids to those class
      means at once would collapse them together.
    negative_weight: the weight of NCL's negative term (hardest plus mean
      other centroid). Each distance has a gradient of norm 1, so with a
      weight above 1/2 the push from the other centroids can exceed the pull
      of a sample's own centroid.
    negative_gate: NCL's negative term is switched off once alpha falls
      below this (0: never).
    classifier_weight: weight of an extra softmax cross-entropy on the
      model's ``"logits"`` (the softmax loss uses it alone).
    confidence: ``""`` (none), ``"vmf"`` (:func:`sphereembed.losses.vmf_nll`
      on the model's ``"kappa"``) or ``"gaussian"``
      (:func:`sphereembed.losses.gaussian_nll` on its ``"log_sigma"``), both
      around the current class centroids.
    confidence_weight: the weight of that negative log-likelihood.
    confidence_embedding_gradient: whether the likelihood also shapes the
      embedding (``False``: it trains the confidence head only).
    options: the proxy and pair-weighting losses' keyword arguments, as
      sorted ``(name, value)`` pairs (hashable: the spec is a static argument).
    memory_size: > 0: a loss of :data:`MEMORY_LOSSES` scores the batch
      against a cross-batch memory of this many past embeddings
      (:func:`sphereembed.memory.memory_loss`, the batch included), kept in
      ``state.extras["memory"]``.
  """

  name: str = "ncl"
  metric: geometry.Metric = "great_circle"
  margin: float = 0.2
  temperature: float = 0.1
  siamese_scale: float = 10.0
  siamese_bias: float = -5.0
  alpha_base: float = 0.25
  alpha_decay: float = 0.65
  alpha_every: float = 1000
  centroid_warmup_steps: int = 0
  negative_weight: float = 1.0
  negative_gate: float = 0.0
  classifier_weight: float = 0.0
  confidence: str = ""
  confidence_weight: float = 1.0
  confidence_embedding_gradient: bool = True
  options: tuple[tuple[str, Any], ...] = ()
  memory_size: int = 0

  def __post_init__(self):
    if self.name not in LOSSES:
      raise ValueError(f"Unknown loss {self.name!r}; expected one of {LOSSES}.")
    if self.metric not in geometry.METRICS:
      raise ValueError(f"Unknown metric {self.metric!r}; expected one of {geometry.METRICS}.")
    if self.confidence not in CONFIDENCE_LOSSES:
      raise ValueError(f"Unknown confidence {self.confidence!r}; expected one of "
                       f"{CONFIDENCE_LOSSES}.")
    if min(self.margin, self.classifier_weight, self.negative_gate, self.confidence_weight) < 0:
      raise ValueError(
          "margin, classifier_weight, negative_gate and confidence_weight must be >= 0.")
    if not self.temperature > 0:
      raise ValueError(f"temperature must be > 0, got {self.temperature}.")
    if not (0 <= self.alpha_base <= 1 and 0 < self.alpha_decay <= 1 and self.alpha_every > 0):
      raise ValueError(
          "the EMA schedule needs 0 <= alpha_base <= 1, 0 < alpha_decay <= 1, alpha_every > 0; "
          f"got {self.alpha_base}, {self.alpha_decay}, {self.alpha_every}.")

    if self.memory_size and self.name not in MEMORY_LOSSES:
      raise ValueError(f"memory_size needs one of {MEMORY_LOSSES}, got {self.name!r}.")

  @property
  def needs_logits(self) -> bool:
    return self.name == "softmax" or self.classifier_weight > 0

  @property
  def uses_proxies(self) -> bool:
    return self.name in PROXY_LOSSES


def _loss_terms(spec: LossSpec, outputs, labels, centroids, alpha, weights, proxies=None,
                memory=None):
  embeddings = outputs["embedding"]
  options = dict(spec.options)
  terms = {}
  if spec.name in _PROXY_LOSSES:
    terms[spec.name] = _PROXY_LOSSES[spec.name](
        embeddings, labels, proxies.astype(embeddings.dtype), weights=weights, **options)
  elif memory is not None:
    if spec.name in _METRIC_LOSSES:
      options = dict(margin=spec.margin, metric=spec.metric)
    terms[spec.name] = memory_lib.memory_loss(_MEMORY_LOSS_FNS[spec.name], embeddings, labels,
                                              memory, weights=weights, **options)
  elif spec.name in _PAIR_WEIGHTING_LOSSES:
    terms[spec.name] = _PAIR_WEIGHTING_LOSSES[spec.name](embeddings, labels, weights=weights,
                                                         **options)
  elif spec.name == "ncl":
    gate = spec.negative_weight * centroids_lib.negative_weight(alpha, spec.negative_gate)
    terms["ncl"] = losses.ncl(embeddings, labels, centroids.astype(embeddings.dtype),
                              metric=spec.metric, negative_weight=gate.astype(embeddings.dtype),
                              weights=weights)
  elif spec.name in _METRIC_LOSSES:
    terms[spec.name] = _METRIC_LOSSES[spec.name](
        embeddings, labels, margin=spec.margin, metric=spec.metric, weights=weights)
  elif spec.name == "ntxent":
    terms["ntxent"] = losses.ntxent(embeddings, labels, temperature=spec.temperature,
                                    weights=weights)
  elif spec.name == "siamese_cosine":
    pairs = pairs_lib.all_pairs(labels)
    pair_weights = None if weights is None else weights[pairs.first] * weights[pairs.second]
    terms["siamese_cosine"] = losses.siamese_cosine_bce(
        embeddings[pairs.first], embeddings[pairs.second], pairs.is_same,
        scale=spec.siamese_scale, bias=spec.siamese_bias, weights=pair_weights)
  if spec.confidence:
    own_centroids = centroids.astype(embeddings.dtype)
    if spec.confidence == "vmf":
      nll = losses.vmf_nll(embeddings, outputs["kappa"], labels, own_centroids,
                           embedding_gradient=spec.confidence_embedding_gradient, weights=weights)
    else:
      nll = losses.gaussian_nll(embeddings, outputs["log_sigma"], labels, own_centroids,
                                embedding_gradient=spec.confidence_embedding_gradient,
                                weights=weights)
    terms[f"{spec.confidence}_nll"] = spec.confidence_weight * nll
  if spec.needs_logits:
    factor = 1.0 if spec.name == "softmax" else spec.classifier_weight
    cross_entropy = optax.softmax_cross_entropy_with_integer_labels(outputs["logits"], labels)
    if weights is None:
      mean = jnp.mean(cross_entropy)
    else:
      mean = jnp.sum(weights * cross_entropy) / jnp.maximum(jnp.sum(weights), 1e-12)
    terms["cross_entropy"] = factor * mean
  return terms


@functools.partial(jax.jit, static_argnames="spec", donate_argnums=0)
def train_step(state: TrainState, batch: dict[str, jax.Array], spec: LossSpec = LossSpec()):
  """One step: loss with the current centroids, parameter update, centroid update.

  Args:
    state: the :class:`TrainState`; donated (its buffers are reused).
    batch: ``{"image": (B, H, W, C), "label": (B,) int}`` and optionally
      ``"weight"``: ``(B,)`` per-sample loss weights (class weighting).
    spec: the static :class:`LossSpec`.

  Returns:
    ``(new_state, metrics)``, metrics a dict of scalars: ``loss``, its terms,
    ``alpha``, ``grad_norm`` and ``embedding_norm`` (a check that the
    embeddings stay on the sphere).
  """
  rng, dropout_key = jax.random.split(state.rng)
  memory = memory_lib.Memory(**state.extras["memory"]) if spec.memory_size else None
  labels = batch["label"]
  alpha = jnp.where(
      state.step < spec.centroid_warmup_steps, 0.0,
      centroids_lib.ema_alpha(state.step, spec.alpha_base, spec.alpha_decay, spec.alpha_every))

  def loss_fn(params):
    variables = state.variables(params)
    if state.batch_stats:
      # Batch norm: batch statistics in training mode, running averages updated.
      outputs, updates = state.apply_fn(variables, batch["image"], train=True,
                                        rngs={"dropout": dropout_key}, mutable=["batch_stats"])
      batch_stats = updates["batch_stats"]
    else:
      outputs = state.apply_fn(variables, batch["image"], train=True, rngs={"dropout": dropout_key})
      batch_stats = state.batch_stats
    terms = _loss_terms(spec, outputs, labels, state.extras["centroids"], alpha,
                        batch.get("weight"),
                        proxies=params["head"]["proxies"] if spec.uses_proxies else None,
                        memory=memory)
    return sum(terms.values()), (terms, outputs, batch_stats)

  (loss, (terms, outputs, batch_stats)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  new_state = state.apply_gradients(grads=grads).replace(batch_stats=batch_stats)
  embeddings = outputs["embedding"]
  # Every loss keeps centroids, so that all are evaluated by nearest centroid.
  centroids = state.extras["centroids"]
  new_centroids = centroids_lib.update_centroids(
      centroids, jax.lax.stop_gradient(embeddings).astype(centroids.dtype), labels, alpha)
  new_state = new_state.with_extras(centroids=new_centroids).replace(rng=rng)
  if memory is not None:
    # The global batch enters the (replicated) memory: the same on 1 or N devices.
    new_memory = memory_lib.memory_update(memory, jax.lax.stop_gradient(embeddings), labels)
    new_state = new_state.with_extras(memory=new_memory._asdict())
  metrics = {"loss": loss, "alpha": alpha, "grad_norm": optax.tree.norm(grads),
             "embedding_norm": jnp.mean(jnp.linalg.norm(embeddings, axis=-1))}
  metrics.update({f"loss_{name}": value for name, value in terms.items()})
  if "kappa" in outputs:
    metrics["kappa_mean"] = jnp.mean(outputs["kappa"])
  if "log_sigma" in outputs:
    metrics["sigma_mean"] = jnp.mean(jnp.exp(outputs["log_sigma"]))
  return new_state, metrics


def loss_spec(config) -> LossSpec:
  """The :class:`LossSpec` of a validated centroid config."""
  return LossSpec(
      name=config.loss, metric=config.metric, margin=config.margin,
      temperature=config.temperature, siamese_scale=config.siamese_scale,
      siamese_bias=config.siamese_bias,
      alpha_base=config.alpha_base, alpha_decay=config.alpha_decay,
      alpha_every=config.alpha_every, centroid_warmup_steps=config.centroid_warmup_steps,
      negative_weight=config.negative_weight, negative_gate=config.negative_gate,
      classifier_weight=config.classifier_weight,
      confidence="gaussian" if config.confidence.startswith("gaussian") else config.confidence,
      confidence_weight=config.confidence_weight,
      confidence_embedding_gradient=config.confidence_embedding_gradient,
      # Integers where the loss needs a static Python int.
      options=tuple(sorted((key, int(value) if key == "num_subcenters" else value)
                           for key, value in dict(config.loss_options).items())),
      memory_size=config.memory_size)


def create_train_state(model, tx: optax.GradientTransformation, key: jax.Array,
                       sample_input: jax.Array, num_classes: int, *,
                       memory_size: int = 0) -> TrainState:
  """Initialises parameters, optimiser state and centroids from one PRNG key.

  Args:
    model: a Flax module returning ``{"embedding": (B, D), ...}``.
    tx: the optax optimiser.
    key: a raw PRNG key (``jax.random.PRNGKey``).
    sample_input: a batch with the input's shape and dtype (values unused).
    num_classes: the number of class centroids.
    memory_size: > 0 adds an empty cross-batch memory of this many slots,
      ``extras["memory"]`` (the fields of a :class:`sphereembed.memory.Memory`
      as a dict, which checkpoints restore as they saved it).

  Returns:
    A :class:`~sphereembed.training.state.TrainState` at step 0 with
    ``extras = {"centroids": (K, D)}`` (and ``"memory"``).
  """
  params_key, centroid_key, state_key = jax.random.split(key, 3)
  variables = model.init({"params": params_key}, sample_input, train=False)
  unknown = set(variables) - {"params", "batch_stats"}
  if unknown:
    raise ValueError(f"models with mutable collections {sorted(unknown)} need a train state "
                     "that carries them; this one carries params and batch_stats.")
  dim = jax.eval_shape(lambda v: model.apply(v, sample_input), variables)["embedding"].shape[-1]
  extras = {"centroids": centroids_lib.init_centroids(centroid_key, num_classes, dim,
                                                      jnp.float32)}
  if memory_size:
    extras["memory"] = memory_lib.memory_init(memory_size, dim, jnp.float32)._asdict()
  return init_train_state(
      model.apply, variables["params"], tx, state_key,
      batch_stats=variables.get("batch_stats", {}), extras=extras)


# The engine's eval-mode pass: ``"embedding"``, maybe ``"logits"``, ``"kappa"``, ``"log_sigma"``.
embed_dataset = engine.embed


def num_proxies(config, num_classes: int) -> int | None:
  """The learned proxies of the config's loss in the model's head (``None``: none)."""
  if config.loss not in PROXY_LOSSES:
    return None
  return num_classes * int(dict(config.loss_options).get("num_subcenters", 1) if
                           config.loss == "subcenter_arcface" else 1)


def prototypes(state: TrainState) -> np.ndarray:
  """The class prototypes a model is evaluated by: its unit proxies, else the EMA centroids.

  With several sub-center proxies per class (sub-center ArcFace, ``K * S``
  rows), each class keeps its dominant sub-center, here the one closest to
  the class's EMA centroid (the direction of its recent training
  embeddings); Deng et al. keep the dominant sub-center too and treat the
  others as absorbing noisy samples.

  Returns:
    ``(K, D)`` NumPy array on the host.
  """
  centroids = sharding.to_host(state.extras["centroids"])
  head = state.params.get("head", {})
  if "proxies" not in head:
    return centroids
  proxies = np.asarray(geometry.l2_normalize(jnp.asarray(sharding.to_host(head["proxies"]))))
  num_classes = centroids.shape[0]
  if proxies.shape[0] == num_classes:
    return proxies
  grouped = proxies.reshape(num_classes, proxies.shape[0] // num_classes, -1)
  dominant = np.argmax(np.einsum("ksd,kd->ks", grouped, centroids), axis=1)
  return grouped[np.arange(num_classes), dominant]


def nearest_centroid(embeddings, centroids, metric: geometry.Metric = "great_circle"):
  """Index of the nearest centroid of every embedding (ties: the lowest index)."""
  distances = geometry.pairwise_distances(jnp.asarray(embeddings), jnp.asarray(centroids),
                                          metric=metric)
  return jnp.argmin(distances, axis=-1)


# ----------------------------------------------------------------------------
# Data.


@dataclasses.dataclass(frozen=True)
class Data:
  """The splits of a centroid run (``validation`` and ``ood`` may be ``None``)."""

  dataset: data_lib.Dataset
  train: data_lib.Split
  test: data_lib.Split
  validation: data_lib.Split | None
  ood: data_lib.Split | None


def _subset(split: data_lib.Split, indices: np.ndarray) -> data_lib.Split:
  return data_lib.Split(split.images[indices], split.labels[indices])


def _resized(dataset: data_lib.Dataset, size: int) -> data_lib.Dataset:
  if not size or dataset.image_shape[:2] == (size, size):
    return dataset
  return dataclasses.replace(
      dataset,
      train=data_lib.Split(data_files.resize_images(dataset.train.images, size),
                           dataset.train.labels),
      test=data_lib.Split(data_files.resize_images(dataset.test.images, size),
                          dataset.test.labels))


def _load_dataset(name: str, config) -> data_lib.Dataset:
  """``name`` from the config's sources: CIFAR's canonical pickles, IDX folders, TFDS, your files."""
  if name.startswith(_ARRAYS_PREFIX):
    raise ValueError(f"config.dataset = {name!r} names arrays passed from Python: pass the same "
                     "dataset again (train_and_evaluate(config, workdir, dataset=...)).")
  if name in cifar.CIFAR_FOLDERS:
    return _resized(cifar.load_cifar(name, config.data_dir or None,
                                     tfds_data_dir=config.tfds_data_dir or None,
                                     download=config.download), config.image_size)
  return data_lib.load_dataset(name, config.data_dir or None,
                               tfds_data_dir=config.tfds_data_dir or None,
                               download=config.download, test_fraction=config.test_fraction,
                               image_size=config.image_size)


def prepare_data(config, dataset: data_lib.Dataset | None = None) -> Data:
  """The config's dataset, with its held-out validation split, imbalance, caps and OOD set.

  Args:
    config: the run's config.
    dataset: a dataset given from Python, used in place of ``config.dataset``.
  """
  if dataset is not None:
    dataset = _resized(dataset, config.image_size)
  else:
    dataset = _load_dataset(config.dataset, config)
  train, test = dataset.train, dataset.test
  validation = None
  held_out = config.validation_examples or int(round(config.validation_fraction * len(train)))
  if held_out:
    if held_out >= len(train):
      raise ValueError(f"a validation split of {held_out} images leaves no training images "
                       f"(the training set has {len(train)}).")
    # A fixed permutation (not the run's seed): every seed holds out the same images.
    order = np.random.default_rng(12345).permutation(len(train))
    validation = _subset(train, np.sort(order[:held_out]))
    train = _subset(train, np.sort(order[held_out:]))
  if config.imbalanced_classes and config.imbalanced_fraction < 1:
    keep = {int(c): config.imbalanced_fraction for c in config.imbalanced_classes}
    train = _subset(train, data_lib.subsample_classes(train.labels, keep, seed=config.seed))
  # A random subset of the training images (a fixed permutation of the seed), the first test images.
  train = builders.limit_examples(train, config.max_train_examples, seed=config.seed)
  test = builders.limit_examples(test, config.max_test_examples)
  ood = None
  if config.ood_dataset:
    ood = builders.limit_examples(_load_dataset(config.ood_dataset, config).test,
                                  config.max_test_examples)
    if ood.images.shape[1:] != train.images.shape[1:]:
      raise ValueError(f"config.ood_dataset = {config.ood_dataset!r} has images of shape "
                       f"{ood.images.shape[1:]}, the training images {train.images.shape[1:]}; "
                       "set config.image_size to resize both (the channels must agree).")
  return Data(dataset, train, test, validation, ood)


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


def train_batches(config, train: data_lib.Split, sampler, weights, start_step: int,
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
        images = cifar.random_crop_flip(
            images, _RowDraws(cifar.augment_rng(config.seed, step), rows, len(indices)))
      else:
        images = cifar.augment_batch(images, seed=config.seed, step=step)
    batch = {"image": images, "label": train.labels[local]}
    if weights is not None:
      batch["weight"] = weights[local]
    yield batch


# ----------------------------------------------------------------------------
# Evaluation.


def evaluate(state: TrainState, test: data_lib.Split, *, metric: str = "great_circle",
             batch_size: int = 1000, train: data_lib.Split | None = None,
             mesh=None) -> dict[str, Any]:
  """Nearest-centroid accuracy of the test set, and optionally against train class means.

  Args:
    state: the train state (its class prototypes: :func:`prototypes`).
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
  outputs = embed_dataset(state, test.images, batch_size, mesh)
  embeddings = outputs["embedding"]
  centroids = prototypes(state)
  predictions = np.asarray(nearest_centroid(embeddings, centroids, metric))
  num_classes = centroids.shape[0]
  correct = predictions == test.labels
  counts = np.bincount(test.labels, minlength=num_classes)
  hits = np.bincount(test.labels, weights=correct, minlength=num_classes)
  per_class = [float(h / c) if c else None for h, c in zip(hits.tolist(), counts.tolist())]
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
    train_embeddings = embed_dataset(state, train.images, batch_size, mesh)["embedding"]
    sums = np.zeros((num_classes, embeddings.shape[1]), np.float64)
    np.add.at(sums, train.labels, train_embeddings)
    means = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    class_mean_predictions = np.asarray(nearest_centroid(
        embeddings, jnp.asarray(means, embeddings.dtype), metric))
    result["test_accuracy_class_means"] = float(np.mean(class_mean_predictions == test.labels))
  return result


# ----------------------------------------------------------------------------
# The model a run keeps.


def _model_artifact(config, model, state, data: Data, centroids, test_outputs,
                    validation_outputs, ood_outputs):
  """The trained model with its calibration, and what its predictions measure on the test set.

  The calibration (temperature, isotonic map, abstention threshold for
  ``config.abstain_target`` / ``abstain_level``) is fitted on the validation
  split; without one the model keeps no calibration and never abstains.

  Returns:
    ``(artifact, metrics)``: the :class:`~sphereembed.inference.ModelArtifact`
    and ``model/...`` metrics of its predictions on the test set (coverage,
    accuracy of the kept images, ECE of the confidence, and the share of
    the OOD set abstained on).
  """
  score = prediction_lib.default_score(test_outputs)
  if validation_outputs is not None:
    logits, _ = prediction_lib.confidence_scores(validation_outputs, centroids, only=score)[score]
    calibration = prediction_lib.Calibration.fit(
        logits, data.validation.labels, score=score, target=config.abstain_target,
        level=config.abstain_level)
  else:
    logging.warning("No validation split (config.validation_examples and validation_fraction "
                    "are 0): the saved model's confidence is not calibrated and it never abstains.")
    calibration = prediction_lib.Calibration(score=score, target=config.abstain_target,
                                             level=config.abstain_level)

  def predict(outputs):
    return calibration.predict(
        prediction_lib.confidence_scores(outputs, centroids, only=score)[score][0])

  test = predict(test_outputs)
  correct = test.label == data.test.labels
  kept = ~test.abstain
  metrics = {
      "model/threshold": calibration.threshold,
      "model/coverage": float(np.mean(kept)),
      "model/accuracy_kept": float(np.mean(correct[kept])) if kept.any() else math.nan,
      "model/ece": eval_calibration.expected_calibration_error(test.confidence, correct),
  }
  if ood_outputs is not None:
    metrics["model/ood_abstain_rate"] = float(np.mean(predict(ood_outputs).abstain))
  artifact = inference.ModelArtifact(
      model=model, params=sharding.to_host(state.params),
      batch_stats=sharding.to_host(state.batch_stats), centroids=centroids,
      class_names=data.dataset.names(), image_shape=data.train.images.shape[1:],
      metric=config.metric, calibration=calibration,
      info={"method": config.method, "dataset": config.dataset, "loss": config.loss,
            "confidence": config.confidence, "seed": config.seed,
            "validation_examples": len(data.validation) if data.validation is not None else 0,
            "test_accuracy": float(np.mean(correct)), **metrics})
  return artifact, metrics


# ----------------------------------------------------------------------------
# The method.


def _run(run: engine.Run) -> dict[str, Any]:
  config, mesh = run.config, run.mesh
  data = prepare_data(config, run.dataset)
  train, test = data.train, data.test
  num_classes = data.dataset.num_classes
  if config.sampler == "balanced" and config.classes_per_batch > num_classes:
    raise ValueError(f"config.classes_per_batch = {config.classes_per_batch}, but "
                     f"{config.dataset} has {num_classes} classes: set "
                     f"--config.classes_per_batch={num_classes} (or fewer), or "
                     "--config.sampler=shuffled.")
  sampler = builders.make_sampler(config, train.labels)
  batch_size, batch_source = builders.global_batch_size(config, sampler, len(train))
  num_train_steps = config.num_epochs * sampler.num_batches
  weights = (data_lib.class_weights(train.labels, num_classes)[train.labels]
             if config.class_weighting else None)
  model = builders.make_model(config, num_classes, train.images,
                              num_proxies=num_proxies(config, num_classes))
  state = create_train_state(model, builders.make_optimizer(config, num_train_steps),
                             jax.random.PRNGKey(config.seed), train.images[:1], num_classes,
                             memory_size=config.memory_size)

  def evaluate_scalars(state):
    result = evaluate(state, test, metric=config.metric, batch_size=config.eval_batch_size,
                      mesh=mesh)
    return {"test_accuracy": result["test_accuracy"],
            "test_balanced_accuracy": result["test_balanced_accuracy"]}

  spec = loss_spec(config)
  state = engine.run_phase(
      run, "train", state, functools.partial(train_step, spec=spec), num_steps=num_train_steps,
      batches=lambda start, rows: train_batches(config, train, sampler, weights, start, rows),
      batch_size=batch_size, batch_size_source=batch_source, evaluate=evaluate_scalars,
      evaluate_every=config.eval_every_steps or sampler.num_batches)

  result = evaluate(state, test, metric=config.metric, batch_size=config.eval_batch_size,
                    train=train, mesh=mesh)
  embeddings = result.pop("embeddings")
  result.pop("predictions")
  test_outputs = result.pop("outputs")
  centroids = prototypes(state)
  if config.loss in PROXY_LOSSES:
    # The EMA class centroids every loss keeps, beside the proxies the model is evaluated by.
    result["test_accuracy_centroids"] = float(np.mean(np.asarray(nearest_centroid(
        embeddings, sharding.to_host(state.extras["centroids"]), config.metric)) == test.labels))
  embed = lambda split: (embed_dataset(state, split.images, config.eval_batch_size, mesh)
                         if split is not None else None)
  validation_outputs, ood_outputs = embed(data.validation), embed(data.ood)
  artifact, model_metrics = _model_artifact(config, model, state, data, centroids, test_outputs,
                                            validation_outputs, ood_outputs)
  result.update(model_metrics)
  result["model_artifact"] = artifact
  confidence_inputs = None
  if (data.validation is not None or data.ood is not None or config.confidence
      or config.dataset in cifar.CIFAR_FOLDERS):
    confidence_inputs = dict(
        validation_outputs=validation_outputs,
        validation_labels=data.validation.labels if data.validation is not None else None,
        ood_outputs=ood_outputs)
    result.update(confidence_protocol.evaluate_confidence(
        test_outputs, test.labels, centroids, **confidence_inputs))
  if "centroid/accuracy_at_80" in result:
    # ACC@80%: accuracy on the 80% of test images closest to their nearest centroid.
    result["test_accuracy_at_80"] = result["centroid/accuracy_at_80"]
  images_seen = (num_train_steps - run.resumed_from["train"]) * batch_size
  result.update(
      num_train_steps=num_train_steps, dataset=config.dataset, data_source=data.dataset.source,
      embedding_dim=config.embedding_dim, loss=config.loss, model=config.model,
      # Training throughput of this run, compilation and periodic evaluations included.
      train_images_per_second=images_seen / max(run.seconds["train"], 1e-9))
  if config.figures and run.primary:
    title = (f"{config.loss}, {config.embedding_dim}-D, {config.dataset}: nearest-centroid "
             f"test accuracy {100 * result['test_accuracy']:.2f}%")
    names = data.dataset.class_names
    paths = [plotting.plot_embeddings(embeddings, test.labels, centroids,
                                      run.path("embeddings.png"), title=title,
                                      class_names=list(names) if names else None)]
    if "kappa" in test_outputs and config.embedding_dim in (2, 3):
      plotting.plot_embeddings_by_confidence(
          embeddings, test_outputs["kappa"], labels=test.labels,
          path=run.path("embeddings_kappa.png"), title="test embeddings coloured by kappa",
          colorbar_label="kappa")
      paths.append(run.path("embeddings_kappa.png"))
    if confidence_inputs is not None:
      described = confidence_protocol.plot_confidence_figures(
          run.workdir, test_outputs, test.labels, centroids, **confidence_inputs,
          in_name=f"{config.dataset} test",
          ood_name=f"{config.ood_dataset} test" if config.ood_dataset else None,
          with_descriptions=True)
      paths += [path for path, _ in described]
    paths.append(plotting.plot_training_curves(
        metric_writers.read_jsonl(run.path("metrics.jsonl")), run.path("training_curves.png"),
        keys=("train_loss", "test_accuracy", "train_alpha")))
    plotting.write_figure_index(run.workdir, plotting.figure_entries(paths))
  return result


register(Method(
    name="centroid", fields=_fields, run=_run, validate=_validate, choices=_CHOICES,
    positive=_POSITIVE, non_negative=_NON_NEGATIVE,
    resume_safe=frozenset({"tfds_data_dir", "download", "eval_every_steps", "abstain_target",
                           "abstain_level"})))
