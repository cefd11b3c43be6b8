"""Running experiments: the registry, one run, a sweep of runs, and their collected results.

``launch.py`` only parses flags and calls in here, so everything it does can be reached from
Python and tested. A run is one call of an experiment's ``run(config, workdir)``; it is finished
when ``workdir/summary.json`` exists, so a sweep that is started again skips finished runs, and
an interrupted run resumes from its own checkpoints.

Sweep layout (see shared/DESIGN.md)::

  <workdir>/results.csv  results.md  plots/
  <workdir>/<run-id>/config.json  metrics.jsonl  summary.json  checkpoints/ ...
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import hashlib
import importlib
import io
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

import ml_collections

from cnn_jax import atomic
from cnn_jax import rundir

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO_ROOT, "experiments", "configs")

# name → what it shows. Each name is a module experiments/<name>.py with run(config, workdir).
EXPERIMENTS = {
    "depth_study": "plain vs ResNet against depth (He et al. 2016 Fig. 6); the main demo",
    "train": "train one model and evaluate it",
    "summary": "per-layer table of a model: shapes, parameters, MACs, receptive field",
    "gradcheck": "hand-written backward of every op against jax.vjp and finite differences",
    "datasets": "list the datasets, their shapes and whether they are available here",
    "stride_sweep": "strides per stage, first-layer stride, strided conv vs pooling",
    "scale": "dense vs locally connected vs shared layers: parameters, FLOPs, data needed",
    "grid": "a fixed pixel permutation: the MLP does not care, the CNN does",
    "resnext": "cardinality against width at about equal parameters (Xie et al. 2017)",
    "bottleneck": "1x1 bottleneck blocks: parameters and FLOPs saved, accuracy kept",
    "one_by_one": "1x1 reduce learned vs depth average pooling vs fixed random: accuracy, params",
    "signals1d": "1-D repeating signals: dense vs locally connected vs shared against data",
    "residual_responses": "He et al. Fig. 7: BN response stds and |F(x)|/|x| per block, plain vs ResNet",
    "effective_field": "effective receptive field (Luo et al.) at init and trained, plain vs ResNet",
    "translation": "MLP vs CNN vs CNN with global pooling at unseen positions",
    "pooling": "max vs average vs weighted vs L2 pooling: accuracy, shift invariance, cost",
    "receptive_field": "analytic vs measured receptive fields, effective field growth",
    "kernels": "learned first-layer kernels and feature maps after each block",
    "plot": "redraw a run's curves from its metrics.jsonl (--workdir=RUN)",
}


class UsageError(ValueError):
  """A command-line mistake: reported in one line, exit code 2, nothing written."""


class RunFailed(RuntimeError):
  """Runs of a sweep that failed (diverged, or their process exited non-zero): one line."""


def check_experiment(name: str) -> str:
  if name not in EXPERIMENTS:
    raise UsageError(f"--experiment={name!r} is not known: choose one of "
                     f"{', '.join(sorted(EXPERIMENTS))}.")
  return name


def experiment_module(name: str):
  return importlib.import_module(f"experiments.{check_experiment(name)}")


def default_config_path(name: str) -> str:
  """``experiments/configs/<name>.py`` if the experiment has its own, else ``default.py``."""
  own = os.path.join(CONFIG_DIR, f"{name}.py")
  return own if os.path.exists(own) else os.path.join(CONFIG_DIR, "default.py")


# ------------------------------------------------------------------------------ overrides


def parse_value(field: str, text: str, current: Any) -> Any:
  """Parses ``text`` as the type of the config field's current value (for a model field left
  ``None``, the type of the models' own defaults)."""
  if current is None:
    from cnn_jax import models  # pylint: disable=g-import-not-at-top
    kind = models.field_type(field)
    current = kind() if kind is not None else None
  try:
    if isinstance(current, bool):
      lowered = text.lower()
      if lowered not in ("true", "false", "1", "0"):
        raise ValueError
      return lowered in ("true", "1")
    if isinstance(current, int):
      return int(text)
    if isinstance(current, float):
      return float(text)
  except ValueError:
    raise UsageError(f"{field}={text!r} is not allowed: {field} takes a "
                     f"{type(current).__name__}.") from None
  return text


@dataclasses.dataclass(frozen=True)
class SweepAxis:
  field: str
  values: tuple[Any, ...]
  texts: tuple[str, ...]  # as the user wrote them, for commands and run names


def parse_sweeps(specs: Sequence[str], config: ml_collections.ConfigDict) -> list[SweepAxis]:
  """Parses ``--sweep=FIELD=v1,v2`` flags against ``config``.

  Raises:
    UsageError: for a malformed spec, an unknown field, an empty value list or a value of the
      wrong type.
  """
  axes = []
  for spec in specs:
    field, sep, values = spec.partition("=")
    field = field.strip()
    if not sep or not field:
      raise UsageError(f"--sweep={spec!r} is not allowed: write --sweep=FIELD=v1,v2,...")
    if field not in config:
      raise UsageError(f"--sweep={spec!r}: {field!r} is not a config field; fields are "
                       f"{', '.join(sorted(config.keys()))}.")
    texts = tuple(v.strip() for v in values.split(",") if v.strip())
    if not texts:
      raise UsageError(f"--sweep={spec!r} has no values: write --sweep={field}=v1,v2,...")
    if field in [a.field for a in axes]:
      raise UsageError(f"--sweep names {field!r} twice: give all its values in one flag.")
    parsed = {}  # value → text: a point given twice (8,8 or 0.1,1e-1) is run once
    for text in texts:
      parsed.setdefault(parse_value(field, text, config[field]), text)
    axes.append(SweepAxis(field, tuple(parsed), tuple(parsed.values())))
  return axes


@dataclasses.dataclass(frozen=True)
class RunSpec:
  run_id: str
  config: ml_collections.ConfigDict
  overrides: tuple[tuple[str, str], ...]  # the sweep's (field, text) pairs for this run

  def workdir(self, root: str) -> str:
    return os.path.join(root, self.run_id) if self.run_id else root


def path_part(text: str) -> str:
  """``text`` as one safe file-name part: unchanged if it only has letters, digits and
  ``._+-`` (not leading dots); else those kept, the rest ``_``, plus a short hash of ``text``
  so that two values never share a folder (``folder:../x`` → ``folder_.._x-1a2b3c``)."""
  clean = re.sub(r"[^A-Za-z0-9._+-]", "_", text)[:64]
  if clean == text and not text.startswith("."):
    return text
  return f"{clean.lstrip('.')}-{hashlib.sha256(text.encode()).hexdigest()[:6]}"


def expand(config: ml_collections.ConfigDict, axes: Sequence[SweepAxis]) -> list[RunSpec]:
  """The grid of runs: one RunSpec per combination of sweep values (one run if no sweep)."""
  if not axes:
    return [RunSpec("", config, ())]
  runs = []
  for combo in itertools.product(*[list(zip(a.values, a.texts)) for a in axes]):
    run_config = ml_collections.ConfigDict(config.to_dict())
    overrides = []
    for axis, (value, text) in zip(axes, combo):
      run_config[axis.field] = value
      overrides.append((axis.field, text))
    run_id = ",".join(f"{f}={path_part(t)}" for f, t in overrides)
    runs.append(RunSpec(run_id, run_config, tuple(overrides)))
  return runs


# ---------------------------------------------------------------------------------- running


def check_runs(name: str, runs: Sequence[RunSpec]) -> None:
  """Runs the experiment's own ``check(config)`` (if it has one) on every run, first.

  Raises:
    ValueError: the first run whose config cannot work, before anything runs or is written.
  """
  check = getattr(experiment_module(name), "check", None)
  if check is None:
    return
  for run in runs:
    try:
      check(run.config)
    except ValueError as e:
      where = f" (run {run.run_id})" if run.run_id else ""
      raise ValueError(f"{e}{where}") from None



def is_finished(workdir: str) -> bool:
  return os.path.exists(os.path.join(workdir, "summary.json"))


def read_summary(workdir: str) -> dict:
  with open(os.path.join(workdir, "summary.json"), encoding="utf-8") as f:
    return json.load(f)


RUN_RECORD = "run.json"  # {"experiment", "code_version"} of the run in a folder


def check_identity(name: str, config: ml_collections.ConfigDict, workdir: str) -> None:
  """Raises ``rundir.RunDirError`` if ``workdir`` holds a run that this one must not reuse.

  That is a run of another experiment, or (unless the experiment ``RECOMPUTES``, being cheap
  and derived: summary, datasets) one with another config (see ``cnn_jax.rundir``); a study's
  ``GRID_FIELDS`` may differ, as each of its runs is checked on its own. Tools on
  an existing run (``WRITES_SUMMARY = False``: plot) are not checked.
  """
  module = experiment_module(name)
  if not getattr(module, "WRITES_SUMMARY", True):
    return
  try:
    with open(os.path.join(workdir, RUN_RECORD), encoding="utf-8") as f:
      other = json.load(f).get("experiment", name)
  except (OSError, ValueError, AttributeError):
    other = name
  if other != name:
    raise rundir.RunDirError(f"{workdir} holds a run of --experiment={other}, not {name}; "
                             "--overwrite replaces it, or give another --workdir.")
  if not getattr(module, "RECOMPUTES", False):
    from cnn_jax import models  # pylint: disable=g-import-not-at-top
    rundir.check_same_config(workdir, config.to_dict(), resolve=models.resolved,
                             ignore=getattr(module, "GRID_FIELDS", ()))


def run_one(name: str, config: ml_collections.ConfigDict, workdir: str, *,
            overwrite: bool = False) -> dict:
  """Runs experiment ``name`` once into ``workdir``; a finished run is read back, not redone.

  ``workdir`` is locked while the run writes (``rundir.lock``). A run there of another
  experiment or config stops it (``check_identity``); with ``overwrite`` the run is trained
  afresh in a hidden sibling folder and swapped in only once finished. The experiment's own
  ``run`` writes its files; if it did not write ``summary.json``, the returned summary is
  written there (atomically), which marks the run finished.
  """
  module = experiment_module(name)
  writes_summary = getattr(module, "WRITES_SUMMARY", True)
  recomputes = getattr(module, "RECOMPUTES", False)
  if not writes_summary:  # a tool on an existing run (plot): it may be training still
    return module.run(config, workdir) or {}
  with rundir.lock(workdir):
    if overwrite and not recomputes and set(os.listdir(workdir)) - {rundir.LOCK_FILE}:
      return _run_replacing(name, config, workdir)
    if not overwrite:
      check_identity(name, config, workdir)
    again = overwrite or recomputes or _grid_changed(module, config, workdir)
    if is_finished(workdir) and not again:
      print(f"{workdir} is finished (summary.json); --overwrite runs it again.")
      return read_summary(workdir)
    atomic.write_json(os.path.join(workdir, RUN_RECORD),
                      {"experiment": name, "code_version": rundir.code_version()})
    atomic.write_json(os.path.join(workdir, rundir.CONFIG_FILE), config.to_dict())
    summary = module.run(config, workdir)
    if summary is None:
      summary = {}
    if not is_finished(workdir) or again:
      atomic.write_json(os.path.join(workdir, "summary.json"), summary)
  return summary


def _grid_changed(module, config: ml_collections.ConfigDict, workdir: str) -> bool:
  """Whether a study's ``GRID_FIELDS`` differ from those recorded in ``workdir``: it has grown
  (or shrunk) and runs again, training only its new runs."""
  saved = rundir.read_config(workdir) or {}
  current = config.to_dict()
  return any(f in saved and saved[f] != current.get(f)
             for f in getattr(module, "GRID_FIELDS", ()))


OVERWRITE_PREFIX, OVERWRITE_SUFFIX = ".", ".overwrite"  # .<name>.overwrite: a run replacing <name>


def run_name(workdir: str) -> str:
  """The name a run is shown by: its folder's, also while it trains in the folder that will
  replace that one (``_run_replacing``)."""
  name = os.path.basename(os.path.abspath(workdir))
  if name.startswith(OVERWRITE_PREFIX) and name.endswith(OVERWRITE_SUFFIX):
    return name[len(OVERWRITE_PREFIX):-len(OVERWRITE_SUFFIX)] or name
  return name


def _run_replacing(name: str, config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs afresh in ``.<workdir>.overwrite`` beside ``workdir`` (held locked by the caller),
  then swaps the two folders: the old results stay whole until the new run has finished.
  Started again after a crash, a new run there of the same config resumes."""
  workdir = os.path.abspath(workdir)
  fresh = os.path.join(os.path.dirname(workdir),
                       f"{OVERWRITE_PREFIX}{os.path.basename(workdir)}{OVERWRITE_SUFFIX}")
  try:
    check_identity(name, config, fresh)
  except rundir.RunDirError:
    shutil.rmtree(fresh)  # a leftover of another config: nothing to keep
  summary = run_one(name, config, fresh)
  _exchange(fresh, workdir)
  shutil.rmtree(fresh)  # now the old run
  return summary


def _exchange(a: str, b: str) -> None:
  """Swaps folders ``a`` and ``b`` (one atomic ``renameat2(RENAME_EXCHANGE)`` on Linux)."""
  import ctypes  # pylint: disable=g-import-not-at-top
  try:
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, rename_exchange = -100, 2
    if libc.renameat2(at_fdcwd, a.encode(), at_fdcwd, b.encode(), rename_exchange) == 0:
      return
  except (OSError, AttributeError):
    pass
  aside = b + ".old"  # no atomic exchange here: b is missing for two renames' time
  os.rename(b, aside)
  os.rename(a, b)
  os.rename(aside, a)


def print_line(text: str) -> None:
  """Prints ``text`` and its newline in one write (``print`` writes them apart, so lines from
  runs on threads could share a line)."""
  sys.stdout.write(text + "\n")
  sys.stdout.flush()


def map_in_threads(fn: Callable[[Any], Any], items: Sequence[Any], parallel: int) -> list[Any]:
  """``[fn(item) for item in items]``, ``parallel`` at a time on threads of this process.

  For training runs: they share the process's XLA CPU thread pool (no oversubscription), and
  one run's single-threaded phases (compiling, Python dispatch, evaluation, checkpoints)
  overlap another's multi-threaded steps. 8 short ResNet runs on 2 cores: 1.06-1.07x faster
  than one after another through launch.py, 1.19x from one script; the same bits
  (docs/benchmarks.md). An exception is raised once the other
  runs are done; Ctrl-C exits at once (code 130): every run resumes from its checkpoints.
  """
  if parallel <= 1 or len(items) <= 1:
    return [fn(item) for item in items]
  pool = concurrent.futures.ThreadPoolExecutor(max_workers=parallel)
  try:
    futures = [pool.submit(fn, item) for item in items]
    concurrent.futures.wait(futures)
  except KeyboardInterrupt:
    pool.shutdown(wait=False, cancel_futures=True)
    print("interrupted: started again, the runs resume from their newest checkpoints",
          file=sys.stderr, flush=True)
    os._exit(130)  # pylint: disable=protected-access  (the run threads cannot be stopped)
  pool.shutdown()
  return [future.result() for future in futures]


def command_for(name: str, config_arg: str, user_overrides: Sequence[str], run: RunSpec,
                root: str) -> list[str]:
  """The command line that runs one run of a sweep by itself (for --dry_run and --parallel)."""
  command = [sys.executable, os.path.join(REPO_ROOT, "launch.py"), f"--experiment={name}",
             f"--config={config_arg}"]
  command += list(user_overrides)
  command += [f"--config.{field}={text}" for field, text in run.overrides]
  command.append(f"--workdir={run.workdir(root)}")
  return command


def parallel_with_threads(name: str, parallel_with: str) -> bool:
  """Whether ``--parallel_with`` (auto, threads, processes) runs experiment ``name``'s sweep
  on threads: only experiments whose module sets ``RUNS_IN_THREADS = True`` may (the others
  are not known to be thread-safe: they may hold module-level state).

  Raises:
    UsageError: threads asked for an experiment that does not allow them.
  """
  allowed = getattr(experiment_module(name), "RUNS_IN_THREADS", False)
  if parallel_with == "threads" and not allowed:
    raise UsageError(f"--parallel_with=threads is not allowed for --experiment={name} (it "
                     "is not known to be thread-safe): use processes or auto.")
  return allowed and parallel_with != "processes"


def run_sweep(name: str, runs: Sequence[RunSpec], root: str, *, parallel: int = 1,
              commands: Sequence[Sequence[str]] | None = None, threads: bool = False,
              pin_cores: bool = False, overwrite: bool = False,
              progress: Callable[[str], None] | None = None) -> list[dict]:
  """Runs every run not finished yet, ``parallel`` at a time, and returns all summaries.

  With ``parallel > 1`` the runs go to ``parallel`` threads of this process (``threads``, see
  ``map_in_threads``) or each to a separate process (its command from ``commands``); with
  ``pin_cores`` on Linux each of the ``parallel`` process slots is pinned to its own share of
  the cores (``sched_setaffinity``; XLA sizes its thread pool from the affinity mask).
  """
  progress = progress or print_line
  if not overwrite:
    for r in runs:  # every run's folder checked before the first one starts
      check_identity(name, r.config, r.workdir(root))
  recomputes = getattr(experiment_module(name), "RECOMPUTES", False)
  pending = [i for i, r in enumerate(runs)
             if overwrite or recomputes or not is_finished(r.workdir(root))]
  for i, r in enumerate(runs):
    if i not in pending:
      progress(f"[skip] {r.run_id or name}: already finished")
  failures = []

  def run_in_this_process(i: int) -> None:
    progress(f"[run ] {runs[i].run_id or name}")
    try:
      run_one(name, runs[i].config, runs[i].workdir(root), overwrite=overwrite)
    except FloatingPointError as e:  # diverged: the other runs go on
      progress(f"[fail] {runs[i].run_id}: {e}")
      failures.append(runs[i].run_id)

  if parallel == 1 or len(pending) <= 1 or threads:
    map_in_threads(run_in_this_process, pending, parallel)
    if failures:
      raise RunFailed(f"{len(failures)} run(s) failed: {', '.join(failures)}.")
  else:
    slots = core_slots(parallel) if pin_cores else [set() for _ in range(parallel)]
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(len(slots[0]) or max(1, (os.cpu_count() or 1) // parallel))
    queue = list(pending)
    active: list[tuple[int, int, subprocess.Popen, Any]] = []  # (run, slot, process, log)
    while queue or active:
      free = [k for k in range(parallel) if k not in {slot for _, slot, _, _ in active}]
      while queue and free:
        i, slot = queue.pop(0), free.pop(0)
        progress(f"[run ] {runs[i].run_id} (process)")
        log = open(os.path.join(_ensure_dir(runs[i].workdir(root)), "launch.log"), "w")
        pin = (lambda cores=slots[slot]: os.sched_setaffinity(0, cores)) if slots[slot] else None
        command = list(commands[i]) + (["--overwrite"] if overwrite else [])
        active.append((i, slot, subprocess.Popen(command, env=env, stdout=log,
                                                 stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                                                 preexec_fn=pin), log))
      done = _wait_any([process for _, _, process, _ in active])
      i, _, process, log = active.pop(done)
      log.close()
      if process.returncode != 0:
        failures.append(runs[i].run_id)
    if failures:
      raise RunFailed(f"{len(failures)} run(s) failed: {', '.join(failures)}; see their "
                      "launch.log.")
  return [read_summary(r.workdir(root)) for r in runs]


def core_slots(parallel: int) -> list[set[int]]:
  """``parallel`` disjoint sets of this process's cores (round robin), or empty sets where the
  platform cannot pin (no ``sched_setaffinity``) or there are fewer cores than slots."""
  if not hasattr(os, "sched_getaffinity"):
    return [set() for _ in range(parallel)]
  cores = sorted(os.sched_getaffinity(0))
  if len(cores) < parallel:
    return [set() for _ in range(parallel)]
  return [set(cores[k::parallel]) for k in range(parallel)]


def _wait_any(processes: Sequence[subprocess.Popen]) -> int:
  """Index of the first of ``processes`` to finish (polling; they are minutes long)."""
  while True:
    for k, process in enumerate(processes):
      if process.poll() is not None:
        return k
    time.sleep(0.2)


def _ensure_dir(path: str) -> str:
  os.makedirs(path, exist_ok=True)
  return path


# -------------------------------------------------------------------------------- collecting


def _scalar_items(summary: dict) -> dict:
  return {k: v for k, v in summary.items()
          if isinstance(v, (int, float, str, bool)) and not isinstance(v, dict)}


def collect(runs: Sequence[RunSpec], summaries: Sequence[dict], root: str) -> list[dict]:
  """Writes ``results.csv`` and ``results.md`` for a sweep: one row per run.

  Columns are the swept fields, then every scalar the runs' summaries share, taken from the
  summaries exactly as the runs wrote them. (A sweep over ``seed`` is collected by
  ``experiments.seeds.collect`` instead: mean ± std per configuration.)
  """
  fields = [f for f, _ in runs[0].overrides]
  scalars = [_scalar_items(s) for s in summaries]
  shared = [k for k in scalars[0] if all(k in s for s in scalars)]
  rows = []
  for run, values in zip(runs, scalars):
    row = {f: t for f, t in run.overrides}
    row.update({k: values[k] for k in shared if k not in row})
    rows.append(row)
  columns = fields + [k for k in shared if k not in fields]
  write_results(root, rows, columns)
  return rows


def write_results(root: str, rows: Sequence[dict], columns: Sequence[str],
                  name: str = "results") -> str:
  """Writes ``<name>.csv`` and ``<name>.md`` (atomically); returns the markdown table."""
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore")
  writer.writeheader()
  writer.writerows(rows)
  atomic.write_text(os.path.join(root, f"{name}.csv"), buffer.getvalue())
  table = markdown_table(rows, columns)
  atomic.write_text(os.path.join(root, f"{name}.md"), table)
  return table


def format_cell(value: Any) -> str:
  if isinstance(value, float):
    return f"{value:.4g}"
  return str(value)


def markdown_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  for row in rows:
    lines.append("| " + " | ".join(format_cell(row.get(c, "")) for c in columns) + " |")
  return "\n".join(lines) + "\n"
