"""Plots for analyses and experiments: receptive-field heatmaps, curves, gradient flow.

Every function takes plain data (arrays, dicts of curves, rows from ``cnn_jax.analysis``, or a
run's ``metrics.jsonl``), draws one figure and writes it through ``cnn_jax.atomic.save_figure``,
so any plot can be redrawn from a finished run without training again. Figures are built with
``matplotlib.figure.Figure`` and rendered by the Agg canvas: no pyplot, no display, no global
figure state to leak between calls.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from cnn_jax import atomic


def new_figure(width: float = 5.0, height: float = 4.0):
  """A ``matplotlib.figure.Figure`` of ``width`` × ``height`` inches on its own Agg canvas: it
  shares no state with any other figure, so figures may be drawn on several threads at once."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(width, height))
  FigureCanvasAgg(fig)  # attaches the Agg canvas: renders without any display
  return fig


def _as_image(field_map) -> np.ndarray:
  field_map = np.asarray(field_map, dtype=np.float64)
  if field_map.ndim == 1:
    return field_map[None, :]
  if field_map.ndim == 3:  # the middle slice of a 3-D map
    return field_map[field_map.shape[0] // 2]
  if field_map.ndim != 2:
    raise ValueError(f"field_map has shape {field_map.shape}: give a 1-D, 2-D or 3-D map.")
  return field_map


def _draw_heatmap(ax, field_map, *, title="", box=None, log=False):
  from matplotlib.patches import Rectangle  # pylint: disable=g-import-not-at-top
  image = _as_image(field_map)
  if log:
    positive = image[image > 0]
    floor = positive.min() if positive.size else 1.0
    image = np.log10(np.maximum(image, floor))
  shown = ax.imshow(image, cmap="viridis", interpolation="nearest", origin="upper")
  if box is not None:
    # box: inclusive (first, last) per dim (e.g. FieldRecord.bounds), rows then columns.
    rows, cols = (box[-2], box[-1]) if len(box) >= 2 else ((0, 0), box[0])
    ax.add_patch(Rectangle((cols[0] - 0.5, rows[0] - 0.5), cols[1] - cols[0] + 1,
                           rows[1] - rows[0] + 1, fill=False, edgecolor="white", linewidth=1.2,
                           linestyle="--"))
  ax.set_title(title, fontsize=9)
  ax.set_xticks([])
  ax.set_yticks([])
  return shown


def heatmap(field_map, path: str, *, title: str = "", box=None, log: bool = False) -> None:
  """One receptive-field map as a heatmap (1-D maps as one row, 3-D as the middle slice).

  Args:
    field_map: ``(*spatial,)`` map, e.g. ``receptive_field.gradient_map`` or an ERF.
    path: output file (format from its extension).
    title: figure title.
    box: optional inclusive ``((first, last), ...)`` per dim (``FieldRecord.bounds``): the
      analytic field, drawn as a dashed rectangle.
    log: colour by log10 (effective fields span orders of magnitude).
  """
  fig = new_figure()
  ax = fig.add_subplot(1, 1, 1)
  shown = _draw_heatmap(ax, field_map, title=title, box=box, log=log)
  fig.colorbar(shown, ax=ax, label="log10" if log else None)
  atomic.save_figure(fig, path, dpi=120)


def heatmap_grid(maps: Mapping[str, Any], path: str, *, boxes: Optional[Mapping[str, Any]] = None,
                 log: bool = False, columns: int = 4) -> None:
  """Several maps side by side (e.g. ERF at each depth), with optional analytic boxes."""
  if not maps:
    raise ValueError("maps is empty: give at least one {title: map}.")
  columns = min(columns, len(maps))
  rows = math.ceil(len(maps) / columns)
  fig = new_figure(3.0 * columns, 3.0 * rows)
  for i, (title, field_map) in enumerate(maps.items()):
    ax = fig.add_subplot(rows, columns, i + 1)
    _draw_heatmap(ax, field_map, title=title, box=(boxes or {}).get(title), log=log)
  atomic.save_figure(fig, path, dpi=120)


def line_plot(curves: Mapping[str, tuple], path: str, *, xlabel: str = "", ylabel: str = "",
              title: str = "", logx: bool = False, logy: bool = False,
              markers: bool = True) -> None:
  """One line per named curve.

  Args:
    curves: ``{label: (x, y)}`` or ``{label: y}`` (then x = 0, 1, 2, ...).
    path: output file.
    xlabel, ylabel, title: labels.
    logx, logy: logarithmic axes.
    markers: draw a dot at each point.
  """
  if not curves:
    raise ValueError("curves is empty: give at least one {label: (x, y)}.")
  fig = new_figure(6.0, 4.0)
  ax = fig.add_subplot(1, 1, 1)
  all_x = set()
  for label, curve in curves.items():
    if isinstance(curve, tuple) and len(curve) == 2:
      x, y = curve
    else:
      y = curve
      x = np.arange(len(y))
    all_x.update(float(v) for v in x)
    ax.plot(np.asarray(x, float), np.asarray(y, float), marker="o" if markers else None,
            markersize=3, label=str(label))
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top
  if logx:
    ax.set_xscale("log")
    # Plain numbers ("16") read better than "1.6 x 10^1" on the few decades plotted here.
    if len(all_x) <= 12:  # few points (depths): label each one
      ax.xaxis.set_major_locator(ticker.FixedLocator(sorted(all_x)))
    ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
  if logy:
    ax.set_yscale("log")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=8)
  atomic.save_figure(fig, path, dpi=120)


def plot_gradient_norms(per_model: Mapping[str, Sequence[Mapping[str, Any]]], path: str, *,
                        key: str = "grad_norm", title: str = "Gradient norm per layer") -> None:
  """Gradient norm (or any row key) against layer index, one line per model, log scale.

  Args:
    per_model: ``{model_name: rows}`` with rows from ``gradient_flow.gradient_flow``.
  """
  curves = {name: ([r["index"] for r in rows], [r[key] for r in rows])
            for name, rows in per_model.items()}
  line_plot(curves, path, xlabel="layer index (input → output)", ylabel=key, title=title,
            logy=True)


def plot_erf_growth(rows: Sequence[Mapping[str, Any]], path: str) -> None:
  """Analytic vs effective field size against depth (log-log: slope 1 vs slope 1/2).

  Args:
    rows: from ``receptive_field.erf_growth``.
  """
  depths = [r["depth"] for r in rows]
  curves = {"analytic size": (depths, [r["analytic_size"] for r in rows]),
            "ERF size (95% mass)": (depths, [r["erf_size"] for r in rows]),
            "ERF width (std) x 2": (depths, [2 * r["erf_std"] for r in rows])}
  line_plot(curves, path, xlabel="depth (layers)", ylabel="pixels", logx=True, logy=True,
            title="Receptive field growth: linear (analytic) vs sqrt (effective)")


def plot_equivariance(rows: Sequence[Mapping[str, Any]], path: str, *,
                      title: str = "Equivariance error per layer") -> None:
  """Equivariance error against input shift, one line per layer.

  Args:
    rows: from ``equivariance.layerwise_equivariance``.
  """
  curves: dict[str, tuple[list, list]] = {}
  for row in rows:
    offset = row["offset"]
    shift = offset if isinstance(offset, int) else max(abs(v) for v in offset)
    xs, ys = curves.setdefault(f"{row['index']}: {row['layer']}", ([], []))
    xs.append(shift)
    # log axes cannot show exact zeros; 1e-9 is far below float32 noise (~1e-7).
    ys.append(max(row["error"], 1e-9))
  line_plot(curves, path, xlabel="input shift (pixels)", ylabel="relative error", logy=True,
            title=title)


read_jsonl = atomic.read_jsonl  # one reader for the JSON-lines files runs write


def plot_metric(runs: Mapping[str, str], key: str, path: str, *, x_key: str = "step",
                logy: bool = False, title: str = "") -> None:
  """One metric from several runs' ``metrics.jsonl``, one line per run.

  Args:
    runs: ``{label: run_dir or metrics.jsonl path}``.
    key: the metric to draw (lines without it are skipped).
    path: output file.
    x_key: the x axis field of each line.
  """
  curves = {}
  for label, run in runs.items():
    metrics = os.path.join(run, "metrics.jsonl") if os.path.isdir(run) else run
    records = [r for r in read_jsonl(metrics) if key in r and x_key in r]
    curves[label] = ([r[x_key] for r in records], [r[key] for r in records])
  line_plot(curves, path, xlabel=x_key, ylabel=key, logy=logy, title=title or key,
            markers=False)
