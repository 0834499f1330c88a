"""The training engine: it trains whatever a method gives it and knows no method.

* :mod:`~sphereembed.training.state`: the one :class:`TrainState` (method
  extras such as centroids or a Laplace curvature in ``state.extras``).
* :mod:`~sphereembed.training.engine`: the :class:`~sphereembed.training.engine.Run`,
  the one phase loop :func:`~sphereembed.training.engine.run_phase` (mesh,
  prefetch, checkpoints, metric writers, progress, NaN guard), the one chunked
  map :func:`~sphereembed.training.engine.map_batches`, the resume check.
* :mod:`~sphereembed.training.builders`: model, optimiser, sampler and mesh from a config.
* :mod:`~sphereembed.training.config`: the engine's config fields and the shared checks.
* :mod:`~sphereembed.training.checkpoints` (checksummed, with the run's config),
  :mod:`~sphereembed.training.lock` (one run per workdir),
  :mod:`~sphereembed.training.metric_writers`, :mod:`~sphereembed.training.sharding`.

Methods (:mod:`sphereembed.methods`) build on this package;
:func:`sphereembed.train_and_evaluate` runs them.
"""

from sphereembed.training.engine import Run, embed, map_batches, run_phase
from sphereembed.training.state import TrainState, init_train_state

__all__ = ["Run", "TrainState", "embed", "init_train_state", "map_batches", "run_phase"]
