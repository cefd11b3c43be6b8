"""Scale: dense vs locally connected vs shared (convolutional) layers.

Part 1, counting: one layer mapping an n×n image to an n×n map, for each n of
``config.sizes``. A dense layer connects every pixel to every pixel (n⁴ weights: quadratic in
the number of pixels), a locally connected 3×3 layer has its own 9 weights at every position
(linear in pixels), a shared 3×3 kernel has 9 weights whatever n (constant). Local and shared
cost the same multiply-adds in the forward pass: sharing saves memory and data, not compute.
Written to ``counts.csv``/``counts.md`` and ``plots/parameters.png`` (log-log).

Part 2, data: each model of ``config.models`` trained on ``config.train_sizes`` examples;
``plots/accuracy_vs_train_size.png`` shows the shared-weight net needing less data.

  python launch.py --experiment=scale
"""

from __future__ import annotations

import os

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax import atomic
from cnn_jax import layers
from cnn_jax.analysis import counting
from experiments import figures
from experiments import runner
from experiments import study

KINDS = ("dense", "local", "shared")


class OneLayer(nn.Module):
  """One layer from an n×n×1 image to an n×n×1 map: the three ways of connecting pixels."""
  kind: str

  @nn.compact
  def __call__(self, x, train: bool = False):
    n_out = x.shape[1] * x.shape[2]
    if self.kind == "dense":
      return nn.Dense(n_out, use_bias=False)(x.reshape(x.shape[0], -1))
    if self.kind == "local":
      return layers.LocallyConnected(features=1, kernel_size=(3, 3), padding="SAME",
                                     use_bias=False)(x)
    return layers.Conv(features=1, kernel_size=(3, 3), padding="SAME", use_bias=False)(x)


def layer_counts(sizes) -> list[dict]:
  """Parameters and multiply-adds of each kind of layer at each image size (shapes only)."""
  rows = []
  for n in sizes:
    row = {"n": n, "pixels": n * n}
    for kind in KINDS:
      cost = counting.summarize(OneLayer(kind), (1, n, n, 1))
      row[f"{kind}_params"] = int(cost["params"])
      row[f"{kind}_macs"] = int(cost["macs"])
    rows.append(row)
  return rows


def lesson_dense_example() -> int:
  """The lesson's number: a dense layer from a 224×224×3 image to 10 outputs, no bias."""
  params = jax.eval_shape(lambda: nn.Dense(10, use_bias=False).init(
      jax.random.key(0), jnp.zeros((1, 224 * 224 * 3))))
  return int(sum(leaf.size for leaf in jax.tree_util.tree_leaves(params)))


def run(config, workdir):
  sizes = study.parse_list(config.sizes, "sizes", int)
  train_sizes = study.parse_list(config.train_sizes, "train_sizes", int)
  model_names = study.parse_list(config.models, "models")
  named = [(f"{m}-n{t}", study.variant(config, model=m, train_size=t))
           for m in model_names for t in train_sizes]
  # Training first: train_runs checks every run before the first starts, so a bad field
  # fails before counts.md or any plot is written.
  runs = study.train_runs(named, workdir)
  counts = layer_counts(sizes)
  dense_224x224x3_to_10 = lesson_dense_example()
  columns = list(counts[0])
  atomic.write_text(os.path.join(workdir, "counts.md"), runner.markdown_table(counts, columns))
  plots = os.path.join(workdir, "plots")
  pixels = [r["pixels"] for r in counts]
  figures.lines(os.path.join(plots, "parameters.png"),
                {f"{k} (3×3)" if k != "dense" else k: (pixels, [r[f"{k}_params"] for r in counts])
                 for k in KINDS},
                xlabel="pixels n² (input = output size)", ylabel="parameters",
                title="parameters against input size: O(n²) dense, O(n) local, O(1) shared",
                logx=True, logy=True)
  figures.lines(os.path.join(plots, "macs.png"),
                {k: (pixels, [r[f"{k}_macs"] for r in counts]) for k in KINDS},
                xlabel="pixels n²", ylabel="multiply-adds per image",
                title="forward cost: local and shared are equal", logx=True, logy=True)

  rows = [{"model": r.config.model, "train_size": r.config.train_size,
           "test_accuracy": r.summary["test_accuracy"],
           "params": r.summary.get("num_params", "")} for r in runs]
  table = runner.write_results(workdir, rows, list(rows[0]))
  figures.lines(os.path.join(plots, "accuracy_vs_train_size.png"),
                {m: ([r["train_size"] for r in rows if r["model"] == m],
                     [r["test_accuracy"] for r in rows if r["model"] == m])
                 for m in model_names},
                xlabel="training examples", ylabel="test accuracy (fraction)",
                title="accuracy against training-set size", logx=True)
  print(runner.markdown_table(counts, columns))
  print(f"dense 224×224×3 → 10 (no bias): {dense_224x224x3_to_10:,} weights")
  print(table)
  return {"dense_224x224x3_to_10": dense_224x224x3_to_10, "counts": counts, "results": rows}


if __name__ == "__main__":
  import launch  # pylint: disable=g-import-not-at-top
  launch.entry("scale")
