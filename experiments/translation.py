"""Translation: which nets recognise an object at positions they never saw it at?

Every model of ``config.variants`` is trained on ``translated`` digits whose left edge lies in
the left half of the offset range (``translated_split=left_right``) and tested on the test
digits placed at each horizontal offset in turn. A dense net has separate weights per position
and fails on unseen positions; a CNN's shared kernels are translation equivariant, and a global
pooling head turns that into invariance, so it carries over to unseen positions (up to the
aliasing of its strides). ``plots/accuracy_vs_shift.png`` shades the training offsets.

  python launch.py --experiment=translation
"""

from __future__ import annotations

import os

import jax
import numpy as np

from cnn_jax import data as data_lib
from cnn_jax.train import restore
from experiments import figures
from experiments import runner
from experiments import study


def accuracy_by_shift(model, variables, dataset, image_size: int) -> list[dict]:
  """Accuracy and mean probability of the true class with the digits at every offset."""
  geometry = data_lib.translated_geometry(image_size)
  apply = jax.jit(lambda x: jax.nn.softmax(model.apply(variables, x, train=False), axis=-1))
  rows = []
  for shift in range(geometry["max_shift"] + 1):
    images, labels = data_lib.translated_at_shift(image_size, shift)
    x = data_lib.prepare_batch(images, dataset.mean, dataset.std, augment=False)
    probs = np.asarray(apply(x))
    rows.append({"shift": shift,
                 "accuracy": float(np.mean(probs.argmax(-1) == labels)),
                 "p_true": float(np.mean(probs[np.arange(len(labels)), labels]))})
  return rows


def run(config, workdir):
  if config.dataset != "translated":
    raise ValueError(f"dataset={config.dataset!r}: the translation study needs "
                     "dataset='translated'.")
  named = [(name, study.variant(config, **overrides))
           for name, overrides in study.parse_variants(config.variants, config)]
  dataset = study.load_data(config)
  runs = study.train_runs(named, workdir, dataset=dataset)
  geometry = data_lib.translated_geometry(config.image_size)
  seen = geometry["max_shift"] // 2  # left_right: training offsets are 0..max_shift // 2
  curves, rows = {}, []
  for r in runs:
    model, variables = restore.load_trained(r.config, r.workdir, dataset=dataset)
    by_shift = accuracy_by_shift(model, variables, dataset, config.image_size)
    curves[r.name] = ([b["shift"] for b in by_shift], [b["accuracy"] for b in by_shift])
    rows.append({
        "variant": r.name,
        "params": r.summary.get("num_params", ""),
        "accuracy_seen_shifts": float(np.mean([b["accuracy"] for b in by_shift
                                               if b["shift"] <= seen])),
        "accuracy_unseen_shifts": float(np.mean([b["accuracy"] for b in by_shift
                                                 if b["shift"] > seen])),
        "test_accuracy": r.summary["test_accuracy"],
    })
  table = runner.write_results(workdir, rows, list(rows[0]))
  figures.lines(os.path.join(workdir, "plots", "accuracy_vs_shift.png"), curves,
                xlabel=f"horizontal offset of the digit (px); trained on 0..{seen}",
                ylabel="test accuracy (fraction)",
                title="accuracy at seen and unseen positions", shade_x=(0, seen))
  print(table)
  return {"results": rows, "curves": {k: v[1] for k, v in curves.items()}}


if __name__ == "__main__":
  import launch  # pylint: disable=g-import-not-at-top
  launch.entry("translation")
