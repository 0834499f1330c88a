"""``train_and_evaluate(config, workdir)``: the one runner behind every experiment.

It validates the config against its method's schema
(:func:`sphereembed.methods.validate_config`), refuses a workdir that holds a
run of another config (and resumes one of the same config), builds the
device mesh and the metric writers, lets the method (:mod:`sphereembed.methods`)
train its phases on the engine (:mod:`sphereembed.training.engine`) and
evaluate them, and writes ``metrics.json`` with the same bookkeeping keys for
every method.

Layers, each importing only from those above it: the library (losses,
geometry, data, models, evaluation, plotting) -> the engine
(:mod:`sphereembed.training`) -> the methods -> this runner -> the commands
of ``experiments/``.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from absl import logging
import jax

import ml_collections

from sphereembed import data as data_lib
from sphereembed import inference
from sphereembed import methods
from sphereembed.training import builders
from sphereembed.training import engine
from sphereembed.training import lock
from sphereembed.training import metric_writers

__all__ = ["train_and_evaluate"]


def _final_train_loss(run: engine.Run) -> float:
  """The last logged loss of the last phase (of an earlier run when this one resumed at its end)."""
  if run.last_loss:
    return list(run.last_loss.values())[-1]
  if not run.primary:
    return math.nan  # the records are process 0's
  losses = [value for record in metric_writers.read_jsonl(run.path("metrics.jsonl"))
            for key, value in record.items() if key.endswith("_loss")]
  return losses[-1] if losses else math.nan


def train_and_evaluate(config, workdir: str, dataset=None) -> dict[str, Any]:
  """Trains and evaluates the method of ``config.method`` (``"centroid"`` when absent).

  Args:
    config: an ``ml_collections.ConfigDict`` with a subset of the fields of
      :func:`sphereembed.methods.default_config` of its method.
    workdir: where ``config.json``, checkpoints (``checkpoints/<phase>``),
      ``metrics.jsonl``, TensorBoard events, ``metrics.json``, the figures
      and the trained model (``model/``, read by
      :func:`sphereembed.inference.load_model`) go. A workdir holding a run
      of the same config resumes it.
    dataset: your own :class:`sphereembed.data.Dataset` (e.g.
      :meth:`~sphereembed.data.Dataset.from_arrays`) in place of
      ``config.dataset``, which is then recorded as ``"arrays:<name>"``;
      to resume, pass the same dataset again. The centroid family only.

  Returns:
    The final metrics (also in ``workdir/metrics.json``): the method's, plus
    ``method``, ``seed``, ``num_devices``, ``num_processes``,
    ``final_train_loss``, ``train_seconds`` and ``resumed_from_step`` (per
    phase) and ``train_seconds_this_run`` (their sum).

  Raises:
    ValueError: a bad config, a workdir holding a run of another config, more
      devices than exist, or a batch that does not split over them.
    DataNotFoundError: no source has the dataset (the message says how to
      provide it).
    FloatingPointError: a training loss became NaN or infinite.
    WorkdirLockedError: another run is using ``workdir``.
  """
  if dataset is not None:
    if config.get("method", "centroid") != "centroid":
      raise ValueError(f"dataset= is for the centroid family; method {config.method!r} reads its "
                       "own data.")
    if not isinstance(dataset, data_lib.Dataset):
      raise ValueError(f"dataset must be a sphereembed.data.Dataset (Dataset.from_arrays builds "
                       f"one), got {type(dataset).__name__}.")
    config = ml_collections.ConfigDict(config.to_dict() if hasattr(config, "to_dict")
                                       else dict(config))
    config.dataset = f"arrays:{dataset.name}"
  config = methods.validate_config(config)
  method = methods.get_method(config.method)
  # Process 0 owns the run's files; every process trains, evaluates and checkpoints.
  primary = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  # One run per workdir: a second one fails at once, naming the holder.
  with lock.WorkdirLock(workdir, enabled=primary):
    fresh = not os.path.exists(os.path.join(workdir, "config.json"))
    engine.check_resumable(config, workdir,
                           defaults=methods.default_config(config.method).to_dict(),
                           resume_safe=methods.resume_safe_fields(config.method),
                           write=primary)
    mesh = builders.make_mesh(config)
    writer = metric_writers.create_default_writer(workdir, tensorboard=config.tensorboard,
                                                  just_logging=not primary)
    run = engine.Run(config, workdir, mesh, writer, primary, dataset=dataset)
    if fresh:
      writer.write_hparams(config.to_dict())
    logging.info("Method %s on %d %s device(s) of %d process(es)", config.method, mesh.size,
                 mesh.devices.flat[0].platform, jax.process_count())
    try:
      result = method.run(run)
      artifact = result.pop("model_artifact", None)
      if artifact is not None and primary:
        artifact.save(run.path(inference.MODEL_FOLDER))
      writer.write_scalars(int(result.get("num_train_steps", 0)), {
          k: v for k, v in result.items() if isinstance(v, float) and math.isfinite(v)})
    finally:
      # Also on errors and interrupts: flush the logs.
      writer.close()
    final = {
        **result,
        "method": config.method,
        "seed": config.seed,
        "num_devices": mesh.size,
        "num_processes": jax.process_count(),
        "final_train_loss": _final_train_loss(run),
        "train_seconds": dict(run.seconds),
        "train_seconds_this_run": sum(run.seconds.values()),
        "resumed_from_step": dict(run.resumed_from),
    }
    if primary:
      engine.write_json(run.path("metrics.json"), final)
  logging.info("Final: %s", json.dumps({k: v for k, v in final.items()
                                        if isinstance(v, (int, float, str))}))
  return final
