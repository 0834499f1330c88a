"""sphereembed: metric learning with calibrated confidence on hyperspherical embeddings.

The package is layered; a module imports only from the ones listed before it:
``geometry`` -> ``distributions`` -> ``losses`` -> ``centroids`` -> ``confidence`` ->
``prediction`` -> ``data`` -> ``models`` -> ``laplace`` -> ``evaluation`` -> ``plotting`` ->
``evaluation.protocols`` -> ``training`` (the engine) -> ``inference`` (a trained model:
:func:`sphereembed.inference.load_model`) -> ``methods`` (the plug-ins) -> ``runner``
(:func:`train_and_evaluate`) -> the commands in ``experiments/``.
"""

from sphereembed import geometry, losses
from sphereembed.geometry import l2_normalize, pairwise_distances

__version__ = "0.1.0.dev0"

__all__ = ["geometry", "l2_normalize", "losses", "pairwise_distances", "train_and_evaluate"]


def __getattr__(name):
  # The runner pulls in the whole training stack (flax, orbax, ...): imported on first use only.
  if name == "train_and_evaluate":
    from sphereembed.runner import train_and_evaluate  # pylint: disable=import-outside-toplevel
    return train_and_evaluate
  raise AttributeError(f"module 'sphereembed' has no attribute {name!r}")
