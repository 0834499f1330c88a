"""The method protocol, the registry, and the complete config schema of a method."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import ml_collections

from sphereembed.training import config as config_lib
from sphereembed.training.engine import Run

__all__ = ["METHODS", "Method", "default_config", "get_method", "register", "resume_safe_fields",
           "validate_config"]


@dataclasses.dataclass(frozen=True)
class Method:
  """A training method: its config fields, checks, and how it trains and evaluates.

  Attributes:
    name: the ``config.method`` that selects it.
    fields: ``fields() -> ConfigDict``: the method's own fields with their
      defaults, and the engine fields whose defaults it changes.
    run: ``run(run: Run) -> dict``: trains the method's phases on the
      engine, evaluates the result, writes its figures (``config.figures``,
      process 0) and returns the metrics (the runner adds the bookkeeping
      and writes ``metrics.json``).
    validate: ``validate(config)``: the method's checks on a complete,
      type-checked config, which it may complete (derived fields); raises
      ``ValueError``.
    choices: ``{field: allowed values}``.
    positive: fields that must be > 0.
    non_negative: fields that must be >= 0.
    resume_safe: fields, beyond the engine's, that may change when a run
      resumes (paths, evaluation-only settings).
  """

  name: str
  fields: Callable[[], ml_collections.ConfigDict]
  run: Callable[[Run], dict[str, Any]]
  validate: Callable[[ml_collections.ConfigDict], None] = lambda config: None
  choices: dict = dataclasses.field(default_factory=dict)
  positive: tuple = ()
  non_negative: tuple = ()
  resume_safe: frozenset = frozenset()


#: The registered methods by name.
METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
  """Adds ``method`` to :data:`METHODS` (a name may be registered once)."""
  if method.name in METHODS:
    raise ValueError(f"a method named {method.name!r} is already registered.")
  METHODS[method.name] = method
  return method


def get_method(name: str) -> Method:
  """The registered method ``name``.

  Raises:
    ValueError: an unknown name (the message lists the known ones).
  """
  if name not in METHODS:
    raise ValueError(f"config.method must be one of {sorted(METHODS)}, got {name!r}.")
  return METHODS[name]


def default_config(method: str = "centroid") -> ml_collections.ConfigDict:
  """Every field of a run of ``method``, with its default: the engine's fields plus the method's.

  Args:
    method: a registered method name.

  Returns:
    An unlocked ``ConfigDict``; config files change a few fields.

  Example:
    >>> from sphereembed.methods import default_config
    >>> config = default_config("hib")
    >>> config.method, config.num_components
    ('hib', 1)
  """
  config = config_lib.engine_config()
  config.update(get_method(method).fields())
  config.method = method
  return config


def validate_config(config) -> ml_collections.ConfigDict:
  """Checks a config against the schema of its method; returns a complete, locked copy.

  Args:
    config: a ``ConfigDict`` (or a dict) with a subset of the fields of
      :func:`default_config` of its ``method`` (``"centroid"`` when absent).
      Missing fields take their default.

  Returns:
    The validated, locked ``ConfigDict``.

  Raises:
    ValueError: an unknown method or field (with the closest known names), a
      value of the wrong type, or an out-of-range value.
  """
  name = config.get("method", "centroid")
  method = get_method(name)
  engine = config_lib.ENGINE_CHECKS
  merged = config_lib.check_fields(
      config, lambda: default_config(name), choices={**engine["choices"], **method.choices},
      positive=engine["positive"] + method.positive,
      non_negative=engine["non_negative"] + method.non_negative)
  config_lib.validate_engine_fields(merged)
  method.validate(merged)
  merged.lock()
  return merged


def resume_safe_fields(name: str) -> frozenset:
  """The fields a resumed run of method ``name`` may change."""
  return config_lib.ENGINE_RESUME_SAFE_FIELDS | get_method(name).resume_safe
