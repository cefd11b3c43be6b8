"""Pooling as pure functions: max, average, weighted average, Lp norm, and global pools.

Every windowed pool takes ``x`` of shape ``(N, *spatial, C)`` (1, 2 or 3 spatial dims), a
``window`` (int or per-dim tuple), a ``stride`` (default: the window, i.e. non-overlapping) and
a ``padding`` of the same forms as the convolutions. Channels are pooled independently.
Padding counts as ``-inf`` for max pooling and as zeros for the others (so a padded average
divides by the full window, as ``count_include_pad=True`` does elsewhere); ``"CIRCULAR"``
wraps around instead.
"""

from __future__ import annotations

import dataclasses
import functools

import jax.numpy as jnp
import numpy as np
from jax import lax

from cnn_jax.ops import correlation, shapes


def _spec(x, window, stride, padding):
  num_dims = x.ndim - 2
  if num_dims not in (1, 2, 3):
    raise ValueError(f"x has shape {tuple(x.shape)} (rank {x.ndim}): pooling expects "
                     "(N, *spatial, C) with 1, 2 or 3 spatial dims.")
  window = shapes.as_tuple(window, num_dims, "window")
  if stride is None:
    stride = window
  return correlation.window_spec(x.shape, window, stride, padding, 1, name_kernel="window")


def _reduce(x, spec, init: float, op):
  dims = (1,) + spec.kernel + (1,)
  strides = (1,) + spec.stride + (1,)
  # The initial value must be a concrete NumPy scalar: a traced one (jnp.array under jit)
  # makes reduce_window non-differentiable.
  return lax.reduce_window(x, np.asarray(init, x.dtype), op, dims, strides, "VALID")


def max_pool(x, window, stride=None, padding="VALID"):
  """Largest value in each window. ``x``: (N, *spatial, C) → (N, *out_spatial, C)."""
  spec = _spec(x, window, stride, padding)
  xp = correlation.pad_input(x, spec, value=-jnp.inf)
  return _reduce(xp, spec, -np.inf, lax.max)


def avg_pool(x, window, stride=None, padding="VALID"):
  """Mean of each window (padding zeros count). ``x``: (N, *spatial, C)."""
  spec = _spec(x, window, stride, padding)
  xp = correlation.pad_input(x, spec)
  size = 1
  for k in spec.kernel:
    size *= k
  return _reduce(xp, spec, 0, lax.add) / size


def weighted_avg_pool(x, weights, stride=None, padding="VALID"):
  """Weighted mean of each window, the same window weights for every channel.

  ``y[o, c] = sum_t v[t] x_p[o*s + t, c]`` with ``v = weights / sum(weights)``: a depthwise
  correlation (``groups = C``) whose kernel is ``v`` for every channel.

  Args:
    x: ``(N, *spatial, C)``.
    weights: ``(*window,)`` non-negative weights (e.g. a Gaussian); normalised to sum to 1,
      so uniform weights give ``avg_pool``.
    stride, padding: as in ``avg_pool``; stride defaults to the window.

  Raises:
    ValueError: if ``weights`` does not have one dim per spatial dim of ``x``.
  """
  if weights.ndim != x.ndim - 2:
    raise ValueError(f"weights has shape {tuple(weights.shape)}: expected one dim per spatial "
                     f"dim of x {tuple(x.shape)}, i.e. rank {x.ndim - 2}.")
  spec = _spec(x, tuple(weights.shape), stride, padding)
  weights = (weights / jnp.sum(weights)).astype(x.dtype)
  # A depthwise correlation (groups = C) whose kernel is the window weights for every channel,
  # written as the weighted sum of the window's strided slices: XLA fuses that into one pass
  # over x, where its CPU backend runs a C-group convolution ~30x slower (docs/benchmarks-history.md,
  # "Pools without grouped convolutions").
  taps = correlation.window_taps(correlation.pad_input(x, spec), spec)
  offset, tap = next(taps)
  total = weights[offset] * tap
  for offset, tap in taps:
    total = total + weights[offset] * tap
  return total


def gaussian_window(window, sigma: float = 1.0):
  """A separable Gaussian window of shape ``window`` (a tuple), peak at the centre."""
  grids = jnp.meshgrid(*[jnp.arange(k) - (k - 1) / 2 for k in window], indexing="ij")
  return jnp.exp(-sum(g ** 2 for g in grids) / (2 * sigma ** 2))


def lp_pool(x, window, p: float = 2.0, stride=None, padding="VALID"):
  """Lp norm of each window: ``(sum |x|^p)^(1/p)``; p=2 is L2-norm pooling.

  p=1 on non-negative input is sum pooling; as p grows it tends to max pooling of ``|x|``.
  Computed as ``m * (sum (|x|/m)^p)^(1/p)`` with ``m`` the window's largest ``|x|``, so large p
  neither overflows nor underflows; an all-zero window gives 0 (and a zero, not NaN, gradient).

  Raises:
    ValueError: if ``p`` is not a number >= 1.
  """
  if isinstance(p, bool) or not isinstance(p, (int, float)) or p < 1:
    raise ValueError(f"p={p!r} is not allowed: give a number >= 1 (p=2 is L2 pooling).")
  spec = _spec(x, window, stride, padding)
  magnitude = jnp.abs(correlation.pad_input(x, spec))
  already_padded = dataclasses.replace(spec, pads=((0, 0),) * spec.num_dims, circular=False)
  patches = correlation.extract_patches(magnitude, already_padded)  # (N, *out, *window, C)
  axes = tuple(range(1 + spec.num_dims, 1 + 2 * spec.num_dims))
  peak = jnp.max(patches, axis=axes)
  return _scaled_norm(
      peak, lambda safe_peak: jnp.sum((patches / jnp.expand_dims(safe_peak, axes)) ** p, axis=axes),
      p)


def lp_pool_by_taps(x, spec: correlation.WindowSpec, p: float):
  """``lp_pool``'s values from each tap's strided slice instead of a patch array.

  Same formula; the forward alone is faster (128x32x32x16, 3x3/2: 3.5 vs 27.8 ms), since
  overlapping windows make the patch array k^D times the input, but autodiff through the
  slices is slower (136 vs 63 ms for value and gradient: XLA's transposes of many strided
  slices), so ``lp_pool`` keeps the patches for autodiff and ``hand.lp_pool``, whose backward
  is written by hand, runs this. ``spec`` and ``p`` are checked by the caller.
  """
  magnitude = jnp.abs(correlation.pad_input(x, spec))
  already_padded = dataclasses.replace(spec, pads=((0, 0),) * spec.num_dims, circular=False)
  taps = [tap for _, tap in correlation.window_taps(magnitude, already_padded)]
  peak = functools.reduce(jnp.maximum, taps)
  return _scaled_norm(peak, lambda safe_peak: sum((tap / safe_peak) ** p for tap in taps), p)


def _scaled_norm(peak, scaled_power_sum, p):
  # m * (sum (|x|/m)^p)^(1/p) with m = peak; scaled_power_sum(m) gives the sum. Both guards
  # keep the gradient finite in all-zero windows (0 * inf would be NaN).
  nonzero = peak > 0
  safe_peak = jnp.where(nonzero, peak, 1)
  safe_total = jnp.where(nonzero, scaled_power_sum(safe_peak), 1)
  return jnp.where(nonzero, safe_peak * safe_total ** (1.0 / p), 0)


def global_avg_pool(x):
  """Mean over every spatial position: ``(N, *spatial, C)`` → ``(N, C)``."""
  return jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))


def global_max_pool(x):
  """Largest value over every spatial position: ``(N, *spatial, C)`` → ``(N, C)``."""
  return jnp.max(x, axis=tuple(range(1, x.ndim - 1)))


def depth_avg_pool(x, features: int):
  """Average pooling along the depth (channel) axis: ``(N, *spatial, C)`` → ``(N, *spatial,
  features)``, output channel ``j`` the mean of input channels ``j·r .. j·r + r − 1``,
  ``r = C / features``.

  The 1×1 convolution whose weights are ``1/r`` on those channels and 0 elsewhere: a 1×1 conv is
  a per-pixel weighted sum over channels, and with equal weights it is this pool.

  Raises:
    ValueError: if ``features`` does not divide the channel count.
  """
  channels = x.shape[-1]
  if isinstance(features, bool) or not isinstance(features, int) or features < 1 or (
      channels % features):
    raise ValueError(f"features={features!r} is not allowed: give an int >= 1 that divides "
                     f"the input's {channels} channels.")
  return jnp.mean(x.reshape(x.shape[:-1] + (features, channels // features)), axis=-1)
