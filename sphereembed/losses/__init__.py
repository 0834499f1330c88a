"""Metric-learning losses: pure functions of arrays, jit/vmap/grad-compatible.

One family per module, all re-exported here:

* ``_triplet``: :func:`triplet_batch_all`, :func:`triplet_batch_hard`,
  :func:`triplet_semi_hard` (O(B^2) memory mining).
* ``_pairs``: :func:`contrastive`, :func:`siamese_l1_bce`,
  :func:`siamese_cosine_bce`.
* ``_centroids``: :func:`ncl` (N-Centroids Loss).
* ``_angular_margin``: :func:`arcface`, :func:`cosface`,
  :func:`subcenter_arcface`, :func:`normalized_softmax` (softmax losses
  against explicit class proxies).
* ``_proxy``: :func:`proxy_anchor`, :func:`proxy_nca` (proxy losses).
* ``_pair_weighting``: :func:`multi_similarity`, :func:`circle`,
  :func:`lifted_structure` (log-sum-exp pair weighting; also against
  references, e.g. the cross-batch memory of :mod:`sphereembed.memory`).
* ``_self_supervised``: :func:`ntxent` (SimCLR / supervised contrastive).
* ``_hedged``: :func:`match_probability`, :func:`vib_match_loss`,
  :func:`self_mismatch`, :func:`kl_to_standard_normal` and the mixture
  helpers of Hedged Instance Embeddings (stochastic embeddings).
* ``_probabilistic``: :func:`vmf_nll`, :func:`gaussian_nll` (confidence
  heads' likelihoods around the class centroids).

Value checks that need concrete arrays are the ``validate_*`` helpers; losses
run them automatically when called outside ``jit``. They and the static
``check_*`` helpers live in :mod:`sphereembed.losses.checks`, the label masks of
pairs in :mod:`sphereembed.losses.masks`: public modules, for any code that
takes embeddings and labels as the losses do.
"""

from sphereembed.losses._angular_margin import arcface, cosface, normalized_softmax, subcenter_arcface
from sphereembed.losses._centroids import ncl
from sphereembed.losses.checks import validate_embeddings, validate_labels, validate_weights
from sphereembed.losses._hedged import (
    kl_mixture_to_standard_normal,
    kl_to_standard_normal,
    match_probability,
    sample_mixture,
    self_mismatch,
    soft_contrastive_loss,
    vib_match_loss,
)
from sphereembed.losses._pairs import contrastive, siamese_cosine_bce, siamese_l1_bce
from sphereembed.losses._pair_weighting import circle, lifted_structure, multi_similarity
from sphereembed.losses._probabilistic import gaussian_nll, vmf_nll
from sphereembed.losses._proxy import proxy_anchor, proxy_nca
from sphereembed.losses._self_supervised import ntxent
from sphereembed.losses._triplet import triplet_batch_all, triplet_batch_hard, triplet_semi_hard

__all__ = [
    "arcface",
    "circle",
    "contrastive",
    "cosface",
    "gaussian_nll",
    "kl_mixture_to_standard_normal",
    "kl_to_standard_normal",
    "lifted_structure",
    "match_probability",
    "multi_similarity",
    "ncl",
    "normalized_softmax",
    "ntxent",
    "proxy_anchor",
    "proxy_nca",
    "sample_mixture",
    "self_mismatch",
    "siamese_cosine_bce",
    "siamese_l1_bce",
    "soft_contrastive_loss",
    "subcenter_arcface",
    "triplet_batch_all",
    "triplet_batch_hard",
    "triplet_semi_hard",
    "validate_embeddings",
    "validate_labels",
    "validate_weights",
    "vib_match_loss",
    "vmf_nll",
]
