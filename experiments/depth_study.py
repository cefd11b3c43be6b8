"""Depth study: plain nets against ResNets as depth grows (He et al. 2016, Fig. 6).

For every model in ``config.models`` and every depth in ``config.depths`` one training run goes
into ``workdir/<model>-<depth>/``; finished runs are skipped and interrupted ones resume from
their checkpoints. Then, from the runs' own ``metrics.jsonl`` and ``summary.json``:

* ``plots/curves.png``: training error (dashed) and test error (solid) against iterations, one
  panel per family, one colour per depth. Degradation shows as the deeper plain net's curves
  lying above the shallower one's, while the deeper ResNet's do not;
* ``plots/gradient_norms.png``: per-layer gradient norms at the first and a middle logged step
  (vanishing gradients in deep plain nets);
* ``results.csv`` / ``results.md``: final training (validation) and test error per run; with
  ``paper="cifar10"`` also He et al.'s test error beside it and the difference.

With ``announce_time`` (the cifar10 configs) on a CPU it first times a few training steps of
the shallowest and deepest net and prints how long the whole study will take, then runs.

Run it:
  python launch.py --experiment=depth_study                       # the full study
  python launch.py --experiment=depth_study --config=experiments/configs/depth_study.py:demo
  python launch.py --experiment=depth_study --config=experiments/configs/depth_study.py:cifar10
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time

import ml_collections

from cnn_jax import atomic
from experiments import figures
from experiments import runner
from experiments import study


# The study's grid: a rerun may add or drop nets; each run in it is checked on its own.
GRID_FIELDS = ("models", "depths", "extra")

# He et al. (2016), CIFAR-10 test error (%). ResNets: Table 6. Plain nets: read from Fig. 6
# (left, the bold test-error curves at the end of training), to about ±0.5 points.
PAPER_TEST_ERROR = {
    "cifar10": {("resnet", 20): 8.75, ("resnet", 32): 7.51, ("resnet", 44): 7.17,
                ("resnet", 56): 6.97, ("resnet", 110): 6.43, ("plain", 20): 9.5,
                ("plain", 32): 10.0, ("plain", 44): 11.0, ("plain", 56): 13.0},
}
PAPER_NOTE = {
    "cifar10": "paper: He et al. (2016) test error; ResNets from Table 6, plain nets read "
               "approximately (±0.5 points) from Fig. 6 (left).",
}


def named_runs(config: ml_collections.ConfigDict) -> list[tuple[str, ml_collections.ConfigDict]]:
  """``(model-depth, config)`` for the models × depths grid, then ``extra`` ("resnet-110")."""
  pairs = [(model, depth) for model in study.parse_list(config.models, "models")
           for depth in study.parse_list(config.depths, "depths", int)]
  for item in study.parse_list(config.get("extra", "") or "-", "extra"):
    if item == "-":
      continue
    model, _, depth = item.rpartition("-")
    if not model or not depth.isdigit():
      raise ValueError(f"extra={config.extra!r}: write model-depth items, e.g. resnet-110.")
    if (model, int(depth)) not in pairs:
      pairs.append((model, int(depth)))
  # Each run's config names its own net, not the study's grid: a study that grows (more depths,
  # an extra net) keeps its finished runs instead of finding them "another config".
  return [(f"{model}-{depth}", study.variant(config, model=model, depth=depth, models=model,
                                             depths=str(depth), extra=""))
          for model, depth in pairs]


def check_data(config: ml_collections.ConfigDict, dataset) -> None:
  """The cifar10 configs' nets are CIFAR's: images must be ``require_image_size`` square."""
  size = int(config.get("require_image_size", 0) or 0)
  shape = tuple(dataset.x_train.shape[1:])
  if size and shape[:2] != (size, size):
    raise ValueError(f"dataset={config.dataset!r} has {'x'.join(map(str, shape))} images; "
                     f"this config (He et al.'s CIFAR-10 nets) needs {size}x{size} images: give "
                     "CIFAR-10 (TFDS cifar10, or a folder:/npz: source of 32x32 images).")


def check(config: ml_collections.ConfigDict) -> None:
  """One line before anything runs: the run list, the data and its image size."""
  named_runs(config)
  check_data(config, study.load_data(config))


def seconds_per_step(config: ml_collections.ConfigDict, dataset, steps: int = 3) -> float:
  """Median wall time of a training step of ``config``'s net, timed after its compile.

  Trains ``1 + steps`` steps on two batches of the data in a temporary directory (the first
  step holds the compile), evaluating after each step so that each later metrics row times
  exactly one step.
  """
  from cnn_jax import train  # pylint: disable=g-import-not-at-top
  batch = int(config.batch_size)
  small = dataclasses.replace(dataset, x_train=dataset.x_train[:2 * batch],
                              y_train=dataset.y_train[:2 * batch], x_test=dataset.x_test[:batch],
                              y_test=dataset.y_test[:batch], x_val=None, y_val=None)
  probe = study.variant(config, num_steps=1 + steps, warmup_steps=0, eval_every=1,
                        checkpoint_every=0, log_grad_norms_every=0, progress=False,
                        overwrite=True)
  with tempfile.TemporaryDirectory(prefix="depth_study_probe_") as tmp:
    train.train_and_evaluate(probe, tmp, dataset=small)
    rates = [m["images_per_sec"] for m in study.read_metrics(tmp)[1:]]
  return float(sorted(batch / r for r in rates)[len(rates) // 2])


def estimate_seconds(named, dataset, per_step) -> float:
  """Wall time of ``named`` runs, given ``per_step(depth)`` seconds per training step.

  Evaluation is counted as forward passes at a third of a training step per image: the test
  and validation splits every ``eval_every`` steps and the training split once at the end.
  """
  n_eval = len(dataset.x_test) + (0 if dataset.x_val is None else len(dataset.x_val))
  total = 0.0
  for _, config in named:
    step = per_step(config.depth)
    evals = config.num_steps // config.eval_every if config.eval_every else 1
    eval_images = evals * n_eval + len(dataset.x_train)
    total += step * config.num_steps + step / 3 * eval_images / config.batch_size
  return total


def _duration(seconds: float) -> str:
  return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{max(seconds / 60, 1):.0f} min"


def announce_time(named, dataset, workdir: str) -> None:
  """Prints how long the unfinished runs will take here, from timed first steps (CPU only)."""
  import jax  # pylint: disable=g-import-not-at-top
  from cnn_jax.native import autotune  # pylint: disable=g-import-not-at-top
  pending = [(n, c) for n, c in named if not runner.is_finished(os.path.join(workdir, n))]
  if jax.default_backend() != "cpu" or not pending:
    return
  depths = sorted({c.depth for _, c in pending})
  first = pending[0][1]
  t0 = time.time()
  timed = {d: seconds_per_step(study.variant(first, depth=d), dataset)
           for d in (depths[0], depths[-1])}
  lo, hi = depths[0], depths[-1]
  slope = (timed[hi] - timed[lo]) / (hi - lo) if hi > lo else 0.0
  total = estimate_seconds(pending, dataset, lambda d: timed[lo] + slope * (d - lo))
  steps = ", ".join(f"{first.model}-{d} {timed[d]:.2f} s" for d in timed)
  runner.print_line(
      f"depth_study on a CPU ({autotune.cpu_model()}, {os.cpu_count()} cores): {len(pending)} runs "
      f"will take about {_duration(total)} (timed steps at batch "
      f"{first.batch_size}: {steps}, other depths interpolated linearly, evaluation counted; "
      f"timing took {time.time() - t0:.0f} s). Running anyway.")


def paper_columns(config: ml_collections.ConfigDict, row: dict) -> dict:
  """He et al.'s test error for the row's net (fractions, like ``test_error``) and the run's
  difference from it; empty if the paper has no such net."""
  paper = PAPER_TEST_ERROR.get(config.get("paper", "") or "", {})
  reference = paper.get((row["model"], row["depth"]))
  if reference is None:
    return {"paper_test_error": "", "test_error_minus_paper": ""} if paper else {}
  return {"paper_test_error": reference / 100,
          "test_error_minus_paper": row["test_error"] - reference / 100}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  named = named_runs(config)
  dataset = study.load_data(config)
  check_data(config, dataset)
  if config.get("announce_time", False):
    announce_time(named, dataset, workdir)
  runs = study.train_runs(named, workdir, dataset=dataset)
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
  rows = [{**row, **paper_columns(config, row)} for row in rows]
  table = runner.write_results(workdir, rows, list(rows[0]))
  if config.get("paper", ""):
    table += "\n" + PAPER_NOTE[config.paper] + "\n"
    atomic.write_text(os.path.join(workdir, "results.md"), table)
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
          "run_names": [r.name for r in runs], "columns": list(rows[0])}


if __name__ == "__main__":
  import launch  # pylint: disable=g-import-not-at-top
  launch.entry("depth_study")
