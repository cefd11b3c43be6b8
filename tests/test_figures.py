"""Figures drawn on threads at once come out as if drawn alone (no shared pyplot state)."""

import concurrent.futures
import io
import sys
import threading

import numpy as np
from PIL import Image

from experiments import figures

REPEATS = 4  # figures per thread: several, so that the two threads' drawing interleaves


def _study_curves(seed: int) -> dict:
  """A study's curves (label → (x, y)): different per seed, so the figures differ."""
  rng = np.random.default_rng(seed)
  x = np.arange(10.0)
  return {f"{seed}-{k}": (x, rng.uniform(0, 100, size=10)) for k in range(3)}


def _draw(path, seed: int) -> None:
  figures.lines(str(path), _study_curves(seed), xlabel="step", ylabel="error (%)",
                title=f"study {seed}")


def _pixels(path) -> np.ndarray:
  with Image.open(io.BytesIO(path.read_bytes())) as image:
    assert image.format == "PNG"
    return np.asarray(image.convert("RGBA"))


def test_two_studies_drawing_on_threads_get_their_own_figures(tmp_path):
  seeds = (1, 2)
  for seed in seeds:
    _draw(tmp_path / f"alone-{seed}.png", seed)
  start = threading.Barrier(len(seeds))

  def study(seed):
    start.wait()
    for k in range(REPEATS):
      _draw(tmp_path / f"thread-{seed}-{k}.png", seed)

  interval = sys.getswitchinterval()
  sys.setswitchinterval(1e-6)  # switch threads as often as possible: the drawing interleaves
  try:
    with concurrent.futures.ThreadPoolExecutor(len(seeds)) as pool:
      list(pool.map(study, seeds))
  finally:
    sys.setswitchinterval(interval)
  alone = {seed: _pixels(tmp_path / f"alone-{seed}.png") for seed in seeds}
  assert not np.array_equal(alone[1], alone[2])
  for seed in seeds:
    for k in range(REPEATS):
      np.testing.assert_array_equal(_pixels(tmp_path / f"thread-{seed}-{k}.png"), alone[seed])
