#!/usr/bin/env python3
"""Cross-check of the proxy, angular-margin and pair-weighting losses against PML.

Compares, in float64 on random data, the value and the gradients (with
respect to the embeddings and, for the proxy losses, the proxies) of each new
sphereembed loss with its pytorch-metric-learning (PML) counterpart, and the
cross-batch memory (:mod:`sphereembed.memory`) with PML's
``CrossBatchMemory`` over several steps (the ring buffer wraps around).
Prints the max abs differences; exits with status 1 if one exceeds
``--tolerance``.

Needs torch (CPU) and pytorch-metric-learning next to sphereembed: the
``bench`` extra, from the repository root::

  python3 -m venv .venv-bench && . .venv-bench/bin/activate && pip install -e ".[bench]"
  python benchmarks/pml_check_new_losses.py

Margins: sphereembed takes ArcFace margins in radians, PML in degrees; the
script passes the same angle to both.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from pytorch_metric_learning import losses as pml_losses  # noqa: E402
from pytorch_metric_learning import miners as pml_miners  # noqa: E402

from sphereembed import losses, memory  # noqa: E402

torch.set_default_dtype(torch.float64)


def make_data(seed, batch_size, dim, num_classes, present_classes, opposite=0, on_proxy=0,
              num_proxy_rows=None):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, present_classes, batch_size)
  x = rng.normal(size=(batch_size, dim)) * rng.uniform(0.5, 2.0, (batch_size, 1))
  rows = num_proxy_rows or num_classes
  proxies = rng.normal(size=(rows, dim)) * rng.uniform(0.5, 2.0, (rows, 1))
  sub = rows // num_classes
  for i in range(opposite):  # theta near pi: ArcFace's continuation branch
    x[i] = -proxies[labels[i] * sub] + 0.05 * rng.normal(size=dim)
  for i in range(opposite, opposite + on_proxy):  # a sample near its proxy
    x[i] = 1.7 * proxies[labels[i] * sub] + 0.01 * rng.normal(size=dim)
  return x, labels, proxies


def ours_value_and_grads(fn, x, labels, proxies=None, **kwargs):
  if proxies is None:
    value, gx = jax.value_and_grad(lambda e: fn(e, jnp.asarray(labels), **kwargs))(jnp.asarray(x))
    return float(value), [np.asarray(gx)]
  value, (gx, gp) = jax.value_and_grad(
      lambda e, p: fn(e, jnp.asarray(labels), p, **kwargs), argnums=(0, 1))(
          jnp.asarray(x), jnp.asarray(proxies))
  return float(value), [np.asarray(gx), np.asarray(gp)]


def pml_value_and_grads(loss_module, x, labels, proxy_attr=None, proxies=None, miner=None,
                        transpose=False):
  emb = torch.tensor(x, requires_grad=True)
  lab = torch.tensor(labels)
  params = [emb]
  if proxy_attr is not None:
    data = torch.tensor(proxies.T.copy() if transpose else proxies)
    getattr(loss_module, proxy_attr).data = data
    params.append(getattr(loss_module, proxy_attr))
  indices = miner(emb, lab) if miner is not None else None
  value = loss_module(emb, lab, indices)
  grads = torch.autograd.grad(value, params, allow_unused=True)
  grads = [np.zeros(p.shape) if g is None else g.numpy() for g, p in zip(grads, params)]
  if transpose:
    grads[1] = grads[1].T
  return float(value.detach()), grads


def compare(name, ours, pml, rows):
  value_diff = abs(ours[0] - pml[0])
  grad_diffs = [float(np.max(np.abs(a - b))) if a.size else 0.0 for a, b in zip(ours[1], pml[1])]
  scale = max([abs(pml[0])] + [float(np.max(np.abs(g))) if g.size else 0.0 for g in pml[1]])
  rows.append((name, ours[0], pml[0], value_diff, grad_diffs, scale))


def check_proxy_losses(rows, seed):
  num_classes, dim, batch = 6, 8, 40
  x, labels, proxies = make_data(seed, batch, dim, num_classes, 5, opposite=3, on_proxy=2)
  for margin_rad, scale in ((0.5, 64.0), (0.3, 16.0)):
    ours = ours_value_and_grads(losses.arcface, x, labels, proxies, margin=margin_rad, scale=scale)
    pml = pml_value_and_grads(
        pml_losses.ArcFaceLoss(num_classes, dim, margin=math.degrees(margin_rad), scale=scale),
        x, labels, "W", proxies, transpose=True)
    compare(f"arcface m={margin_rad} s={scale}", ours, pml, rows)
  for margin, scale in ((0.35, 64.0), (0.2, 10.0)):
    ours = ours_value_and_grads(losses.cosface, x, labels, proxies, margin=margin, scale=scale)
    pml = pml_value_and_grads(pml_losses.CosFaceLoss(num_classes, dim, margin=margin, scale=scale),
                              x, labels, "W", proxies, transpose=True)
    compare(f"cosface m={margin} s={scale}", ours, pml, rows)
  subs = 3
  xs, ls, ps = make_data(seed + 1, batch, dim, num_classes, 5, opposite=2, on_proxy=2,
                         num_proxy_rows=num_classes * subs)
  ours = ours_value_and_grads(losses.subcenter_arcface, xs, ls, ps, num_subcenters=subs,
                              margin=0.5, scale=64.0)
  pml = pml_value_and_grads(
      pml_losses.SubCenterArcFaceLoss(num_classes=num_classes, embedding_size=dim,
                                      margin=math.degrees(0.5), scale=64.0, sub_centers=subs),
      xs, ls, "W", ps, transpose=True)
  compare("subcenter_arcface S=3", ours, pml, rows)
  for temperature in (0.05, 0.5):
    ours = ours_value_and_grads(losses.normalized_softmax, x, labels, proxies,
                                temperature=temperature)
    pml = pml_value_and_grads(
        pml_losses.NormalizedSoftmaxLoss(num_classes, dim, temperature=temperature),
        x, labels, "W", proxies, transpose=True)
    compare(f"normalized_softmax T={temperature}", ours, pml, rows)
  for margin, alpha in ((0.1, 32.0), (0.3, 4.0)):
    ours = ours_value_and_grads(losses.proxy_anchor, x, labels, proxies, margin=margin,
                                alpha=alpha)
    pml = pml_value_and_grads(
        pml_losses.ProxyAnchorLoss(num_classes, dim, margin=margin, alpha=alpha),
        x, labels, "proxies", proxies)
    compare(f"proxy_anchor m={margin} a={alpha} (class 5 absent)", ours, pml, rows)
  for softmax_scale in (1.0, 8.0):
    ours = ours_value_and_grads(losses.proxy_nca, x, labels, proxies, softmax_scale=softmax_scale)
    pml = pml_value_and_grads(
        pml_losses.ProxyNCALoss(num_classes, dim, softmax_scale=softmax_scale),
        x, labels, "proxies", proxies)
    compare(f"proxy_nca scale={softmax_scale}", ours, pml, rows)


def check_pair_losses(rows, seed):
  dim, batch = 6, 48
  x, labels, _ = make_data(seed + 2, batch, dim, 8, 8)
  labels[-1] = 99  # a singleton: an anchor without positives
  ours = ours_value_and_grads(losses.multi_similarity, x, labels)
  pml = pml_value_and_grads(pml_losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5), x, labels)
  compare("multi_similarity (defaults)", ours, pml, rows)
  ours = ours_value_and_grads(losses.multi_similarity, x, labels, alpha=5.0, beta=20.0, base=0.2)
  pml = pml_value_and_grads(pml_losses.MultiSimilarityLoss(alpha=5, beta=20, base=0.2), x, labels)
  compare("multi_similarity a=5 b=20 base=0.2", ours, pml, rows)
  for epsilon in (0.1, 0.3):
    ours = ours_value_and_grads(losses.multi_similarity, x, labels, mine=True, epsilon=epsilon)
    pml = pml_value_and_grads(pml_losses.MultiSimilarityLoss(), x, labels,
                              miner=pml_miners.MultiSimilarityMiner(epsilon=epsilon))
    compare(f"multi_similarity mine eps={epsilon}", ours, pml, rows)
  for m, gamma in ((0.4, 80.0), (0.25, 16.0)):
    ours = ours_value_and_grads(losses.circle, x, labels, margin=m, gamma=gamma)
    pml = pml_value_and_grads(pml_losses.CircleLoss(m=m, gamma=gamma), x, labels)
    compare(f"circle m={m} gamma={gamma}", ours, pml, rows)
  for pos_margin, neg_margin in ((0.0, 1.0), (0.2, 1.2)):
    ours = ours_value_and_grads(losses.lifted_structure, x, labels, pos_margin=pos_margin,
                                neg_margin=neg_margin)
    pml = pml_value_and_grads(
        pml_losses.GeneralizedLiftedStructureLoss(neg_margin=neg_margin, pos_margin=pos_margin),
        x, labels)
    compare(f"lifted_structure pos={pos_margin} neg={neg_margin}", ours, pml, rows)


def check_memory(rows, seed):
  dim, batch, size, steps = 5, 12, 30, 5  # 60 entries through 30 slots: wraps twice
  rng = np.random.default_rng(seed + 3)
  cases = [
      ("xbm multi_similarity", losses.multi_similarity, {}, pml_losses.MultiSimilarityLoss()),
      ("xbm circle", losses.circle, {}, pml_losses.CircleLoss()),
      ("xbm lifted_structure", losses.lifted_structure, {},
       pml_losses.GeneralizedLiftedStructureLoss()),
  ]
  for name, fn, kwargs, pml_loss in cases:
    pml_xbm = pml_losses.CrossBatchMemory(pml_loss, dim, memory_size=size)
    state = memory.memory_init(size, dim, jnp.float64)
    worst_value, worst_grad, value_scale = 0.0, 0.0, 0.0
    for _ in range(steps):
      x = rng.normal(size=(batch, dim))
      labels = rng.integers(0, 4, batch)
      value, grad = jax.value_and_grad(
          lambda e: memory.memory_loss(fn, e, jnp.asarray(labels), state, **kwargs))(
              jnp.asarray(x))
      state = memory.memory_update(state, jnp.asarray(x), jnp.asarray(labels))
      emb = torch.tensor(x, requires_grad=True)
      pml_value = pml_xbm(emb, torch.tensor(labels))
      (pml_grad,) = torch.autograd.grad(pml_value, [emb])
      worst_value = max(worst_value, abs(float(value) - pml_value.item()))
      worst_grad = max(worst_grad, float(np.max(np.abs(np.asarray(grad) - pml_grad.numpy()))))
      value_scale = max(value_scale, abs(pml_value.item()))
    np.testing.assert_allclose(np.asarray(state.embeddings), pml_xbm.embedding_memory.numpy())
    np.testing.assert_array_equal(np.asarray(state.labels), pml_xbm.label_memory.numpy())
    rows.append((f"{name} ({steps} steps, M={size}, B={batch})", float(value), pml_value.item(),
                 worst_value, [worst_grad], value_scale))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--tolerance", type=float, default=1e-9,
                      help="max abs difference allowed (float64)")
  args = parser.parse_args(argv)
  rows = []
  check_proxy_losses(rows, args.seed)
  check_pair_losses(rows, args.seed)
  check_memory(rows, args.seed)
  print(f"torch {torch.__version__}, pytorch-metric-learning "
        f"{__import__('pytorch_metric_learning').__version__}, jax {jax.__version__}, float64")
  print(f"{'loss':52s} {'ours':>14s} {'PML':>14s} {'|dvalue|':>9s} {'max|dgrad| (emb, proxies)':>26s}")
  worst = 0.0
  for name, ours, pml, dv, dgs, _ in rows:
    grads = ", ".join(f"{g:.1e}" for g in dgs)
    print(f"{name:52s} {ours:14.8f} {pml:14.8f} {dv:9.1e} {grads:>26s}")
    worst = max([worst, dv] + dgs)
  print(f"worst abs difference: {worst:.2e} (tolerance {args.tolerance:.0e})")
  return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
  sys.exit(main())
