"""Optimizers and learning-rate schedules chosen by config fields, and their input checks.

The recipe of He et al. (2016, §4.2) is the default: SGD with momentum 0.9, weight decay 1e-4
(coupled, i.e. added to the gradient as L2 regularisation), learning rate 0.1 divided by 10 at
50% and 75% of training. AdamW (decoupled decay) and a cosine schedule with linear warm-up are
the alternatives. Weight decay applies to kernels only (leaves named ``kernel``): decaying
BatchNorm scales and biases only fights the normalisation (Goyal et al. 2017 do the same).
"""

from __future__ import annotations

import math

import jax
import optax

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("step", "cosine", "constant")


def validate(config) -> None:
  """Checks the optimisation fields of ``config``.

  Raises:
    ValueError: one line naming the first bad field, its value and what is allowed.
  """
  if config.optimizer not in OPTIMIZERS:
    raise ValueError(f"optimizer={config.optimizer!r}: allowed {', '.join(OPTIMIZERS)}")
  if config.schedule not in SCHEDULES:
    raise ValueError(f"schedule={config.schedule!r}: allowed {', '.join(SCHEDULES)}")
  lr = config.learning_rate
  if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
    raise ValueError(f"learning_rate={lr!r}: must be a finite number > 0")
  if not 0 <= config.momentum < 1:
    raise ValueError(f"momentum={config.momentum!r}: must be in [0, 1)")
  if config.weight_decay < 0:
    raise ValueError(f"weight_decay={config.weight_decay!r}: must be >= 0")
  if not 0 <= config.label_smoothing < 1:
    raise ValueError(f"label_smoothing={config.label_smoothing!r}: must be in [0, 1)")
  if config.grad_clip < 0:
    raise ValueError(f"grad_clip={config.grad_clip!r}: must be >= 0 (0 = off)")
  if int(config.num_steps) != config.num_steps or config.num_steps <= 0:
    raise ValueError(f"num_steps={config.num_steps!r}: must be an integer > 0")
  if not 0 <= config.warmup_steps <= config.num_steps:
    raise ValueError(
        f"warmup_steps={config.warmup_steps!r}: must be in [0, num_steps={config.num_steps}]")


def make_schedule(config) -> optax.Schedule:
  """The learning rate as a function of the step (0-based), from config fields.

  ``step``: ``learning_rate`` ÷10 at ``num_steps // 2`` and again at ``3 * num_steps // 4``.
  ``cosine``: cosine decay from ``learning_rate`` to 0 at ``num_steps``.
  ``constant``: ``learning_rate``. Any of them starts with a linear warm-up from 0 over
  ``warmup_steps`` steps when that is > 0 (the main schedule then starts at the warm-up's end).
  """
  validate(config)
  lr, n, warmup = float(config.learning_rate), int(config.num_steps), int(config.warmup_steps)
  if config.schedule == "step":
    # Boundaries count from step 0 of the whole run, as in the paper (32k/48k of 64k).
    boundaries = {}
    for b in (n // 2 - warmup, 3 * n // 4 - warmup):  # both may clamp to 0 after a long warm-up
      boundaries[max(b, 0)] = boundaries.get(max(b, 0), 1.0) * 0.1
    main = optax.piecewise_constant_schedule(lr, boundaries)
  elif config.schedule == "cosine":
    main = optax.cosine_decay_schedule(lr, decay_steps=max(n - warmup, 1))
  else:
    main = optax.constant_schedule(lr)
  if warmup == 0:
    return main
  ramp = optax.linear_schedule(0.0, lr, transition_steps=warmup)
  return optax.join_schedules([ramp, main], boundaries=[warmup])


def decay_mask(params):
  """True for the leaves weight decay applies to: kernels, not biases or BatchNorm's params.

  By name (every layer's weights are ``kernel``), not by shape: a scanned stage stacks its
  blocks' BatchNorm scales and biases into ``(blocks, C)`` arrays, and a locally connected
  layer's bias is ``(*out_spatial, C)``; neither is a kernel.
  """
  def is_kernel(path, _):
    last = path[-1] if path else None
    return getattr(last, "key", getattr(last, "name", None)) == "kernel"

  return jax.tree_util.tree_map_with_path(is_kernel, params)


def make_optimizer(config, schedule: optax.Schedule | None = None) -> optax.GradientTransformation:
  """The optax transformation named by ``config.optimizer``.

  Order: clip the raw gradient's global norm (if ``grad_clip`` > 0), then the optimizer.
  SGD: ``g + weight_decay * w`` then momentum (coupled L2, He et al.). AdamW: decoupled decay.
  """
  validate(config)
  schedule = schedule or make_schedule(config)
  parts = []
  if config.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(float(config.grad_clip)))
  if config.optimizer == "sgd":
    if config.weight_decay > 0:
      parts.append(optax.add_decayed_weights(float(config.weight_decay), mask=decay_mask))
    parts.append(optax.sgd(schedule, momentum=float(config.momentum) or None))
  else:
    parts.append(optax.adamw(schedule, weight_decay=float(config.weight_decay), mask=decay_mask))
  return optax.chain(*parts)
