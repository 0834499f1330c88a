r"""Bayesian metric learning and its baselines: retrieval with an OOD set.

The methods of Warburg, Miani, Brack & Hauberg, "Bayesian Metric Learning for
Uncertainty Quantification in Image Retrieval" (NeurIPS 2023), trained on the
in-distribution set (Fashion-MNIST) and evaluated against the
out-of-distribution set (the MNIST test images). Each trained network is a
phase of the engine (:func:`sphereembed.training.engine.run_phase`), with its
own checkpoints (``checkpoints/<phase>``): an ensemble resumes member by member.

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
* ``"retrieval_hib"``: Hedged Instance Embeddings (Oh et al., ICLR 2019): the
  MoG-1 head of :class:`~sphereembed.models.hib.HIBEmbedding` on the same
  trunk, trained end to end by the HIB method's own step
  (:func:`sphereembed.methods.hib.train_step`: the VIB match loss on
  ``hib_num_pairs`` sampled pairs, ``hib_num_samples`` samples, KL weight
  ``hib_beta``), the match scalars ``a`` and ``b`` learned with it. Its
  retrieval ranks by the re-normalised mean.

Evaluation: the retrieval-with-OOD protocol of
:mod:`sphereembed.evaluation.protocols.retrieval` (mAP@k, OOD AUROC / AUPRC,
AUSC, ECE), on every method's unit mean embeddings, its samples
(``eval_num_samples``; ``ensemble_size`` for the ensemble) and its
uncertainty: the summed per-dimension standard deviation of the samples
(LAM, MC dropout, ensemble; :func:`sphereembed.laplace.predictive_embeddings`,
``ddof=1``), the summed sigma (PFE) or the self-mismatch
(:func:`sphereembed.losses.self_mismatch`, HIB). Weight samples (LAM) are drawn
once from ``eval_seed``: every image sees the same networks. ``scores.npz``
keeps the per-image uncertainties, labels and 1-NN correctness.

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
import time
from typing import Any, Callable

from flax import linen as nn
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
import ml_collections
import numpy as np
import optax

from sphereembed import data as data_lib
from sphereembed import geometry
from sphereembed import laplace
from sphereembed import losses
from sphereembed import plotting
from sphereembed.evaluation.protocols import retrieval as retrieval_protocol
from sphereembed.methods import hib as hib_method
from sphereembed.methods.base import Method, register
from sphereembed.models.cnn import EmbeddingHead, SmallCNN
from sphereembed.models.hib import HIBEmbedding
from sphereembed.training import builders
from sphereembed.training import engine
from sphereembed.training import metric_writers
from sphereembed.training import sharding
from sphereembed.training.state import TrainState, init_train_state

__all__ = ["LAST_LAYER", "METHODS", "mls_loss", "train_step", "trunk_features"]

#: The methods of this family (each a ``config.method``).
METHODS = ("deterministic", "laplace_posthoc", "laplace_online", "mc_dropout", "ensemble", "pfe",
           "retrieval_hib")

#: The parameters the Laplace posterior covers: the projection of the embedding head.
LAST_LAYER = (("head", "projection"),)

# ----------------------------------------------------------------------------
# Config.


def _fields() -> ml_collections.ConfigDict:
  """The fields of the retrieval methods, and the engine defaults they change."""
  config = ml_collections.ConfigDict()

  # Data (data_dir as in sphereembed.data.load_dataset): in-distribution and OOD test set.
  config.dataset = "fashion_mnist"
  config.ood_dataset = "mnist"
  config.max_train_examples = 0  # 0 = all; else a fixed random subset (smoke runs)
  config.max_test_examples = 0  # 0 = all; else the first N test (and OOD test) images

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

  # Optimisation (engine fields, these methods' defaults), per trained network.
  config.num_train_steps = 3000  # about 6.5 epochs of Fashion-MNIST
  config.learning_rate = 2e-3

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

  # Bookkeeping (engine fields).
  config.log_every_steps = 200
  config.checkpoint_every_steps = 1000
  return config


_CHOICES = {
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
             "hib_match_a_init", "eval_num_samples", "calibration_bins")
_NON_NEGATIVE = ("max_train_examples", "max_test_examples", "dropout_rate", "hib_beta",
                 "eval_seed", "calibration_references")

_RESUME_SAFE = frozenset({
    # Evaluation only: a finished run can be re-evaluated with other values.
    "eval_num_samples", "calibration_bins", "calibration_references", "eval_seed",
    "tune_prior",  # the evaluated posterior's prior precision; training never reads it
    "ensemble_alignment",
})


def _validate(merged) -> None:
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
    >>> from sphereembed.methods.retrieval import trunk_features
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
    >>> from sphereembed.methods.retrieval import mls_loss
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


@dataclasses.dataclass(frozen=True)
class _StepSpec:
  """What a train step minimises (static: hashed into the compiled step)."""

  objective: str  # "contrastive", "laplace_online" or "pfe"
  embedding_dim: int
  margin: float
  repulsive: str = "positives"
  structure: str = "diagonal"
  memory_factor: float = 0.999
  epoch_batches: int = 1  # batches per epoch: the curvature's scale
  prior_precision: float = 1.0
  num_samples: int = 1


def _online_posterior(params, curvature, spec: _StepSpec) -> laplace.LaplacePosterior:
  mean = laplace.select_subset(params, LAST_LAYER)
  dtype = jax.tree_util.tree_leaves(mean)[0].dtype
  return laplace.LaplacePosterior(mean=mean, curvature=curvature,
                                  prior_precision=jnp.asarray(spec.prior_precision, dtype),
                                  structure=spec.structure, subset=LAST_LAYER)


def _loss_fn(params, state: TrainState, batch, frozen, spec: _StepSpec, keys):
  """``(loss, aux)`` of one batch for the objective of ``spec``."""
  labels = batch["label"]
  if spec.objective == "contrastive":
    out = state.apply_fn({"params": params}, batch["image"], train=True,
                         rngs={"dropout": keys["dropout"]})
    return losses.contrastive(out["embedding"], labels, margin=spec.margin), {}
  if spec.objective == "laplace_online":
    features = trunk_features(state.apply_fn, params, batch["image"], train=True)
    posterior = _online_posterior(params, state.extras["curvature"], spec)
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
  raise ValueError(f"unknown objective {spec.objective!r}")


@functools.partial(jax.jit, static_argnames="spec", donate_argnums=0)
def train_step(state: TrainState, batch: dict[str, jax.Array], frozen,
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
        _online_posterior(state.params, state.extras["curvature"], spec), curvature,
        memory_factor=spec.memory_factor, scale=(1 - spec.memory_factor) * spec.epoch_batches,
        params=new_state.params)
    new_state = new_state.with_extras(curvature=posterior.curvature)
    metrics["curvature_mean"] = jnp.mean(ravel_pytree(posterior.curvature)[0])
  return new_state, metrics


@functools.partial(jax.jit, static_argnames="spec")
def _initial_curvature(state: TrainState, images, labels, spec: _StepSpec):
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


def _load_data(config) -> _Data:
  data_dir = config.data_dir or None
  dataset = data_lib.load_dataset(config.dataset, data_dir)
  ood = data_lib.load_dataset(config.ood_dataset, data_dir)
  if ood.image_shape != dataset.image_shape:
    raise ValueError(f"the OOD images {ood.image_shape} differ in shape from the "
                     f"in-distribution ones {dataset.image_shape}.")
  train = builders.limit_examples(dataset.train, config.max_train_examples, seed=config.seed)
  test = builders.limit_examples(dataset.test, config.max_test_examples)
  ood_test = builders.limit_examples(ood.test, config.max_test_examples)
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


def _model(config, *, dropout_rate: float = 0.0, confidence: str | None = None) -> SmallCNN:
  return builders.make_model(config, dropout_rate=dropout_rate, confidence=confidence)


def _step_spec(config, objective: str, epoch_batches: int = 1) -> _StepSpec:
  return _StepSpec(
      objective=objective, embedding_dim=config.embedding_dim, margin=config.margin,
      repulsive=config.repulsive, structure=config.structure,
      memory_factor=config.memory_factor, epoch_batches=epoch_batches,
      prior_precision=config.prior_precision,
      num_samples=config.train_num_samples)


@dataclasses.dataclass
class _Context:
  """The run and its data: what every phase of one experiment shares."""

  run: engine.Run
  data: _Data

  @property
  def config(self) -> ml_collections.ConfigDict:
    return self.run.config

  def sampler(self, member: int = 0) -> data_lib.ClassBalancedSampler:
    return builders.make_sampler(self.config, self.data.train.labels,
                                 seed=_member_seed(self.config.seed, member))

  def image_batches(self, member: int = 0) -> engine.BatchStream:
    sampler, train = self.sampler(member), self.data.train

    def batches(start_step: int, rows: slice):
      for indices in sampler.iterate(start_step=start_step):
        local = indices[rows]
        yield {"image": train.images[local], "label": train.labels[local]}

    return batches

  def map_batches(self, fn: Callable, images: np.ndarray,
                  drop: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """``fn(chunk, chunk_index) -> dict`` over chunks split over the run's mesh, concatenated."""
    return engine.map_batches(fn, images, self.config.eval_batch_size, mesh=self.run.mesh,
                              drop=drop, with_index=True)

  def phase(self, name: str, state: TrainState, spec: _StepSpec | None, num_steps: int,
            batches: engine.BatchStream, *, frozen=None, on_start: Callable | None = None,
            step_fn: Callable | None = None):
    """Trains ``state`` as the engine's phase ``name``, resuming from its checkpoints.

    The step is :func:`train_step` with ``spec`` (and ``frozen``), or ``step_fn``.
    """
    config = self.config
    step_fn = step_fn or functools.partial(train_step, frozen=frozen or {}, spec=spec)
    return engine.run_phase(
        self.run, name, state, step_fn,
        num_steps=num_steps, batches=batches,
        batch_size=config.classes_per_batch * config.samples_per_class,
        batch_size_source="config.classes_per_batch * config.samples_per_class",
        on_start=on_start)


def _network_state(ctx: _Context, model: SmallCNN, member: int = 0, *,
                   num_steps: int) -> TrainState:
  """A fresh state of ``model``: initialisation from ``(seed, member)``."""
  params_key, state_key = jax.random.split(jax.random.fold_in(
      jax.random.PRNGKey(ctx.config.seed), member))
  params = model.init({"params": params_key}, ctx.data.train.images[:1], train=False)["params"]
  return init_train_state(model.apply, params, builders.make_optimizer(ctx.config, num_steps),
                          state_key)


def _train_network(ctx: _Context, member: int = 0) -> tuple[SmallCNN, Any]:
  """A deterministic contrastive network (ensemble member ``member``): ``(model, params)``."""
  config = ctx.config
  model = _model(config)
  state = _network_state(ctx, model, member, num_steps=config.num_train_steps)
  state = ctx.phase(f"member_{member}", state, _step_spec(config, "contrastive"),
                       config.num_train_steps, ctx.image_batches(member))
  return model, state.params


def _features_fn(model: SmallCNN) -> Callable:
  return jax.jit(lambda params, images: trunk_features(model.apply, params, images))


# ----------------------------------------------------------------------------
# The methods: train, then a predictor ``(images, chunk_index) -> {"mean", "uncertainty", "samples"}``.

Predictor = Callable[[np.ndarray, int], dict]


def _deterministic(ctx: _Context) -> tuple[Predictor, dict]:
  model, params = _train_network(ctx)
  embed = jax.jit(lambda p, x: model.apply({"params": p}, x)["embedding"])
  return lambda images, _: {"mean": embed(params, images)}, {}


def _laplace_predictor(ctx: _Context, model: SmallCNN, params, posterior) -> Predictor:
  features = _features_fn(model)
  key = jax.random.PRNGKey(ctx.config.eval_seed)  # the same S networks for every image

  def predict(images, _):
    out = laplace.predict(_head_embed(ctx.config.embedding_dim), posterior,
                          features(params, images), key=key,
                          num_samples=ctx.config.eval_num_samples, params=params,
                          normalize_mean=True)
    return {"mean": out.mean, "uncertainty": out.uncertainty, "samples": out.samples}

  return predict


def _posterior_info(posterior: laplace.LaplacePosterior) -> dict:
  variance = ravel_pytree(posterior.variance())[0]
  return {"prior_precision": float(posterior.prior_precision),
          "posterior_std_mean": float(jnp.mean(jnp.sqrt(variance))),
          "curvature_mean": float(jnp.mean(posterior.spectrum())),
          "num_posterior_params": posterior.num_params}


def _laplace_posthoc(ctx: _Context):
  config = ctx.config
  model, params = _train_network(ctx)
  start = time.monotonic()
  features = ctx.map_batches(lambda x, _: {"f": _features_fn(model)(params, x)},
                             ctx.data.train.images)["f"]
  labels = ctx.data.train.labels
  # One epoch of the training batches: the GGN depends on the pairs a batch holds.
  batches = ((features[i], labels[i]) for i in ctx.sampler(0).epoch(0))
  posterior = laplace.posthoc_laplace(
      _head_embed(config.embedding_dim), params, batches, margin=config.margin,
      repulsive=config.repulsive, structure=config.structure, subset=LAST_LAYER,
      prior_precision="marglik" if config.tune_prior else config.prior_precision)
  ctx.run.seconds["posthoc_laplace"] = time.monotonic() - start
  return _laplace_predictor(ctx, model, params, posterior), _posterior_info(posterior)


def _laplace_online(ctx: _Context):
  config = ctx.config
  model = _model(config)
  sampler = ctx.sampler(0)
  spec = _step_spec(config, "laplace_online", epoch_batches=sampler.num_batches)
  state = _network_state(ctx, model, 0, num_steps=config.num_train_steps)
  mean = laplace.select_subset(state.params, LAST_LAYER)
  state = state.with_extras(curvature=laplace.laplace_posterior(
      mean, structure=config.structure, subset=LAST_LAYER).curvature)

  def on_start(state, batch):
    return state.with_extras(curvature=_initial_curvature(state, batch["image"], batch["label"],
                                                          spec))

  state = ctx.phase("laplace_online", state, spec, config.num_train_steps,
                       ctx.image_batches(0), on_start=on_start)
  posterior = laplace.laplace_posterior(
      laplace.select_subset(state.params, LAST_LAYER), state.extras["curvature"],
      prior_precision=config.prior_precision, structure=config.structure, subset=LAST_LAYER)
  if config.tune_prior:
    posterior = laplace.optimize_prior_precision(posterior)
  return _laplace_predictor(ctx, model, state.params, posterior), _posterior_info(posterior)


def _mc_dropout(ctx: _Context):
  config = ctx.config
  rate, num_samples = config.dropout_rate, config.eval_num_samples
  model = _model(config, dropout_rate=rate)
  state = _network_state(ctx, model, 0, num_steps=config.num_train_steps)
  state = ctx.phase("mc_dropout", state, _step_spec(config, "contrastive"),
                       config.num_train_steps, ctx.image_batches(0))
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


def _ensemble(ctx: _Context):
  members = [_train_network(ctx, member) for member in range(ctx.config.ensemble_size)]
  model = members[0][0]
  stacked = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *[p for _, p in members])
  embed_all = jax.jit(
      lambda stacked, images: jax.vmap(lambda p: model.apply({"params": p}, images)["embedding"])(
          stacked))
  dim = ctx.config.embedding_dim
  rotations = jnp.broadcast_to(jnp.eye(dim), (len(members), dim, dim))
  if ctx.config.ensemble_alignment == "procrustes":
    references = builders.limit_examples(ctx.data.train, ctx.config.calibration_references,
                                         seed=3).images
    reference = ctx.map_batches(lambda x, _: {"z": jnp.moveaxis(embed_all(stacked, x), 0, 1)},
                                references)["z"]  # (N, members, D)
    rotations = jnp.stack([geometry.orthogonal_procrustes(reference[:, m], reference[:, 0])
                           for m in range(len(members))])

  @jax.jit
  def sample(stacked, rotations, images):
    embeddings = jnp.einsum("mbd,mde->mbe", embed_all(stacked, images), rotations)
    out = laplace.predictive_embeddings(embeddings, normalize_mean=True)
    return {"mean": out.mean, "uncertainty": out.uncertainty, "samples": out.samples}

  return lambda images, _: sample(stacked, rotations, images), {}


def _gaussian_predictor(ctx: _Context, apply_fn: Callable, params, gaussian: Callable,
                        uncertainty: Callable) -> Predictor:
  """Samples ``mu + sigma eps`` of a Gaussian embedding.

  ``gaussian(out) -> (means, log_sigmas)``, each ``(B, 1, D)``, from the
  model's outputs; ``uncertainty(out, raw_samples)``.
  """
  num_samples = ctx.config.eval_num_samples
  key = jax.random.PRNGKey(ctx.config.eval_seed)

  @jax.jit
  def sample(params, images, key):
    out = apply_fn({"params": params}, images)
    means, log_sigmas = gaussian(out)
    raw = losses.sample_mixture(key, means, log_sigmas, num_samples)
    # On the sphere for the calibration, as the paper's code; the uncertainty sees raw samples.
    return {"mean": geometry.l2_normalize(means[:, 0]), "uncertainty": uncertainty(out, raw),
            "samples": geometry.l2_normalize(raw)}

  return lambda images, index: sample(params, images, jax.random.fold_in(key, index))


def _pfe(ctx: _Context):
  config = ctx.config
  base_model, base_params = _train_network(ctx)
  features = ctx.map_batches(lambda x, _: {"f": _features_fn(base_model)(base_params, x)},
                             ctx.data.train.images)["f"]
  head = _head(config.embedding_dim, "sigma_diagonal")
  head_key, state_key = jax.random.split(jax.random.fold_in(
      jax.random.PRNGKey(config.seed), 1_000_003))
  log_sigma = head.init(head_key, features[:1])["params"]["log_sigma"]
  state = init_train_state(head.apply, {"log_sigma": log_sigma},
                           builders.make_optimizer(config, config.pfe_steps), state_key)
  frozen = {"projection": base_params["head"]["projection"]}
  sampler, labels = ctx.sampler(0), ctx.data.train.labels

  def batches(start_step, rows):
    for indices in sampler.iterate(start_step=start_step):
      yield {"features": features[indices[rows]], "label": labels[indices[rows]]}

  state = ctx.phase("pfe_head", state, _step_spec(config, "pfe"), config.pfe_steps,
                       batches, frozen=frozen)
  model = _model(config, confidence="sigma_diagonal")
  params = {**base_params, "head": {**base_params["head"], "log_sigma": state.params["log_sigma"]}}
  predict = _gaussian_predictor(
      ctx, model.apply, params, lambda out: (out["embedding"][:, None], out["log_sigma"][:, None]),
      lambda out, raw: jnp.sum(jnp.exp(out["log_sigma"]), axis=-1))
  return predict, {}


def _hib(ctx: _Context):
  """HIB's MoG-1 head on the same trunk, trained by the HIB method's own VIB step."""
  config = ctx.config
  model = HIBEmbedding(config.embedding_dim, 1, features=tuple(config.features),
                       kernel_size=config.kernel_size, downsample=config.downsample,
                       hidden=config.hidden, match_a_init=config.hib_match_a_init,
                       match_b_init=config.hib_match_b_init)
  state = hib_method.create_hib_state(
      model, builders.make_optimizer(config, config.num_train_steps),
      jax.random.fold_in(jax.random.PRNGKey(config.seed), 0), ctx.data.train.images[:1])
  spec = hib_method.HIBLossSpec(num_samples=config.hib_num_samples, beta=config.hib_beta,
                                pairs="sampled", num_pairs=config.hib_num_pairs,
                                positive_fraction=0.5)
  state = ctx.phase("hib", state, None, config.num_train_steps, ctx.image_batches(0),
                    step_fn=functools.partial(hib_method.train_step, spec=spec))
  params = sharding.to_host(state.params)
  predict = _gaussian_predictor(
      ctx, model.apply, params, lambda out: (out["means"], out["log_sigmas"]),
      lambda out, raw: losses.self_mismatch(raw, out["match_a"], out["match_b"]))
  return predict, {"match_a": float(jax.nn.softplus(params["match_a_raw"])),
                   "match_b": float(params["match_b"])}


_TRAINERS = {
    "deterministic": _deterministic,
    "laplace_posthoc": _laplace_posthoc,
    "laplace_online": _laplace_online,
    "mc_dropout": _mc_dropout,
    "ensemble": _ensemble,
    "pfe": _pfe,
    "retrieval_hib": _hib,
}


# ----------------------------------------------------------------------------
# The methods as plug-ins.


def _run(run: engine.Run) -> dict[str, Any]:
  config = run.config
  data = _load_data(config)
  ctx = _Context(run, data)
  predict, info = _TRAINERS[config.method](ctx)
  predict_all = lambda images, drop=(): ctx.map_batches(predict, images, drop=drop)
  references = builders.limit_examples(data.train, config.calibration_references, seed=3)
  metrics, arrays = retrieval_protocol.evaluate(
      predict_all, config.method != "deterministic", data.test, data.ood, references, config)
  result = {
      **metrics, **info,
      "embedding_dim": config.embedding_dim,
      "num_train_steps": config.num_train_steps,
      "num_train_examples": len(data.train),
      "num_test_examples": len(data.test),
      "num_ood_examples": len(data.ood),
      "data_source": data.source,
      "ood_source": data.ood_source,
  }
  if run.primary:
    np.savez_compressed(run.path("scores.npz"), **arrays)
  if config.figures and run.primary:
    records = metric_writers.read_jsonl(run.path("metrics.jsonl"))
    keys = sorted({k for r in records for k in r if k.endswith("_loss")})
    if keys:
      plotting.plot_training_curves(records, run.path("training_curves.png"), keys)
    retrieval_protocol.write_figures(run.workdir, config.method, arrays, data.test.images, config)
  return result


for _name in METHODS:
  register(Method(
      name=_name, fields=_fields, run=_run, validate=_validate, choices=_CHOICES,
      positive=_POSITIVE, non_negative=_NON_NEGATIVE, resume_safe=_RESUME_SAFE))
