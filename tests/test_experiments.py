"""Every study runs end to end on its tiny config, writes its table and plot, and its table's
numbers are the runs' own summaries; a sweep interrupted mid-way finishes without redoing work.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from experiments import runner

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_config(name):
  module = __import__(f"experiments.configs.{name}", fromlist=["get_config"])
  config = module.get_config("tiny")
  if "progress" in config:
    config.progress = False
  return config


def _read_csv(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def _pngs(folder):
  found = []
  for root, _, files in os.walk(folder):
    found += [os.path.join(root, f) for f in files if f.endswith(".png")]
  return found


@pytest.mark.parametrize("name", ["depth_study", "stride_sweep", "resnext", "bottleneck"])
def test_training_study_table_comes_from_run_summaries(tmp_path, name):
  workdir = str(tmp_path / name)
  runner.run_one(name, _tiny_config(name), workdir)
  rows = _read_csv(os.path.join(workdir, "results.csv"))
  assert rows and os.path.exists(os.path.join(workdir, "results.md"))
  assert _pngs(workdir)
  run_dirs = sorted(d for d in os.listdir(workdir)
                    if os.path.exists(os.path.join(workdir, d, "summary.json")))
  assert len(run_dirs) == len(rows)
  errors = sorted(float(r["test_error"]) for r in rows)
  from_runs = sorted(1.0 - runner.read_summary(os.path.join(workdir, d))["test_accuracy"]
                     for d in run_dirs)
  assert errors == pytest.approx(from_runs, abs=1e-12)


def test_scale_counts_reproduce_the_lesson(tmp_path):
  workdir = str(tmp_path / "scale")
  summary = runner.run_one("scale", _tiny_config("scale"), workdir)
  assert summary["dense_224x224x3_to_10"] == 1_505_280
  counts = summary["counts"]
  for row in counts:
    pixels = row["pixels"]
    assert row["dense_params"] == pixels * pixels      # O(n²) in pixels
    assert row["local_params"] == 9 * pixels           # O(n)
    assert row["shared_params"] == 9                   # O(1)
    assert row["local_macs"] == row["shared_macs"]     # same forward cost
  assert os.path.exists(os.path.join(workdir, "plots", "parameters.png"))
  assert os.path.exists(os.path.join(workdir, "plots", "accuracy_vs_train_size.png"))


def test_grid_permutation_is_the_same_for_train_and_test(tmp_path):
  from experiments import grid  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng()
  images = rng.integers(0, 255, (3, 4, 5, 2)).astype(np.uint8)
  permutation = rng.permutation(20)
  moved = grid.permute_pixels(images, permutation)
  flat = images.reshape(3, 20, 2)
  assert np.array_equal(moved.reshape(3, 20, 2), flat[:, permutation])
  # A permutation keeps the multiset of pixel values of every image.
  assert np.array_equal(np.sort(moved.reshape(3, -1), axis=1),
                        np.sort(images.reshape(3, -1), axis=1))
  workdir = str(tmp_path / "grid")
  runner.run_one("grid", _tiny_config("grid"), workdir)
  rows = _read_csv(os.path.join(workdir, "results.csv"))
  assert {(r["model"], r["pixels"]) for r in rows} == {
      ("mlp", "original"), ("mlp", "permuted"), ("simple_cnn", "original"),
      ("simple_cnn", "permuted")}


def test_interrupted_sweep_finishes_with_four_results_and_runs_nothing_twice(tmp_path):
  workdir = tmp_path / "sweep"
  command = [sys.executable, os.path.join(REPO, "launch.py"), "--experiment=train",
             "--config=" + os.path.join(REPO, "experiments", "configs", "default.py"),
             "--config.dataset=digits", "--config.image_size=8", "--config.batch_size=16",
             "--config.train_size=128", "--config.num_steps=6", "--config.eval_every=3",
             "--config.checkpoint_every=2", "--config.model=simple_cnn", "--config.depth=2",
             "--noprogress",
             "--sweep=seed=0,1", "--sweep=learning_rate=0.1,0.05", f"--workdir={workdir}"]
  process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
  deadline = time.time() + 300
  while time.time() < deadline:
    done = [p for p in workdir.glob("*/summary.json")]
    if done:
      break
    time.sleep(0.2)
  os.killpg(process.pid, signal.SIGKILL)
  process.wait()
  first = [p.parent for p in workdir.glob("*/summary.json")]
  assert len(first) >= 1
  stamps = {p: os.stat(p / "summary.json").st_mtime_ns for p in first}
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  assert len(list(workdir.glob("*/summary.json"))) == 4
  for p, stamp in stamps.items():
    assert os.stat(p / "summary.json").st_mtime_ns == stamp  # not run again
  for run_dir in workdir.iterdir():
    if (run_dir / "summary.json").exists():  # a run (the sweep also writes plots/)
      steps = [json.loads(l)["step"] for l in open(run_dir / "metrics.jsonl")
               if l.strip() and "train_loss" in json.loads(l)]
      assert len(steps) == len(set(steps)), run_dir  # no step logged twice
  assert len(_read_csv(workdir / "results_per_seed.csv")) == 4
  # A sweep over seed is aggregated: one row per learning rate, over both seeds.
  assert [r["n"] for r in _read_csv(workdir / "results.csv")] == ["2", "2"]


def test_receptive_field_study_measured_equals_analytic(tmp_path):
  workdir = str(tmp_path / "rf")
  summary = runner.run_one("receptive_field", _tiny_config("receptive_field"), workdir)
  assert summary["stacks"] and all(row["equal"] for row in summary["stacks"])
  by_name = {row["net"]: row["analytic_size"] for row in summary["stacks"]}
  assert by_name["3x3 conv x3"] == 7           # by hand: 1 + 3 * 2
  assert by_name["3x3 dilation 1, 2, 4"] == 15  # 1 + 2 * (1 + 2 + 4)
  for row in summary["effective"]:
    assert row["erf_size"] <= row["analytic_size"]
  assert {"measured_fields.png", "erf_growth.png", "erf_maps.png"} <= set(
      os.listdir(os.path.join(workdir, "plots")))


def test_translation_study_evaluates_every_shift(tmp_path):
  from cnn_jax import data  # pylint: disable=g-import-not-at-top
  config = _tiny_config("translation")
  workdir = str(tmp_path / "translation")
  summary = runner.run_one("translation", config, workdir)
  shifts = data.translated_geometry(config.image_size)["max_shift"] + 1
  assert set(summary["curves"]) == {"model=mlp", "model=simple_cnn,head=flatten",
                                    "model=simple_cnn,head=global_avg"}
  assert all(len(curve) == shifts for curve in summary["curves"].values())
  assert os.path.exists(os.path.join(workdir, "plots", "accuracy_vs_shift.png"))


def test_pooling_study_reports_invariance_per_pool(tmp_path):
  workdir = str(tmp_path / "pooling")
  summary = runner.run_one("pooling", _tiny_config("pooling"), workdir)
  assert [row["pool"] for row in summary["results"]] == ["max", "l2"]
  for row in summary["results"]:
    assert 0.0 <= row["agreement_shift1"] <= 1.0
    assert row["params"] > 0 and row["flops"] == 2 * row["macs"]
  assert os.path.exists(os.path.join(workdir, "plots", "agreement_vs_shift.png"))


def test_kernels_study_draws_kernels_and_maps(tmp_path):
  workdir = str(tmp_path / "kernels")
  summary = runner.run_one("kernels", _tiny_config("kernels"), workdir)
  assert len(summary["layers"]) == 2  # one feature-map grid per conv block
  pngs = set(os.listdir(os.path.join(workdir, "plots")))
  assert "kernels.png" in pngs and sum(p.startswith("feature_maps_") for p in pngs) == 2


def test_plot_redraws_a_run_from_its_metrics_without_marking_it_finished(tmp_path):
  run_dir = tmp_path / "run"
  run_dir.mkdir()
  rows = [{"step": s, "train_loss": 2.0 / s, "train_accuracy": 1 - 1.0 / s} for s in (1, 2, 3)]
  (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows)
                                         + '{"step": 4, "train_lo')  # a torn last line
  from experiments.configs import default  # pylint: disable=g-import-not-at-top
  runner.run_one("plot", default.get_config(), str(run_dir))
  assert (run_dir / "plots" / "curves.png").stat().st_size > 0
  assert not (run_dir / "summary.json").exists()
  with pytest.raises(ValueError, match="no metrics.jsonl"):
    runner.run_one("plot", default.get_config(), str(tmp_path / "empty"))


# ---- the lesson's studies: 1x1 reduce, 1-D signals, Fig. 7, effective receptive field -------

def test_one_by_one_study_table_has_each_reduce(tmp_path):
  workdir = str(tmp_path / "one_by_one")
  summary = runner.run_one("one_by_one", _tiny_config("one_by_one"), workdir)
  rows = {r["reduce"]: r for r in summary["results"]}
  assert set(rows) == {"conv", "depth_avg", "fixed_random"}
  # Depth 11, width 16: one block per stage; the learned reduces hold 16*16 + 64*32 + 128*64
  # weights (stage inputs 16, 64, 128 channels into 16, 32, 64), which the others do without.
  assert rows["conv"]["params"] - rows["depth_avg"]["params"] == 16 * 16 + 64 * 32 + 128 * 64
  assert rows["depth_avg"]["params"] == rows["fixed_random"]["params"]
  assert os.path.exists(os.path.join(workdir, "plots", "test_error.png"))


def test_signals1d_study_counts_first_layers(tmp_path):
  workdir = str(tmp_path / "signals1d")
  config = _tiny_config("signals1d")
  config.models = "mlp,local,simple_cnn"
  summary = runner.run_one("signals1d", config, workdir)
  first = {r["model"]: r["first_layer_params"] for r in summary["results"]}
  length, width, hidden = config.signal_length, config.width, config.hidden
  assert first == {"mlp": length * hidden + hidden,            # O(n^2) when hidden ~ n
                   "local": length * (3 * width + width),       # a 3-tap kernel per position
                   "simple_cnn": 3 * width + width}             # one shared 3-tap kernel
  assert len(summary["results"]) == 3 * 2
  assert _pngs(workdir)


def test_residual_responses_study_reads_trained_runs(tmp_path):
  workdir = str(tmp_path / "residual_responses")
  summary = runner.run_one("residual_responses", _tiny_config("residual_responses"), workdir)
  rows = {r["model"]: r for r in summary["results"]}
  assert set(rows) == {"plain", "resnet"}
  assert all(r["responses"] == 7 for r in rows.values())  # depth 8: 3 blocks x 2 BN + stem BN
  stats = json.load(open(os.path.join(workdir, "statistics.json")))
  assert len(stats["resnet-8"]["blocks"]) == 3
  assert {"response_std.png", "block_ratio.png"} <= set(os.listdir(
      os.path.join(workdir, "plots")))


def test_effective_field_study_fraction_within_the_field(tmp_path):
  workdir = str(tmp_path / "effective_field")
  summary = runner.run_one("effective_field", _tiny_config("effective_field"), workdir)
  rows = summary["results"]
  assert {(r["model"], r["state"]) for r in rows} == {
      (m, s) for m in ("plain", "resnet") for s in ("init", "trained")}
  for row in rows:
    assert 0 < row["pixels_95"] <= row["field_pixels"]
    assert row["fraction_of_field"] == row["pixels_95"] / row["field_pixels"]
  assert _pngs(workdir)


@pytest.mark.parametrize("name, override, words", [
    ("one_by_one", "--config.variants=model=resnet", ["no 1x1 reduce"]),
    ("signals1d", "--config.dataset=digits", ["signals1d"]),
    ("residual_responses", "--config.models=plain,bottleneck", ["bottleneck"]),
    ("effective_field", "--config.models=resnet,simple_cnn", ["flattens"]),
])
def test_lesson_studies_refuse_impossible_settings(tmp_path, name, override, words):
  workdir = tmp_path / "run"
  result = subprocess.run([sys.executable, os.path.join(REPO, "launch.py"),
                           f"--experiment={name}", override, f"--workdir={workdir}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-2000:]
  message = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(message) == 1 and all(w in message[0] for w in words), result.stderr
  assert not workdir.exists()


def test_unscanned_twin_computes_the_same_function(rng):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from cnn_jax import models  # pylint: disable=g-import-not-at-top
  from experiments import residual_responses  # pylint: disable=g-import-not-at-top
  from experiments.configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config.update(model="resnet", depth=20, width=4, grad="autodiff", scan_blocks=True,
                min_scanned_blocks=1)
  model = models.build(config)
  x = jnp.asarray(rng.standard_normal((2, 8, 8, 3)), jnp.float32)
  variables = jax.jit(lambda v: model.init(jax.random.key(int(rng.integers(2 ** 31))), v))(x)
  twin, twin_variables = residual_responses.unscanned(model, variables)
  assert "blocks" in variables["params"]["stage1"] and "blocks" not in twin_variables["params"][
      "stage1"]
  assert sorted(twin_variables["params"]["stage1"]) == ["block0", "block1", "block2"]
  # The same float32 operations in the same order, scanned or not: 1e-5 covers XLA's fusion.
  np.testing.assert_allclose(twin.apply(twin_variables, x), model.apply(variables, x),
                             rtol=1e-5, atol=1e-5)


def test_a_depth_study_that_grows_keeps_its_finished_runs(tmp_path):
  """Adding a depth to a finished study trains only the new net; the old run is not refused as
  "another config" (its config names its own net, not the study's grid) and not retrained."""
  workdir = str(tmp_path / "depth")
  config = _tiny_config("depth_study")
  config.models, config.depths = "plain", "8"
  runner.run_one("depth_study", config, workdir)
  summary = os.path.join(workdir, "plain-8", "summary.json")
  stamp = os.stat(summary).st_mtime_ns
  config.depths = "8,14"
  runner.run_one("depth_study", config, workdir)
  assert os.stat(summary).st_mtime_ns == stamp  # skipped, not run again
  assert [r["model"] for r in _read_csv(os.path.join(workdir, "results.csv"))] == ["plain"] * 2


def test_variant_study_reports_validation_error_from_each_run(tmp_path):
  """With a validation split, a variant study's table has each run's own validation error,
  beside (not instead of) its test error."""
  workdir = str(tmp_path / "resnext")
  config = _tiny_config("resnext")
  config.validation_size = 30
  runner.run_one("resnext", config, workdir)
  rows = _read_csv(os.path.join(workdir, "results.csv"))
  assert rows
  for row in rows:
    summary = runner.read_summary(os.path.join(workdir, row["variant"]))
    assert float(row["validation_error"]) == pytest.approx(
        1.0 - summary["validation_accuracy"], abs=1e-12)
    assert float(row["test_error"]) == pytest.approx(1.0 - summary["test_accuracy"], abs=1e-12)
