"""Repeating 1-D signals: dense vs locally connected vs shared (convolution), against data.

The lesson's second example: a signal with local, repeating structure (``signals1d``: one of
ten short motifs placed 2-4 times at random positions in noise). Each model of
``config.models`` (``mlp``: every input to every unit; ``local``: neighbours only, a kernel per
position; ``simple_cnn``: neighbours only, one kernel shared by all positions) is trained on
each of ``config.train_sizes`` examples. The table gives parameters and test accuracy;
``plots/accuracy_vs_train_size.png`` shows the shared kernel needing the fewest examples,
``plots/parameters.png`` the parameter counts.

  python launch.py --experiment=signals1d
"""

from __future__ import annotations

import os

from experiments import lesson_figures
from experiments import runner
from experiments import study

MODELS = ("mlp", "local", "simple_cnn")
FIRST_LAYER = {"mlp": "dense1", "local": "local1", "simple_cnn": "conv1"}


def check(config):
  """One-line ValueError (exit 2) for a dataset that is not 1-D or an unknown model."""
  if config.dataset != "signals1d":
    raise ValueError(f"dataset={config.dataset!r} is not allowed: the signals1d study compares "
                     "1-D layers on dataset='signals1d'.")
  for model in study.parse_list(config.models, "models"):
    if model not in MODELS:
      raise ValueError(f"models has {model!r}: give a comma-separated subset of "
                       f"{', '.join(MODELS)}.")
  study.parse_list(config.train_sizes, "train_sizes", int)


def first_layer_params(config, input_shape) -> tuple[str, int]:
  """The name and parameter count of the model's first layer (the one connecting inputs)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from cnn_jax import models  # pylint: disable=g-import-not-at-top
  model = models.build(config)
  x = jax.ShapeDtypeStruct((1,) + tuple(input_shape), jnp.float32)
  params = jax.eval_shape(lambda v: model.init(jax.random.key(0), v), x)["params"]
  name = FIRST_LAYER[config.model]
  return name, sum(int(a.size) for a in jax.tree_util.tree_leaves(params[name]))


def run(config, workdir):
  check(config)
  model_names = study.parse_list(config.models, "models")
  train_sizes = study.parse_list(config.train_sizes, "train_sizes", int)
  named = [(f"{m}-n{t}", study.variant(config, model=m, train_size=t))
           for m in model_names for t in train_sizes]
  runs = study.train_runs(named, workdir)
  shape = study.load_data(config).x_train.shape[1:]
  first = {m: first_layer_params(study.variant(config, model=m, num_classes=10), shape)
           for m in model_names}
  rows = [{"model": r.config.model, "train_size": r.config.train_size,
           "params": r.summary.get("num_params", ""),
           "first_layer": first[r.config.model][0],
           "first_layer_params": first[r.config.model][1],
           "train_accuracy": r.summary["train_accuracy"],
           "test_accuracy": r.summary["test_accuracy"]} for r in runs]
  table = runner.write_results(workdir, rows, list(rows[0]))
  by_model = {m: [r for r in rows if r["model"] == m] for m in model_names}
  lesson_figures.line_panels(
      os.path.join(workdir, "plots", "accuracy_vs_train_size.png"),
      {"signals1d: test accuracy": {
          f"{m} ({rs[0]['params']:,} params)": ([r["train_size"] for r in rs],
                                               [r["test_accuracy"] for r in rs])
          for m, rs in by_model.items()}},
      xlabel="training examples", ylabel="test accuracy (fraction)", logx=True)
  print(table)
  return {"results": rows}


if __name__ == "__main__":
  import launch  # pylint: disable=g-import-not-at-top
  launch.entry("signals1d")
