"""Seeds aggregated: a sweep over ``seed`` summarised per configuration as mean ± std (n).

``launch.py --sweep=seed=0,1,2`` (alone or in a grid with other fields) trains one run per
seed into ``WORKDIR/<field=value,...,seed=K>/``, as any sweep does; this module then writes,
at the sweep's root:

* ``results.csv`` / ``results.md``: one row per configuration (the swept fields other than
  ``seed``, and for a study such as ``depth_study`` its own per-run keys, e.g. model and
  depth) with ``n`` (the seeds found), ``seeds``, and the mean and sample standard deviation
  (``ddof=1``; empty for ``n = 1``) of every numeric final metric (``<metric>_mean``,
  ``<metric>_std`` in the CSV; ``mean ± std`` in the markdown; a value every seed shares,
  such as a parameter count, is shown once);
* ``results_per_seed.csv`` / ``.md``: the rows the aggregate was computed from, one per
  seed and configuration, exactly as the runs wrote them;
* ``plots/curves.png``: training (dashed) and test (solid) error against iterations, the
  mean over seeds as a line and ± one standard deviation as a band, one panel per model.

Every seed's run stays in its own directory. A seed sweep only aggregates runs of one config:
``check_sweep`` stops one whose workdir already holds a finished run of another config.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np

from cnn_jax import atomic
from cnn_jax import plotting
from cnn_jax import rundir
from experiments import runner

SEED = "seed"
# Summary fields that describe where and how a run ran, not what it reached.
NOT_METRICS = ("resumed_from", "devices", "processes")
# Config fields that may differ between runs of one configuration (bookkeeping, or set by the
# trainer from the data).
def is_seed_sweep(runs) -> bool:
  """Whether ``seed`` is one of the swept fields (``runs``: ``runner.RunSpec``s)."""
  return any(field == SEED for field, _ in runs[0].overrides)


# ------------------------------------------------------------------------------- the check


def _differences(recorded: dict, wanted: dict) -> list[str]:
  """The fields ``rundir.differing_fields`` finds (bookkeeping aside), each with both values."""
  return [f"{k}={recorded[k]!r} there, {wanted[k]!r} here"
          for k in rundir.differing_fields(recorded, wanted)]


def check_sweep(runs, root: str) -> None:
  """Stops a seed sweep that would mix finished runs of another config into its means.

  A finished run of the sweep (``summary.json``) whose recorded ``config.json`` differs from
  the sweep's config for it in any field but ``rundir.BOOKKEEPING_FIELDS``, or a finished single run in
  ``root`` itself, would be skipped and read back as if it were a seed of this config.

  Raises:
    ValueError: one line naming the run, the first differing fields and what to do.
  """
  if not is_seed_sweep(runs):
    return
  if os.path.exists(os.path.join(root, "summary.json")):
    raise ValueError(f"--sweep=seed: {root} holds a finished single run (summary.json); a "
                     "seed sweep needs a workdir of its own: give another --workdir.")
  for run in runs:
    run_dir = run.workdir(root)
    path = os.path.join(run_dir, "config.json")
    if not (os.path.exists(os.path.join(run_dir, "summary.json")) and os.path.exists(path)):
      continue
    from cnn_jax import models  # pylint: disable=g-import-not-at-top
    with open(path, encoding="utf-8") as f:
      differences = _differences(models.resolved(json.load(f)),
                                 models.resolved(run.config.to_dict()))
    if differences:
      raise ValueError(f"--sweep=seed: {run_dir} is a finished run of another config "
                       f"({'; '.join(differences[:3])}); a seed sweep averages runs of one "
                       "config: give another --workdir, or the config of the runs there.")


# -------------------------------------------------------------------------- the aggregate


def per_seed_rows(runs, summaries: Sequence[dict], root: str) -> tuple[list[dict], list[str]]:
  """One row per seed and configuration, and the columns that name a configuration.

  A study's summary (``{"results": [row, ...], "keys": [...], "run_names": [...],
  "columns": [...]}``, as the depth study writes) gives one row per result row; any other
  summary one row of its scalars. Each row carries ``_dir``, the run directory its curves are
  read from.
  """
  keys = [field for field, _ in runs[0].overrides if field != SEED]
  rows = []
  for run, summary in zip(runs, summaries):
    base = dict(run.overrides)
    results = summary.get("results")
    if isinstance(results, list) and results and isinstance(results[0], dict):
      names = summary.get("run_names") or [""] * len(results)
      order = summary.get("columns") or list(results[0])  # summary.json sorts its keys
      for result, name in zip(results, names):
        result = {c: result[c] for c in order if c in result}
        rows.append({**base, **result, "_dir": os.path.join(run.workdir(root), name)})
      extra = list(summary.get("keys", ()))
    else:
      scalars = {k: v for k, v in summary.items()
                 if isinstance(v, (int, float, str, bool)) and k not in NOT_METRICS}
      rows.append({**base, **scalars, "_dir": run.workdir(root)})
      extra = []
    keys += [k for k in extra if k not in keys]
  return rows, keys


def _numeric(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def aggregate(rows: Sequence[dict], keys: Sequence[str]) -> list[dict]:
  """Per configuration (equal ``keys``), ``n``, ``seeds`` and mean/std of every metric.

  A metric is a column other than the keys, ``seed`` and ``_dir`` that is numeric in every
  row of the group; its ``<name>_mean`` is the mean and ``<name>_std`` the sample standard
  deviation (``ddof=1``; ``None`` for a single seed). Text columns equal in the whole group
  are kept as they are. Groups keep the order in which they first appear.
  """
  groups: dict[tuple, list[dict]] = {}
  for row in rows:
    groups.setdefault(tuple(str(row.get(k, "")) for k in keys), []).append(row)
  out = []
  for members in groups.values():
    first = members[0]
    entry = {k: first.get(k, "") for k in keys}
    entry["n"] = len(members)
    entry["seeds"] = ",".join(str(m.get(SEED, "")) for m in members)
    for column in first:
      if column in entry or column in (SEED, "_dir") or column in keys:
        continue
      values = [m.get(column) for m in members]
      if all(_numeric(v) for v in values):
        array = np.asarray(values, dtype=np.float64)
        entry[f"{column}_mean"] = float(array.mean())
        entry[f"{column}_std"] = float(array.std(ddof=1)) if len(array) > 1 else None
      elif all(v == values[0] for v in values):
        entry[column] = values[0]
    out.append(entry)
  return out


def _metric_names(row: dict) -> list[str]:
  return [c[:-len("_mean")] for c in row if c.endswith("_mean")]


def markdown(rows: Sequence[dict], keys: Sequence[str]) -> str:
  """The aggregate as a markdown table: ``mean ± std`` per metric (a shared value once)."""
  metrics = _metric_names(rows[0]) if rows else []
  cells = []
  for row in rows:
    cell = {k: row[k] for k in keys}
    cell["n"] = row["n"]
    for name in metrics:
      mean, std = row.get(f"{name}_mean"), row.get(f"{name}_std")
      if mean is None:
        cell[name] = ""
      elif std is None or std == 0:
        cell[name] = runner.format_cell(int(mean) if std == 0 and mean == int(mean) else mean)
      else:
        cell[name] = f"{mean:.4g} ± {std:.2g}"
    cells.append(cell)
  return runner.markdown_table(cells, list(keys) + ["n"] + metrics)


def collect(runs, summaries: Sequence[dict], root: str) -> list[dict]:
  """Writes the seed sweep's aggregate tables and mean curves (see the module docstring).

  Returns:
    The aggregated rows (as in ``results.csv``).
  """
  rows, keys = per_seed_rows(runs, summaries, root)
  columns = [SEED] + keys + [c for c in rows[0] if c not in keys and c not in (SEED, "_dir")]
  runner.write_results(root, rows, columns, name="results_per_seed")
  aggregated = aggregate(rows, keys)
  columns = list(keys) + ["n", "seeds"] + [c for c in aggregated[0]
                                           if c not in keys and c not in ("n", "seeds")]
  runner.write_results(root, aggregated, columns)
  # The markdown shows mean ± std in one cell per metric, not the CSV's two columns.
  atomic.write_text(os.path.join(root, "results.md"), markdown(aggregated, keys))
  plot_mean_curves(rows, keys, os.path.join(root, "plots", "curves.png"))
  return aggregated


# ------------------------------------------------------------------------------ the curves


def mean_curve(curves: Sequence[tuple[np.ndarray, np.ndarray]]):
  """Mean and sample std over curves at the steps all of them logged.

  Args:
    curves: ``(steps, values)`` pairs, one per seed.

  Returns:
    ``(steps, mean, std)``; ``std`` is zeros for a single curve.
  """
  common = sorted(set.intersection(*[set(s.tolist()) for s, _ in curves])) if curves else []
  if not common:
    return np.zeros(0), np.zeros(0), np.zeros(0)
  stacked = np.stack([np.interp(common, s, v) for s, v in curves])  # exact at shared steps
  std = stacked.std(axis=0, ddof=1) if len(curves) > 1 else np.zeros(len(common))
  return np.asarray(common, dtype=float), stacked.mean(axis=0), std


def _error_series(run_dir: str, key: str):
  from experiments import study  # pylint: disable=g-import-not-at-top
  metrics = [m for m in study.read_metrics(run_dir) if m.get(key) is not None]
  return (np.array([m["step"] for m in metrics], dtype=float),
          100.0 * (1.0 - np.array([m[key] for m in metrics], dtype=float)))


def plot_mean_curves(rows: Sequence[dict], keys: Sequence[str], path: str) -> None:
  """Training (dashed) and test (solid) error, mean over seeds with a ± std band.

  One panel per value of ``model`` when it is a key (He et al. Fig. 6: plain beside ResNet),
  else one panel; one colour per configuration. Drawn on a ``Figure`` of its own (no pyplot
  state), so it is safe on any thread.
  """
  groups: dict[tuple, list[dict]] = {}
  for row in rows:
    groups.setdefault(tuple(row.get(k, "") for k in keys), []).append(row)
  panel_key = "model" if "model" in keys else None
  panels = sorted({str(g[0].get(panel_key, "")) for g in groups.values()}) if panel_key else [""]
  fig = plotting.new_figure(5.5 * len(panels), 4.4)
  axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
  colours = [f"C{i}" for i in range(10)]
  for ax, panel in zip(axes, panels):
    members = [g for g in groups.values()
               if not panel_key or str(g[0].get(panel_key, "")) == panel]
    for i, group in enumerate(members):
      colour = colours[i % len(colours)]
      label = ", ".join(f"{k}={group[0].get(k, '')}" for k in keys if k != panel_key)
      label = f"{label or panel or 'run'} (n={len(group)})"
      for key, style in (("train_accuracy", "--"), ("eval_accuracy", "-")):
        steps, mean, std = mean_curve([_error_series(r["_dir"], key) for r in group])
        if not len(steps):
          continue
        ax.plot(steps, mean, style, color=colour, label=label if style == "-" else None)
        if len(group) > 1:
          ax.fill_between(steps, mean - std, mean + std, color=colour, alpha=0.18, lw=0)
    ax.set_title(panel or "mean over seeds")
    ax.set_xlabel("iteration (training step)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  axes[0].set_ylabel("error (%)")
  fig.suptitle("mean over seeds ± one std (band); dashed: training, solid: test")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  atomic.save_figure(fig, path, dpi=120)
