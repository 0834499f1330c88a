"""A small CNN for 28x28 images with a unit-norm embedding head."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sphereembed import geometry
from sphereembed.models.conv import conv_general_dilated

# The per-sample confidence outputs an EmbeddingHead can add.
CONFIDENCE_HEADS = (None, "kappa", "sigma", "sigma_diagonal")


class EmbeddingHead(nn.Module):
  """Dense projection to ``embedding_dim`` then L2 normalisation.

  With ``num_classes`` set, a linear classifier on the unit embedding gives
  ``"logits"`` too; its logits are cosine similarities scaled by a learned
  temperature, so the classifier lives on the same sphere as the embedding.

  With ``confidence`` set, a per-sample confidence comes from the same
  features: ``"kappa"`` gives a von Mises-Fisher concentration
  ``kappa_max * tanh(softplus(z) / kappa_max)`` (positive, close to the
  softplus below ``kappa_max`` and smoothly bounded by it, so the gradient
  never vanishes the way a hard clip's would); ``"sigma"`` an isotropic and
  ``"sigma_diagonal"`` a per-axis ``"log_sigma"``, bounded below by
  ``log_sigma_min`` the same smooth way (a zero residual would otherwise send
  it to -inf).

  With ``num_proxies`` set, the head also owns ``num_proxies`` learned class
  proxies (parameter ``"proxies"``, ``(num_proxies, embedding_dim)``) for the
  proxy losses (:func:`sphereembed.losses.arcface`, ``proxy_anchor``, ...):
  trained with the network and read from the parameters
  (``params["head"]["proxies"]``, unnormalised: the losses normalise them),
  not returned per image.

  With ``confidence_feature_gradient=False`` the confidence head reads the
  features through ``stop_gradient``: its loss trains the head only, not the
  shared trunk. A vMF NLL in high dimension has gradients far larger than the
  embedding loss's (its normaliser grows with ``D``) and can otherwise pull
  the trunk away from the embedding task.

  Attributes:
    embedding_dim: the embedding size ``D`` (2, 3, ..., 1024).
    num_classes: size of the optional classification head (``None``: none).
    confidence: ``None``, ``"kappa"``, ``"sigma"`` or ``"sigma_diagonal"``.
    kappa_max: the upper bound of ``kappa``.
    log_sigma_min: the lower bound of ``log_sigma``.
    confidence_feature_gradient: whether the confidence loss trains the trunk.
    num_proxies: the number of learned class proxies (``None``: none).
  """

  embedding_dim: int
  num_classes: int | None = None
  confidence: str | None = None
  kappa_max: float = 1000.0
  log_sigma_min: float = -7.0
  confidence_feature_gradient: bool = True
  num_proxies: int | None = None

  @nn.compact
  def __call__(self, features: jax.Array) -> dict[str, jax.Array]:
    if self.confidence not in CONFIDENCE_HEADS:
      raise ValueError(f"confidence must be one of {CONFIDENCE_HEADS}, got {self.confidence!r}.")
    raw = nn.Dense(self.embedding_dim, name="projection")(features)
    embedding = geometry.l2_normalize(raw)
    outputs = {"embedding": embedding}
    confidence_features = (features if self.confidence_feature_gradient
                           else jax.lax.stop_gradient(features))
    if self.confidence == "kappa":
      z = nn.Dense(1, name="kappa")(confidence_features)[:, 0]
      outputs["kappa"] = self.kappa_max * jnp.tanh(jax.nn.softplus(z) / self.kappa_max)
    elif self.confidence is not None:
      size = 1 if self.confidence == "sigma" else self.embedding_dim
      z = nn.Dense(size, name="log_sigma")(confidence_features)
      z = z[:, 0] if self.confidence == "sigma" else z
      outputs["log_sigma"] = self.log_sigma_min + jax.nn.softplus(z - self.log_sigma_min)
    if self.num_classes is not None:
      weights = self.param("class_directions", nn.initializers.normal(1.0),
                           (self.num_classes, self.embedding_dim), embedding.dtype)
      # Cosine logits with a learned scale (initialised at 10, kept positive):
      # plain dot products with unit vectors are too flat for softmax to fit.
      log_scale = self.param("log_scale", nn.initializers.constant(jnp.log(10.0)), (), jnp.float32)
      cosine = embedding @ geometry.l2_normalize(weights).T
      outputs["logits"] = jnp.exp(log_scale) * cosine
    if self.num_proxies is not None:
      # Unit expected norm: the losses use directions only, and a small norm
      # lets the optimiser's fixed-size steps turn them as fast as the network.
      self.param(
          "proxies", nn.initializers.normal(1.0 / self.embedding_dim ** 0.5),
          (self.num_proxies, self.embedding_dim), embedding.dtype)
    return outputs


def _max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max pooling as a reshape and a max.

  Same values as ``nn.max_pool(x, (2, 2), strides=(2, 2))`` on even sizes
  (odd sizes drop the last row/column, like VALID pooling); XLA's CPU
  backward of this form is several times faster than that of ``reduce_window``.
  """
  batch, height, width, channels = x.shape
  x = x[:, :height - height % 2, :width - width % 2]
  return x.reshape(batch, height // 2, 2, width // 2, 2, channels).max(axis=(2, 4))


def conv_trunk(images: jax.Array, *, features: Sequence[int], kernel_size: int, downsample: str,
               hidden: int, batch_norm: bool = False, polyphase_gradient: bool = False,
               train: bool = False) -> jax.Array:
  """The small CNN's trunk: conv blocks that halve the resolution, then a ReLU dense layer.

  Call it inside a module's ``nn.compact`` method: its layers become that
  module's ``Conv_0``, ``Conv_1``, ..., ``Dense_0`` (and ``BatchNorm_*``), so
  every model built on it (:class:`SmallCNN`, the HIB mixture head of
  :class:`sphereembed.models.hib.HIBEmbedding`) shares one trunk and one
  parameter layout.

  Args:
    images: ``(B, H, W, C)`` uint8 pixels (scaled to [0, 1] here) or floats.
    features: channels of the conv blocks.
    kernel_size: the convolutions' window size.
    downsample: ``"stride"`` (stride-2 convs) or ``"pool"`` (stride-1 convs
      and 2x2 max pooling).
    hidden: width of the ReLU dense layer (0: none, the flattened features).
    batch_norm: batch normalisation after every conv and the dense layer.
    polyphase_gradient: the strided convs' polyphase input gradient (see
      :class:`SmallCNN`).
    train: batch norm's mode (batch statistics, running averages updated).

  Returns:
    ``(B, hidden)`` features (``(B, flattened)`` for ``hidden = 0``).

  Raises:
    ValueError: images that are not ``(B, H, W, C)`` or an unknown ``downsample``.
  """
  if images.ndim != 4:
    raise ValueError(f"images must have shape (B, H, W, C), got {images.shape}.")
  if downsample not in ("stride", "pool"):
    raise ValueError(f"downsample must be 'stride' or 'pool', got {downsample!r}.")
  x = images
  if jnp.issubdtype(x.dtype, jnp.integer):
    # uint8 pixels travel to the device as bytes and are scaled here.
    x = x.astype(jnp.float32) / 255.0

  def normalize(x):
    return nn.BatchNorm(use_running_average=not train, momentum=0.9)(x) if batch_norm else x

  stride = 2 if downsample == "stride" else 1
  for channels in features:
    x = nn.Conv(int(channels), (kernel_size, kernel_size), strides=stride,
                use_bias=not batch_norm,
                conv_general_dilated=conv_general_dilated if polyphase_gradient else None)(x)
    x = nn.relu(normalize(x))
    if downsample == "pool":
      x = _max_pool_2x2(x)
  x = x.reshape((x.shape[0], -1))
  if hidden:
    x = nn.relu(normalize(nn.Dense(hidden, use_bias=not batch_norm)(x)))
  return x


class SmallCNN(nn.Module):
  """Conv blocks that halve the resolution, a dense layer, then :class:`EmbeddingHead`.

  Sized to train on a 2-core CPU. Each block is a ``kernel_size`` conv and a
  ReLU that halves the resolution, by a stride of 2 (``downsample="stride"``,
  the default: 4x fewer multiply-adds) or by 2x2 max pooling after a stride-1
  conv (``downsample="pool"``, LeNet style).

  Attributes:
    embedding_dim: the embedding size ``D``.
    num_classes: size of the optional classification head.
    features: channels of the conv blocks.
    kernel_size: the convolutions' window size.
    downsample: ``"stride"`` or ``"pool"``.
    hidden: width of the dense layer before the head.
    dropout_rate: dropout before the head (0 disables it; > 0 also serves MC
      dropout at test time with ``deterministic=False``).
    batch_norm: batch normalisation after every conv and the dense layer
      (before the ReLU; their biases are then dropped). Its running
      statistics live in the ``"batch_stats"`` collection, which the train
      state carries (``train=True`` updates them, ``train=False`` uses them).
    confidence: the head's per-sample confidence (see :class:`EmbeddingHead`).
    kappa_max: the upper bound of a ``"kappa"`` confidence.
    confidence_feature_gradient: whether the confidence loss trains the trunk
      (see :class:`EmbeddingHead`).
    num_proxies: learned class proxies in the head (see :class:`EmbeddingHead`).
    polyphase_gradient: the strided convolutions' input gradient in the
      polyphase form on CPU (:mod:`sphereembed.models.conv`: the same values,
      and 1.2-1.3x the train step's images/s on one CPU device, 1.07-1.14x on
      two: ``benchmarks/RESULTS.md``). It is a ``custom_vjp``, so the network then
      supports reverse mode only (``jax.grad``, ``jax.vjp``), not forward mode
      (``jax.jvp``, ``jax.linearize``, ``jax.jacfwd``, which the Laplace GGN
      products use). Off by default; the training loop switches it on
      (``config.polyphase_gradient``).
  """

  embedding_dim: int
  num_classes: int | None = None
  features: Sequence[int] = (32, 64)
  kernel_size: int = 5
  downsample: str = "stride"
  hidden: int = 128
  dropout_rate: float = 0.0
  batch_norm: bool = False
  confidence: str | None = None
  kappa_max: float = 1000.0
  confidence_feature_gradient: bool = True
  polyphase_gradient: bool = False
  num_proxies: int | None = None

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
    x = conv_trunk(images, features=self.features, kernel_size=self.kernel_size,
                   downsample=self.downsample, hidden=self.hidden, batch_norm=self.batch_norm,
                   polyphase_gradient=self.polyphase_gradient, train=train)
    if self.dropout_rate > 0:
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return EmbeddingHead(self.embedding_dim, self.num_classes, self.confidence, self.kappa_max,
                         confidence_feature_gradient=self.confidence_feature_gradient,
                         num_proxies=self.num_proxies, name="head")(x)
