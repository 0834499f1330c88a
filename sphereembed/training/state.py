"""The train state of every method: every piece of mutable training state as one explicit pytree."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

__all__ = ["TrainState", "init_train_state"]


class TrainState(train_state.TrainState):
  """Flax's ``TrainState`` (step, params, optimiser state) plus RNG, batch statistics and extras.

  ``apply_fn`` and ``tx`` are static (not pytree leaves); everything that
  changes during training is a leaf, so the state can be jitted, sharded and
  checkpointed as a whole and a train step is a pure function of it.

  Attributes:
    rng: a raw ``uint32[2]`` PRNG key, split once per step (dropout, sampling).
    batch_stats: the model's batch-norm running statistics (``{}`` for models
      without batch norm), updated by every train step.
    extras: the method's own state, a dict of pytrees that its train step
      updates: the centroid methods' ``"centroids"`` (``(K, D)`` unit class
      centroids moved by an EMA), online Laplace's ``"curvature"``; ``{}``
      for methods with none.
  """

  rng: jax.Array
  batch_stats: Any = None
  extras: Any = None

  def variables(self, params=None) -> dict[str, Any]:
    """The ``variables`` dict for ``apply_fn``: params, plus batch statistics if any."""
    variables = {"params": self.params if params is None else params}
    if self.batch_stats:
      variables["batch_stats"] = self.batch_stats
    return variables

  def with_extras(self, **extras) -> "TrainState":
    """A copy with the named extras replaced (or added)."""
    return self.replace(extras={**self.extras, **extras})


def init_train_state(apply_fn, params, tx: optax.GradientTransformation, rng: jax.Array, *,
                     batch_stats=None, extras=None) -> TrainState:
  """A :class:`TrainState` at step 0 (an array leaf, like every other field).

  Args:
    apply_fn: the model's ``apply``.
    params: the initial parameters.
    tx: the optax optimiser (its state is initialised here).
    rng: the raw PRNG key the train steps split.
    batch_stats: the model's batch-norm statistics, if any.
    extras: the method's own state (see :class:`TrainState`).
  """
  return TrainState.create(
      apply_fn=apply_fn, params=params, tx=tx, rng=rng, batch_stats=batch_stats or {},
      extras=extras or {}).replace(step=jnp.zeros((), jnp.int32))
