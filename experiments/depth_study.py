"""Depth study: plain nets against ResNets as depth grows (He et al. 2016, Fig. 6).

For every model in ``config.models`` and every depth in ``config.depths`` one training run goes
into ``workdir/<model>-<depth>/``; finished runs are skipped and interrupted ones resume from
their checkpoints. Then, from the runs' own ``metrics.jsonl`` and ``summary.json``:

* ``plots/curves.png``: training error (dashed) and test error (solid) against iterations, one
  panel per family, one colour per depth. Degradation shows as the deeper plain net's curves
  lying above the shallower one's, while the deeper ResNet's do not;
* ``plots/gradient_norms.png``: per-layer gradient norms at the first and a middle logged step
  (vanishing gradients in deep plain nets);
* ``results.csv`` / ``results.md``: final training and test error per run.

Run it:
  python launch.py --experiment=depth_study                       # the full study
  python launch.py --experiment=depth_study --config=experiments/configs/depth_study.py:demo
"""

from __future__ import annotations

import os

import ml_collections

from cnn_jax import atomic
from experiments import figures
from experiments import runner
from experiments import study


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  named = [(f"{model}-{depth}", study.variant(config, model=model, depth=depth))
           for model in study.parse_list(config.models, "models")
           for depth in study.parse_list(config.depths, "depths", int)]
  runs = study.train_runs(named, workdir)
  rows = [{
      "model": r.config.model,
      "depth": r.config.depth,
      "params": r.summary.get("num_params", ""),
      "train_error": r.train_error,
      **({"validation_error": r.validation_error} if r.validation_error != "" else {}),
      "test_error": r.test_error,
      "steps": r.summary.get("steps", ""),
      "wall_time_s": r.summary.get("wall_time_s", ""),
  } for r in runs]
  table = runner.write_results(workdir, rows, list(rows[0]))
  # The study's own config beside its summary: a seed sweep checks it (experiments/seeds.py).
  atomic.write_json(os.path.join(workdir, "config.json"), config.to_dict())
  plots = os.path.join(workdir, "plots")
  figures.error_curves_by_family(runs, os.path.join(plots, "curves.png"))
  if any(r.grad_norms for r in runs):
    figures.gradient_norms_by_layer(runs, os.path.join(plots, "gradient_norms.png"))
  print(table)
  print(f"plots: {plots}")
  # keys and run_names let a sweep over seed average each (model, depth) over its seeds.
  return {"runs": len(rows), "results": rows, "keys": ["model", "depth"],
          "run_names": [r.name for r in runs]}


if __name__ == "__main__":
  import launch  # pylint: disable=g-import-not-at-top
  launch.entry("depth_study")
