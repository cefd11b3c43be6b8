"""Receptive fields: analytic (Araujo et al. 2019) against measured, and the effective field.

Three parts, each a table and a figure:

* ``stacks``: small nets written as layer lists (3×3 convs of growing depth, stride 2, 2×2
  pooling, dilation 2 and 4). For each, the analytic field of the centre output and the
  field measured by backprop (the input pixels with a non-zero gradient, random positive
  weights so no path is dead) — they agree exactly; ``plots/measured_fields.png``.
* ``effective``: Luo et al. (2016)'s effective field of plain 3×3 stacks: the mass of the
  gradient concentrates in a region growing like √depth while the analytic size grows
  linearly; ``plots/erf_growth.png`` (log-log) and ``plots/erf_maps.png``.
* ``zoo``: the analytic field of models of the zoo (``model-depth`` items of ``zoo_models``).

  python launch.py --experiment=receptive_field
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax import atomic
from cnn_jax import models
from cnn_jax import ops
from cnn_jax import plotting
from cnn_jax.analysis.receptive_field import Window
from cnn_jax.analysis import receptive_field as rf
from experiments import runner
from experiments import study


def stacks(depths) -> dict[str, list[Window]]:
  """The layer lists of part one, by name."""
  # Explicit pads (1 for a 3x3, d for dilation d) keep the fields independent of input size.
  out = {f"3x3 conv x{d}": [Window(3, 1, 1, name=f"conv{i}") for i in range(d)]
         for d in depths}
  out["3x3 s2, 3x3, 3x3"] = [Window(3, 2, 1), Window(3, 1, 1), Window(3, 1, 1)]
  out["3x3, pool 2, 3x3, pool 2, 3x3"] = [Window(3, 1, 1), Window(2, 2, name="pool"),
                                          Window(3, 1, 1), Window(2, 2, name="pool"),
                                          Window(3, 1, 1)]
  out["3x3 dilation 1, 2, 4"] = [Window(3, 1, 1, 1), Window(3, 1, 2, 2), Window(3, 1, 4, 4)]
  return out


def window_net(windows, key, channels: int = 2):
  """A net made of ``windows``: positive-weight convs with ReLU, average pools for pools.

  Positive weights on a positive input keep every path alive, so the gradient's support is
  the whole field (max pooling would keep only one pixel per window).
  """
  kernels = []
  c_in = 1
  for w, k in zip(windows, jax.random.split(key, len(windows))):
    if w.name.startswith("pool"):
      kernels.append(None)
    else:
      kernels.append(jax.random.uniform(k, (w.kernel, w.kernel, c_in, channels), minval=0.1))
      c_in = channels

  def apply(x):
    for w, kernel in zip(windows, kernels):
      if kernel is None:
        x = ops.avg_pool(x, w.kernel, w.stride, w.padding)
      else:
        x = jax.nn.relu(ops.correlate(x, kernel, stride=w.stride, padding=w.padding,
                                      dilation=w.dilation))
    return x
  return apply


def measured_extent(support: np.ndarray) -> list[int]:
  """Per-dim extent of the non-zero region (bounding box) of a boolean map."""
  extents = []
  for axis in range(support.ndim):
    other = tuple(a for a in range(support.ndim) if a != axis)
    hit = np.flatnonzero(support.any(axis=other))
    extents.append(int(hit[-1] - hit[0] + 1) if len(hit) else 0)
  return extents


def run(config, workdir):
  depths = study.parse_list(config.depths, "depths", int)
  erf_depths = study.parse_list(config.erf_depths, "erf_depths", int)
  zoo = [(item.rsplit("-", 1)[0], int(item.rsplit("-", 1)[1]))
         for item in study.parse_list(config.zoo_models, "zoo_models")]
  zoo_configs = [study.variant(config, model=m, depth=d) for m, d in zoo]
  for c in zoo_configs:
    models.build(c)  # a bad model or depth fails here, before any work
  plots = os.path.join(workdir, "plots")
  key = jax.random.key(int(config.seed))

  stack_rows, supports = [], {}
  for (name, windows), k in zip(stacks(depths).items(), jax.random.split(key, 99)):
    analytic = rf.receptive_field(windows, num_dims=2)[-1].size[0]
    n = 4 * analytic + 8  # room on every side, so borders cut nothing
    x = jnp.ones((1, n, n, 1))
    support = rf.gradient_support(window_net(windows, k), x)
    measured = measured_extent(support)
    supports[f"{name}: {analytic}"] = support.astype(float)
    stack_rows.append({"net": name, "layers": len(windows), "analytic_size": analytic,
                       "measured_size": measured[0], "equal": measured == [analytic] * 2})
  atomic.write_text(os.path.join(workdir, "stacks.md"),
                    runner.markdown_table(stack_rows, list(stack_rows[0])))
  plotting.heatmap_grid(supports, os.path.join(plots, "measured_fields.png"))

  growth = rf.erf_growth(erf_depths, key=jax.random.fold_in(key, 1),
                         num_samples=int(config.erf_samples))
  erf_rows = [{k: v for k, v in row.items() if k != "map"} for row in growth]
  atomic.write_text(os.path.join(workdir, "effective.md"),
                    runner.markdown_table(erf_rows, list(erf_rows[0])))
  plotting.plot_erf_growth(growth, os.path.join(plots, "erf_growth.png"))
  plotting.heatmap_grid({f"depth {row['depth']}": row["map"] for row in growth},
                        os.path.join(plots, "erf_maps.png"))
  exponent = (rf.growth_exponent([r["depth"] for r in growth], [r["erf_std"] for r in growth])
              if len(growth) > 1 else None)

  shape = (1, config.image_size, config.image_size, config.input_channels)
  zoo_rows = []
  for (model_name, depth), c in zip(zoo, zoo_configs):
    record = rf.receptive_field(models.build(c), shape)[-1]
    zoo_rows.append({"model": model_name, "depth": depth, "receptive_field": record.size[0],
                     "jump": record.jump[0]})
  table = runner.write_results(workdir, stack_rows, list(stack_rows[0]))
  atomic.write_text(os.path.join(workdir, "zoo.md"),
                    runner.markdown_table(zoo_rows, list(zoo_rows[0])))
  print(table)
  print(runner.markdown_table(erf_rows, list(erf_rows[0])))
  print(runner.markdown_table(zoo_rows, list(zoo_rows[0])))
  return {"stacks": stack_rows, "effective": erf_rows, "erf_growth_exponent": exponent,
          "zoo": zoo_rows}


if __name__ == "__main__":
  import launch  # pylint: disable=g-import-not-at-top
  launch.entry("receptive_field")
