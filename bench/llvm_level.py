"""Compile time and speed at XLA's default LLVM level (3) against the trainer's (level 2).

  python -m bench.llvm_level                                    # the models below
  python -m bench.llvm_level --models=resnet:20:32,resnet:56:32 --repeats=5

For each model (``name:depth:image_size``; batch ``--batch``) it compiles, at each level, the
model's state init (``state.create``: initialisers and optimizer state, as the trainer jits it)
and a train step (forward, backward, SGD with momentum, BatchNorm in training mode; the
trainer's other XLA options, ``steps.compiler_options``), times each compile, then runs the
steps ``--repeats`` times each, interleaved, and reports the median step time and whether the
two levels gave the same bits (init state; the step's new parameters and loss). One process,
so the ratios are same-run figures. See docs/benchmarks-history.md, "Compiling at LLVM level 2".
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cnn_jax import models, xla_options
from cnn_jax.train import loop
from cnn_jax.train import optim
from cnn_jax.train import state as state_lib
from cnn_jax.train import steps as steps_lib
from experiments.configs import default

DEFAULT_MODELS = ("resnet:20:32,resnet:56:32,resnet:20:12,resnext:11:12,simple_cnn:2:32,"
                  "local:2:12,mlp:3:12")


def build(spec: str):
  """The model, its optimizer and its input shape for ``name:depth:image_size``."""
  name, depth, size = spec.split(":")
  config = default.get_config()
  config.update(model=name, depth=int(depth), dataset="digits", image_size=int(size))
  config = loop.resolve_config(config)
  model = models.build(config)
  return model, optim.make_optimizer(config, optim.make_schedule(config)), (int(size),
                                                                            int(size), 3)


def train_step_fn(model):
  tx = optax.sgd(0.1, momentum=0.9)

  def train_step(params, batch_stats, opt_state, x, y):
    def loss_fn(params):
      logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, x,
                                    train=True, mutable=["batch_stats"],
                                    rngs={"dropout": jax.random.key(0)})
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      return loss, updates.get("batch_stats", {})
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, loss

  return tx, train_step


def same_bits(a, b) -> bool:
  return all(np.array_equal(np.asarray(u), np.asarray(v))
             for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def measure(spec: str, batch: int, repeats: int) -> dict:
  model, tx, input_shape = build(spec)
  levels = {"xla_default": {}, "trainer": xla_options.optimization_level()}
  row = {"model": spec}
  states = {}
  for level, options in levels.items():
    start = time.perf_counter()
    states[level] = jax.block_until_ready(jax.jit(
        lambda: state_lib.create(model, tx, input_shape, 0), compiler_options=options)())
    row[f"init_{level}_s"] = time.perf_counter() - start
  row["init_same_bits"] = same_bits(states["xla_default"], states["trainer"])

  step_tx, train_step = train_step_fn(model)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((batch, *input_shape), dtype=np.float32))
  y = jnp.asarray(rng.integers(0, 10, batch).astype(np.int32))
  state = states["xla_default"]
  args = (state.params, state.batch_stats, step_tx.init(state.params), x, y)
  compiled, outputs = {}, {}
  convolutions = steps_lib.compiler_options()
  for level, options in levels.items():
    merged = {k: v for k, v in convolutions.items() if k != "xla_backend_optimization_level"}
    merged.update(options)
    start = time.perf_counter()
    compiled[level] = jax.jit(train_step, compiler_options=merged).lower(*args).compile()
    row[f"step_compile_{level}_s"] = time.perf_counter() - start
    outputs[level] = jax.block_until_ready(compiled[level](*args))  # warm-up
  row["step_same_bits"] = same_bits(outputs["xla_default"], outputs["trainer"])
  times = {level: [] for level in levels}
  for _ in range(repeats):
    for level in levels:
      start = time.perf_counter()
      jax.block_until_ready(compiled[level](*args))
      times[level].append(time.perf_counter() - start)
  for level in levels:
    row[f"step_{level}_ms"] = 1e3 * statistics.median(times[level])
  return row


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default=DEFAULT_MODELS,
                      help="comma-separated name:depth:image_size (models.MODELS names)")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=7, help="timed steps per level")
  args = parser.parse_args()
  if jax.default_backend() != "cpu":
    raise SystemExit("bench.llvm_level: the trainer sets the LLVM level on the CPU backend "
                     "only; run it with JAX_PLATFORMS=cpu.")
  print(f"jax {jax.__version__}, {os.cpu_count()} CPUs, batch {args.batch}, trainer level "
        f"{xla_options.CPU_LLVM_LEVEL} vs XLA's default; load average {os.getloadavg()[0]:.2f}")
  print("| model (name:depth:size) | init compile, default → trainer (s) | same bits | "
        "step compile, default → trainer (s) | step, default → trainer (ms) | same bits |")
  print("|---|---:|:-:|---:|---:|:-:|")
  for spec in args.models.split(","):
    r = measure(spec, args.batch, args.repeats)
    print(f"| {spec} | {r['init_xla_default_s']:.2f} → {r['init_trainer_s']:.2f} "
          f"({r['init_xla_default_s'] / r['init_trainer_s']:.1f}×) | "
          f"{'yes' if r['init_same_bits'] else 'no'} | "
          f"{r['step_compile_xla_default_s']:.2f} → {r['step_compile_trainer_s']:.2f} "
          f"({r['step_compile_xla_default_s'] / r['step_compile_trainer_s']:.2f}×) | "
          f"{r['step_xla_default_ms']:.1f} → {r['step_trainer_ms']:.1f} | "
          f"{'yes' if r['step_same_bits'] else 'no'} |", flush=True)


if __name__ == "__main__":
  main()
