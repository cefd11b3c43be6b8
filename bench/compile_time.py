"""Compile time of a ResNet train step against depth, with and without ``nn.scan``.

"scanned" is the models' default (``scan_blocks=True``: stages with at least
``stages.MIN_SCANNED_BLOCKS`` repeated blocks run under ``nn.scan``, shorter ones are unrolled);
"unrolled" is ``scan_blocks=False`` (every block traced and compiled on its own).

  python -m bench.compile_time                  # depths 20 56 110, scanned and unrolled
  python -m bench.compile_time --depths 20 110 --no-unrolled

For each depth it builds the CIFAR ResNet (option A), initialises it, and times
``jax.jit(train_step).lower(...)`` (tracing to StableHLO) and ``.compile()`` (XLA) separately.
The train step is forward + backward + an SGD-with-momentum update (optax), with BatchNorm in
training mode, on a batch of 128 images of 32×32×3: what the trainer compiles. Compile time
hardly depends on the batch size. Results go to stdout as a Markdown table for
docs/benchmarks.md. Nothing is cached between measurements (fresh jit each time).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import jax.numpy as jnp
import optax

from cnn_jax.models import resnet


def measure(depth: int, scan: bool, batch: int = 128) -> dict:
  """Seconds to trace+lower and to compile one train step of ResNet-``depth``."""
  model = resnet.ResNet(num_classes=10, depth=depth, scan_blocks=scan)
  x = jnp.zeros((batch, 32, 32, 3), jnp.float32)
  y = jnp.zeros((batch,), jnp.int32)
  variables = model.init(jax.random.key(0), x[:1], train=False)
  tx = optax.sgd(0.1, momentum=0.9)
  opt_state = tx.init(variables["params"])

  def train_step(params, batch_stats, opt_state, x, y):
    def loss_fn(params):
      logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, x,
                                    train=True, mutable=["batch_stats"])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      return loss, updates["batch_stats"]
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, loss

  step = jax.jit(train_step, donate_argnums=(0, 1, 2))
  # Wall time is what a user waits for; process CPU time (all threads) is what the work costs,
  # and is far less disturbed by other jobs on a shared machine.
  start, start_cpu = time.perf_counter(), time.process_time()
  lowered = step.lower(variables["params"], variables["batch_stats"], opt_state, x, y)
  traced = time.perf_counter()
  lowered.compile()
  done, done_cpu = time.perf_counter(), time.process_time()
  return {"depth": depth, "scan": scan, "lower_s": traced - start, "compile_s": done - traced,
          "total_s": done - start, "cpu_s": done_cpu - start_cpu}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--depths", type=int, nargs="+", default=[20, 56, 110])
  parser.add_argument("--no-unrolled", action="store_true", help="only the scanned models")
  args = parser.parse_args()
  rows = []
  for scan in (True,) if args.no_unrolled else (True, False):
    for depth in args.depths:
      row = measure(depth, scan)
      rows.append(row)
      print(f"depth {depth:4d} scan={scan!s:5}: lower {row['lower_s']:6.2f} s, "
            f"compile {row['compile_s']:6.2f} s, total {row['total_s']:6.2f} s, "
            f"CPU {row['cpu_s']:6.2f} s", flush=True)
  print(f"\njax {jax.__version__}, {jax.devices()[0].platform}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs visible")
  print("| blocks | depth | trace+lower (s) | XLA compile (s) | total wall (s) | "
        "wall / shallowest | process CPU (s) | CPU / shallowest |")
  print("|---|---:|---:|---:|---:|---:|---:|---:|")
  for row in rows:
    base = next(r for r in rows if r["scan"] == row["scan"] and r["depth"] == min(args.depths))
    print(f"| {'default (scan)' if row['scan'] else 'unrolled'} | {row['depth']} | "
          f"{row['lower_s']:.2f} | {row['compile_s']:.2f} | {row['total_s']:.2f} | "
          f"{row['total_s'] / base['total_s']:.2f}× | {row['cpu_s']:.2f} | "
          f"{row['cpu_s'] / base['cpu_s']:.2f}× |")


if __name__ == "__main__":
  main()
