"""The lesson's CNN: conv → ReLU → pool blocks alternated, then flatten and dense layers.

``depth`` blocks; block ``i`` is a 3×3 SAME layer with ``width·2^k`` filters (``k`` = the number
of downsamplings before it, so channels double whenever the map shrinks), a ReLU and a
downsampling by ``stride``: by a pool of window = stride (``downsample="pool"``, kind ``pool``:
max, avg, Gaussian-weighted or L2; the Gaussian's window is ``2·stride − 1``, centred, see
``layers.downsampling_window``) or by striding the block's own conv (``downsample="conv"``).
Block 0's layer is also strided by ``first_stride``. After the blocks: flatten, one hidden
dense layer of ``hidden`` units with ReLU, and the classifier.

``connectivity="local"`` swaps every conv for a locally connected layer (one kernel per output
position): the same topology with no weight sharing, the ``local`` model. Dense, local and
shared layers thus differ in one place only, which is what the scale table of docs/models.md
compares.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax import layers, native
from cnn_jax import ops
from cnn_jax.models import checks, stages

CONNECTIVITIES = ("shared", "local")
HEADS = ("flatten", "global_avg", "global_max")


# The config fields this model reads whose default is its own (cnn_jax.models.with_defaults):
# the lesson's two conv-pool blocks, which fit even 8x8 inputs.
CONFIG_DEFAULTS = {"depth": 2, "width": 16, "stride": 2, "downsample": "pool"}


class SimpleCNN(nn.Module):
  """``x: (N, *spatial, C)`` (1-D, 2-D or 3-D) → logits ``(N, num_classes)`` (float32).

  Attributes:
    num_classes: classifier outputs.
    depth: number of conv(-pool) blocks, >= 1.
    width: filters of the first block.
    hidden: units of the hidden dense layer.
    stride: downsampling factor of every block (1: no downsampling, no pool).
    first_stride: extra stride of block 0's layer.
    downsample: ``"pool"`` or ``"conv"``.
    pool: ``"max"``, ``"avg"``, ``"weighted"`` or ``"l2"``.
    connectivity: ``"shared"`` (convolution) or ``"local"`` (locally connected).
    head: how the last feature map meets the dense layers: ``"flatten"`` (keeps positions,
      as in the lesson) or ``"global_avg"``/``"global_max"`` (pools every position away, which
      makes the prediction invariant to translations of the input, up to stride aliasing).
    grad: ``"autodiff"`` | ``"hand"``; dtype: compute dtype name.
  """
  num_classes: int
  depth: int = 2
  width: int = 16
  hidden: int = 128
  stride: int = 2
  first_stride: int = 1
  downsample: str = "pool"
  pool: str = "max"
  connectivity: str = "shared"
  head: str = "flatten"
  grad: str = "autodiff"
  kernels: native.Kernels = native.XLA
  dtype: str = "float32"

  @property
  def model_name(self) -> str:
    return "simple_cnn" if self.connectivity == "shared" else "local"

  def __post_init__(self):
    for field in ("num_classes", "depth", "width", "hidden", "stride", "first_stride"):
      checks.check_int(field, getattr(self, field))
    checks.check_choice("downsample", self.downsample, stages.DOWNSAMPLES)
    checks.check_choice("pool", self.pool, layers.POOL_KINDS)
    checks.check_choice("connectivity", self.connectivity, CONNECTIVITIES)
    checks.check_choice("head", self.head, HEADS)
    checks.check_choice("grad", self.grad, ("autodiff", "hand"))
    checks.check_choice("dtype", self.dtype, ("float32", "bfloat16"))
    super().__post_init__()

  def downsampling_steps(self):
    return [("first_stride", self.first_stride)] + [("stride", self.stride)] * self.depth

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # no BatchNorm or dropout
    checks.check_downsampling(x.shape[1:-1], self.downsampling_steps())
    dtype = stages.compute_dtype(self.dtype)
    if self.connectivity == "shared":
      layer_cls = functools.partial(layers.Conv, kernels=self.kernels)
    else:  # the native kernels share weights; a locally connected layer runs its op
      layer_cls = layers.LocallyConnected
    features = self.width
    for i in range(self.depth):
      strides = self.first_stride if i == 0 else 1
      if self.downsample == "conv":
        strides *= self.stride
      x = layer_cls(features, 3, strides=strides, padding="SAME", grad=self.grad, dtype=dtype,
                    name=f"conv{i + 1}" if self.connectivity == "shared" else f"local{i + 1}")(x)
      x = nn.relu(x)
      if self.downsample == "pool" and self.stride > 1:
        x = layers.Pool(self.pool, window=layers.downsampling_window(self.pool, self.stride),
                        stride=self.stride, padding="SAME", grad=self.grad,
                        name=f"pool{i + 1}")(x)
      if self.stride > 1:
        features *= 2
    if self.head == "flatten":
      x = x.reshape(x.shape[0], -1)
    else:
      x = getattr(ops.for_grad(self.grad), f"{self.head}_pool")(x)
    x = nn.relu(layers.Dense(self.hidden, dtype=dtype, name="dense1")(x))
    x = layers.Dense(self.num_classes, dtype=dtype, name="classifier")(x)
    return x.astype(jnp.float32)


def from_config(config, *, connectivity: str = "shared") -> SimpleCNN:
  return SimpleCNN(num_classes=config.num_classes, depth=config.depth, width=config.width,
                   hidden=config.hidden, stride=config.stride, first_stride=config.first_stride,
                   downsample=config.downsample, pool=config.pool, connectivity=connectivity,
                   head=config.get("head", "flatten"), grad=config.grad, dtype=config.dtype)
