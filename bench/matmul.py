"""The machine's float32 matmul rate, the yardstick for every other figure in ``bench/``.

``python -m bench.matmul [--size=N] [--repeats=R] [--json]`` times one ``N x N @ N x N``
float32 matmul in JAX (jit, result waited for) and in NumPy, alternating the two so that
load from other processes hits both alike, and prints the best GFLOP/s (``2 N^3 / seconds``).
The best of several repetitions estimates what the hardware can do when it is not disturbed;
the median is printed too, because on a shared machine it is what a long run sees.

NumPy's OpenBLAS reads ``OPENBLAS_CORETYPE`` / ``OPENBLAS_L2_SIZE``; when they are set to a
core type that is not the machine's, it picks slower kernels. Measure NumPy's peak with
``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m bench.matmul``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np


def matmul_flops(size: int) -> float:
  """FLOPs of one ``size x size`` by ``size x size`` matmul (a multiply and an add per MAC)."""
  return 2.0 * size ** 3


def measure(size: int = 2048, repeats: int = 5) -> dict:
  """Times a float32 matmul in JAX and NumPy, alternating; returns GFLOP/s (best and median).

  Args:
    size: the matrices are ``(size, size)``.
    repeats: timed repetitions per library, after one warm-up (which also compiles JAX).

  Returns:
    ``{"size", "jax_gflops", "numpy_gflops", "jax_gflops_median", "numpy_gflops_median",
    "load_avg", "openblas_env"}``.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  a = rng.standard_normal((size, size), dtype=np.float32)
  b = rng.standard_normal((size, size), dtype=np.float32)
  ja, jb = jnp.asarray(a), jnp.asarray(b)
  jax_matmul = jax.jit(jnp.matmul)
  jax_matmul(ja, jb).block_until_ready()
  np.matmul(a, b)
  flops = matmul_flops(size)
  times = {"jax": [], "numpy": []}
  for _ in range(repeats):
    start = time.perf_counter()
    jax_matmul(ja, jb).block_until_ready()
    times["jax"].append(time.perf_counter() - start)
    start = time.perf_counter()
    np.matmul(a, b)
    times["numpy"].append(time.perf_counter() - start)
  result = {"size": size}
  for name, ts in times.items():
    result[f"{name}_gflops"] = flops / min(ts) / 1e9
    result[f"{name}_gflops_median"] = flops / statistics.median(ts) / 1e9
  result["load_avg"] = os.getloadavg()[0]
  result["openblas_env"] = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
                            if k in os.environ}
  return result


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", type=int, default=2048)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--json", action="store_true", help="print one JSON object")
  args = parser.parse_args(argv)
  if args.size < 1 or args.repeats < 1:
    parser.error(f"--size={args.size} and --repeats={args.repeats} must be >= 1")
  result = measure(args.size, args.repeats)
  if args.json:
    print(json.dumps(result))
    return
  print(f"float32 matmul {args.size}x{args.size}, best of {args.repeats} "
        f"(load avg {result['load_avg']:.2f}, OpenBLAS env {result['openblas_env'] or 'unset'}):")
  print(f"  JAX (jit)  {result['jax_gflops']:8.1f} GFLOP/s  (median "
        f"{result['jax_gflops_median']:.1f})")
  print(f"  NumPy      {result['numpy_gflops']:8.1f} GFLOP/s  (median "
        f"{result['numpy_gflops_median']:.1f})")


if __name__ == "__main__":
  main()
