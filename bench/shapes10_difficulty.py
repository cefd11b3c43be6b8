"""How hard is shapes10? Test accuracy of a linear model, an MLP and a small CNN.

  python -m bench.shapes10_difficulty [--cnn_steps=400] [--skip_sklearn] [--skip_cnn]

The linear model and MLP are scikit-learn on standardised pixels; the CNN is a short pure
Flax model (3 conv layers + max pools + global average pool), trained with Adam through this
project's own batching (``batch_indices`` + ``prepare_batch``), no augmentation. Prints one
line per model; the figures in docs/datasets.md came from this script.
"""

from __future__ import annotations

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from cnn_jax.data import batch_indices
from cnn_jax.data import make_dataset
from cnn_jax.data import offline
from cnn_jax.data import prepare_batch


class SmallCNN(nn.Module):
  """conv32-pool-conv64-pool-conv128-global-avg-dense, ReLU; ~94k parameters."""

  @nn.compact
  def __call__(self, x):
    for features in (32, 64):
      x = nn.relu(nn.Conv(features, (3, 3))(x))
      x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.relu(nn.Conv(128, (3, 3))(x))
    x = x.mean(axis=(1, 2))
    return nn.Dense(10)(x)


def sklearn_models(data) -> None:
  from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top
  from sklearn.neural_network import MLPClassifier  # pylint: disable=g-import-not-at-top
  x_train = ((data.x_train - data.mean) / data.std).reshape(len(data.x_train), -1)
  x_test = ((data.x_test - data.mean) / data.std).reshape(len(data.x_test), -1)
  for label, model in (
      ("linear (logistic regression, C=0.01)", LogisticRegression(C=0.01, max_iter=300)),
      ("MLP (1 hidden layer of 256, Adam, early stopping)",
       MLPClassifier((256,), alpha=1e-3, early_stopping=True, max_iter=200, random_state=0)),
  ):
    start = time.time()
    model.fit(x_train, data.y_train)
    print(f"{label}: train {model.score(x_train, data.y_train):.3f}, "
          f"test {model.score(x_test, data.y_test):.3f} ({time.time() - start:.0f} s)",
          flush=True)


def small_cnn(data, steps: int, batch_size: int = 128) -> None:
  model = SmallCNN()
  params = model.init(jax.random.key(0), jnp.zeros((1,) + data.input_shape))
  tx = optax.adam(1e-3)
  opt_state = tx.init(params)

  @jax.jit
  def train_step(params, opt_state, images, labels):
    x = prepare_batch(images, data.mean, data.std, augment=False)

    def loss_fn(p):
      logits = model.apply(p, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss

  @jax.jit
  def predict(params, images):
    return model.apply(params, prepare_batch(images, data.mean, data.std, augment=False)).argmax(-1)

  def accuracy(x, y):
    hits = sum(int((predict(params, x[i:i + 500]) == y[i:i + 500]).sum())
               for i in range(0, len(x), 500))
    return hits / len(x)

  start = time.time()
  n = len(data.x_train)
  for step in range(steps):
    idx = batch_indices(n, batch_size, 0, step)
    params, opt_state, loss = train_step(params, opt_state, data.x_train[idx], data.y_train[idx])
    if (step + 1) % 100 == 0:
      print(f"  step {step + 1}: loss {float(loss):.3f} ({time.time() - start:.0f} s)", flush=True)
  print(f"small CNN (3 conv, {steps} Adam steps of {batch_size} = "
        f"{steps * batch_size / n:.0f} epochs): train {accuracy(data.x_train, data.y_train):.3f}, "
        f"test {accuracy(data.x_test, data.y_test):.3f}, final loss {float(loss):.3f} "
        f"({time.time() - start:.0f} s)", flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cnn_steps", type=int, default=400)
  parser.add_argument("--skip_sklearn", action="store_true")
  parser.add_argument("--skip_cnn", action="store_true")
  args = parser.parse_args()
  start = time.time()
  data = make_dataset("shapes10", *offline.shapes10(32, 0), 10)
  print(f"shapes10 32x32x3: {len(data.x_train)} train / {len(data.x_test)} test, generated in "
        f"{time.time() - start:.1f} s; chance 0.100", flush=True)
  if not args.skip_sklearn:
    sklearn_models(data)
  if not args.skip_cnn:
    small_cnn(data, args.cnn_steps)


if __name__ == "__main__":
  main()
