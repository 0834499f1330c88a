"""Input checks of the losses, public for every module that takes embeddings and labels.

Two kinds of checks guard every loss (and :mod:`sphereembed.centroids`,
:mod:`sphereembed.data.pairs`, :mod:`sphereembed.laplace.ggn`):

* static checks (``check_*``: shapes, dtypes, ranks) run on every call, also
  under ``jit`` and ``vmap``, because they only need the abstract shapes;
* value checks (``validate_*``: NaN/inf embeddings, labels out of range or
  not 0/1) need concrete values. They run automatically when a loss is called
  outside ``jit`` (eagerly, with concrete arrays, see
  :func:`validate_if_concrete`), also when the call is differentiated
  eagerly (``jax.grad(loss)(x)``: the tracers of ``grad`` and ``jvp`` carry
  the concrete input, see :func:`concrete_value`). Inside a jitted step, call
  them on the host batch. They are also re-exported by :mod:`sphereembed.losses`;
* hyper-parameters (margins, temperatures, weights of terms) are checked by
  :func:`validate_scalar` whenever their value is known: Python numbers
  always, also under ``jit``; concrete arrays outside ``jit``.

The magnitude of the embeddings a loss supports is bounded by
:func:`max_norm`: squared distances summed over all pairs of the batch must be
representable in the dtype. Outside ``jit`` a larger norm raises
``ValueError``; under ``jit`` it may give ``inf`` or NaN.

Example:
  >>> import numpy as np
  >>> from sphereembed.losses import checks
  >>> checks.check_labels(np.array([0, 1, 1]), 3).shape
  (3,)
  >>> checks.validate_labels(np.array([0, 3]), num_classes=3)
  Traceback (most recent call last):
  ...
  ValueError: labels must be < num_classes = 3, got maximum 3.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "check_embeddings",
    "check_labels",
    "check_scalar",
    "check_weights",
    "concrete_value",
    "is_concrete",
    "max_norm",
    "validate_embeddings",
    "validate_if_concrete",
    "validate_labels",
    "validate_magnitude",
    "validate_scalar",
    "validate_weights",
]


def concrete_value(x):
  """The value of ``x`` as a NumPy array, or ``None`` when it is not known at trace time.

  Plain arrays and Python numbers are their own value. A JAX tracer has a
  value when it is traced by ``grad``/``jvp``/``linearize`` of concrete
  inputs (an eager ``jax.grad(loss)(x)``), not under ``jit``, ``vmap`` or
  ``eval_shape``.
  """
  if x is None:
    return None
  if isinstance(x, jax.core.Tracer):
    try:
      from jax._src import core as jax_core  # pylint: disable=import-outside-toplevel
      value = jax_core.to_concrete_value(x)
    except Exception:  # pylint: disable=broad-except
      return None
    if value is None or isinstance(value, jax.core.Tracer):
      return None
    x = value
  return np.asarray(x)


def is_concrete(*arrays) -> bool:
  """True when every argument's value is known (see :func:`concrete_value`); ``None`` is skipped."""
  return all(concrete_value(a) is not None for a in arrays if a is not None)


def max_norm(dtype, batch_size: int = 1) -> float:
  """The largest embedding norm the losses support: ``sqrt(finfo.max) / (2 max(B, 1))``.

  Squared distances (at most ``4 max ||x||^2``) summed over the ``B^2``
  pairs of a batch then stay representable: about ``9.2e18 / B`` in float32
  and ``6.7e153 / B`` in float64.
  """
  return math.sqrt(float(jnp.finfo(dtype).max)) / (2.0 * max(int(batch_size), 1))


def check_embeddings(embeddings, name: str = "embeddings", ndim: int = 2) -> jax.Array:
  """Static checks: a floating array of rank ``ndim``. Returns it as a jax array."""
  embeddings = jnp.asarray(embeddings)
  if embeddings.ndim != ndim:
    shape = "(B, D)" if ndim == 2 else f"rank {ndim}"
    raise ValueError(f"{name} must have shape {shape}, got shape {embeddings.shape}.")
  if not jnp.issubdtype(embeddings.dtype, jnp.floating):
    raise ValueError(f"{name} must have a floating dtype, got {embeddings.dtype}.")
  return embeddings


def check_labels(labels, batch_size: int, *, allow_multi_hot: bool = True) -> jax.Array:
  """Static checks: int class ids ``(B,)`` or multi-hot ``(B, C)``."""
  labels = jnp.asarray(labels)
  if labels.ndim == 1:
    if not jnp.issubdtype(labels.dtype, jnp.integer):
      raise ValueError(
          f"labels of shape (B,) must be integer class ids, got dtype {labels.dtype}.")
  elif labels.ndim == 2 and allow_multi_hot:
    if not (jnp.issubdtype(labels.dtype, jnp.integer) or labels.dtype == jnp.bool_
            or jnp.issubdtype(labels.dtype, jnp.floating)):
      raise ValueError(f"multi-hot labels must be bool, integer or float, got {labels.dtype}.")
  else:
    expected = "(B,) int class ids or (B, C) multi-hot" if allow_multi_hot else "(B,) int class ids"
    raise ValueError(f"labels must have shape {expected}, got shape {labels.shape}.")
  if labels.shape[0] != batch_size:
    raise ValueError(
        f"labels have {labels.shape[0]} rows but the batch has {batch_size} embeddings.")
  return labels


def check_weights(weights, batch_size: int, dtype) -> jax.Array | None:
  """Static checks for optional per-sample weights of shape ``(B,)``."""
  if weights is None:
    return None
  weights = jnp.asarray(weights)
  if weights.shape != (batch_size,):
    raise ValueError(f"weights must have shape ({batch_size},), got {weights.shape}.")
  if not jnp.issubdtype(weights.dtype, jnp.floating) and not jnp.issubdtype(weights.dtype, jnp.integer):
    raise ValueError(f"weights must be numeric, got dtype {weights.dtype}.")
  return weights.astype(dtype)


def check_scalar(value, name: str, dtype) -> jax.Array:
  """Static check: a real scalar (shape ``()``; a tracer is fine), cast to ``dtype``.

  For hyperparameters such as a margin or temperature and for learned scalar
  parameters; the cast keeps the loss in the embeddings' precision.
  """
  value = jnp.asarray(value)
  if value.ndim != 0:
    raise ValueError(
        f"{name} must be a scalar, got shape {value.shape} (use .reshape(()) for a size-1 array).")
  if not (jnp.issubdtype(value.dtype, jnp.floating) or jnp.issubdtype(value.dtype, jnp.integer)):
    raise ValueError(f"{name} must be a real number, got dtype {value.dtype}.")
  return value.astype(dtype)


def validate_scalar(value, name: str, *, minimum: float | None = None,
                    maximum: float | None = None, strict: bool = False,
                    allow_inf: bool = False, strict_maximum: bool | None = None) -> None:
  """Raises ``ValueError`` for a hyper-parameter that is not a real number in range.

  Runs whenever the value is known (:func:`concrete_value`): for Python
  numbers always, also under ``jit``. Refuses complex values, NaN, infinities
  (unless ``allow_inf``) and values below ``minimum`` / above ``maximum``
  (``strict``: the bounds themselves are refused too; ``strict_maximum``, when
  given, decides it for ``maximum`` alone).
  """
  strict_maximum = strict if strict_maximum is None else strict_maximum
  host = concrete_value(value)
  if host is None:
    return
  if np.iscomplexobj(host) or not (np.issubdtype(host.dtype, np.number) or host.dtype == np.bool_):
    raise ValueError(f"{name} must be a real number, got dtype {host.dtype}.")
  values = host.astype(np.float64)
  if values.size == 0:
    return
  shown = (f"{float(values.reshape(-1)[0])!r}" if values.size == 1
           else f"values in [{values.min()}, {values.max()}]")
  if np.any(np.isnan(values)) or (not allow_inf and np.any(np.isinf(values))):
    what = "not NaN" if allow_inf else "finite (not NaN or infinite)"
    raise ValueError(f"{name} must be {what}, got {shown}.")
  if minimum is not None and np.any(values <= minimum if strict else values < minimum):
    relation = ">" if strict else ">="
    word = ("positive " if strict else "non-negative ") if minimum == 0 else ""
    raise ValueError(f"{name} must be {word}({relation} {minimum}), got {shown}.")
  if maximum is not None and np.any(values >= maximum if strict_maximum else values > maximum):
    relation = "<" if strict_maximum else "<="
    raise ValueError(f"{name} must be {relation} {maximum}, got {shown}.")


def validate_embeddings(embeddings, name: str = "embeddings") -> None:
  """Raises ``ValueError`` when ``embeddings`` hold NaN or infinite values.

  Needs concrete values: call it outside ``jit`` (losses do so automatically
  when called eagerly, also under an eager ``jax.grad``); a value traced by
  ``jit`` or ``vmap`` is not checked.
  """
  values = concrete_value(embeddings)
  if values is None:
    return
  if np.iscomplexobj(values):
    raise ValueError(f"{name} must be real, got dtype {values.dtype}.")
  if not np.all(np.isfinite(values)):
    bad = np.argwhere(~np.isfinite(values))
    first = tuple(int(i) for i in bad[0])
    raise ValueError(f"{name} contain {len(bad)} NaN or infinite values (first at index {first}).")


def validate_magnitude(embeddings, name: str = "embeddings", *, batch_size: int | None = None,
                       scale: float = 1.0) -> None:
  """Raises ``ValueError`` when a row norm of ``embeddings`` (times ``scale``) exceeds :func:`max_norm`.

  ``batch_size`` defaults to the number of rows; ``scale`` (e.g. ``1 /
  sqrt(temperature)``) accounts for a factor applied to the squared
  distances. Runs when the value is known (see :func:`concrete_value`).
  """
  values = concrete_value(embeddings)
  if values is None or values.size == 0 or np.iscomplexobj(values):
    return
  dtype = getattr(embeddings, "dtype", values.dtype)
  if not jnp.issubdtype(dtype, jnp.floating):
    return
  values = values.astype(np.float64).reshape(-1, values.shape[-1] if values.ndim else 1)
  # Scaled by the largest entry so that float64 itself does not overflow.
  largest = float(np.max(np.abs(values)))
  if not math.isfinite(largest) or largest == 0:
    return
  norm = largest * float(np.max(np.sqrt(np.sum(np.square(values / largest), axis=-1))))
  rows = values.shape[0] if batch_size is None else batch_size
  limit = max_norm(dtype, rows)
  if not norm * scale <= limit:
    raise ValueError(
        f"{name} have a norm of {norm:.3g}{'' if scale == 1 else f' (times {scale:.3g})'}, above "
        f"the supported {limit:.3g} (sqrt(finfo.max) / (2 B)): rescale them (the losses expect "
        "embeddings of moderate norm, typically unit vectors).")


def validate_labels(labels, num_classes: int | None = None) -> None:
  """Raises ``ValueError`` for negative class ids, ids ``>= num_classes``, or
  multi-hot labels with entries other than 0 and 1 (including NaN).

  Needs concrete values: call it outside ``jit``.
  """
  values = concrete_value(labels)
  if values is None:
    return
  if np.iscomplexobj(values) or not (np.issubdtype(values.dtype, np.number)
                                     or values.dtype == np.bool_):
    raise ValueError(f"labels must be integer class ids or 0/1 multi-hot, got dtype {values.dtype}.")
  if values.ndim == 1:
    if not np.issubdtype(values.dtype, np.integer):
      raise ValueError(f"labels of shape (B,) must be integer class ids, got dtype {values.dtype}.")
    if values.size and values.min() < 0:
      raise ValueError(f"labels must be non-negative class ids, got minimum {values.min()}.")
    if num_classes is not None and values.size and values.max() >= num_classes:
      raise ValueError(
          f"labels must be < num_classes = {num_classes}, got maximum {values.max()}.")
  elif values.ndim == 2:
    if not np.all((values == 0) | (values == 1)):
      raise ValueError("multi-hot labels must contain only 0 and 1 (or False/True).")
    if num_classes is not None and values.shape[1] != num_classes:
      raise ValueError(
          f"multi-hot labels have {values.shape[1]} columns, expected {num_classes}.")


def validate_weights(weights) -> None:
  """Raises ``ValueError`` for NaN, infinite or negative per-sample weights."""
  values = concrete_value(weights)
  if values is None:
    return
  if np.iscomplexobj(values):
    raise ValueError("weights must be real.")
  if not np.all(np.isfinite(values)) or np.any(values < 0):
    raise ValueError("weights must be finite and non-negative.")


def validate_if_concrete(embeddings, labels=None, weights=None, num_classes=None, *,
                         magnitude: bool = True) -> None:
  """Runs the value checks when the inputs are concrete (eager calls, also under ``grad``).

  ``magnitude``: also refuse embeddings above :func:`max_norm`.
  """
  if is_concrete(embeddings):
    validate_embeddings(embeddings)
    if magnitude:
      validate_magnitude(embeddings)
  if labels is not None and is_concrete(labels):
    validate_labels(labels, num_classes)
  if weights is not None and is_concrete(weights):
    validate_weights(weights)
