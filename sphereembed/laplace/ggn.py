"""The generalised Gauss-Newton (GGN) of the contrastive loss, from Jacobian products.

For a network ``f(theta, x) -> z`` with unit embeddings ``z`` (``(B, D)`` for
a batch) and the contrastive loss, seen as a negative log-likelihood of the
pairs, the GGN splits the loss Hessian at the embeddings:

    ``G = J^T (M kron I_D) J``,

with ``J`` the ``(B D, P)`` Jacobian of the stacked embeddings with respect to
the weights and ``M`` a ``(B, B)`` matrix. ``M`` comes from the pairs of the
batch (every pair ``i < j``, counted once): a positive pair adds the Hessian
of ``0.5 ||z_i - z_j||^2``, which is ``(e_i - e_j)(e_i - e_j)^T kron I``; a
negative pair inside the margin (``||z_i - z_j|| < margin``, where the
repulsive term is active) adds the same with the opposite sign, as in
Warburg et al.: the repulsive term ``0.5 relu(margin - d)^2`` is replaced by
``-0.5 d^2`` inside the margin, whose Hessian is ``-I`` on the difference.
The exact Hessian of ``0.5 (margin - d)^2`` with respect to the difference,
``u u^T - ((margin - d) / d) (I - u u^T)`` with ``u = (z_i - z_j) / d``, is
indefinite as well; neither form is positive semi-definite, hence the options
of the paper for the repulsive part (``repulsive=``):

* ``"positives"``: negatives are left out; ``M`` is a graph Laplacian with
  non-negative weights, so ``G`` is positive semi-definite (the paper's code
  ``"pos"``).
* ``"clipped"``: the full pair form, positives minus active negatives; ``G``
  is indefinite and the posterior clips it (diagonal entries at 0, or the
  eigenvalues at 0 for the dense structure) after accumulation (the paper's
  ``"full"``, which applies ``relu`` to the accumulated diagonal).
* ``"separate"``: every pair is split into its two samples, dropping the
  cross terms: ``M = diag(s)``, ``s_i = sum_j c_ij`` with ``c_ij = +1``
  (positive pair), ``-1`` (active negative) or 0. ``G = sum_i s_i J_i^T J_i``
  is a signed sum of per-sample terms, one for the attractive and one for the
  repulsive pairs, clipped like ``"clipped"`` (the paper's ``"fix"``).

The L2 normalisation of the embedding is part of ``f``: its Jacobian
``(I - z z^T) / ||y||`` (``y`` the raw projection) enters ``J`` exactly
through the Jacobian products, so the GGN lives on the tangent space of the
sphere. Its second-order term (the curvature of the normalisation,
contracted with the loss gradient) is dropped, as the GGN drops every
network second derivative; this is the approximation the paper makes for
its Euclidean contrastive loss (the paper's ``"arccos"`` variant instead
puts the normalisation inside the loss).

Structures (``structure=``): ``"diagonal"`` is the exact diagonal of ``G``,
``sum_d colsum(J_d * (M J_d))`` with ``J_d`` the ``(B, P)`` rows of output
dimension ``d``; the rows come from per-sample vector-Jacobian products with
one-hot cotangents, one output dimension at a time (``lax.scan`` over ``d``,
``vmap`` over the samples), so memory is ``O(B P)``, never ``O(B D P)``.
``"full"`` is the dense ``(P, P)`` matrix ``sum_d J_d^T M J_d`` in the order
of ``jax.flatten_util.ravel_pytree``, meant for a small parameter subset
such as the last layer. :func:`ggn_operator` gives the matrix-free product
``v -> G v`` (one ``jax.linearize`` and its ``jax.linear_transpose``), for
tests, conjugate gradients or Lanczos.

``embed_fn(params, inputs) -> (B, D)`` must treat the samples of a batch
independently (eval mode: no batch statistics, no dropout), because the
diagonal and dense structures call it on one sample at a time.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from sphereembed import geometry
from sphereembed.losses import checks, masks

__all__ = [
    "REPULSIVE",
    "STRUCTURES",
    "batch_curvature",
    "check_batch",
    "check_repulsive",
    "check_structure",
    "contrastive_embedding_hessian",
    "contrastive_hessian_matrix",
    "ggn_dense",
    "ggn_diagonal",
    "ggn_operator",
    "ggn_vector_product",
]

REPULSIVE: tuple[str, ...] = ("positives", "clipped", "separate")
STRUCTURES: tuple[str, ...] = ("diagonal", "full")

EmbedFn = Callable[[Any, jax.Array], jax.Array]

_HIGHEST = jax.lax.Precision.HIGHEST


def check_repulsive(repulsive: str) -> None:
  """Raises ``ValueError`` unless ``repulsive`` is one of :data:`REPULSIVE`."""
  if repulsive not in REPULSIVE:
    raise ValueError(f"Unknown repulsive option {repulsive!r}; expected one of {REPULSIVE}.")


def check_structure(structure: str) -> None:
  """Raises ``ValueError`` unless ``structure`` is one of :data:`STRUCTURES`."""
  if structure not in STRUCTURES:
    raise ValueError(f"Unknown structure {structure!r}; expected one of {STRUCTURES}.")


def contrastive_hessian_matrix(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    margin: float,
    repulsive: str = "positives",
) -> jax.Array:
  """The ``(B, B)`` matrix ``M`` with loss Hessian ``M kron I_D`` at the embeddings.

  Pairs ``i < j`` are counted once. Coefficients ``c_ij`` are ``+1`` for a
  positive pair, ``-1`` for a negative pair closer than ``margin`` (Euclidean
  distance, where the contrastive loss's repulsive term is active; not with
  ``repulsive="positives"``) and 0 otherwise. The pair forms
  (``"positives"``, ``"clipped"``) give the signed graph Laplacian
  ``diag(C 1) - C``, ``"separate"`` its diagonal ``diag(C 1)``.

  Args:
    embeddings: ``(B, D)`` embeddings at the linearisation point (unit
      vectors for a normalised model).
    labels: ``(B,)`` int class ids or ``(B, C)`` multi-hot labels.
    margin: the contrastive margin (on the Euclidean distance).
    repulsive: ``"positives"``, ``"clipped"`` or ``"separate"``.

  Returns:
    A symmetric ``(B, B)`` array of the embeddings' dtype.

  Raises:
    ValueError: bad shapes, an unknown option.

  References:
    Warburg, Miani, Brack & Hauberg, "Bayesian Metric Learning for
    Uncertainty Quantification in Image Retrieval", NeurIPS 2023.

  Example:
    >>> import jax.numpy as jnp
    >>> from sphereembed.laplace import contrastive_hessian_matrix
    >>> z = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    >>> # (0, 1) positive; negatives (0, 2) and (1, 2) at 0.89 and 0.63 < 1: active.
    >>> contrastive_hessian_matrix(z, jnp.array([0, 0, 1]), margin=1.0,
    ...                            repulsive="clipped").tolist()
    [[0.0, -1.0, 1.0], [-1.0, 0.0, 1.0], [1.0, 1.0, -2.0]]
  """
  check_repulsive(repulsive)
  embeddings = checks.check_embeddings(embeddings)
  labels = checks.check_labels(labels, embeddings.shape[0])
  positive, negative = masks.pair_masks(labels)
  dtype = embeddings.dtype
  coefficients = positive.astype(dtype)
  if repulsive != "positives":
    distances = geometry.pairwise_distances(embeddings, metric="euclidean")
    coefficients = coefficients - (negative & (distances < margin)).astype(dtype)
  degree = jnp.sum(coefficients, axis=1)
  if repulsive == "separate":
    return jnp.diag(degree)
  return jnp.diag(degree) - coefficients


def contrastive_embedding_hessian(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    margin: float,
    repulsive: str = "positives",
) -> jax.Array:
  """The loss Hessian the GGN uses, densely: ``(B, D, B, D)`` = ``M kron I_D``.

  For ``"positives"`` this is the exact Hessian of
  ``sum_{positive i<j} 0.5 ||z_i - z_j||^2`` with respect to the embeddings;
  for ``"clipped"`` that of the surrogate ``sum_pos 0.5 d^2 -
  sum_{active neg} 0.5 d^2``; for ``"separate"`` its block diagonal. Meant
  for tests and small examples (``O(B^2 D^2)`` memory).

  Args:
    embeddings: ``(B, D)`` embeddings.
    labels: ``(B,)`` or ``(B, C)`` labels.
    margin: the contrastive margin.
    repulsive: see :func:`contrastive_hessian_matrix`.

  Returns:
    A ``(B, D, B, D)`` array.

  Example:
    >>> import jax.numpy as jnp
    >>> from sphereembed.laplace import contrastive_embedding_hessian
    >>> z = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> contrastive_embedding_hessian(z, jnp.array([0, 0]), margin=0.5).shape
    (2, 2, 2, 2)
  """
  matrix = contrastive_hessian_matrix(embeddings, labels, margin=margin, repulsive=repulsive)
  dim = embeddings.shape[1]
  return jnp.einsum("ab,de->adbe", matrix, jnp.eye(dim, dtype=matrix.dtype))


def _embeddings(embed_fn: EmbedFn, params, inputs) -> jax.Array:
  embeddings = embed_fn(params, inputs)
  if embeddings.ndim != 2:
    raise ValueError(f"embed_fn must return (B, D) embeddings, got shape {embeddings.shape}.")
  return embeddings


def check_batch(inputs, labels) -> None:
  """Raises ``ValueError`` unless ``inputs`` (a pytree) and ``labels`` share a non-zero batch size.

  The batch size is the leading dimension of the first leaf of ``inputs``.
  """
  leaves = jax.tree_util.tree_leaves(inputs)
  if not leaves:
    raise ValueError("inputs must contain at least one array.")
  batch = jnp.shape(leaves[0])[0] if jnp.ndim(leaves[0]) else None
  labels_shape = jnp.shape(labels)
  if batch is None or not labels_shape or labels_shape[0] != batch:
    raise ValueError(f"inputs and labels must have the same leading (batch) size, got "
                     f"{jnp.shape(leaves[0])} and {labels_shape}.")
  if batch == 0:
    raise ValueError("the batch is empty.")


def ggn_operator(
    embed_fn: EmbedFn,
    params,
    inputs,
    labels: jax.Array,
    *,
    margin: float,
    repulsive: str = "positives",
) -> Callable[[Any], Any]:
  """The matrix-free GGN product ``v -> J^T (M kron I) J v`` of one batch.

  Linearises ``embed_fn`` once (``jax.linearize``); each product is one
  Jacobian-vector product, a ``(B, B) x (B, D)`` matmul and one transposed
  product (``jax.linear_transpose``). No clipping: the product is linear, so
  for ``"clipped"`` and ``"separate"`` it is the signed (indefinite) GGN.

  Args:
    embed_fn: ``embed_fn(params, inputs) -> (B, D)`` embeddings.
    params: the parameter pytree at which the GGN is taken.
    inputs: a batch of inputs (any pytree with leading batch axis ``B``).
    labels: ``(B,)`` int or ``(B, C)`` multi-hot labels.
    margin: the contrastive margin.
    repulsive: see :func:`contrastive_hessian_matrix`.

  Returns:
    A function from a pytree like ``params`` to a pytree like ``params``.

  Raises:
    ValueError: bad shapes, an unknown option.

  Example:
    >>> import jax.numpy as jnp
    >>> from sphereembed.laplace import ggn_operator
    >>> embed = lambda w, x: x @ w  # a linear model, D = 2
    >>> x = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> mv = ggn_operator(embed, jnp.eye(2), x, jnp.array([0, 0]), margin=1.0)
    >>> mv(jnp.array([[1.0, 0.0], [0.0, 0.0]])).tolist()
    [[1.0, 0.0], [-1.0, 0.0]]
  """
  check_repulsive(repulsive)
  check_batch(inputs, labels)
  embeddings, jvp_fn = jax.linearize(lambda p: _embeddings(embed_fn, p, inputs), params)
  matrix = contrastive_hessian_matrix(jax.lax.stop_gradient(embeddings), labels, margin=margin,
                                      repulsive=repulsive)
  transpose_fn = jax.linear_transpose(jvp_fn, params)

  def product(vector):
    tangent = jvp_fn(vector)
    (result,) = transpose_fn(jnp.matmul(matrix.astype(tangent.dtype), tangent, precision=_HIGHEST))
    return result

  return product


def ggn_vector_product(
    embed_fn: EmbedFn,
    params,
    inputs,
    labels: jax.Array,
    vector,
    *,
    margin: float,
    repulsive: str = "positives",
):
  """One GGN-vector product ``G v`` (see :func:`ggn_operator`).

  Args:
    embed_fn: ``embed_fn(params, inputs) -> (B, D)``.
    params: the linearisation point.
    inputs: a batch of inputs.
    labels: the batch's labels.
    vector: a pytree like ``params``.
    margin: the contrastive margin.
    repulsive: see :func:`contrastive_hessian_matrix`.

  Returns:
    ``G v``, a pytree like ``params``.

  Example:
    >>> import jax.numpy as jnp
    >>> from sphereembed.laplace import ggn_vector_product
    >>> embed = lambda w, x: x @ w
    >>> x = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> ggn_vector_product(embed, jnp.eye(2), x, jnp.array([0, 0]), jnp.eye(2),
    ...                    margin=1.0).tolist()
    [[1.0, -1.0], [-1.0, 1.0]]
  """
  return ggn_operator(embed_fn, params, inputs, labels, margin=margin, repulsive=repulsive)(vector)


def _per_sample_rows(embed_fn: EmbedFn, params, inputs):
  """Embeddings and per-sample VJP closures (vmapped; a VJP is a pytree)."""

  def one(x):
    return jax.vjp(lambda p: embed_fn(p, jax.tree_util.tree_map(lambda a: a[None], x))[0],
                   params)

  return jax.vmap(one)(inputs)


def _scan_rows(embed_fn, params, inputs, labels, margin, repulsive, init, accumulate):
  """``accumulate(acc, rows_d, M)`` over the output dimensions ``d``, rows ``(B, ...)``."""
  embeddings, vjp_fns = _per_sample_rows(embed_fn, params, inputs)
  if embeddings.ndim != 2:
    raise ValueError(f"embed_fn must return (B, D) embeddings, got shape {embeddings.shape}.")
  matrix = contrastive_hessian_matrix(jax.lax.stop_gradient(embeddings), labels, margin=margin,
                                      repulsive=repulsive)
  dim = embeddings.shape[1]

  def body(acc, d):
    cotangent = jax.nn.one_hot(d, dim, dtype=embeddings.dtype)
    # Row d of every sample's Jacobian: the gradient of z_{i,d}.
    (rows,) = jax.vmap(lambda fn: fn(cotangent))(vjp_fns)
    return accumulate(acc, rows, matrix), None

  result, _ = jax.lax.scan(body, init, jnp.arange(dim))
  return result


def ggn_diagonal(
    embed_fn: EmbedFn,
    params,
    inputs,
    labels: jax.Array,
    *,
    margin: float,
    repulsive: str = "positives",
):
  """The exact diagonal of the batch GGN, unclipped, as a pytree like ``params``.

  ``diag(G) = sum_d sum_ij M_ij J_{i,d} * J_{j,d}`` with ``J_{i,d}`` the
  gradient of embedding component ``z_{i,d}`` (a per-sample VJP with a
  one-hot cotangent). One output dimension at a time: ``O(B P)`` memory and
  ``B D`` per-sample backward passes. For ``"separate"`` (``M`` diagonal) the
  ``(B, B)`` contraction reduces to a weighted sum of squares.

  Args:
    embed_fn: ``embed_fn(params, inputs) -> (B, D)``, samples independent.
    params: the linearisation point.
    inputs: a batch of inputs.
    labels: the batch's labels.
    margin: the contrastive margin.
    repulsive: see :func:`contrastive_hessian_matrix`.

  Returns:
    A pytree like ``params`` (negative entries possible unless
    ``repulsive="positives"``).

  Raises:
    ValueError: bad shapes, an unknown option.

  Example:
    >>> import jax.numpy as jnp
    >>> from sphereembed.laplace import ggn_diagonal
    >>> embed = lambda w, x: x @ w
    >>> x = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> ggn_diagonal(embed, jnp.eye(2), x, jnp.array([0, 0]), margin=1.0).tolist()
    [[1.0, 1.0], [1.0, 1.0]]
  """
  check_repulsive(repulsive)
  check_batch(inputs, labels)
  separate = repulsive == "separate"

  def accumulate(acc, rows, matrix):
    def leaf(a, r):
      if separate:
        weighted = jnp.diagonal(matrix).astype(r.dtype).reshape((-1,) + (1,) * (r.ndim - 1)) * r
      else:
        weighted = jnp.tensordot(matrix.astype(r.dtype), r, axes=1, precision=_HIGHEST)
      return a + jnp.sum(r * weighted, axis=0)

    return jax.tree_util.tree_map(leaf, acc, rows)

  init = jax.tree_util.tree_map(jnp.zeros_like, params)
  return _scan_rows(embed_fn, params, inputs, labels, margin, repulsive, init, accumulate)


def ggn_dense(
    embed_fn: EmbedFn,
    params,
    inputs,
    labels: jax.Array,
    *,
    margin: float,
    repulsive: str = "positives",
    max_params: int = 20_000,
) -> jax.Array:
  """The dense ``(P, P)`` batch GGN, unclipped, in ``ravel_pytree`` order.

  ``G = sum_d J_d^T M J_d`` from the same per-sample rows as
  :func:`ggn_diagonal`; meant for a parameter subset (the last layer).

  Args:
    embed_fn: ``embed_fn(params, inputs) -> (B, D)``, samples independent.
    params: the linearisation point (a small pytree).
    inputs: a batch of inputs.
    labels: the batch's labels.
    margin: the contrastive margin.
    repulsive: see :func:`contrastive_hessian_matrix`.
    max_params: refuse more parameters than this (``P^2`` memory).

  Returns:
    A symmetric ``(P, P)`` array.

  Raises:
    ValueError: bad shapes, an unknown option, ``P > max_params``.

  Example:
    >>> import jax.numpy as jnp
    >>> from sphereembed.laplace import ggn_dense
    >>> embed = lambda w, x: x @ w
    >>> x = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> ggn_dense(embed, jnp.eye(2), x, jnp.array([0, 0]), margin=1.0)[0].tolist()
    [1.0, 0.0, -1.0, 0.0]
  """
  check_repulsive(repulsive)
  check_batch(inputs, labels)
  flat, _ = ravel_pytree(params)
  if flat.size > max_params:
    raise ValueError(f"the dense GGN of {flat.size} parameters exceeds max_params = "
                     f"{max_params}; use structure='diagonal' or a parameter subset.")

  def accumulate(acc, rows, matrix):
    flat_rows = jax.vmap(lambda r: ravel_pytree(r)[0])(rows)
    weighted = jnp.matmul(matrix.astype(flat_rows.dtype), flat_rows, precision=_HIGHEST)
    return acc + jnp.matmul(flat_rows.T, weighted, precision=_HIGHEST)

  init = jnp.zeros((flat.size, flat.size), flat.dtype)
  dense = _scan_rows(embed_fn, params, inputs, labels, margin, repulsive, init, accumulate)
  return 0.5 * (dense + dense.T)


def batch_curvature(
    embed_fn: EmbedFn,
    params,
    inputs,
    labels: jax.Array,
    *,
    margin: float,
    repulsive: str = "positives",
    structure: str = "diagonal",
):
  """The batch GGN in a posterior structure: :func:`ggn_diagonal` or :func:`ggn_dense`.

  Args:
    embed_fn: ``embed_fn(params, inputs) -> (B, D)``, samples independent.
    params: the linearisation point.
    inputs: a batch of inputs.
    labels: the batch's labels.
    margin: the contrastive margin.
    repulsive: see :func:`contrastive_hessian_matrix`.
    structure: ``"diagonal"`` (a pytree like ``params``) or ``"full"`` (a
      ``(P, P)`` array).

  Returns:
    The unclipped curvature of the batch's summed pair loss.

  Example:
    >>> import jax.numpy as jnp
    >>> from sphereembed.laplace import batch_curvature
    >>> embed = lambda w, x: x @ w
    >>> x = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> batch_curvature(embed, jnp.eye(2), x, jnp.array([0, 0]), margin=1.0,
    ...                 structure="full").shape
    (4, 4)
  """
  check_structure(structure)
  fn = ggn_diagonal if structure == "diagonal" else ggn_dense
  return fn(embed_fn, params, inputs, labels, margin=margin, repulsive=repulsive)
