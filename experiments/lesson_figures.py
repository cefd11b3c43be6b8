"""Figures of the lesson's studies (one_by_one, signals1d, residual_responses,
effective_field), drawn with matplotlib's object API (``Figure`` + ``FigureCanvasAgg``, no
pyplot state) and saved atomically as PNG.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np
from cnn_jax import atomic
from cnn_jax import plotting


def new_figure(columns: int = 1, rows: int = 1, *, panel=(5.0, 3.8)):
  """A ``Figure`` on its own Agg canvas (``cnn_jax.plotting.new_figure``) and its axes, as a
  2-D array ``(rows, columns)``."""
  fig = plotting.new_figure(panel[0] * columns, panel[1] * rows)
  axes = np.asarray(fig.subplots(rows, columns, squeeze=False))
  return fig, axes


def save(fig, path: str) -> None:
  atomic.save_figure(fig, path, dpi=110)


def line_panels(path: str, panels: Mapping[str, Mapping[str, tuple[Sequence, Sequence]]], *,
                xlabel: str, ylabel: str, logx: bool = False, logy: bool = False,
                title: Optional[str] = None) -> None:
  """One panel per key of ``panels``, each ``{label: (xs, ys)}`` drawn as marked lines."""
  fig, axes = new_figure(len(panels))
  for ax, (name, curves) in zip(axes[0], panels.items()):
    for label, (xs, ys) in curves.items():
      ax.plot(xs, ys, marker="o", label=label)
    ax.set(title=name, xlabel=xlabel, ylabel=ylabel)
    if logx:
      ax.set_xscale("log")
    if logy:
      ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  if title:
    fig.suptitle(title)
  save(fig, path)


def heatmaps(path: str, maps: Mapping[str, np.ndarray], *, columns: int = 4,
             boxes: Optional[Mapping[str, tuple]] = None, title: Optional[str] = None) -> None:
  """2-D maps side by side (shared colour scale per map), an optional box ``((r0, r1), (c0,
  c1))`` drawn on each (inclusive pixel bounds, e.g. the theoretical field)."""
  names = list(maps)
  rows = (len(names) + columns - 1) // columns
  fig, axes = new_figure(min(columns, len(names)), rows, panel=(3.2, 3.0))
  for ax in axes.ravel()[len(names):]:
    ax.set_axis_off()
  for ax, name in zip(axes.ravel(), names):
    image = ax.imshow(np.asarray(maps[name]), cmap="viridis")
    fig.colorbar(image, ax=ax, fraction=0.046)
    if boxes and name in boxes:
      (r0, r1), (c0, c1) = boxes[name]
      ax.plot([c0 - .5, c1 + .5, c1 + .5, c0 - .5, c0 - .5],
              [r0 - .5, r0 - .5, r1 + .5, r1 + .5, r0 - .5], color="w", lw=1)
    ax.set_title(name, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
  if title:
    fig.suptitle(title)
  save(fig, path)
