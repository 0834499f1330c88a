"""Centroid state: initialisation, EMA update against a NumPy loop, schedule, sharding-invariance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sphereembed import centroids as cl


def ref_update(centroids, embeddings, labels, alpha):
  """The docstring's update, one class at a time, in float64."""
  centroids = np.asarray(centroids, np.float64)
  new = centroids.copy()
  for k in range(centroids.shape[0]):
    members = [np.asarray(embeddings[i], np.float64) for i in range(len(labels)) if labels[i] == k]
    if not members:
      continue
    mean = sum(members) / len(members)
    direction = mean / np.linalg.norm(mean)
    blended = alpha * direction + (1 - alpha) * centroids[k]
    new[k] = blended / np.linalg.norm(blended)
  return new


def _batch(key, batch, classes, dim, dtype):
  kx, kl, kc = jax.random.split(key, 3)
  x = cl.init_centroids(kx, batch, dim, dtype)
  labels = jax.random.randint(kl, (batch,), 0, classes)
  c = cl.init_centroids(kc, classes, dim, dtype)
  return c, x, labels


@pytest.mark.parametrize("dtype,atol", [(jnp.float32, 2e-6), (jnp.float64, 1e-12)])
@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.9, 1.0])
def test_update_matches_numpy_loop(dtype, atol, alpha):
  c, x, labels = _batch(jax.random.PRNGKey(1), 24, 7, 5, dtype)
  labels = labels.at[:3].set(0)  # class 0 present; some classes likely absent
  labels = jnp.where(labels == 6, 5, labels)  # class 6 absent for sure
  got = cl.update_centroids(c, x, labels, alpha)
  want = ref_update(c, x, np.asarray(labels), alpha)
  assert got.dtype == dtype
  np.testing.assert_allclose(np.asarray(got), want, atol=atol)
  np.testing.assert_array_equal(np.asarray(got[6]), np.asarray(c[6]))
  np.testing.assert_allclose(np.linalg.norm(np.asarray(got, np.float64), axis=1), 1.0, atol=atol * 4)


def test_update_is_jittable_and_equal():
  c, x, labels = _batch(jax.random.PRNGKey(2), 32, 4, 3, jnp.float32)
  eager = cl.update_centroids(c, x, labels, 0.3)
  jitted = jax.jit(cl.update_centroids)(c, x, labels, jnp.float32(0.3))
  np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), atol=1e-6)


def test_sign_is_one_minus_alpha_not_alpha_minus_one():
  # The opposite sign, (alpha - 1) for the old centroid's weight, would move a centroid away from its
  # own class.
  c = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  x = jnp.array([[0.6, 0.8]])
  new = cl.update_centroids(c, x, jnp.array([0]), 0.1)
  assert float(new[0] @ x[0]) > float(c[0] @ x[0])
  assert float(new[0] @ c[0]) > 0.9


def test_split_batch_gives_same_centroids_as_whole():
  c, x, labels = _batch(jax.random.PRNGKey(3), 64, 6, 4, jnp.float64)
  whole = cl.update_centroids(c, x, labels, 0.4)
  parts = [cl.class_sums(x[i:i + 16], labels[i:i + 16], 6) for i in range(0, 64, 16)]
  sums = sum(p[0] for p in parts)
  counts = sum(p[1] for p in parts)
  split = cl.update_centroids_from_sums(c, sums, counts, 0.4)
  np.testing.assert_allclose(np.asarray(split), np.asarray(whole), atol=1e-13)


def test_degenerate_blends_keep_the_centroid():
  c = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  # Class 0: embeddings cancel (zero mean); class 1: alpha = 1/2 against the antipode.
  x = jnp.array([[0.0, 1.0], [0.0, -1.0], [0.0, -1.0]])
  new = cl.update_centroids(c, x, jnp.array([0, 0, 1]), 0.5)
  assert np.all(np.isfinite(np.asarray(new)))
  np.testing.assert_array_equal(np.asarray(new), np.asarray(c))


def test_init_centroids_unit_and_deterministic():
  a = cl.init_centroids(jax.random.PRNGKey(0), 1000, 3)
  b = cl.init_centroids(jax.random.PRNGKey(0), 1000, 3)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_allclose(np.linalg.norm(np.asarray(a), axis=1), 1.0, atol=1e-6)
  # Uniform on S^2: every coordinate has mean ~0 and variance ~1/3.
  assert np.all(np.abs(np.asarray(a).mean(0)) < 0.1)
  np.testing.assert_allclose(np.asarray(a).var(0), 1 / 3, atol=0.05)
  with pytest.raises(ValueError, match="num_classes and dim"):
    cl.init_centroids(jax.random.PRNGKey(0), 0, 3)


def test_ema_alpha_schedule_and_gate():
  steps = np.array([0, 500, 1000, 3000])
  got = np.asarray(jax.vmap(cl.ema_alpha)(jnp.asarray(steps)))
  np.testing.assert_allclose(got, 0.25 * 0.65 ** (steps / 1000), rtol=1e-6)
  assert float(cl.negative_weight(cl.ema_alpha(0), 0.1)) == 1.0
  assert float(cl.negative_weight(cl.ema_alpha(10_000), 0.1)) == 0.0


@pytest.mark.parametrize("bad", [
    dict(labels=np.array([0, 9])), dict(alpha=1.5), dict(alpha=-0.1),
    dict(x=np.full((2, 2), np.nan)), dict(x=np.ones((2, 3))),
])
def test_bad_input_raises(bad):
  c = jnp.eye(2)
  x = jnp.asarray(bad.get("x", np.array([[1.0, 0.0], [0.0, 1.0]])))
  labels = jnp.asarray(bad.get("labels", np.array([0, 1])))
  with pytest.raises(ValueError):
    cl.update_centroids(c, x, labels, bad.get("alpha", 0.5))
