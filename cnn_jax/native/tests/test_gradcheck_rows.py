"""The gradient checker's native rows: the kernels the trainer runs, and that a wrong one fails."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import models, native
from cnn_jax.analysis import native_gradcheck
from cnn_jax.native import autotune
from experiments.configs import default

pytestmark = pytest.mark.skipif(
    not native.available(), reason=f"native kernels unavailable: {native.unavailable_reason()}")


def _paths_the_trainer_can_run(image_size):
  """The native paths (``native_gradcheck`` names) the default config's model can run: each
  layer's fixed tile, or every native candidate its autotuner weighs."""
  config = default.get_config()
  config.image_size = image_size
  with config.unlocked():
    config.num_classes = 10
  model = models.build(config, num_devices=1)
  tiles, offered = [], set()
  original = native.conv_tile

  def recording(*args, **kwargs):
    tiles.append(original(*args, **kwargs))
    return tiles[-1]

  def weighing(x_shape, w_shape, spec, candidates, choices_file=None):
    del x_shape, w_shape, spec, choices_file
    offered.update(candidates)
    return "xla"

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(native, "conv_tile", recording)
    patch.setattr(autotune, "choose", weighing)
    x = jnp.zeros((2, image_size, image_size, 3), jnp.float32)
    jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=True))
  names = {0: "direct", 2: "winograd2", 4: "winograd4"}
  return ({names[t] for t in tiles if t is not None} | (offered - {"xla"})
          | {"channel_sums"})


@pytest.mark.parametrize("image_size", [16, 32])
def test_quick_grid_has_a_passing_row_for_every_kernel_the_default_config_runs(rng, image_size):
  rows, missing = native_gradcheck.run("quick", int(rng.integers(2 ** 31)))
  assert missing is None
  assert all(r["passed"] for r in rows), rows
  default_paths = {r["path"].split(":")[1].split()[0] for r in rows if "(default)" in r["path"]}
  used = _paths_the_trainer_can_run(image_size)
  assert used <= default_paths, (used, default_paths)
  # The premise: the default weighs direct and Winograd on its 3x3 stages.
  assert {"direct", "winograd2"} <= used
  assert {r["path"] for r in rows} >= {"native:winograd4"}  # opt-in, checked too


def _scaled_input_gradient(correlate, factor):
  """``native.correlate`` whose dL/dx is scaled by ``factor`` (a planted wrong VJP)."""
  def wrong(x, w, spec, tile=0):
    @jax.custom_vjp
    def f(x, w):
      return correlate(x, w, spec, tile)

    def fwd(x, w):
      y, vjp = jax.vjp(lambda x, w: correlate(x, w, spec, tile), x, w)
      return y, vjp

    def bwd(vjp, g):
      dx, dw = vjp(g)
      return dx * factor, dw
    f.defvjp(fwd, bwd)
    return f(x, w)
  return wrong


@pytest.mark.parametrize("factor", [1.001, 1.0 + 1e-4])
def test_a_wrong_gradient_of_a_native_kernel_fails_its_row(rng, monkeypatch, factor):
  monkeypatch.setattr(native, "correlate", _scaled_input_gradient(native.correlate, factor))
  # Winograd F(2x2, 3x3), which the default runs on 3x3 stages where it measures fastest.
  case = next(c for c in native_gradcheck.quick_cases() if c.path == "winograd2")
  row = native_gradcheck.check(case, np.random.default_rng(int(rng.integers(2 ** 31))))
  assert not row["passed"] and row["err_dx"] > row["tolerance"], row
  assert row["err_forward"] <= row["tolerance"]


def test_tolerance_follows_the_sum_length():
  case = native_gradcheck.NativeCase("direct", (2, 8, 8, 16), (3, 3, 16, 32))
  assert case.sum_lengths() == {"y": 144, "dx": 288, "dparams": 128}
  assert case.tolerance() == pytest.approx(4 * 288 ** 0.5 * 2.0 ** -24)
  f4 = native_gradcheck.NativeCase("winograd4", (2, 8, 8, 16), (3, 3, 16, 32))
  assert f4.tolerance() == 16 * case.tolerance()
