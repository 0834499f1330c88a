"""Pieces shared by the loss families only (private): weighted means and mining statistics.

The input checks are in :mod:`sphereembed.losses.checks` and the label masks
in :mod:`sphereembed.losses.masks`, public modules that other packages use too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["LOG_SIGMA_MAX", "LOG_SIGMA_MIN", "active_stats", "clamp_log_sigma", "weighted_mean"]

# The supported range of log standard deviations (sigma from 2.1e-9 to 4.9e8),
# the Gaussian counterpart of the kappa_max bound of the vMF confidence heads:
# exp(+-2 LOG_SIGMA) ~ 2.4e17 keeps every term finite in float32.
LOG_SIGMA_MIN = -20.0
LOG_SIGMA_MAX = 20.0


def clamp_log_sigma(log_sigma: jax.Array) -> jax.Array:
  """``log_sigma`` clipped to ``[LOG_SIGMA_MIN, LOG_SIGMA_MAX]`` = [-20, 20].

  Inside the range the value and the gradient are unchanged; beyond it the
  value is the bound's and the gradient in ``log_sigma`` is 0. NaN stays NaN.
  """
  return jnp.clip(log_sigma, LOG_SIGMA_MIN, LOG_SIGMA_MAX)


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
