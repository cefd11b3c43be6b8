"""Bottleneck residual networks (depth 9n+2): 1×1 → 3×3 → 1×1 blocks.

A 1×1 convolution is a weighted pooling along the depth (channel) axis: it mixes channels at
each position with no spatial extent. A bottleneck block uses one to shrink ``4·w`` channels to
``w``, does the spatial 3×3 work at the narrow width, and expands back with another, which costs
``4w·w + 9w·w + w·4w = 17w²`` weights per block instead of the ``2·9·(4w)² = 288w²`` of two
3×3 convs at full width. ``docs/models.md`` tabulates the parameter and FLOP savings.

The same network, with a grouped 3×3 conv and wider bottlenecks, is ResNeXt
(``cnn_jax.models.resnext``): ``BottleneckResNet`` takes ``cardinality`` (groups of the 3×3)
and ``bottleneck_width`` so one definition serves both families. Stage ``i`` (0, 1, 2) has
``4 · stem_features · 2^i`` output channels and ``inner · 2^i`` bottleneck channels, where
``inner`` is ``bottleneck_width`` for ``model="bottleneck"`` (He et al.: the whole bottleneck,
split into ``cardinality`` groups) and ``cardinality · bottleneck_width`` for
``model="resnext"`` (Xie et al.'s C×d: ``d`` channels per group). He et al.'s CIFAR
bottleneck ResNets have cardinality 1 and ``bottleneck_width = stem_features = 16`` (outputs
64/128/256); Xie et al.'s ResNeXt-29 8×64d has cardinality 8, d = 64 and a 64-filter stem
(outputs 256/512/1024).
"""

from __future__ import annotations

import functools
import zlib

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax import layers, native, ops
from cnn_jax.models import checks, stages
from cnn_jax.models.resnet import validate_common

BLOCK_FORMS = ("grouped", "split")
# What does the first 1x1 (the reduce): a learned conv, depth average pooling (equal fixed
# weights), or a fixed random 1x1 (He-normal, never trained): experiments/one_by_one.py.
REDUCES = ("conv", "depth_avg", "fixed_random")


# The config fields this model reads whose default is its own (cnn_jax.models.with_defaults):
# three bottleneck blocks per stage (depth 9·3+2), 16-wide stem and first stage.
CONFIG_DEFAULTS = {"depth": 29, "width": 16, "stride": 2, "downsample": "conv",
                   "cardinality": 1}


class BottleneckBlock(nn.Module):
  """1×1 (inner) → 3×3 grouped (inner, stride) → 1×1 (features), BN after each, + shortcut.

  ``x: (N, *spatial, C_in)`` → ``(N, *ceil(spatial / strides), features)``. This is the
  grouped-convolution form (c) of Xie et al. (2017, Fig. 3); ``resnext.SplitBlock`` is form (a).

  Attributes:
    features: output channels.
    inner_features: bottleneck channels (cardinality × width per group).
    groups: groups of the 3×3 conv (the cardinality).
    strides: stride of the 3×3 conv.
    residual, shortcut, zero_init_residual, grad, dtype: as ``resnet.BasicBlock``.
    reduce: the first 1×1 layer, one of ``REDUCES``.
  """
  features: int
  inner_features: int
  groups: int = 1
  strides: int = 1
  residual: bool = True
  shortcut: str = "A"
  zero_init_residual: bool = False
  grad: str = "autodiff"
  kernels: native.Kernels = native.XLA
  dtype: str = "float32"
  reduce: str = "conv"

  def _reduce(self, x, conv):
    if self.reduce == "conv":
      return conv(self.inner_features, 1, name="conv1")(x)
    if self.reduce == "depth_avg":
      return ops.depth_avg_pool(x, self.inner_features)
    # A constant of the program, not a parameter: seeded by the block's path, so every block
    # has its own and every call the same.
    seed = zlib.crc32("/".join(self.scope.path).encode())
    fan_in = x.shape[-1]
    w = jax.random.normal(jax.random.key(seed), (1, 1, fan_in, self.inner_features))
    return ops.for_grad(self.grad).correlate(x, (w * (2.0 / fan_in) ** 0.5).astype(x.dtype))

  @nn.compact
  def __call__(self, x, train: bool):
    dtype = stages.compute_dtype(self.dtype)
    conv = functools.partial(layers.Conv, padding="SAME", use_bias=False, grad=self.grad,
                             kernels=self.kernels,
                             dtype=dtype)
    y = self._reduce(x, conv)
    y = nn.relu(stages.batch_norm(train, dtype, name="bn1", grad=self.grad,
                                  kernels=self.kernels)(y))
    y = conv(self.inner_features, 3, strides=self.strides, groups=self.groups, name="conv2")(y)
    y = nn.relu(stages.batch_norm(train, dtype, name="bn2", grad=self.grad,
                                  kernels=self.kernels)(y))
    y = conv(self.features, 1, name="conv3")(y)
    y = stages.batch_norm(train, dtype, name="bn3",
                          zero_scale=self.zero_init_residual, grad=self.grad,
                          kernels=self.kernels)(y)
    if self.residual:
      y = y + stages.shortcut(x, features=self.features, strides=self.strides,
                              kind=self.shortcut, train=train, grad=self.grad,
                              kernels=self.kernels, dtype=dtype)
    return nn.relu(y)


class BottleneckResNet(nn.Module):
  """CIFAR bottleneck ResNet / ResNeXt of depth 9n+2.

  ``x: (N, *spatial, C)`` → logits ``(N, num_classes)`` (float32).

  Attributes:
    num_classes: classifier outputs.
    depth: 9n+2 (n blocks per stage, three stages).
    stem_features: filters of the 3×3 stem conv; stage outputs are 4×, 8×, 16× this.
    bottleneck_width: stage-1 bottleneck width: in total (``model="bottleneck"``) or per group
      (``model="resnext"``); doubles every stage.
    cardinality: groups of the 3×3 convs.
    block_form: ``"grouped"`` (one grouped conv) or ``"split"`` (explicit
      split-transform-merge branches, ``resnext.SplitBlock``; same function, given the weights).
    model: the name used in error messages (``"bottleneck"`` or ``"resnext"``).
    Other attributes as ``resnet.ResNet``.
  """
  num_classes: int
  depth: int = 29
  stem_features: int = 16
  bottleneck_width: int = 16
  cardinality: int = 1
  residual: bool = True
  shortcut: str = "A"
  zero_init_residual: bool = False
  stride: int = 2
  first_stride: int = 1
  downsample: str = "conv"
  pool: str = "max"
  grad: str = "autodiff"
  kernels: native.Kernels = native.XLA
  dtype: str = "float32"
  block_form: str = "grouped"
  model: str = "bottleneck"
  scan_blocks: bool = False
  min_scanned_blocks: int = stages.MIN_SCANNED_BLOCKS
  reduce: str = "conv"

  @property
  def width(self) -> int:
    return self.bottleneck_width

  def __post_init__(self):
    self.blocks_per_stage = checks.check_depth(self.model, self.depth, layers_per_block=3)
    validate_common(self, self.model)
    checks.check_int("stem_features", self.stem_features)
    checks.check_choice("block_form", self.block_form, BLOCK_FORMS)
    checks.check_choice("reduce", self.reduce, REDUCES)
    if self.reduce != "conv" and self.block_form != "grouped":
      raise ValueError(f"reduce={self.reduce!r} is not allowed with block_form="
                       f"{self.block_form!r}: only the grouped block's 1x1 reduce is swapped.")
    if self.model == "bottleneck" and self.bottleneck_width % self.cardinality:
      # Here ``width`` is the whole bottleneck (He et al.), which the groups must split evenly.
      raise ValueError(f"cardinality={self.cardinality} is not allowed with "
                       f"width={self.bottleneck_width}: the cardinality must divide the width.")
    super().__post_init__()

  def downsampling_steps(self):
    return [("first_stride", self.first_stride), ("stride", self.stride), ("stride", self.stride)]

  @nn.compact
  def __call__(self, x, train: bool = False):
    checks.check_downsampling(x.shape[1:-1], self.downsampling_steps())
    dtype = stages.compute_dtype(self.dtype)
    x = layers.Conv(self.stem_features, 3, strides=self.first_stride, padding="SAME",
                    use_bias=False, grad=self.grad, kernels=self.kernels, dtype=dtype,
                        name="conv1")(x)
    x = nn.relu(stages.batch_norm(train, dtype, name="bn1", grad=self.grad,
                                  kernels=self.kernels)(x))
    if self.block_form == "grouped":
      block_cls = BottleneckBlock
    else:
      from cnn_jax.models.resnext import SplitBlock  # pylint: disable=g-import-not-at-top
      block_cls = SplitBlock
    # He et al. and Xie et al. let the bottleneck width be the total (C = 1) or per-group width.
    inner = self.bottleneck_width if self.model == "bottleneck" else (
        self.cardinality * self.bottleneck_width)
    for i in range(3):
      extra = {"reduce": self.reduce} if block_cls is BottleneckBlock else {}
      block = functools.partial(
          block_cls, features=4 * self.stem_features * 2 ** i, inner_features=inner * 2 ** i,
          **extra,
          groups=self.cardinality, residual=self.residual, shortcut=self.shortcut,
          zero_init_residual=self.zero_init_residual, grad=self.grad, kernels=self.kernels,
          dtype=self.dtype)
      x = stages.Stage(block, self.blocks_per_stage, strides=1 if i == 0 else self.stride,
                       downsample=self.downsample, pool=self.pool, scan=self.scan_blocks,
                       min_scanned=self.min_scanned_blocks,
                       grad=self.grad, kernels=self.kernels, name=f"stage{i + 1}")(x, train)
    x = layers.GlobalAvgPool(grad=self.grad, name="global_pool")(x)
    x = layers.Dense(self.num_classes, dtype=dtype, name="classifier")(x)
    return x.astype(jnp.float32)


def from_config(config) -> BottleneckResNet:
  """He et al.'s CIFAR bottleneck ResNet: ``width`` is the stem and stage-1 bottleneck width."""
  return BottleneckResNet(
      num_classes=config.num_classes, depth=config.depth, stem_features=config.width,
      bottleneck_width=config.width, cardinality=config.cardinality, shortcut=config.shortcut,
      zero_init_residual=config.zero_init_residual, stride=config.stride,
      first_stride=config.first_stride, downsample=config.downsample, pool=config.pool,
      grad=config.grad, dtype=config.dtype, model="bottleneck",
      reduce=config.get("reduce", "conv"), **stages.scan_settings(config))
