"""Batch normalisation with a hand-written backward pass and fast channel sums.

Same signature, checks and forward value (up to summation order) as
``cnn_jax.ops.batch_norm``. Why a second formulation: XLA's CPU backend runs a reduction over
every axis but the channels on one thread at ~5 GB/s (``jnp.sum(x, (0, 1, 2))`` of a
``(128, 16, 16, 32)`` float32 array: 0.80 ms), while the same sum written as
``ones @ x.reshape(M, C)`` goes to the matmul library (0.14-0.19 ms; ``python -m
bench.batch_norm``, docs/benchmarks.md). Forward and backward need two such sums each;
autodiff of the reference runs them as XLA's reductions. A caller may pass other
implementations of the two sums (``ChannelSums``): the layers pass the native one-pass kernels
(``cnn_jax.native.channel_moments`` / ``channel_grad_sums``) where the config runs them; the
matmul needs each product it sums written to memory first, the kernels read their inputs once
(ResNet-56 step 1.19x -> 1.35x torch, docs/benchmarks-history.md, 2026-11-25, b6cf5dc).

Derivation, per channel, with ``M`` entries ``x_i``, ``μ = Σx/M``, ``σ² = Σ(x-μ)²/M``,
``r = 1/sqrt(σ² + ε)``, ``x̂ = (x - μ) r``, ``y = x̂ γ + β``, cotangents ``g = dL/dy`` and
``g_μ``, ``g_σ²`` for the returned statistics:

  ``dL/dβ = Σ g``,  ``dL/dγ = Σ g x̂``,
  ``dL/dx = γ r (g - dL/dβ / M - x̂ dL/dγ / M) + g_μ / M + g_σ² 2 (x - μ) / M``.

(``x̂`` depends on ``x`` directly, through ``μ`` and through ``r``; ``Σ x̂ = 0`` removes the
cross term of ``μ`` in ``σ²``.) The statistics' cotangents are zero in training, where they only
feed the running averages, but are kept so that the VJP is exact for any use.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from cnn_jax.ops import normalization
from cnn_jax.ops.normalization import per_channel

# Fold this many values into a matmul row (a few positions' channels side by side): a wide
# row keeps the matmul library's vector loop full when C is 16. Measured on the 2-core CPU
# (python -m bench.batch_norm): a (128, 32, 32, 16) sum takes 1.59 ms as XLA's reduction,
# 1.30 as a matmul on 16-wide rows, 0.79 on 256-wide rows (one-off: 0.51 at 128, 0.47 at 256).
_ROW_WIDTH = 256


def channel_sum(a: jax.Array) -> jax.Array:
  """``a.sum(axis=all but the last)`` as one matrix-vector product: ``(…, C)`` → ``(C,)``.

  ``a`` is viewed (a free reshape) as rows of ``k`` consecutive positions' channels, ``k`` the
  largest power of two with ``k C <= 256`` that divides the number of positions; the row sums
  of the ``k`` channel groups are added at the end.
  """
  channels = a.shape[-1]
  positions = a.size // channels
  k = 1
  while 2 * k * channels <= _ROW_WIDTH and positions % (2 * k) == 0:
    k *= 2
  rows = a.reshape(positions // k, k * channels)
  return (jnp.ones((rows.shape[0],), a.dtype) @ rows).reshape(k, channels).sum(0)


class ChannelSums(NamedTuple):
  """Another implementation of the two sums, for float32 ``x`` whose channels ``applies``.

  Attributes:
    moments: ``x (..., C) -> (mean (C,), biased var (C,))``, differentiable.
    grad_sums: ``(g, x, mean) -> (Σ g, Σ g (x - mean))`` per channel.
    applies: ``x -> bool``: whether the two take ``x``.
  """
  moments: Callable
  grad_sums: Callable
  applies: Callable


def batch_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, *, epsilon: float = 1e-5,
               sums: ChannelSums | None = None):
  """``ops.batch_norm`` with a hand-written backward pass (derived in the module docstring).

  Args and Returns: as ``ops.batch_norm``; ``sums``: the channel sums to use where
  ``sums.applies(x)`` (default: matrix-vector products, ``channel_sum``).
  """
  normalization.check_batch_norm_args(x.shape, scale.shape, bias.shape, epsilon)
  return _batch_norm(x, scale, bias, float(epsilon), sums)


def _statistics(x, epsilon, sums):
  if sums is not None and sums.applies(x):  # one pass each, nothing written but the sums
    mean, var = sums.moments(x)
    centred = x - per_channel(mean, x.ndim)
  else:
    positions = x.size // x.shape[-1]
    mean = channel_sum(x) / positions
    centred = x - per_channel(mean, x.ndim)
    var = channel_sum(centred * centred) / positions
  return centred, mean, var, lax.rsqrt(var + epsilon)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _batch_norm(x, scale, bias, epsilon, sums):
  return _batch_norm_fwd(x, scale, bias, epsilon, sums)[0]


def _batch_norm_fwd(x, scale, bias, epsilon, sums):
  compute = x.astype(normalization.stats_dtype(x.dtype))
  centred, mean, var, inv_std = _statistics(compute, epsilon, sums)
  y = centred * per_channel(inv_std * scale, x.ndim) + per_channel(bias, x.ndim)
  return (y, mean, var), (x, mean, inv_std, scale)


def _batch_norm_bwd(epsilon, sums, residuals, cotangents):
  del epsilon
  x, mean, inv_std, scale = residuals
  g, g_mean, g_var = cotangents
  positions = x.size // x.shape[-1]
  ndim = x.ndim
  centred = x.astype(mean.dtype) - per_channel(mean, ndim)
  normalised = centred * per_channel(inv_std, ndim)
  if sums is not None and sums.applies(x) and g.dtype == x.dtype:
    grad_bias, grad_centred = sums.grad_sums(g, x, mean)
    grad_scale = grad_centred * inv_std
  else:
    grad_bias = channel_sum(g)
    grad_scale = channel_sum(g * normalised)
  grad_x = (per_channel(scale * inv_std, ndim)
            * (g - (per_channel(grad_bias, ndim) + normalised * per_channel(grad_scale, ndim))
               / positions)
            + (per_channel(g_mean, ndim) + 2 * per_channel(g_var, ndim) * centred) / positions)
  return grad_x.astype(x.dtype), grad_scale.astype(scale.dtype), grad_bias.astype(scale.dtype)


_batch_norm.defvjp(_batch_norm_fwd, _batch_norm_bwd)
