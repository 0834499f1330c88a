"""A one-minute library demo: learn a 2-D spherical embedding with a triplet loss.

Run ``python -m sphereembed.demo``. It draws 8 Gaussian classes in 32
dimensions, trains a small Flax MLP whose outputs are L2-normalised onto the
unit circle with :func:`sphereembed.losses.triplet_semi_hard` (great-circle
distance, optax Adam), and prints the loss and the nearest-class-mean accuracy
on held-out samples. Stands in for the README's main job until the MNIST
experiment exists.
"""

from __future__ import annotations

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sphereembed import geometry, losses


class Embedder(nn.Module):
  """MLP -> unit vector in ``dim`` dimensions."""

  dim: int = 2

  @nn.compact
  def __call__(self, x):
    x = nn.gelu(nn.Dense(64)(x))
    return geometry.l2_normalize(nn.Dense(self.dim)(x))


def make_data(rng: np.random.Generator, num_classes: int, per_class: int, input_dim: int, means):
  labels = np.repeat(np.arange(num_classes), per_class)
  x = means[labels] + rng.normal(size=(len(labels), input_dim))
  return x.astype(np.float32), labels.astype(np.int32)


def nearest_mean_accuracy(train_z, train_y, test_z, test_y, num_classes):
  means = geometry.l2_normalize(jnp.stack([train_z[train_y == k].mean(0) for k in range(num_classes)]))
  distances = geometry.pairwise_distances(test_z, means, metric="great_circle")
  return float(jnp.mean(jnp.argmin(distances, axis=1) == test_y))


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)

  num_classes, input_dim = 8, 32
  rng = np.random.default_rng(args.seed)
  means = rng.normal(size=(num_classes, input_dim)) * 1.0
  train_x, train_y = make_data(rng, num_classes, 64, input_dim, means)
  test_x, test_y = make_data(rng, num_classes, 64, input_dim, means)

  model = Embedder(dim=2)
  params = model.init(jax.random.PRNGKey(args.seed), train_x[:1])
  optimizer = optax.adam(3e-3)
  opt_state = optimizer.init(params)

  def loss_fn(params, x, y):
    return losses.triplet_semi_hard(model.apply(params, x), y, margin=0.3, metric="great_circle")

  @jax.jit
  def train_step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss

  batch = 128
  history = []
  for step in range(args.steps):
    idx = rng.choice(len(train_y), batch, replace=False)
    params, opt_state, loss = train_step(params, opt_state, train_x[idx], train_y[idx])
    history.append(float(loss))
    if step % 50 == 0 or step == args.steps - 1:
      print(f"step {step:4d}  semi-hard triplet loss {float(loss):.4f}")

  accuracy = nearest_mean_accuracy(
      model.apply(params, train_x), train_y, model.apply(params, test_x), test_y, num_classes)
  first, last = np.mean(history[:20]), np.mean(history[-20:])
  print(f"loss {first:.4f} -> {last:.4f}; held-out nearest-class-mean accuracy on the circle: {accuracy:.3f}")
  return {"first_loss": float(first), "last_loss": float(last), "accuracy": accuracy}


if __name__ == "__main__":
  main()
