"""The fuzz battery over the public API (see tests/fuzz/harness.py for the contract).

Fast subset (part of the normal test suite, deterministic, under a minute
of CPU on one core): one draw of every call of every group, each in one
dtype (float32 and float64 alternate over the calls), eager and ``jit``,
every third one also under an eager ``grad``; plus every adversarial input of the first fuzz run (the
inputs that must be refused), in float32.

Full run (many seeds, every mode)::

  SPHEREEMBED_FUZZ_FULL=1 python -m pytest -q -p no:xdist tests/fuzz

``SPHEREEMBED_FUZZ_SEEDS`` (default 25) sets the number of seeds per group and
dtype of the full run, ``SPHEREEMBED_FUZZ_SEED_START`` (default 1) the first
one (to continue an earlier run with new draws). Each seed draws about 105
calls over both dtypes, each run eagerly, under ``jit``, ``grad`` and
``jit(grad)``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from tests.fuzz import cases, harness

FULL = os.environ.get("SPHEREEMBED_FUZZ_FULL", "") not in ("", "0")
SEEDS = int(os.environ.get("SPHEREEMBED_FUZZ_SEEDS", "25"))
SEED_START = int(os.environ.get("SPHEREEMBED_FUZZ_SEED_START", "1"))
DTYPES = (np.float32, np.float64)


def _run(calls, *, jit_grad: bool, grad_every: int = 1) -> list[str]:
  failures = []
  for i, call in enumerate(calls):
    failures.extend(harness.check_call(call, grad=i % grad_every == 0, jit_grad=jit_grad))
  return failures


@pytest.mark.parametrize("group", sorted(cases.GROUPS))
def test_fast_subset(group):
  by_dtype = [cases.calls(group, seed=0, dtype=dtype) for dtype in DTYPES]
  # The same draws in both dtypes; each call is run in one of them.
  calls = [by_dtype[i % 2][i] for i in range(min(map(len, by_dtype)))]
  # Gradients (the costliest compilations) for every third call: float32 and
  # float64 alternate there too.
  failures = _run(calls, jit_grad=False, grad_every=3)
  assert not failures, "\n".join(failures)


def test_adversarial_inputs_are_refused():
  failures = _run(cases.adversarial_calls(np.float32), jit_grad=False)
  assert not failures, "\n".join(failures)


@pytest.mark.skipif(not FULL, reason="full fuzz run: set SPHEREEMBED_FUZZ_FULL=1")
def test_adversarial_inputs_are_refused_float64():
  failures = _run(cases.adversarial_calls(np.float64), jit_grad=False)
  assert not failures, "\n".join(failures)


@pytest.mark.skipif(not FULL, reason="full fuzz run: set SPHEREEMBED_FUZZ_FULL=1")
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("group", sorted(cases.GROUPS))
def test_full(group, dtype):
  failures = []
  for seed in range(SEED_START, SEED_START + SEEDS):
    failures.extend(_run(cases.calls(group, seed=seed, dtype=dtype), jit_grad=True))
  assert not failures, "\n".join(failures)
