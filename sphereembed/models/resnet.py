"""CIFAR ResNets (ResNet-18/34, any width) with the unit-norm embedding head.

The CIFAR variant of He et al.'s ResNet as most CIFAR results use it (and as
the first source's headline CIFAR-100 numbers do): a 3x3 stride-1 stem and no
max pooling, so the 32x32 input keeps its resolution through the first stage;
four stages of :class:`BasicBlock` whose first block halves the resolution
(except in stage 1); global average pooling; then
:class:`~sphereembed.models.cnn.EmbeddingHead`. Blocks follow flax's ImageNet
example: convolutions without bias, batch norm with momentum 0.9, a 1x1
projection shortcut when the shape changes, and the last batch-norm scale of
each residual branch initialised at 0 so that every block starts as the
identity.

Batch norm keeps running statistics in the ``"batch_stats"`` collection:
train with ``model.apply(variables, x, train=True, mutable=["batch_stats"])``
and thread the returned statistics through the train state; evaluate with
``train=False`` (running averages, nothing mutated). Under ``jit`` over a
batch sharded on a device mesh, the batch mean and variance are global (XLA
all-reduces them), so they do not depend on the number of devices.

Mixed precision: ``dtype=jnp.bfloat16`` computes the convolutions and batch
norm in bfloat16, while parameters, batch statistics and the head stay in
float32 (global pooling and the head run in float32, so the embedding, logits
and confidence are float32).

References:
  K. He, X. Zhang, S. Ren and J. Sun, "Deep Residual Learning for Image
  Recognition", CVPR 2016 (the CIFAR variant: Section 4.2 and common practice).
  https://github.com/google/flax/tree/main/examples/imagenet (block structure).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sphereembed.models.cnn import EmbeddingHead

__all__ = [
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "STAGE_SIZES",
    "BasicBlock",
    "CifarResNet",
    "ResNet18",
    "ResNet34",
]

#: Per-channel mean and standard deviation of the CIFAR-10 training images (pixels in [0, 1]).
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)
#: The same for CIFAR-100.
CIFAR100_MEAN: tuple[float, float, float] = (0.5071, 0.4865, 0.4409)
CIFAR100_STD: tuple[float, float, float] = (0.2673, 0.2564, 0.2762)

#: Blocks per stage of the ResNets made of :class:`BasicBlock`.
STAGE_SIZES: dict[int, tuple[int, ...]] = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}

_BATCH_NORM_MOMENTUM = 0.9
_BATCH_NORM_EPSILON = 1e-5


class BasicBlock(nn.Module):
  """Two 3x3 conv + batch-norm layers and a shortcut: ``relu(F(x) + shortcut(x))``.

  Attributes:
    features: output channels.
    strides: stride of the first convolution (2 halves the resolution).
    dtype: the computation dtype (parameters stay float32).
  """

  features: int
  strides: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=_BATCH_NORM_MOMENTUM, epsilon=_BATCH_NORM_EPSILON,
                             dtype=self.dtype)
    y = conv(self.features, (3, 3), strides=self.strides, name="conv1")(x)
    y = nn.relu(norm(name="bn1")(y))
    y = conv(self.features, (3, 3), name="conv2")(y)
    # A zero scale makes the block the identity at initialisation (Goyal et
    # al. 2017; flax's ImageNet example), which eases training deep stacks.
    y = norm(scale_init=nn.initializers.zeros_init(), name="bn2")(y)
    shortcut = x
    if x.shape[-1] != self.features or self.strides != 1:
      shortcut = conv(self.features, (1, 1), strides=self.strides, name="shortcut_conv")(x)
      shortcut = norm(name="shortcut_bn")(shortcut)
    return nn.relu(y + shortcut)


class CifarResNet(nn.Module):
  """A CIFAR ResNet of :class:`BasicBlock` stages, then :class:`EmbeddingHead`.

  Stage ``i`` has ``stage_sizes[i]`` blocks of ``round(64 * width) * 2**i``
  channels; ``stage_sizes=(2, 2, 2, 2)`` and ``width=1`` is ResNet-18
  (11.17M parameters before the head), ``(3, 4, 6, 3)`` is ResNet-34, and
  ``width=2`` doubles every stage's channels (about 4x the parameters).

  Images are ``(B, H, W, C)``; integer images are pixels in ``[0, 255]`` and
  are scaled to ``[0, 1]`` (they travel to the device as bytes), floating
  images are taken to be in ``[0, 1]`` already. Both are then normalised by
  ``mean`` and ``std`` per channel.

  Attributes:
    embedding_dim: the embedding size ``D``.
    num_classes: size of the optional classification head (``None``: none).
    stage_sizes: blocks per stage (see :data:`STAGE_SIZES`).
    width: the channel multiplier of the standard widths 64/128/256/512.
    confidence: the head's per-sample confidence (see :class:`EmbeddingHead`).
    kappa_max: the upper bound of a ``"kappa"`` confidence.
    confidence_feature_gradient: whether the confidence loss trains the
      backbone (see :class:`~sphereembed.models.cnn.EmbeddingHead`).
    mean: per-channel mean of the ``[0, 1]`` pixels (CIFAR-10's by default;
      :data:`CIFAR100_MEAN` for CIFAR-100).
    std: per-channel standard deviation of the ``[0, 1]`` pixels
      (:data:`CIFAR10_STD`, :data:`CIFAR100_STD`).
    dtype: the backbone's computation dtype, e.g. ``jnp.bfloat16``; the
      parameters, the pooling and the head stay float32.
    num_proxies: learned class proxies in the head (see
      :class:`~sphereembed.models.cnn.EmbeddingHead`).

  Example:
    >>> import functools
    >>> import jax, jax.numpy as jnp
    >>> from sphereembed.models.resnet import ResNet18
    >>> model = ResNet18(128, num_classes=100, dtype=jnp.bfloat16)
    >>> images = jnp.zeros((8, 32, 32, 3), jnp.uint8)
    >>> # Shapes only (eval_shape): nothing is allocated or compiled.
    >>> variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)
    >>> num_params = sum(x.size for x in jax.tree_util.tree_leaves(variables["params"]))
    >>> print(sorted(variables), num_params)
    ['batch_stats', 'params'] 11247297
    >>> train = functools.partial(model.apply, train=True, mutable=["batch_stats"])
    >>> out, updates = jax.eval_shape(train, variables, images)
    >>> print(out["embedding"].shape, out["embedding"].dtype, out["logits"].shape)
    (8, 128) float32 (8, 100)
  """

  embedding_dim: int
  num_classes: int | None = None
  stage_sizes: Sequence[int] = STAGE_SIZES[18]
  width: float = 1.0
  confidence: str | None = None
  kappa_max: float = 1000.0
  confidence_feature_gradient: bool = True
  mean: Sequence[float] = CIFAR10_MEAN
  std: Sequence[float] = CIFAR10_STD
  dtype: Any = jnp.float32
  num_proxies: int | None = None

  @property
  def stage_widths(self) -> tuple[int, ...]:
    """The channels of each stage."""
    base = round(64 * self.width)
    return tuple(base * 2**i for i in range(len(self.stage_sizes)))

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
    if images.ndim != 4:
      raise ValueError(f"images must have shape (B, H, W, C), got {images.shape}.")
    if not self.stage_sizes or min(self.stage_sizes) < 1:
      raise ValueError(f"stage_sizes must be positive block counts, got {self.stage_sizes}.")
    if round(64 * self.width) < 1:
      raise ValueError(f"width {self.width} leaves no channel (64 * width must round to >= 1).")
    channels = images.shape[-1]
    if len(self.mean) != channels or len(self.std) != channels or min(self.std) <= 0:
      raise ValueError(
          f"mean {tuple(self.mean)} and std {tuple(self.std)} need one entry per channel "
          f"({channels}) and std > 0.")
    x = images
    if jnp.issubdtype(x.dtype, jnp.integer):
      x = x.astype(jnp.float32) / 255.0
    x = (x.astype(jnp.float32) - jnp.asarray(self.mean, jnp.float32)) / jnp.asarray(
        self.std, jnp.float32)
    x = x.astype(self.dtype)
    widths = self.stage_widths
    x = nn.Conv(widths[0], (3, 3), use_bias=False, dtype=self.dtype, name="stem_conv")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=_BATCH_NORM_MOMENTUM,
                     epsilon=_BATCH_NORM_EPSILON, dtype=self.dtype, name="stem_bn")(x)
    x = nn.relu(x)
    for i, (blocks, features) in enumerate(zip(self.stage_sizes, widths)):
      for j in range(blocks):
        strides = 2 if i > 0 and j == 0 else 1
        x = BasicBlock(features, strides, dtype=self.dtype, name=f"stage{i + 1}_block{j + 1}")(
            x, train=train)
    # Pool and project in float32: the head's outputs are float32 whatever the compute dtype.
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    return EmbeddingHead(self.embedding_dim, self.num_classes, self.confidence, self.kappa_max,
                         confidence_feature_gradient=self.confidence_feature_gradient,
                         num_proxies=self.num_proxies, name="head")(x)


#: ResNet-18 for 32x32 images: ``ResNet18(embedding_dim, ...)``.
ResNet18 = functools.partial(CifarResNet, stage_sizes=STAGE_SIZES[18])
#: ResNet-34 for 32x32 images: ``ResNet34(embedding_dim, ...)``.
ResNet34 = functools.partial(CifarResNet, stage_sizes=STAGE_SIZES[34])
