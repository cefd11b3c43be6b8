"""Grid: convolutions assume grid-like data.

The same fixed random permutation of pixel positions is applied to every training and test
image. The MLP is indifferent to pixel order (a permutation of its inputs is a permutation of
its first weight matrix), so its accuracy stays; the CNN's locality and weight sharing no longer
match the data, so its accuracy drops. Table ``results.md``, plot ``plots/accuracy.png``.

  python launch.py --experiment=grid
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from experiments import figures
from experiments import runner
from experiments import study


def permute_pixels(images: np.ndarray, permutation: np.ndarray) -> np.ndarray:
  """Moves pixel ``permutation[i]`` to position ``i`` in every image ``(N, H, W, C)``."""
  n, h, w, c = images.shape
  return images.reshape(n, h * w, c)[:, permutation].reshape(n, h, w, c)


def permuted(dataset, seed: int):
  h, w = dataset.x_train.shape[1:3]
  permutation = np.random.default_rng(seed).permutation(h * w)
  return dataclasses.replace(dataset, x_train=permute_pixels(dataset.x_train, permutation),
                             x_test=permute_pixels(dataset.x_test, permutation))


def run(config, workdir):
  model_names = study.parse_list(config.models, "models")
  dataset = study.load_data(config)
  shuffled = permuted(dataset, config.permutation_seed)
  rows = []
  for pixels, data in (("original", dataset), ("permuted", shuffled)):
    named = [(f"{m}-{pixels}", study.variant(config, model=m)) for m in model_names]
    for r in study.train_runs(named, workdir, dataset=data):
      rows.append({"model": r.config.model, "pixels": pixels,
                   "test_accuracy": r.summary["test_accuracy"],
                   "train_accuracy": r.summary["train_accuracy"]})
  table = runner.write_results(workdir, rows, list(rows[0]))
  figures.bars(os.path.join(workdir, "plots", "accuracy.png"),
               [f"{r['model']}\n{r['pixels']}" for r in rows],
               [r["test_accuracy"] for r in rows], ylabel="test accuracy (fraction)",
               title="fixed pixel permutation: MLP unchanged, CNN drops")
  print(table)
  return {"results": rows}


if __name__ == "__main__":
  import launch  # pylint: disable=g-import-not-at-top
  launch.entry("grid")
