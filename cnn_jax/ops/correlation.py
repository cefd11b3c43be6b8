"""Cross-correlation, true convolution and locally connected layers, as pure functions.

Layout is channels-last throughout: ``x`` is ``(N, *spatial, C_in)`` and a shared kernel is
``(*kernel, C_in // groups, C_out)``; 1, 2 or 3 spatial dimensions. ``correlate`` is what deep
learning libraries call "convolution"; ``convolve`` flips the kernel in every spatial dimension
first, which makes it the convolution of signal processing (commutative in the FULL mode).

Two independent implementations of correlation live here: the fast path on
``jax.lax.conv_general_dilated`` and ``correlate_reference``, built from explicit patch
extraction (strided slices) and an einsum. The tests hold them equal; the reference is what
makes the fast path trustworthy, and its patch extraction also serves ``locally_connected``.
"""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
from jax import lax

from cnn_jax.ops import shapes

_SPATIAL_LETTERS = {1: "W", 2: "HW", 3: "DHW"}


@dataclasses.dataclass(frozen=True)
class WindowSpec:
  """The resolved, checked arguments of a sliding-window op (all per spatial dim)."""
  kernel: tuple[int, ...]
  stride: tuple[int, ...]
  dilation: tuple[int, ...]
  pads: tuple[tuple[int, int], ...]
  circular: bool
  out_spatial: tuple[int, ...]

  @property
  def num_dims(self) -> int:
    return len(self.kernel)


def window_spec(x_shape, kernel, stride, padding, dilation, *, name_kernel="kernel") -> WindowSpec:
  """Checks and resolves the window arguments for input shape ``(N, *spatial, C)``.

  Raises:
    ValueError: for a bad stride/dilation/padding, a wrong rank, or a kernel larger than the
      padded input.
  """
  num_dims = len(kernel)
  shapes.check_input_rank(x_shape, num_dims)
  kernel = shapes.as_tuple(tuple(kernel), num_dims, name_kernel)
  stride = shapes.as_tuple(stride, num_dims, "stride")
  dilation = shapes.as_tuple(dilation, num_dims, "dilation")
  spatial = tuple(x_shape[1:-1])
  pads = shapes.resolve_padding(padding, spatial, kernel, stride, dilation)
  out = shapes.output_size(spatial, kernel, stride, pads, dilation)
  return WindowSpec(kernel, stride, dilation, pads, shapes.padding_mode(padding) == "CIRCULAR",
                    out)


def pad_input(x: jax.Array, spec: WindowSpec, *, value=0.0) -> jax.Array:
  """Pads the spatial dims of ``x`` as ``spec`` says: wrap-around if circular, else ``value``."""
  widths = ((0, 0),) + tuple(spec.pads) + ((0, 0),)
  if spec.circular:
    for dim, (lo, hi) in enumerate(spec.pads):
      if max(lo, hi) > x.shape[1 + dim]:
        raise ValueError(
            f"padding='CIRCULAR' needs pads <= the input size, got pads {(lo, hi)} for size "
            f"{x.shape[1 + dim]} in spatial dim {dim}: use a smaller kernel or larger input.")
    return jnp.pad(x, widths, mode="wrap")
  return jnp.pad(x, widths, constant_values=value)


def check_kernel(x_shape, w_shape, groups) -> int:
  """Checks a shared kernel ``(*kernel, C_in // groups, C_out)`` against ``x``; returns #dims."""
  num_dims = len(w_shape) - 2
  if num_dims not in (1, 2, 3):
    raise ValueError(f"w has shape {tuple(w_shape)} (rank {len(w_shape)}): expected rank 3, 4 "
                     "or 5, (*kernel, C_in // groups, C_out) for 1-D, 2-D or 3-D.")
  shapes.check_input_rank(x_shape, num_dims)
  if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
    raise ValueError(f"groups={groups!r} is not allowed: give an int >= 1 that divides both "
                     "C_in and C_out.")
  c_in, c_out = x_shape[-1], w_shape[-1]
  if c_in % groups or c_out % groups:
    raise ValueError(f"groups={groups} is not allowed: it must divide C_in={c_in} and "
                     f"C_out={c_out}.")
  if w_shape[-2] != c_in // groups:
    raise ValueError(f"w has {w_shape[-2]} input channels (shape {tuple(w_shape)}) but x has "
                     f"C_in={c_in} with groups={groups}: w.shape[-2] must be C_in // groups = "
                     f"{c_in // groups}.")
  return num_dims


def correlate(x, w, *, stride=1, padding="VALID", dilation=1, groups=1):
  """Cross-correlation, as deep-learning libraries compute "convolution".

  ``y[n, o, c'] = sum_{k, c} x_pad[n, o * stride + k * dilation, c] w[k, c, c']`` within each
  group of channels.

  Args:
    x: ``(N, *spatial, C_in)``.
    w: ``(*kernel, C_in // groups, C_out)``.
    stride: int or per-dim tuple, >= 1.
    padding: "VALID", "SAME", "FULL", "CIRCULAR", an int, or per-dim ``(lo, hi)`` pairs.
    dilation: int or per-dim tuple, >= 1 (gaps between kernel taps).
    groups: split channels into this many independent groups (``C_in`` = groups is depthwise).

  Returns:
    ``(N, *out_spatial, C_out)`` with ``out_spatial`` given by ``shapes.output_size``.

  Raises:
    ValueError: before tracing, for mismatched channels, bad groups, stride or dilation < 1,
      unknown padding, wrong rank, or a kernel larger than the padded input.
  """
  num_dims = check_kernel(x.shape, w.shape, groups)
  spec = window_spec(x.shape, w.shape[:num_dims], stride, padding, dilation)
  letters = _SPATIAL_LETTERS[num_dims]
  dimension_numbers = ("N" + letters + "C", letters + "IO", "N" + letters + "C")
  pads = spec.pads
  if spec.circular:
    x = pad_input(x, spec)
    pads = ((0, 0),) * num_dims
  else:
    x, pads = _pad_beyond_kernel(x, pads, spec)
  return lax.conv_general_dilated(
      x, w, window_strides=spec.stride, padding=pads, rhs_dilation=spec.dilation,
      dimension_numbers=dimension_numbers, feature_group_count=groups)


def _pad_beyond_kernel(x, pads, spec):
  """Moves the part of each zero pad wider than the dilated kernel minus one into an explicit
  ``jnp.pad`` of ``x`` (the same values): the convolution's VJP then crops with a slice, not
  with a negative padding, which XLA's CPU float32 convolutions get wrong (jax 0.10.2: a
  1-D correlation padded ``(2, 0)`` with a 2-tap kernel gets an input gradient off by ~20% of
  its scale, ``(3, 0)`` garbage; docs/gradients.md). Returns ``(x, pads)``."""
  extra = [(max(0, lo - (e - 1)), max(0, hi - (e - 1)))
           for (lo, hi), e in zip(pads, map(shapes.effective_kernel, spec.kernel, spec.dilation))]
  if not any(lo or hi for lo, hi in extra):
    return x, pads
  x = jnp.pad(x, ((0, 0),) + tuple(extra) + ((0, 0),))
  return x, tuple((lo - a, hi - b) for (lo, hi), (a, b) in zip(pads, extra))


def flip_kernel(w):
  """Reverses a kernel ``(*kernel, C_in, C_out)`` in every spatial dimension."""
  return jnp.flip(w, axis=tuple(range(w.ndim - 2)))


def convolve(x, w, *, stride=1, padding="VALID", dilation=1, groups=1):
  """True convolution: ``correlate`` with the kernel flipped in every spatial dimension.

  ``y[o] = sum_k x[o - k] w[k]``; in the FULL mode with one channel this is the commutative
  convolution of signal processing (``scipy.signal.convolve``). Arguments, shapes and errors
  are those of ``correlate``. For SAME padding with an even kernel, the half-pixel offset is
  XLA's (extra pad at the end), which is one position away from scipy's "same" centring.
  """
  check_kernel(x.shape, w.shape, groups)
  return correlate(x, flip_kernel(w), stride=stride, padding=padding, dilation=dilation,
                   groups=groups)


def extract_patches(x, spec: WindowSpec, *, pad_value=0.0):
  """All windows of ``x`` as ``(N, *out_spatial, *kernel, C)``, by explicit strided slices.

  Built from ``jnp.pad`` and one strided slice per kernel tap, so it shares nothing with
  ``lax.conv_general_dilated`` and can serve as an independent reference.
  """
  xp = pad_input(x, spec, value=pad_value)
  patches = jnp.stack([tap for _, tap in window_taps(xp, spec)], axis=-2)  # (N, *out, K, C)
  return patches.reshape(patches.shape[:-2] + spec.kernel + patches.shape[-1:])


def window_taps(xp, spec: WindowSpec):
  """``(offset, x_p[:, offset*d :: s])`` for every kernel tap, in row-major order.

  The strided slice of tap ``t`` holds what that tap reads at every output position:
  ``tap[n, o] = x_p[n, o*s + t*d]``, shape ``(N, *out_spatial, C)``. ``xp`` is the padded
  input (``pad_input``).
  """
  for offset in itertools.product(*(range(k) for k in spec.kernel)):
    index = [slice(None)]
    for o, d, s, n_out in zip(offset, spec.dilation, spec.stride, spec.out_spatial):
      start = o * d
      index.append(slice(start, start + (n_out - 1) * s + 1, s))
    index.append(slice(None))
    yield offset, xp[tuple(index)]


def correlate_reference(x, w, *, stride=1, padding="VALID", dilation=1, groups=1):
  """``correlate`` by patch extraction and einsum: slow, simple, independent of lax.conv."""
  num_dims = check_kernel(x.shape, w.shape, groups)
  spec = window_spec(x.shape, w.shape[:num_dims], stride, padding, dilation)
  patches = extract_patches(x, spec)  # (N, *out, *kernel, C_in)
  n, out = patches.shape[0], patches.shape[1:1 + num_dims]
  k = 1
  for size in spec.kernel:
    k *= size
  c_in, c_out = x.shape[-1], w.shape[-1]
  # (N, P, K, G, C_in/G) against (K, C_in/G, G, C_out/G): each group sees only its channels.
  patches = patches.reshape(n, -1, k, groups, c_in // groups)
  kernel = w.reshape(k, c_in // groups, groups, c_out // groups)
  y = jnp.einsum("npkgc,kcgo->npgo", patches, kernel, precision=lax.Precision.HIGHEST)
  return y.reshape((n,) + tuple(out) + (c_out,))


def locally_connected(x, w, *, stride=1, padding="VALID", dilation=1):
  """A sliding window with its own kernel at every output position (no weight sharing).

  Args:
    x: ``(N, *spatial, C_in)``.
    w: ``(*out_spatial, *kernel, C_in, C_out)``: one kernel per output position, so the
      parameter count grows linearly with the number of positions.
    stride, padding, dilation: as in ``correlate``.

  Returns:
    ``(N, *out_spatial, C_out)``; equal to ``correlate`` when every position's kernel is the same.

  Raises:
    ValueError: for a wrong rank, bad window arguments, or a ``w`` whose position grid or
      channels do not match what ``x`` and the window give.
  """
  if (w.ndim - 2) % 2 or (w.ndim - 2) // 2 not in (1, 2, 3):
    raise ValueError(f"w has shape {tuple(w.shape)}: expected (*out_spatial, *kernel, C_in, "
                     "C_out) with 1, 2 or 3 spatial dims.")
  num_dims = (w.ndim - 2) // 2
  spec = window_spec(x.shape, w.shape[num_dims:2 * num_dims], stride, padding, dilation)
  if tuple(w.shape[:num_dims]) != spec.out_spatial or w.shape[-2] != x.shape[-1]:
    raise ValueError(
        f"w has shape {tuple(w.shape)} but x {tuple(x.shape)} with this window gives "
        f"output positions {spec.out_spatial} and C_in={x.shape[-1]}: w must be "
        f"{spec.out_spatial + spec.kernel + (x.shape[-1], w.shape[-1])}.")
  patches = extract_patches(x, spec)
  n = x.shape[0]
  p = 1
  for size in spec.out_spatial:
    p *= size
  patches = patches.reshape(n, p, -1)
  kernels = w.reshape(p, -1, w.shape[-1])
  y = jnp.einsum("npk,pko->npo", patches, kernels)
  return y.reshape((n,) + spec.out_spatial + (w.shape[-1],))
