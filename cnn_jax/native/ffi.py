"""The native kernels as differentiable JAX functions, through XLA's FFI (CPU, float32).

``csrc/onednn_conv.cc`` wraps oneDNN's convolutions (the library PyTorch's CPU convolutions
use) as three FFI handlers (forward, input gradient, weight gradient); the stride-1, padding-1
3x3 layers can run as Winograd F(2x2, 3x3) (``csrc/winograd_f2x3.h``, 2.25x fewer
multiplications) or F(4x4, 3x3) (``csrc/winograd_f4x3.h``, faster again, 10-20x larger float32
rounding) instead: the caller passes the tile (``cnn_jax.native.choice`` decides it per layer).
The same library holds ``materialize`` (an identity XLA cannot fuse through) and BatchNorm's
one-pass channel sums (``channel_moments``, ``channel_grad_sums``; ``csrc/channel_sums.h``).

Nothing here is read from a global while tracing: every function takes what it runs as
arguments. ``correlate(x, w, spec, tile)`` is differentiable to any order: each of the three
products is linear in each argument, and the vector-Jacobian products of each are the other two
(derived at ``_forward``), so grad-of-grad stays native too.
"""

from __future__ import annotations

import ctypes
import functools

import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax.native import build as build_lib
from cnn_jax.ops import correlation
from cnn_jax.ops.hand.normalization import ChannelSums
from cnn_jax.ops.normalization import per_channel

WINOGRAD_TILES = (0, 2, 4)  # Winograd output tile: none (oneDNN direct), F(2x2, 3x3), F(4x4, 3x3)
_TARGETS = {"forward": "CnnJaxOnednnConvForward",
            "input_grad": "CnnJaxOnednnConvBackwardData",
            "weight_grad": "CnnJaxOnednnConvBackwardWeights",
            "materialize": "CnnJaxMaterialize",
            "channel_moments": "CnnJaxChannelMoments",
            "channel_grad_sums": "CnnJaxChannelGradSums"}


# ---------------------------------------------------------------------------------------------
# Build and load
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _load() -> str | None:
  """Loads the built library and registers its handlers; ``None`` on success, else why not."""
  path = build_lib.library_path()
  if path is None:
    return ("the native library is not built for these sources (`pip install -e .` or "
            "`python -m cnn_jax.native build` builds it)")
  try:
    library = ctypes.cdll.LoadLibrary(path)
  except OSError as error:
    return f"cannot load {path}: {error}"
  for target in _TARGETS.values():
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, target)),
                                platform="cpu")
  library.CnnJaxWinogradCalls.restype = ctypes.c_int64
  library.CnnJaxWinogradCalls.argtypes = [ctypes.c_int64]
  _WINOGRAD_CALLS.append(library.CnnJaxWinogradCalls)
  return None


_WINOGRAD_CALLS = []  # the loaded library's counter, once loaded


def winograd_calls(tile: int = 2) -> int:
  """How many convolutions (forward, input or weight gradient) this process ran as Winograd
  F(tile x tile, 3x3) so far (``tile`` 2 or 4; 0 before the library is loaded)."""
  return int(_WINOGRAD_CALLS[0](tile)) if _WINOGRAD_CALLS else 0


def load_failure() -> str | None:
  """Why the native library does not load (not built, or a loader error), else ``None``;
  starts no JAX backend."""
  return _load()


def unavailable_reason() -> str | None:
  """Why the native kernels cannot run here, or ``None`` if they can."""
  if _load() is not None:
    return _load()
  if jax.default_backend() != "cpu":
    return f"the default backend is {jax.default_backend()}, not the CPU"
  return None


def available() -> bool:
  """Whether the native library is built and loaded, on the CPU backend."""
  return unavailable_reason() is None


# ---------------------------------------------------------------------------------------------
# The differentiable op
# ---------------------------------------------------------------------------------------------


def _attributes(geometry):
  stride, dilation, pads, tile = geometry
  return dict(stride=np.asarray(stride, np.int64), dilation=np.asarray(dilation, np.int64),
              pad_lo=np.asarray([lo for lo, _ in pads], np.int64),
              pad_hi=np.asarray([hi for _, hi in pads], np.int64),
              winograd=np.int64(tile))


def _call(kind, out_shape, a, b, geometry):
  return jax.ffi.ffi_call(_TARGETS[kind], jax.ShapeDtypeStruct(out_shape, jnp.float32),
                          vmap_method="sequential")(a, b, **_attributes(geometry))


def _out_shape(x_shape, w_shape, geometry):
  stride, dilation, pads, _ = geometry
  spatial = tuple((n + lo + hi - ((k - 1) * d + 1)) // s + 1
                  for n, k, s, d, (lo, hi) in zip(x_shape[1:3], w_shape[:2], stride, dilation,
                                                  pads))
  return (x_shape[0],) + spatial + (w_shape[-1],)


# With A_w the correlation x -> y = forward(x, w), linear in x and in w:
#   input_grad(g, w) = A_w^T g, and <ct, A_w^T g> = <A_w ct, g>, so its VJP is
#     d/dg = forward(ct, w), d/dw = weight_grad(ct, g);
#   weight_grad(x, g) = the w-gradient of <A_w x, g>, so <ct_w, weight_grad(x, g)> =
#     <A_{ct_w} x, g>, and its VJP is d/dx = input_grad(g, ct_w), d/dg = forward(x, ct_w).
@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _forward(x, w, geometry):
  return _call("forward", _out_shape(x.shape, w.shape, geometry), x, w, geometry)


def _forward_fwd(x, w, geometry):
  return _forward(x, w, geometry), (x, w)


def _forward_bwd(geometry, residuals, g):
  x, w = residuals
  return (_input_grad(g, w, geometry, x.shape), _weight_grad(x, g, geometry, w.shape))


_forward.defvjp(_forward_fwd, _forward_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _input_grad(g, w, geometry, x_shape):
  return _call("input_grad", x_shape, g, w, geometry)


def _input_grad_fwd(g, w, geometry, x_shape):
  return _input_grad(g, w, geometry, x_shape), (g, w)


def _input_grad_bwd(geometry, x_shape, residuals, ct):
  g, w = residuals
  return (_forward(ct, w, geometry), _weight_grad(ct, g, geometry, w.shape))


_input_grad.defvjp(_input_grad_fwd, _input_grad_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _weight_grad(x, g, geometry, w_shape):
  return _call("weight_grad", w_shape, x, g, geometry)


def _weight_grad_fwd(x, g, geometry, w_shape):
  return _weight_grad(x, g, geometry, w_shape), (x, g)


def _weight_grad_bwd(geometry, w_shape, residuals, ct):
  x, g = residuals
  return (_input_grad(g, ct, geometry, x.shape), _forward(x, ct, geometry))


_weight_grad.defvjp(_weight_grad_fwd, _weight_grad_bwd)


def correlate(x: jax.Array, w: jax.Array, spec: correlation.WindowSpec,
              tile: int = 0) -> jax.Array:
  """``ops.correlate(x, w, ...)`` on the native kernels (``cnn_jax.native.choice.conv_tile``
  says where they apply).

  Args:
    x: ``(N, *spatial, C_in)`` float32, 1 or 2 spatial dims.
    w: ``(*kernel, C_in, C_out)`` float32.
    spec: the window spec (``correlation.window_spec``), zero padding.
    tile: the Winograd output tile (``WINOGRAD_TILES``): 0 runs oneDNN's direct algorithm;
      2 or 4 F(tile x tile, 3x3) for a layer it applies to (the library checks again and runs
      the direct algorithm for a product it does not take, e.g. on a CPU without AVX2).

  Returns:
    ``(N, *spec.out_spatial, C_out)``.
  """
  if tile not in WINOGRAD_TILES:
    raise ValueError(f"tile={tile!r} is not allowed: give one of "
                     f"{', '.join(map(str, WINOGRAD_TILES))}")
  if spec.num_dims == 1:  # as a 2-D correlation over a height of 1
    geometry = ((1,) + spec.stride, (1,) + spec.dilation, ((0, 0),) + spec.pads, tile)
    y = _forward(x[:, None], w[None], geometry)
    return y[:, 0]
  return _forward(x, w, (spec.stride, spec.dilation, spec.pads, tile))


# ---------------------------------------------------------------------------------------------
# Materialize: a value stored once, not recomputed by each consumer
# ---------------------------------------------------------------------------------------------


def _identity_call(x):
  return jax.ffi.ffi_call(_TARGETS["materialize"], jax.ShapeDtypeStruct(x.shape, x.dtype),
                          vmap_method="broadcast_all", input_output_aliases={0: 0})(x)


@jax.custom_jvp
def _materialize(x):
  return _identity_call(x)


@_materialize.defjvp
def _materialize_jvp(primals, tangents):
  # The tangent (and so the cotangent) passes through as itself: materializing the backward
  # pass's stream too measured ~30 ms per ResNet-56 step slower (bench.profile_step, its
  # elementwise fusions 160 against 130 ms), against ~170 ms saved in the forward.
  return _materialize(primals[0]), tangents[0]


def materialize(x: jax.Array) -> jax.Array:
  """``x``, computed once into memory: an identity that XLA cannot fuse into its consumers.
  Differentiable to any order, forward or reverse (the derivative is the identity).

  Why: XLA's CPU fusion copies a cheap elementwise producer into every consumer that can fuse
  it. A residual stage's stream ``x_{k+1} = relu(bn(conv(...)) + x_k)`` feeds the next block's
  convolution (a call, so it is stored) and the next block's add (a fusion, so it is
  recomputed there, from ``x_{k-1}``, ... back to the stage's start): block ``k``'s fusion
  reads ``k`` convolution outputs, quadratic work per stage (ResNet-56: ~200 ms of a 1.6 s
  step, docs/benchmarks.md). The result aliases ``x``'s buffer, so nothing is
  copied when ``x`` has no other consumer.
  """
  return _materialize(x)


# ---------------------------------------------------------------------------------------------
# BatchNorm's channel sums, one pass over the activations
# ---------------------------------------------------------------------------------------------


def sums_apply(x: jax.Array) -> bool:
  """Whether ``channel_moments`` / ``channel_grad_sums`` take ``x``: float32, channels (the
  last axis) a multiple of 8."""
  return x.dtype == jnp.float32 and x.ndim >= 2 and x.shape[-1] % 8 == 0


def _sums_call(kind, channels, *args):
  out = jax.ShapeDtypeStruct((channels,), jnp.float32)
  return jax.ffi.ffi_call(_TARGETS[kind], (out, out), vmap_method="sequential")(*args)


def _sum_over_positions(a):
  return a.reshape(-1, a.shape[-1]).sum(0)


@jax.custom_jvp
def channel_moments(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-channel mean and biased variance of ``x: (..., C)`` over all other axes, where
  ``sums_apply(x)`` (``channel_sums.h``: one pass for the mean, one for the centred squares;
  float32 within blocks of 256 rows, float64 across them). Differentiable to any order (the
  derivatives as jnp sums)."""
  return _sums_call("channel_moments", x.shape[-1], x)


@channel_moments.defjvp
def _channel_moments_jvp(primals, tangents):
  (x,), (dx,) = primals, tangents
  mean, var = channel_moments(x)
  positions = x.size // x.shape[-1]
  # d var = 2 sum((x - mean) (dx - d mean)) / M, and sum(x - mean) = 0 drops d mean.
  return (mean, var), (_sum_over_positions(dx) / positions,
                       2 * _sum_over_positions((x - per_channel(mean, x.ndim)) * dx)
                       / positions)


@jax.custom_jvp
def channel_grad_sums(g: jax.Array, x: jax.Array, mean: jax.Array) -> tuple[jax.Array,
                                                                             jax.Array]:
  """``(Σ g, Σ g (x - mean))`` per channel over all other axes, in one pass over ``g`` and
  ``x`` (same shape, where ``sums_apply``; ``mean: (C,)``): BatchNorm's backward sums.
  Differentiable to any order."""
  return _sums_call("channel_grad_sums", x.shape[-1], g, x, mean)


@channel_grad_sums.defjvp
def _channel_grad_sums_jvp(primals, tangents):
  (g, x, mean), (dg, dx, dmean) = primals, tangents
  return channel_grad_sums(g, x, mean), (
      _sum_over_positions(dg),
      _sum_over_positions(dg * (x - per_channel(mean, x.ndim))
                          + g * (dx - per_channel(dmean, x.ndim))))


# The two sums as ops.hand.batch_norm takes them (its ``sums`` argument).
CHANNEL_SUMS = ChannelSums(channel_moments, channel_grad_sums, sums_apply)
