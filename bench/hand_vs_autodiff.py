"""Forward + backward time of ``ops.hand.correlate`` vs autodiff of ``ops.correlate``.

Both are jit-compiled ``jax.value_and_grad`` of ``sum(correlate(x, w) * c)`` with respect to
``x`` and ``w`` (a fixed random ``c`` keeps the cotangent dense), timed in the same process,
interleaved (hand, autodiff, hand, …) so that machine load affects both alike; the figure is
the median over repeats. Configurations: a ResNet-sized 3x3 conv (batch 128, 32x32x16 → 16,
SAME) and the same conv with stride 2.

  python -m bench.hand_vs_autodiff            # table
  python -m bench.hand_vs_autodiff --json     # one JSON object
  python -m bench.hand_vs_autodiff --repeats=20 --batch=128
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax import ops
from cnn_jax.ops import hand

CONFIGS = (
    ("3x3 conv, 32x32x16->16, SAME, stride 1", dict(stride=1, padding="SAME")),
    ("3x3 conv, 32x32x16->16, SAME, stride 2", dict(stride=2, padding="SAME")),
)


def _step(namespace, kwargs):
  def loss(x, w, c):
    return jnp.sum(namespace.correlate(x, w, **kwargs) * c)
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def _time(fn, args) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - start


def measure(batch: int = 128, repeats: int = 10, seed: int = 0) -> list[dict]:
  """Median seconds per forward+backward, hand and autodiff, for each configuration."""
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(batch, 32, 32, 16)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 16, 16)) * 0.1, jnp.float32)
  results = []
  for label, kwargs in CONFIGS:
    out_shape = jax.eval_shape(lambda x, w, kwargs=kwargs: ops.correlate(x, w, **kwargs),
                               x, w).shape
    c = jnp.asarray(rng.normal(size=out_shape), jnp.float32)
    steps = {"hand": _step(hand, kwargs), "autodiff": _step(ops, kwargs)}
    for fn in steps.values():  # compile and warm up
      _time(fn, (x, w, c))
      _time(fn, (x, w, c))
    times = {name: [] for name in steps}
    for _ in range(repeats):
      for name, fn in steps.items():
        times[name].append(_time(fn, (x, w, c)))
    hand_s = statistics.median(times["hand"])
    auto_s = statistics.median(times["autodiff"])
    results.append({
        "config": label,
        "batch": batch,
        "hand_ms": 1e3 * hand_s,
        "autodiff_ms": 1e3 * auto_s,
        "ratio": hand_s / auto_s,
        "hand_min_ms": 1e3 * min(times["hand"]),
        "autodiff_min_ms": 1e3 * min(times["autodiff"]),
    })
  return results


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--json", action="store_true", help="print one JSON object")
  args = parser.parse_args(argv)
  if args.batch < 1 or args.repeats < 1:
    parser.error(f"--batch={args.batch} and --repeats={args.repeats} must be >= 1")
  results = measure(args.batch, args.repeats)
  meta = {"jax": jax.__version__, "backend": jax.default_backend(),
          "machine": platform.machine(), "repeats": args.repeats,
          "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
  if args.json:
    print(json.dumps({"meta": meta, "results": results}, indent=2))
    return
  print(f"hand vs autodiff, jit, forward+backward (dL/dx and dL/dw), median of "
        f"{args.repeats}; jax {meta['jax']} on {meta['backend']}, {meta['date']}")
  print(f"{'config':42s} {'hand ms':>9s} {'autodiff ms':>12s} {'ratio':>6s}")
  for r in results:
    print(f"{r['config']:42s} {r['hand_ms']:9.1f} {r['autodiff_ms']:12.1f} {r['ratio']:6.2f}")


if __name__ == "__main__":
  main()
