"""Correlation, convolution and locally connected layers with hand-written backward passes.

Each public function has the signature, the argument checks and the forward values of its
namesake in ``cnn_jax.ops``; only its VJP differs: a ``jax.custom_vjp`` whose backward is
derived in the docstring and built from ``lax`` convolutions, strided slices and einsums.
The backward functions are themselves made of differentiable ops, so grad-of-grad works
(JAX differentiates the backward rule by autodiff).

Notation, per spatial dim: input size ``n``, kernel ``k``, stride ``s``, dilation ``d``
(extent ``e = d(k-1)+1``), padding ``lo, hi`` (``n_p = lo + n + hi``), output size ``m``.
``x_p`` is the padded input and ``g = dL/dy`` the output cotangent.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
from jax import lax

from cnn_jax import ops
from cnn_jax.ops import correlation
from cnn_jax.ops import shapes

_SPATIAL_LETTERS = {1: "W", 2: "HW", 3: "DHW"}


# ---------------------------------------------------------------------------------------------
# Adjoints of the building blocks shared by every windowed op.
# ---------------------------------------------------------------------------------------------


def unpad(dxp: jax.Array, spec: correlation.WindowSpec) -> jax.Array:
  """Adjoint of ``correlation.pad_input``: gradient on the padded input → gradient on ``x``.

  Zero (or constant) padding holds no parameter, so its gradient is dropped: crop ``[lo, lo+n)``.
  Circular padding copies ``x[n-lo:]`` in front and ``x[:hi]`` behind, so those gradients are
  added back onto the entries they were copied from ("fold").

  Args:
    dxp: ``(N, *padded_spatial, C)``.
    spec: the window spec the forward padded with.

  Returns:
    ``(N, *spatial, C)``.
  """
  for dim, (lo, hi) in enumerate(spec.pads):
    axis = 1 + dim
    n = dxp.shape[axis] - lo - hi
    middle = lax.slice_in_dim(dxp, lo, lo + n, axis=axis)
    if spec.circular:
      if lo:
        front = lax.slice_in_dim(dxp, 0, lo, axis=axis)
        middle = _add_at(middle, front, n - lo, axis)
      if hi:
        back = lax.slice_in_dim(dxp, lo + n, lo + n + hi, axis=axis)
        middle = _add_at(middle, back, 0, axis)
    dxp = middle
  return dxp


def _add_at(a, b, start, axis):
  # a[..., start:start + len(b), ...] += b along `axis`, as a pad (no scatter needed).
  widths = [(0, 0, 0)] * a.ndim
  widths[axis] = (start, a.shape[axis] - start - b.shape[axis], 0)
  return a + lax.pad(b, jnp.array(0, b.dtype), widths)


def scatter_patches(dpatches: jax.Array, spec: correlation.WindowSpec,
                    x_shape) -> jax.Array:
  """Adjoint of ``correlation.extract_patches`` (followed by ``unpad``).

  ``extract_patches`` copies ``x_p[o*s + t*d]`` into patch ``(o, t)``; its adjoint adds each
  patch entry's gradient back onto the input entry it was copied from, so an input entry
  covered by several overlapping windows accumulates all of their gradients.

  Args:
    dpatches: ``(N, *out_spatial, *kernel, C)``.
    spec: the window spec of the forward.
    x_shape: ``(N, *spatial, C)`` of the unpadded input.

  Returns:
    ``(N, *spatial, C)``.
  """
  offsets = itertools.product(*(range(k) for k in spec.kernel))
  prefix = (slice(None),) * (1 + spec.num_dims)
  return place_taps([dpatches[prefix + offset] for offset in offsets], spec, x_shape)


def spread_window(g: jax.Array, weights: jax.Array, spec: correlation.WindowSpec,
                  x_shape) -> jax.Array:
  """Adjoint of a window-weighted sum with the same weights for every channel.

  ``y[o] = sum_t weights[t] x_p[o*s + t*d]`` (average and weighted-average pooling: a
  depthwise correlation), so ``dL/dx_p[i] = sum_{o, t: o*s + t*d = i} weights[t] g[o]``: each
  tap puts ``weights[t] g`` back where it read (``place_taps``). Unlike
  ``correlate_input_grad`` with a depthwise kernel, no grouped convolution runs: the placed
  copies are elementwise, and XLA fuses their sum into one pass.

  Args:
    g: ``(N, *out_spatial, C)``.
    weights: ``(*kernel,)``.
    spec: the window spec of the forward.
    x_shape: ``(N, *spatial, C)`` of the unpadded input.

  Returns:
    ``(N, *spatial, C)``.
  """
  offsets = itertools.product(*(range(k) for k in spec.kernel))
  return place_taps([weights[offset] * g for offset in offsets], spec, x_shape)


def place_taps(tap_grads, spec: correlation.WindowSpec, x_shape) -> jax.Array:
  """Adjoint of ``correlation.window_taps`` (followed by ``unpad``).

  ``window_taps`` reads ``tap_t[o] = x_p[o*s + t*d]``, so the gradient ``dL/dtap_t`` goes back
  to ``x_p[o*s + t*d]``: placed there by ``lax.pad`` (``s-1`` interior zeros, shifted by
  ``t*d``), the taps' placements summed (XLA fuses the sum into one pass), then cropped or
  folded (``unpad``).

  Args:
    tap_grads: one ``(N, *out_spatial, C)`` array per kernel tap, in ``window_taps`` order.
    spec: the window spec of the forward.
    x_shape: ``(N, *spatial, C)`` of the unpadded input.

  Returns:
    ``(N, *spatial, C)``.
  """
  padded = _padded_spatial(spec, x_shape)
  offsets = itertools.product(*(range(k) for k in spec.kernel))
  dxp = None
  for offset, tap in zip(offsets, tap_grads, strict=True):
    placed = _place_tap(tap, offset, spec, padded)
    dxp = placed if dxp is None else dxp + placed
  return unpad(dxp, spec)


def _padded_spatial(spec: correlation.WindowSpec, x_shape) -> list[int]:
  return [n + lo + hi for n, (lo, hi) in zip(x_shape[1:-1], spec.pads)]


def _place_tap(tap, offset, spec: correlation.WindowSpec, padded):
  # tap[n, o] -> the padded input grid at o*s + t*d: interior padding (s - 1 zeros) spreads
  # the entries, edge padding shifts them by t*d; zeros elsewhere.
  widths = [(0, 0, 0)]
  for t, s, d, m, n_p in zip(offset, spec.stride, spec.dilation, spec.out_spatial, padded):
    start = t * d
    widths.append((start, n_p - start - ((m - 1) * s + 1), s - 1))
  widths.append((0, 0, 0))
  return lax.pad(tap, jnp.array(0, tap.dtype), widths)


def _stride1_conv(lhs, rhs, pads, **kwargs):
  """``lax.conv_general_dilated`` with window stride 1 and ``pads`` that may be negative (a
  crop): the conv runs with the negative parts as 0 and its result is sliced instead. XLA's
  CPU float32 convolutions compute wrong values with a negative low padding (jax 0.10.2; up to
  garbage, docs/gradients.md); with stride 1, cropping ``c`` positions of the (dilated) input
  crops ``c`` positions of the output."""
  clipped = [(max(lo, 0), max(hi, 0)) for lo, hi in pads]
  y = lax.conv_general_dilated(lhs, rhs, window_strides=(1,) * len(pads), padding=clipped,
                               **kwargs)
  crop = tuple(slice(max(-lo, 0), y.shape[1 + dim] - max(-hi, 0))
               for dim, (lo, hi) in enumerate(pads))
  return y[(slice(None),) + crop]


def _dimension_numbers(num_dims):
  letters = _SPATIAL_LETTERS[num_dims]
  return ("N" + letters + "C", letters + "IO", "N" + letters + "C")


def _swap_channels(w, groups):
  """``(*K, C_in/G, C_out)`` → ``(*K, C_out/G, C_in)``: per group, transpose in ↔ out."""
  *kernel, cin_g, c_out = w.shape
  w = w.reshape(*kernel, cin_g, groups, c_out // groups)
  w = jnp.swapaxes(w, -3, -1)  # (*K, C_out/G, G, C_in/G)
  return w.reshape(*kernel, c_out // groups, groups * cin_g)


# dL/dx by phases (correlate_input_grad_polyphase) is used at stride 2 with dilation 1. Measured
# on the 2-core CPU against the spread-g conv (correlate_input_grad_dilated), batch 128, ms:
# 3x3 32x32 16->32 stride 2 15.6 vs 9.3, 16x16 32->64 9.9 vs 7.3, 1x1 32x32 64->128 28.1 vs
# 19.7, 5x5 61.2 vs 24.7; but 3x3 at stride 3 8.4 vs 8.6 and stride 4 5.7 vs 6.6, where most
# phases hold one tap or none (docs/benchmarks-history.md, "Strided convolutions' input gradient by
# phases").
POLYPHASE_MAX_STRIDE = 2


def polyphase_is_faster(spec: correlation.WindowSpec) -> bool:
  """Whether ``correlate_input_grad`` takes the phases (True) or the spread ``g`` (False)."""
  return (all(d == 1 for d in spec.dilation)
          and 1 < max(spec.stride) <= POLYPHASE_MAX_STRIDE)


def correlate_input_grad(g, w, spec: correlation.WindowSpec, x_shape, groups):
  """``dL/dx`` of ``correlate``, by the faster of two formulations (same values).

  ``correlate_input_grad_polyphase`` at stride 2 without dilation (``polyphase_is_faster``),
  else ``correlate_input_grad_dilated``. Args and Returns: as those.
  """
  if polyphase_is_faster(spec):
    return correlate_input_grad_polyphase(g, w, spec, x_shape, groups)
  return correlate_input_grad_dilated(g, w, spec, x_shape, groups)


def correlate_input_grad_polyphase(g, w, spec: correlation.WindowSpec, x_shape, groups):
  """``dL/dx`` of a correlation without dilation, one stride-1 correlation per phase.

  With ``d = 1``, ``dL/dx_p[i] = sum_{o, t: o*s + t = i} g[o] w[t]``. Write ``i = q*s + r``
  with phase ``r`` in ``[0, s)``: only the taps ``t = r + j*s`` reach phase ``r``, from
  ``o = q - j``, so ``dL/dx_p[q*s + r] = sum_j g[q - j] w[r + j*s]``, a FULL correlation of
  ``g`` itself with the sub-kernel ``w[r::s]`` (flipped, channels swapped per group). Per
  spatial dim alike; the ``prod(s)`` phases together multiply each ``g`` entry by each weight
  once, as the forward does, where ``correlate_input_grad_dilated`` also multiplies the
  ``s - 1`` zeros spread between the entries of ``g``. The phases are then interleaved (one
  copy) and the padding cropped or folded (``unpad``). A phase that no tap reaches (``r >= k``,
  e.g. a 1x1 kernel) is zero.

  Args, Returns: as ``correlate_input_grad_dilated``; ``spec.dilation`` must be all ones.
  """
  if any(d != 1 for d in spec.dilation):
    raise ValueError(f"dilation {spec.dilation}: the phases need dilation 1")
  num_dims = spec.num_dims
  padded = _padded_spatial(spec, x_shape)
  # Every phase is computed on the same grid of ceil(n_p / s) positions per dim.
  grid = [-(-n_p // s) for n_p, s in zip(padded, spec.stride)]
  phases = {}
  for phase in itertools.product(*(range(s) for s in spec.stride)):
    taps = [len(range(r, k, s)) for r, k, s in zip(phase, spec.kernel, spec.stride)]
    if 0 in taps:
      continue
    sub = w[tuple(slice(r, None, s) for r, s in zip(phase, spec.stride))]
    kernel = _swap_channels(correlation.flip_kernel(sub), groups)
    # FULL correlation: taps - 1 zeros in front; g is cut or zero-extended to the grid behind.
    pads = [(t - 1, q - m) for t, q, m in zip(taps, grid, g.shape[1:-1])]
    phases[phase] = _stride1_conv(
        g, kernel, pads, dimension_numbers=_dimension_numbers(num_dims),
        feature_group_count=groups)
  some = next(iter(phases.values()))
  stacked = jnp.stack([phases.get(phase, jnp.zeros_like(some))
                       for phase in itertools.product(*(range(s) for s in spec.stride))])
  # (s_1, ..., s_D, N, q_1, ..., q_D, C) -> (N, q_1, s_1, ..., q_D, s_D, C): position q*s + r.
  n, c = g.shape[0], x_shape[-1]
  stacked = stacked.reshape(*spec.stride, n, *grid, c)
  order = [num_dims] + [a for dim in range(num_dims) for a in (num_dims + 1 + dim, dim)]
  dxp = stacked.transpose(order + [2 * num_dims + 1])
  dxp = dxp.reshape(n, *(q * s for q, s in zip(grid, spec.stride)), c)
  dxp = dxp[(slice(None),) + tuple(slice(0, p) for p in padded)]
  return unpad(dxp, spec)


def correlate_input_grad_dilated(g, w, spec: correlation.WindowSpec, x_shape, groups):
  """``dL/dx`` of ``correlate``: a transposed correlation.

  ``y[o] = sum_t x_p[o*s + t*d] w[t]``, so ``dL/dx_p[i] = sum_{o,t: o*s + t*d = i} g[o] w[t]``.
  Spread ``g`` to the input grid by inserting ``s-1`` zeros between its entries
  (``g_s[o*s] = g[o]``); then ``dL/dx_p[i] = sum_t g_s[i - t*d] w[t]``: the FULL correlation
  (pad ``e-1`` both sides) of ``g_s`` with the kernel flipped in space and its in/out channels
  swapped (per group). Positions past ``(m-1)s + e`` were never read (stride does not divide),
  so they get zeros (extra high padding ``r``); padding is then cropped (zeros) or folded back
  (circular). For zero padding the crop is folded into the conv's padding, which may be negative
  (``_stride1_conv`` does it as a slice: XLA's CPU float32 convolutions get negative padding wrong).

  Args:
    g: ``(N, *out_spatial, C_out)``.
    w: ``(*kernel, C_in/G, C_out)``.
    spec: the forward's window spec.
    x_shape: ``(N, *spatial, C_in)``.
    groups: the forward's groups.

  Returns:
    ``(N, *spatial, C_in)``.
  """
  pads = []
  for n, (lo, hi), k, s, d, m in zip(x_shape[1:-1], spec.pads, spec.kernel, spec.stride,
                                     spec.dilation, spec.out_spatial):
    e = shapes.effective_kernel(k, d)
    untouched = lo + n + hi - ((m - 1) * s + e)
    if spec.circular:  # the whole padded gradient, folded afterwards
      pads.append((e - 1, e - 1 + untouched))
    else:  # crop while convolving
      pads.append((e - 1 - lo, e - 1 + untouched - hi))
  # The swapped kernel is materialised (a cheap transpose of a small array), not relabelled:
  # XLA's CPU backend runs a convolution with Eigen only in its canonical form (NHWC input,
  # HWIO kernel, NHWC output) and rewrites other forms into it only at the top level of a
  # program, not inside loop bodies such as ``nn.scan``'s, where a relabelled conv runs ~30x
  # slower (docs/benchmarks-history.md, "Why autodiff inside `nn.scan` is slow on CPU").
  kernel = _swap_channels(correlation.flip_kernel(w), groups)
  dx = _stride1_conv(
      g, kernel, pads, lhs_dilation=spec.stride, rhs_dilation=spec.dilation,
      dimension_numbers=_dimension_numbers(spec.num_dims), feature_group_count=groups)
  return unpad(dx, spec) if spec.circular else dx


WEIGHT_METHODS = ("auto", "conv", "taps")
# "auto" takes "taps" for grouped kernels, 1x1 kernels and from TAPS_MIN_CHANNELS to
# TAPS_MAX_CHANNELS input channels per group, "conv" otherwise (resolve_weight_method).
TAPS_MIN_CHANNELS = 8
TAPS_MAX_CHANNELS = 16


def resolve_weight_method(method: str, kernel_shape, channels_per_group: int,
                          groups: int) -> str:
  """``"auto"`` → ``"conv"`` or ``"taps"``, the faster on XLA's CPU backend; others unchanged.

  Measured on the 2-core CPU with convolutions in Eigen (the trainer's default,
  ``cnn_jax.train.steps.compiler_options``; docs/benchmarks-history.md, "Convolutions in Eigen, not
  YNNPACK"). Alone, the conv form wins on ungrouped kernels wider than 1x1 (ResNet 3x3
  layers 1.3-2x, the 3-channel stem 6x, 5x5 and 7x7 ~2x); it loses badly on grouped kernels (a
  ``batch_group_count`` conv: 3x3 64->64 in 8 groups 279 ms vs 3 ms by taps) and roughly ties
  on 1x1 kernels. Inside the whole ResNet-20 train step, where the weight gradient runs beside
  the input gradient's conv, taps on the 16-channel layers and conv on the wider ones was the
  fastest mix (114 images/s vs 108 all-conv and 111 taps from 8 channels up; same run).
  """
  if method not in WEIGHT_METHODS:
    raise ValueError(f"weight_method={method!r} is not allowed: give one of "
                     f"{', '.join(WEIGHT_METHODS)}")
  if method == "auto":
    taps = (groups > 1 or all(k == 1 for k in kernel_shape)
            or TAPS_MIN_CHANNELS <= channels_per_group <= TAPS_MAX_CHANNELS)
    return "taps" if taps else "conv"
  return method


def correlate_weight_grad_taps(x, g, spec: correlation.WindowSpec, kernel_shape, groups,
                               batch_chunk: int | None = None):
  """``dL/dw`` of ``correlate`` as one matmul per kernel tap (no patch array in memory).

  ``dL/dw[t] = sum_{n, o} x_p[n, o*s + t*d]^T g[n, o]``: for tap ``t`` take the strided slice
  ``x_p[:, t*d :: s]`` (the inputs every output position read through that tap, shape
  ``(N, *out_spatial, C_in)``) and contract it with ``g`` over examples and positions, a
  ``(C_in, N·P) @ (N·P, C_out)`` product (per group). Same sum as ``correlate_weight_grad``,
  ordered differently. Circular padding is the padded input itself (``pad_input``).

  The sum over examples is split into chunks of ``batch_chunk`` examples, accumulated by a
  ``lax.scan``: each tap's slice is a copy, and for a chunk the copies stay in the CPU's cache
  instead of streaming the whole batch through memory once per tap. ``None`` picks the chunk
  from the layer's size (``taps_batch_chunk``); the whole batch is one chunk when it is small.

  Args and Returns: as ``correlate_weight_grad``; ``batch_chunk``: examples per chunk.
  """
  n = x.shape[0]
  chunk = batch_chunk or taps_batch_chunk(spec, x.shape, x.dtype.itemsize)
  if chunk >= n:
    return _weight_grad_taps(x, g, spec, kernel_shape, groups)
  whole = n // chunk * chunk

  # The running sum is kept in float32 at least, so that a bfloat16 layer's gradient is not
  # rounded once per chunk.
  dtype = jnp.result_type(x, g)
  acc_dtype = jnp.promote_types(dtype, jnp.float32)

  def add_chunk(total, chunk_xg):
    return total + _weight_grad_taps(*chunk_xg, spec, kernel_shape, groups).astype(acc_dtype), None

  chunks = (x[:whole].reshape(n // chunk, chunk, *x.shape[1:]),
            g[:whole].reshape(n // chunk, chunk, *g.shape[1:]))
  zeros = jnp.zeros((*kernel_shape, x.shape[-1] // groups, g.shape[-1]), acc_dtype)
  dw, _ = lax.scan(add_chunk, zeros, chunks)
  if whole < n:  # the examples left over after the last whole chunk
    dw = dw + _weight_grad_taps(x[whole:], g[whole:], spec, kernel_shape, groups).astype(acc_dtype)
  return dw.astype(dtype)


# Chunking pays once a layer's padded input no longer fits the last-level cache. Measured on
# the 2-core CPU (8 MiB L3, 512 KiB L2 per core): a grouped 3x3 128->128 in 32 groups, 16x16,
# batch 64 (10.6 MB padded input) 88 ms whole vs 44 ms in chunks of 2 examples; 4 groups of
# 64 channels at 32x32, batch 128: 210 vs 114 ms; the ResNet 32x32 16->16 taps 50 -> 28.5 ms
# in chunks of 8; an 8x8 64->64 layer (3.3 MB) was fastest whole (docs/benchmarks-history.md,
# "Weight gradient by taps, in cache-sized chunks").
TAPS_CHUNK_ABOVE_BYTES = 4 * 2**20
TAPS_CHUNK_BYTES = 640 * 2**10


def taps_batch_chunk(spec: correlation.WindowSpec, x_shape, itemsize: int) -> int:
  """Examples per chunk for ``correlate_weight_grad_taps``: the whole batch while its padded
  input is at most ``TAPS_CHUNK_ABOVE_BYTES``, else the largest power of two whose padded
  input fits in ``TAPS_CHUNK_BYTES`` (at least 1)."""
  per_example = itemsize * x_shape[-1] * prod(_padded_spatial(spec, x_shape))
  if per_example * x_shape[0] <= TAPS_CHUNK_ABOVE_BYTES:
    return x_shape[0]
  chunk = 1
  while 2 * chunk * per_example <= TAPS_CHUNK_BYTES:
    chunk *= 2
  return chunk


def _weight_grad_taps(x, g, spec: correlation.WindowSpec, kernel_shape, groups):
  # One chunk of correlate_weight_grad_taps: every tap's matmul over all of x's examples.
  xp = correlation.pad_input(x, spec)
  c_per, c_out = x.shape[-1] // groups, g.shape[-1]
  g_flat = g.reshape(-1, groups, c_out // groups)
  taps = []
  for offset in itertools.product(*(range(k) for k in kernel_shape)):
    index = (slice(None),) + tuple(
        slice(t * d, t * d + (m - 1) * s + 1, s)
        for t, d, s, m in zip(offset, spec.dilation, spec.stride, spec.out_spatial))
    window = xp[index].reshape(-1, groups, c_per)
    taps.append(jnp.einsum("pgc,pgo->cgo", window, g_flat,
                           precision=lax.Precision.HIGHEST).reshape(c_per, c_out))
  return jnp.stack(taps).reshape(*kernel_shape, c_per, c_out)


def correlate_weight_grad(x, g, spec: correlation.WindowSpec, kernel_shape, groups):
  """``dL/dw`` of ``correlate``: correlation of the padded input with the cotangent.

  ``dL/dw[t, c, c'] = sum_{n, o} x_p[n, o*s + t*d, c] g[n, o, c']``: every shared weight
  accumulates the gradient of every position it touched. Read as a correlation over ``t``,
  that is ``x_p`` (channels as the batch, examples as the contracted features) correlated with
  ``g`` used as a kernel dilated by ``s``, stepping by ``d``. With groups, input-channel group
  ``j`` pairs only with output-channel group ``j`` (``batch_group_count``).

  Args:
    x: ``(N, *spatial, C_in)``.
    g: ``(N, *out_spatial, C_out)``.
    spec: the forward's window spec.
    kernel_shape: the spatial kernel ``(*kernel,)``.
    groups: the forward's groups.

  Returns:
    ``(*kernel, C_in/G, C_out)``.
  """
  num_dims = spec.num_dims
  # Only the span the windows read counts: (k-1)d + (m-1)s + 1 per dim of the padded input.
  span = [(k - 1) * d + (m - 1) * s + 1
          for k, s, d, m in zip(kernel_shape, spec.stride, spec.dilation, spec.out_spatial)]
  if spec.circular:
    xp = correlation.pad_input(x, spec)
    for dim, size in enumerate(span):
      xp = lax.slice_in_dim(xp, 0, size, axis=1 + dim)
    pads = ((0, 0),) * num_dims
  else:
    # Zero padding inside the conv; a negative high pad drops the rows no window reads.
    xp = x
    pads = tuple((lo, size - lo - n)
                 for (lo, _), size, n in zip(spec.pads, span, x.shape[1:-1]))
  # x_p's channel axis plays the batch, its example axis the contracted features; g is the
  # kernel (its examples the input features, its channels the output features). Both are
  # transposed into the canonical (batch, *spatial, features) / (*spatial, in, out) layout
  # first, so that XLA's CPU backend runs this conv with Eigen also inside loop bodies (see
  # ``correlate_input_grad``); the result (C_in/G, *kernel, C_out) is moved to
  # (*kernel, C_in/G, C_out).
  lhs = jnp.moveaxis(xp, (0, num_dims + 1), (num_dims + 1, 0))  # (C_in, *span, N)
  rhs = jnp.moveaxis(g, 0, num_dims)  # (*out_spatial, N, C_out)
  dw = lax.conv_general_dilated(
      lhs, rhs, window_strides=spec.dilation, padding=pads,
      rhs_dilation=spec.stride, dimension_numbers=_dimension_numbers(num_dims),
      batch_group_count=groups)
  return jnp.moveaxis(dw, 0, num_dims)


# ---------------------------------------------------------------------------------------------
# correlate / convolve
# ---------------------------------------------------------------------------------------------


# XLA's CPU backend runs a grouped convolution (feature_group_count) at ~1.2 GFLOP/s per
# input channel per group (4 channels: 1.3 GFLOP/s), against 40-60 GFLOP/s for a dense one.
# A dense conv with the block-diagonal kernel (zeros between groups) does G times the work
# and still wins for narrow groups. Measured on the 2-core CPU (forward, Eigen convolutions,
# ms, grouped vs block-diagonal): 16x16, 8 groups of 4: 53.9 vs 10.5; 4 of 6: 36.9 vs 6.7;
# 2 of 10: 23.9 vs 8.7; 8x8, 4 of 12: 10.4 vs 5.7; 32 groups of 4: 116 vs 70; but 8 groups
# of 8 at 8x8: 8.7 vs 9.5, 8 of 16 at 4x4: 3.8 vs 9.3, 4 of 16 at 32x32: 116 vs 154
# (docs/benchmarks-history.md, "Grouped convolutions as block-diagonal dense ones").
DENSE_MAX_CHANNELS_PER_GROUP = 4
DENSE_MAX_GROUPS = 4
DENSE_FEW_GROUPS_MAX_CHANNELS = 15


def dense_is_faster(channels_per_group: int, groups: int) -> bool:
  """Whether a grouped conv with these input channels per group runs faster as a dense conv
  with the block-diagonal kernel (``block_diagonal``): at most
  ``DENSE_MAX_CHANNELS_PER_GROUP`` channels per group, or at most ``DENSE_MAX_GROUPS`` groups
  of at most ``DENSE_FEW_GROUPS_MAX_CHANNELS``."""
  return groups > 1 and (
      channels_per_group <= DENSE_MAX_CHANNELS_PER_GROUP
      or (groups <= DENSE_MAX_GROUPS and channels_per_group <= DENSE_FEW_GROUPS_MAX_CHANNELS))


def block_diagonal(w: jax.Array, groups: int) -> jax.Array:
  """``(*K, C_in/G, C_out)`` grouped kernel → ``(*K, C_in, C_out)`` dense kernel that is zero
  between different groups: input channel ``j·C_in/G + c`` meets output channel
  ``k·C_out/G + o`` with weight ``w[..., c, k·C_out/G + o]`` if ``j = k``, else 0. A dense
  correlation with it equals the grouped correlation with ``w``."""
  *kernel, c_per, c_out = w.shape
  blocks = w.reshape(*kernel, c_per, groups, c_out // groups)
  eye = jnp.eye(groups, dtype=w.dtype)
  dense = jnp.einsum("...cko,jk->...jcko", blocks, eye)  # (*K, G_in, C_in/G, G_out, C_out/G)
  return dense.reshape(*kernel, groups * c_per, c_out)


def _as_dense_if_faster(w, groups, channels_per_group):
  # (kernel, groups) for a conv: the block-diagonal dense kernel where that is faster.
  if dense_is_faster(channels_per_group, groups):
    return block_diagonal(w, groups), 1
  return w, groups


def canonical_padding(spec: correlation.WindowSpec):
  """A hashable ``padding`` that the forward ops resolve to exactly ``spec.pads`` again."""
  return "CIRCULAR" if spec.circular else spec.pads


def weight_grad(x, g, spec: correlation.WindowSpec, kernel_shape, groups, method: str):
  """``dL/dw`` of ``correlate`` by ``method`` (``"conv"`` or ``"taps"``; same values)."""
  if method == "taps":
    return correlate_weight_grad_taps(x, g, spec, kernel_shape, groups)
  return correlate_weight_grad(x, g, spec, kernel_shape, groups)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _correlate(x, w, spec, groups, method):
  w, groups = _as_dense_if_faster(w, groups, w.shape[-2])
  return ops.correlate(x, w, stride=spec.stride, padding=canonical_padding(spec),
                       dilation=spec.dilation, groups=groups)


def _correlate_fwd(x, w, spec, groups, method):
  return _correlate(x, w, spec, groups, method), (x, w)


def _correlate_bwd(spec, groups, method, residuals, g):
  x, w = residuals
  # dL/dx is a grouped conv over g: C_out/G input channels per group.
  w_dx, groups_dx = _as_dense_if_faster(w, groups, w.shape[-1] // groups)
  return (correlate_input_grad(g, w_dx, spec, x.shape, groups_dx),
          weight_grad(x, g, spec, w.shape[:spec.num_dims], groups, method))


_correlate.defvjp(_correlate_fwd, _correlate_bwd)


def correlate(x, w, *, stride=1, padding="VALID", dilation=1, groups=1, weight_method="auto"):
  """``ops.correlate`` with a hand-written backward pass.

  Forward: ``y[n, o, c'] = sum_{t, c} x_p[n, o*s + t*d, c] w[t, c, c']`` (within each group).

  Backward (one spatial dim shown; every dim alike):
    * ``dL/dx_p[i] = sum_{o, t: o*s + t*d = i} g[o] w[t]`` = FULL correlation of the
      stride-dilated ``g`` with the flipped, channel-swapped kernel (a transposed
      correlation); cropped for zero padding, folded back for circular padding
      (``correlate_input_grad``).
    * ``dL/dw[t] = sum_{n, o} x_p[o*s + t*d] g[o]`` = correlation of the padded input with
      the stride-dilated ``g``; each shared weight sums the gradients of all positions
      (``correlate_weight_grad``), or the same sum as one matmul per kernel tap
      (``correlate_weight_grad_taps``).

  Args, Returns, Raises: as ``ops.correlate``; the checks are the same functions, run first.
  One extra keyword, ``weight_method``: ``"conv"``, ``"taps"`` or ``"auto"`` (taps for grouped
  kernels, 1x1 kernels and 8-16 input channels per group, else conv: the faster one on XLA's
  CPU, see ``resolve_weight_method``). Narrow groups run their forward and dL/dx as a dense
  conv with the block-diagonal kernel (``dense_is_faster``).
  """
  num_dims = correlation.check_kernel(x.shape, w.shape, groups)
  spec = correlation.window_spec(x.shape, w.shape[:num_dims], stride, padding, dilation)
  method = resolve_weight_method(weight_method, w.shape[:num_dims], w.shape[-2], groups)
  return _correlate(x, w, spec, groups, method)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _convolve(x, w, spec, groups, method):
  w, groups = _as_dense_if_faster(w, groups, w.shape[-2])
  return ops.convolve(x, w, stride=spec.stride, padding=canonical_padding(spec),
                      dilation=spec.dilation, groups=groups)


def _convolve_fwd(x, w, spec, groups, method):
  return _convolve(x, w, spec, groups, method), (x, w)


def _convolve_bwd(spec, groups, method, residuals, g):
  x, w = residuals
  flipped, groups_dx = _as_dense_if_faster(correlation.flip_kernel(w), groups,
                                           w.shape[-1] // groups)
  dw = weight_grad(x, g, spec, w.shape[:spec.num_dims], groups, method)
  return (correlate_input_grad(g, flipped, spec, x.shape, groups_dx),
          correlation.flip_kernel(dw))


_convolve.defvjp(_convolve_fwd, _convolve_bwd)


def convolve(x, w, *, stride=1, padding="VALID", dilation=1, groups=1, weight_method="auto"):
  """``ops.convolve`` with a hand-written backward pass.

  ``convolve(x, w) = correlate(x, F w)`` with ``F`` the spatial flip. ``F`` is linear and its
  own inverse and adjoint, so ``dL/dx`` is ``correlate``'s input gradient with kernel ``F w``
  (a transposed correlation with ``F F w = w``), and ``dL/dw = F (dL/d(F w))``: the
  correlation weight gradient, flipped.

  Args, Returns, Raises: as ``ops.convolve``; ``weight_method`` as in ``correlate``.
  """
  num_dims = correlation.check_kernel(x.shape, w.shape, groups)
  spec = correlation.window_spec(x.shape, w.shape[:num_dims], stride, padding, dilation)
  method = resolve_weight_method(weight_method, w.shape[:num_dims], w.shape[-2], groups)
  return _convolve(x, w, spec, groups, method)


# ---------------------------------------------------------------------------------------------
# locally_connected
# ---------------------------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _locally_connected(x, w, spec):
  return ops.locally_connected(x, w, stride=spec.stride, padding=canonical_padding(spec),
                               dilation=spec.dilation)


def _locally_connected_fwd(x, w, spec):
  return _locally_connected(x, w, spec), (x, w)


def _locally_connected_bwd(spec, residuals, g):
  x, w = residuals
  n, c_out = x.shape[0], w.shape[-1]
  patches = correlation.extract_patches(x, spec)  # (N, *out, *kernel, C_in)
  p = prod(spec.out_spatial)
  patches = patches.reshape(n, p, -1)  # (N, P, K·C_in)
  g = g.reshape(n, p, c_out)
  kernels = w.reshape(p, -1, c_out)
  dw = jnp.einsum("npk,npo->pko", patches, g, precision=lax.Precision.HIGHEST)
  dpatches = jnp.einsum("pko,npo->npk", kernels, g, precision=lax.Precision.HIGHEST)
  dpatches = dpatches.reshape((n,) + spec.out_spatial + spec.kernel + (x.shape[-1],))
  return scatter_patches(dpatches, spec, x.shape), dw.reshape(w.shape)


_locally_connected.defvjp(_locally_connected_fwd, _locally_connected_bwd)


def prod(values) -> int:
  """Product of a tuple of ints (a window's or a grid's number of entries)."""
  out = 1
  for v in values:
    out *= v
  return out


def locally_connected(x, w, *, stride=1, padding="VALID", dilation=1):
  """``ops.locally_connected`` with a hand-written backward pass.

  Forward: ``y[n, p, c'] = sum_{t, c} P[n, p, t, c] w[p, t, c, c']`` with ``P`` the patches.

  Backward: no sharing, so each position's kernel sees only its own patch:
    * ``dL/dw[p, t, c, c'] = sum_n P[n, p, t, c] g[n, p, c']`` (a batch sum, no position sum);
    * ``dL/dP[n, p, t, c] = sum_{c'} w[p, t, c, c'] g[n, p, c']``, then each patch entry's
      gradient is added back to the input entry it was copied from (``scatter_patches``).
  When every ``w[p]`` is the same kernel, summing ``dL/dw[p]`` over ``p`` gives ``correlate``'s
  weight gradient: that sum is what weight sharing does.

  Args, Returns, Raises: as ``ops.locally_connected``.
  """
  # The forward's own checks (some are inline in it), run on shapes only: identical errors.
  jax.eval_shape(functools.partial(ops.locally_connected, stride=stride, padding=padding,
                                   dilation=dilation), x, w)
  num_dims = (w.ndim - 2) // 2
  spec = correlation.window_spec(x.shape, w.shape[num_dims:2 * num_dims], stride, padding,
                                 dilation)
  return _locally_connected(x, w, spec)
