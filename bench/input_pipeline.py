"""Input pipeline throughput: images/s of ``batch_indices`` + gather + ``prepare_batch``.

  python -m bench.input_pipeline [--batch=128] [--steps=300] [--size=32] [--no_augment]

Per step it does what a trainer does: seeded indices for the step, a host gather from a
CIFAR-sized uint8 array (50,000 x 32 x 32 x 3), then the jitted normalise + pad-4 crop + flip
on the device, waiting for the result. It times the host part and the whole step separately
so the two can be compared with the train step (ResNet-20 at batch 128 on this kind of CPU:
~350-1000 images/s, see docs/benchmarks.md). Prints a markdown table row.
"""

from __future__ import annotations

import argparse
import datetime
import time

import jax
import numpy as np

from cnn_jax.data import batch_indices
from cnn_jax.data import channel_stats
from cnn_jax.data import prepare_batch


def measure(batch: int, steps: int, size: int, augment: bool) -> dict:
  rng = np.random.default_rng(0)
  x_train = rng.integers(0, 256, (50_000, size, size, 3), dtype=np.uint8)
  mean, std = channel_stats(x_train[:5000])
  key = jax.random.key(0)
  n = len(x_train)

  def step_fn(step):
    idx = batch_indices(n, batch, 0, step)
    images = x_train[idx]
    return prepare_batch(images, mean, std, augment=augment, key=jax.random.fold_in(key, step))

  for step in range(5):  # compile and warm caches
    step_fn(step).block_until_ready()

  start = time.perf_counter()
  for step in range(steps):
    x_train[batch_indices(n, batch, 0, step)]
  host = time.perf_counter() - start

  start = time.perf_counter()
  for step in range(steps):
    step_fn(step).block_until_ready()
  total = time.perf_counter() - start
  return {"host_images_per_s": steps * batch / host, "images_per_s": steps * batch / total,
          "ms_per_batch": 1000 * total / steps}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--size", type=int, default=32)
  parser.add_argument("--no_augment", action="store_true")
  args = parser.parse_args()
  result = measure(args.batch, args.steps, args.size, not args.no_augment)
  date = datetime.date.today().isoformat()
  device = jax.devices()[0].platform
  print("| date | device | batch | input | augment | host indices+gather (images/s) | "
        "full step (images/s) | ms/batch | vs ResNet-20 at 350 / 1000 images/s |")
  print("|---|---|---|---|---|---|---|---|---|")
  print(f"| {date} | {device} | {args.batch} | {args.size}x{args.size}x3 | "
        f"{not args.no_augment} | {result['host_images_per_s']:,.0f} | "
        f"{result['images_per_s']:,.0f} | {result['ms_per_batch']:.2f} | "
        f"{result['images_per_s'] / 350:.0f}x / {result['images_per_s'] / 1000:.0f}x |")


if __name__ == "__main__":
  main()
