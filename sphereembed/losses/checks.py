"""Input checks of the losses, public for every module that takes embeddings and labels.

Two kinds of checks guard every loss (and :mod:`sphereembed.centroids`,
:mod:`sphereembed.data.pairs`, :mod:`sphereembed.laplace.ggn`):

* static checks (``check_*``: shapes, dtypes, ranks) run on every call, also
  under ``jit`` and ``vmap``, because they only need the abstract shapes;
* value checks (``validate_*``: NaN/inf embeddings, labels out of range or
  not 0/1) need concrete values. They run automatically when a loss is called
  outside ``jit`` (eagerly, with concrete arrays, see
  :func:`validate_if_concrete`). Inside a jitted step, call them on the host
  batch. They are also re-exported by :mod:`sphereembed.losses`.

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

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "check_embeddings",
    "check_labels",
    "check_scalar",
    "check_weights",
    "is_concrete",
    "validate_embeddings",
    "validate_if_concrete",
    "validate_labels",
    "validate_weights",
]


def is_concrete(*arrays) -> bool:
  """True when no argument is a JAX tracer, i.e. values can be inspected."""
  return not any(isinstance(a, jax.core.Tracer) for a in arrays if a is not None)


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


def validate_embeddings(embeddings, name: str = "embeddings") -> None:
  """Raises ``ValueError`` when ``embeddings`` hold NaN or infinite values.

  Needs concrete values: call it outside ``jit`` (losses do so automatically
  when called eagerly).
  """
  values = np.asarray(embeddings)
  if not np.all(np.isfinite(values)):
    bad = np.argwhere(~np.isfinite(values))
    first = tuple(int(i) for i in bad[0])
    raise ValueError(f"{name} contain {len(bad)} NaN or infinite values (first at index {first}).")


def validate_labels(labels, num_classes: int | None = None) -> None:
  """Raises ``ValueError`` for negative class ids, ids ``>= num_classes``, or
  multi-hot labels with entries other than 0 and 1 (including NaN).

  Needs concrete values: call it outside ``jit``.
  """
  values = np.asarray(labels)
  if values.ndim == 1:
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
  if weights is None:
    return
  values = np.asarray(weights)
  if not np.all(np.isfinite(values)) or np.any(values < 0):
    raise ValueError("weights must be finite and non-negative.")


def validate_if_concrete(embeddings, labels=None, weights=None, num_classes=None) -> None:
  """Runs the value checks when the inputs are concrete (eager calls)."""
  if is_concrete(embeddings):
    validate_embeddings(embeddings)
  if labels is not None and is_concrete(labels):
    validate_labels(labels, num_classes)
  if weights is not None and is_concrete(weights):
    validate_weights(weights)
