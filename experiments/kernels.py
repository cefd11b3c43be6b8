"""Kernels: the learned first-layer kernels and the feature maps of one image after each block.

With many kernels per layer each can specialise (edges of one orientation, one colour, a
blob). After training one simple CNN, ``plots/kernels.png`` shows every first-layer kernel
(RGB if the input has three channels) and ``plots/feature_maps_<layer>.png`` the maps that one
test image produces after each conv block: early maps stay image-like, later ones coarse and
specific.

  python launch.py --experiment=kernels
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


def first_kernels(params) -> np.ndarray:
  """The first conv's kernels as images ``(C_out, kh, kw[, 3])``."""
  kernel = np.asarray(params["conv1"]["kernel"])  # (kh, kw, C_in, C_out)
  images = np.moveaxis(kernel, -1, 0)
  return images if images.shape[-1] == 3 else images.mean(axis=-1)


def block_outputs(model, variables, x) -> dict[str, np.ndarray]:
  """Each conv block's output (after pooling, if any) for one example ``x (1, ...)``."""
  _, state = model.apply(variables, x, train=False, capture_intermediates=True,
                         mutable=["intermediates"])
  captured = {name: np.asarray(value["__call__"][0][0])
              for name, value in state["intermediates"].items() if "__call__" in value}
  # With pooling, a block ends at its pool; without, at its (strided) conv.
  pools = {k: v for k, v in captured.items() if k.startswith("pool")}
  return pools or {k: v for k, v in captured.items() if k.startswith("conv")}


def run(config, workdir):
  if config.model != "simple_cnn":
    raise ValueError(f"model={config.model!r}: the kernels study shows simple_cnn's conv "
                     "layers; use model=simple_cnn.")
  dataset = study.load_data(config)
  (r,) = study.train_runs([("simple_cnn", config)], workdir, dataset=dataset)
  model, variables = restore.load_trained(r.config, r.workdir, dataset=dataset)
  plots = os.path.join(workdir, "plots")
  kernels = first_kernels(variables["params"])
  figures.image_grid(os.path.join(plots, "kernels.png"), kernels,
                     title=f"{len(kernels)} learned first-layer kernels "
                           f"({kernels.shape[1]}×{kernels.shape[2]})")
  index = int(config.example_index)
  x = data_lib.prepare_batch(dataset.x_test[index:index + 1], dataset.mean, dataset.std,
                             augment=False)
  image = dataset.x_test[index]
  figures.image_grid(os.path.join(plots, "input.png"),
                     image[None] if image.shape[-1] == 3 else image[None, ..., 0],
                     title=f"test image {index} (label {int(dataset.y_test[index])})",
                     columns=1)
  rows = []
  for name, fmap in block_outputs(model, variables, jax.numpy.asarray(x)).items():
    maps = np.moveaxis(fmap, -1, 0)[:16]  # (C, H, W), first 16 channels
    figures.image_grid(os.path.join(plots, f"feature_maps_{name}.png"), maps,
                       title=f"after {name}: {fmap.shape[-1]} maps of "
                             f"{fmap.shape[0]}×{fmap.shape[1]} (first {len(maps)})")
    rows.append({"layer": name, "maps": fmap.shape[-1], "size": "x".join(map(str, fmap.shape[:-1])),
                 "mean_activation": float(fmap.mean()),
                 "active_fraction": float((fmap > 0).mean())})
  table = runner.write_results(workdir, rows, list(rows[0]))
  print(table)
  return {"test_accuracy": r.summary["test_accuracy"], "layers": rows}


if __name__ == "__main__":
  import launch  # pylint: disable=g-import-not-at-top
  launch.entry("kernels")
