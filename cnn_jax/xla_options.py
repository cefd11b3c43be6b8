"""XLA compiler options that ``jax.jit`` gets on the CPU backend (measured in docs/benchmarks.md).

``jax.jit(f, compiler_options=...)`` scopes an option to one function: nothing global changes,
and two settings can be compared in one process.
"""

from __future__ import annotations

import jax

# XLA compiles its CPU kernels with LLVM at level 3 by default. At level 2 the train steps
# compile 1.2-1.4x faster and run as fast (ResNet-20/56, ResNeXt, simple_cnn, local, mlp), and
# a model's init (the initialisers' threefry and erf_inv kernels: 2-9 s at level 3) compiles
# 2.4-3.6x faster into the same bits (python -m bench.llvm_level; tests/test_train.py checks
# the bits).
CPU_LLVM_LEVEL = 2


def optimization_level() -> dict[str, int]:
  """``{"xla_backend_optimization_level": CPU_LLVM_LEVEL}`` on the CPU backend; ``{}`` on
  others (not measured there) and under ``jax_disable_most_optimizations`` (level 0 then, as
  asked; the test suite's setting)."""
  if jax.default_backend() != "cpu" or jax.config.read("jax_disable_most_optimizations"):
    return {}
  return {"xla_backend_optimization_level": CPU_LLVM_LEVEL}
