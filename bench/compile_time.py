"""Compile time (and step time) of a ResNet train step against depth: scanned vs unrolled blocks.

  python -m bench.compile_time                                  # depths 20 56 110, all variants
  python -m bench.compile_time --depths 20 110 --blocks=scan --grad=hand --steps=3

For each depth, block form (``scan``: ``scan_blocks=True``, a stage's repeated blocks under
``nn.scan`` when it has at least ``stages.MIN_SCANNED_BLOCKS`` of them; ``unrolled``:
``scan_blocks=False``, every block traced and compiled on its own) and gradient (``autodiff``
or ``hand``), it builds the CIFAR ResNet (option A), initialises it, and times
``jax.jit(train_step).lower(...)`` (tracing to StableHLO) and ``.compile()`` (XLA) separately.
The train step is forward + backward + an SGD-with-momentum update (optax), with BatchNorm in
training mode, on a batch of ``--batch`` images of ``--image_size``² × 3, compiled with the
trainer's XLA options (``cnn_jax.train.steps.compiler_options``): what the trainer compiles.
With ``--steps=K`` it then runs the compiled step K times after one warm-up call and reports
the median step time. Nothing is cached between measurements (fresh jit each time).
Results go to stdout as a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import optax

from cnn_jax.models import resnet
from cnn_jax.train import steps as steps_lib


def build_step(depth: int, scan: bool, grad: str, batch: int, image_size: int):
  """A jitted, donating ResNet train step and the arguments of its first call."""
  model = resnet.ResNet(num_classes=10, depth=depth, scan_blocks=scan, grad=grad)
  x = jax.random.normal(jax.random.key(1), (batch, image_size, image_size, 3), jnp.float32)
  y = jax.random.randint(jax.random.key(2), (batch,), 0, 10)
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

  # The trainer's compiler options (convolutions in Eigen on CPU), so the figures are its own.
  step = jax.jit(train_step, donate_argnums=(0, 1, 2),
                 compiler_options=steps_lib.compiler_options())
  return step, (variables["params"], variables["batch_stats"], opt_state, x, y)


def measure(depth: int, scan: bool, grad: str = "autodiff", batch: int = 128,
            image_size: int = 32, steps: int = 0) -> dict:
  """Seconds to trace+lower and to compile one train step (and to run it, if ``steps``)."""
  step, args = build_step(depth, scan, grad, batch, image_size)
  # Wall time is what a user waits for; process CPU time (all threads) is what the work costs,
  # and is far less disturbed by other jobs on a shared machine.
  start, start_cpu = time.perf_counter(), time.process_time()
  lowered = step.lower(*args)
  traced = time.perf_counter()
  compiled = lowered.compile()
  done, done_cpu = time.perf_counter(), time.process_time()
  row = {"depth": depth, "scan": scan, "grad": grad, "lower_s": traced - start,
         "compile_s": done - traced, "total_s": done - start, "cpu_s": done_cpu - start_cpu,
         "step_s": None}
  if steps:
    params, batch_stats, opt_state, x, y = args
    times = []
    for _ in range(steps + 1):  # the first call is a warm-up
      t = time.perf_counter()
      params, batch_stats, opt_state, loss = compiled(params, batch_stats, opt_state, x, y)
      loss.block_until_ready()
      times.append(time.perf_counter() - t)
    row["step_s"] = statistics.median(times[1:])
  return row


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--depths", type=int, nargs="+", default=[20, 56, 110])
  parser.add_argument("--blocks", default="scan,unrolled",
                      help="comma-separated: scan, unrolled")
  parser.add_argument("--grad", default="autodiff,hand", help="comma-separated: autodiff, hand")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--image_size", type=int, default=32)
  parser.add_argument("--steps", type=int, default=0,
                      help="also time this many steps after compiling (median; 0: compile only)")
  args = parser.parse_args()
  blocks = args.blocks.split(",")
  grads = args.grad.split(",")
  if not set(blocks) <= {"scan", "unrolled"} or not set(grads) <= {"autodiff", "hand"}:
    parser.error("--blocks takes scan and/or unrolled, --grad autodiff and/or hand")
  rows = []
  for grad in grads:
    for form in blocks:
      for depth in args.depths:
        row = measure(depth, form == "scan", grad, args.batch, args.image_size, args.steps)
        rows.append(row)
        step = f", step {row['step_s']:.3f} s" if row["step_s"] is not None else ""
        print(f"{grad:8s} {form:8s} depth {depth:4d}: lower {row['lower_s']:6.2f} s, "
              f"compile {row['compile_s']:6.2f} s, total {row['total_s']:6.2f} s, "
              f"CPU {row['cpu_s']:6.2f} s{step}", flush=True)
  print(f"\njax {jax.__version__}, {jax.devices()[0].platform}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs visible, batch {args.batch}, {args.image_size}x{args.image_size}x3, "
        f"load average {os.getloadavg()[0]:.1f}")
  print("| grad | blocks | depth | trace+lower (s) | XLA compile (s) | total wall (s) | "
        "wall / shallowest | process CPU (s) | CPU / shallowest | step (s) |")
  print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
  for row in rows:
    base = next(r for r in rows if r["scan"] == row["scan"] and r["grad"] == row["grad"]
                and r["depth"] == min(args.depths))
    step = f"{row['step_s']:.3f}" if row["step_s"] is not None else "-"
    print(f"| {row['grad']} | {'scan' if row['scan'] else 'unrolled'} | {row['depth']} | "
          f"{row['lower_s']:.2f} | {row['compile_s']:.2f} | {row['total_s']:.2f} | "
          f"{row['total_s'] / base['total_s']:.2f}× | {row['cpu_s']:.2f} | "
          f"{row['cpu_s'] / base['cpu_s']:.2f}× | {step} |")


if __name__ == "__main__":
  main()
