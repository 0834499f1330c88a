"""Jitted train and embedding steps: pure functions of the explicit train state."""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sphereembed import centroids as centroids_lib
from sphereembed import geometry, losses
from sphereembed.training.state import TrainState

LOSSES: tuple[str, ...] = (
    "ncl", "triplet_batch_hard", "triplet_semi_hard", "triplet_batch_all", "contrastive",
    "softmax")

CONFIDENCE_LOSSES: tuple[str, ...] = ("", "vmf", "gaussian")

_METRIC_LOSSES: dict[str, Callable] = {
    "triplet_batch_hard": losses.triplet_batch_hard,
    "triplet_semi_hard": losses.triplet_semi_hard,
    "triplet_batch_all": losses.triplet_batch_all,
    "contrastive": losses.contrastive,
}


@dataclasses.dataclass(frozen=True)
class LossSpec:
  """What the train step minimises, and how the centroids move.

  Attributes:
    name: one of :data:`LOSSES`.
    metric: the distance of the metric losses and of NCL.
    margin: the margin of the triplet and contrastive losses.
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
  """

  name: str = "ncl"
  metric: geometry.Metric = "great_circle"
  margin: float = 0.2
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
    if not (0 <= self.alpha_base <= 1 and 0 < self.alpha_decay <= 1 and self.alpha_every > 0):
      raise ValueError(
          "the EMA schedule needs 0 <= alpha_base <= 1, 0 < alpha_decay <= 1, alpha_every > 0; "
          f"got {self.alpha_base}, {self.alpha_decay}, {self.alpha_every}.")

  @property
  def needs_logits(self) -> bool:
    return self.name == "softmax" or self.classifier_weight > 0


def _loss_terms(spec: LossSpec, outputs, labels, centroids, alpha, weights):
  embeddings = outputs["embedding"]
  terms = {}
  if spec.name == "ncl":
    gate = spec.negative_weight * centroids_lib.negative_weight(alpha, spec.negative_gate)
    terms["ncl"] = losses.ncl(embeddings, labels, centroids.astype(embeddings.dtype),
                              metric=spec.metric, negative_weight=gate.astype(embeddings.dtype),
                              weights=weights)
  elif spec.name in _METRIC_LOSSES:
    terms[spec.name] = _METRIC_LOSSES[spec.name](
        embeddings, labels, margin=spec.margin, metric=spec.metric, weights=weights)
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
    terms = _loss_terms(spec, outputs, labels, state.centroids, alpha, batch.get("weight"))
    return sum(terms.values()), (terms, outputs, batch_stats)

  (loss, (terms, outputs, batch_stats)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  new_state = state.apply_gradients(grads=grads).replace(batch_stats=batch_stats)
  embeddings = outputs["embedding"]
  # Every loss keeps centroids, so that all are evaluated by nearest centroid.
  new_centroids = centroids_lib.update_centroids(
      state.centroids, jax.lax.stop_gradient(embeddings).astype(state.centroids.dtype), labels,
      alpha)
  new_state = new_state.replace(centroids=new_centroids, rng=rng)
  metrics = {"loss": loss, "alpha": alpha, "grad_norm": optax.tree.norm(grads),
             "embedding_norm": jnp.mean(jnp.linalg.norm(embeddings, axis=-1))}
  metrics.update({f"loss_{name}": value for name, value in terms.items()})
  if "kappa" in outputs:
    metrics["kappa_mean"] = jnp.mean(outputs["kappa"])
  if "log_sigma" in outputs:
    metrics["sigma_mean"] = jnp.mean(jnp.exp(outputs["log_sigma"]))
  return new_state, metrics


@jax.jit
def embed_step(state: TrainState, images: jax.Array) -> dict[str, jax.Array]:
  """The model's outputs (``"embedding"``, maybe ``"logits"``) in eval mode."""
  return state.apply_fn(state.variables(), images, train=False)


def embed_dataset(state: TrainState, images, batch_size: int = 1000) -> dict[str, jax.Array]:
  """:func:`embed_step` over a whole array of images in fixed-size chunks.

  The last chunk is padded to ``batch_size`` so that a single compiled shape
  serves every chunk.
  """
  outputs = []
  num = len(images)
  for start in range(0, num, batch_size):
    chunk = np.asarray(images[start:start + batch_size])
    pad = batch_size - len(chunk)
    if pad:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
    out = embed_step(state, chunk)
    outputs.append({key: np.asarray(value[:batch_size - pad]) for key, value in out.items()})
  return {key: np.concatenate([o[key] for o in outputs]) for key in outputs[0]}


def nearest_centroid(embeddings, centroids, metric: geometry.Metric = "great_circle"):
  """Index of the nearest centroid of every embedding (ties: the lowest index)."""
  distances = geometry.pairwise_distances(jnp.asarray(embeddings), jnp.asarray(centroids),
                                          metric=metric)
  return jnp.argmin(distances, axis=-1)
