"""Tiny models and reference computations shared by the Laplace tests (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from sphereembed import geometry

LABELS = jnp.array([0, 0, 1, 1, 2, 2, 0])


def mlp_params(key, in_dim=3, hidden=4, dim=3, dtype=jnp.float64):
  k1, k2, k3, k4 = jax.random.split(key, 4)
  return {
      "body": {"kernel": jax.random.normal(k1, (in_dim, hidden), dtype),
               "bias": 0.1 * jax.random.normal(k2, (hidden,), dtype)},
      "head": {"kernel": jax.random.normal(k3, (hidden, dim), dtype),
               "bias": 0.1 * jax.random.normal(k4, (dim,), dtype)},
  }


def mlp_embed(params, x):
  h = jnp.tanh(x @ params["body"]["kernel"] + params["body"]["bias"])
  return geometry.l2_normalize(h @ params["head"]["kernel"] + params["head"]["bias"])


def linear_embed(params, x):
  return x @ params["w"]


def surrogate_loss(embeddings, active, labels):
  """sum_{pos i<j} 0.5 d^2 - sum_{active neg i<j} 0.5 d^2, from explicit differences."""
  labels = np.asarray(labels)
  upper = np.triu(np.ones((len(labels), len(labels)), bool), k=1)
  weights = (upper & (labels[:, None] == labels[None])).astype(float)
  weights -= (upper & np.asarray(active)).astype(float)
  differences = embeddings[:, None, :] - embeddings[None, :, :]
  return 0.5 * jnp.sum(weights * jnp.sum(jnp.square(differences), axis=-1))


def active_negatives(embeddings, labels, margin):
  z = np.asarray(embeddings)
  distances = np.linalg.norm(z[:, None] - z[None], axis=-1)
  labels = np.asarray(labels)
  return (labels[:, None] != labels[None]) & (distances < margin)


def reference_loss_hessian(embeddings, labels, margin, repulsive):
  """(B, D, B, D) Hessian of the surrogate by jax.hessian, per repulsive option."""
  labels_np = np.asarray(labels)
  active = active_negatives(embeddings, labels_np, margin)
  if repulsive == "positives":
    active = np.zeros_like(active)
  hessian = jax.jit(jax.hessian(lambda z: surrogate_loss(z, active, labels_np)))(embeddings)
  if repulsive == "separate":
    n = embeddings.shape[0]
    keep = np.eye(n, dtype=bool)[:, None, :, None]
    hessian = jnp.where(keep, hessian, 0.0)
  return hessian


def reference_ggn(embed, params, x, labels, margin, repulsive):
  """Dense GGN from a jacfwd Jacobian and the jax.hessian loss Hessian, ravel order."""
  flat, unravel = ravel_pytree(params)
  jacobian = jax.jit(jax.jacfwd(lambda f: embed(unravel(f), x)))(flat)  # (B, D, P)
  hessian = reference_loss_hessian(embed(params, x), labels, margin, repulsive)
  return jnp.einsum("adp,adbe,beq->pq", jacobian, hessian, jacobian)
