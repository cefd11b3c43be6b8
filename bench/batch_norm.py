"""BatchNorm on XLA's CPU backend: channel sums as reductions vs as matmuls, alone and in a step.

  python -m bench.batch_norm [--batch=128] [--repeats=7] [--step_depth=20 --step_rounds=6]
      [--json]

Three tables, every comparison timed in alternating rounds in one process (the trainer's XLA
options, ``cnn_jax.train.steps.compiler_options``), on the three activation shapes of a CIFAR
ResNet at batch ``--batch`` (32×32×16, 16×16×32, 8×8×64), float32:

1. one channel sum, ``jnp.sum(x, (0, 1, 2))`` against ``ops.hand.normalization.channel_sum``
   (``ones @ x`` viewed as 256-wide rows, "folded"), and the same matmul on C-wide rows;
2. one BatchNorm, forward and backward (``jax.grad`` of ``<w, relu(bn(x))>`` for x, scale and
   bias): ``ops.batch_norm`` under autodiff against ``ops.hand.batch_norm``;
3. with ``--step_depth=D`` (0 skips it), the ResNet-D ``grad="hand"`` train step of
   ``bench.train_step`` built twice: as the trainer builds it, and with
   ``cnn_jax.ops.hand.batch_norm`` swapped for the autodiff reference while that step is
   traced, so the two differ only in BatchNorm; images/s, median of ``--step_rounds`` rounds
   of 2 steps.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

SHAPES = {"32x32x16": (32, 16), "16x16x32": (16, 32), "8x8x64": (8, 64)}


def _median_ms(fns: dict, args, repeats: int, inner: int) -> dict:
  """Median milliseconds per call of each jitted ``fns[name](*args)``, rounds alternating."""
  import jax  # pylint: disable=g-import-not-at-top
  for fn in fns.values():
    jax.block_until_ready(fn(*args))  # compile
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      for _ in range(inner):
        out = fn(*args)
      jax.block_until_ready(out)
      times[name].append((time.perf_counter() - start) / inner * 1e3)
  return {name: statistics.median(t) for name, t in times.items()}


@contextlib.contextmanager
def reference_batch_norm_in_hand_ops():
  """Within the block, ``ops.hand.batch_norm`` is the autodiff reference ``ops.batch_norm``."""
  from cnn_jax import ops  # pylint: disable=g-import-not-at-top
  from cnn_jax.ops import hand  # pylint: disable=g-import-not-at-top
  fast = hand.batch_norm
  # ``sums`` (the native channel sums a layer may pass) has no meaning for the reference.
  hand.batch_norm = lambda x, scale, bias, *, epsilon=1e-5, sums=None: ops.batch_norm(
      x, scale, bias, epsilon=epsilon)
  try:
    yield
  finally:
    hand.batch_norm = fast


def run(args) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from cnn_jax import ops  # pylint: disable=g-import-not-at-top
  from cnn_jax.ops import hand  # pylint: disable=g-import-not-at-top
  from cnn_jax.ops.hand import normalization  # pylint: disable=g-import-not-at-top
  from cnn_jax.train import steps  # pylint: disable=g-import-not-at-top

  options = steps.compiler_options("eigen")
  jit = lambda fn: jax.jit(fn, compiler_options=options)
  result = {"batch": args.batch, "sums_ms": {}, "batch_norm_ms": {}}
  for name, (size, channels) in SHAPES.items():
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (args.batch, size, size, channels)) * 2 + 0.5
    unfolded = lambda a: jnp.ones((a.size // a.shape[-1],), a.dtype) @ a.reshape(
        -1, a.shape[-1])
    result["sums_ms"][name] = _median_ms(
        {"reduce": jit(lambda a: jnp.sum(a, (0, 1, 2))),
         "matmul_unfolded": jit(unfolded),
         "matmul_folded": jit(normalization.channel_sum)}, (x,), args.repeats, 20)
    w = jax.random.normal(keys[1], x.shape)
    scale, bias = jax.random.normal(keys[2], (2, channels))

    def grad_of(batch_norm, w=w):
      loss = lambda x, s, b: jnp.vdot(w, jax.nn.relu(batch_norm(x, s, b)[0]))
      return jit(jax.grad(loss, argnums=(0, 1, 2)))

    result["batch_norm_ms"][name] = _median_ms(
        {"autodiff": grad_of(ops.batch_norm), "hand": grad_of(hand.batch_norm)},
        (x, scale, bias), args.repeats, 10)

  if args.step_depth:
    from bench import train_step  # pylint: disable=g-import-not-at-top
    # pylint: disable=protected-access
    step_args = train_step._parse([f"--depth={args.step_depth}", f"--batch={args.batch}",
                                   "--grad=hand"])
    model, _ = train_step.build_model(step_args, "hand")
    runners = {}
    with reference_batch_norm_in_hand_ops():
      runners["hand_convs_autodiff_bn"], _ = train_step.make_jax_trainer(
          model, args.batch, 32, 1, xla_options=options)
    runners["hand_convs_hand_bn"], _ = train_step.make_jax_trainer(
        model, args.batch, 32, 1, xla_options=options)
    times = {name: [] for name in runners}
    for _ in range(args.step_rounds):
      for name, step in runners.items():
        times[name].append(train_step._time_steps(step, 2, lambda out: out.block_until_ready()))
    result["step"] = {"depth": args.step_depth, "rounds": args.step_rounds,
                      "images_per_s": {name: args.batch / statistics.median(t)
                                       for name, t in times.items()}}
  return result


def _print(result: dict) -> None:
  print(f"channel sums, batch {result['batch']}, ms (median):")
  for name, row in result["sums_ms"].items():
    print(f"  {name:10s} " + "  ".join(f"{k} {v:6.3f}" for k, v in row.items()))
  print("BatchNorm forward + backward, ms (median):")
  for name, row in result["batch_norm_ms"].items():
    print(f"  {name:10s} autodiff {row['autodiff']:6.3f}  hand {row['hand']:6.3f}  "
          f"x{row['autodiff'] / row['hand']:.2f}")
  if "step" in result:
    rates = result["step"]["images_per_s"]
    print(f"ResNet-{result['step']['depth']} hand train step, images/s (median of "
          f"{result['step']['rounds']} rounds): " + ", ".join(
              f"{k} {v:.1f}" for k, v in rates.items())
          + f"  x{rates['hand_convs_hand_bn'] / rates['hand_convs_autodiff_bn']:.2f}")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=7, help="alternating rounds per table")
  parser.add_argument("--step_depth", type=int, default=20,
                      help="ResNet depth of the train-step comparison (6n+2; 0 skips it)")
  parser.add_argument("--step_rounds", type=int, default=6)
  parser.add_argument("--json", action="store_true", help="print one JSON object")
  args = parser.parse_args(argv)
  for name in ("batch", "repeats", "step_rounds"):
    if getattr(args, name) < 1:
      parser.error(f"--{name}={getattr(args, name)} is not allowed: give an int >= 1")
  if args.step_depth and (args.step_depth < 8 or (args.step_depth - 2) % 6):
    parser.error(f"--step_depth={args.step_depth} is not allowed: give 0 or a CIFAR ResNet "
                 "depth 6n+2 (8, 14, 20, 32, 44, 56, 110, ...)")
  result = run(args)
  if args.json:
    print(json.dumps(result))
  else:
    _print(result)


if __name__ == "__main__":
  main()
