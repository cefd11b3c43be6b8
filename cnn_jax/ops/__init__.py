"""The op library: convolutions, pools and batch normalisation as pure, differentiable functions.

``from cnn_jax import ops``, then ``ops.correlate``, ``ops.convolve``, ``ops.max_pool`` …
Everything here is channels-last, ``(N, *spatial, C)``, for 1, 2 and 3 spatial dimensions, and
checks its arguments in plain Python before anything is traced. ``ops.for_grad("hand")``
returns ``cnn_jax.ops.hand``, the same functions with hand-written backward passes.
"""

import sys

from cnn_jax.ops.correlation import (
    convolve,
    correlate,
    correlate_reference,
    extract_patches,
    flip_kernel,
    locally_connected,
)
from cnn_jax.ops.normalization import batch_norm, per_channel
from cnn_jax.ops.pooling import (
    avg_pool,
    depth_avg_pool,
    gaussian_window,
    global_avg_pool,
    global_max_pool,
    lp_pool,
    max_pool,
    weighted_avg_pool,
)
from cnn_jax.ops.shapes import PADDING_MODES, output_size, resolve_padding

GRAD_MODES = ("autodiff", "hand")


def for_grad(grad: str):
  """The op namespace for a gradient mode: ``"autodiff"`` → ``ops``, ``"hand"`` → ``ops.hand``.

  Raises:
    ValueError: for any other mode.
  """
  if grad == "autodiff":
    return sys.modules[__name__]
  if grad == "hand":
    from cnn_jax.ops import hand  # pylint: disable=g-import-not-at-top
    return hand
  raise ValueError(f"grad={grad!r} is not allowed: give one of {', '.join(GRAD_MODES)}.")
