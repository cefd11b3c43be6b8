"""The layer table of one model: output shapes, parameters, multiply-adds, receptive field.

  python launch.py --experiment=summary --config.model=resnet --config.depth=56 --workdir=runs/s

prints the per-layer table (MACs per layer; FLOPs = 2 × MACs in the totals) and writes
``summary.json`` (``params``, ``macs``, ``flops``, ``receptive_field``, the per-layer rows) into
the workdir. No data is loaded: the input is ``(1, image_size, image_size, input_channels)``,
one image, so MACs and FLOPs are per example. Everything is traced with ``jax.eval_shape``, so
even ResNeXt-29 16×64d is summarised in seconds on a CPU.
"""

from __future__ import annotations

import os

from cnn_jax import atomic, models
from cnn_jax.analysis import counting
from cnn_jax.models import checks

# Cheap and derived from the config alone: the runner recomputes it every time (a rerun with
# another config replaces it) instead of reading back a finished one.
RECOMPUTES = True


def input_shape(config) -> tuple[int, int, int, int]:
  """``(1, image_size, image_size, input_channels)`` from the config (checked)."""
  size = checks.check_int("image_size", config.image_size)
  channels = checks.check_int("input_channels", config.input_channels)
  return (1, size, size, channels)


def run(config, workdir: str) -> dict:
  """Prints the layer table of ``config``'s model and writes ``workdir/summary.json``.

  Returns:
    The summary: ``model``, ``depth``, ``input_shape``, ``params``, ``macs``, ``flops``
    (= 2 × macs), ``receptive_field`` (None until the receptive-field module exists) and
    ``layers`` (one dict per layer).

  Raises:
    ValueError: for a bad config field, before anything is traced or written.
  """
  config = models.with_defaults(config)
  model = models.build(config)
  shape = input_shape(config)
  summary = counting.summarize(model, shape)
  summary = {"model": config.model, "depth": config.depth, **summary}
  print(f"{config.model} (depth {config.depth}) on input {shape}:")
  print(counting.format_table(summary))
  atomic.write_json(os.path.join(workdir, "summary.json"), summary)
  return summary
