"""The CIFAR ResNets: shapes, unit embeddings, batch norm, bfloat16 and parameter counts.

Kept fast: tiny widths, shapes through ``jax.eval_shape`` where values do not
matter, one jitted init and jitted applies.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sphereembed.models.resnet import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    STAGE_SIZES,
    CifarResNet,
    ResNet18,
    ResNet34,
)

# Tiny widths: 4/8 channels, two stages.
TINY = {"stage_sizes": (1, 1), "width": 1 / 16}
RESNET18_BACKBONE = 11_168_832
RESNET34_BACKBONE = 21_276_992


def init_variables(model, images, seed=0):
  """``model.init``, jitted once; the non-partitionable threefry compiles ~10x faster on CPU."""
  with jax.threefry_partitionable(False):
    return jax.jit(model.init)(jax.random.PRNGKey(seed), images)


@functools.partial(jax.jit, static_argnames=("model", "train"))
def apply(model, variables, images, train):
  """``(outputs, {"batch_stats": ...})``: the statistics returned in both modes."""
  return model.apply(variables, images, train=train, mutable=["batch_stats"])


def _images(batch=4, seed=0, size=16):
  return np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


def _count(tree) -> int:
  return int(sum(leaf.size for leaf in jax.tree_util.tree_leaves(tree)))


def _shapes(model, images=None, **kwargs):
  """Variables and outputs as shapes only: nothing compiled."""
  images = jnp.zeros((1, 32, 32, 3), jnp.uint8) if images is None else images
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)
  outputs = jax.eval_shape(functools.partial(model.apply, **kwargs), variables, images)
  return variables, outputs


@pytest.fixture(scope="module")
def tiny():
  model = CifarResNet(6, 10, confidence="kappa", **TINY)
  images = _images()
  return model, init_variables(model, images), images


@pytest.mark.parametrize("num_classes,confidence,extra", [
    (None, None, set()), (10, "kappa", {"logits", "kappa"}), (5, "sigma", {"logits", "log_sigma"}),
    (None, "sigma_diagonal", {"log_sigma"})])
def test_the_head_options_pass_through(num_classes, confidence, extra):
  model = CifarResNet(6, num_classes, confidence=confidence, kappa_max=50.0, **TINY)
  _, out = _shapes(model, jnp.zeros((3, 16, 16, 3), jnp.uint8))
  assert set(out) == {"embedding"} | extra
  assert out["embedding"].shape == (3, 6) and out["embedding"].dtype == jnp.float32
  if num_classes:
    assert out["logits"].shape == (3, num_classes)


def test_outputs_are_unit_embeddings(tiny):
  model, variables, images = tiny
  out, _ = apply(model, variables, images, train=False)
  np.testing.assert_allclose(np.linalg.norm(out["embedding"], axis=-1), 1.0, atol=1e-5)
  assert out["logits"].shape == (4, 10) and out["kappa"].shape == (4,)
  assert bool(jnp.all(out["kappa"] > 0)) and bool(jnp.all(out["kappa"] <= 1000.0))


def test_batch_stats_move_in_train_mode_only(tiny):
  model, variables, images = tiny
  stats = variables["batch_stats"]
  assert set(stats["stem_bn"]) == {"mean", "var"}
  assert set(stats["stage2_block1"]) == {"bn1", "bn2", "shortcut_bn"}
  out, updates = apply(model, variables, images, train=True)
  new = updates["batch_stats"]
  assert jax.tree_util.tree_structure(new) == jax.tree_util.tree_structure(stats)
  for old, moved in zip(jax.tree_util.tree_leaves(stats), jax.tree_util.tree_leaves(new)):
    assert not np.allclose(old, moved)
  np.testing.assert_allclose(np.linalg.norm(out["embedding"], axis=-1), 1.0, atol=1e-5)
  # Eval mode uses the running averages and mutates nothing.
  _, kept = apply(model, variables, images, train=False)
  for old, same in zip(jax.tree_util.tree_leaves(stats), jax.tree_util.tree_leaves(kept)):
    np.testing.assert_array_equal(old, same)


def test_batch_norm_momentum_is_0_9_and_inputs_are_normalised(tiny):
  model, variables, images = tiny
  _, updates = apply(model, variables, images, train=True)
  # The stem's batch-norm input is the stem convolution of the normalised
  # image; the running mean starts at 0 and moves 10% of the way to its mean.
  x = (images / 255.0 - np.asarray(CIFAR10_MEAN)) / np.asarray(CIFAR10_STD)
  kernel = np.asarray(variables["params"]["stem_conv"]["kernel"], np.float64)
  conv = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  batch_mean = np.asarray(conv).mean(axis=(0, 1, 2))
  np.testing.assert_allclose(updates["batch_stats"]["stem_bn"]["mean"], 0.1 * batch_mean,
                             rtol=1e-4, atol=1e-6)


def test_eval_mode_does_not_depend_on_the_rest_of_the_batch(tiny):
  model, variables, images = tiny
  whole, _ = apply(model, variables, images, train=False)
  part, _ = apply(model, variables, images[:2], train=False)
  np.testing.assert_allclose(whole["embedding"][:2], part["embedding"], atol=1e-6)


def test_float_images_are_taken_as_unit_range_pixels(tiny):
  model, variables, images = tiny
  from_bytes, _ = apply(model, variables, images, train=False)
  from_floats, _ = apply(model, variables, images.astype(np.float32) / 255.0, train=False)
  np.testing.assert_allclose(from_bytes["embedding"], from_floats["embedding"], atol=1e-5)


def test_bfloat16_compute_keeps_float32_params_and_outputs(tiny):
  model, variables, images = tiny
  half = model.clone(dtype=jnp.bfloat16)
  half_variables, _ = _shapes(half, images)
  assert jax.tree_util.tree_structure(half_variables) == jax.tree_util.tree_structure(variables)
  backbone = {k: v for k, v in half_variables["params"].items() if k != "head"}
  for leaf in jax.tree_util.tree_leaves((backbone, half_variables["batch_stats"])):
    assert leaf.dtype == jnp.float32
  out, updates = apply(half, variables, images, train=True)
  reference, _ = apply(model, variables, images, train=True)
  for key in ("embedding", "kappa"):
    assert out[key].dtype == jnp.float32, key
  # The head's learned logit scale takes JAX's default float dtype (float64 in
  # these x64 tests), so the logits are float32 outside the tests.
  assert out["logits"].dtype == reference["logits"].dtype != jnp.bfloat16
  for leaf in jax.tree_util.tree_leaves(updates):
    assert leaf.dtype == jnp.float32
  np.testing.assert_allclose(np.linalg.norm(out["embedding"], axis=-1), 1.0, atol=1e-5)
  # Same parameters, same function, to bfloat16 precision.
  np.testing.assert_allclose(out["embedding"], reference["embedding"], atol=0.05)


def test_resolution_halves_per_stage_after_the_first():
  model = CifarResNet(4, stage_sizes=(1, 1, 1), width=1 / 16)
  _, (_, state) = _shapes(model, jnp.zeros((2, 32, 32, 3), jnp.uint8),
                          capture_intermediates=True, mutable=["intermediates"])
  shapes = {name: state["intermediates"][name]["__call__"][0].shape
            for name in ("stem_conv", "stage1_block1", "stage2_block1", "stage3_block1")}
  assert shapes == {"stem_conv": (2, 32, 32, 4), "stage1_block1": (2, 32, 32, 4),
                    "stage2_block1": (2, 16, 16, 8), "stage3_block1": (2, 8, 8, 16)}


def test_resnet18_and_34_parameter_counts():
  # The CIFAR ResNet-18/34 of common practice (e.g. kuangliu/pytorch-cifar)
  # have 11,173,962 / 21,282,122 parameters with a 10-class linear layer of
  # 512 * 10 + 10 = 5,130, so their backbones have 11,168,832 / 21,276,992.
  for model, backbone in ((ResNet18(128), RESNET18_BACKBONE), (ResNet34(128), RESNET34_BACKBONE)):
    variables, out = _shapes(model)
    head = _count(variables["params"]["head"])
    assert head == 512 * 128 + 128
    assert _count(variables["params"]) - head == backbone
    assert out["embedding"].shape == (1, 128)
  assert _count(_shapes(ResNet18(128))[0]["params"]) == 11_234_496  # 11.2M with the head
  assert ResNet18(2).stage_sizes == STAGE_SIZES[18] == (2, 2, 2, 2)
  assert ResNet34(2).stage_sizes == STAGE_SIZES[34] == (3, 4, 6, 3)
  # Twice the width: about 4x the backbone (the 3-channel stem conv only doubles).
  wide = ResNet18(128, width=2)
  assert wide.stage_widths == (128, 256, 512, 1024)
  params = _shapes(wide)[0]["params"]
  assert _count(params) - _count(params["head"]) == 44_652_672


def test_bad_inputs_raise():
  model = CifarResNet(4, **TINY)
  with pytest.raises(ValueError, match="B, H, W, C"):
    _shapes(model, jnp.zeros((32, 32, 3), jnp.uint8))
  with pytest.raises(ValueError, match="one entry per channel"):
    _shapes(model, jnp.zeros((1, 16, 16, 1), jnp.uint8))
  _shapes(CifarResNet(4, mean=(0.5,), std=(0.25,), **TINY), jnp.zeros((1, 16, 16, 1), jnp.uint8))
  with pytest.raises(ValueError, match="stage_sizes"):
    _shapes(CifarResNet(4, stage_sizes=(), width=1 / 16))
  with pytest.raises(ValueError, match="width"):
    _shapes(CifarResNet(4, stage_sizes=(1,), width=0.001))
