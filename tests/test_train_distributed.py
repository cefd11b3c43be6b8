"""Training runs in other processes: SIGKILL and resume, 8 fake CPU devices, two processes.

Each compares with one uninterrupted single-device run made here (module fixture, fresh data
seed): bitwise for the resumed run (same programs, same numbers), to float32 tolerance for
the data-parallel ones (sums split over devices add up in another order). Workers are
``python -m tests.train_worker`` (tests/train_worker.py) with the same numerics flags.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests import train_fakes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING = train_fakes.TIMING


@pytest.fixture(scope="module")
def data_seed():
  return train_fakes.fresh_seed()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_seed):
  """The uninterrupted tiny run on one device: (workdir, summary)."""
  return train_fakes.reference_run(str(tmp_path_factory.mktemp("reference")), data_seed)


_rows = train_fakes.rows
_summary = train_fakes.summary


def _final_state(workdir, step=6):
  return train_fakes.load_state(os.path.join(workdir, "checkpoints", str(step), "state"))


class _Worker:
  """A ``tests.train_worker`` subprocess; output goes to files (pipes could fill and block)."""

  def __init__(self, workdir, *args, env=None, name="worker"):
    log_dir = os.path.dirname(os.path.abspath(workdir))
    self.out_path = os.path.join(log_dir, f"{name}.out")
    self.err_path = os.path.join(log_dir, f"{name}.err")
    with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
      self.proc = subprocess.Popen(
          [sys.executable, "-m", "tests.train_worker", str(workdir), *args], cwd=ROOT,
          env={**os.environ, **(env or {})}, stdout=out, stderr=err)

  def kill(self) -> None:
    """Ends the worker if it still runs (a failed peer must not leave it waiting)."""
    if self.proc.poll() is None:
      self.proc.kill()
      self.proc.wait()

  def stderr(self) -> str:
    with open(self.err_path) as f:
      return f.read()[-3000:]

  def result(self, timeout=240) -> dict:
    """Waits; returns the worker's JSON line (asserting a clean exit)."""
    try:
      self.proc.wait(timeout=timeout)
    finally:
      self.kill()
    assert self.proc.returncode == 0, self.stderr()
    with open(self.out_path) as f:
      return json.loads(f.read().strip().splitlines()[-1])


def _worker(workdir, *args, env=None, name="worker"):
  return _Worker(workdir, *args, env=env, name=name).result()


def test_run_killed_with_sigkill_resumes_to_the_same_result(reference, tmp_path, data_seed):
  ref_dir, _ = reference
  workdir = tmp_path / "killed"
  worker = _Worker(workdir, f"--data-seed={data_seed}", "--slow-after=3", name="killed")
  first = workdir / "checkpoints" / "2"
  deadline = time.time() + 180
  while not first.exists() and worker.proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  if not first.exists():
    worker.kill()
    pytest.fail(f"no checkpoint appeared: {worker.stderr()}")
  os.kill(worker.proc.pid, signal.SIGKILL)
  worker.kill()
  assert not (workdir / "summary.json").exists()
  out = _worker(workdir, f"--data-seed={data_seed}", name="restarted")
  assert out["summary"]["resumed_from"] in (2, 4)
  # Bitwise: the same programs on the same numbers, batches and keys chosen by the step.
  assert _rows(workdir, "metrics.jsonl") == _rows(ref_dir, "metrics.jsonl")
  assert _rows(workdir, "grad_norms.jsonl") == _rows(ref_dir, "grad_norms.jsonl")
  assert _summary(workdir) == _summary(ref_dir)
  jax.tree.map(np.testing.assert_array_equal, _final_state(str(workdir)),
               _final_state(ref_dir))


def _assert_close_runs(workdir, ref_dir):
  # Float32 sums split over devices add up in another order; BN's division by small batch
  # variances amplifies the last bits over 6 steps. Measured: <= 5e-6 relative on parameters,
  # <= 3e-7 on metrics; 5e-5 leaves a 10x margin for other data seeds.
  got, want = _rows(workdir, "metrics.jsonl"), _rows(ref_dir, "metrics.jsonl")
  assert [r["step"] for r in got] == [r["step"] for r in want]
  for g, w in zip(got, want):
    for k in w:
      np.testing.assert_allclose(g[k], w[k], rtol=5e-5, atol=1e-6, err_msg=k)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=5e-5, atol=1e-6),
               _final_state(str(workdir)), _final_state(ref_dir))


def test_eight_devices_match_one(reference, tmp_path, data_seed):
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  out = _worker(tmp_path / "eight", f"--data-seed={data_seed}", "--check-batch=12", env=env,
                name="eight")
  # Batch 12 on 8 devices: refused before anything is written.
  assert "batch_size=12" in out["check_batch_error"], out
  assert "device count 8" in out["check_batch_error"]
  assert out["check_batch_wrote"] is False
  assert out["num_devices"] == 8 and out["summary"]["devices"] == 8
  _assert_close_runs(tmp_path / "eight", reference[0])


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one(reference, tmp_path, data_seed):
  workdir = tmp_path / "two"
  port = _free_port()
  workers = [_Worker(workdir, json.dumps({"coordinator_address": f"127.0.0.1:{port}",
                                           "num_processes": 2, "process_id": i}),
                     f"--data-seed={data_seed}", name=f"process{i}") for i in range(2)]
  try:
    summaries = [w.result()["summary"] for w in workers]
  finally:
    for w in workers:
      w.kill()
  assert [s["processes"] for s in summaries] == [2, 2]
  _assert_close_runs(workdir, reference[0])
