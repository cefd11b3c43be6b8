"""What every study shares: named training runs that skip when finished, and reading them back.

A study is a list of ``(name, config)`` pairs. ``train_runs`` checks all of them first (by
building each model, which validates every model field) so a bad value fails before the first
run starts, then trains each into ``workdir/<name>/`` — or, if that run already has its
``summary.json``, reads it back instead. Tables and plots are made from what the runs wrote
(``summary.json``, ``metrics.jsonl``), never recomputed differently.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

import ml_collections

from cnn_jax import rundir
from experiments import runner


@dataclasses.dataclass
class Run:
  name: str
  config: ml_collections.ConfigDict
  workdir: str
  summary: dict
  metrics: list[dict]
  grad_norms: list[dict]  # rows of grad_norms.jsonl: {"step", "grad_norms": {layer: norm}}

  @property
  def images_per_sec(self) -> float | str:
    """The last logged training throughput (images/s), or "" if none was logged."""
    rates = [m["images_per_sec"] for m in self.metrics if "images_per_sec" in m]
    return rates[-1] if rates else ""

  @property
  def train_error(self) -> float:
    return 1.0 - float(self.summary["train_accuracy"])

  @property
  def test_error(self) -> float:
    return 1.0 - float(self.summary["test_accuracy"])

  @property
  def validation_error(self) -> float | str:
    """Error on the held-out validation split (``validation_size``), or "" without one."""
    accuracy = self.summary.get("validation_accuracy")
    return "" if accuracy is None else 1.0 - float(accuracy)


def parse_list(text: Any, field: str, cast: Callable = str) -> list:
  """Splits a comma-separated config field; a one-line ValueError when it is empty or bad."""
  items = [t.strip() for t in str(text).split(",") if t.strip()]
  if not items:
    raise ValueError(f"{field}={text!r} is empty: give a comma-separated list.")
  try:
    return [cast(t) for t in items]
  except ValueError:
    raise ValueError(f"{field}={text!r} is not allowed: give a comma-separated list of "
                     f"{cast.__name__}s.") from None


def variant(config: ml_collections.ConfigDict, **overrides) -> ml_collections.ConfigDict:
  """A copy of ``config`` with ``overrides`` (the original is never changed)."""
  copy = ml_collections.ConfigDict(config.to_dict())
  for field, value in overrides.items():
    if field not in copy:
      raise ValueError(f"{field} is not a config field.")
    copy[field] = value
  return copy


def read_metrics(workdir: str, filename: str = "metrics.jsonl") -> list[dict]:
  """A run's JSON-lines file as dicts (a torn last line from a crash is skipped)."""
  from cnn_jax.train import metrics  # pylint: disable=g-import-not-at-top
  return metrics.read_jsonl(os.path.join(workdir, filename))


def check_runs(named_configs: Sequence[tuple[str, ml_collections.ConfigDict]],
               dataset=None) -> None:
  """Checks every run completely (fields, data, model shapes) before the first one starts."""
  from cnn_jax import train  # pylint: disable=g-import-not-at-top
  for _, config in named_configs:
    train.preflight(config, dataset=dataset)


def train_runs(named_configs: Sequence[tuple[str, ml_collections.ConfigDict]], workdir: str,
               *, dataset=None, log: Callable[[str], None] = runner.print_line) -> list[Run]:
  """Trains every ``(name, config)`` into ``workdir/name`` unless already finished.

  ``parallel_runs`` (a config field, default 2) runs train at once, on threads of this process
  (``runner.map_in_threads``); one at a time for multi-process runs.
  """
  from cnn_jax import train  # pylint: disable=g-import-not-at-top
  check_runs(named_configs, dataset)

  configs = [config for _, config in named_configs]
  single_process = all(c.get("num_processes", 1) == 1 for c in configs)
  parallel = max(c.get("parallel_runs", 1) for c in configs) if single_process else 1
  total = len(named_configs)
  done = []  # names, in the order the runs end (list.append is atomic across threads)
  log(f"{total} run(s) into {workdir}, {min(parallel, total)} at a time; one line as each ends")

  def train_one(named: tuple[str, ml_collections.ConfigDict]) -> Run:
    name, config = named
    run_dir = os.path.join(workdir, name)
    finished = runner.is_finished(run_dir)
    if finished:
      from cnn_jax import models  # pylint: disable=g-import-not-at-top
      rundir.check_same_config(run_dir, config.to_dict(), resolve=models.resolved)
      summary = runner.read_summary(run_dir)
    else:
      summary = train.train_and_evaluate(config, run_dir, dataset=dataset)
    done.append(name)
    log(f"[{len(done)}/{total}] {run_line(name, summary, finished)}")
    return Run(name, config, run_dir, summary, read_metrics(run_dir),
               read_metrics(run_dir, "grad_norms.jsonl"))

  return runner.map_in_threads(train_one, list(named_configs), parallel)


def run_line(name: str, summary: dict, skipped: bool = False) -> str:
  """One line for a finished run: its final errors and time (or that it was done before)."""
  errors = (f"train error {100 * (1 - summary['train_accuracy']):.1f}%, test error "
            f"{100 * (1 - summary['test_accuracy']):.1f}%")
  when = "finished before, skipped" if skipped else f"{summary['wall_time_s']:.0f} s"
  return f"{name}: {errors} ({when})"


def parse_variants(text: str, config: ml_collections.ConfigDict) -> list[tuple[str, dict]]:
  """Parses ``"field=v,field=v;field=v"`` into (name, overrides) pairs, typed by the config.

  Each ``;``-separated item is one variant of the study; its name (and run folder) is the
  item itself, e.g. ``model=resnet,depth=20``, as a sweep names its runs.
  """
  variants = []
  for item in [v.strip() for v in str(text).split(";") if v.strip()]:
    overrides, parts = {}, []
    for assignment in item.split(","):
      field, sep, value = assignment.partition("=")
      field = field.strip()
      if not sep or field not in config:
        raise ValueError(f"variants item {item!r}: {field!r} is not a config field "
                         "(write field=value,field=value;...).")
      overrides[field] = runner.parse_value(field, value.strip(), config[field])
      parts.append(f"{field}={runner.path_part(value.strip())}")
    name = ",".join(parts)  # named like a sweep's run
    if name not in [n for n, _ in variants]:  # a variant given twice is run once
      variants.append((name, overrides))
  if not variants:
    raise ValueError(f"variants={text!r} is empty: write field=value,...;field=value,...")
  return variants


_DATA_CACHE: dict = {}


def load_data(config: ml_collections.ConfigDict):
  """``cnn_jax.data.load(config)``, loaded once per process for the fields that matter."""
  from cnn_jax import data  # pylint: disable=g-import-not-at-top
  key = (config.dataset, config.image_size, config.train_size, config.seed, config.data_dir,
         config.get("validation_size", 0), config.get("data_seed", 0))
  if key not in _DATA_CACHE:
    _DATA_CACHE[key] = data.load(config)
  return _DATA_CACHE[key]


def model_cost(config: ml_collections.ConfigDict, input_shape: Sequence[int]) -> dict:
  """Parameters, multiply-adds, FLOPs (= 2 × MACs) and receptive field of ``config``'s model.

  ``input_shape`` is one example's shape, e.g. ``(H, W, C)``; nothing is computed but shapes.
  """
  from cnn_jax import models  # pylint: disable=g-import-not-at-top
  from cnn_jax.analysis import counting  # pylint: disable=g-import-not-at-top
  model = models.build(config)
  table = counting.summarize(model, (1,) + tuple(input_shape))
  cost = {"params": int(table["params"]), "macs": int(table["macs"]),
          "flops": int(table["flops"])}
  if table.get("receptive_field"):
    cost["receptive_field"] = "x".join(str(d) for d in table["receptive_field"])
  return cost


def compare_variants(config: ml_collections.ConfigDict, workdir: str, *, title: str,
                     extra_columns: Sequence[str] = ()) -> dict:
  """Trains one run per ``config.variants`` item and tabulates accuracy beside cost.

  The table has the variant, parameters, MACs, FLOPs, receptive field, images/s (from the
  run's summary) and final train/test error (and validation error, with a validation split);
  the plot shows test error per variant.
  """
  from cnn_jax import models  # pylint: disable=g-import-not-at-top
  from experiments import figures  # pylint: disable=g-import-not-at-top
  named = [(name, variant(config, **overrides))
           for name, overrides in parse_variants(config.variants, config)]
  dataset = load_data(config)
  shape = dataset.x_train.shape[1:]
  runs = train_runs(named, workdir, dataset=dataset)
  rows = []
  for r in runs:
    row = {"variant": r.name}
    row.update({c: models.with_defaults(r.config)[c] for c in extra_columns})
    row.update(model_cost(variant(r.config, num_classes=dataset.num_classes), shape))
    row.update({
        "images_per_s": r.images_per_sec,
        "train_error": r.train_error,
        **({"validation_error": r.validation_error} if r.validation_error != "" else {}),
        "test_error": r.test_error,
    })
    rows.append(row)
  table = runner.write_results(workdir, rows, list(rows[0]))
  figures.bars(os.path.join(workdir, "plots", "test_error.png"), [r["variant"] for r in rows],
               [100 * r["test_error"] for r in rows], ylabel="test error (%)", title=title)
  print(table)
  return {"runs": len(rows), "results": rows}
