"""sphereembed: metric learning with calibrated confidence on hyperspherical embeddings.

The package is layered; a module imports only from the ones listed before it:
``geometry`` -> ``distributions`` -> ``losses`` -> ``centroids`` -> ``confidence`` ->
``data`` -> ``models`` -> ``evaluation`` -> ``plotting`` -> ``training`` -> experiments
in ``experiments/``.
"""

from sphereembed import geometry, losses
from sphereembed.geometry import l2_normalize, pairwise_distances

__version__ = "0.1.0.dev0"

__all__ = ["geometry", "l2_normalize", "losses", "pairwise_distances"]
