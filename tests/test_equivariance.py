"""Translation equivariance: exact for circular stride-1 convs, aliasing with stride and pooling,
invariance after global pooling, and the prediction of a CNN vs an MLP under shifts."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import ops
from cnn_jax.analysis import equivariance as eq

# float32 tolerance for "exact" equivariance: the shifted and unshifted outputs are the same
# dot products of the same numbers, but XLA may tile positions differently, so each sum of
# K * C ~ 50 terms can round differently: relative error <= ~K * C * 2^-24 ~ 3e-6.
EXACT = 1e-5


def _normal(rng, shape):
  return jnp.asarray(rng.standard_normal(shape), jnp.float32)


def test_shift_matches_numpy(rng):
  x = rng.standard_normal((2, 5, 6, 3)).astype(np.float32)
  np.testing.assert_array_equal(eq.shift(jnp.asarray(x), (2, -1)),
                                np.roll(x, (2, -1), axis=(1, 2)))
  zero = np.asarray(eq.shift(jnp.asarray(x), (2, -1), "zero"))
  expected = np.zeros_like(x)
  expected[:, 2:, :-1] = x[:, :-2, 1:]
  np.testing.assert_array_equal(zero, expected)
  np.testing.assert_array_equal(eq.shift(jnp.asarray(x), 7, "zero"), np.zeros_like(x))
  with pytest.raises(ValueError, match="mode"):
    eq.shift(jnp.asarray(x), 1, "reflect")
  with pytest.raises(ValueError, match="offset"):
    eq.shift(jnp.asarray(x), (1, 2, 3))


@pytest.mark.parametrize("num_dims", [1, 2, 3])
def test_circular_stride1_conv_is_exactly_equivariant(rng, num_dims):
  n = {1: 16, 2: 10, 3: 6}[num_dims]
  x = _normal(rng, (2,) + (n,) * num_dims + (3,))
  w = _normal(rng, (3,) * num_dims + (3, 4))
  fn = functools.partial(ops.correlate, w=w, padding="CIRCULAR")
  for k in (1, 2, 3):
    error, moved = eq.equivariance_error(fn, x, k)
    assert moved == (k,) * num_dims
    assert error < EXACT


def test_stride_and_pooling_alias(rng):
  x = _normal(rng, (2, 12, 12, 3))
  w = _normal(rng, (3, 3, 3, 4))
  strided = functools.partial(ops.correlate, w=w, stride=2, padding="CIRCULAR")
  pooled = lambda v: ops.max_pool(v, 2)
  for fn in (strided, pooled):
    # An odd shift is half an output pixel: no integer output shift can match; random
    # inputs then differ by O(1) (~0.5-1.4 observed), far above float error.
    assert eq.equivariance_error(fn, x, 1)[0] > 0.1
    # Shifts by the stride map to whole output pixels and stay exact.
    error, moved = eq.equivariance_error(fn, x, 2)
    assert moved == (1, 1) and error < EXACT


def test_zero_padding_is_equivariant_away_from_borders(rng):
  # Content in the middle of a zero frame: a zero-padded conv sees the same zeros wherever the
  # content sits, so shifts that keep it inside the frame are exact; shifting real content
  # out of a full image is not.
  x = jnp.pad(_normal(rng, (1, 6, 6, 2)), ((0, 0), (5, 5), (5, 5), (0, 0)))
  w = _normal(rng, (3, 3, 2, 2))
  fn = lambda v: ops.correlate(jax.nn.relu(ops.correlate(v, w, padding="SAME")), w,
                               padding="SAME")
  for k in (1, 2, 3):
    assert eq.equivariance_error(fn, x, k, "zero")[0] < EXACT
  full = _normal(rng, (1, 16, 16, 2))
  assert eq.equivariance_error(fn, full, 3, "zero")[0] > 1e-2


def test_layerwise_errors_and_global_pool_invariance(rng):
  x = _normal(rng, (2, 12, 12, 3))
  w1, w2 = _normal(rng, (3, 3, 3, 4)), _normal(rng, (3, 3, 4, 4))
  layers = [
      ("conv1", functools.partial(ops.correlate, w=w1, padding="CIRCULAR")),
      ("relu1", jax.nn.relu),
      ("conv2/2", functools.partial(ops.correlate, w=w2, stride=2, padding="CIRCULAR")),
      ("pool", lambda v: ops.max_pool(v, 2)),
      ("global_avg", ops.global_avg_pool),
  ]
  rows = eq.layerwise_equivariance(layers, x, offsets=(1, 2, 4))
  error = {(r["layer"], r["offset"]): r["error"] for r in rows}
  assert len(rows) == 15
  assert error[("conv1", 1)] < EXACT and error[("relu1", 1)] < EXACT
  assert error[("conv2/2", 1)] > 0.1 and error[("conv2/2", 2)] < EXACT
  assert error[("pool", 2)] > 0.1 and error[("pool", 4)] < EXACT  # total stride 4 now
  assert error[("global_avg", 4)] < EXACT  # pooled over all positions of an equivariant map
  assert [r["output_offset"] for r in rows if r["layer"] == "global_avg"] == [None] * 3


def test_cnn_prediction_is_shift_invariant_mlp_is_not(rng):
  num_classes, n, c = 3, 8, 2
  x = _normal(rng, (6, n, n, c))
  labels = jnp.asarray(rng.integers(0, num_classes, 6))
  w = _normal(rng, (3, 3, c, 8))
  head = _normal(rng, (8, num_classes))
  dense = _normal(rng, (n * n * c, num_classes)) / n

  def cnn(v):
    return ops.global_avg_pool(jax.nn.relu(ops.correlate(v, w, padding="CIRCULAR"))) @ head

  def mlp(v):
    return v.reshape(v.shape[0], -1) @ dense

  cnn_rows = eq.prediction_invariance(cnn, x, labels, offsets=(0, 1, 3))
  mlp_rows = eq.prediction_invariance(mlp, x, labels, offsets=(0, 1, 3))
  assert cnn_rows[0]["p_true_change"] == 0 and cnn_rows[0]["agreement"] == 1
  # Probabilities are O(0.1-1); float32 rounding in the conv moves them by < 1e-5.
  assert all(r["p_true_change"] < 1e-5 and r["agreement"] == 1 for r in cnn_rows)
  # A dense layer sees every pixel with its own weight: a shift is a different input. With
  # random weights the probability moves by O(0.1); 1e-3 is a conservative floor.
  assert all(r["p_true_change"] > 1e-3 for r in mlp_rows[1:])
  with pytest.raises(ValueError, match="labels"):
    eq.prediction_invariance(cnn, x, labels[:3])


def test_equivariance_plot_is_written(tmp_path):
  from cnn_jax import plotting  # pylint: disable=g-import-not-at-top
  rows = [dict(layer=name, index=i, offset=k, error=e * k)
          for i, (name, e) in enumerate([("conv", 0.0), ("pool", 0.5)]) for k in (1, 2)]
  plotting.plot_equivariance(rows, str(tmp_path / "eq.png"))
  assert (tmp_path / "eq.png").read_bytes()[:4] == b"\x89PNG"
