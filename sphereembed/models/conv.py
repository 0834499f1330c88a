"""A drop-in ``lax.conv_general_dilated`` for strided convolutions, with a faster input gradient on CPU.

The input gradient of a stride-``s`` convolution is a transposed convolution:
XLA computes it as a convolution over ``dy`` with ``s - 1`` zeros inserted
between its pixels (``lhs_dilation``). On CPU that lowers to a generic path
that multiplies the inserted zeros too, and it was the largest single operation
of :class:`sphereembed.models.cnn.SmallCNN`'s train step (a third of it on one
core: ``benchmarks/profile_step.py --no-polyphase``; ``benchmarks/conv.py``
times the layer alone).

The polyphase form computes the same gradient without the zeros: input pixel
``n = s * m + a`` only meets the kernel taps ``t`` with
``t = a + pad_low - s * j`` for integers ``j``, so each of the ``s_h * s_w``
phases ``(a, b)`` is an ordinary stride-1 convolution of ``dy`` with the
sub-kernel of those taps, and the phases interleave into ``dx``. Every
multiply-add is a real one, and stride-1 convolutions take XLA's fast path.

:func:`conv_general_dilated` takes the polyphase path for 2-D NHWC / HWIO
convolutions with a stride above 1, no dilation and one feature group, on
CPU; everything else (other layouts, dilations, groups, GPU and TPU through
``lax.platform_dependent``) is ``lax.conv_general_dilated`` unchanged. The
forward pass and the weight gradient are XLA's own in every case.

Use it as ``nn.Conv(..., conv_general_dilated=conv_general_dilated)``. The
gradient is a ``custom_vjp``: reverse mode only. ``jax.jvp``, ``jax.linearize``
and ``jax.jacfwd`` through it raise a ``TypeError``, so
:class:`~sphereembed.models.cnn.SmallCNN` takes it only when asked
(``polyphase_gradient=True``, the training loop's default).

References:
  V. Dumoulin and F. Visin, "A guide to convolution arithmetic for deep
  learning", arXiv:1603.07285 (transposed convolutions, section 4).
  W. Shi et al., "Real-Time Single Image and Video Super-Resolution Using an
  Efficient Sub-Pixel Convolutional Neural Network", CVPR 2016 (the phase
  interleaving).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
from jax import lax
import jax.numpy as jnp

__all__ = ["conv_general_dilated", "polyphase_input_gradient"]

_LAYOUT = ("NHWC", "HWIO", "NHWC")


def _phase_taps(kernel: int, stride: int, pad_low: int, phase: int) -> tuple[list[int], list[int]]:
  """Along one axis: the taps that reach input pixels ``stride * m + phase``, and their dy offsets.

  Output ``o`` reads input ``stride * o + t - pad_low``; that is pixel
  ``stride * m + phase`` when ``o = m + j`` with ``t = phase + pad_low - stride * j``.
  Returned in increasing ``j`` (so decreasing ``t``: the kernel flip).
  """
  pairs = sorted(((phase + pad_low - t) // stride, t) for t in range(kernel)
                 if (phase + pad_low - t) % stride == 0)
  return [t for _, t in pairs], [j for j, _ in pairs]


def polyphase_input_gradient(dy: jax.Array, kernel: jax.Array, input_shape: Sequence[int],
                             strides: Sequence[int],
                             padding: Sequence[tuple[int, int]], precision=None) -> jax.Array:
  """The input gradient of a strided NHWC / HWIO convolution, one stride-1 convolution per phase.

  Args:
    dy: the output cotangent, ``(B, OH, OW, O)``.
    kernel: the convolution's kernel, ``(KH, KW, C, O)``.
    input_shape: the input's shape ``(B, H, W, C)``.
    strides: ``(SH, SW)``.
    padding: the forward pass's explicit ``((low, high), (low, high))`` padding.
    precision: passed on to ``lax.conv_general_dilated``.

  Returns:
    ``dx`` of shape ``input_shape``: the same values as the input cotangent
    of ``lax.conv_general_dilated(x, kernel, strides, padding)``.
  """
  batch, height, width, channels = input_shape
  (stride_h, stride_w), sizes = strides, (height, width)
  rows = -(-height // stride_h)  # phase images are padded to these sizes, then interleaved
  cols = -(-width // stride_w)
  phases = []
  for a in range(stride_h):
    phase_row = []
    for b in range(stride_w):
      taps, offsets, lengths = [], [], []
      for axis, phase in ((0, a), (1, b)):
        t, j = _phase_taps(kernel.shape[axis], strides[axis], padding[axis][0], phase)
        taps.append(t)
        offsets.append(j)
        lengths.append(len(range(phase, sizes[axis], strides[axis])))
      if not taps[0] or not taps[1] or not lengths[0] or not lengths[1]:
        # No tap reaches this phase (kernel smaller than the stride): its pixels get no gradient.
        z = jnp.zeros((batch, lengths[0], lengths[1], channels), dy.dtype)
      else:
        # The taps step down by the stride: a strided slice, flipped.
        sub = kernel[taps[0][-1]:taps[0][0] + 1:strides[0], taps[1][-1]:taps[1][0] + 1:strides[1]]
        sub = jnp.swapaxes(jnp.flip(sub, (0, 1)), 2, 3)  # (kh, kw, O, C): dy's channels in
        # z[m] = sum_j dy[m + j] sub[j - j_min]: dy cropped or zero-padded so a VALID
        # correlation yields exactly this phase's pixels.
        spatial = [(-offsets[k][0], lengths[k] + offsets[k][-1] - dy.shape[1 + k], 0)
                   for k in (0, 1)]
        pads = [(0, 0, 0)] + spatial + [(0, 0, 0)]
        window = lax.pad(dy, jnp.zeros((), dy.dtype), pads)
        z = lax.conv_general_dilated(window, sub, (1, 1), "VALID", dimension_numbers=_LAYOUT,
                                     precision=precision)
      phase_row.append(jnp.pad(z, ((0, 0), (0, rows - lengths[0]), (0, cols - lengths[1]), (0, 0))))
    phases.append(jnp.stack(phase_row, axis=3))  # (B, rows, cols, SW, C)
  dx = jnp.stack(phases, axis=2)  # (B, rows, SH, cols, SW, C): pixel (SH*m + a, SW*n + b)
  dx = dx.reshape(batch, rows * stride_h, cols * stride_w, channels)
  return dx[:, :height, :width, :]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _strided_conv(x, kernel, strides, padding, precision):
  return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_LAYOUT,
                                  precision=precision)


def _strided_conv_fwd(x, kernel, strides, padding, precision):
  return _strided_conv(x, kernel, strides, padding, precision), (x, kernel)


def _strided_conv_bwd(strides, padding, precision, residuals, dy):
  x, kernel = residuals
  # The weight gradient is XLA's (it never dilates); the unused primal is dead code.
  _, kernel_vjp = jax.vjp(lambda k: lax.conv_general_dilated(
      x, k, strides, padding, dimension_numbers=_LAYOUT, precision=precision), kernel)
  (dkernel,) = kernel_vjp(dy)

  def native(dy, kernel):
    _, x_vjp = jax.vjp(lambda v: lax.conv_general_dilated(
        v, kernel, strides, padding, dimension_numbers=_LAYOUT, precision=precision), x)
    return x_vjp(dy)[0]

  def polyphase(dy, kernel):
    return polyphase_input_gradient(dy, kernel, x.shape, strides, padding, precision)

  # GPU and TPU have fast transposed convolutions of their own.
  dx = lax.platform_dependent(dy, kernel, cpu=polyphase, default=native)
  return dx, dkernel


_strided_conv.defvjp(_strided_conv_fwd, _strided_conv_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None):
  """``lax.conv_general_dilated`` with the polyphase input gradient for plain strided 2-D convolutions.

  Same arguments and values as ``lax.conv_general_dilated``; only the
  backward pass of eligible calls differs (see the module docstring).

  Example:
    >>> import flax.linen as nn
    >>> import jax, jax.numpy as jnp
    >>> layer = nn.Conv(8, (5, 5), strides=2, conv_general_dilated=conv_general_dilated)
    >>> x = jnp.ones((2, 14, 14, 3))
    >>> params = layer.init(jax.random.PRNGKey(0), x)
    >>> layer.apply(params, x).shape
    (2, 7, 7, 8)
  """
  strides = tuple(int(s) for s in window_strides)
  plain = (lhs.ndim == 4 and len(strides) == 2 and max(strides) > 1
           and all(d in (None, 1) for d in (lhs_dilation or ()) + (rhs_dilation or ()))
           and feature_group_count == 1 and batch_group_count == 1
           and preferred_element_type is None
           and dimension_numbers is not None
           and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
           == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _LAYOUT))
  if not plain:
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
        batch_group_count=batch_group_count, precision=precision,
        preferred_element_type=preferred_element_type)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  return _strided_conv(lhs, rhs, strides, padding, precision)
