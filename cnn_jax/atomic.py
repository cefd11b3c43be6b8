"""Atomic file writes: write to a temporary name in the same folder, then rename.

A reader (or a run resumed after a crash) therefore sees either the old file or the whole new
one, never half of one. Every result, metrics table and plot of the project goes through here.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any


def write_bytes(path: str, data: bytes) -> None:
  """Writes ``data`` to ``path`` atomically (creating parent folders)."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
  try:
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 → what open() would have given
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_text(path: str, text: str) -> None:
  """Writes ``text`` (UTF-8) to ``path`` atomically."""
  write_bytes(path, text.encode("utf-8"))


def write_json(path: str, obj: Any) -> None:
  """Writes ``obj`` as indented JSON to ``path`` atomically."""
  write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def append_line(path: str, line: str) -> None:
  """Appends one line (for JSON-lines logs); a torn last line is dropped by readers."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "a", encoding="utf-8") as f:
    f.write(line.rstrip("\n") + "\n")
    f.flush()


def read_jsonl(path: str) -> list[dict]:
  """The objects of a JSON-lines file written by ``append_line``; [] if it does not exist.

  A line that does not parse (torn by a crash mid-write) is skipped.
  """
  if not os.path.exists(path):
    return []
  rows = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      if not line.strip():
        continue
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return rows


def save_figure(fig, path: str, **kwargs) -> None:
  """Saves a matplotlib figure to ``path`` atomically (format from the extension)."""
  import io  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  fmt = os.path.splitext(path)[1].lstrip(".") or "png"
  fig.savefig(buffer, format=fmt, bbox_inches="tight", **kwargs)
  write_bytes(path, buffer.getvalue())


def _umask() -> int:
  """The process's umask, read without changing it (``os.umask`` sets it, for all threads)."""
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except (OSError, ValueError, IndexError):
    pass
  mask = os.umask(0o022)  # no /proc: the brief set-and-restore is the only way
  os.umask(mask)
  return mask


def _jsonable(value):
  # NumPy / JAX scalars and arrays, tuples in configs.
  if hasattr(value, "tolist"):
    return value.tolist()
  raise TypeError(f"{type(value).__name__} is not JSON serialisable")
