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

Each model has defaults of its own for the fields whose sensible value depends on the model
(``depth``, ``width``, ``stride``, ``downsample``, ``cardinality``): in the default config these
fields are ``None``, meaning "the model's own", and ``with_defaults`` fills them from
``DEFAULTS`` (defined next to each model as ``CONFIG_DEFAULTS``); a value the user sets wins and
is checked as any other. The trainer saves the filled-in values in ``config.json``.

Bad configs raise one-line ``ValueError``s naming the field, here or when the model first sees
its input shape, before anything is traced.

``build`` also resolves the config's ``kernels`` / ``conv_algorithm`` (``cnn_jax.native``) and
gives the result to every layer as a module field: the kernels a model runs are part of it.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Mapping

import flax.linen as nn
import ml_collections

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

# name → {config field: the model's own value}, applied where the config leaves a field None.
DEFAULTS: dict[str, dict[str, Any]] = {
    "mlp": mlp.CONFIG_DEFAULTS,
    "local": simple_cnn.CONFIG_DEFAULTS,
    "simple_cnn": simple_cnn.CONFIG_DEFAULTS,
    "plain": resnet.CONFIG_DEFAULTS,
    "resnet": resnet.CONFIG_DEFAULTS,
    "bottleneck": bottleneck.CONFIG_DEFAULTS,
    "resnext": resnext.CONFIG_DEFAULTS,
}


def field_type(field: str) -> type | None:
  """The type of a per-model field (``int`` for ``depth``), or None if no model has it."""
  for defaults in DEFAULTS.values():
    if field in defaults:
      return type(defaults[field])
  return None


def with_defaults(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of ``config`` whose ``None`` model fields hold ``config.model``'s own defaults.

  Fields the user set are kept as they are (and checked when the model is built); fields the
  model does not read stay ``None``. An unknown model is returned unchanged (``build`` names
  the allowed ones).
  """
  config = copy.deepcopy(config)
  for field, value in DEFAULTS.get(config.get("model"), {}).items():
    if config.get(field) is None:
      with config.unlocked():
        config[field] = value
  return config


def resolved(config: Mapping[str, Any]) -> dict[str, Any]:
  """``with_defaults`` for a plain mapping (a recorded ``config.json``): a dict whose ``None``
  model fields hold ``config["model"]``'s own defaults."""
  out = dict(config)
  for field, value in DEFAULTS.get(out.get("model"), {}).items():
    if out.get(field) is None:
      out[field] = value
  return out


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
  model = MODELS[name](with_defaults(config))
  kernels = native.from_config(config, num_devices)
  return model.clone(kernels=kernels) if hasattr(model, "kernels") else model
