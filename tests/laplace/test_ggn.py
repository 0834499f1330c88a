"""GGN of the contrastive loss: products, diagonal and dense against jax.hessian references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from sphereembed import laplace
from sphereembed.models.cnn import SmallCNN
from tests.laplace import _models

MARGIN = 1.2
REPULSIVE = ("positives", "clipped", "separate")


def jitted(fn, embed, **options):
  """``fn(embed, params, x, labels, **options)`` compiled as one program."""
  return jax.jit(lambda params, x, labels: fn(embed, params, x, labels, **options))


@pytest.fixture(scope="module")
def problem():
  params = _models.mlp_params(jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (7, 3), jnp.float64)
  labels = _models.LABELS
  z = _models.mlp_embed(params, x)
  active = _models.active_negatives(z, labels, MARGIN)
  negatives = np.asarray(labels)[:, None] != np.asarray(labels)[None]
  # The masks matter only if some negatives are inside the margin and some outside.
  assert active.any() and (negatives & ~active).any()
  return params, x, labels


def test_embedding_hessian_matches_jax_hessian(problem):
  params, x, labels = problem
  z = _models.mlp_embed(params, x)
  for repulsive in REPULSIVE:
    ours = laplace.contrastive_embedding_hessian(z, labels, margin=MARGIN, repulsive=repulsive)
    reference = _models.reference_loss_hessian(z, labels, MARGIN, repulsive)
    np.testing.assert_allclose(ours, reference, atol=1e-12, err_msg=repulsive)


@pytest.mark.parametrize("repulsive", REPULSIVE)
def test_ggn_vector_products_match_dense_reference(problem, repulsive):
  params, x, labels = problem
  reference = _models.reference_ggn(_models.mlp_embed, params, x, labels, MARGIN, repulsive)
  flat, unravel = ravel_pytree(params)
  mv = laplace.ggn_operator(_models.mlp_embed, params, x, labels, margin=MARGIN,
                            repulsive=repulsive)
  vectors = jax.random.normal(jax.random.key(2), (3, flat.size), jnp.float64)
  for v in vectors:
    product, _ = ravel_pytree(mv(unravel(v)))
    np.testing.assert_allclose(product, reference @ v, rtol=1e-10, atol=1e-10)
  one = laplace.ggn_vector_product(_models.mlp_embed, params, x, labels, unravel(vectors[0]),
                                   margin=MARGIN, repulsive=repulsive)
  np.testing.assert_allclose(ravel_pytree(one)[0], reference @ vectors[0], rtol=1e-10,
                             atol=1e-10)


@pytest.mark.parametrize("repulsive", REPULSIVE)
def test_diagonal_and_dense_match_reference(problem, repulsive):
  params, x, labels = problem
  reference = _models.reference_ggn(_models.mlp_embed, params, x, labels, MARGIN, repulsive)
  diagonal = jitted(laplace.ggn_diagonal, _models.mlp_embed, margin=MARGIN,
                    repulsive=repulsive)(params, x, labels)
  assert jax.tree_util.tree_structure(diagonal) == jax.tree_util.tree_structure(params)
  np.testing.assert_allclose(ravel_pytree(diagonal)[0], jnp.diag(reference), rtol=1e-10,
                             atol=1e-12)
  dense = jitted(laplace.ggn_dense, _models.mlp_embed, margin=MARGIN,
                 repulsive=repulsive)(params, x, labels)
  np.testing.assert_allclose(dense, reference, rtol=1e-10, atol=1e-12)
  if repulsive == "positives":
    assert np.linalg.eigvalsh(np.asarray(dense)).min() > -1e-10
  else:  # the repulsive terms make it indefinite on this batch
    assert np.linalg.eigvalsh(np.asarray(dense)).min() < 0


def test_linear_model_ggn_is_the_exact_hessian():
  # For a linear network the GGN is the Hessian of the (surrogate) loss in the weights.
  w = {"w": jax.random.normal(jax.random.key(3), (3, 2), jnp.float64)}
  x = jax.random.normal(jax.random.key(4), (6, 3), jnp.float64)
  labels = jnp.array([0, 0, 1, 1, 2, 2])
  active = _models.active_negatives(_models.linear_embed(w, x), labels, 2.0)
  flat, unravel = ravel_pytree(w)
  hessian = jax.jit(jax.hessian(lambda f: _models.surrogate_loss(
      _models.linear_embed(unravel(f), x), active, np.asarray(labels))))(flat)
  dense = jitted(laplace.ggn_dense, _models.linear_embed, margin=2.0,
                 repulsive="clipped")(w, x, labels)
  np.testing.assert_allclose(dense, hessian, rtol=1e-10, atol=1e-12)


@pytest.fixture(scope="module")
def cnn():
  model = SmallCNN(embedding_dim=3, features=(2,), kernel_size=3, hidden=4)
  images = jax.random.uniform(jax.random.key(5), (5, 6, 6, 1), jnp.float64)
  params = jax.jit(model.init)(jax.random.key(6), images)["params"]
  params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), params)
  embed = lambda p, x: model.apply({"params": p}, x)["embedding"]
  return embed, params, images, jnp.array([0, 0, 1, 1, 2])


def test_flax_cnn_diagonal_and_subset(cnn):
  embed, params, images, labels = cnn
  reference = _models.reference_ggn(embed, params, images, labels, 1.5, "clipped")
  diagonal = jitted(laplace.ggn_diagonal, embed, margin=1.5,
                    repulsive="clipped")(params, images, labels)
  np.testing.assert_allclose(ravel_pytree(diagonal)[0], jnp.diag(reference), rtol=1e-9,
                             atol=1e-12)
  # The last layer alone: the dense GGN of the head with the rest fixed.
  head = laplace.select_subset(params, [("head", "projection")])
  fn = lambda sub, x: embed(laplace.merge_subset(params, sub), x)
  head_reference = _models.reference_ggn(fn, head, images, labels, 1.5, "positives")
  dense = jitted(laplace.batch_curvature, fn, margin=1.5, structure="full")(head, images, labels)
  np.testing.assert_allclose(dense, head_reference, rtol=1e-9, atol=1e-12)


def test_jit(problem):
  params, x, labels = problem

  @jax.jit
  def both(p, x, labels):
    return (laplace.ggn_diagonal(_models.mlp_embed, p, x, labels, margin=MARGIN,
                                 repulsive="clipped"),
            laplace.ggn_vector_product(_models.mlp_embed, p, x, labels, p, margin=MARGIN))

  diagonal, product = both(params, x, labels)
  eager = laplace.ggn_diagonal(_models.mlp_embed, params, x, labels, margin=MARGIN,
                               repulsive="clipped")
  np.testing.assert_allclose(ravel_pytree(diagonal)[0], ravel_pytree(eager)[0], rtol=1e-12)
  eager_product = laplace.ggn_vector_product(_models.mlp_embed, params, x, labels, params,
                                             margin=MARGIN)
  np.testing.assert_allclose(ravel_pytree(product)[0], ravel_pytree(eager_product)[0],
                             rtol=1e-12)


def test_float32_runs(problem):
  params, x, labels = problem
  params32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), params)
  diagonal = jitted(laplace.ggn_diagonal, _models.mlp_embed, margin=MARGIN)(
      params32, x.astype(jnp.float32), labels)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(diagonal))
  reference = jitted(laplace.ggn_diagonal, _models.mlp_embed, margin=MARGIN)(params, x, labels)
  np.testing.assert_allclose(ravel_pytree(diagonal)[0], ravel_pytree(reference)[0], rtol=1e-4,
                             atol=1e-5)


def test_matches_laplax_ggn_product(problem):
  laplax_ggn = pytest.importorskip("laplax.curv.ggn")
  params, x, labels = problem
  z = _models.mlp_embed(params, x)
  matrix = laplace.contrastive_hessian_matrix(z, labels, margin=MARGIN, repulsive="clipped")
  mv = laplax_ggn.create_ggn_mv(
      lambda input, params: _models.mlp_embed(params, input), params,
      {"input": x, "target": labels}, vmap_over_data=False,
      loss_hessian_mv=lambda jv, pred, target, **kwargs: matrix @ jv,
      num_curv_samples=1, num_total_samples=1)
  ours = laplace.ggn_operator(_models.mlp_embed, params, x, labels, margin=MARGIN,
                              repulsive="clipped")
  np.testing.assert_allclose(ravel_pytree(mv(params))[0], ravel_pytree(ours(params))[0],
                             rtol=1e-10)


def test_bad_input(problem):
  params, x, labels = problem
  with pytest.raises(ValueError, match="repulsive"):
    laplace.ggn_diagonal(_models.mlp_embed, params, x, labels, margin=1.0, repulsive="neg")
  with pytest.raises(ValueError, match="structure"):
    laplace.batch_curvature(_models.mlp_embed, params, x, labels, margin=1.0, structure="kfac")
  with pytest.raises(ValueError, match="batch"):
    laplace.ggn_diagonal(_models.mlp_embed, params, x, labels[:3], margin=1.0)
  with pytest.raises(ValueError, match="batch"):
    laplace.ggn_operator(_models.mlp_embed, params, x, jnp.array(0), margin=1.0)
  with pytest.raises(ValueError, match="empty"):
    laplace.ggn_diagonal(_models.mlp_embed, params, x[:0], labels[:0], margin=1.0)
  with pytest.raises(ValueError, match=r"\(B, D\)"):
    laplace.ggn_operator(lambda p, x: _models.mlp_embed(p, x)[:, 0], params, x, labels,
                         margin=1.0)
  with pytest.raises(ValueError, match="max_params"):
    laplace.ggn_dense(_models.mlp_embed, params, x, labels, margin=1.0, max_params=10)
  with pytest.raises(ValueError):
    laplace.contrastive_hessian_matrix(jnp.ones(3), jnp.array([0, 1, 2]), margin=1.0)
