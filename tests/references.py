"""Shared brute-force references for the tests: float64, explicit loops, no library code."""

import math

import jax
import numpy as np


def ref_distance(u, v, metric: str) -> float:
  """One distance of `sphereembed.geometry`'s metrics, by the textbook formula."""
  u = np.asarray(u, np.float64)
  v = np.asarray(v, np.float64)
  squared = 0.0
  for k in range(u.shape[0]):
    squared += (u[k] - v[k]) ** 2
  if metric == "squared_euclidean":
    return squared
  if metric == "euclidean":
    return math.sqrt(squared)
  if metric == "cosine":
    dot = 0.0
    for k in range(u.shape[0]):
      dot += u[k] * v[k]
    return 1.0 - dot
  if metric == "great_circle":
    return 2.0 * math.asin(min(math.sqrt(squared) / 2.0, 1.0))
  raise AssertionError(metric)


def numeric_grad(f, x, eps=1e-6):
  """Central finite differences of the scalar function `f` at `x` (float64)."""
  x = np.asarray(x, np.float64)
  grad = np.zeros_like(x)
  for index in np.ndindex(*x.shape):
    step = np.zeros_like(x)
    step[index] = eps
    grad[index] = (float(f(x + step)) - float(f(x - step))) / (2 * eps)
  return grad


def ref_angle_distance(u, v, metric: str) -> float:
  """Like `ref_distance`, but cosine clamped at 0 and the great-circle angle by
  Kahan's atan2 form (an independent formula, accurate on the whole sphere)."""
  u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
  squared = sum((a - b) ** 2 for a, b in zip(u, v))
  if metric == "euclidean":
    return math.sqrt(squared)
  if metric == "squared_euclidean":
    return squared
  if metric == "cosine":
    return max(0.0, 1.0 - sum(a * b for a, b in zip(u, v)))
  plus = math.sqrt(sum((a + b) ** 2 for a, b in zip(u, v)))
  return 2.0 * math.atan2(math.sqrt(squared), plus)


def jit_fast_compile(fn, **kwargs):
  """``jax.jit`` with LLVM optimisation level 0 for the test programs.

  The loss tests compile about a hundred small programs and run each a few
  times; level 0 halves the compile time. XLA's HLO passes still run and
  fast-math is off either way, so the numerics do not change (the jit ==
  eager tests compare with the default pipeline).
  """
  return jax.jit(fn, compiler_options={"xla_backend_optimization_level": 0}, **kwargs)
