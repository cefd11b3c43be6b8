"""Residual learning: the output is dominated by the shortcut, the blocks learn small changes.

He et al. (2016), Fig. 7, on the zoo's plain and ResNet models: each model of
``config.models`` at each depth of ``config.depths`` is trained (or read back when finished),
its newest checkpoint restored, and one batch of ``config.num_examples`` test images passed
through it in eval mode. From ``analysis.residual.block_statistics``:

* ``plots/response_std.png``: the std of every BN output on the main path (after BN, before
  the addition and ReLU), by layer (top) and sorted by magnitude (bottom): the ResNet's
  responses are smaller than the plain net's, and shrink further with depth;
* ``plots/block_ratio.png``: ``rms(F(x)) / rms(x)`` per block, the residual against the
  block's input (plain nets have no shortcut: their ratio compares a block's output with its
  input);
* ``results.md``: per run, the median and mean response std and block ratio.

  python launch.py --experiment=residual_responses
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax import atomic
from cnn_jax import data as data_lib
from cnn_jax.analysis import residual
from cnn_jax.train import restore
from experiments import lesson_figures
from experiments import runner
from experiments import study

MODELS = ("plain", "resnet")


def check(config):
  """One-line ValueError (exit 2) for a model without basic residual blocks or bad lists."""
  for model in study.parse_list(config.models, "models"):
    if model not in MODELS:
      raise ValueError(f"models has {model!r}: He et al.'s Fig. 7 compares {' and '.join(MODELS)} "
                       "(blocks with BN responses); give a subset of them.")
  study.parse_list(config.depths, "depths", int)
  if int(config.num_examples) < 2:
    raise ValueError(f"num_examples={config.num_examples!r} is not allowed: give an int >= 2.")


def unscanned(model, variables):
  """The unrolled twin of a model whose stages scan their blocks, and its variables.

  ``block_statistics`` intercepts every block's call, which under ``nn.scan`` would catch
  values of the scan's trace; the unrolled twin computes the same function, with each
  stacked ``stage/blocks/block`` leaf split into ``stage/block1``, ``stage/block2``, ….
  """
  if not getattr(model, "scan_blocks", False):
    return model, variables

  def split(tree):
    if not isinstance(tree, Mapping):
      return tree
    out = {k: split(v) for k, v in tree.items() if k != "blocks"}
    if "blocks" in tree:
      (stacked,) = tree["blocks"].values()
      first = sum(k.startswith("block") for k in out)  # unrolled blocks before the scan
      count = jax.tree_util.tree_leaves(stacked)[0].shape[0]
      for i in range(count):
        out[f"block{first + i}"] = jax.tree_util.tree_map(lambda a, i=i: a[i], stacked)
    return out

  return model.clone(scan_blocks=False), {k: split(v) for k, v in variables.items()}


def run(config, workdir):
  check(config)
  names = study.parse_list(config.models, "models")
  depths = study.parse_list(config.depths, "depths", int)
  dataset = study.load_data(config)
  named = [(f"{m}-{d}", study.variant(config, model=m, depth=d)) for m in names for d in depths]
  runs = study.train_runs(named, workdir, dataset=dataset)
  count = min(int(config.num_examples), len(dataset.x_test))
  x = jnp.asarray(data_lib.prepare_batch(dataset.x_test[:count], dataset.mean, dataset.std,
                                         augment=False))
  stats, rows = {}, []
  for r in runs:
    model, variables = unscanned(*restore.load_trained(r.config, r.workdir, dataset=dataset))
    stats[r.name] = residual.block_statistics(model, variables, x, train=False)
    stds = [s["std"] for s in stats[r.name]["responses"] if not s["on_shortcut"]]
    ratios = [b["ratio"] for b in stats[r.name]["blocks"]]
    rows.append({"run": r.name, "model": r.config.model, "depth": r.config.depth,
                 "test_error": r.test_error, "responses": len(stds),
                 "median_std": float(np.median(stds)), "mean_std": float(np.mean(stds)),
                 "median_block_ratio": float(np.median(ratios)),
                 "mean_block_ratio": float(np.mean(ratios))})
  atomic.write_json(os.path.join(workdir, "statistics.json"), stats)
  table = runner.write_results(workdir, rows, list(rows[0]))
  plots = os.path.join(workdir, "plots")
  main = {name: [s["std"] for s in st["responses"] if not s["on_shortcut"]]
          for name, st in stats.items()}
  lesson_figures.line_panels(
      os.path.join(plots, "response_std.png"),
      {"by layer": {n: (np.arange(1, len(v) + 1), v) for n, v in main.items()},
       "sorted by magnitude": {n: (np.arange(1, len(v) + 1), np.sort(v)[::-1])
                               for n, v in main.items()}},
      xlabel="layer index (BN outputs on the main path)", ylabel="std of the response",
      logy=True, title="He et al. Fig. 7: responses after BN, before the addition (trained, eval mode)")
  lesson_figures.line_panels(
      os.path.join(plots, "block_ratio.png"),
      {"rms(F(x)) / rms(x) per block": {
          n: (np.arange(1, len(st["blocks"]) + 1), [b["ratio"] for b in st["blocks"]])
          for n, st in stats.items()}},
      xlabel="block index", ylabel="rms(F(x)) / rms(x)", logy=True)
  print(table)
  return {"results": rows}


if __name__ == "__main__":
  import launch  # pylint: disable=g-import-not-at-top
  launch.entry("residual_responses")
