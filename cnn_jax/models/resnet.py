"""The CIFAR ResNets of He et al. (2016, §4.2) and their plain twins.

Depth 6n+2: a 3×3 stem conv, three stages of ``n`` basic blocks (two 3×3 convs) with
``width``, ``2·width``, ``4·width`` filters (16/32/64 in the paper), global average pooling and
one dense classifier. Every conv is followed by BatchNorm and ReLU; in ``resnet`` a block adds
its input (the shortcut) before the last ReLU. ``plain`` is *this same definition* with
``residual=False``: the shortcut is the only difference, so a depth study compares like with
like. Option A shortcuts (identity, zero-padded channels) add no parameters, which gives the
paper's counts: ResNet-20 0.27M, 32 0.46M, 44 0.66M, 56 0.85M, 110 1.7M.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax import layers, native
from cnn_jax.models import checks, stages


# The config fields this model reads whose default is its own (cnn_jax.models.with_defaults):
# ResNet-20 / plain-20 of He et al. (2016, §4.2), 16 first-stage filters.
CONFIG_DEFAULTS = {"depth": 20, "width": 16, "stride": 2, "downsample": "conv",
                   "cardinality": 1}


class BasicBlock(nn.Module):
  """Two 3×3 convs (BN, ReLU), plus the shortcut when ``residual``.

  ``x: (N, *spatial, C_in)`` → ``(N, *ceil(spatial / strides), features)``.

  Attributes:
    features: output channels.
    strides: stride of the first conv.
    residual: add the shortcut (False gives the plain block).
    shortcut: ``"A"`` or ``"B"`` for a shape-changing shortcut.
    groups: groups of both 3×3 convs (``cardinality``).
    zero_init_residual: start the last BN's scale at 0 (block starts as the identity).
  """
  features: int
  strides: int = 1
  residual: bool = True
  shortcut: str = "A"
  groups: int = 1
  zero_init_residual: bool = False
  grad: str = "autodiff"
  kernels: native.Kernels = native.XLA
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x, train: bool):
    dtype = stages.compute_dtype(self.dtype)
    conv = functools.partial(layers.Conv, self.features, 3, padding="SAME", use_bias=False,
                             groups=self.groups, grad=self.grad, kernels=self.kernels, dtype=dtype)
    y = conv(strides=self.strides, name="conv1")(x)
    y = nn.relu(stages.batch_norm(train, dtype, name="bn1", grad=self.grad,
                                  kernels=self.kernels)(y))
    y = conv(name="conv2")(y)
    y = stages.batch_norm(train, dtype, name="bn2",
                          zero_scale=self.zero_init_residual, grad=self.grad,
                          kernels=self.kernels)(y)
    if self.residual:
      y = y + stages.shortcut(x, features=self.features, strides=self.strides,
                              kind=self.shortcut, train=train, grad=self.grad,
                              kernels=self.kernels, dtype=dtype)
    return nn.relu(y)


class ResNet(nn.Module):
  """CIFAR ResNet / plain net of depth 6n+2 (He et al. 2016, §4.2).

  ``x: (N, *spatial, C)`` (1-D, 2-D or 3-D) → logits ``(N, num_classes)`` in float32.

  Attributes:
    num_classes: classifier outputs.
    depth: 6n+2.
    width: first-stage filters (16 in the paper); stages have width·1, ·2, ·4.
    residual: True for ``resnet``, False for ``plain``.
    shortcut: ``"A"`` (identity + zero channels, no parameters) or ``"B"`` (1×1 projection).
    cardinality: groups of every 3×3 conv of the blocks (1 = the paper).
    zero_init_residual: each block's last BN scale starts at 0.
    stride: downsampling factor of stages 2 and 3 (2 in the paper).
    first_stride: stride of the stem conv (1 in the paper).
    downsample: ``"conv"`` (strided first conv of a stage) or ``"pool"`` (pool, then blocks).
    pool: pooling kind for ``downsample="pool"``.
    grad: ``"autodiff"`` | ``"hand"``; dtype: compute dtype name.
    scan_blocks: run each stage's repeated blocks with ``nn.scan`` (fast compiles) when there
      are at least ``min_scanned_blocks`` of them (``stages.MIN_SCANNED_BLOCKS``: 9, so
      ResNet-110 scans and ResNet-56 and shallower stay unrolled, which step faster).
  """
  num_classes: int
  depth: int = 20
  width: int = 16
  residual: bool = True
  shortcut: str = "A"
  cardinality: int = 1
  zero_init_residual: bool = False
  stride: int = 2
  first_stride: int = 1
  downsample: str = "conv"
  pool: str = "max"
  grad: str = "autodiff"
  kernels: native.Kernels = native.XLA
  dtype: str = "float32"
  scan_blocks: bool = False
  min_scanned_blocks: int = stages.MIN_SCANNED_BLOCKS

  @property
  def model_name(self) -> str:
    return "resnet" if self.residual else "plain"

  def __post_init__(self):
    self.blocks_per_stage = checks.check_depth(self.model_name, self.depth, layers_per_block=2)
    validate_common(self, self.model_name)
    if self.width % self.cardinality:
      raise ValueError(f"cardinality={self.cardinality} is not allowed with width={self.width}: "
                       "the cardinality must divide the width (grouped 3x3 convs).")
    if self.zero_init_residual and not self.residual:
      raise ValueError("zero_init_residual=True is not allowed for model='plain': without a "
                       "shortcut a zero-scaled last BN makes every block output 0.")
    super().__post_init__()

  def downsampling_steps(self):
    return [("first_stride", self.first_stride), ("stride", self.stride), ("stride", self.stride)]

  @nn.compact
  def __call__(self, x, train: bool = False):
    checks.check_downsampling(x.shape[1:-1], self.downsampling_steps())
    dtype = stages.compute_dtype(self.dtype)
    x = layers.Conv(self.width, 3, strides=self.first_stride, padding="SAME", use_bias=False,
                    grad=self.grad, kernels=self.kernels, dtype=dtype, name="conv1")(x)
    x = nn.relu(stages.batch_norm(train, dtype, name="bn1", grad=self.grad,
                                  kernels=self.kernels)(x))
    for i in range(3):
      block = functools.partial(
          BasicBlock, features=self.width * 2 ** i, residual=self.residual,
          shortcut=self.shortcut, groups=self.cardinality,
          zero_init_residual=self.zero_init_residual, grad=self.grad, kernels=self.kernels,
          dtype=self.dtype)
      x = stages.Stage(block, self.blocks_per_stage, strides=1 if i == 0 else self.stride,
                       downsample=self.downsample, pool=self.pool, scan=self.scan_blocks,
                       min_scanned=self.min_scanned_blocks,
                       grad=self.grad, kernels=self.kernels, name=f"stage{i + 1}")(x, train)
    x = layers.GlobalAvgPool(grad=self.grad, name="global_pool")(x)
    x = layers.Dense(self.num_classes, dtype=dtype, name="classifier")(x)
    return x.astype(jnp.float32)


def validate_common(module, model: str) -> None:
  """Checks the fields every residual family shares (ValueError naming the field)."""
  del model
  checks.check_int("num_classes", module.num_classes)
  checks.check_int("width", module.width)
  checks.check_int("cardinality", module.cardinality)
  checks.check_int("stride", module.stride)
  checks.check_int("first_stride", module.first_stride)
  checks.check_int("min_scanned_blocks", module.min_scanned_blocks)
  checks.check_choice("shortcut", module.shortcut, stages.SHORTCUTS)
  checks.check_choice("downsample", module.downsample, stages.DOWNSAMPLES)
  checks.check_choice("pool", module.pool, layers.POOL_KINDS)
  checks.check_choice("grad", module.grad, ("autodiff", "hand"))
  checks.check_choice("dtype", module.dtype, ("float32", "bfloat16"))


def from_config(config, *, residual: bool) -> ResNet:
  """The ``resnet`` (``residual=True``) or ``plain`` network a config describes."""
  return ResNet(num_classes=config.num_classes, depth=config.depth, width=config.width,
                residual=residual, shortcut=config.shortcut, cardinality=config.cardinality,
                zero_init_residual=config.zero_init_residual, stride=config.stride,
                first_stride=config.first_stride, downsample=config.downsample,
                pool=config.pool, grad=config.grad, dtype=config.dtype,
                **stages.scan_settings(config))
