"""The fully connected baseline: flatten, ``depth - 1`` hidden ReLU layers, a linear classifier.

With ``depth=1`` it is multinomial logistic regression, the lesson's scale example: a
224×224×3 image into 10 classes takes 150,528 × 10 = 1,505,280 weights (plus 10 biases).
Every weight of the first layer is tied to one input position, so the count grows linearly with
the number of pixels, and nothing is shared between positions (no translation invariance).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax import layers
from cnn_jax.models import checks, stages


# The config fields this model reads whose default is its own (cnn_jax.models.with_defaults).
CONFIG_DEFAULTS = {"depth": 2}


class MLP(nn.Module):
  """``x: (N, *spatial, C)`` → logits ``(N, num_classes)`` (float32).

  Attributes:
    num_classes: classifier outputs.
    depth: number of dense layers (>= 1; ``depth - 1`` hidden layers).
    hidden: units of every hidden layer.
    dtype: compute dtype name.
  """
  num_classes: int
  depth: int = 2
  hidden: int = 128
  dtype: str = "float32"

  def __post_init__(self):
    checks.check_int("num_classes", self.num_classes)
    checks.check_int("depth", self.depth)
    checks.check_int("hidden", self.hidden)
    checks.check_choice("dtype", self.dtype, ("float32", "bfloat16"))
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # no BatchNorm or dropout: train and eval are the same function
    dtype = stages.compute_dtype(self.dtype)
    x = x.reshape(x.shape[0], -1)
    for i in range(self.depth - 1):
      x = nn.relu(layers.Dense(self.hidden, dtype=dtype, name=f"dense{i + 1}")(x))
    x = layers.Dense(self.num_classes, dtype=dtype, name="classifier")(x)
    return x.astype(jnp.float32)


def from_config(config) -> MLP:
  return MLP(num_classes=config.num_classes, depth=config.depth, hidden=config.hidden,
             dtype=config.dtype)
