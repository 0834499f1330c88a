"""Laplace posterior: sampling, prior tuning, post-hoc and online LAM, prediction, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from sphereembed import geometry, laplace, losses
from tests.laplace import _models

NUM_SAMPLES = 20_000


@pytest.fixture(scope="module")
def linear_problem():
  w = {"w": jax.random.normal(jax.random.key(0), (3, 2), jnp.float64)}
  x = jax.random.normal(jax.random.key(1), (6, 3), jnp.float64)
  return w, x, jnp.array([0, 0, 1, 1, 2, 2])


def test_full_sampling_mean_and_covariance(linear_problem):
  # Linear model: the precision is the exact loss Hessian plus the prior.
  w, x, labels = linear_problem
  post = laplace.posthoc_laplace(_models.linear_embed, w, [(x, labels)], margin=1.0,
                                 structure="full", prior_precision=0.5)
  precision = np.asarray(post.precision())
  covariance = np.linalg.inv(precision)
  samples = jax.jit(lambda p, k: p.sample(k, NUM_SAMPLES))(post, jax.random.key(2))
  flat = np.asarray(jax.vmap(lambda s: ravel_pytree(s)[0])(samples))
  mean = np.asarray(ravel_pytree(w)[0])
  # S (m - mean)^T A (m - mean) ~ chi^2(6): its 99.99% quantile is 27.9.
  delta = flat.mean(axis=0) - mean
  assert NUM_SAMPLES * delta @ precision @ delta < 27.9
  empirical = np.cov(flat, rowvar=False)
  # Entrywise standard error of a sample covariance: sqrt((C_ii C_jj + C_ij^2) / S).
  stderr = np.sqrt((np.outer(np.diag(covariance), np.diag(covariance)) + covariance**2)
                   / NUM_SAMPLES)
  assert np.all(np.abs(empirical - covariance) < 5 * stderr)


def test_full_sampling_is_continuous_in_the_curvature():
  # A low-rank curvature leaves a repeated eigenvalue (the prior alone): its eigenvectors are
  # arbitrary, and a rounding-level change of the curvature may rotate them. The samples must
  # not follow: the same noise draws nearly the same weights (another device count sums the
  # curvature in another order).
  rng = np.random.default_rng(0)
  factor = rng.normal(size=(51, 4)) * 100.0
  curvature = factor @ factor.T  # rank 4 of 51: 47 eigenvalues at the prior
  mean = {"w": jnp.zeros(51, jnp.float32)}
  perturbed = curvature * (1 + 1e-7 * rng.normal(size=curvature.shape))
  perturbed = 0.5 * (perturbed + perturbed.T)
  draws = []
  for matrix in (curvature, perturbed):
    post = laplace.laplace_posterior(mean, jnp.asarray(matrix, jnp.float32), prior_precision=1.0,
                                     structure="full")
    draws.append(np.asarray(post.sample(jax.random.key(0), 8)["w"]))
  # Float32 conditioning leaves a few percent (0.08 here); eigenvectors moved them by 3.4.
  np.testing.assert_allclose(draws[1], draws[0], atol=0.25)


def test_diagonal_sampling_mean_and_variance():
  mean = {"a": jnp.array([1.0, -2.0, 0.5]), "b": jnp.array([[0.0, 3.0]])}
  curvature = {"a": jnp.array([3.0, -1.0, 0.0]), "b": jnp.array([[10.0, 0.5]])}
  post = laplace.laplace_posterior(mean, curvature, prior_precision=2.0)
  variance = np.asarray(ravel_pytree(post.variance())[0])
  np.testing.assert_allclose(variance, 1 / np.array([5.0, 2.0, 2.0, 12.0, 2.5]))
  flat = np.asarray(jax.vmap(lambda s: ravel_pytree(s)[0])(post.sample(jax.random.key(3),
                                                                       NUM_SAMPLES)))
  z = (flat.mean(axis=0) - np.asarray(ravel_pytree(mean)[0])) / np.sqrt(variance / NUM_SAMPLES)
  assert np.all(np.abs(z) < 4.5)
  # The sample variance's relative standard error is sqrt(2 / S) = 1%.
  np.testing.assert_allclose(flat.var(axis=0, ddof=1) / variance, 1.0, atol=0.05)


def test_clipping_and_dense_variance():
  mean = {"w": jnp.zeros(3)}
  curvature = jnp.diag(jnp.array([2.0, -3.0, 1.0]))
  curvature = curvature.at[0, 1].set(0.5).at[1, 0].set(0.5)
  post = laplace.laplace_posterior(mean, curvature, prior_precision=1.0, structure="full")
  values = np.linalg.eigvalsh(np.asarray(post.precision()))
  assert values.min() == pytest.approx(1.0)  # the negative eigenvalue clipped to the prior
  np.testing.assert_allclose(post.variance()["w"], np.diag(np.linalg.inv(post.precision())))
  assert post.spectrum().min() >= 0


def test_prior_precision_maximises_marginal_likelihood(linear_problem):
  w, x, labels = linear_problem
  for structure in ("diagonal", "full"):
    post = laplace.posthoc_laplace(_models.linear_embed, w, [(x, labels)], margin=1.0,
                                   structure=structure, repulsive="clipped")
    best = float(post.prior_precision)
    objective = lambda lam: float(laplace.log_marginal_likelihood(post, lam))
    grid = np.exp(np.linspace(np.log(best) - 3, np.log(best) + 3, 301))
    assert objective(best) >= max(objective(lam) for lam in grid) - 1e-10
    # MacKay's condition: lambda ||theta||^2 = sum g / (g + lambda).
    g = np.asarray(post.spectrum())
    assert best * np.sum(np.asarray(ravel_pytree(w)[0]) ** 2) == pytest.approx(
        np.sum(g / (g + best)), rel=1e-8)
  zero = laplace.laplace_posterior({"w": jnp.zeros(2)}, {"w": jnp.ones(2)})
  assert float(laplace.optimize_prior_precision(zero, bounds=(1e-3, 1e3)).prior_precision) \
      == pytest.approx(1e3)


def test_posthoc_accumulates_batches_with_subset():
  params = _models.mlp_params(jax.random.key(4))
  x = jax.random.normal(jax.random.key(5), (3, 4, 3), jnp.float64)
  labels = jnp.array([[0, 0, 1, 1], [1, 2, 2, 1], [0, 1, 0, 1]])
  batches = [{"image": xb, "label": yb} for xb, yb in zip(x, labels)]
  post = laplace.posthoc_laplace(_models.mlp_embed, params, batches, margin=1.0,
                                 structure="full", subset=[("head",)], repulsive="separate",
                                 prior_precision=2.0, scale=3.0)
  head = laplace.select_subset(params, [("head",)])
  fn = lambda sub, xb: _models.mlp_embed(laplace.merge_subset(params, sub), xb)
  dense = jax.jit(lambda xb, yb: laplace.ggn_dense(fn, head, xb, yb, margin=1.0,
                                                   repulsive="separate"))
  expected = sum(dense(xb, yb) for xb, yb in zip(x, labels))
  np.testing.assert_allclose(post.curvature, 3.0 * expected, rtol=1e-10)
  assert post.subset == (("head",),) and post.num_params == 15
  assert float(post.prior_precision) == 2.0
  # Diagonal over all parameters from a generator (one pass).
  diag = laplace.posthoc_laplace(_models.mlp_embed, params, ((xb, yb) for xb, yb in
                                                              zip(x, labels)), margin=1.0)
  assert float(diag.prior_precision) > 0
  out = laplace.predict(_models.mlp_embed, post, x[0], key=jax.random.key(6), num_samples=4,
                        params=params)
  assert out.samples.shape == (4, 4, 3)


def test_online_steps():
  params = _models.mlp_params(jax.random.key(7))
  x = jax.random.normal(jax.random.key(8), (4, 6, 3), jnp.float64)
  labels = jnp.array([0, 0, 1, 1, 2, 2])
  post = laplace.laplace_posterior(laplace.select_subset(params, [("head",)]),
                                   prior_precision=1.0, subset=[("head",)])
  tx = optax.sgd(0.1)
  opt_state = tx.init(params)
  memory, scale = 0.9, 2.0

  @jax.jit
  def step(params, opt_state, post, key, xb):
    def loss_fn(p):
      samples = laplace.perturbed_params(key, post, p, 2)
      z = laplace.embed_samples(_models.mlp_embed, samples, xb, params=p, subset=post.subset)
      return jnp.mean(jax.vmap(lambda e: losses.contrastive(e, labels, margin=1.0))(z)), samples

    (loss, samples), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    curvature = laplace.online_curvature(_models.mlp_embed, samples, xb, labels, margin=1.0,
                                         repulsive="clipped", params=params, subset=post.subset)
    updates, opt_state = tx.update(grads, opt_state)
    params = optax.apply_updates(params, updates)
    post = laplace.online_update(post, curvature, memory_factor=memory, scale=scale,
                                 params=params)
    return params, opt_state, post, loss, curvature, grads

  expected = jax.tree_util.tree_map(jnp.zeros_like, post.curvature)
  for i, xb in enumerate(x):
    old = params
    params, opt_state, post, loss, curvature, grads = step(params, opt_state, post,
                                                           jax.random.key(10 + i), xb)
    expected = jax.tree_util.tree_map(lambda e, c: memory * e + scale * c, expected, curvature)
    assert np.isfinite(loss)
    assert float(optax.tree.norm(grads["body"])) > 0  # the whole network trains
    np.testing.assert_allclose(ravel_pytree(post.curvature)[0], ravel_pytree(expected)[0])
    np.testing.assert_allclose(ravel_pytree(post.mean)[0],
                               ravel_pytree(laplace.select_subset(params, [("head",)]))[0])
    assert not np.allclose(ravel_pytree(old)[0], ravel_pytree(params)[0])
  assert float(jnp.max(ravel_pytree(post.curvature)[0])) > 0
  post.validate()


def test_perturbed_gradient_is_the_gradient_at_the_sample():
  params = {"w": jnp.array([[1.0, 0.5], [0.2, -1.0]])}
  x, labels = jnp.eye(2), jnp.array([0, 1])
  post = laplace.laplace_posterior(params, prior_precision=4.0)
  loss = lambda p: losses.contrastive(geometry.l2_normalize(x @ p["w"]), labels, margin=1.5)
  key = jax.random.key(0)
  grad = jax.jit(jax.grad(lambda p: loss(jax.tree_util.tree_map(
      lambda s: s[0], laplace.perturbed_params(key, post, p, 1)))))(params)
  sample = jax.tree_util.tree_map(lambda s: s[0], post.sample(key, 1))
  np.testing.assert_allclose(grad["w"], jax.jit(jax.grad(loss))(sample)["w"], rtol=1e-12)


def test_predict():
  params = _models.mlp_params(jax.random.key(11))
  x = jax.random.normal(jax.random.key(12), (5, 3), jnp.float64)
  tight = laplace.laplace_posterior(params, prior_precision=1e12)
  out = laplace.predict(_models.mlp_embed, tight, x, key=jax.random.key(0), num_samples=3)
  np.testing.assert_allclose(out.mean, _models.mlp_embed(params, x), atol=1e-5)
  assert float(jnp.max(out.uncertainty)) < 1e-4
  loose = tight.replace(prior_precision=jnp.asarray(1.0, jnp.float64))
  predict = jax.jit(lambda post, key: laplace.predict(
      _models.mlp_embed, post, x, key=key, num_samples=6, normalize_mean=True, batch_size=2))
  out = predict(loose, jax.random.key(1))
  again = predict(loose, jax.random.key(1))
  np.testing.assert_array_equal(out.samples, again.samples)  # one key, the same networks
  assert out.samples.shape == (5, 6, 3) and out.std.shape == (5, 3)
  np.testing.assert_allclose(jnp.linalg.norm(out.samples, axis=-1), 1.0, rtol=1e-12)
  np.testing.assert_allclose(jnp.linalg.norm(out.mean, axis=-1), 1.0, rtol=1e-12)
  np.testing.assert_allclose(out.uncertainty, jnp.sum(jnp.std(out.samples, axis=1, ddof=1), -1))
  assert float(jnp.min(out.uncertainty)) > 1e-3


def test_bad_input(linear_problem):
  w, x, labels = linear_problem
  mean = {"w": jnp.zeros(2)}
  with pytest.raises(ValueError, match="not positive"):
    laplace.laplace_posterior(mean, prior_precision=0.0)
  with pytest.raises(ValueError, match=">= 0"):
    laplace.laplace_posterior(mean, {"w": jnp.ones(2)}, prior_precision=-1.0)
  with pytest.raises(ValueError, match="NaN"):
    laplace.laplace_posterior(mean, {"w": jnp.array([1.0, jnp.nan])})
  with pytest.raises(ValueError, match="shapes"):
    laplace.laplace_posterior(mean, {"w": jnp.ones(3)})
  with pytest.raises(ValueError, match="shape"):
    laplace.laplace_posterior(mean, jnp.eye(3), structure="full")
  with pytest.raises(ValueError, match="structure"):
    laplace.laplace_posterior(mean, structure="kron")
  with pytest.raises(ValueError, match="scalar"):
    laplace.laplace_posterior(mean, prior_precision=jnp.ones(2))
  post = laplace.laplace_posterior(mean)
  with pytest.raises(ValueError, match="num_samples"):
    post.sample(jax.random.key(0), 0)
  bad = post.replace(prior_precision=jnp.asarray(-1.0))
  with pytest.raises(ValueError):
    bad.sample(jax.random.key(0), 2)
  with pytest.raises(ValueError, match="empty"):
    laplace.posthoc_laplace(_models.linear_embed, w, [], margin=1.0)
  with pytest.raises(ValueError, match="batch"):
    laplace.posthoc_laplace(_models.linear_embed, w, [(x, labels[:2])], margin=1.0)
  with pytest.raises(ValueError, match="label"):
    laplace.posthoc_laplace(_models.linear_embed, w, [{"image": x}], margin=1.0)
  with pytest.raises(ValueError, match="marglik"):
    laplace.posthoc_laplace(_models.linear_embed, w, [(x, labels)], margin=1.0,
                            prior_precision="evidence")
  with pytest.raises(ValueError, match="not found"):
    laplace.posthoc_laplace(_models.linear_embed, w, [(x, labels)], margin=1.0,
                            subset=[("head",)])
  with pytest.raises(ValueError, match="memory_factor"):
    laplace.online_update(post, {"w": jnp.ones(2)}, memory_factor=1.5)
  with pytest.raises(ValueError, match="shapes"):
    laplace.online_update(post, {"w": jnp.ones(3)})
  with pytest.raises(ValueError, match="ddof"):
    laplace.predictive_embeddings(jnp.ones((1, 2, 3)))
  subset_post = laplace.laplace_posterior({"w": jnp.zeros(2)}, subset=[("w",)])
  with pytest.raises(ValueError, match="params"):
    laplace.predict(_models.linear_embed, subset_post, x, key=jax.random.key(0), num_samples=2)
  with pytest.raises(ValueError, match="bounds"):
    laplace.optimize_prior_precision(post, bounds=(1.0, 0.5))
