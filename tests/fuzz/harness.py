"""The engine of the fuzz battery: runs one call in every mode and checks the contract.

A :class:`Call` is a function of arrays with its inputs. :func:`check_call`
runs it eagerly, under ``jit``, under ``jax.grad`` (eagerly) and under
``jit(grad)``, each with a time limit, and returns the broken promises:

* no hang: every mode returns within ``TIMEOUT_S`` (compilation included);
* no internal error: the only exception allowed is a clean ``ValueError``
  (never a ``ConcretizationTypeError``, a zero-size reduction, a
  ``TypeError``...);
* the eager contract: an eager call either raises ``ValueError`` or returns
  finite values (``allow_inf`` marks the documented infinite limits), and an
  eager ``grad`` raises exactly when the eager value does (the value checks
  see through ``grad``'s tracers) and is finite otherwise;
* eager == jit: values (and gradients) agree within a few ulps of the
  output's scale; ``jit(grad)`` is finite where the eager gradient is;
* ``expect_error``: calls built outside the documented domain (NaN
  hyper-parameters, complex arrays, ...) must raise ``ValueError`` eagerly;
  with ``expect_error_jit`` also under ``jit`` (Python-number
  hyper-parameters are checked at trace time).
"""

from __future__ import annotations

import dataclasses
import threading
import traceback
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

TIMEOUT_S = 120.0


@dataclasses.dataclass
class Call:
  """One function call to fuzz.

  Attributes:
    name: a label for reports.
    fn: a function of ``args`` returning an array or a pytree of arrays.
    args: the positional arguments (arrays, or anything ``fn`` takes).
    diff: the index of the argument to differentiate (``None``: no gradient
      modes; the output's leaves are summed into a scalar).
    allow_inf: infinite values in the output are documented (not a failure).
    expect_error: the eager call must raise ``ValueError``.
    expect_error_jit: so must the ``jit`` call (trace-time checks).
    jit: run the ``jit`` modes (``False`` for NumPy-only functions).
    static: indices of ``args`` passed as static (not traced) under ``jit``.
  """

  name: str
  fn: Callable[..., Any]
  args: tuple
  diff: int | None = 0
  allow_inf: bool = False
  expect_error: bool = False
  expect_error_jit: bool = False
  jit: bool = True
  static: tuple[int, ...] = ()


class Hang(Exception):
  pass


def _with_timeout(thunk, seconds: float):
  """``thunk()`` in a daemon thread; ``Hang`` if it has not returned after ``seconds``."""
  box: dict[str, Any] = {}

  def target():
    try:
      box["value"] = jax.block_until_ready(thunk())
    except BaseException as error:  # pylint: disable=broad-except
      box["error"] = error

  thread = threading.Thread(target=target, daemon=True)
  thread.start()
  thread.join(seconds)
  if thread.is_alive():
    raise Hang(f"no result after {seconds:.0f} s")
  if "error" in box:
    raise box["error"]
  return box["value"]


def _leaves(tree) -> list[np.ndarray]:
  return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(tree)]


def _scalar(fn, diff):
  def scalar(*args):
    out = fn(*args)
    return sum(jnp.sum(jnp.asarray(leaf, jnp.result_type(float)))
               for leaf in jax.tree_util.tree_leaves(out) if jnp.issubdtype(
                   jnp.asarray(leaf).dtype, jnp.floating))
  del diff
  return scalar


def _jitted(fn, static):
  return jax.jit(fn, static_argnums=static) if static else jax.jit(fn)


def _outcome(thunk):
  """``("ok", value)``, ``("value_error", message)`` or ``("internal", text)`` / ``("hang", text)``."""
  try:
    return "ok", _with_timeout(thunk, TIMEOUT_S)
  except ValueError as error:
    # A ValueError subclass raised by JAX itself is an internal error.
    if type(error).__module__.startswith("jax") or "Tracer" in type(error).__name__:
      return "internal", f"{type(error).__name__}: {error}"
    return "value_error", str(error)
  except Hang as error:
    return "hang", str(error)
  except Exception as error:  # pylint: disable=broad-except
    text = "".join(traceback.format_exception_only(type(error), error)).strip()
    return "internal", text[:600]


def _nonfinite(tree, allow_inf: bool) -> str | None:
  for leaf in _leaves(tree):
    if leaf.dtype.kind not in "fc":
      continue
    bad = np.isnan(leaf) if allow_inf else ~np.isfinite(leaf)
    if np.any(bad):
      return f"{int(np.sum(bad))} non-finite of {leaf.size} (e.g. {leaf[bad].ravel()[:3]})"
  return None


def _tolerance(leaf: np.ndarray) -> tuple[float, float]:
  if leaf.dtype == np.float64:
    return 1e-9, 1e-9
  return 2e-4, 2e-4


def _mismatch(a, b) -> str | None:
  la, lb = _leaves(a), _leaves(b)
  if len(la) != len(lb):
    return f"{len(la)} leaves against {len(lb)}"
  for x, y in zip(la, lb):
    if x.shape != y.shape:
      return f"shape {x.shape} against {y.shape}"
    if x.dtype.kind not in "fc":
      if not np.array_equal(x, y):
        return "integer/bool outputs differ"
      continue
    finite = np.isfinite(x) & np.isfinite(y)
    if not np.array_equal(np.isfinite(x), np.isfinite(y)):
      return "finite in one mode, not in the other"
    if not np.all(x[~finite] == y[~finite]) and not np.all(np.isnan(x[~finite]) == np.isnan(y[~finite])):
      return "different infinities"
    if not finite.any():
      continue
    rtol, atol = _tolerance(x)
    scale = float(np.max(np.abs(x[finite])))
    error = np.abs(x[finite].astype(np.float64) - y[finite].astype(np.float64))
    if np.any(error > atol * max(scale, 1.0) + rtol * np.abs(x[finite])):
      return f"max difference {float(np.max(error)):.3g} at output scale {scale:.3g}"
  return None


def check_call(call: Call, *, grad: bool = True, jit_grad: bool = True) -> list[str]:
  """Runs ``call`` in every mode; returns the failures (empty when the contract holds)."""
  failures = []
  fail = lambda mode, text: failures.append(f"{call.name} [{mode}]: {text}")  # noqa: E731
  args = call.args

  kind, eager = _outcome(lambda: call.fn(*args))
  if kind in ("internal", "hang"):
    fail("eager", f"{kind}: {eager}")
    return failures
  if call.expect_error and kind != "value_error":
    fail("eager", "accepted an input outside the documented domain (expected ValueError)")
  if kind == "ok":
    bad = _nonfinite(eager, call.allow_inf)
    if bad:
      fail("eager", f"non-finite output from accepted input: {bad}")

  if call.jit:
    jit_kind, jitted = _outcome(lambda: _jitted(call.fn, call.static)(*args))
    if jit_kind in ("internal", "hang"):
      fail("jit", f"{jit_kind}: {jitted}")
    elif call.expect_error_jit and jit_kind != "value_error":
      fail("jit", "accepted a hyper-parameter outside the domain (expected ValueError)")
    elif kind == "ok":
      if jit_kind != "ok":
        fail("jit", f"raised where the eager call did not: {jitted}")
      else:
        text = _mismatch(eager, jitted)
        if text:
          fail("jit", f"eager != jit: {text}")

  if call.diff is None or not grad:
    return failures
  scalar = _scalar(call.fn, call.diff)
  grad_kind, gradient = _outcome(lambda: jax.grad(scalar, argnums=call.diff)(*args))
  if grad_kind in ("internal", "hang"):
    fail("grad", f"{grad_kind}: {gradient}")
    return failures
  if kind == "value_error" and grad_kind != "value_error":
    fail("grad", "the eager value raised ValueError but the eager gradient did not")
  if kind == "ok":
    if grad_kind != "ok":
      fail("grad", f"raised where the value did not: {gradient}")
      return failures
    bad = _nonfinite(gradient, False)
    if bad and not call.allow_inf:
      fail("grad", f"non-finite gradient: {bad}")
  if call.jit and jit_grad and kind == "ok" and grad_kind == "ok":
    jg_kind, jit_gradient = _outcome(
        lambda: _jitted(jax.grad(scalar, argnums=call.diff), call.static)(*args))
    if jg_kind != "ok":
      fail("jit(grad)", f"{jg_kind}: {jit_gradient}")
    else:
      bad = _nonfinite(jit_gradient, False)
      if bad and not call.allow_inf:
        fail("jit(grad)", f"non-finite gradient: {bad}")
  return failures
