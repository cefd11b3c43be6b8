"""Flax Linen layers as thin shells over the pure ops in ``cnn_jax.ops``.

Each layer owns its parameters and nothing else: the arithmetic is one call to an op, chosen by
``ops.for_grad(self.grad)`` so that ``grad="hand"`` swaps in the hand-written backward passes of
``cnn_jax.ops.hand`` for every layer at once. Layouts are the ops': inputs ``(N, *spatial, C)``
with 1, 2 or 3 spatial dims, shared kernels ``(*kernel, C_in // groups, C_out)``, locally
connected kernels ``(*out_spatial, *kernel, C_in, C_out)``.

Every layer also exposes ``geometry(input_shape)``: its resolved kernel, stride, padding and
dilation for an input shape, used by ``cnn_jax.analysis.counting`` for the layer table and
receptive fields, so that the accounting never re-derives a layer's arithmetic on its own.

``Conv`` and ``BatchNorm`` also take ``kernels`` (``cnn_jax.native.Kernels``, resolved from the
config by ``models.build``): where it says so, a convolution runs on the native kernels
(``cnn_jax.native.correlate``) and BatchNorm's channel sums on their one-pass kernels; the
default, ``native.XLA``, runs the ops alone.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax import native, ops
from cnn_jax.ops import shapes

IntOrSeq = Union[int, Sequence[int]]
PaddingLike = shapes.PaddingLike

POOL_KINDS = ("max", "avg", "weighted", "l2")

# He et al. (2015) initialisation: variance 2 / fan_in keeps ReLU activations' scale constant
# with depth. ``variance_scaling`` reads fan-in as prod(kernel) * C_in // groups from the last two
# axes of a (*kernel, C_in // groups, C_out) kernel, which is exactly the ops' layout.
he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")


@dataclasses.dataclass(frozen=True)
class Geometry:
  """A sliding-window layer's resolved arguments for one input shape (all per spatial dim)."""
  kernel: tuple[int, ...]
  stride: tuple[int, ...]
  padding: tuple[tuple[int, int], ...]
  dilation: tuple[int, ...]
  out_spatial: tuple[int, ...]


def _geometry(input_shape, kernel_size, strides, padding, dilation) -> Geometry:
  num_dims = len(input_shape) - 2
  kernel = shapes.as_tuple(kernel_size, num_dims, "kernel_size")
  spec = ops.correlation.window_spec(tuple(input_shape), kernel, strides, padding, dilation)
  return Geometry(spec.kernel, spec.stride, spec.pads, spec.dilation, spec.out_spatial)


class Conv(nn.Module):
  """Shared-weight convolution (cross-correlation), ``ops.correlate`` with learned kernels.

  ``x: (N, *spatial, C_in)`` → ``(N, *out_spatial, features)``; the number of spatial dims is
  read from ``x``, so one definition serves 1-D, 2-D and 3-D inputs.

  Attributes:
    features: output channels ``C_out``.
    kernel_size: int (same in every dim) or one int per spatial dim.
    strides, padding, dilation, groups: as in ``ops.correlate``.
    use_bias: add a learned per-channel bias (off before a BatchNorm, which has its own).
    grad: ``"autodiff"`` or ``"hand"`` (see ``ops.for_grad``).
    kernels: where the native kernels run (``cnn_jax.native.conv_tile`` decides for this
      layer's shapes; it raises a one-line ``ValueError`` where a forced choice does not fit).
    kernel_init: initialiser of the ``(*kernel, C_in // groups, C_out)`` kernel (He fan-in).
    dtype: compute dtype; parameters are kept in float32.
  """
  features: int
  kernel_size: IntOrSeq = 3
  strides: IntOrSeq = 1
  padding: PaddingLike = "SAME"
  dilation: IntOrSeq = 1
  groups: int = 1
  use_bias: bool = True
  grad: str = "autodiff"
  kernels: native.Kernels = native.XLA
  kernel_init: Callable[..., Any] = he_normal
  bias_init: Callable[..., Any] = nn.initializers.zeros
  dtype: Any = jnp.float32

  def geometry(self, input_shape) -> Geometry:
    return _geometry(input_shape, self.kernel_size, self.strides, self.padding, self.dilation)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    num_dims = x.ndim - 2
    kernel = shapes.as_tuple(self.kernel_size, num_dims, "kernel_size")
    c_in = x.shape[-1]
    if isinstance(self.groups, bool) or not isinstance(self.groups, int) or self.groups < 1 or (
        c_in % self.groups or self.features % self.groups):
      raise ValueError(f"groups={self.groups!r} is not allowed: it must be an int >= 1 that "
                       f"divides C_in={c_in} and features={self.features}.")
    w = self.param("kernel", self.kernel_init, kernel + (c_in // self.groups, self.features),
                   jnp.float32)
    x, w = x.astype(self.dtype), w.astype(self.dtype)
    tile = None
    if self.kernels.native:
      spec = ops.correlation.window_spec(x.shape, kernel, self.strides, self.padding,
                                         self.dilation)
      tile = native.conv_tile(self.kernels, x, w, spec, self.groups)
    if tile is None:
      y = ops.for_grad(self.grad).correlate(x, w, stride=self.strides, padding=self.padding,
                                            dilation=self.dilation, groups=self.groups)
    else:
      y = native.correlate(x, w, spec, tile)
    if self.use_bias:
      b = self.param("bias", self.bias_init, (self.features,), jnp.float32)
      y = y + b.astype(self.dtype).reshape((1,) * (y.ndim - 1) + (self.features,))
    return y


class LocallyConnected(nn.Module):
  """A convolution without weight sharing: one kernel (and bias) per output position.

  ``x: (N, *spatial, C_in)`` → ``(N, *out_spatial, features)``. The kernel is
  ``(*out_spatial, *kernel, C_in, C_out)``, so the parameter count is that of ``Conv`` times the
  number of output positions, and grows linearly with the input size.

  Attributes: as ``Conv`` (no groups); the bias is ``(*out_spatial, features)`` (untied, as in
  Keras' LocallyConnected2D).
  """
  features: int
  kernel_size: IntOrSeq = 3
  strides: IntOrSeq = 1
  padding: PaddingLike = "SAME"
  dilation: IntOrSeq = 1
  use_bias: bool = True
  grad: str = "autodiff"
  kernel_init: Optional[Callable[..., Any]] = None  # None: He fan-in per position
  bias_init: Callable[..., Any] = nn.initializers.zeros
  dtype: Any = jnp.float32

  def geometry(self, input_shape) -> Geometry:
    return _geometry(input_shape, self.kernel_size, self.strides, self.padding, self.dilation)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    geo = self.geometry(x.shape)
    c_in = x.shape[-1]
    num_dims = len(geo.kernel)
    kernel_init = self.kernel_init
    if kernel_init is None:
      # He fan-in = prod(kernel) * C_in for each position's own kernel: the position axes are
      # "batch" axes of the initialiser, so every position gets the variance a Conv would.
      kernel_init = nn.initializers.variance_scaling(
          2.0, "fan_in", "truncated_normal", in_axis=tuple(range(num_dims, 2 * num_dims + 1)),
          out_axis=-1, batch_axis=tuple(range(num_dims)))
    w = self.param("kernel", kernel_init, geo.out_spatial + geo.kernel + (c_in, self.features),
                   jnp.float32)
    op = ops.for_grad(self.grad)
    y = op.locally_connected(x.astype(self.dtype), w.astype(self.dtype),
                             stride=self.strides, padding=self.padding, dilation=self.dilation)
    if self.use_bias:
      b = self.param("bias", self.bias_init, geo.out_spatial + (self.features,), jnp.float32)
      y = y + b.astype(self.dtype)[None]
    return y


def downsampling_window(kind: str, stride: int) -> int:
  """The window of a model's downsampling pool of ``kind`` at ``stride`` (per spatial dim).

  ``stride`` for max, average and L2 pooling (non-overlapping windows, as usual), and
  ``2·stride − 1`` for the Gaussian-weighted average: its weights fall off with the distance
  from the window's central pixel, which a window of even size does not have; a centred 2×2
  Gaussian is uniform, i.e. plain average pooling. With ``"SAME"`` padding both give the same
  output size.
  """
  return 2 * stride - 1 if kind == "weighted" else stride


class Pool(nn.Module):
  """A parameter-free pooling layer: max, average, Gaussian-weighted average or L2 norm.

  ``x: (N, *spatial, C)`` → ``(N, *out_spatial, C)``, every channel pooled on its own.

  Attributes:
    kind: ``"max"``, ``"avg"``, ``"weighted"`` (fixed Gaussian window of std ``sigma``, as the
      lesson's "weighted average") or ``"l2"`` (``ops.lp_pool`` with p=2).
    window: int or per-dim tuple.
    stride: int or per-dim tuple; ``None`` means the window (non-overlapping).
    padding: as the ops.
    sigma: Gaussian std, in pixels, for ``kind="weighted"``.
    grad: ``"autodiff"`` or ``"hand"``.
  """
  kind: str = "max"
  window: IntOrSeq = 2
  stride: Optional[IntOrSeq] = None
  padding: PaddingLike = "VALID"
  sigma: float = 1.0
  grad: str = "autodiff"

  def geometry(self, input_shape) -> Geometry:
    num_dims = len(input_shape) - 2
    window = shapes.as_tuple(self.window, num_dims, "window")
    stride = window if self.stride is None else self.stride
    return _geometry(input_shape, window, stride, self.padding, 1)

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.kind not in POOL_KINDS:
      raise ValueError(f"pool={self.kind!r} is not allowed: give one of {', '.join(POOL_KINDS)}.")
    geo = self.geometry(x.shape)
    op = ops.for_grad(self.grad)
    if self.kind == "max":
      return op.max_pool(x, geo.kernel, geo.stride, self.padding)
    if self.kind == "avg":
      return op.avg_pool(x, geo.kernel, geo.stride, self.padding)
    if self.kind == "l2":
      return op.lp_pool(x, geo.kernel, 2.0, geo.stride, self.padding)
    weights = ops.gaussian_window(geo.kernel, self.sigma)
    return op.weighted_avg_pool(x, weights, geo.stride, self.padding)


class GlobalAvgPool(nn.Module):
  """Mean over all spatial positions: ``(N, *spatial, C)`` → ``(N, C)``."""
  grad: str = "autodiff"

  def __call__(self, x: jax.Array) -> jax.Array:
    return ops.for_grad(self.grad).global_avg_pool(x)


class BatchNorm(nn.Module):
  """Batch normalisation over every axis but the channels, ``ops.batch_norm`` in training.

  The variables are ``flax.linen.BatchNorm``'s (params ``scale``, ``bias``; ``batch_stats``
  ``mean``, ``var``, float32), so checkpoints and parameter counts read the same. In training
  (``use_running_average=False``) the batch statistics normalise ``x`` and update the running
  averages, ``ra ← momentum·ra + (1 - momentum)·batch`` (not while initialising); otherwise the
  running averages normalise it.

  Attributes:
    use_running_average: eval mode (may also be given to the call).
    momentum: of the running averages.
    epsilon: added to the variance.
    dtype: of the output (default: the input's).
    scale_init: of the scale (ones; zeros to start a residual branch at 0).
    grad: ``"autodiff"`` or ``"hand"`` (``ops.hand.batch_norm``, channel sums as matmuls).
    kernels: with ``grad="hand"``, where it runs the native kernels the channel sums are their
      one-pass kernels (``cnn_jax.native.CHANNEL_SUMS``).
  """
  use_running_average: Optional[bool] = None
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Any = None
  scale_init: Callable = nn.initializers.ones
  grad: str = "autodiff"
  kernels: native.Kernels = native.XLA

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: Optional[bool] = None) -> jax.Array:
    use_running_average = nn.merge_param("use_running_average", self.use_running_average,
                                         use_running_average)
    channels = x.shape[-1]
    scale = self.param("scale", self.scale_init, (channels,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (channels,), jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, (channels,), jnp.float32)
    dtype = x.dtype if self.dtype is None else self.dtype
    if use_running_average:
      inv_std = jax.lax.rsqrt(ra_var.value + self.epsilon)
      y = ((x - ops.per_channel(ra_mean.value, x.ndim))
           * ops.per_channel(inv_std * scale, x.ndim) + ops.per_channel(bias, x.ndim))
      return y.astype(dtype)
    if self.grad == "hand" and self.kernels.native:
      y, mean, var = ops.for_grad("hand").batch_norm(x, scale, bias, epsilon=self.epsilon,
                                                     sums=native.CHANNEL_SUMS)
    else:
      y, mean, var = ops.for_grad(self.grad).batch_norm(x, scale, bias, epsilon=self.epsilon)
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y.astype(dtype)


# A dense layer is a matrix product, which every mode differentiates the same way.
Dense = nn.Dense
