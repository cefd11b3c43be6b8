"""Runs a tiny training in a fresh process, for the tests that need one.

Fake CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=N``) and
``jax.distributed`` must be set up before JAX starts, and SIGKILL needs a process to kill.

  python -m tests.train_worker WORKDIR [JSON_CONFIG_OVERRIDES] [--slow-after=STEP]
      [--devices=K] [--data-seed=S] [--check-batch=B]

Prints one JSON line ``{"summary": ..., "num_devices": ...}``; with --check-batch, first tries
batch size B in WORKDIR-bad and adds the ValueError's message (``check_batch_error``) and
whether anything was written (``check_batch_wrote``).
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax

# The same numerics as the in-process tests (tests/conftest.py), so results compare bitwise.
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_disable_most_optimizations", True)

from tests import train_fakes  # pylint: disable=g-import-not-at-top,wrong-import-position


def main(argv: list[str]) -> None:
  workdir = argv[1]
  positional = [a for a in argv[2:] if not a.startswith("--")]
  flags = dict(a[2:].split("=", 1) if "=" in a else (a[2:], "1")
               for a in argv[2:] if a.startswith("--"))
  overrides = json.loads(positional[0]) if positional else {}
  config = train_fakes.tiny_config(**overrides)
  batch_indices, prepare_batch = train_fakes.data_functions()
  if "slow-after" in flags:
    # Slow the run down after a given step so that a test can kill it mid-training.
    slow_after = int(flags["slow-after"])
    fast = batch_indices

    def batch_indices(n, b, seed, step):  # pylint: disable=function-redefined
      if step >= slow_after:
        time.sleep(0.5)
      return fast(n, b, seed, step)

  devices = None
  if "devices" in flags:
    devices = jax.devices()[:int(flags["devices"])]
  from cnn_jax.train import train_and_evaluate  # pylint: disable=g-import-not-at-top
  kwargs = dict(model=train_fakes.TinyCNN(num_classes=3),
                dataset=train_fakes.make_dataset(int(flags.get("data-seed", 0))),
                devices=devices, batch_indices=batch_indices, prepare_batch=prepare_batch)
  result = {}
  if "check-batch" in flags:
    bad_dir = workdir.rstrip("/") + "-bad"
    try:
      train_and_evaluate(train_fakes.tiny_config(**{**overrides, "batch_size": int(
          flags["check-batch"])}), bad_dir, **kwargs)
      result["check_batch_error"] = None
    except ValueError as e:
      result["check_batch_error"] = str(e)
    result["check_batch_wrote"] = os.path.exists(bad_dir)
  result["summary"] = train_and_evaluate(config, workdir, **kwargs)
  result["num_devices"] = len(jax.devices())
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  main(sys.argv)
