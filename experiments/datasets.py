"""Lists every dataset with its shapes, sizes, classes and whether it can be loaded here.

  python launch.py --experiment=datasets --workdir=runs/datasets [--config.data_dir=DIR]

Offline datasets are generated (a few seconds) to report their exact shapes at the config's
``image_size``; TFDS datasets report their published sizes and whether they are prepared under
``config.data_dir`` (nothing is downloaded). A ``folder:``/``npz:`` value of
``config.dataset`` is checked and listed too. Writes ``datasets.md`` and ``datasets.json``.
"""

from __future__ import annotations

import os

from cnn_jax import atomic
from cnn_jax import data

# Cheap and derived from the config alone: the runner recomputes it every time (a rerun with
# another config replaces it) instead of reading back a finished one.
RECOMPUTES = True

COLUMNS = ("name", "kind", "available", "train", "test", "shape", "classes", "note")


def table(rows: list[dict]) -> str:
  """Markdown table of ``describe`` rows."""
  lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
  for row in rows:
    cells = []
    for column in COLUMNS:
      value = row[column]
      if column == "shape":
        value = "x".join(str(v) for v in value) if value else "-"
      elif column == "available":
        value = "yes" if value else "no"
      cells.append(str(value).replace("|", "/"))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def run(config, workdir: str) -> dict:
  """Describes every dataset; writes ``datasets.md``/``datasets.json`` into ``workdir``.

  Returns:
    ``{"datasets": [row, ...], "available": [names]}``; each row has the keys of ``COLUMNS``
    (``shape`` as a list).
  """
  names = list(data.OFFLINE_DATASETS) + list(data.TFDS_DATASETS)
  user = str(config.get("dataset", "")) if hasattr(config, "get") else ""
  if user.startswith(data.USER_PREFIXES):
    names.append(user)
  rows = []
  for name in names:
    row = data.describe(name, config)
    row["shape"] = list(row["shape"])
    rows.append(row)
  text = table(rows)
  print(text, end="", flush=True)
  os.makedirs(workdir, exist_ok=True)
  atomic.write_text(os.path.join(workdir, "datasets.md"), text)
  summary = {"datasets": rows, "available": [r["name"] for r in rows if r["available"]]}
  atomic.write_json(os.path.join(workdir, "datasets.json"), summary)
  return summary
