"""Input checks and ranking helpers shared by the evaluation modules and the plots.

Every metric in :mod:`sphereembed.evaluation` (and every plot in
:mod:`sphereembed.plotting`) validates its arrays with these helpers, so the
same mistake gives the same message everywhere: a ``ValueError`` naming the
argument. They take NumPy or JAX arrays (or lists) and return NumPy arrays.

Example:
  >>> from sphereembed.evaluation import checks
  >>> checks.binary([1, 0, True], "correct").tolist()
  [True, False, True]
  >>> checks.unit_interval([0.2, 1.5], "confidences")
  Traceback (most recent call last):
  ...
  ValueError: confidences must lie in [0, 1], got values in [0.2, 1.5].
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "binary",
    "check_fraction",
    "count",
    "expected_prefix_sums",
    "finite_vector",
    "real_array",
    "real_scalar",
    "same_length",
    "unit_interval",
    "vector",
]


def real_array(values, name: str) -> np.ndarray:
  """``values`` as a float64 array; complex (or non-numeric) input raises ``ValueError``.

  ``np.asarray(z, np.float64)`` of a complex ``z`` would drop the imaginary
  part with only a warning.
  """
  array = np.asarray(values)
  if np.iscomplexobj(array) or not (np.issubdtype(array.dtype, np.number)
                                    or array.dtype == np.bool_):
    raise ValueError(f"{name} must hold real numbers, got dtype {array.dtype}.")
  return array.astype(np.float64)


def real_scalar(value, name: str, *, allow_inf: bool = True) -> float:
  """``value`` as a Python float; complex, non-scalar or NaN (and ``inf`` unless allowed) raise."""
  array = np.asarray(value)
  if array.ndim != 0:
    raise ValueError(f"{name} must be a scalar, got shape {array.shape}.")
  number = float(real_array(array, name))
  if math.isnan(number) or (not allow_inf and math.isinf(number)):
    raise ValueError(f"{name} must be a number{'' if allow_inf else ' (finite)'}, got {number}.")
  return number


def vector(values, name: str) -> np.ndarray:
  """A non-empty 1-D float64 array without NaN (infinities are allowed); not complex."""
  array = np.asarray(values)
  if array.ndim != 1:
    raise ValueError(f"{name} must be a 1-D array, got shape {array.shape}.")
  if array.size == 0:
    raise ValueError(f"{name} is empty.")
  if np.iscomplexobj(array) or not (np.issubdtype(array.dtype, np.number)
                                    or array.dtype == np.bool_):
    raise ValueError(f"{name} must be real numbers, got dtype {array.dtype}.")
  array = array.astype(np.float64)
  if np.isnan(array).any():
    raise ValueError(f"{name} contains NaN.")
  return array


def finite_vector(values, name: str) -> np.ndarray:
  """A :func:`vector` without infinite values either."""
  array = vector(values, name)
  if not np.isfinite(array).all():
    raise ValueError(f"{name} contains infinite values.")
  return array


def unit_interval(values, name: str) -> np.ndarray:
  """A 1-D float64 array with every value in [0, 1]."""
  array = vector(values, name)
  if array.min() < 0 or array.max() > 1:
    raise ValueError(
        f"{name} must lie in [0, 1], got values in [{array.min():g}, {array.max():g}].")
  return array


def binary(values, name: str) -> np.ndarray:
  """A 1-D bool array from bools or the numbers 0 and 1."""
  array = vector(values, name)
  if not np.isin(array, (0.0, 1.0)).all():
    raise ValueError(f"{name} must hold bools or the values 0 and 1.")
  return array.astype(bool)


def same_length(**arrays) -> int:
  """The common length of the keyword arguments; ``ValueError`` naming them all if they differ."""
  lengths = {name: len(array) for name, array in arrays.items()}
  if len(set(lengths.values())) != 1:
    raise ValueError(f"Length mismatch: {lengths}.")
  return next(iter(lengths.values()))


def count(fraction: float, n: int) -> int:
  """``ceil(fraction * n)``, with the product rounded to 9 decimals first.

  The rounding keeps float noise from adding a sample: ``0.07 * 100`` is
  ``7.000000000000001`` in floating point and must give 7.
  """
  return max(1, math.ceil(round(fraction * n, 9)))


def check_fraction(value: float, name: str) -> float:
  """``value`` as a float in ``(0, 1]``, else ``ValueError`` naming it."""
  value = real_scalar(value, name)
  if not 0 < value <= 1:
    raise ValueError(f"{name} must lie in (0, 1], got {value}.")
  return value


def expected_prefix_sums(keys: np.ndarray, values: np.ndarray) -> np.ndarray:
  """``E[sum of values over the k samples with the largest keys]`` for k = 1..N.

  Samples with equal keys are taken in a random order and the expectation is
  over that order: inside a tied group the sum grows linearly by the group's
  mean value per sample taken.
  """
  order = np.argsort(-keys, kind="stable")
  sorted_keys, sorted_values = keys[order], values[order]
  n = len(keys)
  # `!=` rather than np.diff: two equal infinite keys differ by NaN.
  starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
  sizes = np.diff(np.r_[starts, n])
  group_sums = np.add.reduceat(sorted_values, starts)
  before = np.r_[0.0, np.cumsum(group_sums)[:-1]]
  group = np.repeat(np.arange(len(starts)), sizes)
  taken = np.arange(1, n + 1) - starts[group]
  return before[group] + taken * (group_sums / sizes)[group]
