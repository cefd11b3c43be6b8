"""Pools on XLA's CPU backend: each hand-written pool against autodiff, forward + backward.

  python -m bench.pools [--shape=128,32,32,16] [--repeats=9] [--json]

For every pool and a few (window, stride) settings, ``jax.value_and_grad`` of
``sum(pool(x)**2)`` is jitted twice (the trainer's XLA options,
``cnn_jax.train.steps.compiler_options``): through the ``cnn_jax.ops`` pool under autodiff
and through its ``cnn_jax.ops.hand`` twin; median milliseconds of ``--repeats`` alternating
calls, float32, ``"SAME"`` padding. The weighted pool's window is a 3x3 Gaussian and its
gradient is taken w.r.t. ``x`` only (as in a network's fixed pooling).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

# (pool, window, stride); window 0: a global pool.
CASES = (("max_pool", 2, 2), ("max_pool", 3, 2), ("avg_pool", 2, 2), ("avg_pool", 3, 2),
         ("avg_pool", 3, 1), ("weighted_avg_pool", 3, 2), ("lp_pool", 2, 2), ("lp_pool", 3, 2),
         ("global_avg_pool", 0, 0), ("global_max_pool", 0, 0))


def _pool_fn(namespace, name: str, window: int, stride: int):
  pool = getattr(namespace, name)
  if not window:
    return pool
  if name == "weighted_avg_pool":
    from cnn_jax import ops  # pylint: disable=g-import-not-at-top
    weights = ops.gaussian_window((window, window))
    return lambda x: pool(x, weights, stride, "SAME")
  return lambda x: pool(x, window, stride=stride, padding="SAME")


def run(shape, repeats: int) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from cnn_jax import ops  # pylint: disable=g-import-not-at-top
  from cnn_jax.ops import hand  # pylint: disable=g-import-not-at-top
  from cnn_jax.train import steps  # pylint: disable=g-import-not-at-top

  options = steps.compiler_options("eigen")
  x = jax.random.normal(jax.random.key(0), shape)
  rows = []
  for name, window, stride in CASES:
    fns = {}
    for label, namespace in (("autodiff", ops), ("hand", hand)):
      pool = _pool_fn(namespace, name, window, stride)
      fns[label] = jax.jit(jax.value_and_grad(lambda x, pool=pool: jnp.sum(pool(x) ** 2)),
                           compiler_options=options)
      jax.block_until_ready(fns[label](x))  # compile
    times = {label: [] for label in fns}
    for _ in range(repeats):
      for label, fn in fns.items():
        start = time.perf_counter()
        jax.block_until_ready(fn(x))
        times[label].append((time.perf_counter() - start) * 1e3)
    rows.append({"pool": name, "window": window, "stride": stride,
                 **{f"{label}_ms": statistics.median(t) for label, t in times.items()}})
  return {"shape": list(shape), "repeats": repeats, "backend": jax.default_backend(),
          "rows": rows}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--shape", default="128,32,32,16", help="N,H,W,C of the input")
  parser.add_argument("--repeats", type=int, default=9, help="alternating timed calls")
  parser.add_argument("--json", action="store_true", help="print one JSON object")
  args = parser.parse_args(argv)
  try:
    shape = tuple(int(v) for v in args.shape.split(","))
  except ValueError:
    shape = ()
  if len(shape) != 4 or min(shape) < 1:
    parser.error(f"--shape={args.shape!r} is not allowed: give N,H,W,C as 4 ints >= 1")
  if args.repeats < 1:
    parser.error(f"--repeats={args.repeats} is not allowed: give an int >= 1")
  result = run(shape, args.repeats)
  if args.json:
    print(json.dumps(result))
    return
  print(f"value_and_grad of sum(pool(x)**2), x {'x'.join(map(str, shape))} float32, "
        f"{result['backend']}, median of {args.repeats} alternating calls, ms:")
  for row in result["rows"]:
    setting = f"window {row['window']} stride {row['stride']}" if row["window"] else "global"
    print(f"  {row['pool']:18s} {setting:18s} autodiff {row['autodiff_ms']:8.2f}  "
          f"hand {row['hand_ms']:8.2f}  hand/autodiff {row['hand_ms'] / row['autodiff_ms']:5.2f}")


if __name__ == "__main__":
  main()
