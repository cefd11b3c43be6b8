"""Where a ResNet train step's time goes: XLA ops summed by kind, from a JAX profiler trace.

  python -m bench.profile_step --depth=20 --batch=128 --grad=hand --cores=1 [--top=15]
      [--kernels=auto|xla|native:ALGORITHM] [--steps=2] [--json]

Compiles the same step as ``bench.train_step`` (project model, SGD momentum, the trainer's
XLA options), runs it ``--steps`` times under ``jax.profiler.trace(...,
create_perfetto_trace=True)`` and reads the trace back: every complete event of an XLA op
(thunk) is summed by its name without the numeric suffix (``ynn_fusion.262`` ->
``ynn_fusion``, ``conv_general_dilated.40`` -> ``conv_general_dilated``: XLA's own Eigen
convolution), divided by the number of steps. ``--cores=1`` pins the process to one core
(``sched_setaffinity`` before jax starts) so that no two ops run at once and the per-op times
add up to the step; on more cores XLA runs independent ops concurrently and their times
overlap. Events that contain others (``while`` loops, ``ThunkExecutor``) are listed too, so
the percentages are of the summed event time, not of the wall time.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time


_CONTAINERS = ("ThunkExecutor", "$", "end: ", "PjitFunction", "CommonPjRt", "ParseArguments",
               "Handle inputs", "SlinkyThreadPool")


def summarize_trace(trace_file: str, steps: int) -> dict[str, dict[str, float]]:
  """``{op kind: {"ms_per_step", "count_per_step"}}`` from a perfetto ``.json.gz`` trace."""
  with gzip.open(trace_file) as f:
    events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  total, count = collections.defaultdict(float), collections.Counter()
  for event in events:
    name = event.get("name", "")
    if event.get("ph") != "X" or name.startswith(_CONTAINERS):
      continue
    kind = re.sub(r"\.\d+$", "", name)
    total[kind] += event.get("dur", 0.0) / 1e3  # microseconds -> ms
    count[kind] += 1
  return {k: {"ms_per_step": v / steps, "count_per_step": count[k] / steps}
          for k, v in sorted(total.items(), key=lambda kv: -kv[1])}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--depth", type=int, default=20)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--image_size", type=int, default=32)
  parser.add_argument("--grad", default="hand", choices=("hand", "autodiff"))
  parser.add_argument("--kernels", default="auto",
                      help="as bench.train_step's --kernels (one value; default the trainer's)")
  parser.add_argument("--cores", type=int, default=1,
                      help="pin to this many cores (0: leave the affinity alone)")
  parser.add_argument("--steps", type=int, default=2, help="profiled steps")
  parser.add_argument("--top", type=int, default=15, help="op kinds to print")
  parser.add_argument("--json", action="store_true", help="print one JSON object")
  args = parser.parse_args(argv)
  if args.depth < 8 or (args.depth - 2) % 6:
    parser.error(f"--depth={args.depth} is not allowed: a CIFAR ResNet has depth 6n+2")
  for name in ("batch", "image_size", "steps", "top"):
    if getattr(args, name) < 1:
      parser.error(f"--{name}={getattr(args, name)} is not allowed: give an int >= 1")
  if args.cores < 0:
    parser.error(f"--cores={args.cores} is not allowed: give an int >= 0")
  if args.cores:
    if "jax" in sys.modules:
      raise RuntimeError("--cores must pin the process before jax starts its thread pools")
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.cores])

  import jax  # pylint: disable=g-import-not-at-top
  from bench import train_step  # pylint: disable=g-import-not-at-top
  from cnn_jax.train import steps as steps_lib  # pylint: disable=g-import-not-at-top

  model_args = train_step._parse([f"--depth={args.depth}", f"--batch={args.batch}",  # pylint: disable=protected-access
                                  f"--image_size={args.image_size}", f"--grad={args.grad}",
                                  f"--kernels={args.kernels}"])
  model, _ = train_step.build_model(model_args, args.grad, kernels=args.kernels)
  step, _ = train_step.make_jax_trainer(model, args.batch, args.image_size, 1,
                                        xla_options=steps_lib.compiler_options())
  step().block_until_ready()
  start = time.perf_counter()
  for _ in range(args.steps):
    out = step()
  out.block_until_ready()
  step_s = (time.perf_counter() - start) / args.steps
  with tempfile.TemporaryDirectory(prefix="profile_step_") as trace_dir:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      for _ in range(args.steps):
        out = step()
      out.block_until_ready()
    trace_file = glob.glob(os.path.join(trace_dir, "**", "*perfetto_trace.json.gz"),
                           recursive=True)[0]
    ops = summarize_trace(trace_file, args.steps)
  summed = sum(v["ms_per_step"] for v in ops.values())
  result = {"model": f"resnet{args.depth}", "grad": args.grad, "batch": args.batch,
            "kernels": args.kernels, "cores": len(os.sched_getaffinity(0)),
            "step_s": step_s, "summed_ms_per_step": summed, "ops": ops}
  if args.json:
    print(json.dumps(result))
    return
  print(f"resnet{args.depth} grad={args.grad} batch {args.batch}, kernels="
        f"{args.kernels}, {result['cores']} core(s): step {step_s:.3f} s unprofiled, "
        f"op events {summed:.0f} ms per step")
  for kind, v in list(ops.items())[:args.top]:
    print(f"  {v['ms_per_step']:9.1f} ms  {100 * v['ms_per_step'] / summed:5.1f}%  "
          f"{v['count_per_step']:6.0f}x  {kind}")


if __name__ == "__main__":
  main()
