r"""Hedged Instance Embeddings on N-digit MNIST: ``config.method = "hib"``.

Trains a :class:`~sphereembed.models.hib.HIBEmbedding` (point, MoG-1, MoG-2,
...) with the VIB match loss of Oh et al., "Modeling Uncertainty with Hedged
Instance Embedding" (ICLR 2019), on N-digit MNIST (:mod:`sphereembed.data.ndigit`),
then evaluates it with the verification protocol of
:mod:`sphereembed.evaluation.protocols.verification` (unseen classes, clean
and corrupted; kNN; uncertainty correlations) and draws its figures.

Training. Class-balanced P x K batches (:class:`~sphereembed.data.ClassBalancedSampler`,
``classes_per_batch`` x ``samples_per_class`` images of the seen classes; a
``train_corruption`` share of the training images occluded as the corrupted
test images are, :func:`~sphereembed.data.ndigit.corrupt_train`) ->
pairs of the batch (:func:`~sphereembed.data.pairs.sample_pairs` with a
``positive_fraction`` share of positives, or :func:`~sphereembed.data.pairs.all_pairs`)
-> :func:`~sphereembed.losses.vib_match_loss` with ``num_samples`` (K)
reparameterised samples per embedding and weight ``beta`` on the KL terms,
``a`` and ``b`` learned with the network -> the engine's optimiser (AdamW
with warm-up and cosine decay by default). One jitted, pure :func:`train_step`
of the explicit train state, run by the engine's phase ``"train"`` (mesh,
checkpoints, writers).

Deviations from the paper: far fewer training steps (a CPU budget of a few
minutes instead of the paper's long GPU runs), strided convolutions by
default (see :mod:`sphereembed.models.hib`), AdamW with a cosine schedule, a
smooth lower bound on log-sigma, kNN by the embedding means (the paper does
not say how it ranks stochastic embeddings for kNN), and the occlusion recipe
of :mod:`sphereembed.data.ndigit`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from sphereembed import losses
from sphereembed import plotting
from sphereembed.data import ndigit
from sphereembed.data import pairs as pairs_lib
from sphereembed.evaluation.protocols import verification
from sphereembed.methods.base import Method, register
from sphereembed.models.hib import HIBEmbedding
from sphereembed.training import builders
from sphereembed.training import engine
from sphereembed.training import metric_writers
from sphereembed.training import sharding
from sphereembed.training.state import TrainState, init_train_state

__all__ = ["HIBLossSpec", "create_hib_state", "embed_images", "loss_spec", "make_model",
           "train_step"]

_ESTIMATORS = ("log_mean", "mean_log")


def _fields() -> ml_collections.ConfigDict:
  """The HIB fields, and the engine defaults HIB changes.

  The defaults are the ``N = 2``, ``D = 2``, MoG-1 run with a training budget
  of about 4 minutes on a 2-core CPU (see ``configs/hib_*.py``).
  """
  config = ml_collections.ConfigDict()

  # Data: N-digit MNIST generated from MNIST (data_dir as in load_dataset).
  config.num_digits = 2
  config.cache_dir = ""  # "" -> generated on the fly (a few seconds); else an .npz cache here.
  config.data_seed = 0  # the class split and the images: the same for every training seed
  config.num_train = 100_000
  config.num_test = 10_000
  # 100: a test set whose classes would get fewer images keeps num_test // 100 random classes
  # (the reference generator's min_num_instance_per_number; N = 3: 100 of the 300 unseen
  # numbers, as in its standard N = 3 test sets). 0: every class (see sphereembed.data.ndigit).
  config.min_test_images_per_class = 0
  # The share of training images occluded as the corrupted test images are
  # (sphereembed.data.ndigit.corrupt_train; fixed per image): 0 trains on clean images only.
  config.train_corruption = 0.0
  # (min, max) height and width in pixels of the occluding boxes, of the 28 x 28 digit (both
  # the corrupted test sets and train_corruption); smaller is a milder corruption.
  config.occlusion_size = (10, 20)

  # Model: C = num_components (0 = point embedding), D = embedding_dim.
  config.num_components = 1
  config.embedding_dim = 2
  config.features = (32, 64)
  config.kernel_size = 5
  config.downsample = "stride"  # or "pool" (the paper's max pooling; slower on CPU)
  config.hidden = 256
  config.log_sigma_min = -7.0
  config.log_sigma_init = -1.0
  config.match_a_init = 1.0
  config.match_b_init = 0.0

  # Loss: the VIB match loss on pairs of P x K class-balanced batches.
  config.classes_per_batch = 16
  config.samples_per_class = 8
  config.pairs = "sampled"  # or "all" (every pair of the batch)
  config.num_pairs = 512  # for "sampled"
  config.positive_fraction = 0.5  # for "sampled"
  config.num_samples = 8  # K samples per stochastic embedding (the paper: 8)
  config.beta = 1e-4  # KL weight (the paper: 1e-4)
  config.estimator = "log_mean"  # or "mean_log" (see sphereembed.losses.vib_match_loss)

  # Optimisation (engine fields, HIB's defaults).
  config.num_train_steps = 1800
  config.learning_rate = 2e-3
  config.warmup_steps = 100
  config.weight_decay = 0.0

  # Evaluation (sphereembed.evaluation.protocols.verification).
  config.eval_sets = ("unseen", "seen")
  config.eval_num_samples = 8
  config.pairs_per_image = 10
  config.knn_k = 5
  config.uncertainty_bins = 10
  config.eval_seed = 0
  config.eval_batch_size = 500
  # Also evaluate every this many steps (the learning curve of every metric in metrics.jsonl);
  # 0: only after the last step.
  config.eval_every_steps = 0
  return config


_CHOICES = {
    "downsample": ("stride", "pool"),
    "pairs": ("sampled", "all"),
    "estimator": _ESTIMATORS,
}
_POSITIVE = ("num_digits", "num_train", "num_test", "embedding_dim", "kernel_size",
             "classes_per_batch", "samples_per_class", "num_pairs", "num_samples",
             "num_train_steps", "learning_rate", "eval_num_samples", "pairs_per_image", "knn_k",
             "uncertainty_bins", "match_a_init")
_NON_NEGATIVE = ("data_seed", "num_components", "hidden", "beta", "eval_seed",
                 "min_test_images_per_class", "eval_every_steps")


def _validate(merged) -> None:
  if not 1 <= merged.num_digits <= 6:
    raise ValueError(f"config.num_digits must lie in [1, 6], got {merged.num_digits}.")
  if not 0 <= merged.train_corruption <= 1:
    raise ValueError(f"config.train_corruption must lie in [0, 1], got "
                     f"{merged.train_corruption}.")
  size = tuple(merged.occlusion_size)
  if len(size) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in size) or not (
      1 <= size[0] <= size[1] <= 28):
    raise ValueError(f"config.occlusion_size must be (min, max) pixels with 1 <= min <= max <= "
                     f"28, got {merged.occlusion_size}.")
  if not 0 <= merged.positive_fraction <= 1:
    raise ValueError(f"config.positive_fraction must lie in [0, 1], got "
                     f"{merged.positive_fraction}.")
  if not merged.eval_sets or any(s not in verification.EVAL_SETS for s in merged.eval_sets) or len(
      set(merged.eval_sets)) != len(merged.eval_sets):
    raise ValueError(f"config.eval_sets must be distinct names from {verification.EVAL_SETS}, got "
                     f"{merged.eval_sets}.")
  if merged.pairs_per_image % 2:
    raise ValueError(f"config.pairs_per_image must be even (half positive, half negative), got "
                     f"{merged.pairs_per_image}.")
  if not merged.log_sigma_init > merged.log_sigma_min:
    raise ValueError(f"config.log_sigma_init ({merged.log_sigma_init}) must exceed "
                     f"config.log_sigma_min ({merged.log_sigma_min}).")
  batch = merged.classes_per_batch * merged.samples_per_class
  if merged.pairs == "sampled" and merged.num_pairs > batch * (batch - 1) // 2:
    raise ValueError(f"config.num_pairs = {merged.num_pairs} exceeds the "
                     f"{batch * (batch - 1) // 2} pairs of a batch of {batch}.")
  if merged.samples_per_class < 2:
    raise ValueError("config.samples_per_class must be >= 2: a batch needs positive pairs.")


# ----------------------------------------------------------------------------
# Train state and step.


def loss_spec(config) -> HIBLossSpec:
  """The :class:`HIBLossSpec` of a validated HIB config."""
  return HIBLossSpec(num_samples=config.num_samples, beta=config.beta, pairs=config.pairs,
                     num_pairs=config.num_pairs, positive_fraction=config.positive_fraction,
                     estimator=config.estimator)


def make_model(config) -> HIBEmbedding:
  """The config's :class:`~sphereembed.models.hib.HIBEmbedding`."""
  return HIBEmbedding(
      config.embedding_dim, config.num_components, features=tuple(config.features),
      kernel_size=config.kernel_size, downsample=config.downsample, hidden=config.hidden,
      log_sigma_min=config.log_sigma_min, log_sigma_init=config.log_sigma_init,
      match_a_init=config.match_a_init, match_b_init=config.match_b_init)


def create_hib_state(model: HIBEmbedding, tx: optax.GradientTransformation, key: jax.Array,
                     sample_input: jax.Array) -> TrainState:
  """Initialises the parameters (``a`` and ``b`` among them) and the optimiser state from one key.

  Args:
    model: the embedding network.
    tx: the optax optimiser.
    key: a raw PRNG key (``jax.random.PRNGKey``).
    sample_input: a batch with the input's shape and dtype (values unused).

  Returns:
    A :class:`~sphereembed.training.state.TrainState` at step 0 (no extras).
  """
  params_key, state_key = jax.random.split(key)
  variables = model.init({"params": params_key}, sample_input, train=False)
  if set(variables) != {"params"}:
    raise ValueError(f"the HIB train state carries params only, the model has {sorted(variables)}.")
  return init_train_state(model.apply, variables["params"], tx, state_key)


@dataclasses.dataclass(frozen=True)
class HIBLossSpec:
  """What :func:`train_step` minimises (static: hashed into the compiled step).

  Attributes:
    num_samples: K samples per stochastic embedding.
    beta: the KL weight.
    pairs: ``"sampled"`` or ``"all"``.
    num_pairs: pairs per batch for ``"sampled"``.
    positive_fraction: the share of positive pairs for ``"sampled"``.
    estimator: the data term of :func:`~sphereembed.losses.vib_match_loss`.
  """

  num_samples: int = 8
  beta: float = 1e-4
  pairs: str = "sampled"
  num_pairs: int = 512
  positive_fraction: float = 0.5
  estimator: str = "log_mean"

  def __post_init__(self):
    if self.pairs not in ("sampled", "all"):
      raise ValueError(f"pairs must be 'sampled' or 'all', got {self.pairs!r}.")
    if self.num_samples < 1 or self.num_pairs < 1 or self.beta < 0:
      raise ValueError("num_samples and num_pairs must be >= 1 and beta >= 0.")
    if not 0 <= self.positive_fraction <= 1:
      raise ValueError(f"positive_fraction must lie in [0, 1], got {self.positive_fraction}.")


@functools.partial(jax.jit, static_argnames="spec", donate_argnums=0)
def train_step(state: TrainState, batch: dict[str, jax.Array], spec: HIBLossSpec):
  """One step of the VIB match loss on pairs of the batch.

  Args:
    state: the :class:`~sphereembed.training.state.TrainState`; donated (its buffers are reused).
    batch: ``{"image": (B, H, W, 1), "label": (B,) int}``.
    spec: the static :class:`HIBLossSpec`.

  Returns:
    ``(new_state, metrics)``; metrics a dict of scalars: ``loss``, ``bce``
    (the data term), ``kl`` (mean KL per pair, before ``beta``), ``a``,
    ``b``, ``sigma_mean``, ``match_positive`` / ``match_negative`` (mean match
    probability of the positive / negative pairs), ``grad_norm``.
  """
  rng, pair_key, sample_key = jax.random.split(state.rng, 3)
  labels = batch["label"]
  if spec.pairs == "all":
    pairs = pairs_lib.all_pairs(labels)
  else:
    pairs = pairs_lib.sample_pairs(pair_key, labels, spec.num_pairs,
                                   positive_fraction=spec.positive_fraction)

  def loss_fn(params):
    outputs = state.apply_fn({"params": params}, batch["image"], train=True)
    means, log_sigmas = outputs["means"], outputs.get("log_sigmas")
    side = lambda x, rows: None if x is None else x[rows]
    loss, stats = losses.vib_match_loss(
        means[pairs.first], side(log_sigmas, pairs.first),
        means[pairs.second], side(log_sigmas, pairs.second), pairs.is_same,
        outputs["match_a"], outputs["match_b"],
        key=sample_key if log_sigmas is not None else None, num_samples=spec.num_samples,
        beta=spec.beta, estimator=spec.estimator, return_stats=True)
    return loss, (stats, outputs)

  (loss, (stats, outputs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  new_state = state.apply_gradients(grads=grads).replace(rng=rng)
  same = pairs.is_same.astype(stats["match_probability"].dtype)
  probability = stats["match_probability"]
  metrics = {
      "loss": loss, "bce": stats["bce"], "kl": stats["kl"],
      "a": outputs["match_a"], "b": outputs["match_b"],
      "match_positive": jnp.sum(same * probability) / jnp.maximum(jnp.sum(same), 1),
      "match_negative": jnp.sum((1 - same) * probability) / jnp.maximum(jnp.sum(1 - same), 1),
      "grad_norm": optax.tree.norm(grads),
  }
  if "log_sigmas" in outputs:
    metrics["sigma_mean"] = jnp.mean(jnp.exp(outputs["log_sigmas"]))
  return new_state, metrics


# ----------------------------------------------------------------------------
# Embedding.


# The engine's eval-mode pass: ``"means"`` (N, C', D), ``"log_sigmas"`` (N, C, D; stochastic
# models only), the scalars ``"match_a"`` and ``"match_b"``.
embed_images = engine.embed


def _model_name(num_components: int) -> str:
  return "point" if num_components == 0 else f"MoG-{num_components}"


def _run(run: engine.Run) -> dict[str, Any]:
  config, mesh = run.config, run.mesh
  data = ndigit.load_ndigit_mnist(
      config.num_digits, seed=config.data_seed, num_train=config.num_train,
      num_test=config.num_test, occlusion_size=tuple(config.occlusion_size),
      min_test_images_per_class=config.min_test_images_per_class,
      data_dir=config.data_dir or None, cache_dir=config.cache_dir or None)
  low, high = config.occlusion_size
  train = ndigit.corrupt_train(data, config.train_corruption, min_size=low, max_size=high)
  sampler = builders.make_sampler(config, train.labels)
  batch_size, batch_source = builders.global_batch_size(config, sampler, len(train))
  state = create_hib_state(make_model(config),
                           builders.make_optimizer(config, config.num_train_steps),
                           jax.random.PRNGKey(config.seed), train.images[:1])

  def batches(start, rows):
    for indices in sampler.iterate(start_step=start):
      local = indices[rows]
      yield {"image": train.images[local], "label": train.labels[local]}

  def embedder(state):
    return lambda images: embed_images(state, images, config.eval_batch_size, mesh)

  def evaluate(state):
    result, _ = verification.evaluate(embedder(state), data, config)
    return {k: float(v) for k, v in result.items() if not isinstance(v, str)}  # not headline_set

  state = engine.run_phase(run, "train", state,
                           functools.partial(train_step, spec=loss_spec(config)),
                           num_steps=config.num_train_steps, batches=batches,
                           batch_size=batch_size, batch_size_source=batch_source,
                           evaluate=evaluate, evaluate_every=config.eval_every_steps)
  result, arrays = verification.evaluate(embedder(state), data, config)
  params = sharding.to_host(state.params)
  name = _model_name(config.num_components)
  result.update(
      model=name, num_components=config.num_components, num_digits=config.num_digits,
      embedding_dim=config.embedding_dim,
      match_a=float(jax.nn.softplus(params["match_a_raw"])),
      match_b=float(params["match_b"]), num_train_steps=config.num_train_steps,
      data_source=data.source)
  if config.figures and run.primary:
    headline = config.eval_sets[0]
    title = (f"HIB {name}, N={config.num_digits}, D={config.embedding_dim}, {headline} classes: "
             f"AP clean {result['verification_ap_clean']:.3f} / corrupted "
             f"{result['verification_ap_corrupted']:.3f}, kNN clean "
             f"{result['knn_accuracy_clean']:.3f} / corrupted "
             f"{result['knn_accuracy_corrupted']:.3f}")
    verification.write_figures(run.workdir, data, arrays, config, title, name)
    plotting.plot_training_curves(
        metric_writers.read_jsonl(run.path("metrics.jsonl")), run.path("training_curves.png"),
        keys=("train_loss", "train_bce", "train_kl", "train_a", "train_b", "train_sigma_mean"))
  return result


register(Method(
    name="hib", fields=_fields, run=_run, validate=_validate, choices=_CHOICES,
    positive=_POSITIVE, non_negative=_NON_NEGATIVE,
    resume_safe=frozenset({"cache_dir", "eval_every_steps"})))
