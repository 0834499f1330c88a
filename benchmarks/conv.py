"""Where the training benchmark's time goes: one convolution, forward and backward, XLA vs torch.

The train step of ``benchmarks/train.py`` is dominated by ``SmallCNN``'s second
convolution (5x5, 32 -> 64 channels, stride 2, 14x14 -> 7x7, batch 256). This
script times that layer alone in both frameworks, split into its three
passes (forward, weight gradient, input gradient) for XLA, and forward and
forward + backward for torch (oneDNN), plus the rewrites of the
convolution tried in JAX: im2col + matmul with a hand-written VJP,
space-to-depth (a stride-1 3x3 convolution on 2x2 blocks), and the one
the training loop's SmallCNN uses, :func:`sphereembed.models.conv.conv_general_dilated` (XLA's
forward and weight gradient, the input gradient in polyphase form). Each timing is the
median of 20 calls after a warm-up, in one process, alternating frameworks.

Command (from the repository root; needs the ``bench`` extra for torch):
  python benchmarks/conv.py
  taskset -c 0 python benchmarks/conv.py --batch 128   # one core: one of --cpu_devices=2's halves
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import time

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from sphereembed.models import conv as polyphase_conv

BATCH, SIZE, IN_CHANNELS, OUT_CHANNELS, KERNEL = 256, 14, 32, 64, 5
DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def conv_xla(x, w):
  """XLA's convolution with "SAME" padding and stride 2 (what ``nn.Conv`` lowers to)."""
  return lax.conv_general_dilated(x, w, (2, 2), "SAME", dimension_numbers=DIMENSIONS)


def _patches(x):
  """im2col for the stride-2 "SAME" 5x5 case: (B, 7, 7, 25 * C)."""
  n, h, _, c = x.shape
  padded = jnp.pad(x, ((0, 0), (1, 2), (1, 2), (0, 0)))  # XLA's SAME split: 1 low, 2 high
  out = h // 2
  cols = [lax.slice(padded, (0, i, j, 0), (n, i + 2 * out - 1, j + 2 * out - 1, c), (1, 2, 2, 1))
          for i in range(KERNEL) for j in range(KERNEL)]
  return jnp.concatenate(cols, axis=-1)


@jax.custom_vjp
def conv_im2col(x, w):
  """The same convolution as a matmul of patches, with the backward pass written by hand."""
  return (_patches(x) @ w.reshape(-1, w.shape[-1]))


def _im2col_forward(x, w):
  patches = _patches(x)
  return patches @ w.reshape(-1, w.shape[-1]), (patches, w, x.shape)


def _im2col_backward(residuals, dy):
  patches, w, shape = residuals
  n, h, _, c = shape
  out = h // 2
  dw = jnp.einsum("bijp,bijo->po", patches, dy).reshape(w.shape)
  dpatches = (dy @ w.reshape(-1, w.shape[-1]).T).reshape(n, out, out, KERNEL, KERNEL, c)
  padded = h + 3
  dx = jnp.zeros((n, padded, padded, c), dy.dtype)
  for i in range(KERNEL):
    for j in range(KERNEL):
      dx = dx + lax.pad(dpatches[:, :, :, i, j, :], jnp.zeros((), dy.dtype),
                        ((0, 0, 0), (i, padded - i - 2 * out + 1, 1),
                         (j, padded - j - 2 * out + 1, 1), (0, 0, 0)))
  return dx[:, 1:1 + h, 1:1 + h, :], dw


conv_im2col.defvjp(_im2col_forward, _im2col_backward)


def conv_polyphase(x, w):
  """The same convolution through SmallCNN's ``conv_general_dilated`` (polyphase input gradient)."""
  return polyphase_conv.conv_general_dilated(x, w, (2, 2), "SAME", dimension_numbers=DIMENSIONS)


def conv_space_to_depth(x, w):
  """The same convolution as a stride-1 3x3 convolution on 2x2 pixel blocks."""
  n, h, _, c = x.shape
  padded = jnp.pad(x, ((0, 0), (1, 3), (1, 3), (0, 0)))
  blocks = (h + 4) // 2
  x4 = padded.reshape(n, blocks, 2, blocks, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(
      n, blocks, blocks, 4 * c)
  w6 = jnp.pad(w, ((0, 1), (0, 1), (0, 0), (0, 0)))
  w4 = w6.reshape(3, 2, 3, 2, c, -1).transpose(0, 2, 1, 3, 4, 5).reshape(3, 3, 4 * c, -1)
  return lax.conv_general_dilated(x4, w4, (1, 1), "VALID", dimension_numbers=DIMENSIONS)


def _median_ms(fn, repeats: int = 20) -> float:
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return 1000 * float(np.median(times))


def jax_rows(x, w, dy) -> list[tuple[str, float]]:
  def timed(f, *args):
    compiled = jax.jit(f)
    return _median_ms(lambda: jax.block_until_ready(compiled(*args)))

  def forward_backward(conv):
    def run(x, w, dy):
      out, vjp = jax.vjp(conv, x, w)
      return out, vjp(dy)  # the output too: otherwise XLA drops the forward pass as dead code
    return run

  return [
      ("XLA forward", timed(conv_xla, x, w)),
      ("XLA weight gradient", timed(lambda x, w, dy: jax.vjp(lambda w: conv_xla(x, w), w)[1](dy),
                                    x, w, dy)),
      ("XLA input gradient", timed(lambda x, w, dy: jax.vjp(lambda x: conv_xla(x, w), x)[1](dy),
                                   x, w, dy)),
      ("XLA forward + backward", timed(forward_backward(conv_xla), x, w, dy)),
      ("im2col + matmul, custom VJP: forward + backward",
       timed(forward_backward(conv_im2col), x, w, dy)),
      ("space-to-depth: forward + backward", timed(forward_backward(conv_space_to_depth), x, w, dy)),
      ("polyphase input gradient (sphereembed.models.conv)",
       timed(lambda x, w, dy: jax.vjp(lambda x: conv_polyphase(x, w), x)[1](dy), x, w, dy)),
      ("polyphase (sphereembed.models.conv): forward + backward",
       timed(forward_backward(conv_polyphase), x, w, dy)),
  ]


def torch_rows(x, w, dy) -> list[tuple[str, float]]:
  import torch  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(len(os.sched_getaffinity(0)))
  tx = torch.tensor(np.asarray(x).transpose(0, 3, 1, 2).copy(), requires_grad=True)
  tw = torch.tensor(np.asarray(w).transpose(3, 2, 0, 1).copy(), requires_grad=True)
  tdy = torch.tensor(np.asarray(dy).transpose(0, 3, 1, 2).copy())
  # torch pads symmetrically; for timing the (1, 2) vs (2, 2) padding is immaterial.
  conv = functools.partial(torch.nn.functional.conv2d, stride=2, padding=2)

  def forward():
    with torch.no_grad():
      conv(tx, tw)

  def forward_backward():
    tx.grad = tw.grad = None
    conv(tx, tw).backward(tdy)

  return [("torch forward", _median_ms(forward)),
          ("torch forward + backward", _median_ms(forward_backward))]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch", type=int, default=BATCH, help="batch size (default %(default)s)")
  batch = parser.parse_args().batch
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(size=(batch, SIZE, SIZE, IN_CHANNELS)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(KERNEL, KERNEL, IN_CHANNELS, OUT_CHANNELS)) * 0.05, jnp.float32)
  dy = jnp.asarray(rng.normal(size=(batch, SIZE // 2, SIZE // 2, OUT_CHANNELS)), jnp.float32)
  np.testing.assert_allclose(conv_space_to_depth(x, w), conv_xla(x, w), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(conv_im2col(x, w), conv_xla(x, w), rtol=1e-4, atol=1e-4)
  print(f"# {platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} CPUs, "
        f"jax {jax.__version__}, load {os.getloadavg()[0]:.2f}")
  print(f"conv {KERNEL}x{KERNEL} {IN_CHANNELS}->{OUT_CHANNELS}, stride 2, {SIZE}x{SIZE}, "
        f"batch {batch}, float32")
  rows = jax_rows(x, w, dy)
  try:
    rows += torch_rows(x, w, dy)
  except ImportError:
    print("torch is not installed (pip install -e '.[bench]'): XLA rows only")
  # Multiply-adds of one pass (forward, or either gradient), every tap counted.
  flops = 2 * batch * (SIZE // 2) ** 2 * KERNEL ** 2 * IN_CHANNELS * OUT_CHANNELS
  print(f"one pass = {flops / 1e9:.3f} GFLOP; forward + backward = 3 passes")
  for name, ms in rows:
    passes = 3 if "backward" in name else 1
    print(f"| {name} | {ms:.2f} ms | {passes * flops / 1e6 / ms:.0f} GFLOP/s |")


if __name__ == "__main__":
  main()
