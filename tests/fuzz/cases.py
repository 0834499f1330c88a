"""Generators of fuzz calls over the public API, from plain NumPy random numbers.

``calls(seed, dtype)`` draws one call per public function (several for some)
with inputs mixing the usual and the awkward: unit and unnormalised
vectors, zeros, duplicates, magnitudes from 1e-30 to far beyond the supported
range, empty and one-sample batches, one class and singleton classes,
extreme concentrations, log-sigmas and temperatures. Inputs outside a
function's documented domain are allowed: the eager call must then raise a
clean ``ValueError`` (see :mod:`tests.fuzz.harness`). ``adversarial_calls``
are the findings of the first fuzz run: inputs that must be refused.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from sphereembed import centroids as centroids_lib
from sphereembed import confidence, distributions, geometry, losses
from sphereembed.evaluation import calibration, retrieval, uncertainty, verification
from tests.fuzz.harness import Call

METRICS = ("euclidean", "squared_euclidean", "cosine", "great_circle")


def _magnitude(rng) -> float:
  """A scale for the embeddings: mostly moderate, sometimes extreme."""
  kind = rng.integers(0, 6)
  if kind <= 2:
    return 1.0
  if kind == 3:
    return float(10.0 ** rng.uniform(-30, -1))
  if kind == 4:
    return float(10.0 ** rng.uniform(1, 12))
  return float(10.0 ** rng.uniform(12, 40))  # often beyond the supported range


def _batch_size(rng) -> int:
  return int(rng.choice([0, 1, 2, 3, 5, 8, 13]))


def _embeddings(rng, batch, dim, dtype, *, unit=False, scale=None):
  """``(B, D)`` with occasional zeros and duplicates."""
  x = rng.normal(size=(batch, dim))
  if batch and rng.uniform() < 0.2:
    x[rng.integers(0, batch)] = 0.0
  if batch > 1 and rng.uniform() < 0.3:
    x[1] = x[0]
  if unit:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = np.where(norms > 0, x / np.where(norms > 0, norms, 1), np.eye(1, dim))
  else:
    x = x * (scale if scale is not None else _magnitude(rng))
  with np.errstate(over="ignore"):
    return jnp.asarray(x.astype(dtype))


def _labels(rng, batch, num_classes=None):
  kind = rng.integers(0, 4)
  if kind == 0:
    return jnp.zeros((batch,), jnp.int32)  # one class
  if kind == 1:
    return jnp.arange(batch, dtype=jnp.int32)  # singletons
  high = num_classes or max(1, batch // 2)
  return jnp.asarray(rng.integers(0, high, size=batch), jnp.int32)


def _log_uniform(rng, low, high) -> float:
  return float(10.0 ** rng.uniform(low, high))


def _kappa(rng, size, dtype):
  """Concentrations from 0 to far past the float32 range."""
  upper = 300 if dtype == np.float64 else 38
  values = np.where(rng.uniform(size=size) < 0.2, 0.0, 10.0 ** rng.uniform(-8, upper, size=size))
  return jnp.asarray(values.astype(dtype))


def _loss_calls(rng, dtype) -> list[Call]:
  out = []
  batch, dim = _batch_size(rng), int(rng.integers(1, 6))
  metric = str(rng.choice(METRICS))
  unit = metric in ("cosine", "great_circle")
  x = _embeddings(rng, batch, dim, dtype, unit=unit)
  labels = _labels(rng, batch)
  margin = float(rng.choice([0.0, 0.2, 1.0, 5.0]))
  soft = bool(rng.uniform() < 0.3)
  reduction = str(rng.choice(["mean_active", "mean", "sum"]))
  out.append(Call(f"triplet_batch_all({metric}, soft={soft}, {reduction}, B={batch})",
                  functools.partial(losses.triplet_batch_all, margin=margin, metric=metric,
                                    soft_margin=soft, reduction=reduction), (x, labels)))
  out.append(Call(f"triplet_batch_hard({metric}, B={batch})",
                  functools.partial(losses.triplet_batch_hard, margin=margin, metric=metric,
                                    soft_margin=soft), (x, labels)))
  out.append(Call(f"triplet_semi_hard({metric}, B={batch})",
                  functools.partial(losses.triplet_semi_hard, margin=margin, metric=metric),
                  (x, labels)))
  out.append(Call(f"contrastive({metric}, B={batch})",
                  functools.partial(losses.contrastive, margin=margin, metric=metric), (x, labels)))
  unit_x = _embeddings(rng, batch, dim, dtype, unit=True)
  temperature = float(rng.choice([0.05, 0.1, 1.0, _log_uniform(rng, -30, 3)]))
  out.append(Call(f"ntxent(T={temperature:.3g}, B={batch})",
                  functools.partial(losses.ntxent, temperature=temperature), (unit_x, labels)))
  num_classes = int(rng.integers(1, 5))
  centroids = _embeddings(rng, num_classes, dim, dtype, unit=True)
  class_labels = jnp.asarray(rng.integers(0, num_classes, size=batch), jnp.int32)
  ncl_metric = str(rng.choice(METRICS))
  ncl_x = _embeddings(rng, batch, dim, dtype, unit=ncl_metric in ("cosine", "great_circle"))
  out.append(Call(f"ncl({ncl_metric}, B={batch}, K={num_classes})",
                  functools.partial(losses.ncl, metric=ncl_metric,
                                    negative_weight=float(rng.uniform(0, 2))),
                  (ncl_x, class_labels, centroids)))
  if batch:
    kappa = jnp.asarray((10.0 ** rng.uniform(-6, 6, size=batch)).astype(dtype))
    out.append(Call(f"vmf_nll(B={batch})", losses.vmf_nll,
                    (unit_x, kappa, class_labels, centroids)))
    log_sigma = jnp.asarray(rng.uniform(-100, 100, size=batch).astype(dtype))
    out.append(Call(f"gaussian_nll(B={batch})", losses.gaussian_nll,
                    (x, log_sigma, class_labels, centroids), diff=1))
    out.append(Call(f"gaussian_nll(B={batch}, d/dx)", losses.gaussian_nll,
                    (x, log_sigma, class_labels, centroids), diff=0))
  # Siamese pairs.
  x2 = _embeddings(rng, batch, dim, dtype)
  same = jnp.asarray(rng.integers(0, 2, size=batch).astype(bool))
  out.append(Call(f"siamese_l1_bce(N={batch})", losses.siamese_l1_bce,
                  (x, x2, same, jnp.asarray(rng.normal(size=dim).astype(dtype)),
                   jnp.asarray(dtype(0.5)))))
  out.append(Call(f"siamese_cosine_bce(N={batch})", losses.siamese_cosine_bce, (x, x2, same)))
  return out


def _hedged_calls(rng, dtype) -> list[Call]:
  out = []
  batch, k, c, dim = int(rng.integers(1, 4)), int(rng.integers(1, 4)), int(rng.integers(1, 3)), 3
  scale = _magnitude(rng)
  means = jnp.asarray((rng.normal(size=(batch, c, dim)) * scale).astype(dtype))
  log_sigmas = jnp.asarray(rng.uniform(-100, 100, size=(batch, c, dim)).astype(dtype))
  z1 = jnp.asarray((rng.normal(size=(batch, k, dim)) * scale).astype(dtype))
  z2 = jnp.asarray((rng.normal(size=(batch, k, dim)) * scale).astype(dtype))
  same = jnp.asarray(rng.integers(0, 2, size=batch).astype(bool))
  a, b = float(rng.uniform(0, 5)), float(rng.uniform(-5, 5))
  out.append(Call("match_probability", functools.partial(losses.match_probability, a=a, b=b),
                  (z1, z2)))
  out.append(Call("self_mismatch", functools.partial(losses.self_mismatch, a=a, b=b), (z1,)))
  estimator = str(rng.choice(["log_mean", "mean_log"]))
  out.append(Call(f"soft_contrastive_loss({estimator})",
                  functools.partial(losses.soft_contrastive_loss, a=a, b=b, estimator=estimator),
                  (z1, z2, same)))
  out.append(Call("kl_to_standard_normal", losses.kl_to_standard_normal,
                  (means[:, 0], log_sigmas[:, 0]), diff=1))
  out.append(Call("kl_mixture_to_standard_normal", losses.kl_mixture_to_standard_normal,
                  (means, log_sigmas, z1[:, :, :]), diff=1))
  key = jax.random.key(int(rng.integers(0, 2**31)))
  out.append(Call("sample_mixture",
                  lambda m, s: losses.sample_mixture(key, m, s, 4), (means, log_sigmas), diff=1))
  out.append(Call("vib_match_loss",
                  lambda m1, s1, m2, s2, y: losses.vib_match_loss(m1, s1, m2, s2, y, a, b, key=key,
                                                                  num_samples=2),
                  (means, log_sigmas, means[::-1], log_sigmas[::-1], same), diff=1))
  return out


def _geometry_calls(rng, dtype) -> list[Call]:
  out = []
  n, m, dim = int(rng.integers(0, 5)), int(rng.integers(1, 5)), int(rng.integers(1, 5))
  scale = _magnitude(rng)
  x = _embeddings(rng, n, dim, dtype, scale=scale)
  y = _embeddings(rng, m, dim, dtype, scale=scale)
  # Keep the squared distances representable: their overflow to inf is documented.
  limit = math.sqrt(float(np.finfo(dtype).max)) / 4
  bounded = scale * 4 * math.sqrt(dim) < limit
  out.append(Call(f"l2_normalize(scale={scale:.2g})", geometry.l2_normalize, (x,)))
  for metric in METRICS:
    unit = metric in ("cosine", "great_circle")
    xs = _embeddings(rng, n, dim, dtype, unit=True) if unit else x
    ys = _embeddings(rng, m, dim, dtype, unit=True) if unit else y
    allow_inf = metric == "squared_euclidean" and not bounded
    out.append(Call(f"pairwise_distances({metric}, self, scale={scale:.2g})",
                    functools.partial(geometry.pairwise_distances, metric=metric), (xs,),
                    allow_inf=allow_inf))
    out.append(Call(f"pairwise_distances({metric}, scale={scale:.2g})",
                    lambda a, b, metric=metric: geometry.pairwise_distances(a, b, metric=metric),
                    (xs, ys), allow_inf=allow_inf))
    out.append(Call(f"paired_distances({metric}, scale={scale:.2g})",
                    lambda a, b, metric=metric: geometry.paired_distances(a, b, metric=metric),
                    (xs, -xs if rng.uniform() < 0.5 else xs * 0.5), allow_inf=allow_inf))
  if n:
    rotation, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    target = jnp.asarray((np.asarray(x, np.float64) @ rotation).astype(dtype))
    source = x if rng.uniform() < 0.8 else jnp.zeros_like(x)
    out.append(Call(f"orthogonal_procrustes(scale={scale:.2g})", geometry.orthogonal_procrustes,
                    (source, target)))
  return out


def _distribution_calls(rng, dtype) -> list[Call]:
  out = []
  dim = int(rng.choice([2, 3, 4, 17, 64, 1025]))
  kappa = _kappa(rng, 4, dtype)
  out.append(Call(f"vmf_log_normalizer(d={dim})",
                  lambda k: distributions.vmf_log_normalizer(k, dim), (kappa,)))
  out.append(Call(f"mean_resultant_length(d={dim})",
                  lambda k: distributions.mean_resultant_length(k, dim), (kappa,)))
  r = jnp.asarray(np.concatenate([[0.0], rng.uniform(0, 1, 3) ** rng.uniform(0.01, 3)]).astype(dtype))
  r = jnp.where(r >= 1, jnp.asarray(0.5, dtype), r)
  out.append(Call(f"inverse_mean_resultant_length(d={dim})",
                  lambda q: distributions.inverse_mean_resultant_length(q, dim), (r,)))
  order = float(rng.choice([0.0, 0.5, 1.0, 7.5, 14.0, 15.0, 30.5, 511.5, 2046.0]))
  z = jnp.asarray(np.concatenate([10.0 ** rng.uniform(-20, 30, 3), [0.0]]).astype(dtype))
  out.append(Call(f"log_bessel_ive(v={order})", lambda q: distributions.log_bessel_ive(order, q),
                  (z,), allow_inf=True))  # -inf at z = 0 for v > 0
  out.append(Call(f"bessel_iv_ratio(v={order})", lambda q: distributions.bessel_iv_ratio(order, q),
                  (z,)))
  mu = _embeddings(rng, 2, dim, dtype, unit=True)
  concentration = _kappa(rng, 2, dtype)
  x = _embeddings(rng, 2, dim, dtype, unit=True)
  out.append(Call(f"VonMisesFisher.log_prob(d={dim})",
                  lambda m, k, q: distributions.VonMisesFisher(m, k).log_prob(q),
                  (mu, concentration, x), diff=1))
  out.append(Call(f"VonMisesFisher.entropy/kl(d={dim})",
                  lambda m, k: (distributions.VonMisesFisher(m, k).entropy(),
                                distributions.VonMisesFisher(m, k).kl_divergence()),
                  (mu, concentration), diff=1))
  key = jax.random.key(int(rng.integers(0, 2**31)))
  out.append(Call(f"VonMisesFisher.sample(d={dim})",
                  lambda m, k: distributions.VonMisesFisher(m, k).sample(key, (3,)),
                  (mu, concentration), diff=None))
  return out


def _centroid_calls(rng, dtype) -> list[Call]:
  out = []
  batch, num_classes, dim = _batch_size(rng), int(rng.integers(1, 4)), int(rng.integers(1, 4))
  c = _embeddings(rng, num_classes, dim, dtype, unit=True)
  x = _embeddings(rng, batch, dim, dtype, unit=bool(rng.uniform() < 0.5))
  labels = jnp.asarray(rng.integers(0, num_classes, size=batch), jnp.int32)
  alpha = float(rng.choice([0.0, 0.5, 1.0, rng.uniform()]))
  out.append(Call(f"update_centroids(alpha={alpha:.2g}, B={batch})",
                  lambda a, b, l: centroids_lib.update_centroids(a, b, l, alpha), (c, x, labels),
                  diff=None))
  step = int(rng.integers(0, 100000))
  out.append(Call("ema_alpha", lambda s: centroids_lib.ema_alpha(s, base=0.25, decay=0.65,
                                                                 every=1000),
                  (jnp.asarray(step),), diff=None))
  return out


def _confidence_calls(rng, dtype) -> list[Call]:
  out = []
  batch, num_classes, dim = int(rng.integers(1, 5)), int(rng.integers(1, 4)), int(rng.integers(2, 5))
  x = _embeddings(rng, batch, dim, dtype, unit=True)
  c = _embeddings(rng, num_classes, dim, dtype, unit=True)
  per_sample = bool(rng.uniform() < 0.5)
  kappa = _kappa(rng, batch if per_sample else num_classes, dtype)
  if batch == num_classes and not per_sample:
    kappa = _kappa(rng, batch, dtype)
  out.append(Call(f"vmf_class_log_posterior({'sample' if per_sample else 'class'})",
                  confidence.vmf_class_log_posterior, (x, c, kappa), diff=0, allow_inf=False))
  logits = rng.normal(size=(6, 3)) * _log_uniform(rng, -3, 3)
  labels = rng.integers(0, 3, size=6)
  out.append(Call("fit_temperature", confidence.fit_temperature, (logits, labels), diff=None,
                  jit=False))
  conf = rng.uniform(size=7)
  correct = rng.uniform(size=7) < conf
  out.append(Call("fit_isotonic", lambda a, b: confidence.fit_isotonic(a, b)(a), (conf, correct),
                  diff=None, jit=False))
  return out


def _evaluation_calls(rng, dtype) -> list[Call]:
  del dtype
  out = []
  n = int(rng.integers(2, 12))
  conf = rng.uniform(size=n)
  correct = rng.uniform(size=n) < 0.6
  correct[0], correct[1] = True, False
  scores = rng.normal(size=n) * _log_uniform(rng, -10, 10)
  out.append(Call("expected_calibration_error", calibration.expected_calibration_error,
                  (conf, correct), diff=None, jit=False))
  out.append(Call("aurc", calibration.aurc, (conf, correct), diff=None, jit=False))
  out.append(Call("roc_auc", verification.roc_auc, (scores, correct), diff=None, jit=False))
  out.append(Call("equal_error_rate", verification.equal_error_rate, (scores, correct), diff=None,
                  jit=False))
  out.append(Call("threshold_metrics",
                  lambda d, s: verification.threshold_metrics(d, s, float(np.median(d))),
                  (np.abs(scores), correct), diff=None, jit=False, allow_inf=True))
  out.append(Call("ood_auroc", uncertainty.ood_auroc, (scores[: n // 2 + 1], scores[n // 2:]),
                  diff=None, jit=False))
  out.append(Call("ausc", uncertainty.ausc, (scores, correct), diff=None, jit=False))
  emb = rng.normal(size=(n, 3)).astype(np.float32) * _log_uniform(rng, -5, 5)
  labels = rng.integers(0, 3, size=n)
  labels[1] = labels[0]  # NaN is documented when every query is alone in its class
  out.append(Call("retrieval_metrics",
                  lambda e, l: retrieval.retrieval_metrics(e, l, ks=(1,)), (emb, labels),
                  diff=None, jit=False, allow_inf=True))
  return out


GROUPS = {
    "losses": _loss_calls,
    "hedged": _hedged_calls,
    "geometry": _geometry_calls,
    "distributions": _distribution_calls,
    "centroids": _centroid_calls,
    "confidence": _confidence_calls,
    "evaluation": _evaluation_calls,
}


def calls(group: str, seed: int, dtype) -> list[Call]:
  """The calls of one group for one seed and dtype (deterministic).

  The draws do not depend on the dtype: both dtypes get the same list of
  calls on the same numbers (rounded to the dtype).
  """
  rng = np.random.default_rng([seed, list(GROUPS).index(group)])
  return GROUPS[group](rng, dtype)


def adversarial_calls(dtype) -> list[Call]:
  """Inputs outside the documented domains, each a finding of the first fuzz run."""
  x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 3)).astype(dtype))
  u = geometry.l2_normalize(x)
  y = jnp.asarray([0, 0, 1, 1, 2, 2], jnp.int32)
  nan, inf = float("nan"), float("inf")
  out = []
  for margin in (nan, inf, 1j):
    for loss in (losses.triplet_batch_all, losses.triplet_batch_hard, losses.triplet_semi_hard,
                 losses.contrastive):
      out.append(Call(f"{loss.__name__}(margin={margin})",
                      functools.partial(loss, margin=margin), (x, y), diff=None,
                      expect_error=True, expect_error_jit=True))
  out.append(Call("ncl(negative_weight=nan)",
                  functools.partial(losses.ncl, negative_weight=nan), (u, y % 3, u[:3]),
                  diff=None, expect_error=True, expect_error_jit=True))
  out.append(Call("ntxent(temperature=nan)", functools.partial(losses.ntxent, temperature=nan),
                  (u, y), diff=None, expect_error=True, expect_error_jit=True))
  out.append(Call("contrastive(NaN embeddings)", losses.contrastive,
                  (x.at[0, 0].set(jnp.nan), y), expect_error=True))
  out.append(Call("triplet_batch_hard(1e30)", losses.triplet_batch_hard, (x * dtype(1e30), y),
                  expect_error=dtype == np.float32))
  out.append(Call("ema_alpha(every=0)", lambda s: centroids_lib.ema_alpha(s, every=0),
                  (jnp.asarray(10),), diff=None, expect_error=True, expect_error_jit=True))
  out.append(Call("ema_alpha(decay=-1)", lambda s: centroids_lib.ema_alpha(s, decay=-1.0),
                  (jnp.asarray(10),), diff=None, expect_error=True, expect_error_jit=True))
  out.append(Call("init_centroids(2.5)",
                  lambda: centroids_lib.init_centroids(jax.random.key(0), 2.5, 2), (), diff=None,
                  expect_error=True, jit=False))
  out.append(Call("update_centroids(alpha=nan)",
                  lambda a, b, l: centroids_lib.update_centroids(a, b, l, nan), (u[:3], u, y),
                  diff=None, expect_error=True, expect_error_jit=True))
  out.append(Call("fit_temperature(reversed bounds)",
                  lambda: confidence.fit_temperature(np.eye(3), np.arange(3), bounds=(10, 1)), (),
                  diff=None, expect_error=True, jit=False))
  out.append(Call("fit_temperature(negative bounds)",
                  lambda: confidence.fit_temperature(np.eye(3), np.arange(3), bounds=(-1, 1)), (),
                  diff=None, expect_error=True, jit=False))
  out.append(Call("fit_isotonic(correct=2)",
                  lambda: confidence.fit_isotonic([0.1, 0.5], [2, 0]), (), diff=None,
                  expect_error=True, jit=False))
  out.append(Call("threshold_metrics(nan)",
                  lambda: verification.threshold_metrics([0.1, 0.2], [1, 0], nan), (),
                  diff=None, expect_error=True, jit=False))
  out.append(Call("EnrolmentGallery(threshold=nan)",
                  lambda: verification.EnrolmentGallery(threshold=nan), (), diff=None,
                  expect_error=True, jit=False))
  out.append(Call("roc_auc(complex)",
                  lambda: verification.roc_auc(np.array([1 + 1j, 2, 3]), [1, 0, 1]), (),
                  diff=None, expect_error=True, jit=False))
  out.append(Call("expected_calibration_error(complex)",
                  lambda: calibration.expected_calibration_error(np.array([0.5 + 1j, 0.2]),
                                                                 [1, 0]), (),
                  diff=None, expect_error=True, jit=False))
  out.append(Call("validate_labels(float)",
                  lambda: losses.validate_labels(np.array([0.5, 1.0])), (), diff=None,
                  expect_error=True, jit=False))
  out.append(Call("validate_labels(nan)",
                  lambda: losses.validate_labels(np.array([np.nan, 1.0])), (), diff=None,
                  expect_error=True, jit=False))
  out.append(Call("vmf_class_log_posterior(negative kappa)", confidence.vmf_class_log_posterior,
                  (u, u[:3], -jnp.ones(6, dtype)), diff=None, expect_error=True))
  out.append(Call("vmf_log_normalizer(inf)", lambda k: distributions.vmf_log_normalizer(k, 5),
                  (jnp.asarray([np.inf], dtype),), diff=None, expect_error=True))
  out.append(Call("VonMisesFisher(kappa=inf)",
                  lambda m, k: distributions.VonMisesFisher(m, k).entropy(),
                  (u[0], jnp.asarray(np.inf, dtype)), diff=None, expect_error=True))
  out.append(Call("vmf_log_normalizer(complex)",
                  lambda: distributions.vmf_log_normalizer(jnp.asarray([1 + 1j]), 3), (),
                  diff=None, expect_error=True, jit=False))
  out.append(Call("log_bessel_ive(complex)",
                  lambda: distributions.log_bessel_ive(1.0, jnp.asarray([1 + 1j])), (),
                  diff=None, expect_error=True, jit=False))
  out.append(Call("VonMisesFisher(complex)",
                  lambda: distributions.VonMisesFisher(jnp.asarray([1 + 0j, 0]), 1.0), (),
                  diff=None, expect_error=True, jit=False))
  out.append(Call("l2_normalize(complex)", lambda: geometry.l2_normalize(jnp.asarray([1 + 1j])),
                  (), diff=None, expect_error=True, jit=False))
  return out
