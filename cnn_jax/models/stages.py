"""What the residual families share: BatchNorm, shortcuts, and stages of repeated blocks.

A stage is one (possibly downsampling) first block followed by ``count - 1`` identical blocks.
When ``scan`` is on and there are at least ``min_scanned`` of them (``MIN_SCANNED_BLOCKS`` by
default), they run under ``nn.scan``: XLA then compiles one block body per stage instead of
``count - 1`` copies, so compile time stays nearly flat with depth (docs/benchmarks.md). A
scanned step runs slower, though (it copies every saved activation into and out of stacked
arrays), so stages up to ResNet-56's 8 repeated blocks stay unrolled by default. Scanned
parameters are stacked along a leading axis under ``blocks/block``; with ``scan=False`` the
same blocks are unrolled and named ``block1 … block{count-1}``, which is what the layer trace uses
(``cnn_jax.analysis.counting.trace_layers`` builds the unscanned twin).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax import layers, native

ModuleDef = Any

SHORTCUTS = ("A", "B")
DOWNSAMPLES = ("conv", "pool")
# Measured with the hand VJPs and oneDNN convolutions (bench.train_step --blocks=scan,unrolled,
# docs/benchmarks-history.md, 2026-11-25, a757273): ResNet-56 (8 repeated blocks per stage) compiles in 5.8 s
# scanned and 10.8 s unrolled, but its unrolled step is ~8% faster (65.2 vs 60.5 images/s):
# nn.scan stacks the 4 saved activations of each block (dynamic-update-slice, then
# dynamic-slice in the backward loop). ResNet-110 (17) must scan: unrolled, its compile would be
# ~5x ResNet-20's, against the 2.5x target.
MIN_SCANNED_BLOCKS = 9


def scan_settings(config) -> dict:
  """The residual families' ``scan_blocks`` and ``min_scanned_blocks`` from a config."""
  return dict(scan_blocks=config.get("scan_blocks", False),
              min_scanned_blocks=config.get("min_scanned_blocks", MIN_SCANNED_BLOCKS))


def batch_norm(train: bool, dtype, *, name: str, zero_scale: bool = False,
               grad: str = "autodiff", kernels: native.Kernels = native.XLA) -> layers.BatchNorm:
  """BatchNorm with running statistics in ``batch_stats`` (momentum 0.9, as He et al.'s Torch).

  ``zero_scale`` starts the scale at 0, so the branch it ends outputs 0 at init and its block
  starts as the identity (Goyal et al. 2017; the lesson's "identity mappings as a start").
  ``grad="hand"`` uses ``ops.hand.batch_norm`` (hand backward, channel sums as matmuls, or
  the native one-pass sums where ``kernels`` runs them).
  """
  return layers.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                          dtype=dtype, grad=grad, kernels=kernels, name=name,
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
             dtype, kernels: native.Kernels = native.XLA) -> jax.Array:
  """The shortcut path of a residual block; call inside a block's ``nn.compact`` method.

  Identity when the shape is kept; otherwise option ``"A"`` (``subsample_and_pad``) or ``"B"``
  (1×1 strided projection + BatchNorm, layers named ``shortcut_conv``/``shortcut_bn``).
  """
  if strides == 1 and x.shape[-1] == features:
    return x
  if kind == "A":
    return subsample_and_pad(x, strides, features)
  y = layers.Conv(features, 1, strides=strides, use_bias=False, grad=grad, kernels=kernels,
                  dtype=dtype, name="shortcut_conv")(x)
  return batch_norm(train, dtype, name="shortcut_bn", grad=grad, kernels=kernels)(y)


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
      there are at least ``min_scanned`` of them.
    min_scanned: the fewest repeated blocks that ``scan`` runs under ``nn.scan``.
  """
  block: ModuleDef
  count: int
  strides: int = 1
  downsample: str = "conv"
  pool: str = "max"
  scan: bool = True
  min_scanned: int = MIN_SCANNED_BLOCKS
  grad: str = "autodiff"
  kernels: native.Kernels = native.XLA

  @nn.compact
  def __call__(self, x, train: bool):
    strides = self.strides
    if strides > 1 and self.downsample == "pool":
      x = layers.Pool(self.pool, window=layers.downsampling_window(self.pool, strides),
                      stride=strides, padding="SAME", grad=self.grad, name="pool")(x)
      strides = 1
    x = self._stored(self.block(strides=strides, name="block0")(x, train))
    rest = self.count - 1
    if self.scan and rest >= self.min_scanned:
      scanned = nn.scan(_ScanBody, variable_axes={"params": 0, "batch_stats": 0},
                        split_rngs={"params": True}, in_axes=nn.broadcast, length=rest)
      x, _ = scanned(self.block, name="blocks")(x, train)
    else:
      for i in range(1, self.count):
        x = self._stored(self.block(strides=1, name=f"block{i}")(x, train))
    return x

  def _stored(self, x):
    """A block's output, stored once where the native kernels run (``native.materialize``):
    otherwise XLA recomputes the residual stream from the stage's start inside every later
    block."""
    return native.materialize(x) if self.kernels.native else x


def compute_dtype(name: str):
  """``"float32"`` / ``"bfloat16"`` → the jnp dtype."""
  return jnp.dtype(name)

