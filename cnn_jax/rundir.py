"""A run directory's identity and lock: never a stale result, never two writers.

Identity: a run directory holds its resolved config (``config.json``); a rerun compares its own
config with it, field by field, except the fields that only steer bookkeeping
(``BOOKKEEPING_FIELDS``). A difference stops the rerun with one line naming the fields and the
two ways on (``--overwrite``, or another ``--workdir``), instead of returning numbers made with
another config.

Lock: ``lock(workdir)`` holds an OS file lock (``fcntl.flock``) on ``workdir/.lock`` for as
long as a run writes there; the kernel releases it when the process dies, so a killed run
never leaves a stale lock. A second process finds it held and stops with one line naming the
holder (pid and host, written into the lock file). Within one process the same thread may take
it again (the sweep runner locks a run, then the trainer inside it does).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import os
import socket
import subprocess
import threading
from typing import Any, Callable, Collection, Iterator, Mapping

# Fields that steer how a run is carried out or shown, not what it computes; they may differ
# between a run and its rerun. num_classes is set by the trainer from the data (which the
# compared ``dataset`` field names).
BOOKKEEPING_FIELDS = frozenset({
    "progress", "resume", "overwrite", "parallel_runs", "num_classes",
    "coordinator_address", "num_processes", "process_id",
})

CONFIG_FILE = "config.json"
LOCK_FILE = ".lock"


class RunDirError(ValueError):
  """A run directory that cannot be used as asked: one line, exit code 2 on the command line."""


@functools.lru_cache(maxsize=None)
def code_version() -> str:
  """The git commit of the checkout the code runs from (``+dirty`` with uncommitted changes),
  or "unknown" outside a git checkout."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    commit = subprocess.run(["git", "-C", root, "describe", "--always", "--dirty"],
                            capture_output=True, text=True, timeout=10, check=True).stdout
  except (OSError, subprocess.SubprocessError):
    return "unknown"
  return commit.strip() or "unknown"


def differing_fields(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
  """The fields (not bookkeeping) that both configs hold with different values, sorted.

  A field only one side holds was added or removed by another code version (recorded as
  ``code_version``) and is not counted.
  """
  saved = json.loads(json.dumps(dict(saved), default=_jsonable))
  current = json.loads(json.dumps(dict(current), default=_jsonable))  # tuples → lists
  return sorted(f for f in set(saved) & set(current)
                if f not in BOOKKEEPING_FIELDS and saved[f] != current[f])


def read_config(workdir: str) -> dict | None:
  """The config recorded in ``workdir``, or None if there is none (or it cannot be read)."""
  try:
    with open(os.path.join(workdir, CONFIG_FILE), encoding="utf-8") as f:
      saved = json.load(f)
  except (OSError, ValueError):
    return None
  return saved if isinstance(saved, dict) else None


def check_same_config(workdir: str, config: Mapping[str, Any], *, what: str = "run",
                      resolve: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
                      ignore: Collection[str] = ()) -> None:
  """Raises ``RunDirError`` if ``workdir`` records a config that differs from ``config``.

  ``resolve`` (e.g. ``cnn_jax.models.resolved``) is applied to both configs first, so that a
  field left to the model's own default compares equal to the value recorded for it.
  ``ignore``: fields that may differ (a study's grid, whose runs are each checked on their own).

  Raises:
    RunDirError: one line naming the differing fields (both values) and the ways on.
  """
  saved = read_config(workdir)
  if saved is None:
    return
  if resolve is not None:
    saved, config = resolve(saved), resolve(config)
  fields = [f for f in differing_fields(saved, config) if f not in ignore]
  if not fields:
    return
  shown = ", ".join(f"{f}={saved[f]!r} there, {config[f]!r} now" for f in fields[:4])
  more = f" (and {len(fields) - 4} more)" if len(fields) > 4 else ""
  raise RunDirError(f"{workdir} holds a {what} with another config: {shown}{more}; "
                    "--overwrite replaces it, or give another --workdir.")


def check_writable(workdir: str) -> None:
  """Raises ``RunDirError`` unless ``workdir`` is (or can be created as) a writable folder."""
  path = os.path.abspath(workdir)
  while not os.path.exists(path):
    parent = os.path.dirname(path)
    if parent == path:
      break
    path = parent
  if not os.path.isdir(path):
    raise RunDirError(f"workdir={workdir!r}: {path} is a file, not a folder.")
  if not os.access(path, os.W_OK | os.X_OK):
    raise RunDirError(f"workdir={workdir!r}: {path} is not writable.")


_held: dict[str, list] = {}  # real path → [thread id, depth, fd]
_held_guard = threading.Lock()


@contextlib.contextmanager
def lock(workdir: str) -> Iterator[None]:
  """Holds the lock of run directory ``workdir`` (created) while the block runs.

  Raises:
    RunDirError: another process (or another thread of this one) holds it, or ``workdir``
      cannot be created.
  """
  check_writable(workdir)
  created = not os.path.exists(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise RunDirError(f"workdir={workdir!r} cannot be created: {e.strerror}.") from None
  key = os.path.realpath(workdir)
  with _held_guard:
    entry = _held.get(key)
    if entry is not None and entry[0] != threading.get_ident():
      raise RunDirError(f"{workdir} is in use by another run of this process (pid "
                        f"{os.getpid()}); wait for it to finish.")
    if entry is not None:
      entry[1] += 1
    else:
      _held[key] = [threading.get_ident(), 1, _acquire(workdir)]
  try:
    yield
  finally:
    with _held_guard:
      entry = _held[key]
      entry[1] -= 1
      if not entry[1]:
        del _held[key]
        _release(entry[2], os.path.join(workdir, LOCK_FILE))
    if created:
      with contextlib.suppress(OSError):
        os.rmdir(workdir)  # only if nothing was written there


def _acquire(workdir: str) -> int:
  path = os.path.join(workdir, LOCK_FILE)
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      os.close(fd)
      if e.errno not in (errno.EAGAIN, errno.EACCES):
        raise
      raise RunDirError(f"{workdir} is in use by {_holder(path)}; wait for it to finish, "
                        "or give another --workdir.") from None
    # The holder before us may have removed the file after we opened it: lock the live one.
    try:
      if os.fstat(fd).st_ino == os.stat(path).st_ino:
        break
    except FileNotFoundError:
      pass
    os.close(fd)
  os.ftruncate(fd, 0)
  os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
  return fd


def _release(fd: int, path: str) -> None:
  # Removed while still held, so no other process can lock this file after we let go.
  with contextlib.suppress(OSError):
    if os.fstat(fd).st_ino == os.stat(path).st_ino:
      os.unlink(path)
  os.close(fd)


def _holder(path: str) -> str:
  try:
    with open(path, encoding="utf-8") as f:
      return f.read().strip() or "another process"
  except OSError:
    return "another process"


def _jsonable(value):
  if hasattr(value, "tolist"):
    return value.tolist()
  return str(value)
