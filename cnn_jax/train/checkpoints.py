"""Checkpoints with orbax: the train state plus a small JSON record, the last K kept.

Each checkpoint ``checkpoints/<step>/`` holds two items: ``state`` (the TrainState pytree,
saved by ``StandardSave`` on every process) and ``meta`` (JSON: the model fingerprint, so that
resuming a different model fails before training, and the loop's running metric sums, so
that a resumed run logs the same numbers as an uninterrupted one). Orbax writes a temporary
folder and renames it when complete, so a run killed mid-save leaves the previous checkpoint
intact; such leftovers are cleaned up when the manager opens the folder again.

Saving is synchronous: the models here are small, and a synchronous save cannot be lost to
a kill after the loop has moved on.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp
from absl import logging


class Checkpoints:
  """A thin wrapper over ``ocp.CheckpointManager`` for one run's ``checkpoints/`` folder."""

  def __init__(self, directory: str, keep: int, *, read_only: bool = False):
    """Opens (creating) ``directory``; keeps the newest ``keep`` checkpoints.

    ``read_only``: for reading only; it neither creates the folder nor starts the background
    clean-up of unfinished saves, which would race a caller that then removes the folder.
    """
    if int(keep) != keep or keep < 1:
      raise ValueError(f"keep_checkpoints={keep!r}: must be an integer >= 1")
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=int(keep), create=not read_only, enable_async_checkpointing=False,
        cleanup_tmp_directories=not read_only, read_only=read_only)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "meta"))

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state, meta: dict[str, Any]) -> None:
    """Saves ``state`` and ``meta`` as checkpoint ``step`` (all processes must call it)."""
    self._manager.save(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
    self._manager.wait_until_finished()

  def read_meta(self, step: int) -> dict[str, Any]:
    """The JSON record of checkpoint ``step`` (reads no arrays)."""
    return self._manager.restore(int(step), args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))["meta"]

  def restore(self, step: int, like) -> Any:
    """The state of checkpoint ``step``, with the shapes, dtypes and shardings of ``like``.

    Args:
      step: a step in ``all_steps()``.
      like: a TrainState of arrays, or of ``jax.ShapeDtypeStruct`` with shardings, giving
        structure, dtypes and placement.
    """
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like)
    return self._manager.restore(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))["state"]

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def restore_newest(directory: str, keep: int, like,
                   check_meta: Callable[[int, dict], None] | None = None, *,
                   set_aside: bool = False):
  """The newest checkpoint in ``directory`` that can be read, falling back to older ones.

  A checkpoint whose state or record cannot be read (a truncated or corrupt file) is logged
  in one line naming its step and folder, and the next older one is tried.

  Args:
    directory: a ``checkpoints/`` folder (need not exist).
    keep: as for ``Checkpoints``.
    like: as for ``Checkpoints.restore``.
    check_meta: called with ``(step, meta)`` before the state is read; what it raises
      (another model, say) is passed on, not taken for a read error.
    set_aside: move the unreadable checkpoints newer than the one restored to
      ``<directory>.unreadable/<step>`` (a run that goes on must save those steps again).
  Returns:
    ``(step, state, meta)``, or ``(None, None, None)`` where there is no checkpoint.
  Raises:
    ValueError: there are checkpoints but none can be read (one line).
  """
  if not os.path.isdir(directory):
    return None, None, None
  ckpts = Checkpoints(directory, keep, read_only=True)
  unreadable, found = [], (None, None, None)
  try:
    steps = sorted(ckpts.all_steps(), reverse=True)
    for step in steps:
      try:
        meta = ckpts.read_meta(step)
        missing = {"fingerprint", "window", "wall_time_s"} - set(meta)
        if missing:
          raise ValueError(f"its record lacks {sorted(missing)}")
      except Exception as e:  # pylint: disable=broad-except  (any read error: try the older)
        unreadable.append(_unreadable(ckpts.directory, step, e))
        continue
      if check_meta is not None:
        check_meta(step, meta)
      try:
        found = (step, ckpts.restore(step, like), meta)
        break
      except Exception as e:  # pylint: disable=broad-except
        unreadable.append(_unreadable(ckpts.directory, step, e))
  finally:
    ckpts.close()
  if steps and found[0] is None:
    raise ValueError(f"no checkpoint in {directory} can be read (steps "
                     f"{', '.join(map(str, steps))}); --overwrite starts the run afresh.")
  if set_aside:
    for step in unreadable:
      aside = os.path.join(directory + ".unreadable", f"{step}-{time.time_ns()}")
      os.makedirs(os.path.dirname(aside), exist_ok=True)
      os.replace(os.path.join(directory, str(step)), aside)
  return found


def _unreadable(directory: str, step: int, error: Exception) -> int:
  """Logs that checkpoint ``step`` cannot be read, in one line; returns ``step``."""
  text = str(error).strip().splitlines()
  logging.warning("checkpoint at step %d (%s) cannot be read, trying an older one: %s: %s",
                  step, os.path.join(directory, str(step)), type(error).__name__,
                  text[0][:160] if text else "")  # TensorStore's first line runs on
  return step


def check_same_model(saved: dict[str, Any], current: dict[str, Any], directory: str) -> None:
  """Raises ValueError if checkpoint fingerprint ``saved`` differs from ``current``.

  Fingerprints are ``{"model_config": {field: value}, "param_shapes": {name: shape}}``; the
  message names the first differing config field, or else the first differing parameter.
  """
  saved_cfg, cur_cfg = saved.get("model_config", {}), current["model_config"]
  for field in sorted(set(saved_cfg) | set(cur_cfg)):
    if saved_cfg.get(field) != cur_cfg.get(field):
      raise ValueError(
          f"checkpoint in {directory} is of a different model: {field}="
          f"{saved_cfg.get(field)!r} there, {cur_cfg.get(field)!r} now (set overwrite=True or "
          f"resume=False to start afresh, or use another workdir)")
  saved_shapes, cur_shapes = saved.get("param_shapes", {}), current["param_shapes"]
  for name in sorted(set(saved_shapes) | set(cur_shapes)):
    if saved_shapes.get(name) != cur_shapes.get(name):
      raise ValueError(
          f"checkpoint in {directory} is of a different model: parameter {name} has shape "
          f"{saved_shapes.get(name)} there, {cur_shapes.get(name)} now")
