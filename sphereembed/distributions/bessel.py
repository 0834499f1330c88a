"""Modified Bessel functions of the first kind, in the forms the vMF distribution needs.

:func:`log_bessel_ive` is ``log(I_v(z) e^{-z})`` and :func:`bessel_iv_ratio`
is ``I_{v+1}(z) / I_v(z)``, for a real order ``v >= 0`` and arrays ``z > 0``
in float32 or float64. Both are finite for every positive normal ``z`` (the
scaling by ``e^{-z}`` and the logarithm keep values in range where ``I_v``
itself overflows or underflows), branch-free (one ``jnp.where`` over
regimes, each fed a safe input) and jit/vmap compatible. The derivative of
:func:`log_bessel_ive` in ``z`` is the exact ``I_{v+1}/I_v + v/z - 1``,
supplied by a custom JVP instead of differentiating the series.

Regimes (chosen per element; the order's regime is chosen once):

* ``v >= 15``: Debye's uniform asymptotic expansion, with as many of Olver's
  polynomials ``U_k(p)`` as the order and dtype need (in float64 4 at
  ``v = 2047``, 20 at ``v = 15``; in float32 2 and 6). The value, the ratio
  and the derivative come from the same expansion, written without
  cancellation:
  ``I_{v+1}/I_v = t/(1+s) - p^2 t/(2v) - (t p^3/v) U'(p)/U(p)`` with
  ``t = z/v``, ``s = sqrt(1+t^2)``, ``p = 1/s``.
* ``v < 15``, small ``z``: the power series ``I_v(z) = (z/2)^v/Gamma(v+1)
  sum_k (z^2/4)^k / (k! (v+1)_k)``, kept as ``log1p`` of its tail so that
  ``log I_v`` loses nothing as ``z -> 0``.
* ``v < 15``, larger ``z``: the Wronskian ``I_v = 1 / (z (K_{v+1} + r K_v))``
  with ``r = I_{v+1}/I_v`` from Perron's continued fraction (evaluated
  backwards over a fixed number of terms from an estimate of its tail, so no
  ``while`` loop) and ``K`` from its large-argument (Hankel) expansion at
  orders ``mu, mu + 1`` with ``mu = v - floor(v)``, carried up to ``v`` by the
  forward recurrence of ``K`` (stable: every term is positive).

For a static order every coefficient is computed once in exact rational
arithmetic and rounded; numbers of terms and the regime boundaries depend on
the dtype.

A Python float order selects the regime at trace time; an order given as a
traced 0-d array takes the same regimes with ``lax.cond`` (both under
``vmap``) and coefficients computed in the graph. The order is not
differentiated (its tangent is ignored).

References:
  F. W. J. Olver, "Asymptotics and Special Functions", 1974, ch. 10
  (uniform expansions, the polynomials ``U_k``).
  W. Gautschi and J. Slavik, "On the computation of modified Bessel function
  ratios", Math. Comp. 32 (1978) (Perron's continued fraction).
  NIST DLMF 10.25.2, 10.28.2, 10.29.1, 10.40.2, 10.41.3.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["bessel_iv_ratio", "log_bessel_ive"]

# Orders from which Debye's expansion is used. Below it the expansion needs
# too many terms near z ~ v (its terms stop decreasing before 1e-16).
DEBYE_MIN_ORDER = 15.0

# max over p in [0, 1] of |U_k(p)| (k = 1..24), times 1.05; computed once with
# mpmath at 60 digits. They bound the truncation error of Debye's expansion.
_DEBYE_TERM_BOUNDS = (
    0.0875, 0.0343, 0.0172, 0.0212, 0.0218, 0.0424, 0.0687, 0.179, 0.401, 1.3, 3.73, 14.5,
    50.6, 228.0, 943.0, 4.85e3, 2.31e4, 1.34e5, 7.2e5, 4.63e6, 2.79e7, 1.97e8, 1.31e9, 1.01e10)


class _Settings(NamedTuple):
  tolerance: float  # truncation error allowed in a sum whose value is ~1
  z_split: float    # series for z <= z_split, Wronskian above (orders < 15)
  perron_terms: int  # continued-fraction terms (z >= z_split)


# float32 needs ~1e-8; the float64 settings leave truncation errors < 1e-16.
# Perron's fraction with its tail estimate converges to these tolerances in
# the given number of terms for every order < 15 at z >= z_split.
_SETTINGS = {
    32: _Settings(tolerance=1e-9, z_split=12.0, perron_terms=10),
    64: _Settings(tolerance=1e-17, z_split=22.0, perron_terms=22),
}


def _settings(dtype) -> _Settings:
  return _SETTINGS[64 if jnp.finfo(dtype).bits > 32 else 32]


# ----------------------------------------------------------------------------
# Exact coefficients (static orders).


@functools.lru_cache(maxsize=None)
def _debye_polynomials(count: int) -> tuple[tuple[Fraction, ...], ...]:
  """Coefficients (in powers of p) of Olver's U_0..U_count, exactly.

  ``U_{k+1}(p) = p^2 (1 - p^2) U_k'(p) / 2 + 1/8 int_0^p (1 - 5 t^2) U_k(t) dt``
  (DLMF 10.41.9).
  """
  polys = [(Fraction(1),)]
  for _ in range(count):
    u = polys[-1]
    out = [Fraction(0)] * (len(u) + 3)
    for i, c in enumerate(u):
      if i:  # p^2 (1 - p^2) * i c p^(i-1) / 2
        out[i + 1] += i * c / 2
        out[i + 3] -= i * c / 2
      # (1/8) * integral of c (t^i - 5 t^(i+2))
      out[i + 1] += c / (8 * (i + 1))
      out[i + 3] -= 5 * c / (8 * (i + 3))
    while out and out[-1] == 0:
      out.pop()
    polys.append(tuple(out))
  return tuple(polys)


def _debye_terms(order: float, tolerance: float) -> int:
  """Number of U_k terms whose truncation error bound is below ``tolerance``."""
  for k, bound in enumerate(_DEBYE_TERM_BOUNDS, start=1):
    if bound / order**k < tolerance:
      return k - 1
  raise ValueError(f"Debye's expansion cannot reach {tolerance} at order {order}.")


@functools.lru_cache(maxsize=None)
def _debye_coefficients(order: float,
                        tolerance: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """``sum_k U_k(p) / v^k - 1`` and its p-derivative as polynomials in p.

  Returns the coefficients of ``p^1 .. p^(3K)`` of the sum (its constant term
  is 1 and is left out so that ``log1p`` keeps it exact) and of ``p^0 ..
  p^(3K-1)`` of the derivative.
  """
  terms = _debye_terms(order, tolerance)
  polys = _debye_polynomials(terms)
  inverse = 1 / Fraction(order)
  total = [Fraction(0)] * (3 * terms + 1)
  for k in range(1, terms + 1):
    for j, c in enumerate(polys[k]):
      total[j] += c * inverse**k
  value = tuple(float(c) for c in total[1:])
  derivative = tuple(float(j * c) for j, c in enumerate(total) if j)
  return value, derivative


def _series_length(order: float, q_max: float, tolerance: float) -> int:
  """Terms k = 1..N of ``sum_k q^k / (k! (v+1)_k)`` needed up to ``q_max``."""
  term, total, k = 1.0, 1.0, 0
  while True:
    k += 1
    term *= q_max / (k * (order + k))
    total += term
    if term < tolerance * total and k > q_max / (order + k):
      return k


@functools.lru_cache(maxsize=None)
def _series_coefficients(order: float, q_max: float, count: int) -> tuple[float, ...]:
  """``q_max^k / (k! (v+1)_k)`` for k = 1..count (a polynomial in q / q_max)."""
  v, q = Fraction(order), Fraction(q_max)
  out, c = [], Fraction(1)
  for k in range(1, count + 1):
    c = c * q / (k * (v + k))
    out.append(float(c))
  return tuple(out)


def _hankel_length(mu: float, z_min: float, tolerance: float) -> int:
  """Terms of the large-z expansion of K_mu and K_{mu+1} needed from ``z_min``."""
  count = 0
  for nu in (mu, mu + 1):
    term, k = 1.0, 0
    while abs(term) >= tolerance:
      k += 1
      term *= (4 * nu * nu - (2 * k - 1) ** 2) / (8 * k * z_min)
      if term == 0.0:  # half-integer order: the expansion terminates
        break
    count = max(count, k)
  return count


@functools.lru_cache(maxsize=None)
def _hankel_coefficients(nu: float, z_min: float, count: int) -> tuple[float, ...]:
  """``a_k(nu) / z_min^k``, k = 1..count: ``K_nu(z) ~ sqrt(pi/2z) e^-z sum_k a_k z^-k``."""
  n2, z = 4 * Fraction(nu) ** 2, Fraction(z_min)
  out, c = [], Fraction(1)
  for k in range(1, count + 1):
    c = c * (n2 - (2 * k - 1) ** 2) / (8 * k * z)
    out.append(float(c))
  return tuple(out)


def _log1p(x):
  """``log(1 + x)`` for ``x > -1``, accurate to an ulp.

  XLA's float64 ``log1p`` on CPU is off by up to 2.3e-14 (100 ulps) for ``x``
  in [-0.41, -0.35]; there ``1 + x`` is rounded by at most 1.1e-16 while the
  result is about -0.5, so ``log(1 + x)`` is accurate. (The compensated
  ``log(u) - ((u - 1) - x) / u`` would not survive XLA's simplifier, which
  folds ``(1 + x) - 1 - x`` to 0 under ``jit``.)
  """
  window = (x > -0.45) & (x < -0.3)
  return jnp.where(window, jnp.log(1.0 + x), jnp.log1p(x))


def _horner(coefficients, x):
  """``sum_i coefficients[i] x^i`` (coefficients low to high)."""
  acc = coefficients[-1]
  for c in reversed(coefficients[:-1]):
    acc = acc * x + c
  return acc


# ----------------------------------------------------------------------------
# The regimes. Each returns a _Parts of arrays shaped like z.


class _Parts(NamedTuple):
  """Everything at once; unused outputs are removed by XLA's dead-code pass."""
  log_ive: jax.Array      # log(I_v(z) e^-z)
  log_shift: jax.Array    # v log z - log I_v(z) + z - offset
  log_plain: jax.Array    # v log z - log I_v(z) - offset
  ratio: jax.Array        # I_{v+1}/I_v
  complement: jax.Array   # 1 - I_{v+1}/I_v
  dlog: jax.Array         # d/dz log_ive = ratio + v/z - 1


def _series_parts(order, z, coefficients, next_coefficients, q_max, log_gamma, offset) -> _Parts:
  """Power series in ``q = z^2/4`` (orders < 15, ``z <= z_split``)."""
  q = 0.25 * z * z / q_max
  tail = q * _horner(coefficients, q)                 # S_v(q) - 1
  next_tail = q * _horner(next_coefficients, q)       # S_{v+1}(q) - 1
  decay = jnp.exp(-z)
  scaled = (1.0 + tail) * decay                       # S_v e^-z
  # log(S_v e^-z): through log1p near 1 (v = 0, small z), directly below.
  log_scaled = jnp.where(scaled > 0.5, _log1p(tail * decay + jnp.expm1(-z)),
                         jnp.log(scaled))
  # Constants are combined in Python (float64) before meeting the array.
  constant = order * math.log(2.0) + log_gamma - offset
  if _is_static(order) and order == 0:
    log_ive = log_scaled
  else:
    log_ive = order * jnp.log(0.5 * z) - log_gamma + log_scaled
  ratio = z / (2.0 * (order + 1.0)) * (1.0 + next_tail) / (1.0 + tail)
  return _Parts(
      log_ive=log_ive,
      log_shift=constant - log_scaled,
      log_plain=constant - _log1p(tail),
      ratio=ratio,
      complement=1.0 - ratio,
      dlog=ratio + order / z - 1.0)


def _perron(order, z, terms):
  """``(r, 1 - r)`` with ``r = I_{v+1}/I_v`` from Perron's continued fraction.

  ``r = z / (2v+2+z - a_1/(b_1 - a_2/(b_2 - ...)))`` with
  ``a_k = (2v+2k+1) z``, ``b_k = 2v+2+k+2z`` (Gautschi & Slavik 1978, eq. 3.3),
  divided through by z so that nothing overflows for large z. It is evaluated
  from the back over ``terms`` terms, starting from the tail's fixed point
  ``tau = a/(b - tau)`` at the last (a, b), which removes most of the
  truncation error where the partial quotients vary slowly.
  """
  inv = 1.0 / z
  k = terms + 1
  alpha = (2.0 * order + 2.0 * k + 1.0) * inv
  beta = (2.0 * order + 2.0 + k) * inv + 2.0
  tau = 2.0 * alpha / (beta + jnp.sqrt(beta * beta - 4.0 * alpha))
  for k in range(terms, 0, -1):
    alpha = (2.0 * order + 2.0 * k + 1.0) * inv
    beta = (2.0 * order + 2.0 + k) * inv + 2.0
    tau = alpha / (beta - tau)
  head = (2.0 * order + 2.0) * inv
  denominator = head + 1.0 - tau
  return 1.0 / denominator, (head - tau) / denominator


def _wronskian_parts(order, z, mu, steps, hankel_mu, hankel_next, z_min, perron_terms,
                     offset) -> _Parts:
  """``I_v = 1 / (z (K_{v+1} + r K_v))`` (orders < 15, ``z >= z_split``).

  ``K`` is carried without its common factor ``sqrt(pi/2z) e^-z``:
  ``h_nu = sum_k a_k(nu) z^-k`` at ``nu = mu, mu + 1`` and then
  ``h_{nu+1} = h_{nu-1} + (2 nu / z) h_nu`` up to ``v + 1``.
  """
  w = z_min / z
  h_prev = 1.0 + w * _horner(hankel_mu, w)
  h = 1.0 + w * _horner(hankel_next, w)
  if isinstance(steps, int):
    for j in range(1, steps + 1):
      h_prev, h = h, h_prev + (2.0 * (mu + j) / z) * h
  else:  # traced order: a fixed number of masked steps
    for j in range(1, int(DEBYE_MIN_ORDER) + 1):
      take = j <= steps
      h_prev, h = (jnp.where(take, h, h_prev),
                   jnp.where(take, h_prev + (2.0 * (mu + j) / z) * h, h))
  ratio, complement = _perron(order, z, perron_terms)
  log_sum = jnp.log(h + ratio * h_prev)
  log_z = jnp.log(z)
  log_shift = (order + 0.5) * log_z + (0.5 * math.log(0.5 * math.pi) - offset) + log_sum
  return _Parts(
      log_ive=-0.5 * log_z - 0.5 * math.log(0.5 * math.pi) - log_sum,
      log_shift=log_shift,
      log_plain=log_shift - z,
      ratio=ratio,
      complement=complement,
      dlog=order / z - complement)


def _debye_parts(order, z, sum_coefficients, derivative_coefficients, offset) -> _Parts:
  """Debye's uniform expansion in ``t = z / v`` (orders >= 15).

  ``I_v(vt) ~ e^{v eta} / (sqrt(2 pi v) (1+t^2)^{1/4}) sum_k U_k(p) / v^k``
  with ``eta = s + log(t / (1 + s))`` (DLMF 10.41.3). Differences that would
  cancel are rewritten: ``s - t = 1/(s+t)`` and ``log((1+s)/t) =
  log1p((1 + 1/(s+t))/t)``.
  """
  log_order = jnp.log(order) if not _is_static(order) else math.log(order)
  t = z / order
  s = jnp.hypot(1.0, t)
  p = 1.0 / s
  gap = 1.0 / (s + t)                                  # s - t
  # log((1 + s)/t); log t as log z - log v, which stays finite when z/v underflows.
  log_t = jnp.log(z) - log_order
  log_over_t = jnp.where(t < 1.0, jnp.log(1.0 + t + gap) - log_t, _log1p((1.0 + gap) / t))
  sum_minus_one = p * _horner(sum_coefficients, p)
  log_sum = _log1p(sum_minus_one)
  slope = _horner(derivative_coefficients, p) / (1.0 + sum_minus_one)  # U'(p)/U(p)
  half_log_2piv = 0.5 * (math.log(2.0 * math.pi) + log_order)
  half_log_s = 0.5 * jnp.log(s)
  tp = t * p
  correction = tp * p * (0.5 + p * slope) / order
  log1p_s = _log1p(s)
  return _Parts(
      log_ive=order * (gap - log_over_t) - half_log_2piv - half_log_s + log_sum,
      log_shift=order * (log_order + log1p_s - gap) + (half_log_2piv - offset) + half_log_s
      - log_sum,
      log_plain=order * (log_order + log1p_s - s) + (half_log_2piv - offset) + half_log_s
      - log_sum,
      ratio=t / (1.0 + s) - correction,
      complement=(1.0 + gap) / (1.0 + s) + correction,
      dlog=gap / t - correction)


def _is_static(order) -> bool:
  return isinstance(order, float)


def _select(condition, a: _Parts, b: _Parts) -> _Parts:
  return _Parts(*(jnp.where(condition, x, y) for x, y in zip(a, b)))


# ----------------------------------------------------------------------------
# Static and traced orders.


def _static_parts(order: float, z: jax.Array, offset: float) -> _Parts:
  settings = _settings(z.dtype)
  if order >= DEBYE_MIN_ORDER:
    value, derivative = _debye_coefficients(order, settings.tolerance)
    return _debye_parts(order, z, value, derivative, offset)
  z_split = settings.z_split
  q_max = 0.25 * z_split * z_split
  count = _series_length(order, q_max, settings.tolerance)
  series = _series_parts(
      order, jnp.minimum(z, z_split), _series_coefficients(order, q_max, count),
      _series_coefficients(order + 1.0, q_max, count), q_max, math.lgamma(order + 1.0), offset)
  steps = int(math.floor(order))
  mu = order - steps
  hankel_count = _hankel_length(mu, z_split, settings.tolerance)
  wronskian = _wronskian_parts(
      order, jnp.maximum(z, z_split), mu, steps,
      _hankel_coefficients(mu, z_split, hankel_count),
      _hankel_coefficients(mu + 1.0, z_split, hankel_count), z_split, settings.perron_terms,
      offset)
  return _select(z <= z_split, series, wronskian)


def _traced_series_coefficients(order, q_max, count, dtype):
  k = jnp.arange(1, count + 1, dtype=dtype)
  return list(jnp.cumprod(q_max / (k * (order + k))))


def _traced_hankel_coefficients(nu, z_min, count, dtype):
  k = jnp.arange(1, count + 1, dtype=dtype)
  return list(jnp.cumprod((4.0 * nu * nu - jnp.square(2.0 * k - 1.0)) / (8.0 * k * z_min)))


@functools.lru_cache(maxsize=None)
def _debye_matrix(terms: int) -> tuple[np.ndarray, np.ndarray]:
  """U_k coefficients as a (3K, K) matrix (rows p^1..p^3K) and its p-derivative."""
  polys = _debye_polynomials(terms)
  matrix = np.zeros((3 * terms + 1, terms))
  for k in range(1, terms + 1):
    for j, c in enumerate(polys[k]):
      matrix[j, k - 1] = float(c)
  derivative = matrix[1:] * np.arange(1, 3 * terms + 1)[:, None]
  return matrix[1:], derivative


def _traced_parts(order: jax.Array, z: jax.Array, offset: float) -> _Parts:
  dtype = z.dtype
  settings = _settings(dtype)
  order = order.astype(dtype)
  z_split = settings.z_split
  q_max = 0.25 * z_split * z_split

  def debye(z):
    terms = _debye_terms(DEBYE_MIN_ORDER, settings.tolerance)
    matrix, derivative = _debye_matrix(terms)
    # A traced order below 15 still runs this branch's shapes (lax.cond
    # traces both): keep its arithmetic finite.
    safe = jnp.maximum(order, DEBYE_MIN_ORDER)
    powers = safe ** -jnp.arange(1, terms + 1, dtype=dtype)
    value = list(jnp.asarray(matrix, dtype) @ powers)
    slope = list(jnp.asarray(derivative, dtype) @ powers)
    return _debye_parts(safe, z, value, slope, offset)

  def small(z):
    safe = jnp.where(order < DEBYE_MIN_ORDER, order, 0.0)
    count = _series_length(0.0, q_max, settings.tolerance)
    # lgamma(1) in float32 is off by ~1e-7, which is all of log ive(0, z) for
    # tiny z: use the exact 0 at v = 0.
    log_gamma = jnp.where(safe == 0, 0.0, jax.lax.lgamma(safe + 1.0))
    series = _series_parts(
        safe, jnp.minimum(z, z_split),
        _traced_series_coefficients(safe, q_max, count, dtype),
        _traced_series_coefficients(safe + 1.0, q_max, count, dtype), q_max, log_gamma, offset)
    steps = jnp.floor(safe)
    mu = safe - steps
    hankel_count = max(_hankel_length(m, z_split, settings.tolerance) for m in (0.25, 0.75))
    wronskian = _wronskian_parts(
        safe, jnp.maximum(z, z_split), mu, steps,
        _traced_hankel_coefficients(mu, z_split, hankel_count, dtype),
        _traced_hankel_coefficients(mu + 1.0, z_split, hankel_count, dtype), z_split,
        settings.perron_terms, offset)
    return _select(z <= z_split, series, wronskian)

  return jax.lax.cond(order >= DEBYE_MIN_ORDER, debye, small, z)


def parts(order, z: jax.Array, offset: float = 0.0) -> _Parts:
  """All quantities at positive ``z`` (other entries hold arbitrary finite values).

  For internal use by the distributions. ``offset`` (a Python float) is
  subtracted from ``log_shift`` and ``log_plain`` in float64 before it meets
  the array, so that constants such as ``(v + 1) log(2 pi)`` cost no
  rounding in float32.
  """
  safe_z = jnp.where(z > 0, z, jnp.ones_like(z))
  if _is_static(order):
    return _static_parts(order, safe_z, offset)
  return _traced_parts(order, safe_z, offset)


# ----------------------------------------------------------------------------
# Public functions.


def _is_tracer(x) -> bool:
  return isinstance(x, jax.core.Tracer)


def concrete_value(x):
  """``x`` as a NumPy array when its value is known, else ``None``.

  Plain arrays are; so are the tracers of an eager ``grad``/``jvp`` (they
  carry the concrete input), not those of ``jit`` or ``vmap``. (The same
  rule as :func:`sphereembed.losses.checks.concrete_value`, repeated here to
  keep the distributions free of the losses package.)
  """
  if isinstance(x, jax.core.Tracer):
    try:
      from jax._src import core as jax_core  # pylint: disable=import-outside-toplevel
      x = jax_core.to_concrete_value(x)
    except Exception:  # pylint: disable=broad-except
      return None
    if x is None or isinstance(x, jax.core.Tracer):
      return None
  return np.asarray(x)


def _as_order(v):
  """A Python float when ``v`` is concrete, else the traced 0-d array."""
  if _is_tracer(v):
    if jnp.ndim(v) != 0:
      raise ValueError(f"The order v must be a scalar, got shape {jnp.shape(v)}.")
    return v
  array = np.asarray(v)
  if array.ndim != 0:
    raise ValueError(f"The order v must be a scalar, got shape {array.shape}.")
  if np.iscomplexobj(array) or not (np.issubdtype(array.dtype, np.number)):
    raise ValueError(f"The order v must be a real number, got dtype {array.dtype}.")
  value = float(array)
  if not (value >= 0 and math.isfinite(value)):
    raise ValueError(f"The order v must be finite and >= 0, got {value}.")
  return value


def _as_argument(z, name: str = "z") -> jax.Array:
  z = jnp.asarray(z)
  if jnp.iscomplexobj(z):
    raise ValueError(f"{name} must be real, got dtype {z.dtype}.")
  if not jnp.issubdtype(z.dtype, jnp.floating):
    z = z.astype(jnp.result_type(float))
  # numpy, not jnp: inside a jit trace even a constant's jnp comparison is traced.
  values = concrete_value(z)
  if values is not None and np.any(values < 0):
    raise ValueError(f"{name} must be >= 0 (I_v of a negative argument is not real).")
  return z


def custom_jvp_in_z(evaluate):
  """A function of ``(order, z)`` with a hand-written derivative in ``z``.

  ``evaluate(order, z)`` returns ``(outputs, slopes)``, two pytrees of arrays
  with the structure of ``outputs``; the JVP is ``slopes * dz``. A Python
  float order is a static (non-differentiable) argument; a traced order is
  an ordinary argument whose tangent is ignored.
  """

  @functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
  def static(order, z):
    return evaluate(order, z)[0]

  @static.defjvp
  def _static_jvp(order, primals, tangents):
    (z,), (dz,) = primals, tangents
    outputs, slopes = evaluate(order, z)
    return outputs, jax.tree_util.tree_map(lambda s: (s * dz).astype(s.dtype), slopes)

  @jax.custom_jvp
  def traced(order, z):
    return evaluate(order, z)[0]

  @traced.defjvp
  def _traced_jvp(primals, tangents):
    (order, z), (_, dz) = primals, tangents  # the order is not differentiated
    outputs, slopes = evaluate(order, z)
    return outputs, jax.tree_util.tree_map(lambda s: (s * dz).astype(s.dtype), slopes)

  # Compiled as a unit: called eagerly, the few hundred elementwise operations
  # would otherwise be dispatched (and compiled) one by one.
  static_jit = jax.jit(static, static_argnums=0)
  traced_jit = jax.jit(traced)

  @functools.wraps(evaluate)
  def function(order, z):
    return static_jit(order, z) if _is_static(order) else traced_jit(order, z)

  return function


def _order_is_zero(order):
  return order == 0 if _is_static(order) else jnp.asarray(order) == 0


@custom_jvp_in_z
def _log_ive(order, z):
  """``log ive`` with the limits at ``z = 0`` and NaN below."""
  quantities = parts(order, z)
  zero = _order_is_zero(order)
  at_zero = jnp.where(zero, 0.0, -jnp.inf)
  # z = inf: log(I_v(z) e^-z) ~ -log(2 pi z) / 2 -> -inf, with slope 0.
  infinite = z == jnp.inf
  value = jnp.where(z > 0, jnp.where(infinite, -jnp.inf, quantities.log_ive),
                    jnp.where(z == 0, at_zero, jnp.nan))
  slope = jnp.where(z > 0, jnp.where(infinite, 0.0, quantities.dlog),
                    jnp.where(z == 0, jnp.where(zero, -1.0, jnp.inf), jnp.nan))
  return value.astype(z.dtype), slope.astype(z.dtype)


def _ratio_evaluate(order, z):
  """``(I_{v+1}/I_v, 1 - I_{v+1}/I_v)`` at ``z >= 0``, both free of cancellation.

  For internal use by the distributions: no input checks. The derivative is
  ``r' = 1 - r^2 - (2v+1) r / z`` (absolute error of about ``v`` ulps where
  that difference cancels).
  """
  quantities = parts(order, z)
  # z = inf: the limits 1 and 0 (the expansions would divide inf by inf).
  infinite = z == jnp.inf
  ratio = jnp.where(z > 0, jnp.where(infinite, 1.0, quantities.ratio),
                    jnp.where(z == 0, 0.0, jnp.nan)).astype(z.dtype)
  complement = jnp.where(z > 0, jnp.where(infinite, 0.0, quantities.complement),
                         jnp.where(z == 0, 1.0, jnp.nan))
  complement = complement.astype(z.dtype)
  # r' = 1 - r^2 - (2v+1) r/z = (1 - r)(1 + r) - (2v+1) r/z; r' -> 1/(2v+2) as z -> 0.
  positive = z > 0
  safe_z = jnp.where(positive, z, 1.0)
  slope = jnp.where(positive, complement * (1.0 + ratio) - (2.0 * order + 1.0) * ratio / safe_z,
                    1.0 / (2.0 * order + 2.0))
  slope = jnp.where(infinite, 0.0, slope).astype(z.dtype)
  return (ratio, complement), (slope, -slope)


ratio_and_complement = custom_jvp_in_z(_ratio_evaluate)
def log_bessel_ive(v, z) -> jax.Array:
  """``log(I_v(z) e^{-z})``, the log of the exponentially scaled Bessel function.

  Accurate to a few units in the last place of the dtype's logarithm, in
  float32 and float64, for orders ``v >= 0`` and ``z > 0``: finite where
  ``I_v(z)`` alone overflows (``z`` up to the dtype's maximum) or underflows
  (``z`` down to the smallest normal number, ``v`` in the thousands). The
  derivative in ``z`` is the exact ``I_{v+1}(z)/I_v(z) + v/z - 1`` (a custom
  JVP; see :func:`bessel_iv_ratio`). See the module docstring for the method.

  Args:
    v: the order, a Python float or a 0-d array, ``>= 0``. A concrete order
      selects the method at trace time; a traced one works too (both methods
      are traced). Not differentiated.
    z: array of arguments ``> 0``. ``z = 0`` gives the limit (0 for ``v = 0``,
      ``-inf`` otherwise) and ``z = inf`` the limit ``-inf``; ``z < 0``
      raises when ``z`` is concrete and gives NaN under ``jit``. Integer
      arrays are converted to the default float; complex ones are refused.

  Returns:
    An array of the shape and floating dtype of ``z``.

  Raises:
    ValueError: if ``v`` is negative, not finite or not a scalar, if ``z`` is
      complex, or if a concrete ``z`` has negative entries.

  Example:
    >>> import jax.numpy as jnp
    >>> from sphereembed.distributions import log_bessel_ive
    >>> values = log_bessel_ive(0.5, jnp.array([1e-8, 1.0, 1e4], jnp.float32))
    >>> print(", ".join(f"{x:.7g}" for x in values))
    -9.436132, -1.064352, -5.524109
  """
  return _log_ive(_as_order(v), _as_argument(z))


def bessel_iv_ratio(v, z) -> jax.Array:
  """``I_{v+1}(z) / I_v(z)``, accurate in relative terms for all ``z >= 0``.

  It is the derivative of ``log I_v(z) - v log z`` and, at ``v = d/2 - 1``,
  the mean resultant length of a von Mises-Fisher distribution on the
  sphere in ``R^d``. It behaves as ``z / (2v + 2)`` as ``z -> 0`` and as
  ``1 - (2v+1)/(2z)`` as ``z -> inf``, and is computed without the
  cancellation of either limit. Differentiable in ``z`` through the identity
  ``r' = 1 - r^2 - (2v+1) r / z``.

  Args:
    v: the order, a Python float or a 0-d array, ``>= 0``.
    z: array of arguments ``>= 0`` (0 gives 0 and ``inf`` the limit 1; see
      :func:`log_bessel_ive` for negative entries).

  Returns:
    An array of the shape and floating dtype of ``z``.

  Raises:
    ValueError: as :func:`log_bessel_ive`.

  Example:
    >>> import jax.numpy as jnp
    >>> from sphereembed.distributions import bessel_iv_ratio
    >>> values = bessel_iv_ratio(1.0, jnp.array([0.0, 1e-6, 1.0, 1e6], jnp.float32))
    >>> print(", ".join(f"{x:.7g}" for x in values))
    0, 2.5e-07, 0.2401937, 0.9999985
  """
  return ratio_and_complement(_as_order(v), _as_argument(z))[0]
