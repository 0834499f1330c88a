"""Stochastic embeddings for Hedged Instance Embeddings (HIB) on ``28 x 28N`` images.

:class:`HIBEmbedding` maps a batch of images to a mixture of ``C`` Gaussians
with diagonal covariance and equal mixture weights per image (MoG-C), the
embedding ``p(z|x)`` of Oh et al., "Modeling Uncertainty with Hedged Instance
Embedding", ICLR 2019. ``C = 0`` is the deterministic point embedding of the
same network (``sigma = 0``): one "component" and no ``log_sigmas``, the
representation that :mod:`sphereembed.losses` (``vib_match_loss``,
``match_probability``, ``self_mismatch``) understands as a point.

The model also owns the two scalars of the match probability
``p(m|z, z') = sigmoid(-a ||z - z'|| + b)``: ``a = softplus(a_raw) > 0`` (so
that nearer embeddings always match more) and ``b``; both are learned
parameters (``params["match_a_raw"]``, ``params["match_b"]``) and come out
of every call, so that one parameter tree holds everything that training
moves and checkpoints keep.

Outputs of ``model.apply(variables, images)``, a dict:

* ``"means"``: ``(B, max(C, 1), D)`` component means;
* ``"log_sigmas"``: ``(B, C, D)`` log standard deviations (absent for
  ``C = 0``);
* ``"match_a"``, ``"match_b"``: scalars, in the dtype of the means.

Where this follows the paper and where it deviates:

* Trunk: the paper uses a small CNN for N-digit MNIST (convolutions with max
  pooling, then fully connected layers); we did not copy its exact sizes.
  Ours is :func:`sphereembed.models.cnn.conv_trunk`, the trunk of
  :class:`~sphereembed.models.SmallCNN`: two 5x5 convolutions (32 and 64
  channels, ``features``) with ReLU,
  halving the resolution by a stride of 2 by default
  (``downsample="stride"``, 4x fewer multiply-adds on a 2-core CPU, as
  :class:`~sphereembed.models.SmallCNN`) or by 2x2 max pooling
  (``downsample="pool"``), then one ReLU dense layer of ``hidden`` units.
  Nothing depends on the image width, so one class serves every ``N``.
* Head: one linear layer gives the ``C x D`` means and one the ``C x D``
  log-sigmas, as the paper's MoG head; the mixture weights are fixed and
  uniform (the paper's choice). The log-sigmas are bounded below smoothly,
  ``log_sigma_min + softplus(raw - log_sigma_min)``: the match loss alone
  drives sigma towards 0 and, with the paper's small ``beta``, the KL term
  barely resists, so an unbounded ``log sigma`` can drift to ``-inf``. The
  bound (default ``exp(-7)``) is far below any sigma that matters for 2-D or
  3-D embeddings of unit scale.
* ``log_sigma_init``: the bias of the log-sigma layer starts at this value
  (the paper does not say how it initialises sigma); the kernel starts at
  zero, so every image starts with the same, moderate spread and the
  network learns where to shrink it.
* ``a`` and ``b`` start at ``match_a_init`` and ``match_b_init`` (the paper
  does not give its initial values).
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sphereembed.models.cnn import conv_trunk

__all__ = ["HIBEmbedding", "inverse_softplus"]


def inverse_softplus(value: float) -> float:
  """``x`` with ``softplus(x) = value`` (for ``value > 0``), for initialising ``a``.

  Raises:
    ValueError: ``value <= 0``.
  """
  if not value > 0:
    raise ValueError(f"softplus only takes positive values, got {value}.")
  # log(expm1(v)) overflows for large v, where softplus(x) = x to float precision.
  return float(value) if value > 30 else math.log(math.expm1(value))


class HIBEmbedding(nn.Module):
  """Conv trunk and a MoG-C head: the stochastic (or, for ``C = 0``, point) embedding.

  Attributes:
    embedding_dim: ``D``, the embedding size (the paper: 2 and 3).
    num_components: ``C``: 0 for the point embedding, 1 for one Gaussian,
      2, ... for a mixture.
    features: channels of the conv blocks.
    kernel_size: the convolutions' window size.
    downsample: ``"stride"`` (stride-2 convs) or ``"pool"`` (stride-1 convs
      and 2x2 max pooling, the paper's).
    hidden: width of the ReLU dense layer before the head (0: none).
    log_sigma_min: the smooth lower bound of the log-sigmas.
    log_sigma_init: the initial log-sigma of every component.
    match_a_init: the initial ``a > 0`` of the match probability.
    match_b_init: the initial ``b``.
  """

  embedding_dim: int
  num_components: int = 1
  features: Sequence[int] = (32, 64)
  kernel_size: int = 5
  downsample: str = "stride"
  hidden: int = 128
  log_sigma_min: float = -7.0
  log_sigma_init: float = -1.0
  match_a_init: float = 1.0
  match_b_init: float = 0.0

  def _check(self) -> None:
    if isinstance(self.embedding_dim, bool) or not isinstance(self.embedding_dim, int) or (
        self.embedding_dim < 1):
      raise ValueError(f"embedding_dim must be a positive integer, got {self.embedding_dim!r}.")
    if isinstance(self.num_components, bool) or not isinstance(self.num_components, int) or (
        self.num_components < 0):
      raise ValueError(f"num_components must be an integer >= 0 (0: point embedding), got "
                       f"{self.num_components!r}.")
    if self.downsample not in ("stride", "pool"):
      raise ValueError(f"downsample must be 'stride' or 'pool', got {self.downsample!r}.")
    if not self.features or any(int(c) != c or c < 1 for c in self.features):
      raise ValueError(f"features must be positive channel counts, got {self.features!r}.")
    if not self.log_sigma_init > self.log_sigma_min:
      raise ValueError(f"log_sigma_init ({self.log_sigma_init}) must exceed log_sigma_min "
                       f"({self.log_sigma_min}).")
    if not self.match_a_init > 0:
      raise ValueError(f"match_a_init must be > 0, got {self.match_a_init}.")

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
    """Embeds ``(B, H, W, 1)`` images (uint8 pixels or floats in [0, 1]).

    Args:
      images: the batch; any height and width the trunk can halve
        ``len(features)`` times.
      train: unused (no dropout or batch norm); kept for the shared
        ``apply(variables, images, train=...)`` calling convention.

    Returns:
      The dict described in the module docstring.

    Raises:
      ValueError: on bad attributes or images that are not ``(B, H, W, C)``.
    """
    del train
    self._check()
    x = conv_trunk(images, features=self.features, kernel_size=self.kernel_size,
                   downsample=self.downsample, hidden=self.hidden)
    components, dim = max(self.num_components, 1), self.embedding_dim
    means = nn.Dense(components * dim, name="means")(x).reshape(x.shape[0], components, dim)
    outputs = {"means": means}
    if self.num_components > 0:
      raw = nn.Dense(components * dim, name="log_sigmas", kernel_init=nn.initializers.zeros,
                     bias_init=nn.initializers.constant(
                         self._raw_log_sigma(self.log_sigma_init)))(x)
      raw = raw.reshape(x.shape[0], components, dim)
      outputs["log_sigmas"] = self.log_sigma_min + jax.nn.softplus(raw - self.log_sigma_min)
    a_raw = self.param("match_a_raw", nn.initializers.constant(inverse_softplus(self.match_a_init)),
                       (), jnp.float32)
    b = self.param("match_b", nn.initializers.constant(self.match_b_init), (), jnp.float32)
    outputs["match_a"] = jax.nn.softplus(a_raw).astype(means.dtype)
    outputs["match_b"] = b.astype(means.dtype)
    return outputs

  def _raw_log_sigma(self, log_sigma: float) -> float:
    """The pre-activation that the smooth lower bound maps to ``log_sigma``."""
    return self.log_sigma_min + inverse_softplus(log_sigma - self.log_sigma_min)
