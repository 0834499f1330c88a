"""Bayesian metric learning with the Laplace approximation (LAM, Warburg et al. 2023).

The contrastive loss is, up to a constant, a negative log-likelihood of the
pairs, so a Laplace approximation of the weights,
``theta ~ N(theta_MAP, (GGN + prior_precision I)^-1)``, turns a deterministic
embedding network into a distribution over unit embeddings: ``S`` weight
samples give ``S`` points on the sphere per input, whose spread (the summed
per-dimension standard deviation) is the uncertainty used for OOD detection.

Curvature (:mod:`sphereembed.laplace.ggn`): the generalised Gauss-Newton of
the contrastive loss, ``J^T (M kron I_D) J``, from Jacobian-vector and
vector-Jacobian products, never a dense per-sample Jacobian of the whole
network. ``M`` (:func:`contrastive_hessian_matrix`) is the Hessian of the pair
loss at the embeddings: attractive pairs add a graph Laplacian, repulsive
pairs inside the margin subtract one (the paper's ``-0.5 d^2`` surrogate of
``0.5 relu(margin - d)^2``). The repulsive part makes it indefinite;
``repulsive=`` chooses how to handle that:

* ``"positives"``: attractive pairs only, positive semi-definite (paper code
  ``"pos"``);
* ``"clipped"``: attractive minus repulsive pair terms, clipped at 0 in the
  posterior (paper ``"full"``);
* ``"separate"``: per-sample sums without the pair cross terms, attractive
  minus repulsive, clipped the same way (paper ``"fix"``).

Structures: ``"diagonal"`` (exact diagonal over all weights, from per-sample
VJPs one output dimension at a time) and ``"full"`` (dense, for a subset
such as the last layer; ``subset=`` selects layers by key paths, the rest
stay at the MAP). :func:`ggn_operator` is the matrix-free product for any
other use (CG, Lanczos, a low-rank structure).

Posterior (:mod:`sphereembed.laplace.posterior`): :func:`posthoc_laplace`
accumulates the GGN at the MAP over one pass of the data and tunes the prior
precision by the Laplace marginal likelihood (:func:`optimize_prior_precision`:
MacKay's fixed-point condition solved by bisection, exact for these
structures); online LAM (:func:`perturbed_params`, :func:`online_curvature`,
:func:`online_update`) samples weights in each train step, takes loss and
GGN at the samples and keeps ``curvature <- memory_factor * curvature +
scale * GGN``; :func:`predict` summarises ``S`` sampled embeddings.

Deviations from the paper's PyTorch code (``FrederikWarburg/bayesian-metric-learning``
with its forked ``stochman`` Hessian backend):

* The GGN goes through JAX autodiff of the whole network (any Flax model),
  rather than hand-written backward rules per layer type; the diagonal is
  exact (the code's ``speed="half"`` backpropagates only the diagonal).
* All pairs of a batch are used (the ``(B, B)`` matrix ``M`` costs nothing
  extra), rather than mined triplets capped at ``max_pairs``; the active
  negatives are those closer than the margin in Euclidean distance, matching
  :func:`sphereembed.losses.contrastive`.
* A dense last-layer structure besides the diagonal one, and the prior
  precision by the marginal likelihood's exact optimum rather than gradient
  steps.
* The L2 normalisation is part of the network: its Jacobian enters the GGN
  exactly, its second-order term is dropped (the GGN approximation).
* :func:`predict` returns the mean of the unit samples as the paper does
  (``normalize_mean=True`` projects it back onto the sphere) and the unbiased
  standard deviation (``ddof=1``, as ``torch.std``).

laplax (``pip install laplax``, 0.0.2, installs with jax 0.10) was evaluated:
it offers GGN matrix-vector products (``laplax.curv.create_ggn_mv``, with a
custom ``loss_hessian_mv`` for non-separable losses when
``vmap_over_data=False``), diagonal / dense / low-rank (Lanczos, LOBPCG)
curvatures built from a matrix-vector product, posterior sampling and prior
precision by grid search on a marginal likelihood or calibration objective.
Its diagonal and dense curvatures come from one GGN product per parameter
(``util.mv.diagonal`` maps over basis vectors): ``P`` forward-backward passes
over the batch, infeasible for the diagonal of a CNN, where the exact diagonal
here costs ``B D`` per-sample backward passes. Its GGN product is the same
``linearize`` / ``linear_transpose`` construction as :func:`ggn_operator`.
It is therefore not a dependency; the tests cross-check :func:`ggn_operator`
against ``laplax.curv.create_ggn_mv`` when laplax is installed, and its
``lanczos_lowrank`` can consume :func:`ggn_operator` on raveled parameters
for a low-rank structure.

References:
  Warburg, Miani, Brack & Hauberg, "Bayesian Metric Learning for Uncertainty
  Quantification in Image Retrieval", NeurIPS 2023.
  Hadsell, Chopra & LeCun, "Dimensionality Reduction by Learning an Invariant
  Mapping", CVPR 2006.
  MacKay, "A Practical Bayesian Framework for Backpropagation Networks",
  Neural Computation 1992.

Example (post-hoc LAM on a toy normalised linear model):
  >>> import jax
  >>> import jax.numpy as jnp
  >>> from sphereembed import geometry, laplace
  >>> embed = lambda p, x: geometry.l2_normalize(x @ p["w"])
  >>> params = {"w": jax.random.normal(jax.random.key(0), (4, 3))}
  >>> x = jax.random.normal(jax.random.key(1), (8, 4))
  >>> batches = [(x, jnp.array([0, 0, 1, 1, 2, 2, 3, 3]))]
  >>> post = laplace.posthoc_laplace(embed, params, batches, margin=1.0)
  >>> out = laplace.predict(embed, post, x, key=jax.random.key(2), num_samples=16)
  >>> out.mean.shape, out.uncertainty.shape
  ((8, 3), (8,))
"""

from sphereembed.laplace.ggn import (
    REPULSIVE,
    STRUCTURES,
    batch_curvature,
    contrastive_embedding_hessian,
    contrastive_hessian_matrix,
    ggn_dense,
    ggn_diagonal,
    ggn_operator,
    ggn_vector_product,
)
from sphereembed.laplace.posterior import (
    LaplacePosterior,
    PredictiveEmbeddings,
    embed_samples,
    laplace_posterior,
    log_marginal_likelihood,
    merge_subset,
    online_curvature,
    online_update,
    optimize_prior_precision,
    perturbed_params,
    posthoc_laplace,
    predict,
    predictive_embeddings,
    select_subset,
)

__all__ = [
    "REPULSIVE",
    "STRUCTURES",
    "LaplacePosterior",
    "PredictiveEmbeddings",
    "batch_curvature",
    "contrastive_embedding_hessian",
    "contrastive_hessian_matrix",
    "embed_samples",
    "ggn_dense",
    "ggn_diagonal",
    "ggn_operator",
    "ggn_vector_product",
    "laplace_posterior",
    "log_marginal_likelihood",
    "merge_subset",
    "online_curvature",
    "online_update",
    "optimize_prior_precision",
    "perturbed_params",
    "posthoc_laplace",
    "predict",
    "predictive_embeddings",
    "select_subset",
]
