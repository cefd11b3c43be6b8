"""The locally connected net: the simple CNN's topology with unshared kernels.

Every output position has its own 3×3 kernel (``layers.LocallyConnected``), so the network
connects only neighbours, like a CNN, but shares nothing, like an MLP: its parameter count grows
linearly with the input's area while the CNN's stays constant (docs/models.md, scale table).
"""

from __future__ import annotations

from cnn_jax.models import simple_cnn


def from_config(config) -> simple_cnn.SimpleCNN:
  """``simple_cnn.SimpleCNN`` with ``connectivity="local"``; same config fields."""
  return simple_cnn.from_config(config, connectivity="local")
