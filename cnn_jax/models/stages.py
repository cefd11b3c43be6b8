"""What the residual families share: BatchNorm, shortcuts, and stages of repeated blocks.

A stage is one (possibly downsampling) first block followed by ``count - 1`` identical blocks.
When ``scan`` is on and there are at least ``MIN_SCANNED_BLOCKS`` of them, they run under
``nn.scan``: XLA then compiles one block body per stage instead of ``count - 1`` copies, so
compile time stays nearly flat with depth (docs/benchmarks.md). A scanned body (and its
transposed loop in the backward pass) costs more to compile than two plain copies, so short
stages (ResNet-20's 2 repeated blocks) stay unrolled. Scanned parameters are stacked along a
leading axis under ``blocks/block``; with ``scan=False`` the same blocks are unrolled and named
``block1 … block{count-1}``, which is what the layer trace uses
(``cnn_jax.analysis.counting.trace_layers`` builds the unscanned twin).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax import layers

ModuleDef = Any

SHORTCUTS = ("A", "B")
DOWNSAMPLES = ("conv", "pool")
# Measured (bench/compile_time.py): with 2 repeated blocks per stage (ResNet-20) a scanned train
# step compiles in ~11 s of CPU, an unrolled one in ~6 s; with 8 (ResNet-56) scanning wins
# (11 s vs 14 s). Where in 3..7 they cross was not measured; 3 keeps ResNet-20 unrolled.
MIN_SCANNED_BLOCKS = 3


def batch_norm(train: bool, dtype, *, name: str, zero_scale: bool = False,
               grad: str = "autodiff") -> layers.BatchNorm:
  """BatchNorm with running statistics in ``batch_stats`` (momentum 0.9, as He et al.'s Torch).

  ``zero_scale`` starts the scale at 0, so the branch it ends outputs 0 at init and its block
  starts as the identity (Goyal et al. 2017; the lesson's "identity mappings as a start").
  ``grad="hand"`` uses ``ops.hand.batch_norm`` (hand backward, channel sums as matmuls).
  """
  return layers.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                          dtype=dtype, grad=grad, name=name,
                          scale_init=nn.initializers.zeros if zero_scale else nn.initializers.ones)


def subsample_and_pad(x: jax.Array, strides: int, features: int) -> jax.Array:
  """Option-A shortcut (He et al. 2016): identity, strided subsampling, zero-padded channels.

  ``x: (N, *spatial, C_in)`` → ``(N, *ceil(spatial / strides), features)``; no parameters.
  Strided slicing keeps positions ``0, s, 2s, …``, the same centres a stride-``s`` SAME conv
  with an odd kernel uses, so the two paths stay aligned.
  """
  if strides > 1:
    x = x[(slice(None),) + (slice(None, None, strides),) * (x.ndim - 2) + (slice(None),)]
  extra = features - x.shape[-1]
  if extra > 0:
    x = jnp.pad(x, ((0, 0),) * (x.ndim - 1) + ((0, extra),))
  return x


def shortcut(x: jax.Array, *, features: int, strides: int, kind: str, train: bool, grad: str,
             dtype) -> jax.Array:
  """The shortcut path of a residual block; call inside a block's ``nn.compact`` method.

  Identity when the shape is kept; otherwise option ``"A"`` (``subsample_and_pad``) or ``"B"``
  (1×1 strided projection + BatchNorm, layers named ``shortcut_conv``/``shortcut_bn``).
  """
  if strides == 1 and x.shape[-1] == features:
    return x
  if kind == "A":
    return subsample_and_pad(x, strides, features)
  y = layers.Conv(features, 1, strides=strides, use_bias=False, grad=grad, dtype=dtype,
                  name="shortcut_conv")(x)
  return batch_norm(train, dtype, name="shortcut_bn", grad=grad)(y)


class _ScanBody(nn.Module):
  """Adapts a block ``(x, train) -> x`` to ``nn.scan``'s ``(carry, xs) -> (carry, ys)``."""
  block: ModuleDef

  @nn.compact
  def __call__(self, x, train):
    return self.block(strides=1, name="block")(x, train), None


class Stage(nn.Module):
  """``count`` blocks; the first may downsample (strided conv or a pool before it).

  Attributes:
    block: a block class with every attribute but ``strides`` and ``name`` bound
      (``functools.partial``); called as ``block(strides=s)(x, train)``.
    count: number of blocks, >= 1.
    strides: the stage's downsampling factor.
    downsample: ``"conv"`` (the first block's conv is strided) or ``"pool"`` (a ``pool``-kind
      pooling of window = stride before the first block, which then has stride 1).
    pool: pooling kind for ``downsample="pool"``.
    scan: run blocks 1..count-1 with ``nn.scan`` (one compiled body) instead of unrolled, when
      there are at least ``MIN_SCANNED_BLOCKS`` of them.
  """
  block: ModuleDef
  count: int
  strides: int = 1
  downsample: str = "conv"
  pool: str = "max"
  scan: bool = True
  grad: str = "autodiff"

  @nn.compact
  def __call__(self, x, train: bool):
    strides = self.strides
    if strides > 1 and self.downsample == "pool":
      x = layers.Pool(self.pool, window=layers.downsampling_window(self.pool, strides),
                      stride=strides, padding="SAME", grad=self.grad, name="pool")(x)
      strides = 1
    x = self.block(strides=strides, name="block0")(x, train)
    rest = self.count - 1
    if self.scan and rest >= MIN_SCANNED_BLOCKS:
      scanned = nn.scan(_ScanBody, variable_axes={"params": 0, "batch_stats": 0},
                        split_rngs={"params": True}, in_axes=nn.broadcast, length=rest)
      x, _ = scanned(self.block, name="blocks")(x, train)
    else:
      for i in range(1, self.count):
        x = self.block(strides=1, name=f"block{i}")(x, train)
    return x


def compute_dtype(name: str):
  """``"float32"`` / ``"bfloat16"`` → the jnp dtype."""
  return jnp.dtype(name)

