"""A small CNN for 28x28 images with a unit-norm embedding head."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sphereembed import geometry


class EmbeddingHead(nn.Module):
  """Dense projection to ``embedding_dim`` then L2 normalisation.

  With ``num_classes`` set, a linear classifier on the unit embedding gives
  ``"logits"`` too; its logits are cosine similarities scaled by a learned
  temperature, so the classifier lives on the same sphere as the embedding.

  Attributes:
    embedding_dim: the embedding size ``D`` (2, 3, ..., 1024).
    num_classes: size of the optional classification head (``None``: none).
  """

  embedding_dim: int
  num_classes: int | None = None

  @nn.compact
  def __call__(self, features: jax.Array) -> dict[str, jax.Array]:
    raw = nn.Dense(self.embedding_dim, name="projection")(features)
    embedding = geometry.l2_normalize(raw)
    outputs = {"embedding": embedding}
    if self.num_classes is not None:
      weights = self.param("class_directions", nn.initializers.normal(1.0),
                           (self.num_classes, self.embedding_dim), embedding.dtype)
      # Cosine logits with a learned scale (initialised at 10, kept positive):
      # plain dot products with unit vectors are too flat for softmax to fit.
      log_scale = self.param("log_scale", nn.initializers.constant(jnp.log(10.0)), ())
      cosine = embedding @ geometry.l2_normalize(weights).T
      outputs["logits"] = jnp.exp(log_scale) * cosine
    return outputs


class SmallCNN(nn.Module):
  """Conv-pool blocks and a dense layer, then :class:`EmbeddingHead`.

  Sized to train on a 2-core CPU: the default ``(32, 64)`` channels with 5x5
  kernels cost about 3 M multiply-adds per 28x28 image.

  Attributes:
    embedding_dim: the embedding size ``D``.
    num_classes: size of the optional classification head.
    features: channels of the conv blocks (each a 5x5 conv, ReLU, 2x2 max pool).
    hidden: width of the dense layer before the head.
    dropout_rate: dropout before the head (0 disables it; > 0 also serves MC
      dropout at test time with ``deterministic=False``).
  """

  embedding_dim: int
  num_classes: int | None = None
  features: Sequence[int] = (32, 64)
  hidden: int = 256
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
    if images.ndim != 4:
      raise ValueError(f"images must have shape (B, H, W, C), got {images.shape}.")
    x = images
    if jnp.issubdtype(x.dtype, jnp.integer):
      # uint8 pixels travel to the device as bytes and are scaled here.
      x = x.astype(jnp.float32) / 255.0
    for channels in self.features:
      x = nn.Conv(channels, (5, 5))(x)
      x = nn.relu(x)
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.hidden)(x))
    if self.dropout_rate > 0:
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return EmbeddingHead(self.embedding_dim, self.num_classes, name="head")(x)
