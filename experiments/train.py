"""Trains one model: the engine's own face on the command line.

  python launch.py --experiment=train --config=experiments/configs/default.py \
      --config.model=resnet --config.depth=20 --config.dataset=digits --workdir=runs/x

Writes config.json, metrics.jsonl, grad_norms.jsonl, TensorBoard events, checkpoints/ and,
at the end, summary.json into the workdir (see docs/training.md).
"""

from __future__ import annotations

from typing import Any

import ml_collections

from cnn_jax.train import preflight
from cnn_jax.train import train_and_evaluate
from experiments import runner
from experiments import study


# A sweep may train its runs on threads of one process (launch.py --parallel_with): nothing
# here draws with pyplot or holds global state.
RUNS_IN_THREADS = True


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """``cnn_jax.train.train_and_evaluate(config, workdir)``: the run's summary, also printed
  in one line."""
  summary = train_and_evaluate(config, workdir)
  runner.print_line(study.run_line(runner.run_name(workdir), summary))
  return summary


def check(config: ml_collections.ConfigDict) -> None:
  """Raises a one-line ValueError if ``config`` cannot train (nothing compiled or written)."""
  preflight(config)
