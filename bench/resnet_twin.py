"""The bench's own reference model: a minimal Flax CIFAR ResNet, twin of ``torch_twin``.

This is NOT the project's model (that is ``cnn_jax.models.build``); it exists so that
``bench.train_step`` can measure before the project model lands, and so that the JAX and
PyTorch sides of every comparison run exactly the same network:

  He et al. (2016) CIFAR ResNet of depth ``6n + 2``: a 3x3 conv with 16 filters, then three
  stages of ``n`` basic blocks (two 3x3 convs, each followed by batch norm; ReLU after the
  first and after the residual sum) with 16, 32 and 64 filters; the first block of stages 2
  and 3 has stride 2. Option A shortcuts: identity, or ``x[:, ::2, ::2]`` zero-padded in
  channels where the shape changes (no parameters). Global average pool, dense to classes.

Convs use explicit padding 1 (as PyTorch's ``padding=1``), not XLA's "SAME", which pads a
stride-2 conv (0, 1) instead of (1, 1) and would make the two twins compute different
functions. The correlation function is a field, so a faster formulation (e.g.
``cnn_jax.ops.hand.correlate``) can be swapped in without touching the architecture.

``resnet_forward_flops`` gives the forward FLOPs of this architecture analytically
(2 FLOPs per multiply-accumulate of convs and the dense layer; BN, ReLU, adds and pooling are
O(activations) and left out, as is usual).
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax import ops


def stage_blocks(depth: int) -> int:
  """Blocks per stage ``n`` for a CIFAR ResNet of ``depth = 6 n + 2``.

  Raises:
    ValueError: if ``depth`` is not ``6 n + 2`` with ``n >= 1``.
  """
  if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
    raise ValueError(f"depth={depth!r} is not allowed: a CIFAR ResNet has depth 6n+2 "
                     "(8, 14, 20, 32, 44, 56, 110, ...).")
  return (depth - 2) // 6


def resnet_forward_flops(depth: int, image_size: int = 32, in_channels: int = 3,
                         width: int = 16, num_classes: int = 10) -> int:
  """Forward FLOPs per image (2 x MACs of convs + dense) of the CIFAR ResNet above.

  ResNet-20 on 32x32x3 gives 81.1 MFLOPs (40.6 M MACs), the figure usually quoted.
  """
  n = stage_blocks(depth)
  macs = image_size * image_size * 9 * in_channels * width  # stem
  size, c_in = image_size, width
  for stage in range(3):
    c_out = width * 2 ** stage
    for block in range(n):
      stride = 2 if (stage > 0 and block == 0) else 1
      size_out = (size + 2 - 3) // stride + 1
      macs += size_out * size_out * 9 * c_in * c_out  # first conv of the block
      macs += size_out * size_out * 9 * c_out * c_out  # second conv
      size, c_in = size_out, c_out
  macs += c_in * num_classes
  return 2 * macs


class TwinConv(nn.Module):
  """A bias-free 3x3 conv with padding 1 over a pluggable correlation function."""
  features: int
  stride: int = 1
  correlate: Callable[..., jax.Array] = ops.correlate

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.initializers.kaiming_normal(), (3, 3, x.shape[-1],
                                                                     self.features))
    return self.correlate(x, kernel, stride=self.stride, padding=1)


class TwinBlock(nn.Module):
  """Basic block with an option-A shortcut."""
  features: int
  stride: int
  correlate: Callable[..., jax.Array]

  @nn.compact
  def __call__(self, x, train: bool):
    norm = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9,
                                     epsilon=1e-5, name=name)
    y = TwinConv(self.features, self.stride, self.correlate, name="conv1")(x)
    y = nn.relu(norm("bn1")(y))
    y = TwinConv(self.features, 1, self.correlate, name="conv2")(y)
    y = norm("bn2")(y)
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.features:
      # Option A: subsample, then zero-pad the new channels equally on both sides (PyTorch
      # twin does the same), so the shortcut has no parameters.
      shortcut = x[:, ::self.stride, ::self.stride, :]
      extra = self.features - x.shape[-1]
      shortcut = jnp.pad(shortcut, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
    return nn.relu(y + shortcut)


class _ScanBody(nn.Module):
  """One shape-preserving block in the ``(carry, output)`` form ``nn.scan`` needs."""
  features: int
  correlate: Callable[..., jax.Array]
  train: bool

  @nn.compact
  def __call__(self, x, _):
    return TwinBlock(self.features, 1, self.correlate, name="block")(x, self.train), None


class TwinResNet(nn.Module):
  """CIFAR ResNet of depth ``6 n + 2`` (see the module docstring).

  Called as ``apply(variables, x, train=bool, mutable=["batch_stats"])`` with x ``(N, H, W, C)``;
  returns logits ``(N, num_classes)``.

  ``scan=True`` runs the ``n - 1`` identical blocks after each stage's first as one
  ``nn.scan`` (parameters stacked on a leading axis): the same function, but XLA compiles one
  block body per stage instead of ``n - 1`` copies, so compile time stops growing with depth.
  """
  depth: int = 20
  num_classes: int = 10
  width: int = 16
  correlate: Callable[..., jax.Array] = ops.correlate
  dtype: Any = jnp.float32
  scan: bool = False

  @nn.compact
  def __call__(self, x, train: bool = True):
    n = stage_blocks(self.depth)
    x = TwinConv(self.width, 1, self.correlate, name="conv_stem")(x.astype(self.dtype))
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                             name="bn_stem")(x))
    for stage in range(3):
      features = self.width * 2 ** stage
      if self.scan:
        x = TwinBlock(features, 2 if stage > 0 else 1, self.correlate,
                      name=f"stage{stage + 1}_block1")(x, train)
        if n > 1:
          stage_scan = nn.scan(_ScanBody, variable_axes={"params": 0, "batch_stats": 0},
                               split_rngs={"params": True}, length=n - 1)
          x, _ = stage_scan(features, self.correlate, train, name=f"stage{stage + 1}_rest")(
              x, None)
        continue
      for block in range(n):
        stride = 2 if (stage > 0 and block == 0) else 1
        x = TwinBlock(features, stride, self.correlate,
                      name=f"stage{stage + 1}_block{block + 1}")(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, name="classifier")(x)
