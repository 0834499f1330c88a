"""The Laplace posterior over (a subset of) the weights: fit, prior tuning, sampling, prediction.

* :class:`LaplacePosterior`: a pytree with the MAP ``mean``, the accumulated
  (unclipped) GGN ``curvature`` in a ``structure`` (``"diagonal"``: a pytree
  like the mean; ``"full"``: a dense ``(P, P)`` matrix) and an isotropic
  ``prior_precision``. Its precision is ``clip(curvature) + prior_precision``:
  the diagonal clipped at 0 entrywise, the dense matrix projected onto the
  positive semi-definite cone (eigenvalues clipped at 0).
* :func:`posthoc_laplace`: one pass over the data at the MAP weights, then the
  prior precision that maximises the Laplace marginal likelihood
  (:func:`optimize_prior_precision`, a 1-D root search, exact for these
  structures).
* Online LAM (:func:`perturbed_params`, :func:`online_curvature`,
  :func:`online_update`): in each train step, sample weights from the
  current posterior, take the loss and the GGN at the samples, and update
  ``curvature <- memory_factor * curvature + scale * GGN``.
* :func:`predict`: ``S`` weight samples give ``S`` unit embeddings per input;
  their mean, per-dimension standard deviation and the summed standard
  deviation, the OOD uncertainty of the paper.

A *subset* (``subset=(("head", "projection"), ...)``: paths of keys into the
params dict) restricts the posterior to some layers, the others staying at
their MAP values, as the paper's code does with its ``model.linear``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.flatten_util import ravel_pytree

from sphereembed import geometry
from sphereembed.laplace import ggn as ggn_lib

__all__ = [
    "LaplacePosterior",
    "PredictiveEmbeddings",
    "embed_samples",
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

Subset = Sequence[Sequence[str]] | None


# ----------------------------------------------------------------------------
# Parameter subsets.


def _normalize_subset(subset: Subset) -> tuple[tuple[str, ...], ...] | None:
  if subset is None:
    return None
  if isinstance(subset, str):
    raise ValueError("subset must be a sequence of key paths, e.g. (('head', 'projection'),).")
  paths = tuple(tuple(path) if not isinstance(path, str) else (path,) for path in subset)
  if not paths or any(not path for path in paths):
    raise ValueError(f"subset must hold at least one non-empty key path, got {subset!r}.")
  return paths


def _lookup(params, path):
  node = params
  for depth, key in enumerate(path):
    if not isinstance(node, Mapping) or key not in node:
      options = sorted(node) if isinstance(node, Mapping) else []
      raise ValueError(f"subset path {path!r} not found in params: no key {key!r} at depth "
                       f"{depth} (keys there: {options}).")
    node = node[key]
  return node


def select_subset(params, subset: Subset):
  """The part of ``params`` under the key paths of ``subset`` (all of it for ``None``).

  Args:
    params: a nested dict of parameters (Flax ``params``).
    subset: ``None`` or a sequence of key paths.

  Returns:
    A nested dict holding only those paths (``params`` itself for ``None``).

  Raises:
    ValueError: a path that does not exist.

  Example:
    >>> from sphereembed.laplace import select_subset
    >>> params = {"body": {"w": 1.0}, "head": {"w": 2.0, "b": 3.0}}
    >>> select_subset(params, [("head", "w")])
    {'head': {'w': 2.0}}
  """
  paths = _normalize_subset(subset)
  if paths is None:
    return params
  selected: dict = {}
  for path in paths:
    node = selected
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = _lookup(params, path)
  return selected


def merge_subset(params, sub):
  """``params`` with the leaves (or subtrees) of ``sub`` put in place.

  ``sub`` is a nested dict shaped like a :func:`select_subset` result; the
  other entries of ``params`` are kept. Pure: ``params`` is not modified.

  Args:
    params: the full nested dict of parameters.
    sub: the replacement for part of it.

  Returns:
    A new nested dict.

  Example:
    >>> from sphereembed.laplace import merge_subset
    >>> merge_subset({"body": {"w": 1.0}, "head": {"w": 2.0}}, {"head": {"w": 5.0}})
    {'body': {'w': 1.0}, 'head': {'w': 5.0}}
  """
  if not isinstance(sub, Mapping):
    return sub
  if not isinstance(params, Mapping):
    raise ValueError("merge_subset: sub has a key path that params does not have.")
  merged = dict(params)
  for key, value in sub.items():
    if key not in params:
      raise ValueError(f"merge_subset: key {key!r} is not in params (keys: {sorted(params)}).")
    merged[key] = merge_subset(params[key], value)
  return merged


def _restricted(embed_fn, params, subset):
  """``embed_fn`` as a function of the subset's parameters, the rest at ``params``."""
  if subset is None:
    return embed_fn
  return lambda sub, inputs: embed_fn(merge_subset(params, sub), inputs)


# ----------------------------------------------------------------------------
# The posterior.


def _is_concrete(*trees) -> bool:
  return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(trees))


@struct.dataclass
class LaplacePosterior:
  """A Gaussian posterior ``N(mean, precision^-1)`` over (a subset of) the weights.

  A pytree (``flax.struct``): ``mean``, ``curvature`` and
  ``prior_precision`` are leaves, ``structure`` and ``subset`` static, so a
  posterior passes through ``jit`` and can sit in a train state. Build one
  with :func:`laplace_posterior` (which checks it) or :func:`posthoc_laplace`.

  Attributes:
    mean: the MAP parameters of the subset (a pytree).
    curvature: the accumulated GGN, unclipped: a pytree like ``mean``
      (``"diagonal"``) or a ``(P, P)`` array in ``ravel_pytree`` order
      (``"full"``).
    prior_precision: the scalar precision of the isotropic prior
      ``N(0, prior_precision^-1 I)``.
    structure: ``"diagonal"`` or ``"full"``.
    subset: ``None`` (all parameters) or the key paths of the subset.
  """

  mean: Any
  curvature: Any
  prior_precision: jax.Array
  structure: str = struct.field(pytree_node=False, default="diagonal")
  subset: tuple | None = struct.field(pytree_node=False, default=None)

  @property
  def num_params(self) -> int:
    """The number of parameters the posterior covers."""
    return int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(self.mean)))

  def _eigh(self):
    # Symmetrise first: accumulated float sums drift from exact symmetry.
    return jnp.linalg.eigh(0.5 * (self.curvature + self.curvature.T))

  def spectrum(self) -> jax.Array:
    """The clipped curvature's eigenvalues (the diagonal entries), flat, ``>= 0``."""
    if self.structure == "diagonal":
      flat, _ = ravel_pytree(self.curvature)
      return jax.nn.relu(flat)
    return jax.nn.relu(self._eigh()[0])

  def precision(self):
    """``clip(curvature) + prior_precision``: a pytree (diagonal) or a ``(P, P)`` matrix."""
    prior = jnp.asarray(self.prior_precision)
    if self.structure == "diagonal":
      return jax.tree_util.tree_map(lambda g: jax.nn.relu(g) + prior.astype(g.dtype),
                                    self.curvature)
    values, vectors = self._eigh()
    return (vectors * (jax.nn.relu(values) + prior)) @ vectors.T

  def variance(self):
    """The marginal posterior variances, a pytree like ``mean``."""
    if self.structure == "diagonal":
      return jax.tree_util.tree_map(lambda p: 1.0 / p, self.precision())
    values, vectors = self._eigh()
    flat_variance = jnp.sum(jnp.square(vectors) / (jax.nn.relu(values) + self.prior_precision),
                            axis=1)
    _, unravel = ravel_pytree(self.mean)
    return unravel(flat_variance.astype(ravel_pytree(self.mean)[0].dtype))

  def validate(self) -> "LaplacePosterior":
    """Checks shapes (always) and, outside ``jit``, a positive finite precision.

    Returns:
      The posterior itself, for chaining.

    Raises:
      ValueError: an unknown structure, a curvature that does not match the
        mean, a non-scalar prior precision and, when concrete, NaN or
        infinite values, a negative prior precision or a precision that is
        not positive (a zero prior precision with zero curvature somewhere).
    """
    _check_structure_and_shapes(self.mean, self.curvature, self.prior_precision, self.structure)
    if not _is_concrete(self.mean, self.curvature, self.prior_precision):
      return self
    for name, tree in (("mean", self.mean), ("curvature", self.curvature),
                       ("prior_precision", self.prior_precision)):
      if not all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree_util.tree_leaves(tree)):
        raise ValueError(f"the posterior's {name} contains NaN or infinite values.")
    prior = float(self.prior_precision)
    if prior < 0:
      raise ValueError(f"prior_precision must be >= 0, got {prior}.")
    # NumPy, not jnp: under a jit trace even operations on constants are staged.
    if self.structure == "diagonal":
      curvature = np.concatenate([np.ravel(np.asarray(leaf))
                                  for leaf in jax.tree_util.tree_leaves(self.curvature)])
    else:
      matrix = np.asarray(self.curvature)
      curvature = np.linalg.eigvalsh(0.5 * (matrix + matrix.T))
    smallest = float(np.min(np.maximum(curvature, 0.0))) + prior
    if not smallest > 0:
      raise ValueError(
          f"the posterior precision is not positive (smallest eigenvalue {smallest}); use a "
          "positive prior_precision.")
    return self

  def sample(self, key: jax.Array, num_samples: int):
    """``num_samples`` weight samples: a pytree like ``mean`` with a leading axis.

    Diagonal: ``mean + eps / sqrt(precision)``. Full: with the Cholesky
    factor of the precision ``L L^T``, ``mean + L^-T eps``, which has
    covariance ``precision^-1``. The factor is a continuous function of the
    curvature, unlike the eigenvectors (arbitrary within a repeated
    eigenvalue, as the prior-only directions of a low-rank curvature are):
    curvatures that differ by float rounding (another device count, another
    summation order) draw nearly the same weights from the same noise.

    Args:
      key: a JAX PRNG key.
      num_samples: ``S >= 1`` (static).

    Returns:
      A pytree like ``mean``, each leaf with a leading axis ``S``.

    Raises:
      ValueError: ``num_samples < 1`` or an invalid posterior (see
        :meth:`validate`).

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> from sphereembed.laplace import laplace_posterior
      >>> post = laplace_posterior({"w": jnp.zeros(3)}, {"w": jnp.array([3.0, 0.0, -1.0])},
      ...                          prior_precision=1.0)
      >>> post.sample(jax.random.key(0), 5)["w"].shape
      (5, 3)
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) \
        or num_samples < 1:
      raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}.")
    self.validate()
    if self.structure == "diagonal":
      leaves, treedef = jax.tree_util.tree_flatten(self.mean)
      keys = jax.random.split(key, max(len(leaves), 1))
      scales = jax.tree_util.tree_leaves(
          jax.tree_util.tree_map(lambda p: jax.lax.rsqrt(p), self.precision()))
      samples = [m + s * jax.random.normal(k, (num_samples,) + jnp.shape(m), jnp.result_type(m))
                 for m, s, k in zip(leaves, scales, keys)]
      return jax.tree_util.tree_unflatten(treedef, samples)
    flat_mean, unravel = ravel_pytree(self.mean)
    precision = self.precision()
    cholesky = jnp.linalg.cholesky(0.5 * (precision + precision.T))
    noise = jax.random.normal(key, (num_samples, flat_mean.size), flat_mean.dtype)
    # L^-T eps for every sample: one triangular solve with the noise as columns.
    offsets = jax.scipy.linalg.solve_triangular(cholesky, noise.T, lower=True, trans="T").T
    flat = flat_mean + offsets
    return jax.vmap(unravel)(flat.astype(flat_mean.dtype))


def _check_structure_and_shapes(mean, curvature, prior_precision, structure):
  ggn_lib.check_structure(structure)
  if jnp.ndim(prior_precision) != 0:
    raise ValueError(f"prior_precision must be a scalar, got shape {jnp.shape(prior_precision)}.")
  leaves = jax.tree_util.tree_leaves(mean)
  if not leaves:
    raise ValueError("the posterior mean has no parameters.")
  if any(not jnp.issubdtype(jnp.result_type(leaf), jnp.floating) for leaf in leaves):
    raise ValueError("the posterior mean must hold floating arrays.")
  if structure == "diagonal":
    same_tree = jax.tree_util.tree_structure(mean) == jax.tree_util.tree_structure(curvature)
    if not same_tree or any(jnp.shape(a) != jnp.shape(b) for a, b in zip(
        leaves, jax.tree_util.tree_leaves(curvature))):
      raise ValueError("a diagonal curvature must be a pytree with the mean's structure and "
                       f"shapes; got {jax.tree_util.tree_map(jnp.shape, curvature)} for "
                       f"{jax.tree_util.tree_map(jnp.shape, mean)}.")
  else:
    size = sum(np.size(leaf) for leaf in leaves)
    if jnp.shape(curvature) != (size, size):
      raise ValueError(f"a full curvature must have shape ({size}, {size}), got "
                       f"{jnp.shape(curvature)}.")


def laplace_posterior(
    mean,
    curvature=None,
    *,
    prior_precision: float | jax.Array = 1.0,
    structure: str = "diagonal",
    subset: Subset = None,
) -> LaplacePosterior:
  """A checked :class:`LaplacePosterior` (zero curvature if none is given).

  Args:
    mean: the MAP parameters of the subset.
    curvature: the accumulated GGN in ``structure``, or ``None`` for zeros
      (the start of online LAM: the posterior is then the prior around the
      mean).
    prior_precision: the isotropic prior precision, ``>= 0`` (and the total
      precision must be positive).
    structure: ``"diagonal"`` or ``"full"``.
    subset: the key paths ``mean`` was selected from, or ``None``.

  Returns:
    The posterior.

  Raises:
    ValueError: see :meth:`LaplacePosterior.validate`.

  Example:
    >>> import jax.numpy as jnp
    >>> from sphereembed.laplace import laplace_posterior
    >>> post = laplace_posterior({"w": jnp.ones(2)}, {"w": jnp.array([3.0, -1.0])},
    ...                          prior_precision=1.0)
    >>> post.precision()["w"].tolist()  # the negative entry is clipped at 0
    [4.0, 1.0]
  """
  ggn_lib.check_structure(structure)
  if curvature is None:
    if structure == "diagonal":
      curvature = jax.tree_util.tree_map(jnp.zeros_like, mean)
    else:
      flat, _ = ravel_pytree(mean)
      curvature = jnp.zeros((flat.size, flat.size), flat.dtype)
  dtype = jnp.result_type(*jax.tree_util.tree_leaves(mean)) if jax.tree_util.tree_leaves(
      mean) else jnp.float32
  posterior = LaplacePosterior(mean=mean, curvature=curvature,
                               prior_precision=jnp.asarray(prior_precision, dtype),
                               structure=structure, subset=_normalize_subset(subset))
  return posterior.validate()


# ----------------------------------------------------------------------------
# Prior precision by the marginal likelihood.


def log_marginal_likelihood(posterior: LaplacePosterior,
                            prior_precision: float | jax.Array | None = None) -> jax.Array:
  """The part of the Laplace log marginal likelihood that depends on the prior precision.

  With the prior ``N(0, lambda^-1 I)`` over ``P`` weights and the clipped
  GGN's eigenvalues ``g_k``:
  ``-lambda/2 ||mean||^2 + P/2 log(lambda) - 1/2 sum_k log(g_k + lambda)``.
  The full evidence adds the data log-likelihood at the mean and constants,
  which do not depend on ``lambda``.

  Args:
    posterior: the posterior (its ``curvature`` and ``mean``).
    prior_precision: ``lambda > 0``; the posterior's own by default.

  Returns:
    A scalar.

  References:
    MacKay, "A Practical Bayesian Framework for Backpropagation Networks",
    Neural Computation 1992; Immer et al., "Scalable Marginal Likelihood
    Estimation for Model Selection in Deep Learning", ICML 2021.

  Example:
    >>> import jax.numpy as jnp
    >>> from sphereembed.laplace import laplace_posterior, log_marginal_likelihood
    >>> post = laplace_posterior({"w": jnp.ones(2)}, {"w": jnp.array([3.0, 1.0])})
    >>> print(f"{log_marginal_likelihood(post, 1.0):.4f}")
    -2.0397
  """
  lam = posterior.prior_precision if prior_precision is None else jnp.asarray(prior_precision)
  flat_mean, _ = ravel_pytree(posterior.mean)
  spectrum = posterior.spectrum()
  return (-0.5 * lam * jnp.sum(jnp.square(flat_mean)) + 0.5 * flat_mean.size * jnp.log(lam)
          - 0.5 * jnp.sum(jnp.log(spectrum + lam)))


def optimize_prior_precision(
    posterior: LaplacePosterior,
    *,
    bounds: tuple[float, float] = (1e-8, 1e8),
    iterations: int = 100,
) -> LaplacePosterior:
  """The posterior with the prior precision that maximises :func:`log_marginal_likelihood`.

  The stationarity condition is MacKay's ``lambda ||mean||^2 = gamma(lambda)``
  with ``gamma = sum_k g_k / (g_k + lambda)`` (the effective number of
  parameters): the left side increases and the right side decreases in
  ``lambda``, so the root is unique and a bisection in ``log(lambda)`` finds
  it to ``iterations`` halvings of ``bounds`` (jit-compatible, no
  learning rate). When the root lies outside ``bounds`` the nearest bound is
  returned (e.g. the upper one for a zero mean).

  Args:
    posterior: the posterior to tune.
    bounds: ``(lower, upper)`` search interval, ``0 < lower < upper``.
    iterations: bisection steps (100 halve the log-interval to float precision).

  Returns:
    ``posterior`` with the tuned ``prior_precision``.

  Raises:
    ValueError: bad bounds.

  Example:
    >>> import jax.numpy as jnp
    >>> from sphereembed.laplace import laplace_posterior, optimize_prior_precision
    >>> post = laplace_posterior({"w": jnp.array([1.0, 0.5])}, {"w": jnp.array([3.0, 1.0])})
    >>> # lambda * 1.25 = 3 / (3 + lambda) + 1 / (1 + lambda)  ->  lambda = 1
    >>> print(f"{optimize_prior_precision(post).prior_precision:.4f}")
    1.0000
  """
  lower, upper = (float(b) for b in bounds)
  if not 0 < lower < upper:
    raise ValueError(f"bounds must satisfy 0 < lower < upper, got {bounds}.")
  flat_mean, _ = ravel_pytree(posterior.mean)
  dtype = flat_mean.dtype
  squared_norm = jnp.sum(jnp.square(flat_mean))
  spectrum = posterior.spectrum().astype(dtype)

  def excess(log_lam):
    lam = jnp.exp(log_lam)
    return jnp.sum(spectrum / (spectrum + lam)) - lam * squared_norm

  def step(_, interval):
    lo, hi = interval
    mid = 0.5 * (lo + hi)
    positive = excess(mid) > 0
    return jnp.where(positive, mid, lo), jnp.where(positive, hi, mid)

  lo, hi = jnp.log(jnp.asarray(lower, dtype)), jnp.log(jnp.asarray(upper, dtype))
  lo, hi = jax.lax.fori_loop(0, iterations, step, (lo, hi))
  log_lam = jnp.where(excess(jnp.log(jnp.asarray(upper, dtype))) > 0, jnp.log(upper),
                      jnp.where(excess(jnp.log(jnp.asarray(lower, dtype))) <= 0, jnp.log(lower),
                                0.5 * (lo + hi)))
  return posterior.replace(prior_precision=jnp.exp(log_lam).astype(dtype))


# ----------------------------------------------------------------------------
# Post-hoc Laplace.


def _unpack_batch(batch):
  if isinstance(batch, Mapping):
    if "label" not in batch:
      raise ValueError(f"a batch dict needs a 'label' entry, got keys {sorted(batch)}.")
    for name in ("image", "input", "inputs", "x"):
      if name in batch:
        return batch[name], batch["label"]
    raise ValueError(f"a batch dict needs an 'image' (or 'input') entry, got keys {sorted(batch)}.")
  if isinstance(batch, (tuple, list)) and len(batch) == 2:
    return batch[0], batch[1]
  raise ValueError("each batch must be a dict with 'image' and 'label' or an (inputs, labels) pair.")


def posthoc_laplace(
    embed_fn: Callable,
    params,
    batches: Iterable,
    *,
    margin: float,
    repulsive: str = "positives",
    structure: str = "diagonal",
    subset: Subset = None,
    prior_precision: float | str = "marglik",
    scale: float = 1.0,
    prior_bounds: tuple[float, float] = (1e-8, 1e8),
) -> LaplacePosterior:
  """Post-hoc LAM: the GGN at the MAP weights over one pass of the data.

  The curvature is ``scale * sum_batches G_b`` with ``G_b`` the GGN of the
  batch's summed pair loss (all pairs ``i < j``, see
  :func:`sphereembed.laplace.contrastive_hessian_matrix`); the precision
  clips it (``"clipped"``, ``"separate"``) and adds the prior precision,
  tuned by :func:`optimize_prior_precision` with ``prior_precision="marglik"``.

  Args:
    embed_fn: ``embed_fn(params, inputs) -> (B, D)`` unit embeddings, in eval
      mode (samples independent), e.g.
      ``lambda p, x: model.apply({"params": p}, x)["embedding"]``.
    params: the MAP parameters (the full nested dict).
    batches: an iterable of ``{"image": inputs, "label": labels}`` dicts or
      ``(inputs, labels)`` pairs; one pass. Use one batch shape (pad or drop
      the last batch) to compile once.
    margin: the contrastive margin of training.
    repulsive: ``"positives"``, ``"clipped"`` or ``"separate"`` (see
      :mod:`sphereembed.laplace.ggn`).
    structure: ``"diagonal"`` or ``"full"`` (for a small ``subset``).
    subset: key paths of the parameters the posterior covers (``None``: all).
    prior_precision: a number, or ``"marglik"`` to maximise the marginal
      likelihood.
    scale: factor of every batch's GGN (e.g. ``num_data / num_seen`` when
      only part of the data is used).
    prior_bounds: the search interval of ``"marglik"``.

  Returns:
    A :class:`LaplacePosterior`.

  Raises:
    ValueError: no batch, bad batches, unknown options, a bad subset, or a
      non-positive resulting precision.

  References:
    Warburg, Miani, Brack & Hauberg, "Bayesian Metric Learning for
    Uncertainty Quantification in Image Retrieval", NeurIPS 2023.

  Example:
    >>> import jax.numpy as jnp
    >>> from sphereembed import geometry
    >>> from sphereembed.laplace import posthoc_laplace
    >>> embed = lambda p, x: geometry.l2_normalize(x @ p["w"])
    >>> params = {"w": jnp.array([[1.0, 0.2], [0.1, 1.0], [0.3, -0.5]])}
    >>> x = jnp.array([[1.0, 0.0, 0.2], [0.9, 0.1, 0.0], [0.0, 1.0, 0.1], [0.1, 0.8, 0.0]])
    >>> post = posthoc_laplace(embed, params, [(x, jnp.array([0, 0, 1, 1]))], margin=1.0)
    >>> post.structure, post.precision()["w"].shape
    ('diagonal', (3, 2))
  """
  ggn_lib.check_repulsive(repulsive)
  ggn_lib.check_structure(structure)
  subset = _normalize_subset(subset)
  if not (isinstance(prior_precision, str) and prior_precision == "marglik"):
    if isinstance(prior_precision, str):
      raise ValueError(f"prior_precision must be a number or 'marglik', got {prior_precision!r}.")
  mean = select_subset(params, subset)

  @jax.jit
  def kernel(full_params, sub, inputs, labels):
    return ggn_lib.batch_curvature(_restricted(embed_fn, full_params, subset), sub, inputs,
                                   labels, margin=margin, repulsive=repulsive,
                                   structure=structure)

  total = None
  for batch in batches:
    inputs, labels = _unpack_batch(batch)
    ggn_lib.check_batch(inputs, labels)
    curvature = kernel(params, mean, inputs, jnp.asarray(labels))
    total = curvature if total is None else jax.tree_util.tree_map(jnp.add, total, curvature)
  if total is None:
    raise ValueError("batches is empty: post-hoc Laplace needs at least one batch of data.")
  total = jax.tree_util.tree_map(lambda g: scale * g, total)
  initial = 1.0 if isinstance(prior_precision, str) else prior_precision
  posterior = LaplacePosterior(mean=mean, curvature=total,
                               prior_precision=jnp.asarray(initial, ravel_pytree(mean)[0].dtype),
                               structure=structure, subset=subset)
  if isinstance(prior_precision, str):
    posterior = optimize_prior_precision(posterior, bounds=prior_bounds)
  return posterior.validate()


# ----------------------------------------------------------------------------
# Online LAM.


def perturbed_params(key: jax.Array, posterior: LaplacePosterior, params, num_samples: int):
  """Weight samples of the subset around the *current* ``params``, differentiable in them.

  ``sample_s = select_subset(params) + stop_gradient(noise_s)`` with
  ``noise_s ~ N(0, precision^-1)``: the gradient of a loss at the sample
  with respect to ``params`` is the gradient at the sample, applied to the
  mean, as in the paper's online training.

  Args:
    key: a JAX PRNG key.
    posterior: the current posterior (its precision and subset).
    params: the current full parameters (their subset is the mean).
    num_samples: ``S >= 1``.

  Returns:
    A pytree like ``posterior.mean`` with a leading axis ``S``.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from sphereembed.laplace import laplace_posterior, perturbed_params
    >>> post = laplace_posterior({"w": jnp.zeros(2)}, prior_precision=1e6)
    >>> perturbed_params(jax.random.key(0), post, {"w": jnp.ones(2)}, 3)["w"].shape
    (3, 2)
  """
  current = select_subset(params, posterior.subset)
  noise = jax.tree_util.tree_map(lambda s, m: s - m, posterior.sample(key, num_samples),
                                 posterior.mean)
  return jax.tree_util.tree_map(lambda c, n: c + jax.lax.stop_gradient(n), current, noise)


def embed_samples(embed_fn: Callable, samples, inputs, *, params=None, subset: Subset = None,
                  batch_size: int | None = None) -> jax.Array:
  """The embeddings of ``inputs`` under each weight sample: ``(S, B, D)``.

  Args:
    embed_fn: ``embed_fn(params, inputs) -> (B, D)``.
    samples: subset weights with a leading axis ``S``.
    inputs: a batch of inputs.
    params: the full parameters the samples are merged into (needed with a
      subset).
    subset: the key paths of the samples (``None``: they are the parameters).
    batch_size: samples evaluated together (``jax.lax.map``; ``None``: one
      at a time, the least memory).

  Returns:
    A ``(S, B, D)`` array.

  Example:
    >>> import jax.numpy as jnp
    >>> from sphereembed.laplace import embed_samples
    >>> w = jnp.stack([jnp.eye(2), 2 * jnp.eye(2)])
    >>> embed_samples(lambda p, x: x @ p, w, jnp.ones((1, 2))).tolist()
    [[[1.0, 1.0]], [[2.0, 2.0]]]
  """
  subset = _normalize_subset(subset)
  if subset is not None and params is None:
    raise ValueError("embed_samples needs the full params to merge samples of a subset into.")
  fn = _restricted(embed_fn, params, subset)
  return jax.lax.map(lambda sample: fn(sample, inputs), samples, batch_size=batch_size)


def online_curvature(
    embed_fn: Callable,
    samples,
    inputs,
    labels: jax.Array,
    *,
    margin: float,
    repulsive: str = "positives",
    structure: str = "diagonal",
    params=None,
    subset: Subset = None,
):
  """The batch GGN at each weight sample, averaged over the samples (unclipped).

  Args:
    embed_fn: ``embed_fn(params, inputs) -> (B, D)``, samples independent.
    samples: subset weights with a leading axis ``S`` (e.g. from
      :func:`perturbed_params`; gradients are stopped here).
    inputs: the batch's inputs.
    labels: the batch's labels.
    margin: the contrastive margin.
    repulsive: see :mod:`sphereembed.laplace.ggn`.
    structure: ``"diagonal"`` or ``"full"``.
    params: the full parameters (needed with a subset).
    subset: the key paths of the samples.

  Returns:
    The mean curvature, in ``structure``.

  Example:
    >>> import jax.numpy as jnp
    >>> from sphereembed.laplace import online_curvature
    >>> w = jnp.stack([jnp.eye(2), jnp.eye(2)])
    >>> online_curvature(lambda p, x: x @ p, w, jnp.eye(2), jnp.array([0, 0]),
    ...                  margin=1.0).tolist()
    [[1.0, 1.0], [1.0, 1.0]]
  """
  subset = _normalize_subset(subset)
  if subset is not None and params is None:
    raise ValueError("online_curvature needs the full params to merge samples of a subset into.")
  ggn_lib.check_batch(inputs, labels)
  samples = jax.lax.stop_gradient(samples)
  base = None if params is None else jax.lax.stop_gradient(params)
  fn = _restricted(embed_fn, base, subset)
  curvatures = jax.lax.map(
      lambda sample: ggn_lib.batch_curvature(fn, sample, inputs, labels, margin=margin,
                                             repulsive=repulsive, structure=structure), samples)
  return jax.tree_util.tree_map(lambda c: jnp.mean(c, axis=0), curvatures)


def online_update(
    posterior: LaplacePosterior,
    curvature,
    *,
    memory_factor: float = 0.999,
    scale: float = 1.0,
    params=None,
) -> LaplacePosterior:
  """``curvature <- memory_factor * curvature + scale * new``, and the mean moved to ``params``.

  ``memory_factor`` is the paper's ``hessian_memory_factor`` (0.999 in its
  Fashion-MNIST config): old curvature, computed at older weights, fades.
  The paper scales each batch's GGN to the data set
  (``scale = num_data / batch_size``). Pure and jit-compatible.

  Args:
    posterior: the current posterior.
    curvature: the new batch curvature (from :func:`online_curvature`), in
      the posterior's structure.
    memory_factor: in ``[0, 1]``.
    scale: the factor of the new curvature, ``>= 0``.
    params: the updated full parameters; their subset becomes the mean
      (``None``: keep the mean).

  Returns:
    The updated posterior.

  Raises:
    ValueError: ``memory_factor`` outside ``[0, 1]``, a negative ``scale``,
      a curvature of another structure or shape.

  Example:
    >>> import jax.numpy as jnp
    >>> from sphereembed.laplace import laplace_posterior, online_update
    >>> post = laplace_posterior({"w": jnp.zeros(2)}, {"w": jnp.array([2.0, 4.0])})
    >>> online_update(post, {"w": jnp.ones(2)}, memory_factor=0.5).curvature["w"].tolist()
    [2.0, 3.0]
  """
  if not (isinstance(memory_factor, jax.core.Tracer) or 0.0 <= float(memory_factor) <= 1.0):
    raise ValueError(f"memory_factor must lie in [0, 1], got {memory_factor}.")
  if not (isinstance(scale, jax.core.Tracer) or float(scale) >= 0.0):
    raise ValueError(f"scale must be >= 0, got {scale}.")
  mean = posterior.mean if params is None else select_subset(params, posterior.subset)
  _check_structure_and_shapes(mean, curvature, posterior.prior_precision, posterior.structure)
  updated = jax.tree_util.tree_map(lambda old, new: memory_factor * old + scale * new,
                                   posterior.curvature, curvature)
  return posterior.replace(mean=mean, curvature=updated)


# ----------------------------------------------------------------------------
# Prediction.


class PredictiveEmbeddings(NamedTuple):
  """Stochastic embeddings of a batch.

  Attributes:
    mean: ``(B, D)`` mean of the sampled unit embeddings (re-normalised only
      with ``normalize_mean=True``).
    std: ``(B, D)`` per-dimension standard deviation over the samples.
    samples: ``(B, S, D)`` the sampled embeddings.
    uncertainty: ``(B,)`` the summed standard deviation, the OOD score
      (larger = more uncertain).
  """

  mean: jax.Array
  std: jax.Array
  samples: jax.Array
  uncertainty: jax.Array


def predictive_embeddings(samples: jax.Array, *, ddof: int = 1,
                          normalize_mean: bool = False) -> PredictiveEmbeddings:
  """Summaries of ``(S, B, D)`` sampled embeddings.

  The mean of unit vectors lies inside the ball, its norm shrinking with
  the spread; the paper's code uses it as is (``normalize_mean=False``).
  ``ddof=1`` (the unbiased standard deviation) matches ``torch.std`` there.

  Args:
    samples: ``(S, B, D)``, ``S > ddof``.
    ddof: delta degrees of freedom of the standard deviation.
    normalize_mean: project the mean back onto the sphere.

  Returns:
    :class:`PredictiveEmbeddings`.

  Raises:
    ValueError: not 3-D, or ``S <= ddof``.

  Example:
    >>> import jax.numpy as jnp
    >>> from sphereembed.laplace import predictive_embeddings
    >>> s = jnp.array([[[1.0, 0.0]], [[0.0, 1.0]]])
    >>> out = predictive_embeddings(s)
    >>> out.mean.tolist(), out.uncertainty.round(4).tolist()
    ([[0.5, 0.5]], [1.4142])
  """
  samples = jnp.asarray(samples)
  if samples.ndim != 3:
    raise ValueError(f"samples must have shape (S, B, D), got {samples.shape}.")
  if samples.shape[0] <= ddof:
    raise ValueError(f"need more than ddof = {ddof} samples, got {samples.shape[0]}.")
  mean = jnp.mean(samples, axis=0)
  std = jnp.std(samples, axis=0, ddof=ddof)
  if normalize_mean:
    mean = geometry.l2_normalize(mean)
  return PredictiveEmbeddings(mean=mean, std=std, samples=jnp.swapaxes(samples, 0, 1),
                              uncertainty=jnp.sum(std, axis=-1))


def predict(
    embed_fn: Callable,
    posterior: LaplacePosterior,
    inputs,
    *,
    key: jax.Array,
    num_samples: int,
    params=None,
    ddof: int = 1,
    normalize_mean: bool = False,
    batch_size: int | None = None,
) -> PredictiveEmbeddings:
  """``S`` weight samples -> ``S`` unit embeddings per input -> mean, std, uncertainty.

  Use the same ``key`` for every batch of a data set so that all inputs see
  the same ``S`` networks, as the paper's code (samples drawn once per
  evaluation). The work is one jitted program, compiled once per
  ``embed_fn`` object and input shape: pass the same function for every
  batch (not a new lambda each call).

  Args:
    embed_fn: ``embed_fn(params, inputs) -> (B, D)`` unit embeddings.
    posterior: the posterior.
    inputs: a batch of inputs.
    key: a JAX PRNG key for the weight samples.
    num_samples: ``S > ddof``.
    params: the full parameters (needed when the posterior has a subset).
    ddof: see :func:`predictive_embeddings`.
    normalize_mean: see :func:`predictive_embeddings`.
    batch_size: weight samples evaluated together (``None``: one at a time).

  Returns:
    :class:`PredictiveEmbeddings`.

  Raises:
    ValueError: an invalid posterior, too few samples, a missing ``params``.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from sphereembed import geometry
    >>> from sphereembed.laplace import laplace_posterior, predict
    >>> embed = lambda p, x: geometry.l2_normalize(x @ p["w"])
    >>> post = laplace_posterior({"w": jnp.eye(3)}, prior_precision=100.0)
    >>> out = predict(embed, post, jnp.eye(3)[:2], key=jax.random.key(0), num_samples=8)
    >>> out.samples.shape, out.uncertainty.shape
    ((2, 8, 3), (2,))
  """
  if posterior.subset is not None and params is None:
    raise ValueError("predict needs the full params when the posterior covers a subset.")
  if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) \
      or num_samples <= ddof:
    raise ValueError(f"num_samples must be an integer > ddof = {ddof}, got {num_samples!r}.")
  posterior.validate()
  return _predict_kernel(embed_fn, posterior, inputs, key, params, int(num_samples), ddof,
                         normalize_mean, batch_size)


@functools.partial(jax.jit, static_argnums=(0, 5, 6, 7, 8))
def _predict_kernel(embed_fn, posterior, inputs, key, params, num_samples, ddof, normalize_mean,
                    batch_size):
  # One compiled program per embed_fn object (pass the same one for every batch).
  samples = posterior.sample(key, num_samples)
  embeddings = embed_samples(embed_fn, samples, inputs, params=params, subset=posterior.subset,
                             batch_size=batch_size)
  return predictive_embeddings(embeddings, ddof=ddof, normalize_mean=normalize_mean)
