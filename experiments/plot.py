"""Redraws a finished (or running) run's curves from its metrics.jsonl, without training.

  python launch.py --experiment=plot --workdir=runs/x

Writes ``<workdir>/plots/curves.png`` (loss and accuracy against steps). Reads the run folder
and writes nothing else, so it never marks a run finished.
"""

import os

from experiments import figures
from experiments import study

WRITES_SUMMARY = False  # runner: always run, and leave summary.json to the run itself


def run(config, workdir):
  del config
  metrics = study.read_metrics(workdir)
  if not metrics:
    raise ValueError(f"workdir={workdir!r} has no metrics.jsonl to plot: give the folder of a "
                     "run (the --workdir it was trained with).")
  path = os.path.join(workdir, "plots", "curves.png")
  figures.run_curves(metrics, path, title=f"{os.path.basename(os.path.abspath(workdir))}: "
                     "loss and accuracy against steps")
  print(f"plot: {path}")
  return {"plot": path}


if __name__ == "__main__":
  import launch  # pylint: disable=g-import-not-at-top
  launch.entry("plot")
