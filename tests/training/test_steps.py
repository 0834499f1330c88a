"""The jitted train step: pure, lowers the loss, moves the centroids, every loss selectable."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sphereembed import centroids as centroids_lib
from sphereembed.models import SmallCNN
from sphereembed.methods.centroid import (LOSSES, PROXY_LOSSES, LossSpec, create_train_state,
                                         embed_dataset, train_step)
from sphereembed.training.state import TrainState


def _problem(num_classes=4, per_class=8, seed=0):
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(num_classes), per_class).astype(np.int32)
  images = rng.integers(0, 40, size=(len(labels), 28, 28, 1)).astype(np.uint8)
  for i, label in enumerate(labels):
    images[i, 2 + 6 * label:6 + 6 * label, 4:24] = 250
  return {"image": images, "label": labels}


def _state(dim=8, num_classes=4, head=False, lr=3e-3, proxies=False, memory_size=0):
  """``proxies``: True for one per class, or the number of proxies per class."""
  model = SmallCNN(dim, num_classes if head else None, features=(4, 8), hidden=16,
                   num_proxies=num_classes * int(proxies) if proxies else None)
  return create_train_state(model, optax.adam(lr), jax.random.PRNGKey(0),
                            jnp.zeros((1, 28, 28, 1), jnp.uint8), num_classes,
                            memory_size=memory_size)


@pytest.mark.parametrize("loss", LOSSES)
def test_train_step_lowers_the_loss(loss):
  batch = _problem()
  spec = LossSpec(name=loss, margin=1.0)
  # Sub-center ArcFace: its default 3 sub-centers per class.
  state = _state(head=loss == "softmax",
                 proxies=(3 if loss == "subcenter_arcface" else loss in PROXY_LOSSES))
  first = None
  for _ in range(25):
    state, metrics = train_step(state, batch, spec)
    first = float(metrics["loss"]) if first is None else first
  assert np.isfinite(float(metrics["loss"]))
  if loss == "ntxent":
    # Supervised NT-Xent is bounded below by log |P| (7 positives per anchor here): reached.
    assert first > np.log(7) + 0.03 and float(metrics["loss"]) < np.log(7) + 0.01
  else:
    # Lifted structure's log-sum-exps over chord distances (at most 2) keep it far from 0.
    drop = 0.1 if loss == "lifted_structure" else 0.2
    assert float(metrics["loss"]) < first - drop * abs(first), (first, float(metrics["loss"]))
  assert int(state.step) == 25
  np.testing.assert_allclose(float(metrics["embedding_norm"]), 1.0, atol=1e-5)


def test_train_step_is_pure_and_threads_the_state():
  batch = _problem()
  spec = LossSpec()
  a, metrics_a = train_step(_state(), batch, spec)
  b, metrics_b = train_step(_state(), batch, spec)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert float(metrics_a["loss"]) == float(metrics_b["loss"])
  assert not np.array_equal(np.asarray(a.rng), np.asarray(_state().rng))


def test_centroid_update_uses_the_pre_update_embeddings():
  batch = _problem()
  state = _state()
  embeddings = state.apply_fn({"params": state.params}, batch["image"])["embedding"]
  expected = centroids_lib.update_centroids(
      state.extras["centroids"], embeddings, batch["label"], centroids_lib.ema_alpha(0))
  new_state, _ = train_step(state, batch, LossSpec())
  np.testing.assert_allclose(np.asarray(new_state.extras["centroids"]), np.asarray(expected), atol=1e-6)


def test_centroid_warmup_keeps_centroids_and_gate_switches_off_negatives():
  batch = _problem()
  state = _state()
  before = np.asarray(state.extras["centroids"])
  state, metrics = train_step(state, batch, LossSpec(centroid_warmup_steps=5))
  np.testing.assert_array_equal(np.asarray(state.extras["centroids"]), before)
  assert float(metrics["alpha"]) == 0.0
  # A gate above alpha = 0.25 removes the negative term: the loss is d_y >= 0.
  _, gated = train_step(_state(), batch, LossSpec(negative_gate=0.5))
  _, ungated = train_step(_state(), batch, LossSpec())
  assert float(gated["loss"]) >= 0 > float(ungated["loss"])


def test_class_weights_enter_the_loss():
  batch = _problem()
  uniform = dict(batch, weight=np.ones(32, np.float32))
  skewed = dict(batch, weight=np.where(batch["label"] == 0, 10.0, 0.1).astype(np.float32))
  _, m_plain = train_step(_state(), batch, LossSpec())
  _, m_uniform = train_step(_state(), uniform, LossSpec())
  _, m_skewed = train_step(_state(), skewed, LossSpec())
  np.testing.assert_allclose(float(m_uniform["loss"]), float(m_plain["loss"]), rtol=1e-6)
  assert abs(float(m_skewed["loss"]) - float(m_plain["loss"])) > 1e-4


def test_classifier_head_and_embed_dataset_padding():
  state = _state(dim=3, head=True)
  images = _problem()["image"][:7]
  out = embed_dataset(state, images, batch_size=4)
  assert out["embedding"].shape == (7, 3) and out["logits"].shape == (7, 4)
  direct = state.apply_fn({"params": state.params}, images)
  # float32 params; batches of 4 and of 7 may run different conv kernels (1.2e-6 seen on AVX-512).
  np.testing.assert_allclose(out["embedding"], np.asarray(direct["embedding"]), atol=1e-5)


def test_loss_spec_rejects_bad_values():
  with pytest.raises(ValueError, match="Unknown loss"):
    LossSpec(name="sphereface")
  with pytest.raises(ValueError, match="Unknown metric"):
    LossSpec(metric="manhattan")
  with pytest.raises(ValueError, match="EMA schedule"):
    LossSpec(alpha_base=2.0)


def test_state_is_a_pytree_with_static_functions():
  state = _state()
  assert isinstance(state, TrainState)
  leaves = jax.tree_util.tree_leaves(state)
  assert all(hasattr(x, "shape") for x in leaves)
  assert state.extras["centroids"].shape == (4, 8)


@pytest.mark.parametrize("confidence,head", [("vmf", "kappa"), ("gaussian", "sigma"),
                                             ("gaussian", "sigma_diagonal")])
def test_confidence_heads_train_with_their_likelihood(confidence, head):
  batch = _problem()
  model = SmallCNN(8, None, features=(4, 8), hidden=16, confidence=head, kappa_max=50.0)
  state = create_train_state(model, optax.adam(3e-3), jax.random.PRNGKey(0),
                             jnp.zeros((1, 28, 28, 1), jnp.uint8), 4)
  outputs = state.apply_fn({"params": state.params}, batch["image"])
  key = "kappa" if head == "kappa" else "log_sigma"
  assert outputs[key].shape == ((32, 8) if head == "sigma_diagonal" else (32,))
  spec = LossSpec(confidence=confidence, confidence_embedding_gradient=False)
  name = f"loss_{confidence}_nll"
  first = None
  for _ in range(30):
    state, metrics = train_step(state, batch, spec)
    first = float(metrics[name]) if first is None else first
  assert float(metrics[name]) < first - 0.05 * abs(first), (first, float(metrics[name]))
  if head == "kappa":
    assert 0.0 < float(metrics["kappa_mean"]) <= 50.0


def test_confidence_embedding_gradient_switch():
  batch = _problem()
  model = SmallCNN(8, None, features=(4, 8), hidden=16, confidence="kappa")
  state = create_train_state(model, optax.sgd(0.1), jax.random.PRNGKey(0),
                             jnp.zeros((1, 28, 28, 1), jnp.uint8), 4)

  def projection_after(spec):
    new_state, _ = train_step(jax.tree_util.tree_map(jnp.copy, state), batch, spec)
    return new_state.params["head"]

  plain = projection_after(LossSpec())
  frozen = projection_after(LossSpec(confidence="vmf", confidence_embedding_gradient=False))
  joint = projection_after(LossSpec(confidence="vmf"))
  # Frozen: the embedding moves exactly as under NCL alone; the kappa head learns.
  np.testing.assert_array_equal(frozen["projection"]["kernel"], plain["projection"]["kernel"])
  assert not np.array_equal(frozen["kappa"]["kernel"], state.params["head"]["kappa"]["kernel"])
  assert not np.allclose(joint["projection"]["kernel"], plain["projection"]["kernel"])
  with pytest.raises(ValueError, match="confidence"):
    LossSpec(confidence="beta")
  with pytest.raises(ValueError, match="confidence must be one of"):
    SmallCNN(8, confidence="bogus").init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))


def test_confidence_feature_gradient_switch_keeps_the_trunk_on_the_embedding_loss():
  batch = _problem()

  def params_after(spec, feature_gradient):
    model = SmallCNN(8, None, features=(4, 8), hidden=16, confidence="kappa",
                     confidence_feature_gradient=feature_gradient)
    state = create_train_state(model, optax.sgd(0.1), jax.random.PRNGKey(0),
                               jnp.zeros((1, 28, 28, 1), jnp.uint8), 4)
    new_state, _ = train_step(state, batch, spec)
    return state.params, new_state.params

  vmf_only_head = LossSpec(confidence="vmf", confidence_embedding_gradient=False)
  start, detached = params_after(vmf_only_head, feature_gradient=False)
  _, plain = params_after(LossSpec(), feature_gradient=False)
  _, shared = params_after(vmf_only_head, feature_gradient=True)
  # Detached: every trunk and projection weight moves exactly as under NCL alone.
  for name in ("Conv_0", "Conv_1", "Dense_0"):
    np.testing.assert_array_equal(detached[name]["kernel"], plain[name]["kernel"])
  np.testing.assert_array_equal(detached["head"]["projection"]["kernel"],
                                plain["head"]["projection"]["kernel"])
  assert not np.array_equal(detached["head"]["kappa"]["kernel"], start["head"]["kappa"]["kernel"])
  # Shared features: the NLL reaches the trunk through the kappa head.
  assert not np.allclose(shared["Dense_0"]["kernel"], plain["Dense_0"]["kernel"])


@pytest.mark.parametrize("backbone", ["resnet", "small_cnn"])
def test_batch_norm_statistics_are_threaded_and_checkpointed(tmp_path, backbone):
  from sphereembed.models.resnet import CifarResNet
  from sphereembed.training.checkpoints import Checkpointer
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(4), 4).astype(np.int32)
  if backbone == "resnet":
    images = rng.integers(0, 255, size=(16, 32, 32, 3)).astype(np.uint8)
    model = CifarResNet(8, stage_sizes=(1, 1), width=0.125)
  else:
    images = rng.integers(0, 255, size=(16, 28, 28, 1)).astype(np.uint8)
    model = SmallCNN(8, features=(4, 8), hidden=16, batch_norm=True)
  state = create_train_state(model, optax.adam(1e-3), jax.random.PRNGKey(0), images[:1], 4)
  before = jax.tree_util.tree_map(np.asarray, state.batch_stats)
  assert before and set(state.variables()) == {"params", "batch_stats"}
  state, metrics = train_step(state, {"image": images, "label": labels}, LossSpec())
  assert np.isfinite(float(metrics["loss"]))
  changed = jax.tree_util.tree_map(lambda a, b: not np.allclose(a, np.asarray(b)), before,
                                   state.batch_stats)
  assert all(jax.tree_util.tree_leaves(changed))
  # Evaluation uses the running statistics: one image alone embeds as in a batch.
  single = embed_dataset(state, images[:1], batch_size=1)["embedding"]
  batched = embed_dataset(state, images, batch_size=16)["embedding"]
  np.testing.assert_allclose(single[0], batched[0], atol=1e-5)
  checkpointer = Checkpointer(str(tmp_path / "ckpt"))
  checkpointer.save(1, state)
  checkpointer.close()
  fresh = create_train_state(model, optax.adam(1e-3), jax.random.PRNGKey(1), images[:1], 4)
  restored = Checkpointer(str(tmp_path / "ckpt")).restore_or_keep(fresh)
  for a, b in zip(jax.tree_util.tree_leaves(restored.batch_stats),
                  jax.tree_util.tree_leaves(state.batch_stats)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_proxy_losses_train_the_head_proxies():
  batch = _problem()
  state = _state(proxies=True)
  before = np.asarray(state.params["head"]["proxies"])
  assert before.shape == (4, 8)
  new_state, metrics = train_step(state, batch, LossSpec(name="arcface", options=(("scale", 16.0),)))
  assert "loss_arcface" in metrics
  assert np.max(np.abs(np.asarray(new_state.params["head"]["proxies"]) - before)) > 1e-4
  # The options reach the loss: another scale, another value.
  _, other = train_step(_state(proxies=True), batch, LossSpec(name="arcface"))
  assert abs(float(other["loss"]) - float(metrics["loss"])) > 1e-3


def test_memory_step_scores_against_the_memory_and_enqueues_the_batch():
  from sphereembed import losses, memory as memory_lib
  batch = _problem()  # 32 images, 4 classes
  state = _state(memory_size=48)
  spec = LossSpec(name="multi_similarity", memory_size=48)
  # Step 1: the memory is empty, so the loss is the batch against itself (PML's XBM).
  embeddings = state.apply_fn({"params": state.params}, batch["image"], train=True)["embedding"]
  expected = memory_lib.memory_loss(losses.multi_similarity, embeddings, batch["label"],
                                    memory_lib.Memory(**state.extras["memory"]))
  state, metrics = train_step(state, batch, spec)
  np.testing.assert_allclose(float(metrics["loss"]), float(expected), rtol=1e-5)
  memory = state.extras["memory"]
  assert int(memory["position"]) == 32 and int(np.sum(memory["valid"])) == 32
  np.testing.assert_array_equal(np.asarray(memory["labels"][:32]), batch["label"])
  np.testing.assert_allclose(np.asarray(memory["embeddings"][:32]), np.asarray(embeddings),
                             atol=1e-6)
  # Step 2 wraps around: 16 slots left, the batch's last 16 rows go to slots 0-15.
  state, _ = train_step(state, batch, spec)
  memory = state.extras["memory"]
  assert int(memory["position"]) == 16 and bool(np.all(memory["valid"]))
  np.testing.assert_array_equal(np.asarray(memory["labels"][:16]), batch["label"][16:])
  np.testing.assert_array_equal(np.asarray(memory["labels"][32:]), batch["label"][:16])


def test_memory_needs_a_loss_with_a_reference_form():
  with pytest.raises(ValueError, match="memory_size needs"):
    LossSpec(name="ncl", memory_size=8)
  with pytest.raises(ValueError, match="memory_size needs"):
    LossSpec(name="arcface", memory_size=8)


def test_triplet_memory_step_mines_the_memory():
  from sphereembed import losses, memory as memory_lib
  batch = _problem()
  state = _state(memory_size=40)
  spec = LossSpec(name="triplet_batch_hard", margin=0.3, metric="euclidean", memory_size=40)
  embeddings = state.apply_fn({"params": state.params}, batch["image"], train=True)["embedding"]
  expected = memory_lib.memory_loss(losses.triplet_batch_hard, embeddings, batch["label"],
                                    memory_lib.Memory(**state.extras["memory"]), margin=0.3,
                                    metric="euclidean")
  _, metrics = train_step(state, batch, spec)
  np.testing.assert_allclose(float(metrics["loss"]), float(expected), rtol=1e-5)


def test_subcenter_prototypes_are_the_dominant_subcenters():
  from sphereembed.methods.centroid import prototypes
  state = _state(proxies=3)
  proxies = np.asarray(state.params["head"]["proxies"])
  assert proxies.shape == (12, 8)
  unit = proxies / np.linalg.norm(proxies, axis=1, keepdims=True)
  # Centroids on sub-centers 2, 0, 1, 2 of the four classes (rows k * 3 + s).
  chosen = np.array([2, 0, 1, 2])
  state = state.with_extras(centroids=jnp.asarray(unit[np.arange(4) * 3 + chosen]))
  np.testing.assert_allclose(prototypes(state), unit[np.arange(4) * 3 + chosen], atol=1e-6)
  # One proxy per class: the unit proxies themselves; none: the EMA centroids.
  single = _state(proxies=True)
  one = np.asarray(single.params["head"]["proxies"])
  np.testing.assert_allclose(prototypes(single), one / np.linalg.norm(one, axis=1, keepdims=True),
                             atol=1e-6)
  plain = _state()
  np.testing.assert_array_equal(prototypes(plain), np.asarray(plain.extras["centroids"]))


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_proxy_learning_rate_multiplier_scales_the_proxies_updates_only(optimizer):
  from sphereembed import methods
  from sphereembed.training import builders
  params = {"head": {"proxies": jnp.ones((3, 2)), "projection": {"kernel": jnp.ones((4, 2))}}}
  grads = jax.tree_util.tree_map(jnp.ones_like, params)

  def updates(multiplier):
    config = methods.validate_config({"loss": "proxy_anchor", "optimizer": optimizer,
                                      "proxy_learning_rate_multiplier": multiplier})
    tx = builders.make_optimizer(config, 100)
    state = tx.init(params)
    for _ in range(12):  # past the warm-up's first steps, where the rate is 0
      update, state = tx.update(grads, state, params)
    return update

  plain, fast = updates(1.0), updates(10.0)
  np.testing.assert_allclose(fast["head"]["proxies"], 10 * plain["head"]["proxies"], rtol=1e-5)
  np.testing.assert_allclose(fast["head"]["projection"]["kernel"],
                             plain["head"]["projection"]["kernel"], rtol=1e-6)
  assert float(jnp.abs(plain["head"]["proxies"]).max()) > 0
