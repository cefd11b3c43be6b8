"""Seed sweeps: mean ± std per configuration against NumPy, mean curves, the mixed-run check."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments import runner
from experiments import seeds
from experiments.configs import default

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launch(*args, cwd):
  return subprocess.run([sys.executable, os.path.join(REPO, "launch.py"), *args], cwd=cwd,
                        capture_output=True, text=True, timeout=300)


def _read_csv(path):
  with open(path, encoding="utf-8") as f:
    return list(csv.DictReader(f))


def _finish(run_dir, config, summary, metrics):
  """Writes a finished run as the trainer would leave it (config, metrics, summary)."""
  os.makedirs(run_dir, exist_ok=True)
  with open(os.path.join(run_dir, "config.json"), "w") as f:
    json.dump(config.to_dict(), f)
  with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
    for row in metrics:
      f.write(json.dumps(row) + "\n")
  with open(os.path.join(run_dir, "summary.json"), "w") as f:
    json.dump(summary, f)


def _sweep(config, seed_values, depths):
  axes = runner.parse_sweeps([f"depth={','.join(map(str, depths))}",
                              f"seed={','.join(map(str, seed_values))}"], config)
  return runner.expand(config, axes)


def test_seed_sweep_tables_are_numpy_mean_and_std_of_the_runs(tmp_path, rng):
  config = default.get_config()
  seed_values, depths = (0, 1, 2), (8, 14)
  runs = _sweep(config, seed_values, depths)
  summaries = []
  for run in runs:
    summary = {"train_accuracy": float(rng.uniform()), "test_accuracy": float(rng.uniform()),
               "test_loss": float(rng.uniform(0, 3)), "steps": 200, "num_params": 1234,
               "wall_time_s": float(rng.uniform(1, 9)), "resumed_from": None}
    steps = [50, 100, 150, 200]
    metrics = [{"step": s, "train_accuracy": float(rng.uniform()),
                "eval_accuracy": float(rng.uniform())} for s in steps]
    _finish(run.workdir(str(tmp_path)), run.config, summary, metrics)
    summaries.append(summary)
  rows = seeds.collect(runs, summaries, str(tmp_path))
  table = _read_csv(tmp_path / "results.csv")
  assert [r["depth"] for r in table] == ["8", "14"] and len(rows) == 2
  for depth, row in zip(depths, table):
    mine = [s for r, s in zip(runs, summaries) if r.config.depth == depth]
    assert row["n"] == "3" and row["seeds"] == "0,1,2"
    for metric in ("train_accuracy", "test_accuracy", "test_loss", "wall_time_s"):
      values = np.array([s[metric] for s in mine])
      # CSV holds Python's repr of the float: exact to the last bit.
      assert float(row[f"{metric}_mean"]) == pytest.approx(values.mean(), rel=1e-12)
      assert float(row[f"{metric}_std"]) == pytest.approx(values.std(ddof=1), rel=1e-12)
    assert float(row["num_params_std"]) == 0.0
    assert "resumed_from_mean" not in row
  per_seed = _read_csv(tmp_path / "results_per_seed.csv")
  assert len(per_seed) == 6 and {r["seed"] for r in per_seed} == {"0", "1", "2"}
  markdown = (tmp_path / "results.md").read_text()
  mine = np.array([s["test_accuracy"] for r, s in zip(runs, summaries) if r.config.depth == 8])
  assert f"{mine.mean():.4g} ± {mine.std(ddof=1):.2g}" in markdown
  assert "| 1234 |" in markdown  # a value every seed shares, shown once
  assert (tmp_path / "plots" / "curves.png").stat().st_size > 0


def test_study_results_are_averaged_per_model_and_depth(tmp_path, rng):
  config = default.get_config()
  runs = runner.expand(config, runner.parse_sweeps(["seed=3,4"], config))
  summaries, by_run = [], {}
  for run in runs:
    results, names = [], []
    for model in ("plain", "resnet"):
      for depth in (20, 56):
        error = float(rng.uniform())
        results.append({"model": model, "depth": depth, "params": depth * 10,
                        "train_error": error, "test_error": float(rng.uniform())})
        by_run.setdefault((model, depth), []).append(error)
        names.append(f"{model}-{depth}")
        _finish(os.path.join(run.workdir(str(tmp_path)), names[-1]), run.config, {},
                [{"step": 10, "train_accuracy": 0.5, "eval_accuracy": 0.5}])
    # As read back from summary.json, whose keys are sorted; "columns" keeps the study's order.
    results = [dict(sorted(r.items())) for r in results]
    summaries.append({"runs": 4, "results": results, "keys": ["model", "depth"],
                      "run_names": names,
                      "columns": ["model", "depth", "params", "train_error", "test_error"]})
  seeds.collect(runs, summaries, str(tmp_path))
  header = (tmp_path / "results.md").read_text().splitlines()[0]
  assert header == "| model | depth | n | params | train_error | test_error |"
  table = _read_csv(tmp_path / "results.csv")
  assert [(r["model"], r["depth"]) for r in table] == [
      ("plain", "20"), ("plain", "56"), ("resnet", "20"), ("resnet", "56")]
  for row in table:
    values = np.array(by_run[(row["model"], int(row["depth"]))])
    assert row["n"] == "2" and row["seeds"] == "3,4"
    assert float(row["train_error_mean"]) == pytest.approx(values.mean(), rel=1e-12)
    assert float(row["train_error_std"]) == pytest.approx(values.std(ddof=1), rel=1e-12)


def test_mean_curve_is_the_mean_and_std_at_shared_steps(rng):
  a = (np.array([10., 20., 30.]), rng.uniform(size=3))
  b = (np.array([10., 20., 30., 40.]), rng.uniform(size=4))
  steps, mean, std = seeds.mean_curve([a, b])
  np.testing.assert_array_equal(steps, [10., 20., 30.])
  stacked = np.stack([a[1], b[1][:3]])
  np.testing.assert_allclose(mean, stacked.mean(0), rtol=1e-12)
  np.testing.assert_allclose(std, stacked.std(0, ddof=1), rtol=1e-12)


def test_seed_sweep_over_a_finished_run_of_another_config_exits_2(tmp_path):
  workdir = tmp_path / "w"
  config = default.get_config()
  config.learning_rate = 0.05  # the config the finished run was trained with
  config.seed = 0
  _finish(str(workdir / "seed=0"), config, {"test_accuracy": 0.5}, [])
  before = sorted(p.name for p in workdir.iterdir())
  result = _launch("--experiment=train", "--sweep=seed=0,1", f"--workdir={workdir}",
                   cwd=tmp_path)
  assert result.returncode == 2, result.stderr
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert len(lines) == 1, result.stderr
  assert "seed=0 is a finished run of another config" in lines[0]
  assert "learning_rate=0.05 there, 0.1 here" in lines[0]
  assert sorted(p.name for p in workdir.iterdir()) == before  # nothing written
  # A finished single run in the workdir itself is refused too.
  _finish(str(tmp_path / "single"), default.get_config(), {"test_accuracy": 0.5}, [])
  result = _launch("--experiment=train", "--sweep=seed=0,1", f"--workdir={tmp_path / 'single'}",
                   cwd=tmp_path)
  assert result.returncode == 2 and "finished single run" in result.stderr
  assert not (tmp_path / "single" / "seed=0").exists()


def test_seed_sweep_trains_one_run_per_seed_and_aggregates_them(tmp_path):
  workdir = tmp_path / "w"
  result = _launch("--experiment=train", "--sweep=seed=0,1", "--config.dataset=digits",
                   "--config.image_size=8", "--config.model=resnet", "--config.depth=8",
                   "--config.num_steps=4",
                   "--config.batch_size=16", "--config.eval_every=2", "--config.train_size=64",
                   "--config.validation_size=20", f"--workdir={workdir}", cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  summaries = [json.loads((workdir / f"seed={k}" / "summary.json").read_text()) for k in (0, 1)]
  (row,) = _read_csv(workdir / "results.csv")
  assert row["n"] == "2"
  for metric in ("test_accuracy", "validation_accuracy", "train_loss"):
    values = np.array([s[metric] for s in summaries])
    assert float(row[f"{metric}_mean"]) == pytest.approx(values.mean(), rel=1e-12)
    assert float(row[f"{metric}_std"]) == pytest.approx(values.std(ddof=1), rel=1e-12)
  assert (workdir / "plots" / "curves.png").exists()
