"""From a model's outputs to a prediction a user can act on: class probabilities, calibrated confidence, abstention.

A trained model gives, per image, a unit embedding and maybe a vMF
concentration ``kappa``, a Gaussian ``log_sigma`` or classifier logits.
:func:`confidence_scores` turns them into class logits against the class
centroids, one set per *score*:

* ``centroid``: ``cos(x, c_k)``; uncertainty ``-max_k cos``.
* ``kappa`` (vMF heads): the vMF class posterior ``kappa(x) cos(x, c_k)``
  (:func:`sphereembed.confidence.vmf_class_log_posterior`); uncertainty
  ``-kappa``.
* ``sigma`` (Gaussian heads): ``-||x - c_k||^2 / (2 sigma^2)`` (per axis for a
  diagonal head); uncertainty ``log sigma``.
* ``softmax`` (classifier heads): the classifier's logits.

A :class:`Calibration`, fitted on a held-out split, is what a trained model
keeps: a temperature for the class probabilities ``softmax(logits / T)``, an
isotonic map from their top probability to the probability of being right
(``confidence``), and the confidence below which the model abstains, chosen
for a target accuracy or coverage on that split. It is a few numbers and two
short arrays, saved as JSON with the model (:mod:`sphereembed.inference`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import numpy as np

from sphereembed import confidence as confidence_lib

__all__ = ["Calibration", "Prediction", "SCORES", "confidence_scores", "default_score"]

#: The scores :func:`confidence_scores` can give, in the order :func:`default_score` prefers them.
SCORES = ("kappa", "sigma", "centroid", "softmax")


def confidence_scores(outputs: dict[str, Any], centroids,
                      only: str | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Per score name: ``(logits (N, K), uncertainty (N,))``, larger uncertainty = less sure.

  Memory is ``O(N K + K D)``: no ``(N, K, D)`` array, so it serves 100,000
  classes.

  Args:
    outputs: the model's outputs on a set of images (NumPy arrays):
      ``"embedding"`` and optionally ``"kappa"``, ``"log_sigma"``, ``"logits"``.
    centroids: ``(K, D)`` unit class centroids.
    only: compute this score alone (one of :data:`SCORES`); ``None``: every
      score the outputs allow.
  """
  wanted = lambda name: only is None or only == name
  embeddings = np.asarray(outputs["embedding"], np.float64)
  centroids = np.asarray(centroids, np.float64)
  scores = {}
  if wanted("centroid"):
    cosine = embeddings @ centroids.T
    scores["centroid"] = (cosine, -cosine.max(axis=1))
  if "kappa" in outputs and wanted("kappa"):
    kappa = np.asarray(outputs["kappa"], np.float64)
    logits = np.asarray(confidence_lib.vmf_class_log_posterior(embeddings, centroids, kappa))
    scores["kappa"] = (logits, -kappa)
  if "log_sigma" in outputs and wanted("sigma"):
    log_sigma = np.asarray(outputs["log_sigma"], np.float64)
    # Per-axis precisions p (an isotropic sigma broadcast over the axes):
    # sum_d p_d (x_d - c_d)^2 = sum_d p_d x_d^2 - 2 (p x) . c + p . c^2, as matmuls.
    precision = np.exp(-2 * (log_sigma if log_sigma.ndim == 2 else log_sigma[:, None]))
    precision = np.broadcast_to(precision, embeddings.shape)
    squared = (np.sum(precision * embeddings**2, axis=1, keepdims=True)
               - 2 * (precision * embeddings) @ centroids.T + precision @ (centroids**2).T)
    logits = -np.maximum(squared, 0.0) / 2
    if log_sigma.ndim == 2:
      log_sigma = log_sigma.mean(axis=1)
    scores["sigma"] = (logits, log_sigma)
  if "logits" in outputs and wanted("softmax"):
    logits = np.asarray(outputs["logits"], np.float64)
    probabilities = np.asarray(jax.nn.softmax(logits, axis=-1))
    scores["softmax"] = (logits, -probabilities.max(axis=1))
  return scores


def default_score(outputs: dict[str, Any]) -> str:
  """The score a prediction uses: the model's own confidence head if it has one, else ``centroid``."""
  if "kappa" in outputs:
    return "kappa"
  if "log_sigma" in outputs:
    return "sigma"
  return "centroid"


def _softmax(logits: np.ndarray) -> np.ndarray:
  shifted = logits - logits.max(axis=1, keepdims=True)
  exp = np.exp(shifted)
  return exp / exp.sum(axis=1, keepdims=True)


class Prediction(NamedTuple):
  """What :meth:`sphereembed.inference.TrainedModel.predict` returns.

  Attributes:
    label: ``(N,)`` int class indices (the model's ``class_names`` name them).
    confidence: ``(N,)`` calibrated probability that ``label`` is right, in [0, 1].
    abstain: ``(N,)`` bools: ``confidence`` below the model's threshold.
    probabilities: ``(N, K)`` temperature-scaled class probabilities.
  """

  label: np.ndarray
  confidence: np.ndarray
  abstain: np.ndarray
  probabilities: np.ndarray


@dataclasses.dataclass(frozen=True)
class Calibration:
  """A model's kept calibration and abstention threshold (see the module docstring).

  Attributes:
    score: which of :data:`SCORES` the class logits come from.
    temperature: ``probabilities = softmax(logits / temperature)``.
    isotonic_x, isotonic_y: the isotonic map of the top probability to the
      confidence (:class:`sphereembed.confidence.IsotonicCalibrator`); empty
      arrays: ``confidence`` is the top probability itself.
    threshold: abstain when ``confidence < threshold`` (0: never).
    target: ``"accuracy"`` or ``"coverage"``: what the threshold was chosen for.
    level: the target's value (e.g. 0.99).
    num_examples: how many held-out images it was fitted on (0: none; the
      model is then uncalibrated and never abstains).
  """

  score: str = "centroid"
  temperature: float = 1.0
  isotonic_x: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
  isotonic_y: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
  threshold: float = 0.0
  target: str = "accuracy"
  level: float = 0.99
  num_examples: int = 0

  def __post_init__(self):
    if self.score not in SCORES:
      raise ValueError(f"score must be one of {SCORES}, got {self.score!r}.")
    if not (np.isfinite(self.temperature) and self.temperature > 0):
      raise ValueError(f"temperature must be finite and > 0, got {self.temperature}.")
    if not 0 <= self.threshold <= 1:
      raise ValueError(f"threshold must lie in [0, 1], got {self.threshold}.")
    x, y = np.asarray(self.isotonic_x, np.float64), np.asarray(self.isotonic_y, np.float64)
    if x.shape != y.shape or x.ndim != 1 or np.any(np.diff(x) < 0) or np.any(np.diff(y) < 0):
      raise ValueError("the isotonic map needs two equal-length non-decreasing 1-D arrays.")
    if y.size and (y.min() < 0 or y.max() > 1 or not np.all(np.isfinite(x))):
      raise ValueError("the isotonic map's values must lie in [0, 1] at finite points.")
    _check_target(self.target, self.level)
    object.__setattr__(self, "isotonic_x", x)
    object.__setattr__(self, "isotonic_y", y)

  @classmethod
  def fit(cls, logits, labels, *, score: str = "centroid", target: str = "accuracy",
          level: float = 0.99) -> "Calibration":
    """Fits the temperature, the isotonic map and the threshold on a held-out split.

    The threshold is the smallest confidence whose kept images (confidence
    at least the threshold) reach ``level`` accuracy on this split, i.e. the
    largest coverage at that accuracy (``target="accuracy"``), or the one
    that keeps a ``level`` share of the images (``target="coverage"``). When
    no threshold reaches the accuracy, the model keeps only its most
    confident images (the highest confidence is the threshold).

    Args:
      logits: ``(N, K)`` class logits of the held-out images (of ``score``).
      labels: ``(N,)`` their int labels.
      score: the score the logits came from (recorded).
      target: ``"accuracy"`` or ``"coverage"``.
      level: the target accuracy or coverage, in (0, 1].

    Returns:
      The calibration.

    Raises:
      ValueError: mismatched, empty or non-finite inputs, or a bad target.

    Example:
      >>> import numpy as np
      >>> rng = np.random.default_rng(0)
      >>> labels = rng.integers(0, 3, 2000)
      >>> logits = 4 * np.eye(3)[labels] + rng.normal(0, 2, (2000, 3))
      >>> calibration = Calibration.fit(logits, labels, target="accuracy", level=0.95)
      >>> prediction = calibration.predict(logits)
      >>> kept = ~prediction.abstain
      >>> bool(np.mean(prediction.label[kept] == labels[kept]) >= 0.95)
      True
    """
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels)
    _check_target(target, level)
    if logits.ndim != 2 or labels.shape != logits.shape[:1] or logits.shape[0] == 0:
      raise ValueError(f"logits must be (N, K) and labels (N,) with N >= 1, got {logits.shape} "
                       f"and {labels.shape}.")
    if not np.all(np.isfinite(logits)):
      raise ValueError("logits contain NaN or infinite values.")
    temperature = confidence_lib.fit_temperature(logits, labels)
    probabilities = _softmax(logits / temperature)
    top = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    isotonic = confidence_lib.fit_isotonic(top, correct)
    uncalibrated = cls(score=score, temperature=temperature, isotonic_x=isotonic.thresholds,
                       isotonic_y=isotonic.values, target=target, level=level,
                       num_examples=len(labels))
    threshold = _choose_threshold(uncalibrated.confidence(probabilities), correct, target, level)
    return dataclasses.replace(uncalibrated, threshold=threshold)

  def probabilities(self, logits) -> np.ndarray:
    """``(N, K)`` class probabilities ``softmax(logits / temperature)``."""
    return _softmax(np.asarray(logits, np.float64) / self.temperature)

  def confidence(self, probabilities) -> np.ndarray:
    """``(N,)`` calibrated probability of being right, from the class probabilities."""
    top = np.asarray(probabilities, np.float64).max(axis=1)
    if self.isotonic_x.size == 0:
      return top
    return np.interp(top, self.isotonic_x, self.isotonic_y)

  def predict(self, logits) -> Prediction:
    """The :class:`Prediction` for ``(N, K)`` class logits of :attr:`score`."""
    probabilities = self.probabilities(logits)
    confidence = self.confidence(probabilities)
    return Prediction(probabilities.argmax(axis=1), confidence, confidence < self.threshold,
                      probabilities)

  def to_dict(self) -> dict[str, Any]:
    """A JSON-ready dict (:meth:`from_dict` reads it back exactly)."""
    out = dataclasses.asdict(self)
    out["isotonic_x"] = self.isotonic_x.tolist()
    out["isotonic_y"] = self.isotonic_y.tolist()
    return out

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> "Calibration":
    """The calibration of :meth:`to_dict` (``ValueError`` on unknown or bad fields)."""
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
      raise ValueError(f"unknown calibration fields {sorted(unknown)}.")
    return cls(**{k: np.asarray(v, np.float64) if k.startswith("isotonic") else v
                  for k, v in values.items()})


def _check_target(target: str, level: float) -> None:
  if target not in ("accuracy", "coverage"):
    raise ValueError(f"the abstention target must be 'accuracy' or 'coverage', got {target!r}.")
  if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level <= 1:
    raise ValueError(f"the abstention level must lie in (0, 1], got {level!r}.")


def _choose_threshold(confidence: np.ndarray, correct: np.ndarray, target: str,
                      level: float) -> float:
  """The abstention threshold on held-out ``confidence`` (see :meth:`Calibration.fit`)."""
  order = np.argsort(-confidence, kind="stable")
  sorted_confidence, sorted_correct = confidence[order], correct[order]
  # Candidate thresholds: each distinct confidence; keeping conf >= c keeps a prefix.
  last = np.r_[sorted_confidence[1:] != sorted_confidence[:-1], True]
  kept = np.flatnonzero(last) + 1  # prefix lengths
  accuracy = np.cumsum(sorted_correct)[kept - 1] / kept
  thresholds = sorted_confidence[kept - 1]
  if target == "coverage":
    reach = np.flatnonzero(kept >= level * len(confidence) - 1e-9)
    return float(thresholds[reach[0]])
  meets = np.flatnonzero(accuracy >= level)
  if meets.size == 0:
    return float(thresholds[0])
  return 0.0 if meets[-1] == len(kept) - 1 else float(thresholds[meets[-1]])
