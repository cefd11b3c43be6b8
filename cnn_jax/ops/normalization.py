"""Batch normalisation in training mode, as a pure function (the autodiff reference).

``batch_norm(x, scale, bias)`` normalises every channel of ``x: (N, *spatial, C)`` by the mean
and variance over the batch and every position (Ioffe & Szegedy 2015), then applies the
learned per-channel affine map. The statistics are computed in at least float32, in two passes
(the mean, then the mean squared deviation: never negative, unlike ``E[x²] - E[x]²``).
``cnn_jax.ops.hand.batch_norm`` is the same function with a hand-written backward pass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def check_batch_norm_args(x_shape, scale_shape, bias_shape, epsilon) -> None:
  """Raises ``ValueError`` (one line: what is wrong, what is allowed) before any tracing."""
  if len(x_shape) < 2:
    raise ValueError(f"batch_norm needs x of shape (N, ..., C), got shape {tuple(x_shape)}.")
  channels = x_shape[-1]
  for name, shape in (("scale", scale_shape), ("bias", bias_shape)):
    if tuple(shape) != (channels,):
      raise ValueError(f"batch_norm's {name} must have shape ({channels},) for x of shape "
                       f"{tuple(x_shape)}, got {tuple(shape)}.")
  if not epsilon > 0:
    raise ValueError(f"batch_norm's epsilon must be > 0, got {epsilon}.")


def stats_dtype(dtype):
  """The dtype statistics are computed in: ``dtype`` promoted to at least float32."""
  return jnp.promote_types(dtype, jnp.float32)


def per_channel(v: jax.Array, ndim: int) -> jax.Array:
  """A ``(C,)`` vector as ``(1, …, 1, C)``, to broadcast against an ``ndim``-d ``(N, …, C)``."""
  return v.reshape((1,) * (ndim - 1) + v.shape)


def batch_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, *, epsilon: float = 1e-5):
  """Training-mode batch normalisation: ``y = (x - mean) / sqrt(var + epsilon) * scale + bias``.

  Args:
    x: ``(N, *spatial, C)``.
    scale, bias: ``(C,)``.
    epsilon: added to the variance, > 0.

  Returns:
    ``(y, mean, var)``: ``y`` like ``x`` in ``stats_dtype(x.dtype)`` (the caller casts), and
    the batch ``mean`` and (biased) ``var`` of each channel, ``(C,)``, for running averages.
  """
  check_batch_norm_args(x.shape, scale.shape, bias.shape, epsilon)
  x = x.astype(stats_dtype(x.dtype))
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(x, axes)
  centred = x - per_channel(mean, x.ndim)
  var = jnp.mean(centred * centred, axes)
  y = (centred * per_channel(lax.rsqrt(var + epsilon) * scale, x.ndim)
       + per_channel(bias, x.ndim))
  return y, mean, var
