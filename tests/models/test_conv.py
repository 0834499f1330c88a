"""The polyphase input gradient equals XLA's transposed convolution, and is the path taken on CPU."""

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from sphereembed.models import conv
from sphereembed.models.cnn import SmallCNN

LAYOUT = ("NHWC", "HWIO", "NHWC")
# (H, W, KH, KW, strides, padding): the CNN's two layers, odd sizes, uneven strides, kernels
# smaller than the stride (phases no tap reaches), VALID and explicit (also negative-slack) pads.
CASES = [
    (14, 14, 5, 5, (2, 2), "SAME"),
    (28, 28, 5, 5, (2, 2), "SAME"),
    (15, 13, 3, 4, (2, 3), "SAME"),
    (16, 16, 3, 3, (2, 2), "VALID"),
    (9, 9, 1, 1, (2, 2), "SAME"),
    (12, 12, 5, 5, (3, 3), ((0, 4), (2, 1))),
    (10, 11, 2, 3, (2, 2), ((3, 0), (0, 3))),
    (8, 8, 3, 3, (2, 1), "SAME"),
]


def _loss(fn, x, w, cotangent, strides, padding):
  return jnp.sum(cotangent * fn(x, w, strides, padding, dimension_numbers=LAYOUT))


def _inputs(h, w, kh, kw, strides, padding, dtype, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(3, h, w, 4)).astype(dtype)
  kernel = rng.normal(size=(kh, kw, 4, 5)).astype(dtype)
  out = lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=LAYOUT)
  return x, kernel, rng.normal(size=out.shape).astype(dtype)


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 1e-5)])
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}x{c[1]}-k{c[2]}x{c[3]}-s{c[4]}-{c[5]}"
                                             for c in CASES])
def test_gradients_equal_xla_and_jit_equals_eager(case, dtype, rtol):
  h, w, kh, kw, strides, padding = case
  x, kernel, cotangent = _inputs(h, w, kh, kw, strides, padding, dtype)
  want = jax.grad(_loss, (1, 2))(lax.conv_general_dilated, x, kernel, cotangent, strides,
                                 padding)
  grad = jax.grad(_loss, (1, 2))
  eager = grad(conv.conv_general_dilated, x, kernel, cotangent, strides, padding)
  jitted = jax.jit(grad, static_argnums=(0, 4, 5))(conv.conv_general_dilated, x, kernel,
                                                    cotangent, strides, padding)
  for got in (eager, jitted):
    for g, r in zip(got, want):
      assert g.dtype == dtype and g.shape == r.shape
      scale = np.abs(np.asarray(r)).max()
      np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=0, atol=rtol * 10 * scale)
  value = conv.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=LAYOUT)
  np.testing.assert_array_equal(
      value, lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=LAYOUT))


def test_gradient_matches_finite_differences_in_float64():
  x, kernel, cotangent = _inputs(9, 9, 3, 3, (2, 2), "SAME", np.float64, seed=3)
  dx = jax.grad(_loss, 1)(conv.conv_general_dilated, x, kernel, cotangent, (2, 2), "SAME")
  direction = np.random.default_rng(4).normal(size=x.shape)
  eps = 1e-6
  f = lambda v: float(_loss(conv.conv_general_dilated, v, kernel, cotangent, (2, 2), "SAME"))
  numeric = (f(x + eps * direction) - f(x - eps * direction)) / (2 * eps)
  assert float(jnp.vdot(dx, direction)) == pytest.approx(numeric, rel=1e-7)


def test_vmap_of_the_gradient_equals_a_loop():
  xs = np.random.default_rng(5).normal(size=(3, 2, 14, 14, 4)).astype(np.float32)
  kernel = np.random.default_rng(6).normal(size=(5, 5, 4, 8)).astype(np.float32)

  def grad(x):
    return jax.grad(lambda v: jnp.sum(conv.conv_general_dilated(
        v, kernel, (2, 2), "SAME", dimension_numbers=LAYOUT) ** 2))(x)

  batched = jax.vmap(grad)(xs)
  for i in range(3):
    np.testing.assert_allclose(batched[i], grad(xs[i]), rtol=1e-5, atol=1e-5)


def test_cpu_gradient_has_no_dilated_convolution_and_xla_s_has():
  x, kernel = jnp.ones((2, 14, 14, 4)), jnp.ones((5, 5, 4, 8))

  def hlo(fn):
    grad = jax.grad(lambda v: jnp.sum(fn(v, kernel, (2, 2), "SAME", dimension_numbers=LAYOUT)))
    return jax.jit(grad).lower(x).compile().as_text()

  assert "lhs_dilate" in hlo(lax.conv_general_dilated)  # what the polyphase form avoids
  assert "lhs_dilate" not in hlo(conv.conv_general_dilated)


@pytest.mark.parametrize("kwargs", [
    dict(window_strides=(1, 1), padding="SAME"),                     # stride 1: nothing to gain
    dict(window_strides=(2, 2), padding="SAME", rhs_dilation=(2, 2)),
    dict(window_strides=(2, 2), padding="SAME", feature_group_count=2),
])
def test_other_convolutions_are_lax_s_own(kwargs):
  rng = np.random.default_rng(7)
  x = rng.normal(size=(2, 10, 10, 4))
  kernel = rng.normal(size=(3, 3, 4 // kwargs.get("feature_group_count", 1), 6))

  def loss(fn, v, k):
    return jnp.sum(fn(v, k, dimension_numbers=LAYOUT, **kwargs) ** 2)

  want = jax.grad(loss, (1, 2))(lax.conv_general_dilated, x, kernel)
  got = jax.grad(loss, (1, 2))(conv.conv_general_dilated, x, kernel)
  for g, r in zip(got, want):
    np.testing.assert_allclose(g, r, rtol=1e-12)


def test_small_cnn_gradients_do_not_depend_on_the_switch_and_jvp_needs_it_off():
  images = np.random.default_rng(8).integers(0, 256, size=(6, 28, 28, 1), dtype=np.uint8)
  fast, plain = SmallCNN(4, features=(4, 8), polyphase_gradient=True), SmallCNN(4, features=(4, 8))
  params = fast.init(jax.random.PRNGKey(0), images)

  def loss(model, p):
    return jnp.sum(model.apply(p, images)["embedding"][:, 0])

  got, want = jax.grad(lambda p: loss(fast, p))(params), jax.grad(lambda p: loss(plain, p))(params)
  for g, r in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6)
  # Forward mode goes through XLA's convolution only.
  tangent = jax.tree_util.tree_map(jnp.ones_like, params)
  _, jvp = jax.jvp(lambda p: loss(plain, p), (params,), (tangent,))
  assert np.isfinite(jvp)
  with pytest.raises(TypeError, match="custom_vjp"):
    jax.jvp(lambda p: loss(fast, p), (params,), (tangent,))
