"""Pooling: max vs average vs weighted average vs L2, for accuracy, small-shift invariance, cost.

The same simple CNN (conv → ReLU → pool, twice) is trained with each pooling of
``config.variants``; then its test digits are shifted by ``config.shifts`` pixels (zeros come in
at the border) and we measure how often the predicted class stays the same and how much the
probability of the true class moves. Pooling buys a little invariance to small translations;
the table puts it beside accuracy, multiply-adds and training speed.

  python launch.py --experiment=pooling
"""

from __future__ import annotations

import os

import jax

from cnn_jax import data as data_lib
from cnn_jax.analysis import equivariance
from cnn_jax.train import restore
from experiments import figures
from experiments import runner
from experiments import study


def run(config, workdir):
  shifts = study.parse_list(config.shifts, "shifts", int)
  named = [(name, study.variant(config, **overrides))
           for name, overrides in study.parse_variants(config.variants, config)]
  dataset = study.load_data(config)
  runs = study.train_runs(named, workdir, dataset=dataset)
  rows, curves = [], {}
  for r in runs:
    model, variables = restore.load_trained(r.config, r.workdir, dataset=dataset)
    mean, std = dataset.mean, dataset.std

    def apply_fn(pixels, model=model, variables=variables, mean=mean, std=std):
      # Shifts act on raw pixels (zero = black background), then the run's normalisation.
      return model.apply(variables, data_lib.pipeline.normalise(pixels, mean, std),
                         train=False)

    pixels = jax.numpy.asarray(dataset.x_test, jax.numpy.float32)
    invariance = equivariance.prediction_invariance(jax.jit(apply_fn), pixels, dataset.y_test,
                                                    offsets=shifts, mode="zero")
    curves[r.name] = (shifts, [row["agreement"] for row in invariance])
    row = {"pool": r.config.pool}
    row.update(study.model_cost(study.variant(r.config, num_classes=dataset.num_classes),
                                dataset.x_train.shape[1:]))
    row.update({"images_per_s": r.images_per_sec, "test_accuracy": r.summary["test_accuracy"]})
    for inv in invariance:
      if inv["offset"]:
        row[f"agreement_shift{inv['offset']}"] = inv["agreement"]
    rows.append(row)
  table = runner.write_results(workdir, rows, list(rows[0]))
  figures.lines(os.path.join(workdir, "plots", "agreement_vs_shift.png"), curves,
                xlabel="shift of the test images (pixels, diagonal)",
                ylabel="predictions unchanged (fraction)",
                title="invariance to small shifts by pooling kind")
  print(table)
  return {"results": rows}


if __name__ == "__main__":
  import launch  # pylint: disable=g-import-not-at-top
  launch.entry("pooling")
