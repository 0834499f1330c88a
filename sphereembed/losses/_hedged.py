"""Hedged Instance Embeddings (HIB): stochastic embeddings, match probability, VIB loss.

HIB (Oh et al., ICLR 2019) represents the embedding of an input ``x`` as a
distribution ``p(z|x)`` rather than a point, and verification as the
probability that two inputs match:

* :func:`sample_mixture` draws ``K`` reparameterised samples of a mixture of
  ``C`` Gaussians with diagonal covariance (MoG-C; ``C = 1`` is one Gaussian);
* :func:`match_probability` is ``p(m|x, x') ~ 1/K^2 sum_ij sigmoid(-a ||z_i - z'_j|| + b)``
  over all sample pairs (the paper's Monte Carlo estimate);
* :func:`soft_contrastive_loss` is the binary cross-entropy of that
  probability for labelled pairs (the paper's soft contrastive loss);
* :func:`vib_match_loss` adds ``beta * (KL(p(z|x) || N(0, I)) + KL(p(z'|x') || N(0, I)))``
  (the variational information bottleneck objective), with the KL in closed form
  for one Gaussian (:func:`kl_to_standard_normal`) and by an unbiased Monte
  Carlo estimate for a mixture (:func:`kl_mixture_to_standard_normal`);
* :func:`self_mismatch` is the uncertainty ``eta(x) = 1 - p(m|x, x)``.

Representation of an embedding, shared by every function here:

* a stochastic embedding of one input is ``means`` ``(C, D)``,
  ``log_sigmas`` ``(C, D)`` (log standard deviations) and optional mixture
  weights ``(C,)`` (uniform when ``None``, as in the paper); a batch adds a
  leading axis ``B``;
* its samples are an array ``(K, D)`` (or ``(B, K, D)``);
* the deterministic point embedding (the ``C = 0`` / ``sigma = 0`` case of
  the issue) is ``log_sigmas=None``: its "samples" are the mean itself, one
  sample (``K = 1``), so :func:`match_probability` reduces to
  ``sigmoid(-a ||z - z'|| + b)`` and :func:`self_mismatch` to
  ``1 - sigmoid(b)``. A point mass has no finite KL to ``N(0, I)``; its KL
  term is left out (0), which makes :func:`vib_match_loss` the soft
  contrastive loss the paper trains its point baseline with.

Deviations from the paper (each also noted where it applies):

* Data term: the paper's VIB objective writes it as an expected
  log-likelihood ``E_{z,z'}[-log p(m = y|z, z')]``; the default here
  (``estimator="log_mean"``) is the binary cross-entropy of the Monte Carlo
  match probability, ``-log(1/K^2 sum_ij p(m = y|z_i, z'_j))``, i.e. the soft
  contrastive loss on stochastic embeddings (the issue's choice).
  ``estimator="mean_log"`` gives the Monte Carlo estimate of the
  expected-log form. By Jensen's inequality ``log_mean <= mean_log``; for
  points they agree.
* Mixture sampling: the paper does not say how the components of the ``K``
  samples are drawn (independently, one per draw, is the textbook way); here
  they come from systematic sampling (one uniform offset), so every
  component gets ``floor(K w_c)`` or ``ceil(K w_c)`` samples (exactly
  ``K / C`` each for uniform weights and ``C | K``). The
  sample mean stays unbiased and its variance is lower. Gradients reach the
  means and log-sigmas (reparameterisation), not the mixture weights.
* The mixture KL is estimated from the samples drawn for the match
  probability (the paper does not say whether it reuses them); the estimate
  is unbiased either way.

Log standard deviations are clamped to the supported range ``[-20, 20]``
(``sigma`` from 2.1e-9 to 4.9e8; ``LOG_SIGMA_MIN``/``LOG_SIGMA_MAX`` of
``sphereembed.losses._common``), the Gaussian counterpart of the ``kappa_max``
bound of the vMF confidence heads, wherever they are used (sampling, the KL
terms): beyond it the value is the bound's and the gradient in the
log-sigma is 0, so samples and KL terms stay finite. Means and samples of
norm above :func:`sphereembed.losses.checks.max_norm` are refused outside
``jit``.

Everything is a pure function of arrays: jit/vmap/grad-compatible, with
static shape checks on every call and value checks (NaN, infinite, invalid
targets) when called outside ``jit``. The computation after the checks is a
jitted kernel: an eager call compiles one program per input signature rather
than one per primitive (much faster the first time), and inside a caller's
``jit`` the kernel is simply inlined.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from sphereembed import geometry
from sphereembed.losses import _common, checks

__all__ = [
    "kl_mixture_to_standard_normal",
    "kl_to_standard_normal",
    "match_probability",
    "sample_mixture",
    "self_mismatch",
    "soft_contrastive_loss",
    "vib_match_loss",
]

Estimator = Literal["log_mean", "mean_log"]
ESTIMATORS: tuple[str, ...] = ("log_mean", "mean_log")


# ----------------------------------------------------------------------------
# Input checks.


def _check_floating(x, name: str, ndims: tuple[int, ...]) -> jax.Array:
  """Static checks: a floating array whose rank is one of ``ndims``."""
  x = jnp.asarray(x)
  if x.ndim not in ndims:
    ranks = " or ".join(str(n) for n in ndims)
    raise ValueError(f"{name} must have rank {ranks}, got shape {x.shape}.")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"{name} must have a floating dtype, got {x.dtype}.")
  return x


def _validate_finite(x, name: str, magnitude: bool = False) -> None:
  """Value check outside ``jit``: NaN or infinite entries raise ``ValueError``.

  ``magnitude``: also refuse rows (the last axis) of norm above
  :func:`sphereembed.losses.checks.max_norm` (for a batch of the leading size).
  """
  if x is not None and checks.is_concrete(x):
    checks.validate_embeddings(x, name)
    if magnitude:
      checks.validate_magnitude(x, name, batch_size=max(x.shape[:-1], default=1))


def _check_sample_pair(z1, z2):
  """Samples ``(K1, D)`` and ``(K2, D)``, or ``(B, K1, D)`` and ``(B, K2, D)``."""
  z1 = _check_floating(z1, "z1_samples", (2, 3))
  z2 = _check_floating(z2, "z2_samples", (2, 3))
  if z1.ndim != z2.ndim or z1.shape[:-2] != z2.shape[:-2] or z1.shape[-1] != z2.shape[-1]:
    raise ValueError(
        f"z1_samples and z2_samples must have shapes (K1, D) and (K2, D), or (B, K1, D) and "
        f"(B, K2, D), got {z1.shape} and {z2.shape}.")
  if z1.dtype != z2.dtype:
    raise ValueError(f"z1_samples and z2_samples must have the same dtype, got {z1.dtype} "
                     f"and {z2.dtype}.")
  if z1.shape[-2] == 0 or z2.shape[-2] == 0:
    raise ValueError(f"at least one sample is needed, got shapes {z1.shape} and {z2.shape}.")
  _validate_finite(z1, "z1_samples", magnitude=True)
  _validate_finite(z2, "z2_samples", magnitude=True)
  return z1, z2


def _check_ab(a, b, dtype):
  # Python numbers are checked always (also under jit), arrays when concrete.
  checks.validate_scalar(a, "a")
  checks.validate_scalar(b, "b")
  a = checks.check_scalar(a, "a", dtype)
  b = checks.check_scalar(b, "b", dtype)
  _validate_finite(a, "a")
  _validate_finite(b, "b")
  return a, b


def _check_targets(is_same, num_pairs: int, dtype) -> jax.Array:
  """``(B,)`` bool, or integer/float 0/1; returned as ``dtype``."""
  is_same = jnp.asarray(is_same)
  if is_same.shape != (num_pairs,):
    raise ValueError(f"is_same must have shape ({num_pairs},), got {is_same.shape}.")
  if not (is_same.dtype == jnp.bool_ or jnp.issubdtype(is_same.dtype, jnp.integer)
          or jnp.issubdtype(is_same.dtype, jnp.floating)):
    raise ValueError(f"is_same must be bool, integer or float 0/1, got dtype {is_same.dtype}.")
  if checks.is_concrete(is_same):
    values = checks.concrete_value(is_same)
    if not np.all((values == 0) | (values == 1)):
      raise ValueError("is_same must contain only 0 and 1 (or False/True).")
  return is_same.astype(dtype)


def _check_mixture(means, log_sigmas, mixture_weights, suffix: str, ndims=(2, 3)):
  """``means`` ``(..., C, D)``; ``log_sigmas`` the same shape or ``None``; weights ``(..., C)``."""
  means = _check_floating(means, f"means{suffix}", ndims)
  if means.shape[-2] == 0:
    raise ValueError(f"means{suffix} need at least one component, got shape {means.shape}.")
  if log_sigmas is not None:
    log_sigmas = jnp.asarray(log_sigmas)
    if log_sigmas.shape != means.shape:
      raise ValueError(f"log_sigmas{suffix} must have the shape of the means {means.shape}, "
                       f"got {log_sigmas.shape}.")
    if log_sigmas.dtype != means.dtype:
      raise ValueError(f"log_sigmas{suffix} must have the dtype of the means ({means.dtype}), "
                       f"got {log_sigmas.dtype}.")
  if mixture_weights is not None:
    mixture_weights = jnp.asarray(mixture_weights)
    components = means.shape[-2]
    if mixture_weights.shape not in ((components,), means.shape[:-1]):
      raise ValueError(f"mixture_weights{suffix} must have shape ({components},) or "
                       f"{means.shape[:-1]}, got {mixture_weights.shape}.")
    if not jnp.issubdtype(mixture_weights.dtype, jnp.floating):
      raise ValueError(f"mixture_weights{suffix} must be floating, got {mixture_weights.dtype}.")
    mixture_weights = mixture_weights.astype(means.dtype)
    if checks.is_concrete(mixture_weights):
      values = checks.concrete_value(mixture_weights).astype(np.float64)
      if (not np.all(np.isfinite(values)) or np.any(values < 0)
          or not np.allclose(values.sum(-1), 1.0, rtol=0, atol=1e-5)):
        raise ValueError(f"mixture_weights{suffix} must be non-negative and sum to 1 over the "
                         f"last axis.")
  _validate_finite(means, f"means{suffix}", magnitude=True)
  _validate_finite(log_sigmas, f"log_sigmas{suffix}")
  return means, log_sigmas, mixture_weights


def _check_num_samples(num_samples) -> int:
  if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)):
    raise ValueError(f"num_samples must be an integer, got {num_samples!r}.")
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
  return int(num_samples)


# ----------------------------------------------------------------------------
# Match probability and self-mismatch.


def _safe_norm(squared: jax.Array) -> jax.Array:
  """``sqrt`` of a squared norm with the zero subgradient at 0; NaN stays NaN.

  The double ``where`` keeps the derivative of ``sqrt`` (infinite at 0) out of
  the backward pass; at 0 the selected branch is ``squared`` itself, whose
  derivative ``2 (z - z')`` vanishes there. Unlike ``geometry.safe_sqrt``,
  NaN inputs are not mapped to 0, so a NaN embedding under ``jit`` shows in
  the loss.
  """
  positive = squared > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1)), squared)


def _pair_logits(z1: jax.Array, z2: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
  """``b - a ||z1_i - z2_j||`` for all sample pairs: ``(..., K1, K2)``.

  Explicit differences rather than the Gram form: with K of order 10 the
  memory is small, and the distance of coinciding samples is exactly 0 (with
  the zero subgradient, never NaN).
  """
  differences = z1[..., :, None, :] - z2[..., None, :, :]
  # Squared after an exact power-of-two scaling: no overflow of the squares.
  scale = geometry._power_of_two_scale(  # pylint: disable=protected-access
      jnp.max(jnp.abs(jax.lax.stop_gradient(differences)), axis=-1, initial=0))
  distances = _safe_norm(jnp.sum(jnp.square(differences / scale[..., None]), axis=-1)) * scale
  return b - a * distances


def match_probability(z1_samples: jax.Array, z2_samples: jax.Array, a, b) -> jax.Array:
  """Monte Carlo match probability of two stochastic embeddings (HIB).

  ``p(m|x, x') = 1/(K1 K2) sum_{i, j} sigmoid(-a ||z_i - z'_j|| + b)`` over
  all pairs of the samples ``z_i ~ p(z|x)`` and ``z'_j ~ p(z'|x')``,
  computed by broadcasting (no Python loop). ``a`` and ``b`` are used as
  given; the model keeps ``a > 0`` (e.g. a softplus of its parameter), so that
  nearby embeddings match. A point embedding is one sample (``K = 1``, see the
  module docstring).

  The distance has the zero subgradient where two samples coincide, so
  gradients are finite everywhere (never NaN).

  Args:
    z1_samples: ``(K1, D)`` samples of ``p(z|x)``, or ``(B, K1, D)`` for a
      batch of pairs.
    z2_samples: ``(K2, D)`` or ``(B, K2, D)``, the same dtype (``K2`` may
      differ from ``K1``; HIB uses ``K1 = K2 = K``).
    a: scalar scale of the distance.
    b: scalar offset (the match logit at distance 0).

  Returns:
    A scalar for ``(K, D)`` inputs, ``(B,)`` for ``(B, K, D)`` inputs.

  Raises:
    ValueError: on bad shapes or dtypes, non-scalar ``a`` or ``b`` and, when
      called outside ``jit``, NaN or infinite inputs.

  References:
    Oh, Murphy, Pan, Roth, Schroff & Gallagher, "Modeling Uncertainty with
    Hedged Instance Embedding", ICLR 2019 (the match probability and its
    Monte Carlo estimate).

  Example:
    >>> import jax.numpy as jnp
    >>> from sphereembed.losses import match_probability
    >>> z1 = jnp.array([[0.0, 0.0], [2.0, 0.0]])
    >>> z2 = jnp.array([[0.0, 0.0]])
    >>> # distances 0 and 2: (sigmoid(1) + sigmoid(-1)) / 2 = 0.5.
    >>> print(f"{match_probability(z1, z2, 1.0, 1.0):.4f}")
    0.5000
  """
  z1, z2 = _check_sample_pair(z1_samples, z2_samples)
  a, b = _check_ab(a, b, z1.dtype)
  return _match_kernel(z1, z2, a, b)


@jax.jit
def _match_kernel(z1, z2, a, b):
  return jnp.mean(jax.nn.sigmoid(_pair_logits(z1, z2, a, b)), axis=(-2, -1))


def self_mismatch(z_samples: jax.Array, a, b) -> jax.Array:
  """HIB's uncertainty: the self-mismatch probability ``eta(x) = 1 - p(m|x, x)``.

  Estimated over all ``K x K`` pairs of the samples of ``x``, ``i = j``
  included (each such pair has distance 0 and contributes
  ``1 - sigmoid(b)``): ``1/K^2 sum_{i, j} sigmoid(a ||z_i - z_j|| - b)``,
  computed as a mean of ``1 - sigmoid(t) = sigmoid(-t)`` so that a small
  ``eta`` keeps its relative precision. A point embedding (``K = 1``) gives
  ``1 - sigmoid(b)``, the floor of ``eta`` for any ``a >= 0``; larger values
  mean a more spread-out, more uncertain embedding.

  Args:
    z_samples: ``(K, D)`` samples of ``p(z|x)``, or ``(B, K, D)``.
    a: scalar scale of the distance (as in :func:`match_probability`).
    b: scalar offset.

  Returns:
    A scalar for ``(K, D)`` samples, ``(B,)`` for ``(B, K, D)``.

  Raises:
    ValueError: on bad shapes or dtypes and, outside ``jit``, NaN inputs.

  References:
    Oh et al., "Modeling Uncertainty with Hedged Instance Embedding",
    ICLR 2019 (the self-mismatch uncertainty measure).

  Example:
    >>> import jax.numpy as jnp
    >>> from sphereembed.losses import self_mismatch
    >>> point = jnp.array([[0.3, -1.0]])  # K = 1
    >>> print(f"{self_mismatch(point, 1.0, 2.0):.4f}")  # 1 - sigmoid(2)
    0.1192
  """
  z = _check_floating(z_samples, "z_samples", (2, 3))
  if z.shape[-2] == 0:
    raise ValueError(f"at least one sample is needed, got shape {z.shape}.")
  _validate_finite(z, "z_samples")
  a, b = _check_ab(a, b, z.dtype)
  return _mismatch_kernel(z, a, b)


@jax.jit
def _mismatch_kernel(z, a, b):
  return jnp.mean(jax.nn.sigmoid(-_pair_logits(z, z, a, b)), axis=(-2, -1))


# ----------------------------------------------------------------------------
# KL divergences and sampling.


def kl_to_standard_normal(mean: jax.Array, log_sigma: jax.Array) -> jax.Array:
  """Closed-form ``KL(N(mean, diag sigma^2) || N(0, I))``, summed over the last axis.

  ``0.5 * sum_d (sigma_d^2 + mean_d^2 - 1 - 2 log sigma_d)``, with
  ``sigma^2 - 1`` computed as ``expm1(2 log sigma)`` (no cancellation in
  ``sigma^2 - 1`` for ``sigma`` near 1).

  Args:
    mean: ``(..., D)`` floating array.
    log_sigma: log standard deviations, the shape and dtype of ``mean``.

  Returns:
    An array of shape ``mean.shape[:-1]`` (a scalar for ``(D,)``).

  Raises:
    ValueError: on mismatched shapes, non-floating dtypes or rank 0 and,
      outside ``jit``, NaN or infinite inputs.

  References:
    Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014,
    appendix B.

  Example:
    >>> import jax.numpy as jnp
    >>> from sphereembed.losses import kl_to_standard_normal
    >>> # 0.5 * (1 + 1 - 1 - 0) for the mean (1, 0) and unit sigma.
    >>> print(f"{kl_to_standard_normal(jnp.array([1.0, 0.0]), jnp.zeros(2)):.4f}")
    0.5000
  """
  mean = jnp.asarray(mean)
  if mean.ndim == 0:
    raise ValueError("mean must have at least one axis (..., D).")
  mean = _check_floating(mean, "mean", (mean.ndim,))
  log_sigma = jnp.asarray(log_sigma)
  if log_sigma.shape != mean.shape or log_sigma.dtype != mean.dtype:
    raise ValueError(f"log_sigma must have the shape and dtype of mean {mean.shape} {mean.dtype}, "
                     f"got {log_sigma.shape} {log_sigma.dtype}.")
  _validate_finite(mean, "mean", magnitude=True)
  _validate_finite(log_sigma, "log_sigma")
  return _kl_gaussian(mean, log_sigma)


@jax.jit
def _kl_gaussian(mean, log_sigma):
  twice = 2.0 * _common.clamp_log_sigma(log_sigma)
  return 0.5 * jnp.sum(jnp.expm1(twice) - twice + jnp.square(mean), axis=-1)


def _log_mixture_weights(mixture_weights, means):
  """``log w`` of shape ``means.shape[:-1]`` (uniform ``-log C`` when ``None``)."""
  components = means.shape[-2]
  if mixture_weights is None:
    return jnp.full(means.shape[:-1], -math.log(components), means.dtype)
  # log 0 = -inf drops a component from the logsumexp; its gradient is not needed.
  weights = jax.lax.stop_gradient(jnp.broadcast_to(mixture_weights, means.shape[:-1]))
  positive = weights > 0
  return jnp.where(positive, jnp.log(jnp.where(positive, weights, 1)), -jnp.inf)


@jax.jit
def _kl_mixture(means, log_sigmas, samples, mixture_weights):
  """``1/K sum_k [log p(z_k) - log N(z_k; 0, I)]`` for ``samples`` ``(..., K, D)``."""
  log_sigmas = _common.clamp_log_sigma(log_sigmas)
  # log N(z; mu, s) - log N(z; 0, I) per component and sample; the
  # (D/2) log(2 pi) terms cancel.
  inverse_sigmas = jnp.exp(-log_sigmas)[..., None, :, :]
  scaled = (samples[..., :, None, :] - means[..., None, :, :]) * inverse_sigmas
  log_ratio = jnp.sum(0.5 * jnp.square(samples)[..., :, None, :] - 0.5 * jnp.square(scaled)
                      - log_sigmas[..., None, :, :], axis=-1)  # (..., K, C)
  log_w = _log_mixture_weights(mixture_weights, means)[..., None, :]
  return jnp.mean(jax.nn.logsumexp(log_ratio + log_w, axis=-1), axis=-1)


def kl_mixture_to_standard_normal(
    means: jax.Array,
    log_sigmas: jax.Array,
    samples: jax.Array,
    mixture_weights: jax.Array | None = None,
) -> jax.Array:
  """Unbiased Monte Carlo estimate of ``KL(p || N(0, I))`` for a Gaussian mixture ``p``.

  ``p(z) = sum_c w_c N(z; mu_c, diag sigma_c^2)`` has no closed-form KL to
  the standard normal; with samples ``z_k ~ p`` the estimate is
  ``1/K sum_k [log p(z_k) - log N(z_k; 0, I)]``, ``log p`` by a logsumexp
  over the components. It is unbiased when the samples come from ``p``
  (e.g. :func:`sample_mixture`, whose systematic component assignment keeps
  it unbiased), and, with reparameterised samples, so is its gradient with
  respect to the means and log-sigmas. Single estimates can be negative.

  Args:
    means: ``(C, D)`` component means, or ``(B, C, D)``.
    log_sigmas: log standard deviations, the shape and dtype of ``means``.
    samples: ``(K, D)`` or ``(B, K, D)`` samples of the mixture.
    mixture_weights: ``(C,)`` or ``(B, C)`` weights summing to 1; ``None``
      for uniform weights (the paper's choice).

  Returns:
    A scalar, or ``(B,)`` for batched inputs.

  Raises:
    ValueError: on bad shapes or dtypes and, outside ``jit``, NaN inputs,
      invalid weights, or means and samples whose norm times the largest
      ``1 / sigma`` exceeds :func:`sphereembed.losses.checks.max_norm` (the
      standardised distances would overflow).

  References:
    Oh et al., "Modeling Uncertainty with Hedged Instance Embedding",
    ICLR 2019 (MoG embeddings, KL by sampling); Hershey & Olsen, "Approximating the Kullback
    Leibler Divergence Between Gaussian Mixture Models", ICASSP 2007.

  Example:
    >>> import jax.numpy as jnp
    >>> from sphereembed.losses import kl_mixture_to_standard_normal
    >>> means, log_sigmas = jnp.array([[-1.0], [1.0]]), jnp.zeros((2, 1))  # 1-D MoG-2
    >>> # One sample at 0: log p(0) - log N(0; 0, 1) = log N(0; 1, 1) - log N(0; 0, 1).
    >>> z = jnp.array([[0.0]])
    >>> print(f"{kl_mixture_to_standard_normal(means, log_sigmas, z):.4f}")
    -0.5000
  """
  means, log_sigmas, mixture_weights = _check_mixture(means, log_sigmas, mixture_weights, "")
  if log_sigmas is None:
    raise ValueError("log_sigmas must be given: a point mass has no finite KL to N(0, I).")
  samples = _check_floating(samples, "samples", (means.ndim,))
  if samples.shape[:-2] != means.shape[:-2] or samples.shape[-1] != means.shape[-1]:
    raise ValueError(f"samples must have shape {(*means.shape[:-2], 'K', means.shape[-1])}, "
                     f"got {samples.shape}.")
  if samples.dtype != means.dtype:
    raise ValueError(f"samples must have the dtype of the means ({means.dtype}), "
                     f"got {samples.dtype}.")
  _validate_finite(samples, "samples", magnitude=True)
  host_log_sigmas = checks.concrete_value(log_sigmas)
  if host_log_sigmas is not None and host_log_sigmas.size:
    # (z - mu) / sigma is squared: the supported norm shrinks by the largest 1 / sigma.
    smallest = float(np.min(np.clip(host_log_sigmas, _common.LOG_SIGMA_MIN,
                                    _common.LOG_SIGMA_MAX)))
    scale = math.exp(max(0.0, -smallest))
    for name, array in (("means", means), ("samples", samples)):
      if checks.is_concrete(array):
        checks.validate_magnitude(array, name, batch_size=max(array.shape[:-1], default=1),
                                  scale=2.0 * scale)
  return _kl_mixture(means, log_sigmas, samples, mixture_weights)


def _components(key, batch_shape, num_samples, mixture_weights, components, dtype):
  """Systematic component assignment: ``(*batch_shape, K)`` int indices."""
  offset = jax.random.uniform(key, (*batch_shape, 1), dtype)
  positions = (jnp.arange(num_samples, dtype=dtype) + offset) / num_samples  # in [0, 1)
  if mixture_weights is None:
    # floor(u C): exactly K / C samples per component when C divides K.
    index = jnp.floor(positions * components).astype(jnp.int32)
  else:
    weights = jax.lax.stop_gradient(jnp.broadcast_to(mixture_weights, (*batch_shape, components)))
    edges = jnp.cumsum(weights, axis=-1)[..., :-1]
    index = jnp.sum(positions[..., :, None] >= edges[..., None, :], axis=-1).astype(jnp.int32)
  return jnp.clip(index, 0, components - 1)


def sample_mixture(
    key: jax.Array,
    means: jax.Array,
    log_sigmas: jax.Array | None,
    num_samples: int,
    mixture_weights: jax.Array | None = None,
) -> jax.Array:
  """``K`` reparameterised samples of a mixture of Gaussians with diagonal covariance.

  ``z_k = mu_{c_k} + exp(log_sigma_{c_k}) * eps_k`` with ``eps_k ~ N(0, I)``.
  The components ``c_k`` come from systematic sampling: one uniform offset
  ``u`` per set of samples and ``c_k = F^{-1}((k + u) / K)`` with ``F`` the
  cumulative mixture weights, so each component gets ``floor(K w_c)`` or
  ``ceil(K w_c)`` samples (with uniform weights and ``C | K``, exactly
  ``K / C``; samples come grouped by component). The sample mean of any
  function is unbiased, with a lower variance than independent component
  draws. Gradients flow to ``means`` and ``log_sigmas``, not to the weights
  (the paper uses uniform weights). ``C = 1`` is a single Gaussian.

  Point embeddings (``sigma = 0``): ``log_sigmas=None`` returns the means
  (``C`` must be 1) repeated ``num_samples`` times; use ``num_samples=1``.

  Args:
    key: a JAX PRNG key (one per set of samples is derived from it).
    means: ``(C, D)`` or ``(B, C, D)`` component means.
    log_sigmas: log standard deviations, the shape and dtype of ``means``, or
      ``None`` for a point embedding.
    num_samples: ``K``, a positive integer (static).
    mixture_weights: ``(C,)`` or ``(B, C)`` weights summing to 1; ``None``
      for uniform weights.

  Returns:
    Samples of shape ``(K, D)`` or ``(B, K, D)``, the dtype of ``means``.

  Raises:
    ValueError: on bad shapes, dtypes or ``num_samples``, ``log_sigmas=None``
      with ``C > 1``, and, outside ``jit``, NaN inputs or invalid weights.

  References:
    Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014 (the
    reparameterisation); Oh et al., ICLR 2019 (MoG embeddings);
    Kitagawa, "Monte Carlo Filter and Smoother for Non-Gaussian Nonlinear
    State Space Models", JCGS 1996 (systematic sampling).

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from sphereembed.losses import sample_mixture
    >>> means = jnp.array([[-5.0, 0.0], [5.0, 0.0]])  # C = 2
    >>> z = sample_mixture(jax.random.key(0), means, jnp.full((2, 2), -3.0), 8)
    >>> print(z.shape, [int(v) for v in jnp.round(z[:, 0])])
    (8, 2) [-5, -5, -5, -5, 5, 5, 5, 5]
  """
  means, log_sigmas, mixture_weights = _check_mixture(means, log_sigmas, mixture_weights, "")
  num_samples = _check_num_samples(num_samples)
  *batch_shape, components, dim = means.shape
  if log_sigmas is None:
    if components != 1:
      raise ValueError(f"a point embedding (log_sigmas=None) has one component, got {components}.")
    return jnp.broadcast_to(means, (*batch_shape, num_samples, dim))
  return _sample_kernel(key, means, log_sigmas, mixture_weights, num_samples)


@functools.partial(jax.jit, static_argnames=("num_samples",))
def _sample_kernel(key, means, log_sigmas, mixture_weights, num_samples):
  *batch_shape, components, dim = means.shape
  key_components, key_noise = jax.random.split(key)
  index = _components(key_components, tuple(batch_shape), num_samples, mixture_weights,
                      components, means.dtype)
  chosen_means = jnp.take_along_axis(means, index[..., None], axis=-2)
  chosen_log_sigmas = jnp.take_along_axis(_common.clamp_log_sigma(log_sigmas), index[..., None],
                                          axis=-2)
  noise = jax.random.normal(key_noise, (*batch_shape, num_samples, dim), means.dtype)
  return chosen_means + jnp.exp(chosen_log_sigmas) * noise


# ----------------------------------------------------------------------------
# Losses.


def _pair_bce(z1, z2, targets, a, b, estimator):
  """Per-pair binary cross-entropy of the match probability, from logits: ``(B,)``."""
  logits = _pair_logits(z1, z2, a, b)
  # log p(m = y | z, z') per sample pair; 1 - sigmoid(t) = sigmoid(-t).
  log_match = jax.nn.log_sigmoid(logits)
  log_mismatch = jax.nn.log_sigmoid(-logits)
  if estimator == "log_mean":
    # log of the mean of sigmoids, stably: logsumexp(log_sigmoid) - log(K1 K2).
    log_count = math.log(logits.shape[-2] * logits.shape[-1])
    log_p = jax.nn.logsumexp(log_match, axis=(-2, -1)) - log_count
    log_q = jax.nn.logsumexp(log_mismatch, axis=(-2, -1)) - log_count
  else:
    log_p = jnp.mean(log_match, axis=(-2, -1))
    log_q = jnp.mean(log_mismatch, axis=(-2, -1))
  return -(targets * log_p + (1 - targets) * log_q)


def _check_estimator(estimator):
  if estimator not in ESTIMATORS:
    raise ValueError(f"Unknown estimator {estimator!r}; expected one of {ESTIMATORS}.")


def soft_contrastive_loss(
    z1_samples: jax.Array,
    z2_samples: jax.Array,
    is_same: jax.Array,
    a,
    b,
    *,
    weights: jax.Array | None = None,
    estimator: Estimator = "log_mean",
) -> jax.Array:
  """Binary cross-entropy of the HIB match probability for labelled pairs (soft contrastive loss).

  Per pair ``n`` with target ``y_n``: ``-[y log p + (1 - y) log(1 - p)]`` with
  ``p = p(m|x_n, x'_n)`` of :func:`match_probability`, averaged (weighted)
  over the pairs. ``log p`` is computed as
  ``logsumexp_ij(log_sigmoid(t_ij)) - log(K1 K2)`` with the logits
  ``t_ij = -a ||z_i - z'_j|| + b``, and ``log(1 - p)`` likewise from
  ``log_sigmoid(-t_ij)``, so the loss is finite for any finite logits, even
  where ``p`` rounds to 0 or 1. For point embeddings (``K = 1``) this is the
  soft contrastive loss of the paper's point baseline.

  Args:
    z1_samples: ``(B, K1, D)`` samples of the first member of each pair.
    z2_samples: ``(B, K2, D)`` samples of the second member, the same dtype.
    is_same: ``(B,)`` bool, or integer/float 0/1: whether the pair matches.
    a: scalar scale of the distance.
    b: scalar offset.
    weights: optional ``(B,)`` non-negative per-pair weights.
    estimator: ``"log_mean"`` (default): the cross-entropy of the averaged
      match probability; ``"mean_log"``: the average over
      sample pairs of the per-sample cross-entropy, the Monte Carlo estimate
      of the VIB objective's ``E[-log p(m = y|z, z')]`` (never smaller, by Jensen).

  Returns:
    The scalar loss (0 for ``B = 0``).

  Raises:
    ValueError: on bad shapes or dtypes, an unknown estimator and, outside
      ``jit``, NaN inputs, targets other than 0/1 or negative weights.

  References:
    Oh et al., "Modeling Uncertainty with Hedged Instance Embedding",
    ICLR 2019 (the soft contrastive loss, the Monte Carlo match
    probability and the VIB objective).

  Example:
    >>> import jax.numpy as jnp
    >>> from sphereembed.losses import soft_contrastive_loss
    >>> z1 = jnp.zeros((2, 1, 2))  # two pairs of point embeddings
    >>> z2 = jnp.array([[[0.0, 0.0]], [[3.0, 4.0]]])
    >>> # match logits 2 (same: -log sigmoid(2)) and -3 (different: -log sigmoid(3)).
    >>> loss = soft_contrastive_loss(z1, z2, jnp.array([True, False]), 1.0, 2.0)
    >>> print(f"{loss:.4f}")
    0.0878
  """
  z1 = _check_floating(z1_samples, "z1_samples", (3,))
  z2 = _check_floating(z2_samples, "z2_samples", (3,))
  z1, z2 = _check_sample_pair(z1, z2)
  _check_estimator(estimator)
  num_pairs, dtype = z1.shape[0], z1.dtype
  targets = _check_targets(is_same, num_pairs, dtype)
  weights = checks.check_weights(weights, num_pairs, dtype)
  if weights is not None and checks.is_concrete(weights):
    checks.validate_weights(weights)
  a, b = _check_ab(a, b, dtype)
  return _soft_kernel(z1, z2, targets, a, b, weights, estimator)


@functools.partial(jax.jit, static_argnames=("estimator",))
def _soft_kernel(z1, z2, targets, a, b, weights, estimator):
  per_pair = _pair_bce(z1, z2, targets, a, b, estimator)
  return _common.weighted_mean(per_pair, jnp.ones(per_pair.shape, bool), weights)


def _side(means, log_sigmas, mixture_weights, suffix):
  """Checks one member's distribution; ``(B, D)`` means become ``(B, 1, D)``."""
  means = _check_floating(means, f"means{suffix}", (2, 3))
  if means.ndim == 2:
    if mixture_weights is not None:
      raise ValueError(f"mixture_weights{suffix} need means of shape (B, C, D).")
    means = means[:, None, :]
    if log_sigmas is not None:
      log_sigmas = jnp.asarray(log_sigmas)
      if log_sigmas.ndim == 2:
        log_sigmas = log_sigmas[:, None, :]
  return _check_mixture(means, log_sigmas, mixture_weights, suffix, ndims=(3,))


def vib_match_loss(
    means1: jax.Array,
    log_sigmas1: jax.Array | None,
    means2: jax.Array,
    log_sigmas2: jax.Array | None,
    is_same: jax.Array,
    a,
    b,
    *,
    key: jax.Array | None = None,
    num_samples: int = 8,
    beta: float | jax.Array = 1e-4,
    mixture_weights1: jax.Array | None = None,
    mixture_weights2: jax.Array | None = None,
    weights: jax.Array | None = None,
    estimator: Estimator = "log_mean",
    return_stats: bool = False,
):
  """HIB's VIB match loss: match cross-entropy plus ``beta`` times the KL to ``N(0, I)``.

  For each labelled pair ``(x_n, x'_n)`` with embeddings
  ``p(z|x_n) = sum_c w_c N(mu_c, diag sigma_c^2)`` (MoG-C, diagonal
  covariance; ``C = 1`` a single Gaussian):

  1. draw ``K = num_samples`` reparameterised samples of each member with
     :func:`sample_mixture`, the first members with ``jax.random.split(key)[0]``,
     the second with ``jax.random.split(key)[1]``;
  2. the data term is the binary cross-entropy of the Monte Carlo match
     probability over all ``K x K`` sample pairs, computed stably as in
     :func:`soft_contrastive_loss`;
  3. the regulariser is ``beta * (KL(p(z|x) || N(0, I)) + KL(p(z'|x') || N(0, I)))``:
     closed form (:func:`kl_to_standard_normal`) for ``C = 1``, the unbiased
     Monte Carlo estimate (:func:`kl_mixture_to_standard_normal`) from the
     same samples for ``C > 1``.

  The loss is the (weighted) mean over the pairs. Signature choices: each
  member is given by its distribution's parameters and the loss draws the
  samples from ``key``, so that the KL and the match term see the same
  samples; ``means`` of shape ``(B, C, D)`` (or ``(B, D)`` for ``C = 1``),
  ``log_sigmas`` of the same shape, mixture weights uniform (``None``, the
  paper's choice) or given per pair. A point embedding is ``log_sigmas=None``
  (``C = 1``): one sample equal to the mean and no KL term (a point mass has
  none that is finite), which makes this the soft contrastive loss of the
  paper's point baseline. See the module docstring for the deviations from
  the paper (the default data term is the cross-entropy of the averaged
  probability; ``estimator="mean_log"`` gives the expected-log form).

  Args:
    means1: ``(B, C1, D)`` or ``(B, D)`` means of the first members.
    log_sigmas1: log standard deviations, the shape and dtype of ``means1``,
      or ``None`` for point embeddings.
    means2: ``(B, C2, D)`` or ``(B, D)`` means of the second members (the
      number of components may differ from ``C1``).
    log_sigmas2: like ``log_sigmas1``, for ``means2``.
    is_same: ``(B,)`` bool or 0/1 targets: whether each pair matches.
    a: scalar scale of the distance (kept positive by the model).
    b: scalar offset of the match logit.
    key: a JAX PRNG key; required unless both members are point embeddings.
    num_samples: ``K`` samples per stochastic embedding (the paper uses 8);
      best a multiple of ``C``.
    beta: the weight of the KL terms (the paper: ``1e-4``); a scalar, may be
      traced.
    mixture_weights1: ``(C1,)`` or ``(B, C1)`` weights, ``None`` for uniform.
    mixture_weights2: likewise for the second members.
    weights: optional ``(B,)`` non-negative per-pair weights.
    estimator: ``"log_mean"`` or ``"mean_log"``, see
      :func:`soft_contrastive_loss`.
    return_stats: also return a dict with ``bce`` (the mean data term),
      ``kl`` (the mean of ``KL1 + KL2`` over the pairs, before ``beta``) and
      ``match_probability`` (``(B,)``), all without gradient.

  Returns:
    The scalar loss, or ``(loss, stats)`` with ``return_stats=True``.

  Raises:
    ValueError: on bad shapes or dtypes, a missing key, an unknown estimator,
      and, outside ``jit``, NaN inputs, invalid targets, weights or mixture
      weights, or a negative ``beta``.

  References:
    Oh et al., "Modeling Uncertainty with Hedged Instance Embedding",
    ICLR 2019 (the VIB objective); Alemi, Fischer, Dillon & Murphy, "Deep Variational
    Information Bottleneck", ICLR 2017.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from sphereembed.losses import vib_match_loss
    >>> mu1 = jnp.array([[0.0, 0.0], [0.0, 0.0]])
    >>> mu2 = jnp.array([[0.1, 0.0], [4.0, 0.0]])
    >>> log_sigma = jnp.full((2, 2), -2.0)
    >>> same = jnp.array([True, False])
    >>> loss, stats = vib_match_loss(mu1, log_sigma, mu2, log_sigma, same, 1.0, 2.0,
    ...                              key=jax.random.key(0), return_stats=True)
    >>> # KL per pair: 2 * 0.5 * 2 * (e^-4 - 1 + 4) + 0.5 * ||mu2||^2: 6.04 and 14.04.
    >>> print(f"{stats['kl']:.2f}")
    10.04
    >>> # Points would give -log sigmoid(1.9) and -log sigmoid(2): mean 0.1332.
    >>> print(f"{stats['bce']:.2f}")
    0.14
  """
  means1, log_sigmas1, mixture_weights1 = _side(means1, log_sigmas1, mixture_weights1, "1")
  means2, log_sigmas2, mixture_weights2 = _side(means2, log_sigmas2, mixture_weights2, "2")
  if means1.shape[0] != means2.shape[0] or means1.shape[-1] != means2.shape[-1]:
    raise ValueError(f"means1 and means2 must have shapes (B, C1, D) and (B, C2, D), got "
                     f"{means1.shape} and {means2.shape}.")
  if means1.dtype != means2.dtype:
    raise ValueError(f"means1 and means2 must have the same dtype, got {means1.dtype} and "
                     f"{means2.dtype}.")
  _check_estimator(estimator)
  num_samples = _check_num_samples(num_samples)
  num_pairs, dtype = means1.shape[0], means1.dtype
  targets = _check_targets(is_same, num_pairs, dtype)
  weights = checks.check_weights(weights, num_pairs, dtype)
  if weights is not None and checks.is_concrete(weights):
    checks.validate_weights(weights)
  a, b = _check_ab(a, b, dtype)
  checks.validate_scalar(beta, "beta", minimum=0.0)
  beta = checks.check_scalar(beta, "beta", dtype)
  stochastic = log_sigmas1 is not None or log_sigmas2 is not None
  if stochastic and key is None:
    raise ValueError("key must be given to sample stochastic embeddings (log_sigmas not None).")
  for means, log_sigmas, suffix in ((means1, log_sigmas1, "1"), (means2, log_sigmas2, "2")):
    if log_sigmas is None and means.shape[1] != 1:
      raise ValueError(f"a point embedding (log_sigmas{suffix}=None) has one component, got "
                       f"means{suffix} of shape {means.shape}.")
  return _vib_kernel((means1, log_sigmas1, mixture_weights1),
                     (means2, log_sigmas2, mixture_weights2), targets, a, b, beta, weights,
                     key if stochastic else None, num_samples, estimator, return_stats)


@functools.partial(jax.jit, static_argnames=("num_samples", "estimator", "return_stats"))
def _vib_kernel(first, second, targets, a, b, beta, weights, key, num_samples, estimator,
                return_stats):
  num_pairs, dtype = targets.shape[0], targets.dtype
  keys = jax.random.split(key) if key is not None else (None, None)
  samples, kls = [], []
  for side_key, (means, log_sigmas, mixture_weights) in zip(keys, (first, second)):
    if log_sigmas is None:
      samples.append(means)  # (B, 1, D): the point itself, K = 1.
      kls.append(jnp.zeros((num_pairs,), dtype))
      continue
    z = _sample_kernel(side_key, means, log_sigmas, mixture_weights, num_samples)
    samples.append(z)
    if means.shape[1] == 1:
      kls.append(_kl_gaussian(means[:, 0], log_sigmas[:, 0]))
    else:
      kls.append(_kl_mixture(means, log_sigmas, z, mixture_weights))

  bce = _pair_bce(samples[0], samples[1], targets, a, b, estimator)
  kl = kls[0] + kls[1]
  every_pair = jnp.ones((num_pairs,), bool)
  loss = _common.weighted_mean(bce + beta * kl, every_pair, weights)
  if return_stats:
    stop = jax.lax.stop_gradient
    probability = jnp.mean(jax.nn.sigmoid(_pair_logits(stop(samples[0]), stop(samples[1]),
                                                       stop(a), stop(b))), axis=(-2, -1))
    return loss, {"bce": stop(_common.weighted_mean(bce, every_pair, weights)),
                  "kl": stop(_common.weighted_mean(kl, every_pair, weights)),
                  "match_probability": probability}
  return loss
