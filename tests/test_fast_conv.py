"""bench.fast_conv: the hand-written correlation VJP equals autodiff of ops.correlate.

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

from bench import fast_conv
from cnn_jax import ops

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
        lambda x_, w_: fast_conv.correlate(x_, w_, weight_method=method, **args), x, w)
    g = jnp.asarray(rng.standard_normal(y_ref.shape))
    np.testing.assert_allclose(y, y_ref, rtol=1e-10, atol=1e-10)
    for got, want in zip(vjp(g), vjp_ref(g)):
      assert got.shape == want.shape
      np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


# A few non-circular cases (circular padding is a wrap before the custom VJP): stride 1 and 2,
# SAME/VALID/explicit pads, dilation with groups, 1-D.
@pytest.mark.parametrize("spatial,kernel,stride,padding,dilation,groups",
                         [CASES[1], CASES[4], CASES[9], CASES[10]])
def test_pure_gradients_equal_autodiff(rng, spatial, kernel, stride, padding, dilation, groups):
  """input_grad / weight_grad called directly, on resolved arguments, match autodiff."""
  args = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
  with jax.enable_x64(True):
    x, w = _arrays(rng, spatial, kernel, groups, jnp.float64)
    y_ref, vjp_ref = _reference(x, w, args)
    g = jnp.asarray(rng.standard_normal(y_ref.shape))
    dx_ref, dw_ref = vjp_ref(g)
    from cnn_jax.ops import correlation  # pylint: disable=g-import-not-at-top
    spec = correlation.window_spec(x.shape, w.shape[:len(spatial)], stride, padding, dilation)
    resolved = dict(stride=spec.stride, pads=spec.pads, dilation=spec.dilation, groups=groups)
    np.testing.assert_allclose(fast_conv.forward(x, w, **resolved), y_ref, rtol=1e-10,
                               atol=1e-10)
    np.testing.assert_allclose(fast_conv.input_grad(g, w, x.shape, **resolved), dx_ref,
                               rtol=1e-10, atol=1e-10)
    for method in fast_conv.WEIGHT_GRAD_METHODS:
      np.testing.assert_allclose(
          fast_conv.weight_grad(x, g, w.shape, method=method, **resolved), dw_ref,
          rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method", fast_conv.WEIGHT_GRAD_METHODS)
def test_float32_resnet_layer_under_jit(rng, method):
  """A strided ResNet conv (16 -> 32, padding 1) in float32, through jit and grad of a loss."""
  x = jnp.asarray(rng.standard_normal((4, 8, 8, 16)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 16, 32)) / 12, jnp.float32)

  def loss(corr, x_, w_):
    return jnp.sum(jnp.sin(corr(x_, w_, stride=2, padding=1)))

  want = jax.grad(lambda x_, w_: loss(ops.correlate, x_, w_), argnums=(0, 1))(x, w)
  hand = lambda *a, **k: fast_conv.correlate(*a, weight_method=method, **k)
  got = jax.jit(jax.grad(lambda x_, w_: loss(hand, x_, w_), argnums=(0, 1)))(x, w)
  for g, r in zip(got, want):
    assert g.dtype == jnp.float32
    # float32: eps 1.2e-7 times up to 16*16*... summed terms; 1e-5 of the largest entry.
    np.testing.assert_allclose(g, r, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(r))))


def test_bad_arguments_raise_before_tracing(rng):
  x = jnp.asarray(rng.standard_normal((1, 5, 5, 3)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 3, 4)), jnp.float32)
  with pytest.raises(ValueError, match="weight_method"):
    fast_conv.correlate(x, w, weight_method="fft")
  with pytest.raises(ValueError, match="stride"):
    fast_conv.correlate(x, w, stride=0)
  with pytest.raises(ValueError, match="input channels"):
    fast_conv.correlate(x, w[:, :, :2])
  with pytest.raises(ValueError, match="method"):
    fast_conv.weight_grad(x, x, w.shape, stride=(1, 1), pads=((0, 0),) * 2,
                          dilation=(1, 1), method="fft")


def test_auto_method_picks_by_channels(rng):
  """weight_method="auto" gives the taps result up to TAPS_MAX_CHANNELS, else the conv one."""
  args = dict(stride=(1, 1), pads=((1, 1), (1, 1)), dilation=(1, 1))
  for c_in in (fast_conv.TAPS_MAX_CHANNELS, fast_conv.TAPS_MAX_CHANNELS + 1):
    x = jnp.asarray(rng.standard_normal((2, 5, 5, c_in)), jnp.float32)
    g = jnp.asarray(rng.standard_normal((2, 5, 5, 3)), jnp.float32)
    shape = (3, 3, c_in, 3)
    want = "taps" if c_in <= fast_conv.TAPS_MAX_CHANNELS else "conv"
    jaxpr = str(jax.make_jaxpr(
        lambda x_, g_: fast_conv.weight_grad(x_, g_, shape, method="auto", **args))(x, g))
    assert ("conv_general_dilated" in jaxpr) == (want == "conv"), (c_in, jaxpr[:200])
