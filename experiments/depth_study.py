"""Depth study: plain nets against ResNets as depth grows (He et al. 2016, Fig. 6).

For every model in ``config.models`` and every depth in ``config.depths`` one training run
(``cnn_jax.train.train_and_evaluate``) goes into ``workdir/<model>-<depth>/``; finished runs are
skipped and interrupted ones resume from their checkpoints. Then, from the runs' own
``metrics.jsonl`` and ``summary.json`` (nothing is recomputed):

* ``curves.png``: training error (dashed) and test error (solid) against iterations, one
  panel per family, one colour per depth — the degradation of deep plain nets shows as the
  deeper plain curve lying above the shallower one, while the deeper ResNet lies below;
* ``gradient_norms.png``: per-layer gradient norms at the first and a middle logged step;
* ``results.csv`` / ``results.md``: final training and test error per run.

Run it:
  python launch.py --experiment=depth_study                       # the full study
  python launch.py --experiment=depth_study --config=experiments/configs/depth_study.py:demo
"""

from __future__ import annotations

import json
import os

import ml_collections

from experiments import runner


def parse_list(text: str, field: str, cast=str) -> list:
  """Splits a comma-separated config field; raises a one-line error when it is empty/bad."""
  items = [t.strip() for t in str(text).split(",") if t.strip()]
  if not items:
    raise ValueError(f"{field}={text!r} is empty: give a comma-separated list.")
  try:
    return [cast(t) for t in items]
  except ValueError:
    raise ValueError(f"{field}={text!r} is not allowed: give a comma-separated list of "
                     f"{cast.__name__}s.") from None


def read_metrics(workdir: str) -> list[dict]:
  """The run's metrics.jsonl as a list of dicts (a torn last line from a crash is skipped)."""
  rows = []
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return rows
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return rows


def run_configs(config: ml_collections.ConfigDict) -> list[tuple[str, ml_collections.ConfigDict]]:
  """(run name, config) for every model × depth of the study, checked before anything runs."""
  from cnn_jax import models  # pylint: disable=g-import-not-at-top
  runs = []
  for model in parse_list(config.models, "models"):
    for depth in parse_list(config.depths, "depths", int):
      run_config = ml_collections.ConfigDict(config.to_dict())
      run_config.model = model
      run_config.depth = depth
      models.build(run_config)  # checks every field now, before any run starts
      runs.append((f"{model}-{depth}", run_config))
  return runs


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  from cnn_jax import train  # pylint: disable=g-import-not-at-top
  from cnn_jax import plotting  # pylint: disable=g-import-not-at-top
  runs = run_configs(config)
  results = []
  curves = {}
  grad_norms = {}
  for name, run_config in runs:
    run_dir = os.path.join(workdir, name)
    if runner.is_finished(run_dir):
      print(f"[skip] {name}: already finished")
      summary = runner.read_summary(run_dir)
    else:
      print(f"[run ] {name}")
      summary = train.train_and_evaluate(run_config, run_dir)
    metrics = read_metrics(run_dir)
    curves[name] = metrics
    grad_norms[name] = [m for m in metrics if "grad_norms" in m]
    results.append({
        "model": run_config.model,
        "depth": run_config.depth,
        "params": summary.get("params", ""),
        "train_error": 1.0 - summary["train_accuracy"],
        "test_error": 1.0 - summary["test_accuracy"],
        "steps": summary.get("steps", run_config.num_steps),
        "wall_time_s": summary.get("wall_time_s", ""),
    })
  table = runner.write_results(workdir, results, list(results[0].keys()))
  plotting.depth_study_curves(curves, os.path.join(workdir, "plots", "curves.png"))
  if any(grad_norms.values()):
    plotting.gradient_norms_by_layer(grad_norms,
                                     os.path.join(workdir, "plots", "gradient_norms.png"))
  print(table)
  print(f"plots: {os.path.join(workdir, 'plots')}")
  return {"runs": len(results), "results": results}


if __name__ == "__main__":
  import launch  # pylint: disable=g-import-not-at-top
  launch.entry("depth_study")
