"""A tiny model, dataset and data functions for the training-engine tests.

The CNN has BatchNorm so that ``batch_stats`` flow through steps, sharding and checkpoints.
The data functions are ``cnn_jax.data``'s when that package is present (after the merge) and
minimal stand-ins of the same contract before; the stand-ins are test-only.
"""

from __future__ import annotations

import dataclasses
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np


class TinyCNN(nn.Module):
  """conv(3x3, 4) → BN → ReLU → conv(3x3, 4) → BN → ReLU → global mean → dense."""
  num_classes: int = 3
  width: int = 4

  @nn.compact
  def __call__(self, x, train: bool = False):
    for _ in range(2):
      x = nn.Conv(self.width, (3, 3), use_bias=False)(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
      x = nn.relu(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes)(x)


class OtherCNN(TinyCNN):
  """A different model (wider): resuming its checkpoint into TinyCNN must fail."""
  width: int = 6


@dataclasses.dataclass(frozen=True, eq=False)
class FakeDataset:
  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  mean: np.ndarray
  std: np.ndarray


def make_dataset(seed: int = 0, num_train: int = 64, num_test: int = 24, size: int = 8,
                 num_classes: int = 3) -> FakeDataset:
  """Class templates plus noise, uint8 ``(N, size, size, 1)``: learnable in a few steps."""
  g = np.random.default_rng(seed)
  templates = g.uniform(0, 255, (num_classes, size, size, 1))

  def split(n):
    y = g.integers(0, num_classes, n).astype(np.int32)
    x = np.clip(templates[y] * 0.7 + g.uniform(0, 76, (n, size, size, 1)), 0, 255)
    return x.astype(np.uint8), y

  x_train, y_train = split(num_train)
  x_test, y_test = split(num_test)
  mean = x_train.reshape(-1, 1).mean(0).astype(np.float32)
  std = np.maximum(x_train.reshape(-1, 1).std(0), 1).astype(np.float32)
  return FakeDataset("fake", x_train, y_train, x_test, y_test, num_classes, mean, std)


def _fallback_batch_indices(num_examples, batch_size, seed, step):
  # Epoch-wise seeded permutation, as the contract says; batches straddle epochs.
  positions = np.arange(step * batch_size, (step + 1) * batch_size)
  out = np.empty(batch_size, np.int64)
  for epoch in np.unique(positions // num_examples):
    sel = positions // num_examples == epoch
    perm = np.random.default_rng([seed, int(epoch)]).permutation(num_examples)
    out[sel] = perm[positions[sel] % num_examples]
  return out


def _fallback_prepare_batch(images_uint8, mean, std, *, augment, key=None):
  shape = (1,) * (images_uint8.ndim - 1) + (-1,)
  x = (images_uint8.astype(jnp.float32) - jnp.reshape(mean, shape)) / jnp.reshape(std, shape)
  if augment:  # flip only: enough to exercise the key
    flip = jax.random.bernoulli(key, 0.5, (x.shape[0], 1, 1, 1))
    x = jnp.where(flip, x[:, :, ::-1], x)
  return x


def data_functions():
  """``(batch_indices, prepare_batch)``: cnn_jax.data's if present, else the stand-ins."""
  try:
    from cnn_jax import data  # pylint: disable=g-import-not-at-top
    return data.batch_indices, data.prepare_batch
  except (ImportError, AttributeError):
    return _fallback_batch_indices, _fallback_prepare_batch


def tiny_config(**overrides) -> ml_collections.ConfigDict:
  """default.py with tiny sizes: batch 16, 6 steps, eval every 2, checkpoint every 2, augment."""
  from experiments.configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config.batch_size = 16
  config.num_steps = 6
  config.eval_every = 2
  config.checkpoint_every = 2
  config.log_grad_norms_every = 3
  config.learning_rate = 0.05
  config.augment = True
  config.progress = False
  for k, v in overrides.items():
    setattr(config, k, v)
  return config


def run(config, workdir, *, model=None, dataset=None, **kwargs):
  """``train_and_evaluate`` with the fakes injected."""
  from cnn_jax.train import train_and_evaluate  # pylint: disable=g-import-not-at-top
  batch_indices, prepare_batch = data_functions()
  return train_and_evaluate(config, workdir, model=model or TinyCNN(num_classes=3),
                            dataset=dataset or make_dataset(), batch_indices=batch_indices,
                            prepare_batch=prepare_batch, **kwargs)


# Fields that measure time or placement, the only ones allowed to differ between equal runs.
TIMING = {"images_per_sec", "wall_time_s", "resumed_from", "devices", "processes"}


def fresh_seed() -> int:
  """A fresh data seed for a test module, printed (CNN_JAX_SEED replays it)."""
  seed = int(os.environ.get("CNN_JAX_SEED", np.random.SeedSequence().entropy % (2 ** 31)))
  print(f"data seed: {seed} (replay with CNN_JAX_SEED={seed})")
  return seed


def reference_run(workdir: str, data_seed: int):
  """The uninterrupted tiny run on one device: ``(workdir, summary)``."""
  return workdir, run(tiny_config(), workdir, dataset=make_dataset(data_seed))


def rows(workdir: str, name: str) -> list[dict]:
  """The rows of a JSON-lines file of a run, without the TIMING fields."""
  from cnn_jax.train import metrics  # pylint: disable=g-import-not-at-top
  return [{k: v for k, v in r.items() if k not in TIMING}
          for r in metrics.read_jsonl(os.path.join(workdir, name))]


def summary(workdir: str) -> dict:
  """summary.json of a run, without the TIMING fields."""
  with open(os.path.join(workdir, "summary.json"), encoding="utf-8") as f:
    return {k: v for k, v in json.load(f).items() if k not in TIMING}


def load_state(path: str):
  """A saved TrainState item as NumPy arrays, whatever devices it was saved from."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  checkpointer = ocp.StandardCheckpointer()
  tree = checkpointer.metadata(path).item_metadata
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
  return jax.tree.map(np.asarray, checkpointer.restore(path, target))
