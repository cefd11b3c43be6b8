"""Pools with hand-written backward passes: max, average, weighted average, Lp, global.

Same signatures, checks and forward values as ``cnn_jax.ops``'s pools; each is a
``jax.custom_vjp`` whose backward is derived in its docstring. Windowed pools route the
cotangent ``g = dL/dy`` of every window back to the entries of that window (so an entry in
several overlapping windows accumulates several contributions), then drop the padding's share
(zeros / -inf) or fold it back (circular), with ``correlation.unpad``.

Tie rule of max pooling (and global max pooling): the FIRST arg-max in window order (row-major
over the window's taps) receives the whole gradient; the other tied entries get 0. Autodiff's
rule for ``lax.reduce_window`` may differ on ties, so comparisons use tie-free inputs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from cnn_jax import ops
from cnn_jax.ops import correlation
from cnn_jax.ops import pooling
from cnn_jax.ops.hand.correlation import (
    canonical_padding,
    place_taps,
    prod,
    scatter_patches,
    spread_window,
)


# ---------------------------------------------------------------------------------------------
# max_pool
# ---------------------------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max_pool(x, spec):
  return ops.max_pool(x, spec.kernel, spec.stride, canonical_padding(spec))


def _max_pool_fwd(x, spec):
  return _max_pool(x, spec), x


def _max_pool_bwd(spec, x, g):
  # Every window routes g to its first arg-max (the tie rule). Non-overlapping windows: as
  # patches (no bigger than x) and argmax. Overlapping ones: the patches would hold each entry
  # up to k^D times, so the winner is found by a running comparison over the taps' strided
  # slices instead, where only a strictly larger value takes over (first arg-max again).
  # Backward alone at 128x32x32x16: 2x2/2 patches 4.5 ms vs running 5.4; 3x3/2 33.0 vs 18.4;
  # 3x3/1 64.7 vs 45.9 (docs/benchmarks-history.md, "Pools without grouped convolutions").
  if all(s >= k for s, k in zip(spec.stride, spec.kernel)):
    patches = correlation.extract_patches(x, spec, pad_value=-jnp.inf)  # (N, *out, *K, C)
    flat = patches.reshape(patches.shape[:1 + spec.num_dims] + (-1, x.shape[-1]))
    winner = jnp.argmax(flat, axis=-2)
    taps = jnp.arange(flat.shape[-2]).reshape((1,) * (1 + spec.num_dims) + (-1, 1))
    routed = jnp.where(taps == winner[..., None, :], g[..., None, :], 0)
    return (scatter_patches(routed.reshape(patches.shape), spec, x.shape),)
  taps = [tap for _, tap in correlation.window_taps(
      correlation.pad_input(x, spec, value=-jnp.inf), spec)]
  best, winner = taps[0], jnp.zeros(g.shape, jnp.int32)
  for index, tap in enumerate(taps[1:], start=1):
    larger = tap > best
    best, winner = jnp.where(larger, tap, best), jnp.where(larger, index, winner)
  return (place_taps([jnp.where(winner == index, g, 0) for index in range(len(taps))],
                     spec, x.shape),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(x, window, stride=None, padding="VALID"):
  """``ops.max_pool`` with a hand-written backward pass.

  ``y[o] = max_t x_p[o*s + t]``. Locally (no ties) ``y[o] = x_p[o*s + t*(o)]`` with ``t*(o)`` the
  arg-max, so ``dy[o]/dx_p[i] = [i = o*s + t*(o)]`` and
  ``dL/dx_p[i] = sum_o g[o] [i = o*s + t*(o)]``: each window hands its whole gradient to its
  winner, and an entry winning several overlapping windows collects all of them. Ties: the
  first arg-max in window order gets it all. Padding (-inf) never wins a window holding any
  real entry; its gradient is dropped (circular: folded back).

  Args, Returns, Raises: as ``ops.max_pool``.
  """
  spec = pooling._spec(x, window, stride, padding)  # pylint: disable=protected-access
  return _max_pool(x, spec)


# ---------------------------------------------------------------------------------------------
# avg_pool, weighted_avg_pool
# ---------------------------------------------------------------------------------------------


# The input shape travels as a static argument: the backward needs it (a stride that does
# not divide leaves trailing inputs no window reads) but not the input itself.
@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _avg_pool(x, spec, x_shape):
  del x_shape
  return ops.avg_pool(x, spec.kernel, spec.stride, canonical_padding(spec))


def _avg_pool_fwd(x, spec, x_shape):
  return _avg_pool(x, spec, x_shape), None


def _avg_pool_bwd(spec, x_shape, _, g):
  uniform = jnp.full(spec.kernel, 1.0 / prod(spec.kernel), g.dtype)
  return (spread_window(g, uniform, spec, x_shape),)


_avg_pool.defvjp(_avg_pool_fwd, _avg_pool_bwd)


def avg_pool(x, window, stride=None, padding="VALID"):
  """``ops.avg_pool`` with a hand-written backward pass.

  ``y[o] = (1/|K|) sum_t x_p[o*s + t]`` is a depthwise correlation with the uniform kernel
  ``1/|K|``, so ``dL/dx_p[i] = (1/|K|) sum_{o, t: o*s + t = i} g[o]``: every window spreads
  ``g[o]/|K|`` evenly over its entries (padding zeros included, then dropped): the transposed
  depthwise correlation, computed as placed copies of ``g`` (``spread_window``).

  Args, Returns, Raises: as ``ops.avg_pool``.
  """
  spec = pooling._spec(x, window, stride, padding)  # pylint: disable=protected-access
  return _avg_pool(x, spec, tuple(x.shape))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _weighted_avg_pool(x, weights, spec):
  return ops.weighted_avg_pool(x, weights, spec.stride, canonical_padding(spec))


def _weighted_avg_pool_fwd(x, weights, spec):
  return _weighted_avg_pool(x, weights, spec), (x, weights)


def _weighted_avg_pool_bwd(spec, residuals, g):
  x, weights = residuals
  total = jnp.sum(weights)
  normalised = (weights / total).astype(x.dtype)
  dx = spread_window(g, normalised, spec, x.shape)
  # The window weights are shared by every position and every channel: each one's gradient
  # sums what its tap read times g over all of them (in float32 at least).
  acc = jnp.promote_types(g.dtype, jnp.float32)
  taps = correlation.window_taps(correlation.pad_input(x, spec), spec)
  dnormalised = jnp.stack([jnp.sum(tap.astype(acc) * g.astype(acc)) for _, tap in taps])
  dnormalised = dnormalised.reshape(spec.kernel).astype(normalised.dtype)
  dweights = (dnormalised - jnp.sum(dnormalised * normalised)) / total
  return dx, dweights.astype(weights.dtype)


_weighted_avg_pool.defvjp(_weighted_avg_pool_fwd, _weighted_avg_pool_bwd)


def weighted_avg_pool(x, weights, stride=None, padding="VALID"):
  """``ops.weighted_avg_pool`` with a hand-written backward pass.

  With ``v = weights / S``, ``S = sum weights``: ``y[o, c] = sum_t v[t] x_p[o*s + t, c]``.
    * ``dL/dx_p[i] = sum_{o, t: o*s + t = i} v[t] g[o]``: each window spreads its gradient by
      its weights (a transposed depthwise correlation).
    * ``dL/dv[t] = sum_{n, o, c} x_p[o*s + t, c] g[o, c]`` (shared over positions and channels),
      and through the normalisation ``dv[t]/dw[u] = ([t = u] - v[t]) / S``, so
      ``dL/dw[u] = (dL/dv[u] - sum_t v[t] dL/dv[t]) / S``.

  Args, Returns, Raises: as ``ops.weighted_avg_pool``.
  """
  # The forward's own checks, some inline in it, run on shapes only: identical errors.
  jax.eval_shape(functools.partial(ops.weighted_avg_pool, stride=stride, padding=padding),
                 x, weights)
  spec = pooling._spec(x, tuple(weights.shape), stride, padding)  # pylint: disable=protected-access
  return _weighted_avg_pool(x, weights, spec)


# ---------------------------------------------------------------------------------------------
# lp_pool
# ---------------------------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _lp_pool(x, spec, p):
  return pooling.lp_pool_by_taps(x, spec, p)


def _lp_pool_fwd(x, spec, p):
  y = _lp_pool(x, spec, p)
  return y, (x, y)


def _lp_pool_bwd(spec, p, residuals, g):
  x, y = residuals
  nonzero = y > 0
  safe_y = jnp.where(nonzero, y, 1)
  # Each tap's share, computed on its strided slice (what it read at every output position)
  # and placed back: no patch array, which overlapping windows would make k^D times x.
  # |x|/y <= 1, so the power neither overflows nor underflows for large p; a zero window gets
  # a zero gradient instead of 0/0 (the ratio is set to 1 there so that its derivative, used
  # by grad-of-grad, stays finite too). Backward alone at 128x32x32x16, SAME: patches 9.1 /
  # 32.9 / 98.3 ms, slices 5.2 / 11.5 / 18.5 ms at 2x2/2, 3x3/2, 3x3/1.
  tap_grads = []
  for _, tap in correlation.window_taps(correlation.pad_input(x, spec), spec):
    ratio = jnp.where(nonzero, jnp.abs(tap) / safe_y, 1)
    tap_grads.append(g * jnp.where(nonzero, jnp.sign(tap) * ratio ** (p - 1), 0))
  return (place_taps(tap_grads, spec, x.shape),)


_lp_pool.defvjp(_lp_pool_fwd, _lp_pool_bwd)


def lp_pool(x, window, p: float = 2.0, stride=None, padding="VALID"):
  """``ops.lp_pool`` with a hand-written backward pass.

  ``y[o] = (sum_t |x_p[o*s + t]|^p)^(1/p)``. Differentiating,
  ``dy[o]/dx_p[i] = (1/p) y^(1-p) · p |x_i|^(p-1) sign(x_i) = sign(x_i) (|x_i| / y[o])^(p-1)``
  for every ``i`` in window ``o``; then ``dL/dx_p[i] = sum_o g[o] dy[o]/dx_p[i]`` over the
  windows holding ``i``. p=2: ``x_i / y``; p=1: ``sign(x_i)``; p→∞: the arg-max of ``|x|``.
  Zero norm (an all-zero window): the gradient is defined as 0 (no NaN).

  Args, Returns, Raises: as ``ops.lp_pool``.
  """
  jax.eval_shape(functools.partial(ops.lp_pool, window=window, p=p, stride=stride,
                                   padding=padding), x)
  spec = pooling._spec(x, window, stride, padding)  # pylint: disable=protected-access
  return _lp_pool(x, spec, p)


# ---------------------------------------------------------------------------------------------
# Global pools
# ---------------------------------------------------------------------------------------------


def global_avg_pool(x):
  """``ops.global_avg_pool`` with a hand-written backward pass.

  ``y[n, c] = (1/P) sum_i x[n, i, c]`` over the ``P`` spatial positions, so
  ``dL/dx[n, i, c] = g[n, c] / P``: the gradient is spread evenly over every position.

  Args:
    x: ``(N, *spatial, C)``.

  Returns:
    ``(N, C)``.
  """
  return _global_avg_pool(x, tuple(x.shape))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _global_avg_pool(x, x_shape):
  del x_shape
  return ops.global_avg_pool(x)


def _global_avg_pool_fwd(x, x_shape):
  return _global_avg_pool(x, x_shape), None


def _global_avg_pool_bwd(x_shape, _, g):
  # (N, C) → (N, 1, …, 1, C), then broadcast over every position.
  spread = jnp.reshape(g / prod(x_shape[1:-1]),
                       (x_shape[0],) + (1,) * (len(x_shape) - 2) + (x_shape[-1],))
  return (jnp.broadcast_to(spread, x_shape),)


_global_avg_pool.defvjp(_global_avg_pool_fwd, _global_avg_pool_bwd)


def global_max_pool(x):
  """``ops.global_max_pool`` with a hand-written backward pass.

  ``y[n, c] = max_i x[n, i, c]``, so ``dL/dx[n, i, c] = g[n, c] [i = argmax]``; on ties the
  first position in row-major order gets the whole gradient.

  Args:
    x: ``(N, *spatial, C)``.

  Returns:
    ``(N, C)``.
  """
  return _global_max_pool(x, tuple(x.shape))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _global_max_pool(x, x_shape):
  del x_shape
  return ops.global_max_pool(x)


def _global_max_pool_fwd(x, x_shape):
  # The residual is each (example, channel)'s winning position, (N, C), not x. The first
  # arg-max as the smallest position holding the maximum: a min-reduction that XLA fuses with
  # the comparison, where jnp.argmax's (value, index) reduction made the hand
  # value_and_grad 1.3-1.65x autodiff's.
  flat = x.reshape(x_shape[0], -1, x_shape[-1])
  y = jnp.max(flat, axis=1)
  positions = lax.broadcasted_iota(jnp.int32, flat.shape, 1)
  first = jnp.min(jnp.where(flat == y[:, None, :], positions, flat.shape[1]), axis=1)
  return y, first


def _global_max_pool_bwd(x_shape, first, g):
  flat_shape = (x_shape[0], prod(x_shape[1:-1]), x_shape[-1])
  positions = lax.broadcasted_iota(jnp.int32, flat_shape, 1)
  routed = jnp.where(positions == first[:, None, :], g[:, None, :], 0)
  return (routed.reshape(x_shape),)


_global_max_pool.defvjp(_global_max_pool_fwd, _global_max_pool_bwd)
