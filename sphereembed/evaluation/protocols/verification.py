"""Verification of stochastic embeddings on unseen classes, clean and corrupted (HIB's protocol).

The protocol of Oh et al., "Modeling Uncertainty with Hedged Instance
Embedding" (ICLR 2019) as :mod:`sphereembed.methods.hib` runs it on N-digit
MNIST; every choice below is ours where the paper is silent.

* Test sets: each name in ``config.eval_sets`` (``"unseen"``: the classes
  never trained on, open-set verification; ``"seen"``: test images of the
  training classes). The first one is the headline (``verification_ap_clean``,
  ...). Corrupted images are the same images with one random occlusion each,
  so every clean image has a corrupted twin at the same index.
* Embeddings: the model's means and log-sigmas; ``eval_num_samples`` samples
  per image (:func:`~sphereembed.losses.sample_mixture`, drawn once from
  ``eval_seed``); a point embedding is its single point.
* Verification pairs (:func:`verification_pairs`): every test image is the
  first member of ``pairs_per_image`` pairs, half of its class, half not
  (fixed by ``eval_seed``). The score of a pair is the Monte Carlo match
  probability over all K x K sample pairs. Clean AP: both members clean.
  Corrupted AP: the first member replaced by its corrupted twin.
* kNN accuracy: majority vote of the ``knn_k`` nearest neighbours by the
  mixture mean (Euclidean). Clean: leave-one-out within the clean set.
  Corrupted: each corrupted image queries the clean set, its own twin left out.
* Uncertainty: the self-mismatch ``eta(x) = 1 - p(m|x, x)``. Spearman's rho
  (and Kendall's tau) between ``eta`` and each image's AP and kNN
  correctness (negative: useful), and the binned view: ``uncertainty_bins``
  equal-count bins of ``eta``, rho between the bins' means. A point
  embedding has a constant ``eta``: its correlations are NaN. Sign: the
  paper prints its correlations as positive numbers for "more uncertain,
  worse"; ours keep the sign of rho(eta, performance), so the same finding
  reads negative here (compare magnitudes).
* Occlusion response (``corrupted/mean_shift``, ``corrupted/class_spacing``,
  ``corrupted/sigma_ratio``, ``corrupted/sigma_grows_share``,
  ``corrupted/sigma_shift_spearman``): how far occlusion moves an image's
  mean, against the class spacing, and whether its sigma grows with it.

Figures (:func:`write_figures`, through :mod:`sphereembed.plotting`):
``embeddings_hib.png``, ``uncertain_images.png``, ``uncertainty_bins.png``.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from sphereembed import evaluation
from sphereembed import losses
from sphereembed import plotting
from sphereembed.data import ndigit

__all__ = ["EVAL_SETS", "evaluate", "verification_pairs", "write_figures"]

EVAL_SETS = ("unseen", "seen")


def _samples(key, outputs: dict[str, np.ndarray], num_samples: int) -> np.ndarray:
  """``(N, K, D)`` samples of every embedding (``K = 1`` for points)."""
  log_sigmas = outputs.get("log_sigmas")
  if log_sigmas is None:
    return outputs["means"]
  return np.asarray(losses.sample_mixture(key, jnp.asarray(outputs["means"]),
                                          jnp.asarray(log_sigmas), num_samples))


def verification_pairs(labels, pairs_per_image: int, rng: np.random.Generator):
  """``pairs_per_image`` partners per image: half of its class, half of other classes.

  Args:
    labels: ``(N,)`` int class ids; every class needs at least two images.
    pairs_per_image: an even number ``2m``: ``m`` positive partners (drawn
      uniformly among the other images of the class, with replacement) and
      ``m`` negative partners (uniformly among the images of other classes).
    rng: the NumPy generator the partners come from.

  Returns:
    ``(partners, same)``: ``(N, pairs_per_image)`` int64 partner rows (the
    positives first) and the matching bool same-class flags.

  Raises:
    ValueError: an odd or non-positive ``pairs_per_image``, a class with a
      single image, or a single class.
  """
  labels = np.asarray(labels)
  if pairs_per_image < 2 or pairs_per_image % 2:
    raise ValueError(f"pairs_per_image must be a positive even number, got {pairs_per_image}.")
  classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
  if len(classes) < 2:
    raise ValueError("verification pairs need at least two classes.")
  if counts.min() < 2:
    raise ValueError(f"class {classes[np.argmin(counts)]} has a single image: it has no positive "
                     "pair. Use a larger test set.")
  half, n = pairs_per_image // 2, len(labels)
  order = np.argsort(inverse, kind="stable")
  starts = np.r_[0, np.cumsum(counts)[:-1]]
  rank = np.empty(n, np.int64)
  rank[order] = np.arange(n) - starts[inverse[order]]  # position of each image in its class
  # A uniform other member of the class: draw among n_c - 1 slots and skip the image's own.
  slot = np.floor(rng.random((n, half)) * (counts[inverse] - 1)[:, None]).astype(np.int64)
  slot += slot >= rank[:, None]
  positives = order[starts[inverse][:, None] + slot]
  negatives = rng.integers(0, n, (n, half))
  clash = labels[negatives] == labels[:, None]
  while clash.any():  # rejection: few rounds, the share of same-class draws is about 1 / classes
    negatives[clash] = rng.integers(0, n, int(clash.sum()))
    clash = labels[negatives] == labels[:, None]
  partners = np.concatenate([positives, negatives], axis=1)
  same = np.concatenate([np.ones((n, half), bool), np.zeros((n, half), bool)], axis=1)
  return partners, same


def _pair_scores(first: np.ndarray, second: np.ndarray, a, b, chunk: int = 20_000) -> np.ndarray:
  """Match probabilities of rows of samples ``(P, K, D)``, in chunks (memory ``chunk K^2 D``)."""
  scores = [np.asarray(losses.match_probability(first[s:s + chunk], second[s:s + chunk], a, b))
            for s in range(0, len(first), chunk)]
  return np.concatenate(scores)


def _self_mismatch(samples: np.ndarray, a, b, chunk: int = 20_000) -> np.ndarray:
  return np.concatenate([np.asarray(losses.self_mismatch(samples[s:s + chunk], a, b))
                         for s in range(0, len(samples), chunk)])


def _per_image_ap(scores: np.ndarray, same: np.ndarray) -> np.ndarray:
  """AP of each row's pairs (every row holds positives and negatives by construction)."""
  return np.array([evaluation.average_precision(s, y) for s, y in zip(scores, same)])


def _correlations(eta: np.ndarray, performance: np.ndarray, bins: int) -> dict[str, float]:
  """Spearman and Kendall of ``eta`` against per-image performance, and the binned Spearman.

  NaN where undefined (a constant ``eta``, as for point embeddings, or a
  constant performance).
  """
  out = {"spearman": math.nan, "kendall": math.nan, "binned_spearman": math.nan}
  try:
    out.update(evaluation.uncertainty_correlation(eta, performance))
    binned = evaluation.binned_performance(eta, performance, min(bins, len(eta)))
    filled = binned.count > 0
    out["binned_spearman"] = evaluation.spearman_rho(binned.uncertainty[filled],
                                                     binned.performance[filled])
  except ValueError:
    pass  # undefined correlation: keep NaN
  return out


def _evaluate_set(embed: Callable, clean, corrupted, config, key,
                  stream: int) -> tuple[dict[str, float], dict[str, Any]]:
  """Metrics of one test set (clean and corrupted) and the per-image arrays for figures.

  ``stream`` picks the set's own random stream of verification pairs.
  """
  outputs = {"clean": embed(clean.images), "corrupted": embed(corrupted.images)}
  a, b = outputs["clean"]["match_a"], outputs["clean"]["match_b"]
  # The same noise for the clean and the corrupted image of an index.
  samples = {name: _samples(key, out, config.eval_num_samples) for name, out in outputs.items()}
  centres = {name: out["means"].mean(axis=1) for name, out in outputs.items()}
  labels = clean.labels
  partners, same = verification_pairs(
      labels, config.pairs_per_image,
      np.random.default_rng([config.eval_seed, stream]))
  rows = np.repeat(np.arange(len(labels)), config.pairs_per_image)
  metrics: dict[str, float] = {}
  arrays: dict[str, Any] = {"labels": labels, "centres": centres, "samples": samples}
  knn_k = min(config.knn_k, len(labels) - 1)
  for name in ("clean", "corrupted"):
    scores = _pair_scores(samples[name][rows], samples["clean"][partners.ravel()], a, b)
    scores = scores.reshape(partners.shape)
    ap_per_image = _per_image_ap(scores, same)
    metrics[f"{name}/verification_ap"] = evaluation.verification_ap(scores.ravel(), same.ravel())
    if name == "clean":
      retrieval = evaluation.retrieval_metrics_per_query(
          centres["clean"], labels, ks=(1,), knn_k=knn_k)
    else:
      retrieval = evaluation.retrieval_metrics_per_query(
          centres["corrupted"], labels, centres["clean"], labels, ks=(1,), knn_k=knn_k,
          exclude_self=True)
    knn_correct = retrieval["knn_correct"]
    metrics[f"{name}/knn_accuracy"] = float(np.mean(knn_correct))
    metrics[f"{name}/precision_at_1"] = float(np.nanmean(retrieval["precision_at_1"]))
    metrics[f"{name}/map_at_r"] = float(np.nanmean(retrieval["map_at_r"]))
    eta = _self_mismatch(samples[name], a, b)
    metrics[f"{name}/eta_mean"] = float(np.mean(eta))
    if "log_sigmas" in outputs[name]:
      metrics[f"{name}/sigma_mean"] = float(np.mean(np.exp(outputs[name]["log_sigmas"])))
    for performance_name, performance in (("ap", ap_per_image), ("knn", knn_correct)):
      for stat, value in _correlations(eta, performance, config.uncertainty_bins).items():
        metrics[f"{name}/eta_{performance_name}_{stat}"] = value
    arrays[f"{name}_eta"] = eta
    arrays[f"{name}_ap"] = ap_per_image
    arrays[f"{name}_knn"] = knn_correct
  metrics.update(_occlusion_response(outputs, centres, labels))
  return metrics, arrays


def _occlusion_response(outputs: dict[str, Any], centres: dict[str, np.ndarray],
                        labels: np.ndarray) -> dict[str, float]:
  """How far occlusion moves each image's embedding, and whether its sigma grows to cover it.

  A hedged embedding should answer occlusion with a larger sigma where the mean moves; these
  say whether it does (``corrupted/...``): the median distance between an image's clean and
  occluded mixture means (``mean_shift``) beside the median distance from a class's mean to
  the nearest other class's (``class_spacing``, clean); for stochastic models also the
  median ratio of the occluded to the clean sigma (``sigma_ratio``, per image: the mean
  sigma over components and dimensions), the share of images whose sigma grows
  (``sigma_grows_share``) and Spearman's rho between the sigma's growth and the mean's
  shift (``sigma_shift_spearman``).
  """
  shift = np.linalg.norm(centres["corrupted"] - centres["clean"], axis=-1)
  classes, inverse = np.unique(labels, return_inverse=True)
  out = {"corrupted/mean_shift": float(np.median(shift)), "corrupted/class_spacing": math.nan}
  if len(classes) > 1:
    class_means = np.zeros((len(classes), centres["clean"].shape[-1]))
    np.add.at(class_means, inverse, centres["clean"])
    class_means /= np.bincount(inverse)[:, None]
    gaps = np.linalg.norm(class_means[:, None] - class_means[None], axis=-1)
    np.fill_diagonal(gaps, np.inf)
    out["corrupted/class_spacing"] = float(np.median(gaps.min(axis=1)))
  if "log_sigmas" in outputs["clean"]:
    sigma = {name: np.exp(np.asarray(out_["log_sigmas"], np.float64)).mean(axis=(1, 2))
             for name, out_ in outputs.items()}
    growth = sigma["corrupted"] - sigma["clean"]
    out["corrupted/sigma_ratio"] = float(np.median(sigma["corrupted"] / sigma["clean"]))
    out["corrupted/sigma_grows_share"] = float(np.mean(growth > 0))
    try:
      out["corrupted/sigma_shift_spearman"] = float(evaluation.spearman_rho(growth, shift))
    except ValueError:
      out["corrupted/sigma_shift_spearman"] = math.nan  # constant growth or shift
  return out


def evaluate(embed: Callable, data: ndigit.NDigitMnist, config) -> tuple[dict, dict]:
  """The protocol of the module docstring on every set of ``config.eval_sets``.

  Args:
    embed: ``embed(images) -> outputs``: the model's ``means``, its
      ``log_sigmas`` (stochastic models) and the scalars ``match_a`` and
      ``match_b`` (:class:`~sphereembed.models.hib.HIBEmbedding`'s outputs).
    data: the N-digit MNIST sets.
    config: the run's config (its ``eval_*``, ``pairs_per_image``, ``knn_k``
      and ``uncertainty_bins`` fields; see :mod:`sphereembed.methods.hib`).

  Returns:
    ``(metrics, arrays)``: a flat dict ``{"<set>/<clean|corrupted>/<metric>": float}``
    with the headline keys of the first set (``verification_ap_clean``,
    ``knn_accuracy_corrupted``, ``eta_ap_spearman_clean``, ...), and, per set,
    the per-image arrays the figures use.
  """
  metrics: dict[str, Any] = {}
  arrays: dict[str, Any] = {}
  key = jax.random.PRNGKey(config.eval_seed)
  for name in config.eval_sets:
    set_metrics, arrays[name] = _evaluate_set(
        embed, data.test_set(name), data.test_set(f"{name}_corrupted"), config, key,
        EVAL_SETS.index(name))
    metrics.update({f"{name}/{k}": v for k, v in set_metrics.items()})
  headline = config.eval_sets[0]
  metrics["headline_set"] = headline
  for condition in ("clean", "corrupted"):
    for metric in ("verification_ap", "knn_accuracy", "eta_ap_spearman", "eta_knn_spearman",
                   "eta_ap_binned_spearman", "eta_knn_binned_spearman", "eta_mean"):
      metrics[f"{metric}_{condition}"] = metrics[f"{headline}/{condition}/{metric}"]
  return metrics, arrays



def write_figures(workdir: str, data: ndigit.NDigitMnist, arrays: dict[str, Any], config,
                  title: str, model_name: str) -> None:
  """The protocol's figures of the headline set in ``workdir``."""
  headline = config.eval_sets[0]
  plotting.plot_hib_embeddings(arrays[headline], os.path.join(workdir, "embeddings_hib.png"),
                               title)
  plotting.plot_uncertain_images(
      {"clean": data.test_set(headline).images,
       "corrupted": data.test_set(f"{headline}_corrupted").images},
      arrays[headline], os.path.join(workdir, "uncertain_images.png"))
  plotting.plot_uncertainty_bins(
      arrays[headline], config.uncertainty_bins, os.path.join(workdir, "uncertainty_bins.png"),
      f"HIB {model_name}: performance per self-mismatch bin ({headline} classes)")
