"""log_bessel_ive and bessel_iv_ratio against mpmath, in float64 and float32.

References are computed here with mpmath at 40 digits (cached per point). In
float32 the reference is the exact value at the float32-rounded input, so
the errors measure the function, not the rounding of its argument.
"""

from __future__ import annotations

import functools
from fractions import Fraction

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest

from sphereembed.distributions import bessel, bessel_iv_ratio, log_bessel_ive

# One order per method and boundary (tests/distributions/test_von_mises_fisher.py
# covers the orders d/2 - 1 of the vMF grid through the same code).
ORDERS = (0.0, 0.5, 3.0, 14.5, 15.0, 2047.0)
# Half decades from 1e-8 to 1e5, the regime boundaries, and random points.
ARGUMENTS = np.unique(np.concatenate([
    np.logspace(-8, 5, 27), [11.9, 12.1, 21.9, 22.1],
    10 ** np.random.default_rng(0).uniform(-8, 5, 6)]))
TOLERANCE = {np.float64: 1e-13, np.float32: 2e-6}


@functools.lru_cache(maxsize=None)
def debye_polynomials(count):
  """Olver's U_0..U_count as coefficient lists in p (DLMF 10.41.9), exactly."""
  polys = [[Fraction(1)]]
  for _ in range(count):
    u = polys[-1]
    out = [Fraction(0)] * (len(u) + 3)
    for i, c in enumerate(u):
      out[i + 1] += i * c / 2 + c / (8 * (i + 1))
      out[i + 3] += -i * c / 2 - 5 * c / (8 * (i + 3))
    polys.append(out)
  return polys


def debye_log_i(order, z_mp):
  """log I_v(z) from 16 terms of Debye's expansion in 40-digit arithmetic.

  Only for orders >= 1000, where the truncation error is below 1e-45; mpmath's
  series needs seconds per point there for z in the tens of thousands.
  """
  v = mpmath.mpf(order)
  t = z_mp / v
  s = mpmath.sqrt(1 + t * t)
  p = 1 / s
  total = sum(sum(mpmath.mpf(c.numerator) / c.denominator * p**j for j, c in enumerate(u)) / v**k
              for k, u in enumerate(debye_polynomials(16)))
  eta = s + mpmath.log(t / (1 + s))
  return v * eta - mpmath.log(2 * mpmath.pi * v) / 2 - mpmath.log(s) / 2 + mpmath.log(total)


@functools.lru_cache(maxsize=None)
def reference(order: float, z: float) -> tuple[float, float]:
  """``(log(I_v(z) e^-z), I_{v+1}(z)/I_v(z))`` with mpmath at 40 digits."""
  with mpmath.workdps(40):
    z_mp = mpmath.mpf(z)
    if order >= 1000 and 3000 < z < 2e5:
      log_i, log_next = debye_log_i(order, z_mp), debye_log_i(order + 1, z_mp)
    else:
      log_i = mpmath.log(mpmath.besseli(order, z_mp))
      log_next = mpmath.log(mpmath.besseli(order + 1, z_mp))
    return float(log_i - z_mp), float(mpmath.exp(log_next - log_i))


def references(order, z):
  return np.array([reference(order, float(x)) for x in np.asarray(z, np.float64)])


def relative_error(value, ref):
  return np.abs(np.asarray(value, np.float64) - ref) / np.abs(ref)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("order", ORDERS)
def test_values_ratio_and_derivative_match_mpmath(order, dtype):
  z = jnp.asarray(ARGUMENTS, dtype)
  ref = references(order, z)

  @jax.jit
  def evaluate(z):
    slope = jax.vmap(jax.grad(lambda z: log_bessel_ive(order, z)))(z)
    return log_bessel_ive(order, z), bessel_iv_ratio(order, z), slope

  value, ratio, slope = evaluate(z)
  for out in (value, ratio, slope):
    assert out.dtype == dtype
    assert np.all(np.isfinite(out))
  tolerance = TOLERANCE[dtype]
  assert np.max(relative_error(value, ref[:, 0])) <= tolerance
  assert np.max(relative_error(ratio, ref[:, 1])) <= tolerance
  # d/dz log ive = r + v/z - 1 crosses 0 (the maximum of ive), so its error is
  # measured against the size of its terms.
  z64 = np.asarray(z, np.float64)
  exact = ref[:, 1] + order / z64 - 1.0
  scale = ref[:, 1] + order / z64 + 1.0
  assert np.max(np.abs(np.asarray(slope, np.float64) - exact) / scale) <= tolerance


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_finite_at_the_ends_of_the_range(dtype):
  info = jnp.finfo(dtype)
  z = jnp.asarray([float(info.tiny) * 4, 1e-30, 1e30, float(info.max) / 4], dtype)
  for order in (0.0, 14.9, 5000.0):

    @jax.jit
    def evaluate(z):
      # The derivative ~ v/z overflows only where v/z does: skip the tiniest z.
      slope = jax.vmap(jax.grad(lambda z: log_bessel_ive(order, z)))(z[1:])
      return log_bessel_ive(order, z), bessel_iv_ratio(order, z), slope

    for out in evaluate(z):
      assert np.all(np.isfinite(out)), (order, out)


def test_known_limits():
  z = jnp.asarray([1e-300, 1e300])
  # ive(0, z) -> 1 - z as z -> 0; ive(v, z) -> 1/sqrt(2 pi z) as z -> inf.
  assert float(log_bessel_ive(0.0, z[:1])[0]) == pytest.approx(-1e-300, rel=1e-15)
  assert float(log_bessel_ive(2.0, z[1:])[0]) == pytest.approx(
      -0.5 * np.log(2 * np.pi * 1e300), rel=1e-15)
  # Half-integer orders have closed forms: ive(1/2, z) = (1 - e^{-2z}) / sqrt(2 pi z).
  x = np.array([1e-5, 0.3, 2.0, 40.0])
  closed = np.log(-np.expm1(-2 * x) / np.sqrt(2 * np.pi * x))
  np.testing.assert_allclose(log_bessel_ive(0.5, jnp.asarray(x)), closed, rtol=1e-15)


def test_zero_and_negative_arguments():
  z = jnp.asarray([0.0, 1.0])
  assert float(log_bessel_ive(0.0, z)[0]) == 0.0
  assert float(log_bessel_ive(1.5, z)[0]) == -np.inf
  assert float(bessel_iv_ratio(1.5, z)[0]) == 0.0
  assert float(jax.grad(lambda z: log_bessel_ive(0.0, z))(0.0)) == -1.0
  with pytest.raises(ValueError, match=">= 0"):
    log_bessel_ive(1.0, jnp.asarray([-1.0, 1.0]))
  with pytest.raises(ValueError, match=">= 0"):
    bessel_iv_ratio(1.0, -2.0)
  # Under jit the check cannot run: negative arguments give NaN.
  assert np.isnan(jax.jit(lambda z: log_bessel_ive(1.0, z))(jnp.asarray([-1.0]))[0])


@pytest.mark.parametrize("order", [-1.0, float("nan"), float("inf"), np.array([1.0, 2.0])])
def test_bad_orders_raise(order):
  with pytest.raises(ValueError, match="order"):
    log_bessel_ive(order, jnp.asarray([1.0]))


def test_traced_order_matches_static_order():
  # float64 only: a traced order compiles both methods, which takes a while.
  dtype = np.float64
  z = jnp.asarray(ARGUMENTS, dtype)
  tolerance = 50 * float(jnp.finfo(dtype).eps)

  @jax.jit
  def traced(order, z):
    return log_bessel_ive(order, z), bessel_iv_ratio(order, z)

  # Orders on both sides of the Debye threshold (static ones compiled above).
  for order in (0.0, 0.5, 14.5, 15.0, 2047.0):
    value, ratio = traced(jnp.asarray(order, dtype), z)
    np.testing.assert_allclose(value, log_bessel_ive(order, z), rtol=tolerance, atol=0)
    np.testing.assert_allclose(ratio, bessel_iv_ratio(order, z), rtol=tolerance, atol=0)
  # vmap over the order: lax.cond becomes a select of both methods.
  orders = jnp.asarray([0.0, 0.5, 14.5, 2047.0], dtype)
  batched = jax.jit(jax.vmap(lambda v: log_bessel_ive(v, z)))(orders)
  for row, order in zip(batched, orders):
    np.testing.assert_allclose(row, log_bessel_ive(float(order), z), rtol=tolerance, atol=0)


def test_jit_equals_eager_and_vmap():
  z = jnp.asarray(ARGUMENTS)
  order = 3.0
  eager = log_bessel_ive(order, z)  # compiled internally, as a unit
  np.testing.assert_array_equal(jax.jit(lambda z: log_bessel_ive(order, z))(z), eager)
  np.testing.assert_array_equal(
      jax.vmap(lambda row: log_bessel_ive(order, row))(z.reshape(-1, 1)).ravel(), eager)


def test_ratio_derivative_matches_finite_differences():
  z = ARGUMENTS[(ARGUMENTS > 1e-3) & (ARGUMENTS < 1e4)]
  for order in (0.0, 2047.0):
    slope = jax.jit(jax.vmap(jax.grad(lambda z: bessel_iv_ratio(order, z))))(jnp.asarray(z))
    h = 1e-6 * z
    fd = (np.asarray(bessel_iv_ratio(order, jnp.asarray(z + h)))
          - np.asarray(bessel_iv_ratio(order, jnp.asarray(z - h)))) / (2 * h)
    np.testing.assert_allclose(slope, fd, rtol=1e-5)


def test_integer_input_and_dtype():
  assert log_bessel_ive(1.0, 3).dtype == jnp.result_type(float)
  assert log_bessel_ive(1.0, jnp.asarray([1.0], jnp.float32)).dtype == jnp.float32


def test_log1p_replacement_is_accurate_under_jit():
  # XLA's float64 log1p is off by ~100 ulps on [-0.41, -0.35].
  x = np.linspace(-0.5, -0.2, 3001)
  got = np.asarray(jax.jit(bessel._log1p)(jnp.asarray(x)))
  np.testing.assert_allclose(got, np.log1p(x), rtol=4e-16, atol=0)
