"""oneDNN's convolutions inside jitted JAX code on the CPU, through XLA's FFI.

XLA's CPU backend runs convolutions with Eigen (or YNNPACK); on this project's ResNet layers
oneDNN, the library PyTorch's CPU convolutions use, computes the forward 1.7-2x and the
gradients up to 2.2x faster (docs/benchmarks.md, "oneDNN convolutions through XLA's FFI";
the 8x8x64 weight gradient ties). XLA cannot reach oneDNN's convolutions itself here
(its oneDNN convolution rewrite is compiled only into MKL builds of XLA), so
``onednn_conv.cc`` wraps them as three FFI handlers (forward, input gradient, weight
gradient), built against the pinned ``onednn-cpu-gomp`` wheel by ``python -m
cnn_jax.ops.onednn build`` (``make`` runs it).

The handlers run the stride-1, padding-1 3x3 layers (even sizes, channels multiples of 8 in
and 16 out: every stage of the CIFAR ResNets) as Winograd F(2x2, 3x3) instead
(``winograd_f2x3.h``, 2.25x fewer multiplications; the ResNet-20 train step 1.3x faster than
oneDNN's direct algorithm, docs/benchmarks.md, ninth session) unless traced inside
``use(True, winograd=0)``; ``use(True, winograd=4)`` takes F(4x4, 3x3) where the sizes are
multiples of 4 (``winograd_f4x3.h``: faster again, less accurate); ``winograd_calls(tile)``
counts how many ran.

The same library holds two helpers for the hand models: ``materialize(x)``, an identity
XLA cannot fuse through (residual stages store each block's output with it), and BatchNorm's
channel sums in one pass (``channel_moments``, ``channel_grad_sums``; ``channel_sums.h``),
used by ``ops.hand.batch_norm`` where ``sums_apply``.

``correlate(x, w, spec)`` is differentiable to any order: each of the three is linear in each
argument, and the vector-Jacobian products of each are the other two (derived at
``_forward``), so grad-of-grad stays on oneDNN too.

``ops.hand.correlate`` / ``convolve`` call this where ``applies`` (float32, 1-D or 2-D,
ungrouped, zero padding, on the CPU, the library built, and not switched off); everything
else runs XLA's convolutions as before. Switched off by ``use(False)`` around tracing (the
trainer does so for ``cpu_convolutions="eigen"`` / ``"xla_default"``) or for a whole process
by the environment variable ``CNN_JAX_ONEDNN=0``.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import functools
import os
import shutil
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax.ops import correlation
from cnn_jax.ops.normalization import per_channel

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "onednn_conv.cc")
HEADERS = tuple(os.path.join(os.path.dirname(SOURCE), name)
                for name in ("winograd_f2x3.h", "winograd_f4x3.h", "channel_sums.h"))
WINOGRAD_TILES = (0, 2, 4)  # largest Winograd output tile: none, F(2x2, 3x3), F(4x4, 3x3)
LIBRARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_onednn_conv.so")
DISABLE_VARIABLE = "CNN_JAX_ONEDNN"
_TARGETS = {"forward": "CnnJaxOnednnConvForward",
            "input_grad": "CnnJaxOnednnConvBackwardData",
            "weight_grad": "CnnJaxOnednnConvBackwardWeights",
            "materialize": "CnnJaxMaterialize",
            "channel_moments": "CnnJaxChannelMoments",
            "channel_grad_sums": "CnnJaxChannelGradSums"}


# ---------------------------------------------------------------------------------------------
# Build and load
# ---------------------------------------------------------------------------------------------


def build() -> tuple[bool, str]:
  """Compiles ``onednn_conv.cc`` into ``_onednn_conv.so`` next to it (atomically).

  Returns:
    ``(built, message)``: one line saying what happened, or what is missing and how to get it.
  """
  compiler = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
  # The onednn wheels install lib/libdnnl.so* and include/oneapi/dnnl/ under the environment.
  include = os.path.join(sys.prefix, "include")
  libdir = os.path.join(sys.prefix, "lib")
  if compiler is None:
    return False, ("oneDNN convolutions not built: no C++ compiler (g++) found; install one "
                   "and run `python -m cnn_jax.ops.onednn build` (XLA's convolutions are used "
                   "meanwhile)")
  if not os.path.exists(os.path.join(include, "oneapi", "dnnl", "dnnl.hpp")):
    return False, (f"oneDNN convolutions not built: no oneDNN headers under {include}; "
                   "`pip install -r requirements.txt` installs onednn-devel-cpu-gomp")
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(LIBRARY))
  os.close(fd)
  command = [compiler, "-O2", "-std=c++17", "-fopenmp", "-shared", "-fPIC", "-w", SOURCE,
             "-o", tmp, f"-I{jax.ffi.include_dir()}", f"-I{include}", f"-L{libdir}", "-ldnnl",
             f"-Wl,-rpath,{libdir}"]
  result = subprocess.run(command, capture_output=True, text=True, check=False)
  if result.returncode != 0:
    os.unlink(tmp)
    lines = result.stderr.strip().splitlines() or ["(no output)"]
    first_error = next((line for line in lines if "error" in line), lines[-1])
    return False, f"oneDNN convolutions not built: {compiler} failed: {first_error}"
  os.chmod(tmp, 0o755)
  os.replace(tmp, LIBRARY)
  return True, f"built {LIBRARY}"


@functools.lru_cache(maxsize=None)
def _load() -> str | None:
  """Loads the built library and registers its handlers; ``None`` on success, else why not."""
  if not os.path.exists(LIBRARY):
    return f"{LIBRARY} is not built (run `make` or `python -m cnn_jax.ops.onednn build`)"
  for source in (SOURCE,) + HEADERS:
    if os.path.getmtime(LIBRARY) < os.path.getmtime(source):
      return f"{LIBRARY} is older than {source}: rebuild it (`python -m cnn_jax.ops.onednn build`)"
  try:
    library = ctypes.cdll.LoadLibrary(LIBRARY)
  except OSError as error:
    return f"cannot load {LIBRARY}: {error}"
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


def unavailable_reason() -> str | None:
  """Why oneDNN's convolutions cannot run here, or ``None`` if they can."""
  if os.environ.get(DISABLE_VARIABLE, "1") == "0":
    return f"switched off by {DISABLE_VARIABLE}=0"
  if jax.default_backend() != "cpu":
    return f"the default backend is {jax.default_backend()}, not the CPU"
  return _load()


def available() -> bool:
  """Whether oneDNN's convolutions are built, loadable and not switched off."""
  return unavailable_reason() is None


# ---------------------------------------------------------------------------------------------
# When they are used
# ---------------------------------------------------------------------------------------------

_USE = contextvars.ContextVar("cnn_jax_onednn_use", default=None)
_WINOGRAD = contextvars.ContextVar("cnn_jax_onednn_winograd", default=2)


@contextlib.contextmanager
def use(enabled: bool, winograd: int = 2):
  """Within the block (read at trace time), ``applies`` is False if ``enabled`` is False, and
  ``winograd`` is the largest Winograd output tile for the layers it takes (``WINOGRAD_TILES``):
  0 runs every convolution on oneDNN's direct algorithm, 2 (the default) F(2x2, 3x3)
  (``winograd_f2x3.h``), 4 F(4x4, 3x3) where H and W are multiples of 4 (``winograd_f4x3.h``:
  1.5x faster, ~10-20x larger float32 rounding), F(2x2, 3x3) elsewhere.

  ``use(True)`` restores the default; it cannot make an unavailable library run.

  Raises:
    ValueError: ``winograd`` is not in ``WINOGRAD_TILES``.
  """
  if winograd not in WINOGRAD_TILES or isinstance(winograd, bool):
    raise ValueError(f"winograd={winograd!r} is not allowed: give one of "
                     f"{', '.join(map(str, WINOGRAD_TILES))}")
  token, winograd_token = _USE.set(bool(enabled)), _WINOGRAD.set(int(winograd))
  try:
    yield
  finally:
    _WINOGRAD.reset(winograd_token)
    _USE.reset(token)


def applies(x, w, spec: correlation.WindowSpec, groups: int) -> bool:
  """Whether ``correlate(x, w, spec)`` here would run on oneDNN: float32, 1-D or 2-D,
  ungrouped, zero (not circular) padding, switched on and available."""
  return (_USE.get() is not False and spec.num_dims in (1, 2) and groups == 1
          and not spec.circular and x.dtype == jnp.float32 and w.dtype == jnp.float32
          and available())


# ---------------------------------------------------------------------------------------------
# The differentiable op
# ---------------------------------------------------------------------------------------------


def _attributes(geometry):
  stride, dilation, pads = geometry
  return dict(stride=np.asarray(stride, np.int64), dilation=np.asarray(dilation, np.int64),
              pad_lo=np.asarray([lo for lo, _ in pads], np.int64),
              pad_hi=np.asarray([hi for _, hi in pads], np.int64),
              winograd=np.int64(_WINOGRAD.get()))


def _call(kind, out_shape, a, b, geometry):
  return jax.ffi.ffi_call(_TARGETS[kind], jax.ShapeDtypeStruct(out_shape, jnp.float32),
                          vmap_method="sequential")(a, b, **_attributes(geometry))


def _out_shape(x_shape, w_shape, geometry):
  stride, dilation, pads = geometry
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


def correlate(x: jax.Array, w: jax.Array, spec: correlation.WindowSpec) -> jax.Array:
  """``ops.correlate(x, w, ...)`` on oneDNN for a ``spec`` where ``applies``.

  Args:
    x: ``(N, *spatial, C_in)`` float32, 1 or 2 spatial dims.
    w: ``(*kernel, C_in, C_out)`` float32.
    spec: the window spec (``correlation.window_spec``), zero padding.

  Returns:
    ``(N, *spec.out_spatial, C_out)``.
  """
  if spec.num_dims == 1:  # as a 2-D correlation over a height of 1
    geometry = ((1,) + spec.stride, (1,) + spec.dilation, ((0, 0),) + spec.pads)
    y = _forward(x[:, None], w[None], geometry)
    return y[:, 0]
  return _forward(x, w, (spec.stride, spec.dilation, spec.pads))


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
  """``x``, computed once into memory: an identity that XLA cannot fuse into its consumers,
  where the FFI library runs (not switched off, built, on the CPU); plain ``x`` elsewhere.
  Differentiable to any order, forward or reverse (the derivative is the identity).

  Why: XLA's CPU fusion copies a cheap elementwise producer into every consumer that can fuse
  it. A residual stage's stream ``x_{k+1} = relu(bn(conv(...)) + x_k)`` feeds the next block's
  convolution (a call, so it is stored) and the next block's add (a fusion, so it is
  recomputed there, from ``x_{k-1}``, ... back to the stage's start): block ``k``'s fusion
  reads ``k`` convolution outputs, quadratic work per stage (ResNet-56: ~200 ms of a 1.6 s
  step, docs/benchmarks.md, tenth session). The result aliases ``x``'s buffer, so nothing is
  copied when ``x`` has no other consumer.
  """
  if _USE.get() is False or not available():
    return x
  return _materialize(x)


# ---------------------------------------------------------------------------------------------
# BatchNorm's channel sums, one pass over the activations
# ---------------------------------------------------------------------------------------------


def sums_apply(x: jax.Array) -> bool:
  """Whether ``channel_moments`` / ``channel_grad_sums`` take ``x``: float32, channels (the
  last axis) a multiple of 8, the library available and not switched off by ``use(False)``."""
  return (_USE.get() is not False and x.dtype == jnp.float32 and x.ndim >= 2
          and x.shape[-1] % 8 == 0 and available())


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


def main(argv=None) -> int:
  """``python -m cnn_jax.ops.onednn build`` (prints one line; exit 0 either way, since the
  library falls back to XLA's convolutions) or ``status``."""
  args = sys.argv[1:] if argv is None else argv
  if args == ["build"]:
    _, message = build()
    print(message)
    return 0
  if args == ["status"]:
    reason = unavailable_reason()
    print("oneDNN convolutions: " + ("available" if reason is None else f"unavailable: {reason}"))
    return 0
  print("usage: python -m cnn_jax.ops.onednn build|status", file=sys.stderr)
  return 2


if __name__ == "__main__":
  sys.exit(main())
