"""launch.py and the sweep runner: CLI misuse exits 2 and writes nothing; sweeps expand into a
grid, skip finished runs and collect results from the runs' own summaries."""

import json
import os
import subprocess
import sys

import pytest

from experiments import runner
from experiments.configs import default

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launch(*args, cwd):
  return subprocess.run([sys.executable, os.path.join(REPO, "launch.py"), *args], cwd=cwd,
                        capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, words", [
    (["--experiment=nope"], ["'nope' is not known", "depth_study"]),
    (["--experiment=train", "--parallel=0"], ["--parallel=0", ">= 1"]),
    (["--experiment=train", "--sweep=nope=1,2"], ["'nope' is not a config field"]),
    (["--experiment=train", "--sweep=depth="], ["has no values"]),
    (["--experiment=train", "--sweep=depth=20,x"], ["depth='x'", "int"]),
    (["--experiment=train", "--config.nope=3"], ["--config.nope is not a field"]),
    (["--experiment=train", "--config.depth=abc"], ["--config.depth=abc"]),
    (["--experiment=train", "--bogus=1"], ["bogus"]),
    (["--experiment=summary", "--parallel_with=threads"],
     ["--parallel_with=threads is not allowed for --experiment=summary", "thread-safe"]),
    (["--experiment=train", "--parallel_with=fibres"], ["parallel_with", "threads"]),
    (["--experiment=train", "--config.kernels=mkl"],
     ["kernels='mkl' is not allowed", "auto, xla, native"]),
    (["--experiment=train", "--config.kernels=native", "--config.grad=autodiff"],
     ["kernels='native' cannot run: grad='autodiff'", "auto, xla"]),
    (["--experiment=train", "--config.validation_size=-1"],
     ["validation_size=-1 is not allowed", "1438 training examples", "0 (no validation split)"]),
    (["--experiment=depth_study", f"--config={REPO}/experiments/configs/depth_study.py:tiny",
      "--config.validation_size=1438"], ["validation_size=1438 is not allowed", "to 1437"]),
])
def test_cli_misuse_exits_2_with_one_line_and_writes_nothing(tmp_path, args, words):
  workdir = tmp_path / "out"
  result = _launch(*args, f"--workdir={workdir}", cwd=tmp_path)
  assert result.returncode == 2, result.stderr
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert len(lines) == 1, result.stderr
  for word in words:
    assert word in lines[0]
  assert not workdir.exists()
  assert not (tmp_path / "runs").exists()


def test_help_lists_experiments_and_flags(tmp_path):
  result = _launch("--help", cwd=tmp_path)
  assert result.returncode == 0
  for word in ["--sweep", "--parallel", "--dry_run", "--workdir", *runner.EXPERIMENTS]:
    assert word in result.stdout


def test_dry_run_prints_one_command_per_run_of_the_grid(tmp_path):
  result = _launch("--experiment=train", "--sweep=model=plain,resnet", "--sweep=depth=8,14,20",
                   "--config.num_steps=3", "--dry_run", f"--workdir={tmp_path / 'w'}",
                   cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  commands = result.stdout.strip().splitlines()
  assert len(commands) == 6
  assert all("--config.num_steps=3" in c for c in commands)
  assert sum("--config.model=plain" in c and "--config.depth=14" in c for c in commands) == 1
  assert not (tmp_path / "w").exists()


def test_parse_sweeps_types_values_from_the_config():
  config = default.get_config()
  axes = runner.parse_sweeps(["depth=8,20", "learning_rate=0.1,0.01", "augment=true,false"],
                             config)
  assert [a.values for a in axes] == [(8, 20), (0.1, 0.01), (True, False)]
  runs = runner.expand(config, axes)
  assert len(runs) == 8
  assert len({r.run_id for r in runs}) == 8
  assert runs[0].config.depth == 8 and config.depth == default.get_config().depth  # no aliasing


def test_sweep_skips_finished_runs_and_collects_their_summaries(tmp_path, monkeypatch):
  calls = []

  class FakeExperiment:

    @staticmethod
    def run(config, workdir):
      calls.append((config.depth, config.seed))
      os.makedirs(workdir, exist_ok=True)
      return {"score": config.depth * 10 + config.seed}

  monkeypatch.setattr(runner, "experiment_module", lambda name: FakeExperiment)
  config = default.get_config()
  runs = runner.expand(config, runner.parse_sweeps(["depth=1,2", "seed=0,1"], config))
  # A run finished earlier (summary.json present) is not run again.
  finished = runs[0].workdir(str(tmp_path))
  os.makedirs(finished)
  with open(os.path.join(finished, "summary.json"), "w") as f:
    json.dump({"score": -1}, f)
  summaries = runner.run_sweep("fake", runs, str(tmp_path), progress=lambda _: None)
  assert sorted(calls) == [(1, 1), (2, 0), (2, 1)]
  rows = runner.collect(runs, summaries, str(tmp_path))
  assert [r["score"] for r in rows] == [-1, 11, 20, 21]
  csv_text = (tmp_path / "results.csv").read_text()
  assert csv_text.splitlines()[0] == "depth,seed,score"
  assert "| 2 | 1 | 21 |" in (tmp_path / "results.md").read_text()
  # Started again, nothing runs.
  calls.clear()
  runner.run_sweep("fake", runs, str(tmp_path), progress=lambda _: None)
  assert calls == []


def test_a_config_that_cannot_train_fails_in_one_line_before_writing(tmp_path):
  # 20 conv-pool blocks cannot fit an 8x8 image: found by the preflight, not mid-training.
  workdir = tmp_path / "w"
  result = _launch("--experiment=train", "--config.model=simple_cnn", "--config.depth=20",
                   "--config.image_size=8", f"--workdir={workdir}", cwd=tmp_path)
  assert result.returncode == 2
  lines = [l for l in result.stderr.splitlines() if l.strip() and not l.startswith(("I", "W"))]
  assert len(lines) == 1 and "stride=2 shrinks the feature map" in lines[0]
  assert not workdir.exists()


def test_parallel_sweep_runs_each_run_in_its_own_process(tmp_path):
  workdir = tmp_path / "sweep"
  result = _launch("--experiment=summary", "--sweep=depth=8,14", "--config.image_size=8",
                   "--parallel=2", f"--workdir={workdir}", cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-2000:]
  for depth in (8, 14):
    run_dir = workdir / f"depth={depth}"
    assert (run_dir / "launch.log").exists()  # written by the runner for each subprocess
    assert json.loads((run_dir / "summary.json").read_text())["params"] > 0
  rows = (workdir / "results.csv").read_text().splitlines()
  assert rows[0].startswith("depth,") and len(rows) == 3


def test_map_in_threads_keeps_order_uses_threads_and_raises_after_the_others_finish():
  import threading  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  names, finished = set(), []

  def work(item):
    names.add(threading.current_thread().name)
    time.sleep(0.05 * (3 - item))  # the first items finish last
    if item == 1:
      raise ValueError("run 1 failed")
    finished.append(item)
    return item * item

  assert runner.map_in_threads(lambda i: i * i, [3, 1, 2], 2) == [9, 1, 4]
  with pytest.raises(ValueError, match="run 1 failed"):
    runner.map_in_threads(work, [0, 1, 2, 3], 2)
  assert sorted(finished) == [0, 2, 3]  # the other runs still finished
  assert len(names) == 2 and threading.main_thread().name not in names


def test_threaded_train_sweep_gives_the_same_bits_as_one_run_after_another(tmp_path):
  """Runs on threads share one XLA thread pool; each run's numbers must not depend on it."""
  config = default.get_config()
  config.update(model="simple_cnn", depth=1, dataset="digits", image_size=8, batch_size=32,
                num_steps=4, eval_every=2, checkpoint_every=2, log_grad_norms_every=0,
                progress=False)
  runs = runner.expand(config, runner.parse_sweeps(["seed=0,1,2"], config))
  threads_seen = []
  record = lambda _: threads_seen.append(__import__("threading").current_thread().name)
  threaded = runner.run_sweep("train", runs, str(tmp_path / "threads"), parallel=2,
                              threads=True, progress=record)
  one_by_one = runner.run_sweep("train", runs, str(tmp_path / "sequential"), parallel=1,
                                progress=lambda _: None)
  assert len(set(threads_seen)) == 2  # two worker threads ran them
  for a, b in zip(threaded, one_by_one):
    for key in ("train_loss", "test_loss", "test_accuracy", "steps"):
      assert a[key] == b[key], key  # exact: the same programs on the same pool
  assert len({s["test_loss"] for s in threaded}) == 3  # three different seeds
