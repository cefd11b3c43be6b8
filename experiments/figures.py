"""The studies' figures, drawn from what runs wrote (metrics.jsonl, summary.json).

Every figure says what it compares in its title, labels its axes with units and has a legend;
it is saved as PNG through ``cnn_jax.atomic.save_figure``. Because they only read run files,
any figure can be redrawn from finished runs (``launch.py --experiment=plot``).

Figures are built with matplotlib's object API (``cnn_jax.plotting.new_figure``: a ``Figure``
on its own Agg canvas), never pyplot's process-global state, so studies training on threads
can draw at the same time without drawing into each other's figures.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib
import numpy as np

from cnn_jax import atomic
from cnn_jax.plotting import new_figure

TRAIN_ACCURACY = "train_accuracy"
EVAL_ACCURACY = "eval_accuracy"
GRAD_NORMS = "grad_norms"


def series(metrics: Sequence[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
  """(steps, values) of every metrics row that has ``key``."""
  rows = [m for m in metrics if key in m and m[key] is not None]
  return (np.array([m["step"] for m in rows], dtype=float),
          np.array([m[key] for m in rows], dtype=float))


def _save(fig, path):
  atomic.save_figure(fig, path, dpi=120)


def error_curves_by_family(runs, path: str) -> None:
  """He et al. Fig. 6: train (dashed) and test (solid) error against iterations per family."""
  families = sorted({r.config.model for r in runs})
  fig = new_figure(5.5 * len(families), 4.4)
  axes = fig.subplots(1, len(families), sharey=True, squeeze=False)
  colours = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
  for ax, family in zip(axes[0], families):
    members = sorted((r for r in runs if r.config.model == family), key=lambda r: r.config.depth)
    for i, r in enumerate(members):
      colour = colours[i % len(colours)]
      steps, acc = series(r.metrics, TRAIN_ACCURACY)
      if len(steps):
        ax.plot(steps, 100 * (1 - acc), "--", color=colour, alpha=0.8)
      steps, acc = series(r.metrics, EVAL_ACCURACY)
      if len(steps):
        ax.plot(steps, 100 * (1 - acc), "-", color=colour, label=f"{family}-{r.config.depth}")
    ax.set_title(family)
    ax.set_xlabel("iteration (training step)")
    ax.grid(alpha=0.3)
    ax.legend()
  axes[0][0].set_ylabel("error (%)")
  fig.suptitle("error against iterations (dashed: training, solid: test)")
  _save(fig, path)


def _weight_layers(norms: dict) -> list[float]:
  # Conv and dense kernels only: BatchNorm's scale/bias gradients are another scale and would
  # zig-zag the curve between every pair of layers.
  return [v for k, v in norms.items() if "bn" not in k.rsplit("/", 1)[-1]]


def gradient_norms_by_layer(runs, path: str) -> None:
  """Per-layer gradient L2 norm at the first and a middle logged step, log scale."""
  fig = new_figure(11, 4.2)
  axes = fig.subplots(1, 2, sharey=True)
  for r in runs:
    logged = [row for row in r.grad_norms if row.get(GRAD_NORMS)]
    if not logged:
      continue
    for ax, row in zip(axes, (logged[0], logged[len(logged) // 2])):
      norms = _weight_layers(row[GRAD_NORMS])
      ax.semilogy(np.arange(1, len(norms) + 1), norms, marker=".", label=f"{r.name}")
      ax.set_title(f"step {row['step']}")
  for ax in axes:
    ax.set_xlabel("weight layer (input → output)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
  axes[0].set_ylabel("‖∂L/∂W‖₂")
  fig.suptitle("gradient norm per weight layer, early and mid-training")
  _save(fig, path)


def lines(path: str, curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], *,
          xlabel: str, ylabel: str, title: str, logx: bool = False, logy: bool = False,
          markers: bool = True, shade_x: tuple[float, float] | None = None) -> None:
  """One line per entry of ``curves`` (label → (x, y)); ``shade_x`` greys an x range."""
  fig = new_figure(6.5, 4.2)
  ax = fig.subplots()
  if shade_x is not None:
    ax.axvspan(shade_x[0], shade_x[1], color="0.9", label="training range")
  for label, (x, y) in curves.items():
    ax.plot(x, y, marker="o" if markers else None, label=label)
  if logx:
    ax.set_xscale("log")
  if logy:
    ax.set_yscale("log")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3, which="both")
  ax.legend()
  _save(fig, path)


def bars(path: str, labels: Sequence[str], values: Sequence[float], *, ylabel: str,
         title: str) -> None:
  fig = new_figure(max(4, 1.2 * len(labels)), 4)
  ax = fig.subplots()
  ax.bar(range(len(labels)), values, color="tab:blue")
  ax.set_xticks(range(len(labels)))
  ax.set_xticklabels(labels, rotation=20, ha="right")
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3, axis="y")
  _save(fig, path)


def image_grid(path: str, images: np.ndarray, *, title: str, columns: int = 8,
               cmap: str = "gray") -> None:
  """``images``: (K, H, W) or (K, H, W, 3), each normalised to [0, 1] on its own."""
  images = np.asarray(images, dtype=float)
  lo = images.reshape(len(images), -1).min(axis=1)
  hi = images.reshape(len(images), -1).max(axis=1)
  shape = (-1,) + (1,) * (images.ndim - 1)
  images = (images - lo.reshape(shape)) / np.maximum(hi - lo, 1e-12).reshape(shape)
  rows = int(np.ceil(len(images) / columns))
  fig = new_figure(columns * 1.1, rows * 1.1 + 0.5)
  axes = fig.subplots(rows, columns, squeeze=False)
  for ax in axes.flat:
    ax.axis("off")
  for ax, image in zip(axes.flat, images):
    ax.imshow(image, cmap=cmap if image.ndim == 2 else None, interpolation="nearest")
  fig.suptitle(title)
  _save(fig, path)


def run_curves(metrics: Sequence[dict], path: str, title: str) -> None:
  """One run's loss and accuracy against steps (what ``--experiment=plot`` draws)."""
  fig = new_figure(11, 4)
  ax_loss, ax_acc = fig.subplots(1, 2)
  for key, ax in (("train_loss", ax_loss), ("eval_loss", ax_loss),
                  (TRAIN_ACCURACY, ax_acc), (EVAL_ACCURACY, ax_acc)):
    steps, values = series(metrics, key)
    if len(steps):
      ax.plot(steps, values, label=key)
  ax_loss.set_ylabel("cross-entropy loss")
  ax_acc.set_ylabel("accuracy (fraction)")
  for ax in (ax_loss, ax_acc):
    ax.set_xlabel("training step")
    ax.grid(alpha=0.3)
    ax.legend()
  fig.suptitle(title)
  _save(fig, path)
