"""Methods: what a run trains and how it is evaluated, as plug-ins of one engine.

Every method is a :class:`Method`: its config fields (beyond the engine's,
:func:`sphereembed.training.config.engine_config`), its checks, and a
``run(run)`` that trains its phases on the engine
(:func:`sphereembed.training.engine.run_phase`) and evaluates the result.
``config.method`` names the plug-in; :func:`sphereembed.train_and_evaluate`
runs any config.

Methods:

* ``"centroid"`` (:mod:`~sphereembed.methods.centroid`): an embedding network
  with EMA class centroids, trained by the loss of ``config.loss`` (NCL,
  triplet, contrastive, NT-Xent, the siamese pair losses, softmax), with an
  optional vMF / Gaussian confidence head; evaluated by nearest centroid
  and the confidence protocol.
* ``"hib"`` (:mod:`~sphereembed.methods.hib`): Hedged Instance Embeddings
  on N-digit MNIST; verification on unseen classes, clean and corrupted.
* ``"deterministic"``, ``"laplace_posthoc"``, ``"laplace_online"``,
  ``"mc_dropout"``, ``"ensemble"``, ``"pfe"``, ``"retrieval_hib"``
  (:mod:`~sphereembed.methods.retrieval`): Bayesian metric learning and its
  baselines; retrieval with an OOD set.
"""

from __future__ import annotations

from sphereembed.methods.base import (METHODS, Method, default_config, get_method, register,
                                      resume_safe_fields, validate_config)
from sphereembed.methods import centroid  # noqa: F401  (registers its method)
from sphereembed.methods import hib  # noqa: F401
from sphereembed.methods import retrieval  # noqa: F401

__all__ = ["METHODS", "Method", "default_config", "get_method", "register", "resume_safe_fields",
           "validate_config"]
