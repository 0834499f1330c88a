r"""Bayesian metric learning on Fashion-MNIST: LAM and its baselines, one evaluation (issue 8).

``train_and_evaluate(config, workdir)`` trains one method of Warburg, Miani,
Brack & Hauberg, "Bayesian Metric Learning for Uncertainty Quantification in
Image Retrieval" (NeurIPS 2023) on the in-distribution set (Fashion-MNIST),
evaluates it against the out-of-distribution set (the MNIST test images)
with :mod:`sphereembed.evaluation` and writes ``metrics.json``,
``config.json``, ``scores.npz`` and the figures in the workdir. A run
restarted with the same workdir resumes from its last orbax checkpoint.

Methods (``config.method``), all on the same network, the same batches and the
same evaluation:

* ``"deterministic"``: a :class:`~sphereembed.models.SmallCNN` (two strided
  convolutions, a ReLU dense layer of ``hidden`` units, a linear projection to
  ``embedding_dim`` and the L2 normalisation) trained with the contrastive
  loss (:func:`sphereembed.losses.contrastive`, all pairs of P x K
  class-balanced batches, Euclidean ``margin``).
* ``"laplace_posthoc"``: the deterministic network, then
  :func:`sphereembed.laplace.posthoc_laplace` over the last layer (the
  projection, ``("head", "projection")``): one epoch of the same P x K
  batches, ``config.repulsive`` and ``config.structure``, the prior precision
  tuned by the marginal likelihood (``config.tune_prior``).
* ``"laplace_online"``: online LAM. Each step samples ``train_num_samples``
  last-layer weights from the current posterior
  (:func:`~sphereembed.laplace.perturbed_params`), takes the contrastive loss
  at the samples and the GGN there (:func:`~sphereembed.laplace.online_curvature`),
  and updates ``curvature <- memory_factor * curvature + scale * GGN``
  (:func:`~sphereembed.laplace.online_update`). ``scale = (1 - memory_factor)
  * batches_per_epoch`` makes the curvature a moving average of the one-epoch
  GGN sum that the post-hoc method accumulates; it starts from that sum
  estimated on the first batch (the paper's code starts it at ``N``), so the
  first samples are not drawn from the bare prior. The posterior used while
  training has the fixed prior precision ``config.prior_precision`` (the
  paper's 1).
* ``"mc_dropout"``: the network with dropout (``dropout_rate``) before the
  projection, trained with it; at test time ``eval_num_samples`` dropout masks.
* ``"ensemble"``: ``ensemble_size`` deterministic networks from different
  seeds; their embeddings are the samples. Member 0 is the network of
  ``"deterministic"`` (and of ``"laplace_posthoc"`` and ``"pfe"``) of the
  same seed. The contrastive loss sees only distances, so every member embeds
  in its own rotated frame of the sphere; with ``ensemble_alignment =
  "procrustes"`` each member is first rotated onto member 0
  (:func:`sphereembed.geometry.orthogonal_procrustes` on the embeddings of
  the ``calibration_references`` training images), so that the spread of the
  samples measures disagreement rather than the arbitrary rotations
  (``"none"``: the embeddings as they come).
* ``"pfe"``: Probabilistic Face Embeddings (Shi & Jain, ICCV 2019): a
  per-dimension log-sigma head (:class:`~sphereembed.models.cnn.EmbeddingHead`
  with ``confidence="sigma_diagonal"``) on the frozen deterministic network,
  trained with the mutual likelihood score of the positive pairs
  (:func:`mls_loss`).
* ``"hib"``: Hedged Instance Embeddings (Oh et al., ICLR 2019): the same
  network with the log-sigma head, trained end to end with
  :func:`sphereembed.losses.vib_match_loss` on sampled pairs, the match
  scalars ``a`` and ``b`` learned with it.

Evaluation protocol (the paper's where its code gives one):

* Embeddings: every method gives a unit mean embedding per image (the sample
  mean re-normalised for LAM, MC dropout and the ensemble, as the paper's
  ``forward_step``; ``mu`` for PFE and HIB) and, except the deterministic
  model, ``eval_num_samples`` samples (``ensemble_size`` for the ensemble)
  and an uncertainty score: the summed per-dimension standard deviation of
  the samples (LAM, MC dropout, ensemble; :func:`sphereembed.laplace.predictive_embeddings`,
  ``ddof=1``), the summed sigma (PFE) or the self-mismatch
  (:func:`sphereembed.losses.self_mismatch`, HIB). Weight samples (LAM) are
  drawn once from ``eval_seed``: every image sees the same networks.
* Retrieval: every in-distribution test image queries the other test images
  by its mean embedding (leave-one-out, Euclidean):
  :func:`sphereembed.evaluation.retrieval_metrics` gives ``map_at_1``,
  ``map_at_5``, ``map_at_10`` (the LAM code's mAP@k), ``map_at_r``,
  ``recall_at_k`` and the kNN accuracy.
* OOD (``ood_auroc``, ``ood_auprc``): the uncertainties of the
  in-distribution and of the OOD test images, OOD positive
  (:class:`sphereembed.evaluation.OODEvaluator`).
* Sparsification (``ausc``): each query's 1-NN correctness, ranked by the
  uncertainty of the query plus that of its nearest neighbour (the paper's
  ``z_sigmaQ + z_sigmaDb[idx]``). ``ausc`` is the area under the accuracy
  sparsification curve, the paper's convention (higher is better), equal to
  ``1 -`` :func:`sphereembed.evaluation.ausc` (the area under the error
  curve, reported with the oracle and AUSE under ``sparsification/``).
* Calibration (``ece``): :func:`sphereembed.evaluation.retrieval_calibration`,
  the LAM protocol with the top-bin fix: each sample of a query retrieves its
  nearest reference, the prediction is the mode of the ``S`` retrieved labels
  and the confidence its vote share; ECE with ``calibration_bins`` (the paper:
  10) equal-width bins, a confidence of 1.0 in the top bin (the paper's code
  drops it from every bin). Deviation: the references are the mean
  embeddings of the training images (a database distinct from the queries,
  as ``retrieval_calibration`` takes it); the paper's code lets each sample
  of the test set retrieve within the same sample of the test set.
* The deterministic model has no uncertainty: its OOD, sparsification and
  calibration metrics are NaN.

Figures (``config.figures``): ``roc_ood.png`` (ROC of the OOD detection),
``sparsification.png``, ``reliability.png`` (the retrieval calibration's
reliability diagram), ``retrievals.png`` (the most and least certain test
queries with their five nearest test images, green when of the query's
class), ``training_curves.png``. ``scores.npz`` keeps the per-image
uncertainties, labels and 1-NN correctness, so that figures across methods
(:func:`plot_method_comparison`) need no re-evaluation.

Deviations from the paper's code, besides the calibration reference: our
backbone (strided 5x5 convolutions and a dense layer of ``hidden`` units
before the projection, rather than two 3x3 convolutions, max pooling and a
9216 -> D projection), all pairs of P x K batches instead of mined triplets
capped at 5000 pairs, AdamW with a cosine schedule instead of RMSprop with an
exponential decay, a CPU budget of a few minutes instead of 20 epochs,
dropout only before the projection (the paper: after each convolution),
one linear layer for the sigma head of PFE and HIB (the paper: a small MLP
with batch norm), HIB's samples not re-normalised in its loss (they are for
the calibration).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Any, Callable, Iterator

from absl import logging
from flax import linen as nn
from flax.training import train_state
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from matplotlib.figure import Figure
import ml_collections
import numpy as np
import optax

from sphereembed import evaluation
from sphereembed import geometry
from sphereembed import laplace
from sphereembed import losses
from sphereembed import plotting
from sphereembed import data as data_lib
from sphereembed.data import pairs as pairs_lib
from sphereembed.models.cnn import EmbeddingHead, SmallCNN
from sphereembed.models.hib import inverse_softplus
from sphereembed.training import config as config_lib
from sphereembed.training import metric_writers
from sphereembed.training.checkpoints import Checkpointer

__all__ = [
    "HEADLINE_KEYS",
    "LAST_LAYER",
    "METHODS",
    "RESUME_SAFE_FIELDS",
    "RetrievalTrainState",
    "default_retrieval_config",
    "mls_loss",
    "plot_method_comparison",
    "train_and_evaluate",
    "trunk_features",
    "validate_retrieval_config",
]

METHODS = ("deterministic", "laplace_posthoc", "laplace_online", "mc_dropout", "ensemble", "pfe",
           "hib")

#: The parameters the Laplace posterior covers: the projection of the embedding head.
LAST_LAYER = (("head", "projection"),)

#: The keys of the paper's table, in every ``metrics.json`` (NaN where a method has no value).
HEADLINE_KEYS = ("map_at_1", "map_at_5", "map_at_10", "ood_auroc", "ood_auprc", "ausc", "ece")

# Fields that may change between an interrupted run and its resumption.
RESUME_SAFE_FIELDS = frozenset({
    "data_dir", "log_every_steps", "checkpoint_every_steps", "keep_checkpoints",
    "eval_batch_size", "tensorboard", "figures",
    # Evaluation only: a finished run can be re-evaluated with other values.
    "eval_num_samples", "calibration_bins", "calibration_references", "eval_seed",
    "tune_prior",  # the evaluated posterior's prior precision; training never reads it
    "ensemble_alignment",
})

# ----------------------------------------------------------------------------
# Config.


def default_retrieval_config() -> ml_collections.ConfigDict:
  """Every field of a retrieval experiment, with its default (the deterministic model)."""
  config = ml_collections.ConfigDict()
  config.method = "deterministic"

  # Data (data_dir as in sphereembed.data.load_dataset): in-distribution and OOD test set.
  config.dataset = "fashion_mnist"
  config.ood_dataset = "mnist"
  config.data_dir = ""  # "" -> $SPHEREEMBED_DATA_DIR, then ../shared/data, then TFDS.
  config.max_train_examples = 0  # 0 = all; a fixed random subset otherwise (smoke runs)
  config.max_test_examples = 0  # the same cap for the in-distribution and the OOD test sets

  # Network: SmallCNN with a unit-norm embedding (the paper's code: D = 3 for Fashion-MNIST).
  config.embedding_dim = 3
  config.features = (32, 64)
  config.kernel_size = 5
  config.downsample = "stride"
  config.hidden = 128
  config.dropout_rate = 0.0  # > 0 for "mc_dropout" (dropout before the projection)

  # Contrastive loss on P x K class-balanced batches (the paper's margin 0.7, Euclidean).
  config.margin = 0.7
  config.classes_per_batch = 10
  config.samples_per_class = 13

  # Optimisation: AdamW, linear warm-up and cosine decay, per trained network.
  config.num_train_steps = 3000  # about 6.5 epochs of Fashion-MNIST
  config.learning_rate = 2e-3
  config.warmup_steps = 200
  config.weight_decay = 1e-4
  config.seed = 0

  # Laplace (both LAM methods): the last layer's posterior.
  config.repulsive = "positives"  # "positives", "clipped" or "separate" (sphereembed.laplace.ggn)
  # "diagonal" or "full" (dense over the last layer; online LAM then factorises the (P, P)
  # precision every step to sample: 1.3-1.6x the training time of "diagonal" at P = 387).
  config.structure = "diagonal"
  config.prior_precision = 1.0  # online training's prior; the value used when not tuned
  config.tune_prior = True  # the prior precision of the evaluated posterior by marginal likelihood
  config.memory_factor = 0.999  # online LAM (the paper's hessian_memory_factor)
  config.train_num_samples = 1  # online LAM: weight samples per step (the paper's default 1)

  # Baselines.
  config.ensemble_size = 5
  config.ensemble_alignment = "procrustes"  # or "none": rotate members onto member 0 first
  config.pfe_steps = 2000  # steps of the PFE sigma head on the frozen network
  config.hib_num_samples = 8  # K samples per embedding in the HIB loss
  config.hib_num_pairs = 1024
  config.hib_beta = 1e-4
  config.hib_match_a_init = 5.0  # the match probability sigmoid(-a d + b) on unit embeddings
  config.hib_match_b_init = 2.5

  # Evaluation.
  config.eval_num_samples = 100  # the paper's test_n_samples
  config.calibration_bins = 10  # the paper's
  # The calibration's database: this many training images (a fixed random subset; 0 = all).
  config.calibration_references = 10_000
  config.eval_seed = 0

  # Bookkeeping.
  config.log_every_steps = 200
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 2
  config.eval_batch_size = 1000
  config.tensorboard = True
  config.figures = True
  return config


_CHOICES = {
    "method": METHODS,
    "dataset": ("fashion_mnist", "mnist", "mnist10k"),
    "ood_dataset": ("mnist", "fashion_mnist", "mnist10k"),
    "downsample": ("stride", "pool"),
    "repulsive": laplace.REPULSIVE,
    "structure": laplace.STRUCTURES,
    "ensemble_alignment": ("procrustes", "none"),
}
_POSITIVE = ("embedding_dim", "kernel_size", "hidden", "margin", "classes_per_batch",
             "samples_per_class", "num_train_steps", "learning_rate", "prior_precision",
             "train_num_samples", "ensemble_size", "pfe_steps", "hib_num_samples", "hib_num_pairs",
             "hib_match_a_init", "eval_num_samples", "calibration_bins", "log_every_steps",
             "checkpoint_every_steps", "keep_checkpoints", "eval_batch_size")
_NON_NEGATIVE = ("max_train_examples", "max_test_examples", "dropout_rate", "warmup_steps",
                 "weight_decay", "seed", "hib_beta", "eval_seed", "calibration_references")


def validate_retrieval_config(config) -> ml_collections.ConfigDict:
  """Checks a config against :func:`default_retrieval_config`; returns a complete, locked copy.

  Args:
    config: a ``ConfigDict`` (or a dict) with a subset of the default fields;
      missing fields take their default.

  Returns:
    The validated, locked ``ConfigDict``.

  Raises:
    ValueError: on an unknown field (with the closest known names), a value
      of the wrong type, or an out-of-range value.
  """
  merged = config_lib.check_fields(config, default_retrieval_config, choices=_CHOICES,
                                  positive=_POSITIVE, non_negative=_NON_NEGATIVE)
  if merged.embedding_dim < 2:
    raise ValueError(f"config.embedding_dim must be >= 2, got {merged.embedding_dim}.")
  if not merged.dropout_rate < 1:
    raise ValueError(f"config.dropout_rate must lie in [0, 1), got {merged.dropout_rate}.")
  if merged.method == "mc_dropout" and merged.dropout_rate == 0:
    raise ValueError("config.method = 'mc_dropout' needs config.dropout_rate > 0.")
  if merged.method != "mc_dropout" and merged.dropout_rate > 0:
    raise ValueError(f"config.dropout_rate = {merged.dropout_rate} is used by 'mc_dropout' only "
                     f"(config.method = {merged.method!r}); set it to 0.")
  if not 0 <= merged.memory_factor < 1:
    raise ValueError(f"config.memory_factor must lie in [0, 1), got {merged.memory_factor}.")
  if merged.samples_per_class < 2:
    raise ValueError("config.samples_per_class must be >= 2: the contrastive loss and its GGN "
                     "need positive pairs in every batch.")
  if merged.method == "ensemble" and merged.ensemble_size < 2:
    raise ValueError(f"config.ensemble_size must be >= 2 for an ensemble, got "
                     f"{merged.ensemble_size}.")
  if merged.eval_num_samples < 2:
    raise ValueError("config.eval_num_samples must be >= 2 (a standard deviation needs two).")
  batch = merged.classes_per_batch * merged.samples_per_class
  if merged.hib_num_pairs > batch * (batch - 1) // 2:
    raise ValueError(f"config.hib_num_pairs = {merged.hib_num_pairs} exceeds the "
                     f"{batch * (batch - 1) // 2} pairs of a batch of {batch}.")
  if merged.dataset == merged.ood_dataset:
    raise ValueError(f"config.ood_dataset must differ from config.dataset ({merged.dataset!r}).")
  merged.lock()
  return merged


# ----------------------------------------------------------------------------
# The network, split at its head.


def trunk_features(apply_fn: Callable, params, images: jax.Array, *, train: bool = False,
                   rngs=None) -> jax.Array:
  """The features a :class:`~sphereembed.models.SmallCNN` feeds its :class:`EmbeddingHead`.

  The head's call is intercepted (``flax.linen.intercept_methods``) and
  skipped, so the trunk runs once and the head can then be applied to the
  features at many weights (Laplace samples, dropout masks) at the cost of
  a matmul each. With ``train=True`` the features are those after the
  network's dropout.

  Args:
    apply_fn: the model's ``apply``.
    params: the model's parameters.
    images: ``(B, 28, 28, 1)`` images.
    train: the model's train flag.
    rngs: the ``rngs`` of ``apply`` (dropout).

  Returns:
    ``(B, hidden)`` features.

  Example:
    >>> import jax
    >>> import numpy as np
    >>> from sphereembed.models import SmallCNN
    >>> from sphereembed.training.retrieval import trunk_features
    >>> model = SmallCNN(3, features=(4,), hidden=8)
    >>> images = np.zeros((2, 28, 28, 1), np.uint8)
    >>> params = model.init(jax.random.key(0), images)["params"]
    >>> trunk_features(model.apply, params, images).shape
    (2, 8)
  """
  captured = []

  def interceptor(next_fun, args, kwargs, context):
    if isinstance(context.module, EmbeddingHead) and context.method_name == "__call__":
      captured.append(args[0])
      return {}
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    apply_fn({"params": params}, images, train=train, rngs=rngs)
  if len(captured) != 1:
    raise ValueError("trunk_features expects a model that calls one EmbeddingHead.")
  return captured[0]


def _head(embedding_dim: int, confidence: str | None = None) -> EmbeddingHead:
  return EmbeddingHead(embedding_dim, confidence=confidence)


@functools.lru_cache(maxsize=None)
def _head_embed(embedding_dim: int) -> Callable:
  """``embed(params, features) -> (B, D)`` unit embeddings from the head's projection.

  One function object per ``D``: :func:`sphereembed.laplace.predict`
  compiles once per ``embed_fn`` object.
  """
  head = _head(embedding_dim)

  def embed(params, features):
    return head.apply({"params": {"projection": params["head"]["projection"]}},
                      features)["embedding"]

  return embed


def mls_loss(embeddings: jax.Array, log_sigmas: jax.Array, labels: jax.Array) -> jax.Array:
  """PFE's loss: minus the mutual likelihood score, averaged over the positive pairs of a batch.

  ``-MLS(i, j) = 1/2 sum_d [(mu_id - mu_jd)^2 / s_d + log s_d] + D/2 log(2 pi)``
  with ``s_d = sigma_id^2 + sigma_jd^2``: the negative log-likelihood that two
  images with Gaussian embeddings share the same latent code (Shi & Jain,
  "Probabilistic Face Embeddings", ICCV 2019). Only positive pairs ``i < j``
  enter, as in PFE and the LAM paper's code.

  Args:
    embeddings: ``(B, D)`` means ``mu``.
    log_sigmas: ``(B, D)`` log standard deviations.
    labels: ``(B,)`` int class ids.

  Returns:
    The mean over the positive pairs (0 when there is none).

  Raises:
    ValueError: mismatched shapes.

  Example:
    >>> import jax.numpy as jnp
    >>> from sphereembed.training.retrieval import mls_loss
    >>> mu = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> # One positive pair, equal means, s_d = 2: log(2) + log(2 pi), halved per dimension.
    >>> print(f"{mls_loss(mu, jnp.zeros((3, 2)), jnp.array([0, 0, 1])):.4f}")
    2.5310
  """
  if embeddings.ndim != 2 or log_sigmas.shape != embeddings.shape:
    raise ValueError(f"embeddings and log_sigmas must have the same (B, D) shape, got "
                     f"{embeddings.shape} and {log_sigmas.shape}.")
  if labels.shape != embeddings.shape[:1]:
    raise ValueError(f"labels must have shape ({embeddings.shape[0]},), got {labels.shape}.")
  size, dim = embeddings.shape
  variances = jnp.exp(2 * log_sigmas)
  pair_variances = variances[:, None, :] + variances[None, :, :]
  squared = jnp.square(embeddings[:, None, :] - embeddings[None, :, :])
  terms = 0.5 * jnp.sum(squared / pair_variances + jnp.log(pair_variances), axis=-1)
  positive = (labels[:, None] == labels[None, :]) & jnp.triu(jnp.ones((size, size), bool), k=1)
  count = jnp.sum(positive)
  total = jnp.sum(jnp.where(positive, terms, 0.0))
  return jnp.where(count > 0, total / jnp.maximum(count, 1) + 0.5 * dim * jnp.log(2 * jnp.pi),
                   0.0)


# ----------------------------------------------------------------------------
# Train state and step.


class RetrievalTrainState(train_state.TrainState):
  """Flax's ``TrainState`` plus the RNG and, for online LAM, the accumulated curvature.

  Attributes:
    rng: a raw ``uint32[2]`` PRNG key, split once per step.
    curvature: online LAM's unclipped last-layer GGN (a pytree like the
      last layer, or a ``(P, P)`` matrix); a zero scalar for other methods.
  """

  rng: jax.Array
  curvature: Any


@dataclasses.dataclass(frozen=True)
class _StepSpec:
  """What a train step minimises (static: hashed into the compiled step)."""

  objective: str  # "contrastive", "laplace_online", "pfe" or "hib"
  embedding_dim: int
  margin: float
  repulsive: str = "positives"
  structure: str = "diagonal"
  memory_factor: float = 0.999
  epoch_batches: int = 1  # batches per epoch: the curvature's scale
  prior_precision: float = 1.0
  num_samples: int = 1
  num_pairs: int = 1
  beta: float = 0.0


def _online_posterior(params, curvature, spec: _StepSpec) -> laplace.LaplacePosterior:
  mean = laplace.select_subset(params, LAST_LAYER)
  dtype = jax.tree_util.tree_leaves(mean)[0].dtype
  return laplace.LaplacePosterior(mean=mean, curvature=curvature,
                                  prior_precision=jnp.asarray(spec.prior_precision, dtype),
                                  structure=spec.structure, subset=LAST_LAYER)


def _loss_fn(params, state: RetrievalTrainState, batch, frozen, spec: _StepSpec, keys):
  """``(loss, aux)`` of one batch for the objective of ``spec``."""
  labels = batch["label"]
  if spec.objective == "contrastive":
    out = state.apply_fn({"params": params}, batch["image"], train=True,
                         rngs={"dropout": keys["dropout"]})
    return losses.contrastive(out["embedding"], labels, margin=spec.margin), {}
  if spec.objective == "laplace_online":
    features = trunk_features(state.apply_fn, params, batch["image"], train=True)
    posterior = _online_posterior(params, state.curvature, spec)
    samples = laplace.perturbed_params(keys["sample"], posterior, params, spec.num_samples)
    embed = _head_embed(spec.embedding_dim)
    embeddings = laplace.embed_samples(embed, samples, features, params=params,
                                       subset=LAST_LAYER)
    loss = jnp.mean(jax.vmap(lambda z: losses.contrastive(z, labels, margin=spec.margin))(
        embeddings))
    return loss, {"samples": samples, "features": features}
  if spec.objective == "pfe":
    head = _head(spec.embedding_dim, "sigma_diagonal")
    out = head.apply({"params": {**frozen, **params}}, batch["features"])
    return mls_loss(jax.lax.stop_gradient(out["embedding"]), out["log_sigma"], labels), {}
  if spec.objective == "hib":
    out = state.apply_fn({"params": params["net"]}, batch["image"], train=True)
    a, b = jax.nn.softplus(params["match_a_raw"]), params["match_b"]
    pairs = pairs_lib.sample_pairs(keys["pairs"], labels, spec.num_pairs, positive_fraction=0.5)
    means, log_sigmas = out["embedding"], out["log_sigma"]
    loss = losses.vib_match_loss(
        means[pairs.first], log_sigmas[pairs.first], means[pairs.second],
        log_sigmas[pairs.second], pairs.is_same, a, b, key=keys["sample"],
        num_samples=spec.num_samples, beta=spec.beta)
    return loss, {"sigma_mean": jnp.mean(jnp.exp(log_sigmas)), "a": a, "b": b}
  raise ValueError(f"unknown objective {spec.objective!r}")


@functools.partial(jax.jit, static_argnames="spec", donate_argnums=0)
def train_step(state: RetrievalTrainState, batch: dict[str, jax.Array], frozen,
               spec: _StepSpec):
  """One optimiser step of the objective of ``spec``; online LAM also updates the curvature.

  Args:
    state: the train state; donated (its buffers are reused).
    batch: ``{"image": (B, 28, 28, 1) uint8, "label": (B,)}``, or for PFE
      ``{"features": (B, hidden), "label": (B,)}``.
    frozen: parameters that stay fixed (PFE: the projection), else ``{}``.
    spec: the static :class:`_StepSpec`.

  Returns:
    ``(new_state, metrics)`` with the scalar ``loss`` and ``grad_norm``
    (online LAM: ``curvature_mean``; HIB: ``sigma_mean``, ``a``, ``b``).
  """
  rng, dropout_key, sample_key, pair_key = jax.random.split(state.rng, 4)
  keys = {"dropout": dropout_key, "sample": sample_key, "pairs": pair_key}
  (loss, aux), grads = jax.value_and_grad(_loss_fn, has_aux=True)(
      state.params, state, batch, frozen, spec, keys)
  new_state = state.apply_gradients(grads=grads).replace(rng=rng)
  metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
  if spec.objective == "laplace_online":
    curvature = laplace.online_curvature(
        _head_embed(spec.embedding_dim), aux["samples"], jax.lax.stop_gradient(aux["features"]),
        batch["label"], margin=spec.margin, repulsive=spec.repulsive, structure=spec.structure,
        params=state.params, subset=LAST_LAYER)
    posterior = laplace.online_update(
        _online_posterior(state.params, state.curvature, spec), curvature,
        memory_factor=spec.memory_factor, scale=(1 - spec.memory_factor) * spec.epoch_batches,
        params=new_state.params)
    new_state = new_state.replace(curvature=posterior.curvature)
    metrics["curvature_mean"] = jnp.mean(ravel_pytree(posterior.curvature)[0])
  elif spec.objective == "hib":
    metrics.update(aux)
  return new_state, metrics


@functools.partial(jax.jit, static_argnames="spec")
def _initial_curvature(state: RetrievalTrainState, images, labels, spec: _StepSpec):
  """Online LAM's starting curvature: the one-epoch GGN sum estimated from one batch.

  The GGN of the batch at the current last layer, times the number of
  batches of an epoch: the value the moving average tends to, so that the
  first weight samples are not drawn from the bare prior.
  """
  features = trunk_features(state.apply_fn, state.params, images)
  mean = laplace.select_subset(state.params, LAST_LAYER)
  curvature = laplace.online_curvature(
      _head_embed(spec.embedding_dim), jax.tree_util.tree_map(lambda m: m[None], mean), features,
      labels, margin=spec.margin, repulsive=spec.repulsive, structure=spec.structure,
      params=state.params, subset=LAST_LAYER)
  return jax.tree_util.tree_map(lambda c: spec.epoch_batches * c, curvature)


# ----------------------------------------------------------------------------
# Data.


@dataclasses.dataclass(frozen=True)
class _Data:
  train: data_lib.Split
  test: data_lib.Split
  ood: data_lib.Split
  source: str
  ood_source: str


def _subset(split: data_lib.Split, count: int, seed: int) -> data_lib.Split:
  """A fixed random subset of ``count`` examples (all for 0), the same for every method."""
  if not count or count >= len(split):
    return split
  keep = np.sort(np.random.default_rng(seed).permutation(len(split))[:count])
  return data_lib.Split(split.images[keep], split.labels[keep])


def _load_data(config) -> _Data:
  data_dir = config.data_dir or None
  dataset = data_lib.load_dataset(config.dataset, data_dir)
  ood = data_lib.load_dataset(config.ood_dataset, data_dir)
  if ood.image_shape != dataset.image_shape:
    raise ValueError(f"the OOD images {ood.image_shape} differ in shape from the "
                     f"in-distribution ones {dataset.image_shape}.")
  train = _subset(dataset.train, config.max_train_examples, 0)
  test = _subset(dataset.test, config.max_test_examples, 1)
  ood_test = _subset(ood.test, config.max_test_examples, 2)
  for name, split in (("training", train), ("test", test), ("OOD test", ood_test)):
    if len(split) < 2:
      raise ValueError(f"the {name} set holds {len(split)} image(s); retrieval needs at least 2.")
  if len(np.unique(train.labels)) < config.classes_per_batch:
    raise ValueError(f"the training set has {len(np.unique(train.labels))} classes, fewer than "
                     f"config.classes_per_batch = {config.classes_per_batch}.")
  return _Data(train, test, ood_test, dataset.source, ood.source)


# ----------------------------------------------------------------------------
# Training: one phase per trained network, each with its own checkpoints.


def _member_seed(seed: int, member: int) -> int:
  """The batch-order seed of network ``member`` (0 for every single-network method)."""
  return int(np.random.SeedSequence([seed, member]).generate_state(1)[0])


def _optimizer(config, num_steps: int) -> optax.GradientTransformation:
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, config.learning_rate, min(config.warmup_steps, num_steps // 2), max(num_steps, 1))
  return optax.adamw(schedule, weight_decay=config.weight_decay)


def _model(config, *, dropout_rate: float = 0.0, confidence: str | None = None) -> SmallCNN:
  return SmallCNN(config.embedding_dim, features=tuple(config.features),
                  kernel_size=config.kernel_size, downsample=config.downsample,
                  hidden=config.hidden, dropout_rate=dropout_rate, confidence=confidence)


def _step_spec(config, objective: str, epoch_batches: int = 1) -> _StepSpec:
  return _StepSpec(
      objective=objective, embedding_dim=config.embedding_dim, margin=config.margin,
      repulsive=config.repulsive, structure=config.structure,
      memory_factor=config.memory_factor, epoch_batches=epoch_batches,
      prior_precision=config.prior_precision,
      num_samples=config.hib_num_samples if objective == "hib" else config.train_num_samples,
      num_pairs=config.hib_num_pairs, beta=config.hib_beta)


@dataclasses.dataclass
class _Run:
  """What every phase of one experiment shares."""

  config: ml_collections.ConfigDict
  workdir: str
  data: _Data
  writer: Any
  seconds: dict = dataclasses.field(default_factory=dict)
  resumed_from: dict = dataclasses.field(default_factory=dict)

  def sampler(self, member: int = 0) -> data_lib.ClassBalancedSampler:
    return data_lib.ClassBalancedSampler(
        self.data.train.labels, self.config.classes_per_batch, self.config.samples_per_class,
        seed=_member_seed(self.config.seed, member))

  def image_batches(self, member: int = 0) -> Callable[[int], Iterator[dict]]:
    sampler, train = self.sampler(member), self.data.train

    def batches(start_step: int):
      for indices in sampler.iterate(start_step=start_step):
        yield {"image": train.images[indices], "label": train.labels[indices]}

    return batches


def _new_state(apply_fn, params, tx, key, curvature=None) -> RetrievalTrainState:
  if curvature is None:
    curvature = jnp.zeros((), jnp.float32)  # a leaf, so every state checkpoints alike
  return RetrievalTrainState.create(apply_fn=apply_fn, params=params, tx=tx, rng=key,
                                    curvature=curvature).replace(step=jnp.zeros((), jnp.int32))


def _network_state(run: _Run, model: SmallCNN, member: int = 0, *, num_steps: int,
                   extra_params=None) -> RetrievalTrainState:
  """A fresh state of ``model``: initialisation from ``(seed, member)``."""
  params_key, state_key = jax.random.split(jax.random.fold_in(
      jax.random.PRNGKey(run.config.seed), member))
  params = model.init({"params": params_key}, run.data.train.images[:1], train=False)["params"]
  if extra_params is not None:
    params = {"net": params, **extra_params}
  return _new_state(model.apply, params, _optimizer(run.config, num_steps), state_key)


def _train_phase(run: _Run, name: str, state: RetrievalTrainState, spec: _StepSpec,
                 num_steps: int, batches: Callable[[int], Iterator[dict]], *, frozen=None,
                 on_start: Callable | None = None) -> RetrievalTrainState:
  """Trains ``state`` to ``num_steps`` with checkpoints in ``checkpoints/<name>``, resuming.

  ``on_start(state, first_batch)`` prepares a fresh state (online LAM's
  first curvature); a restored state skips it.
  """
  config = run.config
  checkpointer = Checkpointer(os.path.join(run.workdir, "checkpoints", name),
                              config.keep_checkpoints)
  start_time = time.monotonic()
  try:
    state = checkpointer.restore_or_keep(state)
    start = int(state.step)
    run.resumed_from[name] = start
    iterator = batches(start)
    progress = metric_writers.ReportProgress(num_steps, config.log_every_steps, run.writer)
    progress(start)
    pending: list[dict] = []
    for step in range(start + 1, num_steps + 1):
      batch = next(iterator)
      if step == 1 and on_start is not None:
        state = on_start(state, batch)
      state, metrics = train_step(state, batch, frozen or {}, spec)
      pending.append(metrics)
      last = step == num_steps
      if step % config.log_every_steps == 0 or last:
        summary = {k: float(np.mean([m[k] for m in jax.device_get(pending)])) for k in pending[0]}
        pending = []
        run.writer.write_scalars(step, {f"{name}/{k}": v for k, v in summary.items()})
        progress(step, extra=f"{name} loss={summary['loss']:.4f}")
        run.writer.flush()
        if not np.isfinite(summary["loss"]):
          raise FloatingPointError(
              f"The {name} training loss became {summary['loss']} at step {step}; lower "
              "config.learning_rate or check the data.")
      else:
        progress(step)
      if step % config.checkpoint_every_steps == 0 or last:
        checkpointer.save(step, state)
  finally:
    checkpointer.close()  # also on errors: let orbax finish its threads
  run.seconds[name] = time.monotonic() - start_time
  return state


def _train_network(run: _Run, member: int = 0) -> tuple[SmallCNN, Any]:
  """A deterministic contrastive network (ensemble member ``member``): ``(model, params)``."""
  config = run.config
  model = _model(config)
  state = _network_state(run, model, member, num_steps=config.num_train_steps)
  state = _train_phase(run, f"member_{member}", state, _step_spec(config, "contrastive"),
                       config.num_train_steps, run.image_batches(member))
  return model, state.params


def _map_batches(fn: Callable, images: np.ndarray, batch_size: int,
                 drop: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
  """``fn(chunk, chunk_index) -> dict`` over fixed-size chunks (the last one padded), concatenated.

  Every output has a leading batch axis; keys in ``drop`` are discarded per
  chunk (large sample arrays that only some sets need).
  """
  if len(images) == 0:
    raise ValueError("no images to embed.")
  size = min(batch_size, len(images))
  chunks = []
  for index, start in enumerate(range(0, len(images), size)):
    chunk = np.asarray(images[start:start + size])
    pad = size - len(chunk)
    if pad:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
    out = {k: v for k, v in fn(chunk, index).items() if k not in drop}
    chunks.append({k: np.asarray(v)[:size - pad] for k, v in jax.device_get(out).items()})
  return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def _features_fn(model: SmallCNN) -> Callable:
  return jax.jit(lambda params, images: trunk_features(model.apply, params, images))


# ----------------------------------------------------------------------------
# The methods: train, then a predictor ``(images, chunk_index) -> {"mean", "uncertainty", "samples"}``.

Predictor = Callable[[np.ndarray, int], dict]


def _deterministic(run: _Run) -> tuple[Predictor, dict]:
  model, params = _train_network(run)
  embed = jax.jit(lambda p, x: model.apply({"params": p}, x)["embedding"])
  return lambda images, _: {"mean": embed(params, images)}, {}


def _laplace_predictor(run: _Run, model: SmallCNN, params, posterior) -> Predictor:
  features = _features_fn(model)
  key = jax.random.PRNGKey(run.config.eval_seed)  # the same S networks for every image

  def predict(images, _):
    out = laplace.predict(_head_embed(run.config.embedding_dim), posterior,
                          features(params, images), key=key,
                          num_samples=run.config.eval_num_samples, params=params,
                          normalize_mean=True)
    return {"mean": out.mean, "uncertainty": out.uncertainty, "samples": out.samples}

  return predict


def _posterior_info(posterior: laplace.LaplacePosterior) -> dict:
  variance = ravel_pytree(posterior.variance())[0]
  return {"prior_precision": float(posterior.prior_precision),
          "posterior_std_mean": float(jnp.mean(jnp.sqrt(variance))),
          "curvature_mean": float(jnp.mean(posterior.spectrum())),
          "num_posterior_params": posterior.num_params}


def _laplace_posthoc(run: _Run):
  config = run.config
  model, params = _train_network(run)
  start = time.monotonic()
  features = _map_batches(lambda x, _: {"f": _features_fn(model)(params, x)},
                          run.data.train.images, config.eval_batch_size)["f"]
  labels = run.data.train.labels
  # One epoch of the training batches: the GGN depends on the pairs a batch holds.
  batches = ((features[i], labels[i]) for i in run.sampler(0).epoch(0))
  posterior = laplace.posthoc_laplace(
      _head_embed(config.embedding_dim), params, batches, margin=config.margin,
      repulsive=config.repulsive, structure=config.structure, subset=LAST_LAYER,
      prior_precision="marglik" if config.tune_prior else config.prior_precision)
  run.seconds["posthoc_laplace"] = time.monotonic() - start
  return _laplace_predictor(run, model, params, posterior), _posterior_info(posterior)


def _laplace_online(run: _Run):
  config = run.config
  model = _model(config)
  sampler = run.sampler(0)
  spec = _step_spec(config, "laplace_online", epoch_batches=sampler.num_batches)
  state = _network_state(run, model, 0, num_steps=config.num_train_steps)
  mean = laplace.select_subset(state.params, LAST_LAYER)
  state = state.replace(curvature=laplace.laplace_posterior(
      mean, structure=config.structure, subset=LAST_LAYER).curvature)

  def on_start(state, batch):
    return state.replace(curvature=_initial_curvature(state, batch["image"], batch["label"],
                                                      spec))

  state = _train_phase(run, "laplace_online", state, spec, config.num_train_steps,
                       run.image_batches(0), on_start=on_start)
  posterior = laplace.laplace_posterior(
      laplace.select_subset(state.params, LAST_LAYER), state.curvature,
      prior_precision=config.prior_precision, structure=config.structure, subset=LAST_LAYER)
  if config.tune_prior:
    posterior = laplace.optimize_prior_precision(posterior)
  return _laplace_predictor(run, model, state.params, posterior), _posterior_info(posterior)


def _mc_dropout(run: _Run):
  config = run.config
  rate, num_samples = config.dropout_rate, config.eval_num_samples
  model = _model(config, dropout_rate=rate)
  state = _network_state(run, model, 0, num_steps=config.num_train_steps)
  state = _train_phase(run, "mc_dropout", state, _step_spec(config, "contrastive"),
                       config.num_train_steps, run.image_batches(0))
  params, embed = state.params, _head_embed(config.embedding_dim)
  key = jax.random.PRNGKey(config.eval_seed)

  @jax.jit
  def sample(params, images, key):
    # Dropout sits only before the projection: S masks on the features of one trunk pass
    # give the same distribution as S stochastic passes of the whole network.
    features = trunk_features(model.apply, params, images)
    keep = jax.random.bernoulli(key, 1.0 - rate, (num_samples,) + features.shape)
    dropped = jnp.where(keep, features / (1.0 - rate), 0.0)
    out = laplace.predictive_embeddings(jax.vmap(lambda f: embed(params, f))(dropped),
                                        normalize_mean=True)
    return {"mean": out.mean, "uncertainty": out.uncertainty, "samples": out.samples}

  return lambda images, index: sample(params, images, jax.random.fold_in(key, index)), {}


def _ensemble(run: _Run):
  members = [_train_network(run, member) for member in range(run.config.ensemble_size)]
  model = members[0][0]
  stacked = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *[p for _, p in members])
  embed_all = jax.jit(
      lambda stacked, images: jax.vmap(lambda p: model.apply({"params": p}, images)["embedding"])(
          stacked))
  dim = run.config.embedding_dim
  rotations = jnp.broadcast_to(jnp.eye(dim), (len(members), dim, dim))
  if run.config.ensemble_alignment == "procrustes":
    references = _subset(run.data.train, run.config.calibration_references, 3).images
    reference = _map_batches(lambda x, _: {"z": jnp.moveaxis(embed_all(stacked, x), 0, 1)},
                             references, run.config.eval_batch_size)["z"]  # (N, members, D)
    rotations = jnp.stack([geometry.orthogonal_procrustes(reference[:, m], reference[:, 0])
                           for m in range(len(members))])

  @jax.jit
  def sample(stacked, rotations, images):
    embeddings = jnp.einsum("mbd,mde->mbe", embed_all(stacked, images), rotations)
    out = laplace.predictive_embeddings(embeddings, normalize_mean=True)
    return {"mean": out.mean, "uncertainty": out.uncertainty, "samples": out.samples}

  return lambda images, _: sample(stacked, rotations, images), {}


def _gaussian_predictor(run: _Run, model: SmallCNN, params, uncertainty: Callable) -> Predictor:
  """Samples ``mu + sigma eps`` of a sigma-head model; ``uncertainty(out, raw_samples)``."""
  num_samples = run.config.eval_num_samples
  key = jax.random.PRNGKey(run.config.eval_seed)

  @jax.jit
  def sample(params, images, key):
    out = model.apply({"params": params}, images)
    raw = losses.sample_mixture(key, out["embedding"][:, None], out["log_sigma"][:, None],
                                num_samples)
    # On the sphere for the calibration, as the paper's code; the uncertainty sees raw samples.
    return {"mean": out["embedding"], "uncertainty": uncertainty(params, out, raw),
            "samples": geometry.l2_normalize(raw)}

  return lambda images, index: sample(params, images, jax.random.fold_in(key, index))


def _pfe(run: _Run):
  config = run.config
  base_model, base_params = _train_network(run)
  features = _map_batches(lambda x, _: {"f": _features_fn(base_model)(base_params, x)},
                          run.data.train.images, config.eval_batch_size)["f"]
  head = _head(config.embedding_dim, "sigma_diagonal")
  head_key, state_key = jax.random.split(jax.random.fold_in(
      jax.random.PRNGKey(config.seed), 1_000_003))
  log_sigma = head.init(head_key, features[:1])["params"]["log_sigma"]
  state = _new_state(head.apply, {"log_sigma": log_sigma},
                     _optimizer(config, config.pfe_steps), state_key)
  frozen = {"projection": base_params["head"]["projection"]}
  sampler, labels = run.sampler(0), run.data.train.labels

  def batches(start_step):
    for indices in sampler.iterate(start_step=start_step):
      yield {"features": features[indices], "label": labels[indices]}

  state = _train_phase(run, "pfe_head", state, _step_spec(config, "pfe"), config.pfe_steps,
                       batches, frozen=frozen)
  model = _model(config, confidence="sigma_diagonal")
  params = {**base_params, "head": {**base_params["head"], "log_sigma": state.params["log_sigma"]}}
  predict = _gaussian_predictor(
      run, model, params, lambda p, out, raw: jnp.sum(jnp.exp(out["log_sigma"]), axis=-1))
  return predict, {}


def _hib(run: _Run):
  config = run.config
  model = _model(config, confidence="sigma_diagonal")
  extra = {"match_a_raw": jnp.asarray(inverse_softplus(config.hib_match_a_init), jnp.float32),
           "match_b": jnp.asarray(config.hib_match_b_init, jnp.float32)}
  state = _network_state(run, model, 0, num_steps=config.num_train_steps, extra_params=extra)
  state = _train_phase(run, "hib", state, _step_spec(config, "hib"), config.num_train_steps,
                       run.image_batches(0))
  params = state.params
  a, b = jax.nn.softplus(params["match_a_raw"]), params["match_b"]
  predict = _gaussian_predictor(
      run, model, params["net"], lambda p, out, raw: losses.self_mismatch(raw, a, b))
  return predict, {"match_a": float(a), "match_b": float(b)}


_METHODS = {
    "deterministic": _deterministic,
    "laplace_posthoc": _laplace_posthoc,
    "laplace_online": _laplace_online,
    "mc_dropout": _mc_dropout,
    "ensemble": _ensemble,
    "pfe": _pfe,
    "hib": _hib,
}


# ----------------------------------------------------------------------------
# Evaluation.

_KS = (1, 5, 10)
_NUM_SHOWN_NEIGHBOURS = 5
# The keys that need an uncertainty: NaN for the deterministic model.
_UNCERTAINTY_KEYS = (
    "ood_auroc", "ood_auprc", "ood/auroc", "ood/auprc", "ood/auprc_in", "ood/fpr_at_95_tpr",
    "ausc", "sparsification/ausc", "sparsification/ausc_oracle", "sparsification/ause",
    "sparsification/ausc_random", "sparsification/prr", "ece", "calibration_accuracy",
    "calibration_mean_confidence", "uncertainty_mean_test", "uncertainty_mean_ood")


class _Clock:
  """Logs the seconds each evaluation stage took."""

  def __init__(self):
    self._last = time.monotonic()

  def log(self, stage: str) -> None:
    now = time.monotonic()
    logging.info("Evaluation: %s took %.1f s", stage, now - self._last)
    self._last = now


def _evaluate(predict: Predictor, stochastic: bool, data: _Data,
              config) -> tuple[dict[str, float], dict[str, np.ndarray]]:
  """The protocol of the module docstring: ``(metrics, per-image arrays)``."""
  batch_size = config.eval_batch_size
  clock = _Clock()
  test = _map_batches(predict, data.test.images, batch_size)
  clock.log("embedding the test images")
  labels = data.test.labels
  metrics = dict(evaluation.retrieval_metrics(test["mean"], labels, ks=_KS))
  _, neighbours = evaluation.nearest_neighbors(
      test["mean"], k=min(_NUM_SHOWN_NEIGHBOURS, len(labels) - 1))
  clock.log("retrieval metrics")
  correct = labels[neighbours[:, 0]] == labels  # leave-one-out 1-NN
  arrays = {"labels": labels, "neighbours": neighbours, "correct": correct}
  metrics.update({key: math.nan for key in _UNCERTAINTY_KEYS})
  if not stochastic:
    return metrics, arrays
  ood = _map_batches(predict, data.ood.images, batch_size, drop=("samples",))
  clock.log("embedding the OOD images")
  uncertainty, ood_uncertainty = test["uncertainty"], ood["uncertainty"]
  metrics.update(evaluation.OODEvaluator(prefix="ood/").run(uncertainty, ood_uncertainty))
  metrics["ood_auroc"], metrics["ood_auprc"] = metrics["ood/auroc"], metrics["ood/auprc"]
  # The paper's sparsification ranks a query by its own and its retrieved neighbour's uncertainty.
  pair_uncertainty = uncertainty + uncertainty[neighbours[:, 0]]
  metrics.update(evaluation.SparsificationEvaluator(prefix="sparsification/").run(
      pair_uncertainty, correct))
  metrics["ausc"] = 1.0 - metrics["sparsification/ausc"]
  references = _subset(data.train, config.calibration_references, 3)
  reference = _map_batches(predict, references.images, batch_size, drop=("samples",))["mean"]
  clock.log("embedding the calibration references")
  calibration = evaluation.retrieval_calibration(
      np.swapaxes(test["samples"], 0, 1), labels, reference, references.labels,
      num_bins=config.calibration_bins)
  clock.log("retrieval calibration")
  metrics["ece"] = calibration.ece
  metrics["calibration_accuracy"] = float(np.mean(calibration.correct))
  metrics["calibration_mean_confidence"] = float(np.mean(calibration.confidences))
  metrics["uncertainty_mean_test"] = float(np.mean(uncertainty))
  metrics["uncertainty_mean_ood"] = float(np.mean(ood_uncertainty))
  arrays.update(uncertainty=uncertainty, ood_uncertainty=ood_uncertainty,
                pair_uncertainty=pair_uncertainty, confidences=calibration.confidences,
                calibration_correct=calibration.correct)
  return metrics, arrays


# ----------------------------------------------------------------------------
# Figures.


def _plot_retrievals(arrays: dict[str, np.ndarray], images: np.ndarray, path: str, title: str,
                     rows_each: int = 4) -> None:
  """The most and least certain test queries, each with its nearest test images."""
  order = np.argsort(arrays["uncertainty"], kind="stable")
  rows_each = min(rows_each, len(order) // 2) or 1
  queries = np.r_[order[:rows_each], order[::-1][:rows_each]]
  neighbours, labels = arrays["neighbours"], arrays["labels"]
  columns = 1 + neighbours.shape[1]
  fig = Figure(figsize=(1.3 * columns, 1.45 * len(queries) + 0.6))
  axes = fig.subplots(len(queries), columns, squeeze=False)
  for row, query in enumerate(queries):
    shown = [query] + list(neighbours[query])
    for col, index in enumerate(shown):
      ax = axes[row, col]
      ax.imshow(images[index, :, :, 0], cmap="gray", vmin=0, vmax=255)
      ax.set_xticks([])
      ax.set_yticks([])
      if col == 0:
        certainty = "most certain" if row < rows_each else "least certain"
        ax.set_title(f"{certainty}\nu={arrays['uncertainty'][query]:.3g}", fontsize=7)
      else:
        colour = "tab:green" if labels[index] == labels[query] else "tab:red"
        for spine in ax.spines.values():
          spine.set_edgecolor(colour)
          spine.set_linewidth(3)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def _write_figures(workdir: str, method: str, arrays: dict, data: _Data, config,
                   records: list[dict]) -> None:
  keys = sorted({k for r in records for k in r if k.endswith("/loss")})
  if keys:
    plotting.plot_training_curves(records, os.path.join(workdir, "training_curves.png"), keys)
  if "uncertainty" not in arrays:
    return  # the deterministic model: nothing ranks its queries
  scores = np.r_[arrays["uncertainty"], arrays["ood_uncertainty"]]
  is_ood = np.r_[np.zeros(len(arrays["uncertainty"])), np.ones(len(arrays["ood_uncertainty"]))]
  plotting.plot_roc_curves({method: (scores, is_ood)}, path=os.path.join(workdir, "roc_ood.png"),
                           title=f"OOD: {config.dataset} test vs {config.ood_dataset} test")
  plotting.plot_sparsification({method: arrays["pair_uncertainty"]},
                               1.0 - arrays["correct"].astype(float),
                               path=os.path.join(workdir, "sparsification.png"),
                               title="1-NN error, query + neighbour uncertainty removed first")
  plotting.plot_reliability_diagram(arrays["confidences"], arrays["calibration_correct"],
                                    num_bins=config.calibration_bins,
                                    path=os.path.join(workdir, "reliability.png"),
                                    title=method)
  _plot_retrievals(arrays, data.test.images, os.path.join(workdir, "retrievals.png"),
                   f"{method}: most and least certain {config.dataset} test queries and their "
                   "nearest test images (green: same class)")


def plot_method_comparison(workdirs: dict[str, str], out_dir: str) -> list[str]:
  """ROC, sparsification and reliability curves of several finished runs, one figure each.

  Reads each run's ``scores.npz``, so nothing is re-evaluated.

  Args:
    workdirs: ``{label: workdir}`` of finished runs (the deterministic model
      has no uncertainty and is skipped).
    out_dir: where ``roc_ood_methods.png``, ``sparsification_methods.png``
      and ``reliability_methods.png`` are written.

  Returns:
    The paths written.

  Raises:
    FileNotFoundError: a workdir without ``scores.npz``.
    ValueError: no run with an uncertainty.
  """
  runs = {}
  for label, workdir in workdirs.items():
    with np.load(os.path.join(workdir, "scores.npz")) as scores:
      if "uncertainty" in scores:
        runs[label] = {k: scores[k] for k in scores.files}
  if not runs:
    raise ValueError("none of the runs has an uncertainty to compare.")
  os.makedirs(out_dir, exist_ok=True)
  roc_path = os.path.join(out_dir, "roc_ood_methods.png")
  plotting.plot_roc_curves(
      {label: (np.r_[r["uncertainty"], r["ood_uncertainty"]],
               np.r_[np.zeros(len(r["uncertainty"])), np.ones(len(r["ood_uncertainty"]))])
       for label, r in runs.items()}, path=roc_path, title="OOD detection")
  fig = Figure(figsize=(5.5, 4.5))
  ax = fig.add_subplot()
  for label, r in runs.items():
    curve = evaluation.sparsification_curve(r["pair_uncertainty"], 1.0 - r["correct"])
    ax.plot(curve.fraction_removed, 1.0 - curve.error,
            label=f"{label} AUSC {1.0 - np.mean(curve.error):.3f}")
  ax.set_xlabel("fraction of most uncertain queries removed")
  ax.set_ylabel("1-NN accuracy of the rest")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  sparsification_path = os.path.join(out_dir, "sparsification_methods.png")
  fig.savefig(sparsification_path, dpi=110)
  fig = Figure(figsize=(5.5, 4.5))
  ax = fig.add_subplot()
  ax.plot([0, 1], [0, 1], color="0.4", ls="--", lw=1, label="calibrated")
  for label, r in runs.items():
    with open(os.path.join(workdirs[label], "config.json"), encoding="utf-8") as f:
      bins = json.load(f)["calibration_bins"]
    diagram = evaluation.reliability_diagram(r["confidences"], r["calibration_correct"], bins)
    filled = diagram.count > 0
    ece = evaluation.expected_calibration_error(r["confidences"], r["calibration_correct"], bins)
    ax.plot(diagram.confidence[filled], diagram.accuracy[filled], marker="o", ms=3,
            label=f"{label} ECE {ece:.3f}")
  ax.set_xlabel("confidence (mean of the bin)")
  ax.set_ylabel("accuracy of the bin")
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  reliability_path = os.path.join(out_dir, "reliability_methods.png")
  fig.savefig(reliability_path, dpi=110)
  return [roc_path, sparsification_path, reliability_path]


# ----------------------------------------------------------------------------
# The experiment.


def _check_resumable(config, workdir: str) -> None:
  """Refuses to resume a run whose training-relevant config differs; writes ``config.json``."""
  path = os.path.join(workdir, "config.json")
  current = config.to_dict()
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      saved = json.load(f)
    changed = sorted(k for k in set(saved) | set(current)
                     if k not in RESUME_SAFE_FIELDS
                     and json.dumps(saved.get(k)) != json.dumps(current.get(k), default=list))
    if changed:
      raise ValueError(
          f"{workdir} holds a run with a different config (fields {changed}); resuming it would "
          "mix two experiments. Use another --workdir, or delete that one.")
  with open(path, "w", encoding="utf-8") as f:
    json.dump(current, f, indent=1, default=list)


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  """Trains the method of ``config.method`` and evaluates it (see the module docstring).

  Args:
    config: an ``ml_collections.ConfigDict`` (see :func:`default_retrieval_config`).
    workdir: where ``config.json``, checkpoints, ``metrics.jsonl``,
      TensorBoard events, ``metrics.json``, ``scores.npz`` and the figures
      go. A workdir holding checkpoints of the same config is resumed.

  Returns:
    The final metrics (also in ``workdir/metrics.json``): every key of
    :data:`HEADLINE_KEYS`, the other retrieval, OOD, sparsification and
    calibration metrics, and the run's bookkeeping.

  Raises:
    ValueError: a bad config, data that cannot serve the protocol, or a
      workdir holding a run of another config.
    FloatingPointError: a training loss became NaN or infinite.
  """
  config = validate_retrieval_config(config)
  os.makedirs(workdir, exist_ok=True)
  _check_resumable(config, workdir)
  data = _load_data(config)
  writer = metric_writers.create_default_writer(workdir, tensorboard=config.tensorboard)
  run = _Run(config, workdir, data, writer)
  writer.write_hparams({**config.to_dict(), "data_source": data.source,
                        "ood_source": data.ood_source, "num_train_examples": len(data.train)})
  logging.info("%s on %s (%d train, %d test images; OOD: %d %s test images), D=%d",
               config.method, config.dataset, len(data.train), len(data.test), len(data.ood),
               config.ood_dataset, config.embedding_dim)
  try:
    predict, info = _METHODS[config.method](run)
    start = time.monotonic()
    metrics, arrays = _evaluate(predict, config.method != "deterministic", data, config)
    eval_seconds = time.monotonic() - start
    writer.write_scalars(config.num_train_steps, {k: v for k, v in metrics.items()
                                                  if math.isfinite(v)})
  finally:
    writer.close()
  final = {
      **metrics,
      "method": config.method,
      "seed": config.seed,
      "embedding_dim": config.embedding_dim,
      **info,
      "num_train_steps": config.num_train_steps,
      "train_seconds": run.seconds,
      "resumed_from_step": run.resumed_from,
      "eval_seconds": eval_seconds,
      "num_train_examples": len(data.train),
      "num_test_examples": len(data.test),
      "num_ood_examples": len(data.ood),
      "data_source": data.source,
      "ood_source": data.ood_source,
  }
  with open(os.path.join(workdir, "metrics.json"), "w", encoding="utf-8") as f:
    json.dump(final, f, indent=1)
  np.savez_compressed(os.path.join(workdir, "scores.npz"), **arrays)
  if config.figures:
    records = metric_writers.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    _write_figures(workdir, config.method, arrays, data, config, records)
  logging.info("Final: %s", json.dumps({k: final[k] for k in HEADLINE_KEYS}))
  return final
