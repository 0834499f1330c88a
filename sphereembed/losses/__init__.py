"""Metric-learning losses: pure functions of arrays, jit/vmap/grad-compatible.

One family per module, all re-exported here:

* ``_triplet``: :func:`triplet_batch_all`, :func:`triplet_batch_hard`,
  :func:`triplet_semi_hard` (O(B^2) memory mining).
* ``_pairs``: :func:`contrastive`, :func:`siamese_l1_bce`,
  :func:`siamese_cosine_bce`.
* ``_centroids``: :func:`ncl` (N-Centroids Loss).
* ``_self_supervised``: :func:`ntxent` (SimCLR / supervised contrastive).

Value checks that need concrete arrays are the ``validate_*`` helpers; losses
run them automatically when called outside ``jit``.
"""

from sphereembed.losses._centroids import ncl
from sphereembed.losses._common import validate_embeddings, validate_labels, validate_weights
from sphereembed.losses._pairs import contrastive, siamese_cosine_bce, siamese_l1_bce
from sphereembed.losses._self_supervised import ntxent
from sphereembed.losses._triplet import triplet_batch_all, triplet_batch_hard, triplet_semi_hard

__all__ = [
    "contrastive",
    "ncl",
    "ntxent",
    "siamese_cosine_bce",
    "siamese_l1_bce",
    "triplet_batch_all",
    "triplet_batch_hard",
    "triplet_semi_hard",
    "validate_embeddings",
    "validate_labels",
    "validate_weights",
]
