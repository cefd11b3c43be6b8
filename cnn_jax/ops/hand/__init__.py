"""The ops of ``cnn_jax.ops`` with hand-written backward passes (``jax.custom_vjp``).

``ops.for_grad("hand")`` returns this module; it has the same public names and signatures as
``cnn_jax.ops`` (``correlate``, ``convolve``, ``locally_connected``, ``max_pool``,
``avg_pool``, ``weighted_avg_pool``, ``lp_pool``, ``global_avg_pool``, ``global_max_pool``,
``batch_norm``, plus the gradient-free helpers ``output_size``, ``gaussian_window``,
``flip_kernel``), the same argument checks (the same functions, run first, so the same
``ValueError``s) and the same forward values (``batch_norm``'s up to summation order). Only the
VJPs differ: each is derived in its docstring and checked against ``jax.vjp`` and finite
differences by ``cnn_jax.analysis.gradcheck``; see docs/gradients.md.
"""

from cnn_jax.ops.correlation import flip_kernel
from cnn_jax.ops.hand.correlation import convolve, correlate, locally_connected
from cnn_jax.ops.hand.normalization import batch_norm
from cnn_jax.ops.hand.pooling import (
    avg_pool,
    global_avg_pool,
    global_max_pool,
    lp_pool,
    max_pool,
    weighted_avg_pool,
)
from cnn_jax.ops.pooling import gaussian_window
from cnn_jax.ops.shapes import output_size

__all__ = [
    "avg_pool",
    "batch_norm",
    "convolve",
    "correlate",
    "flip_kernel",
    "gaussian_window",
    "global_avg_pool",
    "global_max_pool",
    "locally_connected",
    "lp_pool",
    "max_pool",
    "output_size",
    "weighted_avg_pool",
]
