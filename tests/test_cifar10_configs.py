"""The depth study's CIFAR-10 configs: the paper's recipe, its table, the time estimate and the
image-size check (none of it needs CIFAR-10: small stand-ins are written here)."""

import io
import contextlib
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments import depth_study
from experiments import study
from experiments.configs import depth_study as configs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cifar10_config_is_he_et_al_section_4_2():
  config = configs.get_config("cifar10")
  names = [name for name, _ in depth_study.named_runs(config)]
  # Typed from the paper, not from the config: 20/32/44/56 plain and residual, and ResNet-110.
  assert sorted(names) == sorted([f"plain-{d}" for d in (20, 32, 44, 56)] +
                                 [f"resnet-{d}" for d in (20, 32, 44, 56, 110)])
  assert (config.shortcut, config.batch_size, config.optimizer, config.momentum,
          config.weight_decay, config.learning_rate) == ("A", 128, "sgd", 0.9, 1e-4, 0.1)
  # lr ÷10 at 32k and 48k of 64k iterations: the step schedule's 50% and 75%.
  from cnn_jax.train import optim
  schedule = optim.make_schedule(config)
  for step, lr in ((0, 0.1), (31_999, 0.1), (32_001, 0.01), (47_999, 0.01), (48_001, 0.001),
                   (63_999, 0.001)):
    assert float(schedule(step)) == pytest.approx(lr, rel=1e-6), step
  assert config.num_steps == 64_000 and config.augment and config.validation_size == 5_000
  assert config.dataset == "cifar10" and config.require_image_size == 32


def test_paper_columns_put_the_papers_error_beside_the_runs():
  config = configs.get_config("cifar10")
  row = {"model": "resnet", "depth": 56, "test_error": 0.08}
  columns = depth_study.paper_columns(config, row)
  assert columns["paper_test_error"] == pytest.approx(0.0697, abs=1e-12)
  assert columns["test_error_minus_paper"] == pytest.approx(0.08 - 0.0697, abs=1e-12)
  assert depth_study.paper_columns(config, {"model": "resnet", "depth": 8,
                                            "test_error": 0.1})["paper_test_error"] == ""
  assert depth_study.paper_columns(configs.get_config("cifar10_cpu"), row) == {}


def test_estimate_counts_steps_and_evaluation():
  config = configs.get_config("cifar10_cpu")
  named = depth_study.named_runs(config)
  assert [n for n, _ in named] == ["plain-20", "plain-56", "resnet-20", "resnet-56"]

  class Data:  # the shapes that matter: 9,000 train, 2,000 test, 1,000 validation
    x_train, x_test, x_val = np.zeros(9000), np.zeros(2000), np.zeros(1000)

  seconds = depth_study.estimate_seconds(named, Data, lambda depth: depth / 100)
  # By hand: per run 800 steps * t + t/3 * (8 evals * 3,000 + 9,000) / 128.
  expected = sum(t * 800 + t / 3 * (8 * 3000 + 9000) / 128 for t in (0.2, 0.56, 0.2, 0.56))
  assert seconds == pytest.approx(expected, rel=1e-12)


def test_announce_times_first_steps_and_says_how_long(tmp_path):
  config = configs.get_config("tiny")
  config.progress = False
  dataset = study.load_data(config)
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    depth_study.announce_time(depth_study.named_runs(config), dataset, str(tmp_path))
  line = out.getvalue()
  assert "4 runs will take about" in line and "Running anyway." in line
  assert "plain-8" in line and "plain-14" in line  # the shallowest and deepest, timed
  assert not os.listdir(tmp_path)  # the timing trains in a temporary directory of its own


def test_cifar10_config_refuses_images_that_are_not_32x32(tmp_path):
  rng = np.random.default_rng()
  path = tmp_path / "small.npz"
  np.savez(path, x_train=rng.integers(0, 256, (40, 28, 28, 3), dtype=np.uint8),
           y_train=np.arange(40) % 10, x_test=rng.integers(0, 256, (10, 28, 28, 3),
                                                           dtype=np.uint8),
           y_test=np.arange(10))
  workdir = tmp_path / "w"
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, "launch.py"), "--experiment=depth_study",
       f"--config={REPO}/experiments/configs/depth_study.py:cifar10_cpu",
       f"--config.dataset=npz:{path}", "--config.validation_size=10",
       "--config.train_size=0", f"--workdir={workdir}"],
      cwd=tmp_path, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2, result.stderr
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and "has 28x28x3 images" in lines[0] and "needs 32x32" in lines[0]
  assert not workdir.exists()
