"""Confidence losses: negative log-likelihoods of an embedding around its class centroid.

A confidence head predicts, per sample, how tightly its embedding should sit
around its class centroid ``c_y``:

* :func:`vmf_nll`: a von Mises-Fisher density on the sphere with mean
  direction ``c_y`` and concentration ``kappa(x)``;
* :func:`gaussian_nll`: a Gaussian ``N(c_y, sigma(x)^2 I)`` (isotropic) or
  ``N(c_y, diag sigma(x)^2)`` in the embedding space.

Which gradients flow is part of the definition (see each function): the
centroids are constants (they move by their own EMA, outside the loss); the
concentration or scale always receives its gradient; the embeddings receive
theirs unless ``embedding_gradient=False``, which makes the loss train the
confidence head only (the embedding is then shaped by the metric loss alone).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from sphereembed.distributions import vmf_log_normalizer
from sphereembed.losses import _common, checks

__all__ = ["gaussian_nll", "vmf_nll"]


def _check_centroid_inputs(embeddings, labels, centroids, weights):
  """Shared static checks; returns the converted arrays."""
  embeddings = checks.check_embeddings(embeddings)
  batch_size, dim = embeddings.shape
  centroids = checks.check_embeddings(centroids, "centroids")
  if centroids.shape[1] != dim or centroids.shape[0] == 0:
    raise ValueError(f"centroids must have shape (K >= 1, {dim}) to match the embeddings, "
                     f"got {centroids.shape}.")
  if centroids.dtype != embeddings.dtype:
    raise ValueError(f"centroids must have the dtype of the embeddings ({embeddings.dtype}), "
                     f"got {centroids.dtype}.")
  labels = checks.check_labels(labels, batch_size, allow_multi_hot=False)
  weights = checks.check_weights(weights, batch_size, embeddings.dtype)
  checks.validate_if_concrete(embeddings, labels, weights, num_classes=centroids.shape[0])
  if checks.is_concrete(centroids):
    checks.validate_embeddings(centroids, "centroids")
  return embeddings, labels, centroids, weights


def _per_sample(values, name, batch_size, dtype, extra_shapes=()):
  """A per-sample parameter of shape ``(B,)`` (or one of ``extra_shapes``), as ``dtype``."""
  values = jnp.asarray(values)
  if values.shape != (batch_size,) and values.shape not in extra_shapes:
    allowed = " or ".join(str(s) for s in ((batch_size,), *extra_shapes))
    raise ValueError(f"{name} must have shape {allowed}, got {values.shape}.")
  if not jnp.issubdtype(values.dtype, jnp.floating):
    raise ValueError(f"{name} must have a floating dtype, got {values.dtype}.")
  if values.dtype != dtype:
    raise ValueError(f"{name} must have the dtype of the embeddings ({dtype}), got {values.dtype}.")
  if checks.is_concrete(values):
    checks.validate_embeddings(values, name)
  return values



def vmf_nll(
    embeddings: jax.Array,
    kappa: jax.Array,
    labels: jax.Array,
    centroids: jax.Array,
    *,
    embedding_gradient: bool = True,
    weights: jax.Array | None = None,
) -> jax.Array:
  """Negative log-likelihood of a von Mises-Fisher distribution at the class centroid.

  Per sample: ``-log vMF(x; c_y, kappa) = -log C_d(kappa) - kappa * c_y . x``
  with ``log C_d`` from :func:`sphereembed.distributions.vmf_log_normalizer`;
  the loss is the (weighted) mean over the batch. Its minimum over ``kappa``
  for a fixed cosine ``r = c_y . x`` is at ``A_d(kappa) = r``: samples near
  their centroid learn a large concentration, outliers a small one.

  Gradients: ``d/dkappa = A_d(kappa) - c_y . x`` (exact, through the
  log-normaliser's custom derivative); the centroids are constants
  (``stop_gradient``); the embeddings get ``-kappa * c_y`` unless
  ``embedding_gradient=False``. Note that ``kappa`` multiplies the pull on
  the embedding, so confident samples are pulled harder.

  Args:
    embeddings: ``(B, d)`` unit vectors.
    kappa: ``(B,)`` non-negative concentrations, the embeddings' dtype
      (``kappa = 0`` is the uniform distribution on the sphere).
    labels: ``(B,)`` int class ids in ``[0, K)``.
    centroids: ``(K, d)`` unit class centroids (the mean directions).
    embedding_gradient: ``False`` stops the gradient into the embeddings, so
      only ``kappa`` is trained by this loss.
    weights: optional ``(B,)`` non-negative per-sample weights.

  Returns:
    The scalar loss.

  Raises:
    ValueError: on bad shapes or dtypes and, outside ``jit``, NaN inputs,
      negative ``kappa`` or labels outside ``[0, K)``.

  References:
    Hasnat et al., "von Mises-Fisher Mixture Model-based Deep learning:
    Application to Face Verification", 2017; Scott, Gallagher & Mozer,
    "von Mises-Fisher Loss: An Exploration of Embedding Geometries for
    Supervised Learning", ICCV 2021.

  Example:
    >>> import jax.numpy as jnp
    >>> from sphereembed.losses import vmf_nll
    >>> c = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    >>> x = jnp.array([[1.0, 0.0, 0.0]])
    >>> # d = 3: log C_3(k) = log(k / (4 pi sinh k)); at k = 2: -(log C_3(2) + 2).
    >>> print(f"{vmf_nll(x, jnp.array([2.0]), jnp.array([0]), c):.4f}")
    1.1262
  """
  embeddings, labels, centroids, weights = _check_centroid_inputs(
      embeddings, labels, centroids, weights)
  batch_size, dim = embeddings.shape
  kappa = _per_sample(kappa, "kappa", batch_size, embeddings.dtype)
  if checks.is_concrete(kappa) and bool(np.any(checks.concrete_value(kappa) < 0)):
    raise ValueError("kappa must be non-negative.")
  if not embedding_gradient:
    embeddings = jax.lax.stop_gradient(embeddings)
  mean_directions = jax.lax.stop_gradient(centroids)[labels]
  cosine = jnp.einsum("bd,bd->b", embeddings, mean_directions)
  per_sample = -vmf_log_normalizer(kappa, dim) - kappa * cosine
  return _common.weighted_mean(per_sample, jnp.ones((batch_size,), bool), weights)


def gaussian_nll(
    embeddings: jax.Array,
    log_sigma: jax.Array,
    labels: jax.Array,
    centroids: jax.Array,
    *,
    embedding_gradient: bool = True,
    weights: jax.Array | None = None,
) -> jax.Array:
  """Negative log-likelihood of a Gaussian centred on the class centroid.

  Per sample, with ``s = exp(log_sigma)``:
  ``sum_j [(x_j - c_yj)^2 / (2 s_j^2) + log s_j] + (D / 2) log(2 pi)``, for an
  isotropic ``log_sigma`` of shape ``(B,)`` (the same ``s`` on every axis) or
  a diagonal one of shape ``(B, D)``; the loss is the (weighted) mean over the
  batch. For a fixed residual the optimum is ``s^2 = ||x - c_y||^2 / D``
  (isotropic) or ``s_j^2 = (x_j - c_yj)^2`` (diagonal). The scale is taken in
  log space so that it is positive without a constraint; a residual of 0
  sends ``log_sigma`` towards -inf, so heads should bound it. The loss
  clamps it to the supported range ``[-20, 20]`` (``LOG_SIGMA_MIN``,
  ``LOG_SIGMA_MAX`` of ``sphereembed.losses._common``; ``sigma`` from 2.1e-9
  to 4.9e8), the counterpart of the ``kappa_max`` bound of the vMF heads:
  beyond it the value is the bound's and the gradient in ``log_sigma`` is 0,
  so the loss stays finite (also at a residual of 0).

  Gradients flow to ``log_sigma`` and, unless ``embedding_gradient=False``,
  to the embeddings; the centroids are constants (``stop_gradient``).

  Args:
    embeddings: ``(B, D)`` floating array.
    log_sigma: ``(B,)`` or ``(B, D)`` log standard deviations, the
      embeddings' dtype.
    labels: ``(B,)`` int class ids in ``[0, K)``.
    centroids: ``(K, D)`` class centroids (the means).
    embedding_gradient: ``False`` stops the gradient into the embeddings.
    weights: optional ``(B,)`` non-negative per-sample weights.

  Returns:
    The scalar loss.

  Raises:
    ValueError: on bad shapes or dtypes and, outside ``jit``, NaN inputs,
      labels outside ``[0, K)`` or embeddings and centroids whose norm, over
      the smallest clamped ``sigma``, exceeds
      :func:`sphereembed.losses.checks.max_norm`.

  References:
    Nix & Weigend, "Estimating the mean and variance of the target probability
    distribution", ICNN 1994; Kendall & Gal, "What Uncertainties Do We Need in
    Bayesian Deep Learning for Computer Vision?", NeurIPS 2017.

  Example:
    >>> import jax.numpy as jnp
    >>> from sphereembed.losses import gaussian_nll
    >>> c = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> x = jnp.array([[0.0, 1.0]])
    >>> # ||x - c_0||^2 = 2, s = 1: 2 / 2 + 0 + log(2 pi) = 2.8379.
    >>> print(f"{gaussian_nll(x, jnp.array([0.0]), jnp.array([0]), c):.4f}")
    2.8379
  """
  embeddings, labels, centroids, weights = _check_centroid_inputs(
      embeddings, labels, centroids, weights)
  batch_size, dim = embeddings.shape
  log_sigma = _per_sample(log_sigma, "log_sigma", batch_size, embeddings.dtype,
                          extra_shapes=((batch_size, dim),))
  log_sigma = _common.clamp_log_sigma(log_sigma)
  host_log_sigma = checks.concrete_value(log_sigma)
  if host_log_sigma is not None and host_log_sigma.size:
    # The residuals are divided by sigma >= exp(LOG_SIGMA_MIN) before squaring.
    scale = float(np.exp(max(0.0, -float(np.min(host_log_sigma)))))
    for name, array in (("embeddings", embeddings), ("centroids", centroids)):
      if checks.is_concrete(array):
        checks.validate_magnitude(array, name, batch_size=batch_size, scale=scale)
  if not embedding_gradient:
    embeddings = jax.lax.stop_gradient(embeddings)
  residual = embeddings - jax.lax.stop_gradient(centroids)[labels]
  if log_sigma.ndim == 1:
    per_sample = (0.5 * jnp.sum(jnp.square(residual), axis=1) * jnp.exp(-2 * log_sigma)
                  + dim * log_sigma)
  else:
    per_sample = jnp.sum(0.5 * jnp.square(residual) * jnp.exp(-2 * log_sigma) + log_sigma, axis=1)
  per_sample = per_sample + 0.5 * dim * math.log(2 * math.pi)
  return _common.weighted_mean(per_sample, jnp.ones((batch_size,), bool), weights)
