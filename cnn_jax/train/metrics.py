"""Where a run's numbers go: ``metrics.jsonl``, ``grad_norms.jsonl``, TensorBoard, a progress bar.

JSON lines come first (one object per line, appended with ``cnn_jax.atomic.append_line``;
readers drop a torn last line). TensorBoard event files (tensorboardX) sit beside them in the
workdir. The tqdm bar (ETA, loss, accuracy) goes to stderr and stays quiet when
``progress=False`` or stderr is not a terminal. Only process 0 writes.

On resume from step ``s`` the lines after ``s`` (logged after the checkpoint, before the run
died) are dropped, so the files read as if the run had never stopped.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping

from cnn_jax import atomic

METRICS_FILE = "metrics.jsonl"
GRAD_NORMS_FILE = "grad_norms.jsonl"


read_jsonl = atomic.read_jsonl  # the reader that matches append_line


def truncate_after(path: str, step: int) -> None:
  """Rewrites ``path`` atomically without the rows whose ``"step"`` is greater than ``step``."""
  if not os.path.exists(path):
    return
  rows = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
  atomic.write_text(path, "".join(_dumps(r) + "\n" for r in rows))


def _import_tensorboardx():
  """tensorboardX, or None if it is not installed (the JSON lines are the record).

  tensorboardX imports torch at import time when torch is installed, only to recognise torch
  tensors (which this project never logs); that costs seconds per process. A ``None`` entry in
  ``sys.modules`` makes that one ``import torch`` fail fast; it is removed again afterwards,
  so torch stays importable for everyone else.
  """
  blocked = "torch" not in sys.modules
  if blocked:
    sys.modules["torch"] = None
  try:
    import tensorboardX  # pylint: disable=g-import-not-at-top
    return tensorboardX
  except ImportError:
    return None
  finally:
    if blocked and sys.modules.get("torch", 0) is None:
      del sys.modules["torch"]


def _dumps(row: Mapping) -> str:
  # Non-finite numbers as JSON null: the NaN detection reports them in words anyway.
  clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
           for k, v in row.items()}
  return json.dumps(clean)


class MetricsWriter:
  """Writes rows to the JSON-lines files and TensorBoard, and drives the progress bar."""

  def __init__(self, workdir: str, *, num_steps: int, start_step: int, enabled: bool,
               progress: bool, description: str = ""):
    """Opens the writers for ``workdir``.

    Args:
      workdir: the run directory.
      num_steps: the run's total steps (the bar's length).
      start_step: the step the run (re)starts from; later rows in the files are dropped and
        TensorBoard purges its events after it.
      enabled: False on every process but 0.
      progress: show the tqdm bar (only if stderr is a terminal too).
      description: the bar's label (the run's name); the bar is cleared when the run ends,
        which its caller reports in one line.
    """
    self.enabled = enabled
    self.metrics_path = os.path.join(workdir, METRICS_FILE)
    self.grad_norms_path = os.path.join(workdir, GRAD_NORMS_FILE)
    self._tb = None
    self._bar = None
    if not enabled:
      return
    truncate_after(self.metrics_path, start_step)
    truncate_after(self.grad_norms_path, start_step)
    tensorboardx = _import_tensorboardx()
    if tensorboardx is not None:
      # TensorBoard hides the events of the run's earlier starts at steps >= purge_step; rows at start_step
      # itself were written before the checkpoint and stay.
      self._tb = tensorboardx.SummaryWriter(
          logdir=workdir, purge_step=start_step + 1 if start_step else None, flush_secs=30)
    if progress and sys.stderr.isatty():
      import tqdm  # pylint: disable=g-import-not-at-top
      self._bar = tqdm.tqdm(total=num_steps, initial=start_step, file=sys.stderr,
                            unit="step", dynamic_ncols=True, desc=description or None,
                            leave=False)

  def write(self, step: int, row: Mapping[str, float]) -> None:
    """Appends ``{"step": step, **row}`` to metrics.jsonl and each scalar to TensorBoard."""
    if not self.enabled:
      return
    atomic.append_line(self.metrics_path, _dumps({"step": int(step), **row}))
    if self._tb is not None:
      for name, value in row.items():
        if isinstance(value, (int, float)):
          self._tb.add_scalar(name, value, int(step))

  def write_grad_norms(self, step: int, norms: Mapping[str, float]) -> None:
    """Appends ``{"step": step, "grad_norms": {layer: norm}}`` (layers in call order)."""
    if not self.enabled:
      return
    atomic.append_line(self.grad_norms_path,
                       json.dumps({"step": int(step), "grad_norms": dict(norms)}))
    if self._tb is not None:
      for name, value in norms.items():
        self._tb.add_scalar(f"grad_norm/{name}", value, int(step))

  def advance(self, steps: int, loss: float, accuracy: float) -> None:
    """Moves the bar by ``steps`` and shows the latest training loss and accuracy."""
    if self._bar is not None:
      self._bar.set_postfix(loss=f"{loss:.4f}", acc=f"{accuracy:.3f}", refresh=False)
      self._bar.update(steps)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.refresh()  # the final step and loss, then the bar is cleared (leave=False)
      self._bar.close()
    if self._tb is not None:
      self._tb.close()
