"""The repository names no path of one machine: a clone elsewhere must read and run the same."""

import os
import re
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Home, scratch and workspace folders of particular machines (not "~/...", "$B/...", or a
# relative "tmp/"): spelled in pieces so that this file does not match itself.
MACHINE_PATH = re.compile(r"(?<![\w.~$/-])/(" + "|".join(
    ["wo" + "rk", "ro" + "ot", "ho" + "me", "Us" + "ers", "tm" + "p"]) + r")/\w")
# .gitignore's "/tmp/" is a pattern relative to the repository root, not a machine path.
EXEMPT = {".gitignore"}


def _tracked_files() -> list[str]:
  try:
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    return [f for f in out.splitlines() if f not in EXEMPT]
  except (OSError, subprocess.CalledProcessError):  # not a git checkout: every file
    return [os.path.relpath(os.path.join(d, f), REPO) for d, _, fs in os.walk(REPO)
            if "/." not in d and ".venv" not in d for f in fs if f not in EXEMPT]


def machine_paths(files) -> list[str]:
  """``path:line: text`` for every line that names an absolute path of one machine."""
  hits = []
  for name in files:
    try:
      with open(os.path.join(REPO, name), encoding="utf-8") as f:
        lines = f.read().splitlines()
    except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
      continue  # binary files (figures) and files deleted but not yet committed
    hits += [f"{name}:{i + 1}: {line.strip()}" for i, line in enumerate(lines)
             if MACHINE_PATH.search(line)]
  return hits


def test_no_tracked_file_names_a_machine_path():
  assert machine_paths(_tracked_files()) == []


def test_the_check_finds_a_machine_path(tmp_path):
  home = "/" + "ho" + "me"
  (tmp_path / "note.md").write_text(f"run {home}/ann/cnn_jax/launch.py\nrun ~/x and $B/y\n")
  hits = machine_paths([str(tmp_path / "note.md")])
  assert len(hits) == 1 and ":1:" in hits[0]
