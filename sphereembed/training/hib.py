r"""Hedged Instance Embeddings on N-digit MNIST: config, training and evaluation (issue 7).

``train_and_evaluate(config, workdir)`` trains a :class:`~sphereembed.models.hib.HIBEmbedding`
(point, MoG-1, MoG-2, ...) with the VIB match loss of Oh et al., "Modeling
Uncertainty with Hedged Instance Embedding" (ICLR 2019), on N-digit MNIST
(:mod:`sphereembed.data.ndigit`), then evaluates it with
:mod:`sphereembed.evaluation` and writes ``metrics.json`` and the figures in the
workdir. A run restarted with the same workdir resumes from its last orbax
checkpoint (same batches, same result).

Training. Class-balanced P x K batches (:class:`~sphereembed.data.ClassBalancedSampler`,
``classes_per_batch`` x ``samples_per_class`` images of the seen classes) ->
pairs of the batch (:func:`~sphereembed.data.pairs.sample_pairs` with a
``positive_fraction`` share of positives, or :func:`~sphereembed.data.pairs.all_pairs`)
-> :func:`~sphereembed.losses.vib_match_loss` with ``num_samples`` (K)
reparameterised samples per embedding and weight ``beta`` on the KL terms,
``a`` and ``b`` learned with the network -> AdamW with warm-up and cosine
decay. One jitted, pure :func:`train_step` of an explicit :class:`HIBTrainState`.

Evaluation protocol (every choice below is ours where the paper is silent; the
paper gives the metrics, not these details):

* Test sets: each name in ``config.eval_sets`` (``"unseen"``: the 30% of
  classes never trained on, open-set verification; ``"seen"``: test images of
  the training classes, from MNIST test digits). The first one is the
  headline of ``metrics.json`` (``verification_ap_clean``, ...). Corrupted
  images are the same images with one random occlusion each
  (:func:`sphereembed.data.ndigit.occlude`, seeded), so every clean image has
  a corrupted twin at the same index.
* Embeddings: the model's means and log-sigmas; ``eval_num_samples`` samples
  per image (:func:`~sphereembed.losses.sample_mixture`, drawn once from
  ``eval_seed``, so that every model is scored on the same random stream); a
  point embedding is its single point.
* Verification pairs: every test image ``i`` is the first member of
  ``pairs_per_image`` pairs, half with a random other image of its class and
  half with a random image of another class (fixed by ``eval_seed``, the same
  pairs for every model and seed). The score of a pair is the Monte Carlo
  match probability :func:`~sphereembed.losses.match_probability` over all
  K x K sample pairs. **Clean AP**: :func:`~sphereembed.evaluation.verification_ap`
  of all pairs, both members clean. **Corrupted AP**: the same pairs with the
  first member replaced by its corrupted twin (a corrupted probe against
  clean references, so that the corrupted image's own uncertainty is what is
  tested).
* kNN accuracy: majority vote of the ``knn_k`` nearest neighbours
  (:func:`~sphereembed.evaluation.retrieval_metrics_per_query`, euclidean)
  by the mean of each embedding (the mixture mean, equal weights). **Clean**:
  leave-one-out within the clean test set. **Corrupted**: each corrupted
  image queries the clean test set, its own clean twin left out. MAP@R and
  precision@1 of the same search are reported too.
* Uncertainty: the self-mismatch ``eta(x) = 1 - p(m|x, x)``
  (:func:`~sphereembed.losses.self_mismatch`, all K x K pairs of the
  image's own samples). Per-image performance: the AP of the image's own
  ``pairs_per_image`` pairs (:func:`~sphereembed.evaluation.average_precision`;
  for a corrupted image, its corrupted-probe pairs) and its kNN correctness
  (0/1). **The uncertainty table** reports Spearman's rho
  (:func:`~sphereembed.evaluation.uncertainty_correlation`, Kendall's tau too)
  between ``eta`` and each per-image performance, over all images of the
  set, clean and corrupted separately (``eta_ap_spearman_clean``, ...). A
  useful uncertainty gives a **negative** rho (more uncertain, worse). The
  paper's binned view is reported too: the images are split into
  ``uncertainty_bins`` equal-count bins of ``eta``
  (:func:`~sphereembed.evaluation.binned_performance`) and rho is computed
  between the bins' mean ``eta`` and mean performance (``..._binned_spearman``).
  A point embedding has the same ``eta = 1 - sigmoid(b)`` for every image:
  its correlations are undefined (NaN, "n/a" in tables).

Figures (``config.figures``): ``embeddings_hib.png``, the 2-D embeddings of
clean and of corrupted test images (means coloured by class, with the sample
clouds of a few images; for ``D > 2`` the plane of the two principal axes of
the clean means), ``uncertain_images.png``, the most and least certain test
images (clean and corrupted together) with their ``eta``,
``uncertainty_bins.png``, mean AP and kNN accuracy per ``eta`` bin, and
``training_curves.png``.

Deviations from the paper: far fewer training steps (a CPU budget of a few
minutes instead of the paper's long GPU runs), strided convolutions by
default (see :mod:`sphereembed.models.hib`), AdamW with a cosine schedule, a
smooth lower bound on log-sigma, kNN by the embedding means (the paper does
not say how it ranks stochastic embeddings for kNN), and the occlusion recipe
of :mod:`sphereembed.data.ndigit`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Any

from absl import logging
from clu import parameter_overview
from flax.training import train_state
import jax
import jax.numpy as jnp
import matplotlib
from matplotlib.figure import Figure
import ml_collections
import numpy as np
import optax

from sphereembed import evaluation
from sphereembed import losses
from sphereembed import plotting
from sphereembed.data import ClassBalancedSampler
from sphereembed.data import ndigit
from sphereembed.data import pairs as pairs_lib
from sphereembed.losses._hedged import ESTIMATORS
from sphereembed.models.hib import HIBEmbedding
from sphereembed.training import config as config_lib
from sphereembed.training import metric_writers
from sphereembed.training.checkpoints import Checkpointer

__all__ = [
    "HIBLossSpec",
    "HIBTrainState",
    "RESUME_SAFE_FIELDS",
    "create_hib_state",
    "default_hib_config",
    "embed_images",
    "evaluate",
    "train_and_evaluate",
    "train_step",
    "validate_hib_config",
    "verification_pairs",
]

# ----------------------------------------------------------------------------
# Config.

# Fields that may change between an interrupted run and its resumption.
RESUME_SAFE_FIELDS = frozenset({
    "data_dir", "cache_dir", "log_every_steps", "checkpoint_every_steps", "keep_checkpoints",
    "eval_batch_size", "tensorboard", "figures",
})


def default_hib_config() -> ml_collections.ConfigDict:
  """Every field of an N-digit MNIST HIB experiment, with its default.

  The defaults are the ``N = 2``, ``D = 2``, MoG-1 run with a training budget
  of about 4 minutes on a 2-core CPU (see ``configs/hib_*.py``).
  """
  config = ml_collections.ConfigDict()

  # Data: N-digit MNIST generated from MNIST (data_dir as in load_dataset).
  config.num_digits = 2
  config.data_dir = ""  # "" -> $SPHEREEMBED_DATA_DIR, then ../shared/data, then TFDS.
  config.cache_dir = ""  # "" -> generated on the fly (a few seconds); else an .npz cache here.
  config.data_seed = 0  # the class split and the images: the same for every training seed
  config.num_train = 100_000
  config.num_test = 10_000

  # Model: C = num_components (0 = point embedding), D = embedding_dim.
  config.num_components = 1
  config.embedding_dim = 2
  config.features = (32, 64)
  config.kernel_size = 5
  config.downsample = "stride"  # or "pool" (the paper's max pooling; slower on CPU)
  config.hidden = 256
  config.log_sigma_min = -7.0
  config.log_sigma_init = -1.0
  config.match_a_init = 1.0
  config.match_b_init = 0.0

  # Loss: the VIB match loss on pairs of P x K class-balanced batches.
  config.classes_per_batch = 16
  config.samples_per_class = 8
  config.pairs = "sampled"  # or "all" (every pair of the batch)
  config.num_pairs = 512  # for "sampled"
  config.positive_fraction = 0.5  # for "sampled"
  config.num_samples = 8  # K samples per stochastic embedding (the paper: 8)
  config.beta = 1e-4  # KL weight (the paper: 1e-4)
  config.estimator = "log_mean"  # or "mean_log" (see sphereembed.losses.vib_match_loss)

  # Optimisation: AdamW with linear warm-up and cosine decay.
  config.num_train_steps = 1800
  config.learning_rate = 2e-3
  config.warmup_steps = 100
  config.weight_decay = 0.0
  config.seed = 0

  # Evaluation (see the module docstring for the protocol).
  config.eval_sets = ("unseen", "seen")
  config.eval_num_samples = 8
  config.pairs_per_image = 10
  config.knn_k = 5
  config.uncertainty_bins = 10
  config.eval_seed = 0

  # Bookkeeping.
  config.log_every_steps = 100
  config.checkpoint_every_steps = 500
  config.keep_checkpoints = 2
  config.eval_batch_size = 500
  config.tensorboard = True
  config.figures = True
  return config


_CHOICES = {
    "downsample": ("stride", "pool"),
    "pairs": ("sampled", "all"),
    "estimator": ESTIMATORS,
}
_POSITIVE = ("num_digits", "num_train", "num_test", "embedding_dim", "kernel_size",
             "classes_per_batch", "samples_per_class", "num_pairs", "num_samples",
             "num_train_steps", "learning_rate", "eval_num_samples", "pairs_per_image", "knn_k",
             "uncertainty_bins", "log_every_steps", "checkpoint_every_steps", "keep_checkpoints",
             "eval_batch_size", "match_a_init")
_NON_NEGATIVE = ("data_seed", "num_components", "hidden", "beta", "warmup_steps", "weight_decay",
                 "seed", "eval_seed")
_EVAL_SETS = ("unseen", "seen")


def validate_hib_config(config) -> ml_collections.ConfigDict:
  """Checks a config against :func:`default_hib_config`; returns a complete, locked copy.

  Args:
    config: a ``ConfigDict`` (or a dict) with a subset of the default fields;
      missing fields take their default.

  Returns:
    The validated, locked ``ConfigDict``.

  Raises:
    ValueError: on an unknown field (with the closest known names), a value
      of the wrong type, or an out-of-range value.
  """
  merged = config_lib.check_fields(config, default_hib_config, choices=_CHOICES,
                                  positive=_POSITIVE, non_negative=_NON_NEGATIVE)
  if not 1 <= merged.num_digits <= 6:
    raise ValueError(f"config.num_digits must lie in [1, 6], got {merged.num_digits}.")
  if not 0 <= merged.positive_fraction <= 1:
    raise ValueError(f"config.positive_fraction must lie in [0, 1], got "
                     f"{merged.positive_fraction}.")
  if not merged.eval_sets or any(s not in _EVAL_SETS for s in merged.eval_sets) or len(
      set(merged.eval_sets)) != len(merged.eval_sets):
    raise ValueError(f"config.eval_sets must be distinct names from {_EVAL_SETS}, got "
                     f"{merged.eval_sets}.")
  if merged.pairs_per_image % 2:
    raise ValueError(f"config.pairs_per_image must be even (half positive, half negative), got "
                     f"{merged.pairs_per_image}.")
  if not merged.log_sigma_init > merged.log_sigma_min:
    raise ValueError(f"config.log_sigma_init ({merged.log_sigma_init}) must exceed "
                     f"config.log_sigma_min ({merged.log_sigma_min}).")
  batch = merged.classes_per_batch * merged.samples_per_class
  if merged.pairs == "sampled" and merged.num_pairs > batch * (batch - 1) // 2:
    raise ValueError(f"config.num_pairs = {merged.num_pairs} exceeds the "
                     f"{batch * (batch - 1) // 2} pairs of a batch of {batch}.")
  if merged.samples_per_class < 2:
    raise ValueError("config.samples_per_class must be >= 2: a batch needs positive pairs.")
  merged.lock()
  return merged


# ----------------------------------------------------------------------------
# Train state and step.


class HIBTrainState(train_state.TrainState):
  """Flax's ``TrainState`` (step, params with ``a`` and ``b``, optimiser state) plus the RNG.

  Attributes:
    rng: a raw ``uint32[2]`` PRNG key, split once per step (pair choice and
      embedding samples), so that a step is a pure function of the state.
  """

  rng: jax.Array


def create_hib_state(model: HIBEmbedding, tx: optax.GradientTransformation, key: jax.Array,
                     sample_input: jax.Array) -> HIBTrainState:
  """Initialises the parameters and the optimiser state from one PRNG key.

  Args:
    model: the embedding network.
    tx: the optax optimiser.
    key: a raw PRNG key (``jax.random.PRNGKey``).
    sample_input: a batch with the input's shape and dtype (values unused).

  Returns:
    A :class:`HIBTrainState` at step 0.
  """
  params_key, state_key = jax.random.split(key)
  variables = model.init({"params": params_key}, sample_input, train=False)
  if set(variables) != {"params"}:
    raise ValueError(f"HIBTrainState carries params only, the model has {sorted(variables)}.")
  return HIBTrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                              rng=state_key).replace(step=jnp.zeros((), jnp.int32))


@dataclasses.dataclass(frozen=True)
class HIBLossSpec:
  """What :func:`train_step` minimises (static: hashed into the compiled step).

  Attributes:
    num_samples: K samples per stochastic embedding.
    beta: the KL weight.
    pairs: ``"sampled"`` or ``"all"``.
    num_pairs: pairs per batch for ``"sampled"``.
    positive_fraction: the share of positive pairs for ``"sampled"``.
    estimator: the data term of :func:`~sphereembed.losses.vib_match_loss`.
  """

  num_samples: int = 8
  beta: float = 1e-4
  pairs: str = "sampled"
  num_pairs: int = 512
  positive_fraction: float = 0.5
  estimator: str = "log_mean"

  def __post_init__(self):
    if self.pairs not in ("sampled", "all"):
      raise ValueError(f"pairs must be 'sampled' or 'all', got {self.pairs!r}.")
    if self.num_samples < 1 or self.num_pairs < 1 or self.beta < 0:
      raise ValueError("num_samples and num_pairs must be >= 1 and beta >= 0.")
    if not 0 <= self.positive_fraction <= 1:
      raise ValueError(f"positive_fraction must lie in [0, 1], got {self.positive_fraction}.")


@functools.partial(jax.jit, static_argnames="spec", donate_argnums=0)
def train_step(state: HIBTrainState, batch: dict[str, jax.Array], spec: HIBLossSpec):
  """One step of the VIB match loss on pairs of the batch.

  Args:
    state: the :class:`HIBTrainState`; donated (its buffers are reused).
    batch: ``{"image": (B, H, W, 1), "label": (B,) int}``.
    spec: the static :class:`HIBLossSpec`.

  Returns:
    ``(new_state, metrics)``; metrics a dict of scalars: ``loss``, ``bce``
    (the data term), ``kl`` (mean KL per pair, before ``beta``), ``a``,
    ``b``, ``sigma_mean``, ``match_positive`` / ``match_negative`` (mean match
    probability of the positive / negative pairs), ``grad_norm``.
  """
  rng, pair_key, sample_key = jax.random.split(state.rng, 3)
  labels = batch["label"]
  if spec.pairs == "all":
    pairs = pairs_lib.all_pairs(labels)
  else:
    pairs = pairs_lib.sample_pairs(pair_key, labels, spec.num_pairs,
                                   positive_fraction=spec.positive_fraction)

  def loss_fn(params):
    outputs = state.apply_fn({"params": params}, batch["image"], train=True)
    means, log_sigmas = outputs["means"], outputs.get("log_sigmas")
    side = lambda x, rows: None if x is None else x[rows]
    loss, stats = losses.vib_match_loss(
        means[pairs.first], side(log_sigmas, pairs.first),
        means[pairs.second], side(log_sigmas, pairs.second), pairs.is_same,
        outputs["match_a"], outputs["match_b"],
        key=sample_key if log_sigmas is not None else None, num_samples=spec.num_samples,
        beta=spec.beta, estimator=spec.estimator, return_stats=True)
    return loss, (stats, outputs)

  (loss, (stats, outputs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  new_state = state.apply_gradients(grads=grads).replace(rng=rng)
  same = pairs.is_same.astype(stats["match_probability"].dtype)
  probability = stats["match_probability"]
  metrics = {
      "loss": loss, "bce": stats["bce"], "kl": stats["kl"],
      "a": outputs["match_a"], "b": outputs["match_b"],
      "match_positive": jnp.sum(same * probability) / jnp.maximum(jnp.sum(same), 1),
      "match_negative": jnp.sum((1 - same) * probability) / jnp.maximum(jnp.sum(1 - same), 1),
      "grad_norm": optax.tree.norm(grads),
  }
  if "log_sigmas" in outputs:
    metrics["sigma_mean"] = jnp.mean(jnp.exp(outputs["log_sigmas"]))
  return new_state, metrics


# ----------------------------------------------------------------------------
# Embedding and evaluation.


@jax.jit
def _embed_step(state: HIBTrainState, images: jax.Array) -> dict[str, jax.Array]:
  return state.apply_fn({"params": state.params}, images, train=False)


def embed_images(state: HIBTrainState, images, batch_size: int = 500) -> dict[str, np.ndarray]:
  """The model's outputs for an array of images, in fixed-size chunks.

  The last chunk is padded so that one compiled shape serves every chunk.

  Args:
    state: the train state.
    images: ``(N, H, W, 1)`` images.
    batch_size: images per forward pass.

  Returns:
    ``{"means": (N, C', D), "log_sigmas": (N, C, D) (stochastic models only),
    "match_a": (), "match_b": ()}`` as NumPy arrays.

  Raises:
    ValueError: for an empty image array or a non-positive batch size.
  """
  if len(images) == 0:
    raise ValueError("embed_images needs at least one image.")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
  chunks = []
  for start in range(0, len(images), batch_size):
    chunk = np.asarray(images[start:start + batch_size])
    pad = batch_size - len(chunk)
    if pad:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
    out = jax.device_get(_embed_step(state, chunk))
    chunks.append({k: (v if np.ndim(v) == 0 else v[:batch_size - pad]) for k, v in out.items()})
  result = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0] if np.ndim(chunks[0][k])}
  result["match_a"] = np.asarray(chunks[0]["match_a"])
  result["match_b"] = np.asarray(chunks[0]["match_b"])
  return result


def _samples(key, outputs: dict[str, np.ndarray], num_samples: int) -> np.ndarray:
  """``(N, K, D)`` samples of every embedding (``K = 1`` for points)."""
  log_sigmas = outputs.get("log_sigmas")
  if log_sigmas is None:
    return outputs["means"]
  return np.asarray(losses.sample_mixture(key, jnp.asarray(outputs["means"]),
                                          jnp.asarray(log_sigmas), num_samples))


def verification_pairs(labels, pairs_per_image: int, rng: np.random.Generator):
  """``pairs_per_image`` partners per image: half of its class, half of other classes.

  Args:
    labels: ``(N,)`` int class ids; every class needs at least two images.
    pairs_per_image: an even number ``2m``: ``m`` positive partners (drawn
      uniformly among the other images of the class, with replacement) and
      ``m`` negative partners (uniformly among the images of other classes).
    rng: the NumPy generator the partners come from.

  Returns:
    ``(partners, same)``: ``(N, pairs_per_image)`` int64 partner rows (the
    positives first) and the matching bool same-class flags.

  Raises:
    ValueError: an odd or non-positive ``pairs_per_image``, a class with a
      single image, or a single class.
  """
  labels = np.asarray(labels)
  if pairs_per_image < 2 or pairs_per_image % 2:
    raise ValueError(f"pairs_per_image must be a positive even number, got {pairs_per_image}.")
  classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
  if len(classes) < 2:
    raise ValueError("verification pairs need at least two classes.")
  if counts.min() < 2:
    raise ValueError(f"class {classes[np.argmin(counts)]} has a single image: it has no positive "
                     "pair. Use a larger test set.")
  half, n = pairs_per_image // 2, len(labels)
  order = np.argsort(inverse, kind="stable")
  starts = np.r_[0, np.cumsum(counts)[:-1]]
  rank = np.empty(n, np.int64)
  rank[order] = np.arange(n) - starts[inverse[order]]  # position of each image in its class
  # A uniform other member of the class: draw among n_c - 1 slots and skip the image's own.
  slot = np.floor(rng.random((n, half)) * (counts[inverse] - 1)[:, None]).astype(np.int64)
  slot += slot >= rank[:, None]
  positives = order[starts[inverse][:, None] + slot]
  negatives = rng.integers(0, n, (n, half))
  clash = labels[negatives] == labels[:, None]
  while clash.any():  # rejection: few rounds, the share of same-class draws is about 1 / classes
    negatives[clash] = rng.integers(0, n, int(clash.sum()))
    clash = labels[negatives] == labels[:, None]
  partners = np.concatenate([positives, negatives], axis=1)
  same = np.concatenate([np.ones((n, half), bool), np.zeros((n, half), bool)], axis=1)
  return partners, same


def _pair_scores(first: np.ndarray, second: np.ndarray, a, b, chunk: int = 20_000) -> np.ndarray:
  """Match probabilities of rows of samples ``(P, K, D)``, in chunks (memory ``chunk K^2 D``)."""
  scores = [np.asarray(losses.match_probability(first[s:s + chunk], second[s:s + chunk], a, b))
            for s in range(0, len(first), chunk)]
  return np.concatenate(scores)


def _self_mismatch(samples: np.ndarray, a, b, chunk: int = 20_000) -> np.ndarray:
  return np.concatenate([np.asarray(losses.self_mismatch(samples[s:s + chunk], a, b))
                         for s in range(0, len(samples), chunk)])


def _per_image_ap(scores: np.ndarray, same: np.ndarray) -> np.ndarray:
  """AP of each row's pairs (every row holds positives and negatives by construction)."""
  return np.array([evaluation.average_precision(s, y) for s, y in zip(scores, same)])


def _correlations(eta: np.ndarray, performance: np.ndarray, bins: int) -> dict[str, float]:
  """Spearman and Kendall of ``eta`` against per-image performance, and the binned Spearman.

  NaN where undefined (a constant ``eta``, as for point embeddings, or a
  constant performance).
  """
  out = {"spearman": math.nan, "kendall": math.nan, "binned_spearman": math.nan}
  try:
    out.update(evaluation.uncertainty_correlation(eta, performance))
    binned = evaluation.binned_performance(eta, performance, min(bins, len(eta)))
    filled = binned.count > 0
    out["binned_spearman"] = evaluation.spearman_rho(binned.uncertainty[filled],
                                                     binned.performance[filled])
  except ValueError:
    pass  # undefined correlation: keep NaN
  return out


def _evaluate_set(state, clean, corrupted, config, key,
                  stream: int) -> tuple[dict[str, float], dict[str, Any]]:
  """Metrics of one test set (clean and corrupted) and the per-image arrays for figures.

  ``stream`` picks the set's own random stream of verification pairs.
  """
  outputs = {"clean": embed_images(state, clean.images, config.eval_batch_size),
             "corrupted": embed_images(state, corrupted.images, config.eval_batch_size)}
  a, b = outputs["clean"]["match_a"], outputs["clean"]["match_b"]
  # The same noise for the clean and the corrupted image of an index.
  samples = {name: _samples(key, out, config.eval_num_samples) for name, out in outputs.items()}
  centres = {name: out["means"].mean(axis=1) for name, out in outputs.items()}
  labels = clean.labels
  partners, same = verification_pairs(
      labels, config.pairs_per_image,
      np.random.default_rng([config.eval_seed, stream]))
  rows = np.repeat(np.arange(len(labels)), config.pairs_per_image)
  metrics: dict[str, float] = {}
  arrays: dict[str, Any] = {"labels": labels, "centres": centres, "samples": samples}
  knn_k = min(config.knn_k, len(labels) - 1)
  for name in ("clean", "corrupted"):
    scores = _pair_scores(samples[name][rows], samples["clean"][partners.ravel()], a, b)
    scores = scores.reshape(partners.shape)
    ap_per_image = _per_image_ap(scores, same)
    metrics[f"{name}/verification_ap"] = evaluation.verification_ap(scores.ravel(), same.ravel())
    if name == "clean":
      retrieval = evaluation.retrieval_metrics_per_query(
          centres["clean"], labels, ks=(1,), knn_k=knn_k)
    else:
      retrieval = evaluation.retrieval_metrics_per_query(
          centres["corrupted"], labels, centres["clean"], labels, ks=(1,), knn_k=knn_k,
          exclude_self=True)
    knn_correct = retrieval["knn_correct"]
    metrics[f"{name}/knn_accuracy"] = float(np.mean(knn_correct))
    metrics[f"{name}/precision_at_1"] = float(np.nanmean(retrieval["precision_at_1"]))
    metrics[f"{name}/map_at_r"] = float(np.nanmean(retrieval["map_at_r"]))
    eta = _self_mismatch(samples[name], a, b)
    metrics[f"{name}/eta_mean"] = float(np.mean(eta))
    if "log_sigmas" in outputs[name]:
      metrics[f"{name}/sigma_mean"] = float(np.mean(np.exp(outputs[name]["log_sigmas"])))
    for performance_name, performance in (("ap", ap_per_image), ("knn", knn_correct)):
      for stat, value in _correlations(eta, performance, config.uncertainty_bins).items():
        metrics[f"{name}/eta_{performance_name}_{stat}"] = value
    arrays[f"{name}_eta"] = eta
    arrays[f"{name}_ap"] = ap_per_image
    arrays[f"{name}_knn"] = knn_correct
  return metrics, arrays


def evaluate(state: HIBTrainState, data: ndigit.NDigitMnist, config) -> tuple[dict, dict]:
  """The protocol of the module docstring on every set of ``config.eval_sets``.

  Args:
    state: the trained state.
    data: the N-digit MNIST sets.
    config: a validated config (:func:`validate_hib_config`).

  Returns:
    ``(metrics, arrays)``: a flat dict ``{"<set>/<clean|corrupted>/<metric>": float}``
    with the headline keys of the first set (``verification_ap_clean``,
    ``knn_accuracy_corrupted``, ``eta_ap_spearman_clean``, ...), and, per set,
    the per-image arrays the figures use.
  """
  metrics: dict[str, Any] = {}
  arrays: dict[str, Any] = {}
  key = jax.random.PRNGKey(config.eval_seed)
  for name in config.eval_sets:
    set_metrics, arrays[name] = _evaluate_set(
        state, data.test_set(name), data.test_set(f"{name}_corrupted"), config, key,
        _EVAL_SETS.index(name))
    metrics.update({f"{name}/{k}": v for k, v in set_metrics.items()})
  headline = config.eval_sets[0]
  metrics["headline_set"] = headline
  for condition in ("clean", "corrupted"):
    for metric in ("verification_ap", "knn_accuracy", "eta_ap_spearman", "eta_knn_spearman",
                   "eta_ap_binned_spearman", "eta_knn_binned_spearman", "eta_mean"):
      metrics[f"{metric}_{condition}"] = metrics[f"{headline}/{condition}/{metric}"]
  return metrics, arrays


# ----------------------------------------------------------------------------
# Figures.


def _projection(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """``(centre, axes)``: the identity for 2-D, the two principal axes otherwise."""
  centre = points.mean(axis=0)
  if points.shape[1] == 2:
    return np.zeros(2), np.eye(2)
  _, _, vt = np.linalg.svd(points - centre, full_matrices=False)
  return centre, vt[:2].T


def _plot_embeddings(arrays: dict[str, Any], path: str, title: str, seed: int = 0) -> None:
  """Clean and corrupted means coloured by class, with the sample clouds of a few images."""
  labels = arrays["labels"]
  centre, axes = _projection(arrays["centres"]["clean"])
  project = lambda x: (x - centre) @ axes
  rng = np.random.default_rng(seed)
  shown = rng.permutation(len(labels))[:3000]
  classes = np.unique(labels)
  cmap = matplotlib.colormaps["hsv"]
  colour_of = {c: cmap(i / len(classes)) for i, c in enumerate(rng.permutation(classes))}
  colours = np.array([colour_of[c] for c in labels[shown]])
  fig = Figure(figsize=(13, 6.2))
  panels = fig.subplots(1, 2, sharex=True, sharey=True)
  for ax, name in zip(panels, ("clean", "corrupted")):
    points = project(arrays["centres"][name][shown])
    ax.scatter(points[:, 0], points[:, 1], c=colours, s=3, alpha=0.5, linewidths=0)
    samples = arrays["samples"][name]
    eta = arrays[f"{name}_eta"]
    # Clouds of the 6 most uncertain images and 6 random ones.
    chosen = np.r_[np.argsort(-eta, kind="stable")[:6], rng.permutation(len(labels))[:6]]
    for rank, index in enumerate(chosen):
      cloud = project(samples[index])
      ax.scatter(cloud[:, 0], cloud[:, 1], s=10, marker="x",
                 color="black" if rank < 6 else "0.45", linewidths=0.8)
    ax.set_title(f"{name} test images: means by class; x: samples of the 6 most uncertain "
                 "(black) and 6 random (grey)", fontsize=8)
    ax.set_aspect("equal", adjustable="box")
    ax.grid(alpha=0.2)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def _plot_uncertain_images(images: dict[str, np.ndarray], arrays: dict[str, Any], path: str,
                           count: int = 8) -> None:
  """The ``count`` most and least certain images among the clean and corrupted test images."""
  eta = np.concatenate([arrays["clean_eta"], arrays["corrupted_eta"]])
  stack = np.concatenate([images["clean"], images["corrupted"]])
  labels = np.concatenate([arrays["labels"], arrays["labels"]])
  order = np.argsort(eta, kind="stable")
  count = min(count, len(order))
  rows = (("least uncertain", order[:count]), ("most uncertain", order[::-1][:count]))
  fig = Figure(figsize=(1.9 * count, 3.2))
  axes = fig.subplots(2, count, squeeze=False)
  width = stack.shape[2] // stack.shape[1]
  for row, (name, indices) in enumerate(rows):
    for col, index in enumerate(indices):
      ax = axes[row, col]
      ax.imshow(stack[index, :, :, 0], cmap="gray", vmin=0, vmax=255)
      ax.set_xticks([])
      ax.set_yticks([])
      kind = "corr." if index >= len(arrays["labels"]) else "clean"
      ax.set_title(f"{labels[index]:0{width}d} {kind}\neta={eta[index]:.3f}", fontsize=7)
    axes[row, 0].set_ylabel(name, fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def _plot_uncertainty_bins(arrays: dict[str, Any], bins: int, path: str, title: str) -> bool:
  """Mean per-image AP and kNN accuracy per ``eta`` bin; ``False`` when ``eta`` is constant."""
  fig = Figure(figsize=(6, 4.5))
  ax = fig.add_subplot()
  drawn = False
  for name, style in (("clean", "-"), ("corrupted", "--")):
    eta = arrays[f"{name}_eta"]
    if np.all(eta == eta[0]):
      continue
    for performance, marker in (("ap", "o"), ("knn", "s")):
      binned = evaluation.binned_performance(eta, arrays[f"{name}_{performance}"],
                                             min(bins, len(eta)))
      filled = binned.count > 0
      ax.plot(binned.uncertainty[filled], binned.performance[filled], style, marker=marker,
              label=f"{name}: {'AP' if performance == 'ap' else 'kNN accuracy'}")
      drawn = True
  if not drawn:
    return False
  ax.set_xlabel("self-mismatch eta (bin mean)")
  ax.set_ylabel("mean performance in the bin")
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  return True


# ----------------------------------------------------------------------------
# The experiment.


def _check_resumable(config, workdir: str) -> None:
  """Refuses to resume a run whose training-relevant config differs."""
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


def _model_name(num_components: int) -> str:
  return "point" if num_components == 0 else f"MoG-{num_components}"


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  """Trains a HIB model on N-digit MNIST as the config says and evaluates it.

  Args:
    config: an ``ml_collections.ConfigDict`` (see :func:`default_hib_config`).
    workdir: where checkpoints, ``metrics.jsonl``, TensorBoard events,
      ``config.json``, ``metrics.json`` and the figures go. A workdir holding
      checkpoints of the same config is resumed.

  Returns:
    The final metrics (also written to ``workdir/metrics.json``).

  Raises:
    ValueError: a bad config, or a workdir holding a run of another config.
    FloatingPointError: the training loss became NaN or infinite.
  """
  config = validate_hib_config(config)
  os.makedirs(workdir, exist_ok=True)
  _check_resumable(config, workdir)
  data = ndigit.load_ndigit_mnist(
      config.num_digits, seed=config.data_seed, num_train=config.num_train,
      num_test=config.num_test, data_dir=config.data_dir or None,
      cache_dir=config.cache_dir or None)
  train = data.train
  sampler = ClassBalancedSampler(train.labels, config.classes_per_batch, config.samples_per_class,
                                 seed=config.seed)
  num_train_steps = config.num_train_steps
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, config.learning_rate, min(config.warmup_steps, num_train_steps // 2),
      max(num_train_steps, 1))
  tx = optax.adamw(schedule, weight_decay=config.weight_decay)
  model = HIBEmbedding(
      config.embedding_dim, config.num_components, features=tuple(config.features),
      kernel_size=config.kernel_size, downsample=config.downsample, hidden=config.hidden,
      log_sigma_min=config.log_sigma_min, log_sigma_init=config.log_sigma_init,
      match_a_init=config.match_a_init, match_b_init=config.match_b_init)
  spec = HIBLossSpec(num_samples=config.num_samples, beta=config.beta, pairs=config.pairs,
                     num_pairs=config.num_pairs, positive_fraction=config.positive_fraction,
                     estimator=config.estimator)
  state = create_hib_state(model, tx, jax.random.PRNGKey(config.seed), train.images[:1])
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), config.keep_checkpoints)
  state = checkpointer.restore_or_keep(state)
  start_step = int(state.step)
  writer = metric_writers.create_default_writer(workdir, tensorboard=config.tensorboard)
  name = _model_name(config.num_components)
  if start_step == 0:
    parameter_overview.log_parameter_overview(state.params)
    num_params = int(sum(x.size for x in jax.tree_util.tree_leaves(state.params)))
    writer.write_hparams({**config.to_dict(), "num_params": num_params,
                          "data_source": data.source, "num_train_examples": len(train)})
  logging.info("HIB %s, N=%d, D=%d: %d train images of %d seen classes from %s; %d steps, "
               "starting at %d", name, config.num_digits, config.embedding_dim, len(train),
               len(data.seen_classes), data.source, num_train_steps, start_step)

  progress = metric_writers.ReportProgress(num_train_steps, config.log_every_steps, writer)
  batches = sampler.iterate(start_step=start_step)
  pending: list[dict[str, jax.Array]] = []
  train_start = time.monotonic()
  try:
    progress(start_step)
    for step in range(start_step + 1, num_train_steps + 1):
      indices = next(batches)
      batch = {"image": train.images[indices], "label": train.labels[indices]}
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
      if step % config.checkpoint_every_steps == 0 or last:
        checkpointer.save(step, state)
      writer.flush()
    train_seconds = time.monotonic() - train_start
    eval_start = time.monotonic()
    result, arrays = evaluate(state, data, config)
    eval_seconds = time.monotonic() - eval_start
    writer.write_scalars(num_train_steps, {k: v for k, v in result.items()
                                           if isinstance(v, float) and math.isfinite(v)})
  finally:
    # Also on errors and interrupts: flush the logs, let orbax finish its threads.
    writer.close()
    checkpointer.close()
  records = metric_writers.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  train_losses = [r["train_loss"] for r in records if "train_loss" in r]
  final = {
      **result,
      "model": name,
      "num_components": config.num_components,
      "num_digits": config.num_digits,
      "embedding_dim": config.embedding_dim,
      "seed": config.seed,
      "match_a": float(jax.nn.softplus(state.params["match_a_raw"])),
      "match_b": float(state.params["match_b"]),
      "final_train_loss": train_losses[-1] if train_losses else math.nan,
      "num_train_steps": num_train_steps,
      "resumed_from_step": start_step,
      "train_seconds_this_run": train_seconds,
      "eval_seconds": eval_seconds,
      "data_source": data.source,
  }
  with open(os.path.join(workdir, "metrics.json"), "w", encoding="utf-8") as f:
    json.dump(final, f, indent=1)
  if config.figures:
    headline = config.eval_sets[0]
    title = (f"HIB {name}, N={config.num_digits}, D={config.embedding_dim}, {headline} classes: "
             f"AP clean {final['verification_ap_clean']:.3f} / corrupted "
             f"{final['verification_ap_corrupted']:.3f}, kNN clean "
             f"{final['knn_accuracy_clean']:.3f} / corrupted {final['knn_accuracy_corrupted']:.3f}")
    _plot_embeddings(arrays[headline], os.path.join(workdir, "embeddings_hib.png"), title)
    _plot_uncertain_images(
        {"clean": data.test_set(headline).images,
         "corrupted": data.test_set(f"{headline}_corrupted").images},
        arrays[headline], os.path.join(workdir, "uncertain_images.png"))
    _plot_uncertainty_bins(arrays[headline], config.uncertainty_bins,
                           os.path.join(workdir, "uncertainty_bins.png"),
                           f"HIB {name}: performance per self-mismatch bin ({headline} classes)")
    plotting.plot_training_curves(
        records, os.path.join(workdir, "training_curves.png"),
        keys=("train_loss", "train_bce", "train_kl", "train_a", "train_b", "train_sigma_mean"))
  logging.info("Final: %s", json.dumps({k: v for k, v in final.items() if k != "data_source"}))
  return final
