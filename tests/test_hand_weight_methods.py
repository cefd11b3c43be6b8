"""ops.hand.correlate / convolve with each weight-gradient formulation equal autodiff.

``weight_method="conv"`` computes dL/dw as one correlation, ``"taps"`` as one matmul per
kernel tap; ``"auto"`` picks by kernel size, groups and channels. The gradcheck grid runs only "auto"; here both
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


# "auto" only chooses between these two (test_auto_method_picks_by_channels_groups_and_kernel).
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


def _auto_uses_taps(rng, c_in, groups, kernel):
  """Whether hand.correlate's gradient under weight_method="auto" computes dL/dw by taps,
  read from the jaxpr: forward and dL/dx are one conv each, the conv form of dL/dw is a third,
  taps are dots."""
  x = jnp.asarray(rng.standard_normal((2, 5, 5, c_in)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((kernel, kernel, c_in // groups, 2 * groups)), jnp.float32)
  loss = lambda w_: hand.correlate(x, w_, padding="SAME", groups=groups).sum()
  jaxpr = str(jax.make_jaxpr(jax.grad(loss))(w))
  taps = "dot_general" in jaxpr
  assert jaxpr.count("conv_general_dilated") == (2 if taps else 3), (c_in, groups, kernel)
  return taps


def test_auto_method_picks_by_channels_groups_and_kernel(rng):
  """weight_method="auto": taps for grouped or 1x1 kernels and for TAPS_MIN_CHANNELS to
  TAPS_MAX_CHANNELS input channels per group; the conv form otherwise."""
  low, high = hand_correlation.TAPS_MIN_CHANNELS, hand_correlation.TAPS_MAX_CHANNELS
  cases = {  # (c_in, groups, kernel): taps?
      (low - 1, 1, 3): False, (low, 1, 3): True, (high, 1, 3): True, (high + 1, 1, 3): False,
      (2 * high, 1, 3): False, (3, 1, 3): False,
      (2 * high, 2, 3): True, (4, 4, 3): True,  # grouped, any width
      (2 * high, 1, 1): True, (3, 1, 1): True,  # 1x1
  }
  for (c_in, groups, kernel), want in cases.items():
    assert _auto_uses_taps(rng, c_in, groups, kernel) == want, (c_in, groups, kernel)


@pytest.mark.parametrize("batch,chunk", [(7, 2), (8, 4), (5, 1), (6, 6)])
def test_taps_in_batch_chunks_equal_autodiff_float64(rng, batch, chunk):
  """The taps sum split into chunks of examples (a scan, plus the leftover examples) is the
  same sum: float64, 1e-10 as above. (7, 2): three chunks and one example left over."""
  spec_args = dict(stride=2, padding="SAME", dilation=1, groups=2)
  with jax.enable_x64(True):
    x = jnp.asarray(rng.standard_normal((batch, 7, 6, 4)))
    w = jnp.asarray(rng.standard_normal((3, 3, 2, 6)))
    y, vjp = jax.vjp(lambda w_: ops.correlate(x, w_, **spec_args), w)
    g = jnp.asarray(rng.standard_normal(y.shape))
    spec = hand_correlation.correlation.window_spec(x.shape, (3, 3), 2, "SAME", 1)
    got = hand_correlation.correlate_weight_grad_taps(x, g, spec, (3, 3), 2, batch_chunk=chunk)
    np.testing.assert_allclose(got, vjp(g)[0], rtol=1e-10, atol=1e-10)


def test_taps_batch_chunk_fits_the_budget():
  """Small layers are one chunk; a large one is cut into power-of-two chunks whose padded
  input fits TAPS_CHUNK_BYTES (the first ResNet stage at batch 128: 8 examples)."""
  spec_of = lambda shape: hand_correlation.correlation.window_spec(shape, (3, 3), 1, 1, 1)
  small = (128, 8, 8, 64)  # 3.3 MB padded: under TAPS_CHUNK_ABOVE_BYTES
  assert hand_correlation.taps_batch_chunk(spec_of(small), small, 4) == 128
  large = (128, 32, 32, 16)  # 9.5 MB padded, 74 KB per example
  chunk = hand_correlation.taps_batch_chunk(spec_of(large), large, 4)
  per_example = 34 * 34 * 16 * 4
  assert chunk & (chunk - 1) == 0
  assert chunk * per_example <= hand_correlation.TAPS_CHUNK_BYTES < 2 * chunk * per_example
  assert chunk == 8


def test_bfloat16_taps_chunks_accumulate_in_float32(rng):
  """A bfloat16 weight gradient summed over 64 chunks is rounded to bfloat16 about once, not
  once per chunk: the running sum is float32.

  Reference: the same bfloat16-valued inputs summed in float32. Rounding each chunk's result
  and the final sum to bfloat16 (8-bit mantissa, relative 2^-9) leaves an error near 2^-9 of
  the largest entry; a bfloat16 running sum rounds 64 times at the sum's own size, several
  times more. Measured over 6 seeds, in units of 2^-9 of the largest entry: 1.2-1.6 with the
  float32 running sum, 6-12 with a bfloat16 one; the bound 2^-7.5 (2.8 units) separates them.
  """
  x = jnp.asarray(rng.standard_normal((64, 6, 6, 8)), jnp.bfloat16)
  g = jnp.asarray(rng.standard_normal((64, 6, 6, 8)), jnp.bfloat16)
  spec = hand_correlation.correlation.window_spec(x.shape, (3, 3), 1, "SAME", 1)
  want = hand_correlation.correlate_weight_grad_taps(
      x.astype(jnp.float32), g.astype(jnp.float32), spec, (3, 3), 1, batch_chunk=64)
  got = hand_correlation.correlate_weight_grad_taps(x, g, spec, (3, 3), 1, batch_chunk=1)
  assert got.dtype == jnp.bfloat16
  err = float(jnp.max(jnp.abs(got.astype(jnp.float32) - want)))
  assert err <= 2 ** -7.5 * float(jnp.max(jnp.abs(want)))


# (input channels, output channels, groups): which conv form dense_is_faster picks.
GROUP_SHAPES = {
    (32, 32, 8): True,    # 4 channels per group
    (24, 24, 4): True,    # 6 per group, 4 groups
    (60, 60, 4): True,    # 15 per group, 4 groups
    (64, 64, 4): False,   # 16 per group
    (40, 40, 5): False,   # 8 per group, 5 groups
    (10, 20, 2): True,    # dL/dx reads 10 per group: also dense
    (80, 20, 5): False,   # forward grouped (16 per group), dL/dx dense (4 per group)
}


@pytest.mark.parametrize("op_name", ("correlate", "convolve"))
@pytest.mark.parametrize("c_in,c_out,groups", list(GROUP_SHAPES))
def test_grouped_conv_forms_equal_autodiff_float64(rng, op_name, c_in, c_out, groups):
  """Grouped kernels run as block-diagonal dense convs where ``dense_is_faster`` says so and as
  grouped convs elsewhere; either way the values and both gradients equal ops' autodiff
  (float64, 1e-10 as above). The jaxpr shows which form each of the three convs took."""
  reference, fast = getattr(ops, op_name), getattr(hand, op_name)
  args = dict(stride=1, padding="SAME")
  with jax.enable_x64(True):
    x = jnp.asarray(rng.standard_normal((2, 5, 6, c_in)))
    w = jnp.asarray(rng.standard_normal((3, 3, c_in // groups, c_out)))
    y_ref, vjp_ref = jax.vjp(lambda x_, w_: reference(x_, w_, groups=groups, **args), x, w)
    y, vjp = jax.vjp(lambda x_, w_: fast(x_, w_, groups=groups, **args), x, w)
    g = jnp.asarray(rng.standard_normal(y_ref.shape))
    np.testing.assert_allclose(y, y_ref, rtol=1e-10, atol=1e-10)
    for got, want in zip(vjp(g), vjp_ref(g)):
      np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    jaxpr = str(jax.make_jaxpr(lambda x_, w_: jax.vjp(
        lambda a, b: fast(a, b, groups=groups, **args), x_, w_)[1](g))(x, w))
  forward_dense = hand_correlation.dense_is_faster(c_in // groups, groups)
  dx_dense = hand_correlation.dense_is_faster(c_out // groups, groups)
  assert forward_dense == GROUP_SHAPES[(c_in, c_out, groups)]
  # The weight gradient is taps (dots) for every grouped kernel; the two convs left are the
  # forward and dL/dx, each grouped (feature_group_count=G) unless made dense.
  counts = jaxpr.count(f"feature_group_count={groups}"), jaxpr.count("feature_group_count=1")
  assert counts == (2 - forward_dense - dx_dense, forward_dense + dx_dense), counts


def test_block_diagonal_kernel_is_zero_between_groups(rng):
  w = jnp.asarray(rng.standard_normal((3, 2, 12)))  # 1-D kernel, 3 groups of 2 -> 4
  dense = hand_correlation.block_diagonal(w, 3)
  assert dense.shape == (3, 6, 12)
  for j in range(3):
    for k in range(3):
      block = dense[:, 2 * j:2 * j + 2, 4 * k:4 * k + 4]
      want = w[:, :, 4 * k:4 * k + 4] if j == k else jnp.zeros_like(block)
      np.testing.assert_array_equal(block, want)
