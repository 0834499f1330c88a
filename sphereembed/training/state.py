"""The train state: every piece of mutable training state as one explicit pytree."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from sphereembed import centroids as centroids_lib


class TrainState(train_state.TrainState):
  """Flax's ``TrainState`` (step, params, optimiser state) plus centroids and RNG.

  ``apply_fn`` and ``tx`` are static (not pytree leaves); everything that
  changes during training is a leaf, so the state can be jitted, sharded and
  checkpointed as a whole and a train step is a pure function of it.

  Attributes:
    centroids: ``(K, D)`` unit class centroids moved by an EMA
      (:func:`sphereembed.centroids.update_centroids`).
    rng: a raw ``uint32[2]`` PRNG key, split once per step (dropout, sampling).
    batch_stats: the model's batch-norm running statistics (``{}`` for models
      without batch norm), updated by every train step.
  """

  centroids: jax.Array
  rng: jax.Array
  batch_stats: Any = None

  def variables(self, params=None) -> dict[str, Any]:
    """The ``variables`` dict for ``apply_fn``: params, plus batch statistics if any."""
    variables = {"params": self.params if params is None else params}
    if self.batch_stats:
      variables["batch_stats"] = self.batch_stats
    return variables


def create_train_state(
    model, tx: optax.GradientTransformation, key: jax.Array, sample_input: jax.Array,
    num_classes: int,
) -> TrainState:
  """Initialises parameters, optimiser state and centroids from one PRNG key.

  Args:
    model: a Flax module returning ``{"embedding": (B, D), ...}``.
    tx: the optax optimiser.
    key: a raw PRNG key (``jax.random.PRNGKey``).
    sample_input: a batch with the input's shape and dtype (values unused).
    num_classes: the number of class centroids.

  Returns:
    A :class:`TrainState` at step 0.
  """
  params_key, centroid_key, state_key = jax.random.split(key, 3)
  variables = model.init({"params": params_key}, sample_input, train=False)
  unknown = set(variables) - {"params", "batch_stats"}
  if unknown:
    raise ValueError(f"models with mutable collections {sorted(unknown)} need a train state "
                     "that carries them; this one carries params and batch_stats.")
  params = variables["params"]
  dim = jax.eval_shape(lambda v: model.apply(v, sample_input), variables)["embedding"].shape[-1]
  return TrainState.create(
      apply_fn=model.apply,
      params=params,
      tx=tx,
      centroids=centroids_lib.init_centroids(centroid_key, num_classes, dim, jnp.float32),
      rng=state_key,
      batch_stats=variables.get("batch_stats", {}),
  ).replace(step=jnp.zeros((), jnp.int32))  # an array leaf, like every other field


def state_summary(state: TrainState) -> dict[str, Any]:
  """Parameter count and shapes, for logs."""
  sizes = [x.size for x in jax.tree_util.tree_leaves(state.params)]
  return {"num_params": int(sum(sizes)), "num_classes": int(state.centroids.shape[0]),
          "embedding_dim": int(state.centroids.shape[1])}
