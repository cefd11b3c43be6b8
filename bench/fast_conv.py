"""Cross-correlation with a hand-written backward pass, from the formulations that won on XLA CPU.

``correlate`` here has the signature and result of ``cnn_jax.ops.correlate`` and a
``jax.custom_vjp`` whose two halves are the pure functions ``input_grad`` and
``weight_grad``; the lead can move this module into ``cnn_jax/ops/hand/``. The choice of
formulation is argued, with figures, in ``docs/benchmarks.md`` and measured by
``python -m bench.conv_backward``.

Notation (per spatial dimension, N-D applies it to each): input length ``n``, kernel ``K``
taps with dilation ``d``, stride ``s``, padding ``(lo, hi)``, output length
``m = floor((n + lo + hi - d (K - 1) - 1) / s) + 1``; ``x: (N, n, C)``, ``w: (K, C, O)``,
cotangent ``g = dL/dy: (N, m, O)``. The forward pass is

    y[b, o, :] = sum_k x_pad[b, o s + k d, :] @ w[k],     x_pad[i] = x[i - lo] (0 outside).

Differentiating this one sum gives both gradients; each is again a correlation, so each runs
on XLA's convolution kernels with no patches materialised in memory (the explicit
patches x matmul formulation of the weight gradient, ``weight_grad(method="taps")``, is kept
because it is the one that is obviously right, and it wins on some shapes).
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
from jax import lax

from cnn_jax.ops import correlation

_LETTERS = {1: "W", 2: "HW", 3: "DHW"}
WEIGHT_GRAD_METHODS = ("auto", "conv", "taps")
# "auto" picks "taps" up to this many input channels per group. Measured on the 2-core CPU
# (docs/benchmarks.md): taps beat XLA's conv by 1.2-1.6x on the 16-channel layers (32x32
# 16->16 and the strided 16->32) and lost by 1.3-2x on 32->32 and 64->64.
TAPS_MAX_CHANNELS = 16


def _dimension_numbers(num_dims: int, lhs: str, rhs: str, out: str):
  """Dimension-number strings with the spatial letters of ``num_dims`` put where ``S`` is."""
  s = _LETTERS[num_dims]
  return tuple(spec.replace("S", s) for spec in (lhs, rhs, out))


def forward(x, w, *, stride, pads, dilation, groups=1):
  """``y = correlate(x, w)`` on resolved arguments (XLA's convolution is the fastest forward).

  Args:
    x: ``(N, *spatial, C)``.
    w: ``(*kernel, C // groups, O)``.
    stride, dilation: tuples, one int per spatial dim.
    pads: ``((lo, hi), ...)`` per spatial dim (zero padding).
    groups: feature groups.

  Returns:
    ``(N, *out_spatial, O)``.
  """
  num_dims = x.ndim - 2
  return lax.conv_general_dilated(
      x, w, window_strides=stride, padding=pads, rhs_dilation=dilation,
      dimension_numbers=_dimension_numbers(num_dims, "NSC", "SIO", "NSC"),
      feature_group_count=groups)


def input_grad(g, w, x_shape, *, stride, pads, dilation, groups=1):
  """``dL/dx`` as a correlation of the stride-dilated cotangent with the flipped kernel.

  Derivation: from ``y[o] = sum_k x_pad[o s + k d] w[k]``,
  ``dx[i] = sum_{o, k : o s + k d = i + lo} g[o] w[k]^T``. Put ``g`` on a grid of spacing ``s``
  (``g_s[o s] = g[o]``, zeros between: XLA's ``lhs_dilation``) and flip the kernel
  (``k' = K - 1 - k``): ``dx[i] = sum_k' g_s[i + k' d - ((K - 1) d - lo)] w[K - 1 - k']^T``,
  a correlation with dilation ``d`` of ``g_s`` padded by ``P_lo = (K - 1) d - lo`` in front
  and ``P_hi = n + lo - (m - 1) s - 1`` behind (``n + (K - 1) d`` positions in all, so the
  result has length ``n``; a negative pad crops, which XLA allows). The transposed kernel
  maps ``O`` to ``C``: with dimension numbers ``"SOI"`` no transpose is materialised. With
  groups, each group's ``(C/G, O/G)`` block is transposed in place.

  Args:
    g: cotangent ``(N, *out_spatial, O)``.
    w: ``(*kernel, C // groups, O)``.
    x_shape: the forward input's shape ``(N, *spatial, C)``.
    stride, pads, dilation, groups: as in ``forward``.

  Returns:
    ``dL/dx``, shape ``x_shape``.
  """
  num_dims = len(x_shape) - 2
  kernel = w.shape[:num_dims]
  new_pads = []
  for n, m, k, s, d, (lo, _) in zip(x_shape[1:-1], g.shape[1:-1], kernel, stride, dilation,
                                    pads):
    new_pads.append(((k - 1) * d - lo, n + lo - (m - 1) * s - 1))
  w_flipped = jnp.flip(w, axis=tuple(range(num_dims)))
  rhs_spec = "SOI"
  if groups > 1:
    # (K, C/G, G, O/G) -> (K, O/G, G, C/G) -> (K, O/G, C): the transposed conv's input
    # channels are O (per group O/G), its output channels C grouped contiguously.
    c_per, o_total = w.shape[-2], w.shape[-1]
    w_flipped = w_flipped.reshape(kernel + (c_per, groups, o_total // groups))
    w_flipped = jnp.swapaxes(w_flipped, num_dims, num_dims + 2).reshape(
        kernel + (o_total // groups, groups * c_per))
    rhs_spec = "SIO"
  return lax.conv_general_dilated(
      g, w_flipped, window_strides=(1,) * num_dims, padding=tuple(new_pads),
      lhs_dilation=stride, rhs_dilation=dilation,
      dimension_numbers=_dimension_numbers(num_dims, "NSC", rhs_spec, "NSC"),
      feature_group_count=groups)


def weight_grad(x, g, kernel_shape, *, stride, pads, dilation, groups=1, method="conv"):
  """``dL/dw`` as a sum over batch and positions of input windows times the cotangent.

  Derivation: ``dw[k] = sum_{b, o} x_pad[b, o s + k d]^T g[b, o]``, a ``(C, O)`` matrix per
  tap ``k``. Two ways to compute it:

  * ``method="conv"``: read the sum as a correlation over the spatial index whose "batch" is
    the input channel ``C`` and whose contracted "feature" is the batch ``N``: the input
    ``x_pad`` (window stride ``d``) against the "kernel" ``g`` spread by ``s``
    (``rhs_dilation``). Its output positions are the taps; only the first ``K`` are kept
    (the last input rows a stride skips can add one more). With groups, XLA's
    ``batch_group_count`` pairs input-channel group ``j`` with output group ``j``.
  * ``method="taps"``: the literal patches x matmul: for each tap take the strided slice
    ``x_pad[:, k d :: s]`` (``(N, *out, C)``) and contract it with ``g`` over batch and
    positions, one ``(C, N P) @ (N P, O)`` matmul per tap; no ``K``-fold patch array.

  Args:
    x: the forward input ``(N, *spatial, C)``.
    g: cotangent ``(N, *out_spatial, O)``.
    kernel_shape: ``w.shape``, ``(*kernel, C // groups, O)``.
    stride, pads, dilation, groups: as in ``forward``.
    method: ``"conv"``, ``"taps"``, or ``"auto"`` (taps for at most ``TAPS_MAX_CHANNELS``
      input channels per group, else conv).

  Returns:
    ``dL/dw``, shape ``kernel_shape``.

  Raises:
    ValueError: for an unknown ``method``.
  """
  if method not in WEIGHT_GRAD_METHODS:
    raise ValueError(f"method={method!r} is not allowed: give one of "
                     f"{', '.join(WEIGHT_GRAD_METHODS)}.")
  num_dims = x.ndim - 2
  kernel = tuple(kernel_shape[:num_dims])
  if method == "auto":
    method = "taps" if kernel_shape[-2] <= TAPS_MAX_CHANNELS else "conv"
  if method == "conv":
    out = lax.conv_general_dilated(
        x, g, window_strides=dilation, padding=pads, rhs_dilation=stride,
        dimension_numbers=_dimension_numbers(num_dims, "CSN", "ISO", "SNC"),
        batch_group_count=groups)
    return out[tuple(slice(0, k) for k in kernel)]
  widths = ((0, 0),) + tuple(pads) + ((0, 0),)
  xp = jnp.pad(x, widths)
  c_per, o_total = kernel_shape[-2], kernel_shape[-1]
  g_flat = g.reshape(-1, groups, o_total // groups)
  taps = []
  for offset in itertools.product(*(range(k) for k in kernel)):
    index = (slice(None),) + tuple(
        slice(t * d, t * d + (m - 1) * s + 1, s)
        for t, d, s, m in zip(offset, dilation, stride, g.shape[1:-1])) + (slice(None),)
    window = xp[index].reshape(-1, groups, c_per)
    taps.append(jnp.einsum("pgc,pgo->cgo", window, g_flat).reshape(c_per, o_total))
  return jnp.stack(taps).reshape(tuple(kernel_shape))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _correlate(x, w, stride, pads, dilation, groups, method):
  return forward(x, w, stride=stride, pads=pads, dilation=dilation, groups=groups)


def _correlate_fwd(x, w, stride, pads, dilation, groups, method):
  y = forward(x, w, stride=stride, pads=pads, dilation=dilation, groups=groups)
  return y, (x, w)


def _correlate_bwd(stride, pads, dilation, groups, method, residuals, g):
  x, w = residuals
  args = dict(stride=stride, pads=pads, dilation=dilation, groups=groups)
  return (input_grad(g, w, x.shape, **args),
          weight_grad(x, g, w.shape, method=method, **args))


_correlate.defvjp(_correlate_fwd, _correlate_bwd)


def correlate(x, w, *, stride=1, padding="VALID", dilation=1, groups=1, weight_method="auto"):
  """``cnn_jax.ops.correlate`` with the hand-written backward pass above.

  Same arguments, shapes, result and ``ValueError``s as ``ops.correlate`` (checked before
  tracing), plus ``weight_method`` (``"auto"``, ``"conv"`` or ``"taps"``, see
  ``weight_grad``). CIRCULAR padding wraps the input first (autodiff carries the gradient
  through the wrap) and then correlates without padding.
  """
  if weight_method not in WEIGHT_GRAD_METHODS:
    raise ValueError(f"weight_method={weight_method!r} is not allowed: give one of "
                     f"{', '.join(WEIGHT_GRAD_METHODS)}.")
  num_dims = correlation.check_kernel(x.shape, w.shape, groups)
  spec = correlation.window_spec(x.shape, w.shape[:num_dims], stride, padding, dilation)
  pads = tuple(tuple(p) for p in spec.pads)
  if spec.circular:
    x = correlation.pad_input(x, spec)
    pads = ((0, 0),) * num_dims
  return _correlate(x, w, spec.stride, pads, spec.dilation, groups, weight_method)

