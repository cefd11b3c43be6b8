"""The model zoo, selected by name: ``cnn_jax.models.build(config) -> flax.linen.Module``.

Every model is called as ``model.apply(variables, x, train=bool, mutable=[...])`` with ``x``
float ``(N, H, W, C)`` (or ``(N, L, C)`` for 1-D data, ``(N, D, H, W, C)`` for 3-D) and returns
float32 logits ``(N, config.num_classes)``. BatchNorm statistics live in ``batch_stats``.

=============  =====================================================================
``mlp``        dense layers only (``depth`` layers, ``hidden`` units)
``local``      ``simple_cnn``'s topology with locally connected (unshared) layers
``simple_cnn`` conv → ReLU → pool blocks, flatten, dense (the lesson's CNN)
``plain``      ``resnet`` with the shortcuts removed (same definition)
``resnet``     CIFAR ResNet of He et al. 2016, depth 6n+2, option A/B shortcuts
``bottleneck`` 1×1 → 3×3 → 1×1 residual blocks, depth 9n+2
``resnext``    ResNeXt of Xie et al. 2017, cardinality × width, depth 9n+2
=============  =====================================================================

Bad configs raise one-line ``ValueError``s naming the field, here or when the model first sees
its input shape, before anything is traced.

``build`` also resolves the config's ``kernels`` / ``conv_algorithm`` (``cnn_jax.native``) and
gives the result to every layer as a module field: the kernels a model runs are part of it.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn

from cnn_jax import native
from cnn_jax.models import bottleneck, local, mlp, resnet, resnext, simple_cnn

MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp.from_config,
    "local": local.from_config,
    "simple_cnn": simple_cnn.from_config,
    "plain": lambda config: resnet.from_config(config, residual=False),
    "resnet": lambda config: resnet.from_config(config, residual=True),
    "bottleneck": bottleneck.from_config,
    "resnext": resnext.from_config,
}


def build(config, *, num_devices: int | None = None) -> nn.Module:
  """The (unbound) Flax module that ``config.model`` names, with its hyper-parameters.

  Args:
    config: a ``ml_collections.ConfigDict`` (see ``experiments/configs/default.py``); reads
      ``model``, ``num_classes``, ``kernels``, ``conv_algorithm`` and the model's own fields.
    num_devices: devices the model will run on (default: all, ``jax.device_count()``); the
      native kernels run on one (``native.resolve``).

  Raises:
    ValueError: for an unknown model (listing the allowed names) or any bad field (naming it),
      including a ``kernels`` choice that cannot run here.
  """
  name = config.model
  if name not in MODELS:
    raise ValueError(f"model={name!r} is not allowed: give one of {', '.join(MODELS)}.")
  if "num_classes" not in config:
    raise ValueError("num_classes is missing from the config: set config.num_classes (the "
                     "trainer sets it from the dataset).")
  model = MODELS[name](config)
  kernels = native.from_config(config, num_devices)
  return model.clone(kernels=kernels) if hasattr(model, "kernels") else model
