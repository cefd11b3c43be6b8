"""Runs one experiment, or a sweep of it, and collects the results.

  python launch.py --experiment=NAME [--config=FILE[:ARG]] [--config.FIELD=VALUE ...]
                   [--sweep=FIELD=v1,v2,...]... [--workdir=DIR] [--parallel=N] [--dry_run]

Examples:
  python launch.py --experiment=train --config.model=resnet --config.depth=20 --workdir=runs/x
  python launch.py --experiment=train --sweep=model=plain,resnet --sweep=depth=20,32,44,56
  python launch.py --experiment=depth_study --config=experiments/configs/depth_study.py:demo

Without --config the experiment's own config (experiments/configs/NAME.py) or default.py is
used; every field can be overridden with --config.FIELD=VALUE. Several --sweep flags form a
grid; each run gets WORKDIR/<field=value,...>/ and the sweep gets WORKDIR/results.csv and
results.md. Finished runs (summary.json present) are skipped, so a sweep started again only
runs what is left. --dry_run prints one command per run instead of running.

Quiet by default: a study prints one line per run and its results table; logs show warnings
only. --verbosity=0 (absl's INFO level; or -v 0) brings back the log: every evaluation, the
devices, each model's parameter count. Each run's per-layer table is in its model_summary.txt
(and `--experiment=summary` prints it).

Command-line mistakes print one line and exit with code 2 before anything is written; so does
a workdir holding a run of another config (the line names the fields; --overwrite replaces it)
or one in use by another process. A run that diverges (NaN/inf) or fails exits 1 with one
line; Ctrl-C exits 130, and the same command resumes.
"""

from __future__ import annotations

import os
import shlex
import sys

import logging as python_logging

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from cnn_jax import rundir
from experiments import runner
from experiments import seeds

FLAGS = flags.FLAGS
HELP_ARGS = ("--help", "-h", "-?", "--helpshort", "--helpfull")


def _experiment_from_argv(argv):
  for i, arg in enumerate(argv):
    if arg.startswith("--experiment="):
      return arg.split("=", 1)[1]
    if arg == "--experiment" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def define_flags(argv):
  name = _experiment_from_argv(argv)
  default_config = runner.default_config_path(name or "default")
  flags.DEFINE_string("experiment", None,
                      "Which study to run: " + "; ".join(
                          f"{k} ({v})" for k, v in runner.EXPERIMENTS.items()))
  config_flags.DEFINE_config_file(
      "config", default_config,
      "Config file (get_config() → ConfigDict), optionally FILE:ARG; fields are overridden "
      "with --config.FIELD=VALUE. Default: experiments/configs/<experiment>.py or default.py.")
  flags.DEFINE_string("workdir", None, "Output folder of the run (or of the sweep). "
                      "Default: runs/<experiment>.")
  flags.DEFINE_multi_string("sweep", [], "FIELD=v1,v2,...; several flags form a grid.")
  flags.DEFINE_integer("parallel", 1, "Runs of a sweep at once (threads or processes: --parallel_with).")
  flags.DEFINE_enum("parallel_with", "auto", ["auto", "threads", "processes"],
                    "With --parallel=N: run the N runs on threads of this process (they share "
                    "XLA's thread pool; 8 short runs on 2 cores: 1.06x faster than one after "
                    "another, processes 1.00x, docs/benchmarks.md) or each in its own "
                    "process. auto: threads for experiments that allow them (train), "
                    "processes for the others.")
  flags.DEFINE_bool("pin_cores", False,
                    "With --parallel=N processes: pin each to its own share of the cores "
                    "(Linux). Off by default: unpinned, a run left alone at the end of a sweep "
                    "uses every core (docs/benchmarks.md).")
  flags.DEFINE_bool("dry_run", False, "Print one command per run instead of running.")
  flags.DEFINE_bool("overwrite", False,
                    "Train the run (or every run of the sweep) afresh, even where a finished run "
                    "or one of another config is there; the old results are replaced only "
                    "when the new run has finished.")
  flags.DEFINE_bool("progress", True, "Progress bars (also off when not on a terminal).")


def fail(message: str, code: int = 2) -> None:
  print(f"launch.py: error: {message.splitlines()[0] if message else 'bad usage'}",
        file=sys.stderr)
  sys.exit(code)


def _config_file_error(text: str) -> str:
  """config_flags' multi-line error (a traceback, a list of paths tried) as one line: where,
  and its last line, which says what went wrong."""
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  head = lines[0].split("Error whilst parsing config file")[0].rstrip(": ")
  return f"{head}: {lines[-1]}" if len(lines) > 1 else text


def _config_unloadable(error: OSError) -> str:
  """config_flags' "failed loading" error (the paths it tried, one a line) as one line."""
  return f"--config: {str(error).strip().splitlines()[-1].strip()}"


def parse_flags(argv):
  if any(a in HELP_ARGS for a in argv[1:]):
    print(__doc__)
    print("Experiments:")
    for name, text in runner.EXPERIMENTS.items():
      print(f"  {name:14s} {text}")
    print()
    print(FLAGS.module_help(sys.modules[__name__].__name__ if __name__ != "__main__"
                            else sys.argv[0]))
    sys.exit(0)
  try:
    return FLAGS(argv)
  except flags.Error as e:
    fail(_config_file_error(str(e)))
  except OSError as e:  # the --config file did not load, seen through an override
    fail(_config_unloadable(e))
  except (ValueError, KeyError, AttributeError, TypeError) as e:
    fail(f"bad --config override: {e}")


def _user_config_overrides(argv):
  return [a for a in argv[1:] if a.startswith("--config.")]


class _QuietCheckpointLogs(python_logging.Filter):
  """Drops orbax's INFO chatter (several lines per checkpoint); its warnings still show."""

  def filter(self, record):
    return record.levelno >= python_logging.WARNING or "/orbax/" not in record.pathname


def quiet_unless_asked() -> None:
  """Warnings only, unless the user set absl's ``--verbosity`` (``-v``) themselves."""
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)


def main(argv):
  logging.get_absl_handler().addFilter(_QuietCheckpointLogs())
  quiet_unless_asked()
  if len(argv) > 1:
    fail(f"unexpected arguments {' '.join(argv[1:])!r}: every option is a --flag=value.")
  try:
    name = runner.check_experiment(FLAGS.experiment or "")
    if FLAGS.parallel < 1:
      raise runner.UsageError(f"--parallel={FLAGS.parallel} is not allowed: give an int >= 1.")
    try:
      config = FLAGS.config
      "progress" in config  # pylint: disable=pointless-statement  (raises if it failed to load)
    except OSError as e:
      raise runner.UsageError(_config_unloadable(e)) from None
    if "progress" in config:
      config.progress = bool(config.progress) and FLAGS.progress
    axes = runner.parse_sweeps(FLAGS.sweep, config)
    runs = runner.expand(config, axes)
    threads = runner.parallel_with_threads(name, FLAGS.parallel_with)
  except runner.UsageError as e:
    fail(str(e))
  workdir = FLAGS.workdir or os.path.join("runs", name)
  config_arg = config_flags.get_config_filename(FLAGS["config"])
  commands = [runner.command_for(name, config_arg, _user_config_overrides(sys.argv), r, workdir)
              for r in runs]
  try:
    seeds.check_sweep(runs, workdir)  # reads files only: before any JAX start-up
    runner.check_runs(name, runs)
    if FLAGS.dry_run:
      for command in commands:
        print(shlex.join(command))
      return 0
    rundir.check_writable(workdir)
    if not axes:
      summary = runner.run_one(name, runs[0].config, workdir, overwrite=FLAGS.overwrite)
      return 0 if summary.get("ok", True) else 1
    summaries = runner.run_sweep(name, runs, workdir, parallel=FLAGS.parallel,
                                 commands=commands, threads=threads, pin_cores=FLAGS.pin_cores,
                                 overwrite=FLAGS.overwrite)
  except ValueError as e:  # a config or workdir that cannot work: one line, like any misuse
    fail(str(e))
  except (FloatingPointError, runner.RunFailed) as e:  # a run diverged or failed
    fail(str(e), code=1)
  except KeyboardInterrupt:
    fail(f"interrupted: run the same command again to resume {workdir} from its newest "
         "checkpoints.", code=130)
  collect = seeds.collect if seeds.is_seed_sweep(runs) else runner.collect
  rows = collect(runs, summaries, workdir)
  print(runner.markdown_table(rows, list(rows[0].keys())))
  print(f"results: {os.path.join(workdir, 'results.md')}")
  return 0 if all(s.get("ok", True) for s in summaries) else 1


def entry(experiment: str | None = None) -> None:
  """The command-line entry; ``python -m experiments.NAME`` calls it with its own name."""
  if experiment is not None and not _experiment_from_argv(sys.argv):
    sys.argv.insert(1, f"--experiment={experiment}")
  try:
    define_flags(sys.argv)  # config_flags reads --config.FIELD overrides while defining
  except (KeyError, AttributeError) as e:
    fail(f"--config.{str(e).strip(chr(34) + chr(39))} is not a field of the config; "
         "see the config file for the fields.")
  except (ValueError, TypeError) as e:
    fail(f"bad --config override: {e}")
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  entry()
