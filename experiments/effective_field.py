"""Effective receptive field (Luo et al. 2016) at init and after training, plain vs residual.

For every model of ``config.models`` (zoo models whose head pools a spatial feature map) at
``config.depth``: the net is trained (or read back), and the effective field of the centre
unit of its last feature map (the input of the global pool) is measured twice — at init
(``config.num_inits`` random initialisations) and after training (the restored checkpoint) —
as the mean |d unit / d input| over ``config.num_examples`` test images (Luo et al.: the
gradient's mass, not its support). Its theoretical field is the analytic one
(``analysis.receptive_field``), cut to the input.

The table gives, per model and state, the width of the map's mass (``erf_std``, pixels), the
number of pixels holding 95% of it and the fraction of the theoretical field's pixels that
makes (``fraction_of_field``): the effective field fills a part of the theoretical one and
grows with training. ``plots/erf_maps.png`` shows the maps with the theoretical field boxed.

  python launch.py --experiment=effective_field
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax import data as data_lib
from cnn_jax import models
from cnn_jax.analysis import receptive_field as rf
from cnn_jax.train import restore
from experiments import lesson_figures
from experiments import runner
from experiments import study

# Zoo models whose head is a global pool over a spatial map (caught as the pool's input).
MODELS = ("plain", "resnet", "bottleneck", "resnext")
POOL_CLASSES = ("GlobalAvgPool", "GlobalMaxPool")


def check(config):
  """One-line ValueError (exit 2) for a model with no spatial output before its head."""
  for model in study.parse_list(config.models, "models"):
    if model not in MODELS:
      raise ValueError(f"models has {model!r}: its head flattens (or it has no spatial map), so "
                       f"there is no spatial unit to take an effective field of; give a subset "
                       f"of {', '.join(MODELS)}.")
  for field in ("num_examples", "num_inits"):
    if int(config[field]) < 1:
      raise ValueError(f"{field}={config[field]!r} is not allowed: give an int >= 1.")


def feature_map_fn(model, variables):
  """``x -> the input of the model's global pool`` (its last spatial feature map)."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  def fn(x):
    caught = []

    def interceptor(next_fun, args, kwargs, context):
      if (context.method_name == "__call__" and not caught
          and type(context.module).__name__ in POOL_CLASSES):
        caught.append(args[0])
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
      model.apply(variables, x, train=False)
    if not caught:
      raise ValueError(f"{type(model).__name__} called no {' or '.join(POOL_CLASSES)}: no "
                       "spatial map to take an effective field of.")
    return caught[0]

  return fn


def mean_gradient_map_fn(model, index):
  """``(variables, xs) -> mean over xs of |d sum_c unit(index, c) / d x|`` summed over input
  channels; compiled once per model, for any variables of its shapes (init or trained)."""

  def one(variables, x):
    return rf.gradient_map(feature_map_fn(model, variables), x[None], index)

  batched = jax.jit(jax.vmap(one, in_axes=(None, 0)))
  return lambda variables, xs: np.asarray(jnp.mean(batched(variables, xs), axis=0),
                                          dtype=np.float64)


def mass_pixels(field_map: np.ndarray, fraction: float = 0.95) -> int:
  """The fewest pixels holding ``fraction`` of the map's mass (largest first)."""
  values = np.sort(np.asarray(field_map, np.float64).ravel())[::-1]
  cumulative = np.cumsum(values)
  # 1e-12 absorbs float summation error at fraction 1.
  return int(np.searchsorted(cumulative, fraction * cumulative[-1] * (1 - 1e-12)) + 1)


def run(config, workdir):
  check(config)
  names = study.parse_list(config.models, "models")
  dataset = study.load_data(config)
  named = [(f"{m}-{config.depth}", study.variant(config, model=m)) for m in names]
  runs = study.train_runs(named, workdir, dataset=dataset)
  count = min(int(config.num_examples), len(dataset.x_test))
  xs = jnp.asarray(data_lib.prepare_batch(dataset.x_test[:count], dataset.mean, dataset.std,
                                          augment=False))
  shape = (1,) + tuple(xs.shape[1:])
  rows, maps, boxes = [], {}, {}
  for r in runs:
    model, trained = restore.load_trained(r.config, r.workdir, dataset=dataset)
    record = rf.receptive_field(model, shape)[-1]
    index = tuple((n - 1) // 2 for n in record.output_size)
    field = rf.field_mask(record, index)
    init = jax.jit(lambda k, model=model: model.init(k, xs[:1], train=False))
    mean_map = mean_gradient_map_fn(model, index)
    keys = jax.random.split(jax.random.key(int(config.seed) + 1), int(config.num_inits))
    states = {"init": np.mean([mean_map(init(k), xs) for k in keys], axis=0),
              "trained": mean_map(trained, xs)}
    for state, field_map in states.items():
      field_map = field_map / field_map.sum()
      pixels95 = mass_pixels(field_map)
      name = f"{r.name} {state}"
      maps[name] = field_map
      boxes[name] = tuple((max(lo, 0), min(hi, n - 1)) for (lo, hi), n in
                          zip(record.bounds(index), field.shape))
      rows.append({"model": r.config.model, "depth": r.config.depth, "state": state,
                   "test_error": r.test_error if state == "trained" else "",
                   "theoretical_size": record.size[0], "field_pixels": int(field.sum()),
                   "erf_std": rf.mass_std(field_map, _centre(record, index)),
                   "pixels_95": pixels95,
                   "fraction_of_field": pixels95 / int(field.sum())})
  table = runner.write_results(workdir, rows, list(rows[0]))
  lesson_figures.heatmaps(os.path.join(workdir, "plots", "erf_maps.png"), maps, columns=2,
                          boxes=boxes,
                          title="effective receptive field of the centre unit (box: theoretical)")
  print(table)
  return {"results": rows}


def _centre(record, index):
  """The theoretical field's centre pixel of output ``index`` (rounded down)."""
  return tuple(int(np.floor(s + o * j)) for s, o, j in zip(record.start, index, record.jump))


if __name__ == "__main__":
  import launch  # pylint: disable=g-import-not-at-top
  launch.entry("effective_field")
