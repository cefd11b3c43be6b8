"""Wall time of a depth sweep of small training runs: one after another vs using the cores.

  python -m bench.sweep                                   # 8 ResNet depths, all variants
  python -m bench.sweep --depths=8,14,20 --num_steps=50 --variants=sequential,processes

Each variant runs the same sweep through ``launch.py`` (``--experiment=train
--sweep=depth=...``) into a fresh temporary folder, so nothing is skipped and nothing is left
behind:
  * ``sequential``: ``--parallel=1``, the runs one after another in one process, each using
    all cores (XLA's intra-op threads);
  * ``threads``: ``--parallel=P --parallel_with=threads`` (P = the number of cores), P runs
    at once on threads of one process, sharing its XLA thread pool;
  * ``processes``: ``--parallel=P --parallel_with=processes``, P runs at once, each its own
    process, left to the OS scheduler (each process's XLA sizes its thread pool to all cores);
  * ``processes_pinned``: the same with ``--pin_cores``: each process pinned to its own core;
  * ``fake_devices``: ``--parallel=1`` with ``XLA_FLAGS=--xla_force_host_platform_device_count=P``,
    every run data-parallel over P CPU "devices" (the trainer shards the batch over all
    devices).
Prints the wall time of each, its speed-up over ``sequential`` and each run's own wall time
(from its summary.json); ``--json`` prints one JSON object. The runs' final test accuracies
are printed too: the same bits for sequential, threads and unpinned processes (each run
uses every core's thread); pinned processes and fake devices sum floats in another order,
which a deep net's 100 steps at learning rate 0.1 amplify (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ("sequential", "threads", "processes", "processes_pinned", "fake_devices")


def sweep_command(workdir: str, depths: str, num_steps: int, parallel: int,
                  parallel_with: str = "auto", pin_cores: bool = False) -> list[str]:
  return [sys.executable, os.path.join(REPO_ROOT, "launch.py"), "--experiment=train",
          "--config.model=resnet", "--config.dataset=digits", "--config.image_size=12",
          "--config.batch_size=64", f"--config.num_steps={num_steps}",
          f"--config.eval_every={num_steps}", f"--config.checkpoint_every={num_steps}",
          "--config.log_grad_norms_every=0", "--config.progress=false",
          f"--sweep=depth={depths}", f"--workdir={workdir}", f"--parallel={parallel}",
          f"--parallel_with={parallel_with}", f"--pin_cores={str(pin_cores).lower()}"]


def run_variant(variant: str, depths: str, num_steps: int, cores: int) -> dict:
  env = dict(os.environ)
  parallel = cores if variant.startswith(("processes", "threads")) else 1
  if variant == "fake_devices":
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        f" --xla_force_host_platform_device_count={cores}"
                        " --xla_cpu_collective_call_terminate_timeout_seconds=600").strip()
  with tempfile.TemporaryDirectory(prefix=f"bench_sweep_{variant}_") as workdir:
    start = time.perf_counter()
    command = sweep_command(workdir, depths, num_steps, parallel,
                            "threads" if variant == "threads" else "processes",
                            pin_cores=variant == "processes_pinned")
    done = subprocess.run(command, env=env,
                          cwd=REPO_ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
      raise SystemExit(f"{variant}: launch.py failed (exit {done.returncode}):\n"
                       f"{done.stderr[-2000:]}")
    accuracies, run_walls = {}, {}
    for depth in depths.split(","):
      with open(os.path.join(workdir, f"depth={depth}", "summary.json")) as f:
        summary = json.load(f)
      accuracies[depth] = summary.get("test_accuracy")
      run_walls[depth] = summary.get("wall_time_s")
  return {"variant": variant, "parallel": parallel, "wall_s": wall, "test_accuracy": accuracies,
          "run_wall_s": run_walls}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--depths", default="8,14,20,26,32,38,44,50",
                      help="comma-separated ResNet depths (6n+2): the sweep's runs")
  parser.add_argument("--num_steps", type=int, default=100, help="train steps per run")
  parser.add_argument("--variants", default=",".join(VARIANTS),
                      help="comma-separated: " + ", ".join(VARIANTS))
  parser.add_argument("--json", action="store_true", help="print one JSON object")
  args = parser.parse_args()
  variants = args.variants.split(",")
  if not set(variants) <= set(VARIANTS):
    parser.error(f"--variants={args.variants!r}: give some of {', '.join(VARIANTS)}")
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  rows = [run_variant(v, args.depths, args.num_steps, cores) for v in variants]
  base = next((r["wall_s"] for r in rows if r["variant"] == "sequential"), None)
  for row in rows:
    row["speedup"] = base / row["wall_s"] if base else None
  if args.json:
    print(json.dumps({"cores": cores, "depths": args.depths, "num_steps": args.num_steps,
                      "load_avg": os.getloadavg()[0], "rows": rows}))
    return
  print(f"{len(args.depths.split(','))} ResNet runs (depths {args.depths}), {args.num_steps} "
        f"steps each, batch 64, digits 12x12; {cores} cores, load avg {os.getloadavg()[0]:.2f}")
  for row in rows:
    speedup = f"x{row['speedup']:.2f}" if row["speedup"] else ""
    acc = " ".join(f"{a:.3f}" if a is not None else "-" for a in row["test_accuracy"].values())
    runs = " ".join(f"{w:.0f}" for w in row["run_wall_s"].values())
    print(f"  {row['variant']:13s} parallel={row['parallel']}  {row['wall_s']:7.1f} s  "
          f"{speedup:6s} test accuracy {acc}; each run's own wall s: {runs}")


if __name__ == "__main__":
  main()
