"""Label masks of the pairs of a batch: which pairs share a class.

Used by the pair and triplet losses, :mod:`sphereembed.data.pairs` and the
contrastive curvature of :mod:`sphereembed.laplace.ggn`. Labels are int class
ids ``(B,)`` or multi-hot rows ``(B, C)``; see
:func:`sphereembed.losses.checks.check_labels`.

Example:
  >>> import jax.numpy as jnp
  >>> from sphereembed.losses.masks import pair_masks
  >>> positives, negatives = pair_masks(jnp.array([0, 0, 1]))
  >>> positives.astype(int).tolist()
  [[0, 1, 0], [1, 0, 0], [0, 0, 0]]
  >>> negatives.astype(int).tolist()
  [[0, 0, 1], [0, 0, 1], [1, 1, 0]]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["pair_masks", "positive_mask"]


def positive_mask(labels: jax.Array) -> jax.Array:
  """``(B, B)`` bool mask of pairs sharing a class, the diagonal included.

  Int labels ``(B,)``: same id. Multi-hot labels ``(B, C)``: at least one
  shared label (a sample with no label is nobody's positive, not even its own).
  """
  if labels.ndim == 1:
    return labels[:, None] == labels[None, :]
  hot = (labels > 0).astype(jnp.float32)
  return jnp.matmul(hot, hot.T, precision=jax.lax.Precision.HIGHEST) > 0.5


def pair_masks(labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(positives, negatives)`` masks over valid pairs (``i != j``)."""
  same = positive_mask(labels)
  off_diagonal = ~jnp.eye(labels.shape[0], dtype=bool)
  return same & off_diagonal, ~same & off_diagonal
