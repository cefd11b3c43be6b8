"""ops.hand.correlate / convolve with each weight-gradient formulation equal autodiff.

``weight_method="conv"`` computes dL/dw as one correlation, ``"taps"`` as one matmul per
kernel tap; ``"auto"`` picks by channels. The gradcheck grid runs only "auto"; here both
formulations meet every padding mode, stride, dilation, groups and dimensionality.

Every case draws fresh inputs from the ``rng`` fixture. The gradients are checked in float64
(``jax.enable_x64``), where two correct formulations of the same sums differ only by rounding
(~1e-15 relative), so a 1e-10 tolerance catches any wrong index, flip or pad while leaving
room for different summation orders; one float32 case checks the dtype path at 1e-5
relative to the largest entry (float32 epsilon 1.2e-7 times a few hundred summed terms).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import ops
from cnn_jax.ops import hand
from cnn_jax.ops.hand import correlation as hand_correlation

# (spatial size, kernel, stride, padding, dilation, groups): 1-, 2- and 3-D, stride 1/2/3,
# SAME/VALID/FULL/CIRCULAR/int/explicit pairs, dilation and groups.
CASES = [
    ((9, 9), 3, 1, "SAME", 1, 1),
    ((9, 9), 3, 2, "SAME", 1, 1),
    ((8, 8), 3, 2, "SAME", 1, 1),
    ((8, 8), 3, 1, "VALID", 1, 1),
    ((9, 8), 3, 2, "VALID", 1, 1),
    ((8, 8), 3, 2, 1, 1, 1),  # PyTorch's padding=1, the ResNet convs
    ((9, 9), 3, 2, "VALID", 2, 2),
    ((7, 7), 3, 2, "FULL", 2, 2),
    ((7, 7), 3, 1, "CIRCULAR", 1, 1),
    ((8, 8), 3, 3, ((3, 0), (0, 2)), (1, 2), 4),
    ((11,), 4, 3, ((2, 1),), 1, 1),
    ((5, 5, 5), 2, 2, "SAME", 1, 1),
]


def _arrays(rng, spatial, kernel, groups, dtype):
  c_in, c_out = 4, 8
  x = rng.standard_normal((2,) + spatial + (c_in,))
  w = rng.standard_normal((kernel,) * len(spatial) + (c_in // groups, c_out))
  return jnp.asarray(x, dtype), jnp.asarray(w, dtype)


def _reference(x, w, args):
  y, vjp = jax.vjp(lambda x_, w_: ops.correlate(x_, w_, **args), x, w)
  return y, vjp


# "auto" only chooses between these two (test_auto_method_picks_by_channels).
@pytest.mark.parametrize("method", ("conv", "taps"))
@pytest.mark.parametrize("spatial,kernel,stride,padding,dilation,groups", CASES)
def test_custom_vjp_equals_autodiff_float64(rng, spatial, kernel, stride, padding, dilation,
                                            groups, method):
  args = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
  with jax.enable_x64(True):
    x, w = _arrays(rng, spatial, kernel, groups, jnp.float64)
    y_ref, vjp_ref = _reference(x, w, args)
    y, vjp = jax.vjp(
        lambda x_, w_: hand.correlate(x_, w_, weight_method=method, **args), x, w)
    g = jnp.asarray(rng.standard_normal(y_ref.shape))
    np.testing.assert_allclose(y, y_ref, rtol=1e-10, atol=1e-10)
    for got, want in zip(vjp(g), vjp_ref(g)):
      assert got.shape == want.shape
      np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method", hand_correlation.WEIGHT_METHODS)
def test_float32_resnet_layer_under_jit(rng, method):
  """A strided ResNet conv (16 -> 32, padding 1) in float32, through jit and grad of a loss."""
  x = jnp.asarray(rng.standard_normal((4, 8, 8, 16)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 16, 32)) / 12, jnp.float32)

  def loss(corr, x_, w_):
    return jnp.sum(jnp.sin(corr(x_, w_, stride=2, padding=1)))

  want = jax.grad(lambda x_, w_: loss(ops.correlate, x_, w_), argnums=(0, 1))(x, w)
  corr = lambda *a, **k: hand.correlate(*a, weight_method=method, **k)
  got = jax.jit(jax.grad(lambda x_, w_: loss(corr, x_, w_), argnums=(0, 1)))(x, w)
  for g, r in zip(got, want):
    assert g.dtype == jnp.float32
    # float32: eps 1.2e-7 times up to 16*16*... summed terms; 1e-5 of the largest entry.
    np.testing.assert_allclose(g, r, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(r))))


@pytest.mark.parametrize("method", ("conv", "taps"))
def test_convolve_weight_methods_equal_autodiff_float64(rng, method):
  # convolve's dL/dw is the flipped correlation weight gradient, by either formulation.
  args = dict(stride=2, padding="SAME", dilation=1, groups=2)
  with jax.enable_x64(True):
    x, w = _arrays(rng, (7, 6), 3, 2, jnp.float64)
    y_ref, vjp_ref = jax.vjp(lambda x_, w_: ops.convolve(x_, w_, **args), x, w)
    _, vjp = jax.vjp(lambda x_, w_: hand.convolve(x_, w_, weight_method=method, **args), x, w)
    g = jnp.asarray(rng.standard_normal(y_ref.shape))
    for got, want in zip(vjp(g), vjp_ref(g)):
      np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_bad_weight_method_raises_before_tracing(rng):
  x = jnp.asarray(rng.standard_normal((1, 5, 5, 3)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 3, 4)), jnp.float32)
  with pytest.raises(ValueError, match="weight_method='fft' is not allowed"):
    hand.correlate(x, w, weight_method="fft")
  with pytest.raises(ValueError, match="weight_method='fft' is not allowed"):
    hand.convolve(x, w, weight_method="fft")


def test_auto_method_picks_by_channels(rng):
  """weight_method="auto" uses the conv form below TAPS_MIN_CHANNELS per group, else taps."""
  low = hand_correlation.TAPS_MIN_CHANNELS
  for c_in, groups in ((low - 1, 1), (low, 1), (2 * low, 2), (2 * low - 2, 2)):
    x = jnp.asarray(rng.standard_normal((2, 5, 5, c_in)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, c_in // groups, 2 * groups)), jnp.float32)
    want_taps = c_in // groups >= low
    loss = lambda w_, x=x, groups=groups: hand.correlate(x, w_, padding="SAME",
                                                         groups=groups).sum()
    jaxpr = str(jax.make_jaxpr(jax.grad(loss))(w))
    # Forward and dL/dx are one conv each; the conv form of dL/dw is a third, taps are dots.
    assert jaxpr.count("conv_general_dilated") == (2 if want_taps else 3), (c_in, groups)
    assert ("dot_general" in jaxpr) == want_taps, (c_in, groups)
