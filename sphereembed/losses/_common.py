"""Pieces shared by the loss families only (private): weighted means and mining statistics.

The input checks are in :mod:`sphereembed.losses.checks` and the label masks
in :mod:`sphereembed.losses.masks`, public modules that other packages use too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["active_stats", "weighted_mean"]


def weighted_mean(values: jax.Array, mask: jax.Array, weights: jax.Array | None = None) -> jax.Array:
  """``sum(w * values) / sum(w)`` over ``mask``; 0, with a zero gradient, if empty.

  ``weights`` broadcast against ``values`` (``None`` means all ones).
  """
  w = mask.astype(values.dtype)
  if weights is not None:
    w = w * weights
  total = jnp.sum(w)
  safe_total = jnp.where(total > 0, total, 1.0)
  return jnp.where(total > 0, jnp.sum(jnp.where(mask, values, 0.0) * w) / safe_total, 0.0)


def active_stats(num_active, num_valid, dtype) -> dict[str, jax.Array]:
  """The ``return_stats`` dict: ``fraction_active``, ``num_active``, ``num_valid``."""
  num_active = jnp.asarray(num_active, dtype)
  num_valid = jnp.asarray(num_valid, dtype)
  fraction = jnp.where(num_valid > 0, num_active / jnp.where(num_valid > 0, num_valid, 1), 0)
  return {"fraction_active": fraction, "num_active": num_active, "num_valid": num_valid}
