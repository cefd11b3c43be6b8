"""Native CPU kernels (C++ through XLA's FFI): the one boundary between cnn_jax and C++.

``cnn_jax.ops`` and ``cnn_jax.ops.hand`` are pure JAX and never import this package; the
layers (``cnn_jax.layers``) call it where the config's ``kernels`` choice, resolved into a
``Kernels`` value by ``resolve`` / ``from_config``, says so (``choice.py``). Here:

  * ``csrc/``: the C++ (oneDNN convolutions, Winograd F(2x2, 3x3) and F(4x4, 3x3), BatchNorm's
    one-pass channel sums, an unfusable identity), one FFI handler family;
  * ``build.py``: the build (``pip install`` runs it; ``python -m cnn_jax.native build``);
  * ``ffi.py``: the differentiable JAX functions over the handlers;
  * ``choice.py``: which layers run them;
  * ``autotune.py``: the per-shape choice by measurement (``conv_algorithm="autotune"``, the
    default), cached on disk and recorded in each run's ``kernels.json``;
  * ``tests/`` and ``bench/``: their tests (against the pure ops) and C++ micro-benchmarks.

``python -m cnn_jax.native status`` says whether the library loads here.
"""

from cnn_jax.native.choice import (
    CONV_ALGORITHMS,
    KERNELS,
    XLA,
    check,
    Kernels,
    conv_tile,
    from_config,
    resolve,
    with_choices_file,
    without_tuning,
)
from cnn_jax.native.ffi import (
    CHANNEL_SUMS,
    WINOGRAD_TILES,
    available,
    channel_grad_sums,
    channel_moments,
    correlate,
    materialize,
    sums_apply,
    unavailable_reason,
    winograd_calls,
)
