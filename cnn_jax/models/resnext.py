"""ResNeXt (Xie et al. 2017): aggregated residual transformations, in two equivalent forms.

A ResNeXt block splits its input into ``C`` (the cardinality) low-dimensional embeddings,
transforms each by its own 1×1 → 3×3 → 1×1 path of width ``d``, and merges them by summation
(form (a) of Xie et al., Fig. 3): ``SplitBlock`` below writes this out branch by branch. The
same function is a bottleneck block whose 3×3 conv has ``C`` groups (form (c)),
``bottleneck.BottleneckBlock``, which is what the network uses by default because one grouped
conv is far faster than ``C`` small ones. ``split_from_grouped`` maps the grouped form's weights
onto the split form's, and the tests check both give the same outputs.

The CIFAR ResNeXt-29 of the paper (Table 7) is ``depth=29, cardinality=8, width=64`` (8×64d,
34.4M parameters) or ``cardinality=16`` (16×64d, 68.1M): a 64-filter stem (``stem_width``), three
stages of three blocks with outputs 256/512/1024 and ``C·d`` = 512/1024/2048 inner channels, and
1×1 projection shortcuts (option B) where the shape changes, as in the paper's code.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import flax.linen as nn
import jax

from cnn_jax import layers, native
from cnn_jax.models import checks, stages
from cnn_jax.models.bottleneck import BottleneckResNet


# The config fields this model reads whose default is its own (cnn_jax.models.with_defaults):
# ResNeXt-29 (Xie et al.'s CIFAR depth) at 8×4d, a size a CPU trains in minutes.
CONFIG_DEFAULTS = {"depth": 29, "width": 4, "cardinality": 8, "stride": 2,
                   "downsample": "conv"}


class SplitBlock(nn.Module):
  """Split-transform-merge ResNeXt block, form (a): ``groups`` explicit branches, summed.

  Branch ``i``: 1×1 conv to ``d = inner_features // groups`` channels, BN, ReLU; 3×3 conv
  (stride) to ``d``, BN, ReLU; 1×1 conv to ``features``. The branch outputs are summed, then
  one BN (``bn3``), the shortcut and a ReLU, so that BN sees the same aggregated tensor as in the
  grouped form. Attributes as ``bottleneck.BottleneckBlock``.
  """
  features: int
  inner_features: int
  groups: int = 1
  strides: int = 1
  residual: bool = True
  shortcut: str = "B"
  zero_init_residual: bool = False
  grad: str = "autodiff"
  kernels: native.Kernels = native.XLA
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x, train: bool):
    dtype = stages.compute_dtype(self.dtype)
    conv = functools.partial(layers.Conv, padding="SAME", use_bias=False, grad=self.grad,
                             kernels=self.kernels,
                             dtype=dtype)
    width = self.inner_features // self.groups
    merged = 0
    for i in range(self.groups):
      y = conv(width, 1, name=f"branch{i}_conv1")(x)
      y = nn.relu(stages.batch_norm(train, dtype, name=f"branch{i}_bn1", grad=self.grad,
                                    kernels=self.kernels)(y))
      y = conv(width, 3, strides=self.strides, name=f"branch{i}_conv2")(y)
      y = nn.relu(stages.batch_norm(train, dtype, name=f"branch{i}_bn2", grad=self.grad,
                                    kernels=self.kernels)(y))
      merged = merged + conv(self.features, 1, name=f"branch{i}_conv3")(y)
    y = stages.batch_norm(train, dtype, name="bn3",
                          zero_scale=self.zero_init_residual, grad=self.grad,
                          kernels=self.kernels)(merged)
    if self.residual:
      y = y + stages.shortcut(x, features=self.features, strides=self.strides,
                              kind=self.shortcut, train=train, grad=self.grad,
                              kernels=self.kernels, dtype=dtype)
    return nn.relu(y)


def split_from_grouped(variables: Mapping[str, Any], cardinality: int) -> dict:
  """Maps a grouped-form network's variables onto the split form's (same function).

  Every block (a dict with ``bn3``: in ``params`` it also holds ``conv1…3``, in ``batch_stats``
  only the BNs' statistics) becomes ``cardinality``
  branches: branch ``i`` takes output channels ``[i·d, (i+1)·d)`` of ``conv1``, ``bn1``,
  ``conv2`` (whose group ``i`` reads exactly those channels) and ``bn2``, and input channels
  ``[i·d, (i+1)·d)`` of ``conv3``, whose sum over branches is the full 1×1 conv. Slices index the
  trailing axes only, so blocks stacked by ``nn.scan`` (a leading block axis) map as they are.

  Args:
    variables: ``{"params": …, "batch_stats": …}`` of a ``BottleneckResNet`` with
      ``block_form="grouped"``.
    cardinality: its cardinality.

  Returns:
    Variables for the same network with ``block_form="split"``.
  """
  def convert(tree):
    if not isinstance(tree, Mapping):
      return tree
    if "bn3" in tree:  # only bottleneck blocks have a third BN
      return _split_block(tree, cardinality)
    return {key: convert(value) for key, value in tree.items()}
  return {collection: convert(tree) for collection, tree in variables.items()}


def _split_block(block: Mapping[str, Any], cardinality: int) -> dict:
  inner = jax.tree.leaves(block["bn1"])[0].shape[-1]
  d = inner // cardinality
  out = {key: value for key, value in block.items()
         if key not in ("conv1", "conv2", "conv3", "bn1", "bn2")}
  last = lambda a, i: a[..., i * d:(i + 1) * d]
  for i in range(cardinality):
    if "conv1" in block:  # the params collection
      out[f"branch{i}_conv1"] = {"kernel": last(block["conv1"]["kernel"], i)}
      out[f"branch{i}_conv2"] = {"kernel": last(block["conv2"]["kernel"], i)}
      out[f"branch{i}_conv3"] = {"kernel": block["conv3"]["kernel"][..., i * d:(i + 1) * d, :]}
    for bn in ("bn1", "bn2"):  # scale/bias in params, mean/var in batch_stats: per channel
      out[f"branch{i}_{bn}"] = jax.tree.map(lambda a, i=i: last(a, i), dict(block[bn]))
  return out


def from_config(config, *, block_form: str = "grouped") -> BottleneckResNet:
  """ResNeXt of Xie et al.: ``width`` is the per-group bottleneck width ``d`` of stage 1."""
  checks.check_int("stem_width", config.stem_width)
  return BottleneckResNet(
      num_classes=config.num_classes, depth=config.depth, stem_features=config.stem_width,
      bottleneck_width=config.width, cardinality=config.cardinality, shortcut="B",
      zero_init_residual=config.zero_init_residual, stride=config.stride,
      first_stride=config.first_stride, downsample=config.downsample, pool=config.pool,
      grad=config.grad, dtype=config.dtype, block_form=block_form, model="resnext",
      **stages.scan_settings(config))
