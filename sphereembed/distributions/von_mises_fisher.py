"""The von Mises-Fisher (vMF) distribution on the unit sphere S^{d-1} of R^d.

Its density with respect to the surface measure is
``C_d(kappa) exp(kappa mu^T x)`` for a unit mean direction ``mu`` and a
concentration ``kappa >= 0``, with the normaliser

``log C_d(kappa) = (d/2 - 1) log kappa - (d/2) log(2 pi) - log I_{d/2-1}(kappa)``

(``-log |S^{d-1}|``, the uniform density, at ``kappa = 0``). Everything here
is built on :mod:`sphereembed.distributions.bessel` and is accurate to a few
ulps of the dtype for every ``d >= 2`` and ``kappa`` from 0 to the dtype's
range, in float32 and float64 (relative to ``kappa A_d`` next to the zero
crossing of ``log C_d``; see :func:`vmf_log_normalizer`), with exact
hand-written derivatives:

* :func:`vmf_log_normalizer` and its gradient ``-A_d(kappa)``;
* :func:`mean_resultant_length` ``A_d = I_{d/2}/I_{d/2-1}`` (the expected
  ``mu^T x``) and its inverse :func:`inverse_mean_resultant_length`, for
  fitting ``kappa`` to data;
* :class:`VonMisesFisher`: ``log_prob``, ``sample`` (Wood's rejection
  sampler), ``mean``, ``entropy``, ``kl_divergence`` to the uniform
  distribution; batched, jit- and vmap-able, keeping the parameters' dtype.

Where a formula would lose accuracy the quantity is computed directly:
``log C_d`` at small ``kappa`` from the series (no cancellation between
``(d/2-1) log kappa`` and ``log I``), ``1 - A_d`` at large ``kappa``,
``log C_d + kappa`` (the log density at the mode) without adding and
removing ``kappa``, and the KL divergence at small ``kappa`` as
``kappa A_d - log(Gamma(d/2) (2/kappa)^{d/2-1} I_{d/2-1}(kappa))``.

References:
  K. V. Mardia and P. E. Jupp, "Directional Statistics", Wiley, 2000, ch. 9.
  A. T. A. Wood, "Simulation of the von Mises Fisher distribution",
  Communications in Statistics - Simulation and Computation 23 (1994).
  A. Banerjee, I. S. Dhillon, J. Ghosh and S. Sra, "Clustering on the Unit
  Hypersphere using von Mises-Fisher Distributions", JMLR 6 (2005).
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sphereembed.distributions import bessel

__all__ = [
    "VonMisesFisher",
    "inverse_mean_resultant_length",
    "log_sphere_area",
    "mean_resultant_length",
    "vmf_log_normalizer",
]

_LOG_2PI = math.log(2.0 * math.pi)


def _is_tracer(x) -> bool:
  return isinstance(x, jax.core.Tracer)


def _check_dim(dim) -> int:
  if isinstance(dim, (bool, np.bool_)) or not isinstance(dim, (int, np.integer)) or dim < 2:
    raise ValueError(f"dim must be an int >= 2 (the sphere S^(d-1) lives in R^d), got {dim!r}.")
  return int(dim)


def _as_float_array(x, name: str) -> jax.Array:
  x = jnp.asarray(x)
  if jnp.iscomplexobj(x):
    raise ValueError(f"{name} must be real, got dtype {x.dtype}.")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.result_type(float))
  return x


def _check_concentration(kappa, name: str = "kappa") -> jax.Array:
  kappa = _as_float_array(kappa, name)
  # numpy, not jnp: inside a jit trace even a constant's jnp comparison is traced.
  values = bessel.concrete_value(kappa)
  if values is not None and not np.all((values >= 0) & np.isfinite(values)):
    raise ValueError(f"{name} must be finite and >= 0 (not NaN or inf).")
  return kappa


def log_sphere_area(dim: int) -> float:
  """``log |S^{d-1}| = log(2 pi^{d/2} / Gamma(d/2))``, the log surface area."""
  dim = _check_dim(dim)
  return math.log(2.0) + 0.5 * dim * math.log(math.pi) - math.lgamma(0.5 * dim)


def _order(dim: int) -> float:
  return 0.5 * dim - 1.0


# ----------------------------------------------------------------------------
# Functions of kappa (custom derivatives in kappa).


def _log_normalizer_evaluate(order, kappa):
  dim = int(round(2.0 * order + 2.0))
  quantities = bessel.parts(order, kappa, offset=(order + 1.0) * _LOG_2PI)
  mean_length, _ = bessel.ratio_and_complement(order, kappa)
  value = jnp.where(kappa > 0, quantities.log_plain,
                    jnp.where(kappa == 0, -log_sphere_area(dim), jnp.nan))
  value = jnp.where(kappa == jnp.inf, -jnp.inf, value)  # the limit (traced inf only)
  return value.astype(kappa.dtype), -mean_length


_log_normalizer = bessel.custom_jvp_in_z(_log_normalizer_evaluate)


def _log_mode_density_evaluate(order, kappa):
  """``log C_d(kappa) + kappa``, the log density at the mode, and its slope ``1 - A_d``."""
  dim = int(round(2.0 * order + 2.0))
  quantities = bessel.parts(order, kappa, offset=(order + 1.0) * _LOG_2PI)
  _, complement = bessel.ratio_and_complement(order, kappa)
  value = jnp.where(kappa > 0, quantities.log_shift,
                    jnp.where(kappa == 0, -log_sphere_area(dim), jnp.nan))
  value = jnp.where(kappa == jnp.inf, jnp.inf, value)  # the limit (traced inf only)
  return value.astype(kappa.dtype), complement


_log_mode_density = bessel.custom_jvp_in_z(_log_mode_density_evaluate)


def vmf_log_normalizer(kappa, dim: int) -> jax.Array:
  """``log C_d(kappa)``, the log normaliser of the vMF density on S^{d-1}.

  ``log C_d(kappa) = (d/2 - 1) log kappa - (d/2) log(2 pi) - log I_{d/2-1}(kappa)``,
  elementwise. Its relative error is a few ulps of the dtype (measured
  against mpmath: ~1e-15 in float64, <= 3e-7 in float32 on d in {2, ...,
  4096} x kappa in [1e-8, 1e5]) except next to its zero crossing, which
  exists for d >= 19: there the error is a few ulps of ``kappa A_d``, the
  size of the terms that cancel (<= 4e-14 relative in float64 on that grid).
  At ``kappa = 0`` it is
  ``-log |S^{d-1}|``, the log density of the uniform distribution, and the
  small-``kappa`` limit is reached smoothly (``log C_d(kappa) ~ -log|S| -
  kappa^2 / (2d)``). The gradient is exactly ``-A_d(kappa)`` (a custom JVP),
  0 at ``kappa = 0``; second derivatives use :func:`mean_resultant_length`'s.

  Args:
    kappa: array of concentrations ``>= 0`` (float32 or float64; integers are
      converted to the default float).
    dim: the ambient dimension ``d >= 2`` (a Python int).

  Returns:
    An array of the shape and dtype of ``kappa``.

  Raises:
    ValueError: if ``dim`` is not an int >= 2, if ``kappa`` is complex, or if
      ``kappa`` is concrete and has negative, NaN or infinite entries (under
      ``jit`` negative and NaN entries give NaN, ``inf`` the limit ``-inf``).

  Example:
    >>> import jax.numpy as jnp
    >>> from sphereembed.distributions import vmf_log_normalizer
    >>> values = vmf_log_normalizer(jnp.array([0.0, 1e-8, 1.0, 1e4], jnp.float32), dim=3)
    >>> print(", ".join(f"{x:.7g}" for x in values))
    -2.531024, -2.531024, -2.692464, -9992.628
  """
  dim = _check_dim(dim)
  return _log_normalizer(_order(dim), _check_concentration(kappa))


def mean_resultant_length(kappa, dim: int) -> jax.Array:
  """``A_d(kappa) = I_{d/2}(kappa) / I_{d/2-1}(kappa)``, the vMF's mean ``E[mu^T x]``.

  Increases from 0 (``A_d ~ kappa / d`` as ``kappa -> 0``, computed without
  cancellation) to 1 (``1 - A_d ~ (d-1)/(2 kappa)``); it is minus the
  derivative of :func:`vmf_log_normalizer`. Its own derivative is
  ``A_d' = 1 - A_d^2 - (d-1) A_d / kappa`` (``1/d`` at 0), with an absolute
  error of about ``d`` ulps where that difference cancels.

  Args:
    kappa: array of concentrations ``>= 0``.
    dim: the ambient dimension ``d >= 2``.

  Returns:
    An array of the shape and dtype of ``kappa``, in ``[0, 1]`` (1 is reached
    by rounding at large ``kappa``, and is the limit at a traced ``inf``).

  Raises:
    ValueError: as :func:`vmf_log_normalizer`.

  Example:
    >>> import jax.numpy as jnp
    >>> from sphereembed.distributions import mean_resultant_length
    >>> values = mean_resultant_length(jnp.array([0.0, 1e-6, 1.0, 1e6], jnp.float32), dim=3)
    >>> print(", ".join(f"{x:.7g}" for x in values))
    0, 3.333333e-07, 0.3130353, 0.999999
  """
  dim = _check_dim(dim)
  return bessel.ratio_and_complement(_order(dim), _check_concentration(kappa))[0]


def inverse_mean_resultant_length(r, dim: int, *, newton_steps: int | None = None) -> jax.Array:
  """The concentration ``kappa`` with ``A_d(kappa) = r`` (maximum likelihood from data).

  For unit vectors ``x_i`` with mean ``xbar``, the maximum-likelihood
  concentration is this function of ``r = ||xbar||``. It starts from the
  closed form of Banerjee et al. (2005), ``r (d - r^2) / (1 - r^2)``, and
  takes Newton steps on ``A_d(kappa) - r`` (computed as ``(1 - r) - (1 -
  A_d)`` for ``r >= 1/2``, so that nothing cancels as ``r -> 1``) with
  ``A_d' = 1 - A_d^2 - (d-1) A_d / kappa``. Each step is kept within a factor
  4 of the previous ``kappa``. ``r = 0`` gives 0 and ``r = 1`` gives ``inf``.

  The inverse is ill-conditioned as ``r -> 1``: a relative change ``e`` of
  ``1 - r`` changes ``kappa`` by about ``e`` too, so ``kappa`` is as accurate
  as ``1 - r`` is (``2 kappa / (d - 1)`` ulps of ``r``).

  The derivative is ``1 / A_d'(kappa)`` (implicit differentiation, a custom
  JVP, finite for every ``r`` in ``[0, 1)``; ``d`` at ``r = 0``); at
  ``r = 1`` (``kappa = inf``) it is set to 0.

  Args:
    r: array of mean resultant lengths in ``[0, 1]``.
    dim: the ambient dimension ``d >= 2``.
    newton_steps: number of Newton steps (default: 6 in float32, 8 in
      float64, enough from the closed-form start for every ``r``).

  Returns:
    An array of the shape and dtype of ``r``.

  Raises:
    ValueError: if ``dim`` is not an int >= 2, or if ``r`` is concrete and
      outside ``[0, 1]`` (under ``jit``: NaN).

  Example:
    >>> import jax.numpy as jnp
    >>> from sphereembed.distributions import inverse_mean_resultant_length
    >>> r = jnp.array([0.0, 0.3130353, 0.99, 1.0], jnp.float32)
    >>> print(", ".join(f"{x:.6g}" for x in inverse_mean_resultant_length(r, dim=3)))
    0, 1, 100, inf
  """
  dim = _check_dim(dim)
  r = _as_float_array(r, "r")
  values = bessel.concrete_value(r)
  if values is not None and not np.all((values >= 0) & (values <= 1)):
    raise ValueError("r must lie in [0, 1].")
  if newton_steps is None:
    newton_steps = 8 if jnp.finfo(r.dtype).bits > 32 else 6
  return _inverse_mean_resultant_length(dim, int(newton_steps), r)


def _mean_resultant_slope(dim: int, kappa: jax.Array) -> jax.Array:
  """``A_d'(kappa) = 1 - A_d^2 - (d-1) A_d / kappa``, kept positive and finite.

  The difference cancels as ``kappa`` grows (its value is ``~(d-1)/(2
  kappa^2)`` and its rounding error ``~eps kappa`` times that): beyond
  ``kappa = sqrt(d / eps)`` the leading asymptotic term is used, with a
  relative error of about ``d / kappa <= sqrt(d eps)``. Elsewhere it is kept
  above a quarter of its limits (``1/d`` at 0, ``(d-1)/(2 kappa^2)`` at
  infinity).
  """
  mean_length, complement = bessel.ratio_and_complement(_order(dim), kappa)
  safe = jnp.where(kappa > 0, kappa, 1.0)
  direct = complement * (1.0 + mean_length) - (dim - 1.0) * mean_length / safe
  asymptotic = 0.5 * (dim - 1.0) / safe / safe
  direct = jnp.maximum(direct, 0.25 * jnp.minimum(1.0 / dim, asymptotic))
  switch = math.sqrt(dim / float(jnp.finfo(kappa.dtype).eps))
  return jnp.where(kappa == 0, 1.0 / dim, jnp.where(kappa > switch, asymptotic, direct))


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _inverse_mean_resultant_length(dim: int, newton_steps: int, r: jax.Array) -> jax.Array:
  dtype = r.dtype
  order = _order(dim)
  inside = (r > 0) & (r < 1)
  safe_r = jnp.where(inside, r, 0.5)
  one_minus_r = 1.0 - safe_r
  kappa = safe_r * (dim - safe_r * safe_r) / (one_minus_r * (1.0 + safe_r))

  def newton_step(_, kappa):
    mean_length, complement = bessel.ratio_and_complement(order, kappa)
    # A_d(kappa) - r, from whichever of A_d and 1 - A_d is not close to 1.
    residual = jnp.where(safe_r < 0.5, mean_length - safe_r, one_minus_r - complement)
    slope = complement * (1.0 + mean_length) - (dim - 1.0) * mean_length / kappa
    # Far out, that difference cancels to its rounding error: keep it above a
    # quarter of its limits (1/d at 0, (d-1)/(2 kappa^2) at infinity).
    slope = jnp.maximum(slope, 0.25 * jnp.minimum(1.0 / dim, 0.5 * (dim - 1.0) / (kappa * kappa)))
    return jnp.clip(kappa - residual / slope, 0.25 * kappa, 4.0 * kappa)

  # A loop rather than unrolled steps: one copy of the Bessel ratio to compile.
  kappa = jax.lax.fori_loop(0, newton_steps, newton_step, kappa)
  kappa = jnp.where(inside, kappa, jnp.where(r == 0, 0.0, jnp.where(r == 1, jnp.inf, jnp.nan)))
  return kappa.astype(dtype)


@_inverse_mean_resultant_length.defjvp
def _inverse_mean_resultant_length_jvp(dim, newton_steps, primals, tangents):
  # The implicit function theorem: dkappa = dr / A_d'(kappa), not the
  # derivative of the Newton iterations (NaN where they clip or cancel).
  (r,), (dr,) = primals, tangents
  kappa = _inverse_mean_resultant_length(dim, newton_steps, r)
  finite = (r >= 0) & (r < 1)
  safe_kappa = jnp.where(finite, kappa, 0.0)
  slope = jax.lax.stop_gradient(_mean_resultant_slope(dim, safe_kappa))
  return kappa, jnp.where(finite, dr / slope, 0.0).astype(kappa.dtype)


# ----------------------------------------------------------------------------
# The distribution.


def _dot(a: jax.Array, b: jax.Array) -> jax.Array:
  """``sum(a * b, -1)`` as a contraction (``einsum``), broadcasting leading axes.

  Written as a dot product on purpose: on XLA's CPU backend (jax 0.10.2),
  the fused form ``u * jnp.sum(u * x, -1, keepdims=True)`` returned values
  off by up to 4 in float32 under ``jit`` for x of shape (16384, 3) (the
  Householder step of the sampler); the contraction is computed correctly.
  """
  return jnp.einsum("...d,...d->...", a, b, precision=jax.lax.Precision.HIGHEST)


def _normal(u):
  """Standard normal variates from uniforms on [0, 1) (u = 0 gives -inf)."""
  return math.sqrt(2.0) * jax.lax.erf_inv(2.0 * u - 1.0)


def _gamma_proposal(u_normal, u_accept, alpha: float):
  """One Marsaglia-Tsang (2000) proposal for Gamma(alpha), alpha >= 1, unscaled.

  Returns ``(g, accepted)``: where ``accepted``, ``g * (alpha - 1/3)`` is a
  Gamma(alpha) variate (the common scale cancels in ratios). Acceptance is
  above 95 %.
  """
  d = alpha - 1.0 / 3.0
  c = 1.0 / math.sqrt(9.0 * d)
  x = _normal(u_normal)
  v = (1.0 + c * x) ** 3
  positive = v > 0
  safe_v = jnp.where(positive, v, 1.0)
  accepted = positive & (jnp.log(u_accept) < 0.5 * x * x + d - d * safe_v + d * jnp.log(safe_v))
  return safe_v, accepted


def _symmetric_beta_proposal(u, a: float):
  """``(z, accepted)`` from uniforms ``u[0..3]``: where accepted, z ~ Beta(a, a).

  Beta(1/2, 1/2) (d = 2) is the arcsine law, ``sin^2(pi u / 2)``; otherwise
  ``X / (X + Y)`` with two Gamma(a) proposals, accepted when both are. The
  whole sampler stays one ``while_loop`` with one call to the random number
  generator per round (``jax.random.beta`` runs loops of its own and, like
  every extra generator call, adds seconds of compilation).
  """
  if a == 0.5:
    return 0.5 - 0.5 * jnp.cos(jnp.pi * u[0]), jnp.ones(u.shape[1:], bool)
  x, accepted_x = _gamma_proposal(u[0], u[1], a)
  y, accepted_y = _gamma_proposal(u[2], u[3], a)
  return x / (x + y), accepted_x & accepted_y


# Rounds of Wood's rejection sampler before it stops. Every round accepts with
# probability above about 1/2 (Wood's envelope times the Gamma proposals'
# 95 %), so an element is still unaccepted after 64 rounds with probability
# below 1e-19; such an element (or one with a NaN kappa, traced) keeps the last
# proposal instead of looping for ever.
_MAX_ROUNDS = 64


def _sample_w(key, kappa, dim: int, shape, dtype):
  """``1 - w`` for ``w = mu^T x`` of vMF samples, shape ``shape`` (broadcast with kappa).

  d = 3: the exact inverse CDF, ``1 - w = -log1p(u (exp(-2 kappa) - 1)) / kappa``.
  Otherwise Wood's (1994) rejection sampler in a ``lax.while_loop`` of at
  most ``_MAX_ROUNDS`` rounds, with every difference that cancels for large
  ``kappa`` rewritten (``1 - w = 2 b z / (1 - (1-b) z)``), so that samples
  near the mode keep their relative accuracy, and every product that would
  overflow for huge ``kappa`` (``4 kappa^2``, ``kappa * b``) computed in a
  form that does not: ``b`` through ``hypot`` and ``kappa b = (d-1) / (2 +
  hypot(2, (d-1)/kappa))``. For ``kappa`` up to the dtype's maximum ``1 - w``
  is ``O(1/kappa)`` (0 once that underflows, i.e. the sample is ``mu``).
  """
  kappa = jnp.broadcast_to(kappa, shape).astype(dtype)
  if dim == 3:
    u = jax.random.uniform(key, shape, dtype)
    positive = kappa > 0
    safe = jnp.where(positive, kappa, 1.0)
    one_minus_w = -jnp.log1p(u * jnp.expm1(-2.0 * safe)) / safe
    return jnp.where(positive, one_minus_w, 2.0 * u)  # kappa = 0: w uniform on [-1, 1]
  m1 = dim - 1.0
  # b = (d-1) / (2 kappa + sqrt(4 kappa^2 + (d-1)^2)), x0 = (1-b)/(1+b);
  # hypot does not overflow where 4 kappa^2 would (kappa >= 1e19 in float32).
  twice = 2.0 * kappa
  b = m1 / (twice + jnp.hypot(twice, m1))
  # kappa * b without the product (kappa = 0 gives m1 / inf = 0, as it should).
  kappa_b = m1 / (2.0 + jnp.hypot(2.0, m1 / kappa))
  x0 = (1.0 - b) / (1.0 + b)
  log1p_x0 = jnp.log1p(x0)

  def propose(key):
    uniforms = jax.random.uniform(key, (5,) + shape, dtype)
    z, accepted = _symmetric_beta_proposal(uniforms[1:], 0.5 * m1)
    u = uniforms[0]
    denominator = 1.0 - (1.0 - b) * z  # >= b > 0 for z < 1
    one_minus_w = 2.0 * b * z / denominator
    # kappa w + (d-1) log(1 - x0 w) - c >= log u, with c = kappa x0 + (d-1) log(1 - x0^2),
    # as kappa (w - x0) + (d-1) [log1p(x0 (1-w) / (1-x0)) - log1p(x0)], where
    # kappa (1 - x0) = 2 kappa b / (1 + b), kappa (1 - w) = 2 kappa b z / denominator
    # and x0 (1-w) / (1-x0) = (1-b) z / denominator: no division by b.
    gain = (2.0 * kappa_b * (1.0 / (1.0 + b) - z / denominator)
            + m1 * (jnp.log1p((1.0 - b) * z / denominator) - log1p_x0))
    return one_minus_w, accepted & (gain >= jnp.log(u))

  def body(state):
    key, one_minus_w, done, rounds = state
    key, subkey = jax.random.split(key)
    proposal, accepted = propose(subkey)
    last = rounds + 1 >= _MAX_ROUNDS
    take = (accepted | last) & ~done
    return key, jnp.where(take, proposal, one_minus_w), done | take, rounds + 1

  def unfinished(state):
    return ~jnp.all(state[2]) & (state[3] < _MAX_ROUNDS)

  initial = (key, jnp.zeros(shape, dtype), jnp.zeros(shape, bool), jnp.int32(0))
  return jax.lax.while_loop(unfinished, body, initial)[1]


@jax.tree_util.register_pytree_node_class
class VonMisesFisher:
  """The von Mises-Fisher distribution ``C_d(kappa) exp(kappa mu^T x)`` on S^{d-1}.

  Parameters broadcast: ``mean_direction`` has shape ``batch + (d,)`` and
  ``concentration`` a shape that broadcasts with ``batch``; the batch shape
  is their broadcast. Instances are pytrees (they pass through ``jit``,
  ``vmap`` and ``grad``); every method is a pure function of the parameters.
  The dtype is the parameters' (float32 or float64).

  Args:
    mean_direction: unit vectors, shape ``batch + (d,)``, ``d >= 2``.
    concentration: ``kappa >= 0``, broadcastable to ``batch``.
    validate: check concrete parameters (unit norm within ``1e-3`` in
      float32 / ``1e-6`` in float64, ``kappa`` finite and ``>= 0``). Traced
      parameters are never checked.

  The supported concentrations are every finite ``kappa >= 0`` up to the
  dtype's maximum: ``log_prob``, ``entropy``, ``kl_divergence`` and
  ``sample`` are finite there (``sample`` returns ``mu`` itself once ``1 - w``
  underflows). ``kappa = inf`` is refused when concrete; under ``jit`` it
  gives the limits where they exist and NaN where they do not.

  Raises:
    ValueError: for a ``mean_direction`` of rank 0 or ``d < 2``, complex
      parameters, shapes that do not broadcast, and (when concrete) non-unit
      or non-finite mean directions or negative / NaN / infinite
      concentrations.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from sphereembed.distributions import VonMisesFisher
    >>> vmf = VonMisesFisher(jnp.array([0.0, 0.0, 1.0], jnp.float32), 10.0)
    >>> print(f"{vmf.log_prob(jnp.array([0.0, 0.0, 1.0])):.5f}")
    0.46471
    >>> print(f"{vmf.entropy():.5f} {vmf.kl_divergence():.5f}")
    0.53529 1.99573
    >>> vmf.sample(jax.random.PRNGKey(0), (5,)).shape
    (5, 3)
  """

  def __init__(self, mean_direction, concentration, *, validate: bool = True):
    mean_direction = jnp.asarray(mean_direction)
    concentration = jnp.asarray(concentration)
    for name, array in (("mean_direction", mean_direction), ("concentration", concentration)):
      if jnp.iscomplexobj(array):
        raise ValueError(f"{name} must be real, got dtype {array.dtype}.")
    if mean_direction.ndim < 1:
      raise ValueError("mean_direction must have a last axis of size d >= 2, got a scalar.")
    _check_dim(mean_direction.shape[-1])
    dtype = jnp.result_type(mean_direction, concentration)
    if not jnp.issubdtype(dtype, jnp.floating):
      dtype = jnp.result_type(float)
    try:
      jnp.broadcast_shapes(mean_direction.shape[:-1], concentration.shape)
    except ValueError:
      raise ValueError(
          f"concentration of shape {concentration.shape} does not broadcast with the batch "
          f"shape {mean_direction.shape[:-1]} of mean_direction.") from None
    self.mean_direction = mean_direction.astype(dtype)
    self.concentration = concentration.astype(dtype)
    if validate and not _is_tracer(self.mean_direction) and not _is_tracer(self.concentration):
      self._validate()

  def _validate(self):
    _check_concentration(self.concentration, "concentration")
    mu = np.asarray(self.mean_direction, np.float64)
    if not np.all(np.isfinite(mu)):
      raise ValueError("mean_direction contains NaN or infinite values.")
    tolerance = 1e-3 if jnp.finfo(self.dtype).bits <= 32 else 1e-6
    worst = float(np.max(np.abs(np.sqrt(np.sum(mu * mu, axis=-1)) - 1.0))) if mu.size else 0.0
    if not worst <= tolerance:
      raise ValueError(
          f"mean_direction must have unit norm (largest | ||mu|| - 1 | is {worst:.3g}); "
          "normalise it, e.g. with sphereembed.geometry.l2_normalize.")

  # Pytree protocol: no validation when rebuilt from leaves (they may be tracers).
  def tree_flatten(self):
    return (self.mean_direction, self.concentration), None

  @classmethod
  def tree_unflatten(cls, aux, leaves):
    del aux
    instance = object.__new__(cls)
    instance.mean_direction, instance.concentration = leaves
    return instance

  @property
  def dim(self) -> int:
    """The ambient dimension ``d`` (the sphere is S^{d-1})."""
    return self.mean_direction.shape[-1]

  @property
  def dtype(self):
    return self.mean_direction.dtype

  @property
  def batch_shape(self) -> tuple[int, ...]:
    return jnp.broadcast_shapes(self.mean_direction.shape[:-1], self.concentration.shape)

  @property
  def event_shape(self) -> tuple[int, ...]:
    return (self.dim,)

  def log_normalizer(self) -> jax.Array:
    """``log C_d(kappa)``, shape ``batch_shape`` (see :func:`vmf_log_normalizer`)."""
    return jnp.broadcast_to(_log_normalizer(_order(self.dim), self.concentration), self.batch_shape)

  def log_prob(self, x) -> jax.Array:
    """``log C_d(kappa) + kappa mu^T x`` for unit vectors ``x`` of shape ``... + batch + (d,)``.

    Evaluated as ``(log C_d(kappa) + kappa) - kappa ||x - mu||^2 / 2``, equal
    for unit ``x`` and accurate near the mode at any ``kappa`` (``kappa mu^T x``
    alone would carry an error of ``kappa`` ulps). The gradient in ``x`` is
    ``-kappa (x - mu)``, whose component tangent to the sphere is the usual
    ``kappa (I - x x^T) mu``.

    Returns:
      An array of shape ``x.shape[:-1]`` (broadcast with ``batch_shape``).
    """
    x = jnp.asarray(x, self.dtype)
    if x.ndim < 1 or x.shape[-1] != self.dim:
      raise ValueError(f"x must have a last axis of size {self.dim}, got shape {x.shape}.")
    return _log_prob(self.mean_direction, self.concentration, x)

  def mean(self) -> jax.Array:
    """``E[x] = A_d(kappa) mu``, shape ``batch_shape + (d,)``."""
    length = bessel.ratio_and_complement(_order(self.dim), self.concentration)[0]
    return length[..., None] * self.mean_direction

  def mean_resultant_length(self) -> jax.Array:
    """``A_d(kappa) = E[mu^T x]``, shape ``batch_shape``."""
    length = bessel.ratio_and_complement(_order(self.dim), self.concentration)[0]
    return jnp.broadcast_to(length, self.batch_shape)

  def kl_divergence(self) -> jax.Array:
    """``KL(vMF || uniform on S^{d-1}) = log C_d(kappa) + kappa A_d + log |S^{d-1}|``.

    Computed as ``(log C_d + kappa) - kappa (1 - A_d) + log|S|`` for large
    ``kappa``; for ``kappa^2 <= 2d`` it is ``kappa A_d - log1p(T)`` with ``T``
    the tail of the power series of ``Gamma(d/2) (2/kappa)^{d/2-1}
    I_{d/2-1}(kappa)``, so that it keeps its relative accuracy as it
    vanishes like ``kappa^2 / (2d)``. Between ``sqrt(2d)`` and ``~d`` (large
    ``d`` only) the error is a few ulps of ``log |S^{d-1}|`` in absolute
    terms (e.g. ~1e-3 in float32 at d = 4096, where KL ~ 1 to 1e3). Shape
    ``batch_shape``.
    """
    return jnp.broadcast_to(_kl_divergence(self.dim, self.concentration), self.batch_shape)

  def entropy(self) -> jax.Array:
    """Differential entropy ``-E[log p(x)] = log |S^{d-1}| - KL(vMF || uniform)``.

    Shape ``batch_shape``; accurate as :meth:`kl_divergence` is.
    """
    return log_sphere_area(self.dim) - self.kl_divergence()

  def sample(self, key: jax.Array, sample_shape: Sequence[int] = ()) -> jax.Array:
    """Draws samples, shape ``sample_shape + batch_shape + (d,)``.

    ``w = mu^T x`` comes from Wood's (1994) rejection sampler (exact inverse
    CDF at ``d = 3``; at most 64 rounds, so it always returns, also for a
    traced NaN or infinite ``kappa``), the tangent direction from a normalised Gaussian in
    ``R^{d-1}``; the point ``(w, sqrt(1 - w^2) v)`` is then reflected onto
    ``mu`` by a Householder reflection chosen so that it never divides by a
    small number.

    Args:
      key: a ``jax.random`` key.
      sample_shape: leading shape of the draws.

    Returns:
      Unit vectors of the parameters' dtype.
    """
    return _sample(key, self.mean_direction, self.concentration, tuple(sample_shape))


# The methods' bodies, compiled as units (called eagerly, their elementwise
# operations would otherwise be dispatched and compiled one by one).


@jax.jit
def _log_prob(mean_direction, concentration, x):
  difference = x - mean_direction
  half_squared = 0.5 * _dot(difference, difference)
  order = _order(mean_direction.shape[-1])
  return _log_mode_density(order, concentration) - concentration * half_squared


@functools.partial(jax.jit, static_argnums=0)
def _kl_divergence(dim: int, kappa):
  order = _order(dim)
  mean_length, complement = bessel.ratio_and_complement(order, kappa)
  large = _log_mode_density(order, kappa) - kappa * complement + log_sphere_area(dim)
  # The series converges fast for kappa^2 <= 4 (v + 1) = 2d.
  series = kappa * kappa <= 2.0 * dim
  small = kappa * mean_length - _log_series(order, jnp.minimum(kappa, math.sqrt(2.0 * dim)))
  return jnp.where(series, small, large)


@functools.partial(jax.jit, static_argnums=3)
def _sample(key, mean_direction, concentration, sample_shape):
  dim, dtype = mean_direction.shape[-1], mean_direction.dtype
  batch_shape = jnp.broadcast_shapes(mean_direction.shape[:-1], concentration.shape)
  shape = sample_shape + batch_shape
  key_w, key_v = jax.random.split(key)
  one_minus_w = _sample_w(key_w, concentration, dim, shape, dtype)
  w = 1.0 - one_minus_w
  radius = jnp.sqrt(jnp.maximum(one_minus_w * (2.0 - one_minus_w), 0.0))
  v = jax.random.normal(key_v, shape + (dim - 1,), dtype)
  v_norm = jnp.sqrt(_dot(v, v))
  v = v / jnp.where(v_norm > 0, v_norm, 1.0)[..., None]
  y = jnp.concatenate([w[..., None], radius[..., None] * v], axis=-1)
  return _reflect(y, jnp.broadcast_to(mean_direction, batch_shape + (dim,)))


def _reflect(y: jax.Array, mu: jax.Array) -> jax.Array:
  """Applies an orthogonal map Q with ``Q e_1 = mu`` to the rows of ``y``.

  ``Q = sigma (I - 2 u u^T / u^T u)`` with ``u = e_1 - sigma mu`` and
  ``sigma = -sign(mu_1)``, so that ``u^T u = 2 (1 + |mu_1|) >= 2``: no
  division by a small number whatever ``mu`` is. ``mu`` broadcasts against
  the leading axes of ``y``; the dot products are contractions (see
  :func:`_dot`).
  """
  dim = y.shape[-1]
  sigma = jnp.where(mu[..., :1] >= 0, -1.0, 1.0).astype(y.dtype)
  e1 = jnp.zeros((dim,), y.dtype).at[0].set(1.0)
  u = e1 - sigma * mu
  scale = 2.0 / _dot(u, u)
  projection = _dot(y, u) * scale
  return sigma * (y - projection[..., None] * u)


def _log_series(order: float, kappa: jax.Array) -> jax.Array:
  """``log(Gamma(v+1) (2/kappa)^v I_v(kappa)) = log C_d(0) - log C_d(kappa)``.

  The power series ``sum_k (kappa^2/4)^k / (k! (v+1)_k)`` through ``log1p``
  of its tail (exact as ``kappa -> 0``), for ``kappa^2 <= 4 (v + 1)``, where
  term ``k`` is below ``1/k!`` of the first: 20 terms reach 1e-19.
  """
  q = 0.25 * kappa * kappa
  term = q / (order + 1.0)
  total = term
  for k in range(1, 20):
    term = term * q / ((k + 1.0) * (order + k + 1.0))
    total = total + term
  return jnp.log1p(total)
