"""Properties of the op library: equal to SciPy and to the independent reference, the algebra
of correlation and convolution, shift equivariance, shapes, pooling and parameter growth.

Tolerances: float32 sums of up to a few hundred products; relative error of such sums is a few
ulps times sqrt(terms), so 1e-5 relative plus 1e-5 absolute (values are O(1)) is tight but safe.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.signal

from cnn_jax import ops
from cnn_jax.ops import pooling

RTOL = ATOL = 1e-5


def _close(a, b, rtol=RTOL, atol=ATOL):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


def _normal(rng, *shape):
  return jnp.asarray(rng.standard_normal(shape), jnp.float32)


# ---------------------------------------------------------------------------- against SciPy


@pytest.mark.parametrize("num_dims", [1, 2, 3])
@pytest.mark.parametrize("mode", ["valid", "same", "full"])
def test_single_channel_equals_scipy(rng, num_dims, mode):
  for _ in range(4):
    sizes = tuple(int(s) for s in rng.integers(5, 10, num_dims))
    # SciPy centres "same" on the full output; for odd kernels that is our SAME exactly
    # (for even kernels the half-pixel offset differs by one position, as documented).
    kernel = tuple(int(2 * rng.integers(0, 2) + 1) if mode == "same" else int(rng.integers(1, 5))
                   for _ in range(num_dims))
    f = rng.standard_normal(sizes)
    w = rng.standard_normal(kernel)
    x = jnp.asarray(f[None, ..., None], jnp.float32)
    kw = jnp.asarray(w[..., None, None], jnp.float32)
    padding = mode.upper()
    got_corr = ops.correlate(x, kw, padding=padding)[0, ..., 0]
    got_conv = ops.convolve(x, kw, padding=padding)[0, ..., 0]
    _close(got_corr, scipy.signal.correlate(f, w, mode=mode, method="direct"))
    _close(got_conv, scipy.signal.convolve(f, w, mode=mode, method="direct"))


# ---------------------------------------------------------- fast path against the reference


def _random_case(rng, num_dims):
  groups = int(rng.choice([1, 2, 3]))
  c_in = groups * int(rng.integers(1, 3))
  c_out = groups * int(rng.integers(1, 3))
  kernel = tuple(int(k) for k in rng.integers(1, 4, num_dims))
  stride = tuple(int(s) for s in rng.integers(1, 4, num_dims))
  dilation = tuple(int(d) for d in rng.integers(1, 3, num_dims))
  padding = rng.choice(["VALID", "SAME", "FULL", "CIRCULAR", "int", "pairs"])
  if padding == "int":
    padding = int(rng.integers(0, 3))
  elif padding == "pairs":
    padding = tuple((int(lo), int(hi)) for lo, hi in rng.integers(0, 3, (num_dims, 2)))
  else:
    padding = str(padding)
  extent = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
  sizes = tuple(int(e + rng.integers(0, 6)) for e in extent)
  x = _normal(rng, 2, *sizes, c_in)
  w = _normal(rng, *kernel, c_in // groups, c_out)
  return x, w, dict(stride=stride, padding=padding, dilation=dilation, groups=groups)


@pytest.mark.parametrize("num_dims", [1, 2, 3])
def test_fast_path_equals_reference(rng, num_dims):
  for _ in range(12):
    x, w, kwargs = _random_case(rng, num_dims)
    fast = ops.correlate(x, w, **kwargs)
    reference = ops.correlate_reference(x, w, **kwargs)
    assert fast.shape == reference.shape, kwargs
    _close(fast, reference)


@pytest.mark.parametrize("num_dims", [1, 2, 3])
def test_output_shape_is_output_size(rng, num_dims):
  for _ in range(12):
    x, w, kwargs = _random_case(rng, num_dims)
    expected = ops.output_size(x.shape[1:-1], w.shape[:num_dims], kwargs["stride"],
                               kwargs["padding"], kwargs["dilation"])
    shape = jax.eval_shape(lambda a, b: ops.correlate(a, b, **kwargs), x, w).shape
    assert shape == (x.shape[0],) + expected + (w.shape[-1],)


def test_output_size_formula_by_hand():
  # Dumoulin & Visin's examples: n=5, k=3 → VALID 3, SAME 5, FULL 7; stride 2 with pad 1 → 3.
  assert ops.output_size(5, 3) == 3
  assert ops.output_size(5, 3, padding="SAME") == 5
  assert ops.output_size(5, 3, padding="FULL") == 7
  assert ops.output_size(5, 3, stride=2, padding=1) == 3
  assert ops.output_size(6, 3, stride=2, padding="SAME") == 3
  assert ops.output_size(7, 3, dilation=2) == 3  # effective kernel 5
  # (8+1+0-3)//2+1 = 4 and (9+2+2-2)//3+1 = 4.
  assert ops.output_size((8, 9), (3, 2), (2, 3), ((1, 0), (2, 2))) == (4, 4)


# ------------------------------------------------------------------------------ the algebra


@pytest.mark.parametrize("num_dims", [1, 2, 3])
def test_correlate_is_convolve_with_flipped_kernel(rng, num_dims):
  for _ in range(4):
    x, w, kwargs = _random_case(rng, num_dims)
    _close(ops.correlate(x, w, **kwargs), ops.convolve(x, ops.flip_kernel(w), **kwargs))


@pytest.mark.parametrize("num_dims", [1, 2])
def test_full_convolution_commutes_and_correlation_does_not(rng, num_dims):
  f = rng.standard_normal(tuple(rng.integers(4, 8, num_dims)))
  g = rng.standard_normal(tuple(rng.integers(2, 5, num_dims)))

  def as_input(a):
    return jnp.asarray(a[None, ..., None], jnp.float32)

  def as_kernel(a):
    return jnp.asarray(a[..., None, None], jnp.float32)

  f_conv_g = ops.convolve(as_input(f), as_kernel(g), padding="FULL")
  g_conv_f = ops.convolve(as_input(g), as_kernel(f), padding="FULL")
  _close(f_conv_g, g_conv_f)
  f_corr_g = ops.correlate(as_input(f), as_kernel(g), padding="FULL")
  g_corr_f = ops.correlate(as_input(g), as_kernel(f), padding="FULL")
  # Correlation is not commutative: swapping the arguments reverses the output instead.
  assert float(jnp.max(jnp.abs(f_corr_g - g_corr_f))) > 1e-2
  _close(f_corr_g, jnp.flip(g_corr_f, axis=tuple(range(1, 1 + num_dims))))


@pytest.mark.parametrize("num_dims", [1, 2, 3])
def test_linear_in_input_and_kernel(rng, num_dims):
  x, w, kwargs = _random_case(rng, num_dims)
  x2, w2 = _normal(rng, *x.shape), _normal(rng, *w.shape)
  a, b = rng.standard_normal(2)
  for op in (ops.correlate, ops.convolve):
    _close(op(a * x + b * x2, w, **kwargs),
           a * op(x, w, **kwargs) + b * op(x2, w, **kwargs), rtol=1e-4, atol=1e-4)
    _close(op(x, a * w + b * w2, **kwargs),
           a * op(x, w, **kwargs) + b * op(x, w2, **kwargs), rtol=1e-4, atol=1e-4)
  # 1e-4: each side sums two float32 convolutions scaled by O(1) factors, so the rounding of
  # three convolutions adds up; still 100x below any real non-linearity.


# ------------------------------------------------------------------------ shift equivariance


@pytest.mark.parametrize("num_dims", [1, 2])
def test_circular_stride_one_is_shift_equivariant(rng, num_dims):
  x = _normal(rng, 2, *([12] * num_dims), 3)
  w = _normal(rng, *([3] * num_dims), 3, 4)
  axes = tuple(range(1, 1 + num_dims))
  for shift in range(1, 4):
    shifted_then_conv = ops.correlate(jnp.roll(x, shift, axes), w, padding="CIRCULAR")
    conv_then_shifted = jnp.roll(ops.correlate(x, w, padding="CIRCULAR"), shift, axes)
    _close(shifted_then_conv, conv_then_shifted)


def test_stride_two_is_not_shift_equivariant(rng):
  x = _normal(rng, 1, 16, 16, 2)
  w = _normal(rng, 3, 3, 2, 2)
  shifted = ops.correlate(jnp.roll(x, 1, (1, 2)), w, stride=2, padding="CIRCULAR")
  plain = ops.correlate(x, w, stride=2, padding="CIRCULAR")
  # No shift of the subsampled output reproduces the output of the shifted input (aliasing).
  errors = [float(jnp.max(jnp.abs(shifted - jnp.roll(plain, (a, b), (1, 2)))))
            for a in range(-2, 3) for b in range(-2, 3)]
  assert min(errors) > 0.1
  # …whereas an even shift (a multiple of the stride) is reproduced by a shift of one output.
  shifted_by_two = ops.correlate(jnp.roll(x, 2, (1, 2)), w, stride=2, padding="CIRCULAR")
  _close(shifted_by_two, jnp.roll(plain, 1, (1, 2)))


# ----------------------------------------------------------------------------------- pooling


def _numpy_windows(x, window, stride, pads, fill):
  """(N, *out, C, *window) windows of a padded array, by NumPy's sliding_window_view."""
  num_dims = len(window)
  padded = np.pad(x, ((0, 0),) + tuple(pads) + ((0, 0),), constant_values=fill)
  view = np.lib.stride_tricks.sliding_window_view(padded, window, axis=tuple(range(1, 1 + num_dims)))
  index = (slice(None),) + tuple(slice(None, None, s) for s in stride)
  return view[index]


@pytest.mark.parametrize("num_dims", [1, 2, 3])
def test_pools_equal_numpy_reference(rng, num_dims):
  for _ in range(3):
    window = tuple(int(k) for k in rng.integers(1, 4, num_dims))
    stride = tuple(int(s) for s in rng.integers(1, 4, num_dims))
    padding = str(rng.choice(["VALID", "SAME"]))
    x_np = rng.standard_normal((2,) + tuple(int(s) for s in rng.integers(4, 8, num_dims)) + (3,))
    x = jnp.asarray(x_np, jnp.float32)
    pads = ops.resolve_padding(padding, x.shape[1:-1], window, stride, (1,) * num_dims)
    axes = tuple(range(-num_dims, 0))
    maxed = _numpy_windows(x_np, window, stride, pads, -np.inf).max(axis=axes)
    _close(ops.max_pool(x, window, stride, padding), maxed)
    summed = _numpy_windows(x_np, window, stride, pads, 0.0).sum(axis=axes)
    _close(ops.avg_pool(x, window, stride, padding), summed / np.prod(window))
    weights_np = rng.uniform(0.1, 1.0, window)
    weighted = np.tensordot(_numpy_windows(x_np, window, stride, pads, 0.0),
                            weights_np / weights_np.sum(), axes=(axes, tuple(range(num_dims))))
    _close(ops.weighted_avg_pool(x, jnp.asarray(weights_np, jnp.float32), stride, padding),
           weighted)
    l2 = np.sqrt((_numpy_windows(x_np, window, stride, pads, 0.0) ** 2).sum(axis=axes))
    _close(ops.lp_pool(x, window, 2, stride, padding), l2)


@pytest.mark.parametrize("num_dims", [1, 2, 3])
def test_lp_pool_by_taps_equals_lp_pool(rng, num_dims):
  # Two orders of the same sums (a list of tap slices vs a patch axis), used by hand.lp_pool
  # and ops.lp_pool: equal to float32 rounding (RTOL), overlapping windows and every padding
  # mode included, and large p (the peak scaling keeps both finite).
  for padding in ("VALID", "SAME", "FULL", "CIRCULAR"):
    window = tuple(int(k) for k in rng.integers(1, 4, num_dims))
    stride = tuple(int(s) for s in rng.integers(1, 4, num_dims))
    p = float(rng.choice([1.0, 2.0, 3.5, 200.0]))
    x = _normal(rng, 2, *(int(n) for n in rng.integers(4, 8, num_dims)), 3)
    spec = pooling._spec(x, window, stride, padding)  # pylint: disable=protected-access
    _close(pooling.lp_pool_by_taps(x, spec, p), ops.lp_pool(x, window, p, stride, padding))


def test_lp_pool_limits(rng):
  x = jnp.asarray(rng.uniform(0, 1, (2, 8, 8, 3)), jnp.float32)
  summed = ops.avg_pool(x, 2) * 4
  _close(ops.lp_pool(x, 2, p=1), summed)
  # (sum x^p)^(1/p) lies in [max, max * 4^(1/p)] for a 2x2 window: at p=200 within 0.7%.
  big_p = ops.lp_pool(x, 2, p=200)
  peak = ops.max_pool(x, 2)
  assert bool(jnp.all(big_p >= peak * (1 - 1e-6)))
  assert bool(jnp.all(big_p <= peak * 4 ** (1 / 200) + 1e-6))


def test_lp_pool_zero_window_has_finite_gradient():
  x = jnp.zeros((1, 4, 4, 1))
  grad = jax.grad(lambda v: ops.lp_pool(v, 2).sum())(x)
  assert bool(jnp.all(jnp.isfinite(grad)))


def test_global_pools(rng):
  x_np = rng.standard_normal((3, 5, 6, 4))
  x = jnp.asarray(x_np, jnp.float32)
  _close(ops.global_avg_pool(x), x_np.mean(axis=(1, 2)))
  _close(ops.global_max_pool(x), x_np.max(axis=(1, 2)))


def test_uniform_weighted_pool_is_average_pool(rng):
  x = _normal(rng, 2, 9, 9, 3)
  _close(ops.weighted_avg_pool(x, jnp.ones((3, 3)), 2, "SAME"), ops.avg_pool(x, 3, 2, "SAME"))


# -------------------------------------------------------------------------- local vs shared


@pytest.mark.parametrize("num_dims", [1, 2, 3])
def test_locally_connected_with_equal_kernels_is_correlate(rng, num_dims):
  for _ in range(3):
    x, w, kwargs = _random_case(rng, num_dims)
    kwargs.pop("groups")
    w = _normal(rng, *w.shape[:num_dims], x.shape[-1], w.shape[-1])
    out_spatial = ops.output_size(x.shape[1:-1], w.shape[:num_dims], kwargs["stride"],
                                  kwargs["padding"], kwargs["dilation"])
    tiled = jnp.broadcast_to(w, out_spatial + w.shape)
    _close(ops.locally_connected(x, tiled, **kwargs), ops.correlate(x, w, **kwargs))


def test_locally_connected_differs_per_position(rng):
  x = _normal(rng, 1, 6, 1)
  w = jnp.zeros((4, 3, 1, 1)).at[2].set(1.0)  # only output position 2 has a kernel
  y = ops.locally_connected(x, w)
  assert bool(jnp.all(y[0, jnp.array([0, 1, 3]), 0] == 0))
  _close(y[0, 2, 0], x[0, 2:5, 0].sum())


def _built_param_counts(model_name, n, channels, **fields):
  """``{layer: parameter count}`` of a zoo model built on an ``n x n x channels`` input."""
  from cnn_jax import models  # pylint: disable=g-import-not-at-top
  from experiments.configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config.update(model=model_name, num_classes=10, grad="autodiff", **fields)
  model = models.build(config)
  x = jax.ShapeDtypeStruct((1, n, n, channels), jnp.float32)
  params = jax.eval_shape(lambda v: model.init(jax.random.key(0), v), x)["params"]
  return {layer: sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(tree))
          for layer, tree in params.items()}


def test_parameter_counts_of_the_lesson():
  """Dense O(n²) → locally connected O(n) → shared O(1), counted on built models."""
  # The lesson's example: a 224x224x3 image into 10 classes, one dense layer: 150,528 inputs
  # x 10 weights + 10 biases.
  mlp = _built_param_counts("mlp", 224, 3, depth=1)
  assert mlp == {"classifier": 224 * 224 * 3 * 10 + 10}
  for n in (8, 16, 32):
    positions = n * n
    # One 3x3 SAME layer of 4 filters on a 1-channel map (stride 1: no pooling), then dense.
    fields = dict(depth=1, width=4, hidden=16, stride=1)
    shared = _built_param_counts("simple_cnn", n, 1, **fields)
    local = _built_param_counts("local", n, 1, **fields)
    assert shared["conv1"] == 3 * 3 * 1 * 4 + 4  # O(1): the same for every n
    assert local["local1"] == positions * (3 * 3 * 1 * 4 + 4)  # O(n): a kernel per position
    for counts in (shared, local):  # the same topology after the layer
      assert counts["dense1"] == positions * 4 * 16 + 16
      assert counts["classifier"] == 16 * 10 + 10
    # n² inputs fully connected to n² hidden units: O(n²) weights.
    dense = _built_param_counts("mlp", n, 1, depth=2, hidden=positions)
    assert dense["dense1"] == positions * positions + positions


# --------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("call, words", [
    (lambda x, w: ops.correlate(x, w[:, :, :2]), ["w has 2 input channels", "C_in // groups"]),
    (lambda x, w: ops.correlate(x, w, groups=2), ["w has 4 input channels", "groups=2"]),
    (lambda x, w: ops.correlate(x, w, groups=3), ["groups=3", "divide"]),
    (lambda x, w: ops.correlate(x, w, stride=0), ["stride=0", ">= 1"]),
    (lambda x, w: ops.correlate(x, w, dilation=(1, 0)), ["dilation=(1, 0)", ">= 1"]),
    (lambda x, w: ops.correlate(x, w, padding="REFLECT"), ["padding='REFLECT'", "CIRCULAR"]),
    (lambda x, w: ops.correlate(x[0], w), ["rank 3", "expected rank 4"]),
    (lambda x, w: ops.correlate(x[:, :2, :2], w), ["larger than the padded input"]),
    (lambda x, w: ops.correlate(x, w, dilation=5), ["larger than the padded input"]),
    (lambda x, w: ops.max_pool(x, 0), ["window=0", ">= 1"]),
    (lambda x, w: ops.avg_pool(x, 2, padding=-1), ["padding=-1"]),
    (lambda x, w: ops.lp_pool(x, 2, p=0.5), ["p=0.5", ">= 1"]),
])
def test_bad_input_raises_clear_error_before_tracing(call, words):
  x = jnp.zeros((2, 8, 8, 4))
  w = jnp.zeros((3, 3, 4, 8))
  with pytest.raises(ValueError) as info:
    call(x, w)
  message = str(info.value)
  assert "\n" not in message
  for word in words:
    assert word in message
  # The same check fires under jit, during tracing, before any compile.
  with pytest.raises(ValueError):
    jax.jit(call)(x, w)


def test_ops_differentiate_under_jit(rng):
  x, w, kwargs = _random_case(rng, 2)
  grads = jax.jit(jax.grad(lambda a, b: jnp.sum(ops.correlate(a, b, **kwargs) ** 2),
                           argnums=(0, 1)))(x, w)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)
  assert grads[0].shape == x.shape and grads[1].shape == w.shape


def test_pools_differentiate_under_jit(rng):
  x = _normal(rng, 2, 8, 8, 3)
  weights = ops.gaussian_window((3, 3))
  pools = [lambda v: ops.max_pool(v, 2), lambda v: ops.avg_pool(v, 3, 2, "SAME"),
           lambda v: ops.weighted_avg_pool(v, weights, 2, "SAME"), lambda v: ops.lp_pool(v, 2),
           ops.global_avg_pool, ops.global_max_pool]
  for pool in pools:
    grad = jax.jit(jax.grad(lambda v, pool=pool: jnp.sum(pool(v) ** 2)))(x)
    assert grad.shape == x.shape and bool(jnp.all(jnp.isfinite(grad)))
    assert float(jnp.max(jnp.abs(grad))) > 0


@pytest.mark.parametrize("num_dims", [1, 3])
def test_pools_in_other_dims_keep_channels(rng, num_dims):
  x = _normal(rng, 2, *([6] * num_dims), 5)
  for pool in (ops.max_pool, ops.avg_pool, ops.lp_pool):
    y = pool(x, 2)
    assert y.shape == (2,) + (3,) * num_dims + (5,)


def test_windows_cover_every_tap_once():
  # A 1-D sanity check of patch extraction order: patches of arange are consecutive runs.
  x = jnp.arange(7.0).reshape(1, 7, 1)
  spec = ops.correlation.window_spec(x.shape, (3,), 2, "VALID", 1)
  patches = ops.extract_patches(x, spec)[0, :, :, 0]
  expected = np.array([[0, 1, 2], [2, 3, 4], [4, 5, 6]])
  np.testing.assert_array_equal(np.asarray(patches), expected)



# Shapes on which XLA's CPU float32 convolution with a negative low padding returned wrong
# values or garbage (jax 0.10.2): (x shape, w shape, padding).
_CROP_CASES = {1: ((3, 13, 3), (2, 3, 4), ((3, 0),)),
               2: ((2, 6, 9, 3), (3, 2, 3, 2), ((5, 0), (4, 0)))}


@pytest.mark.parametrize("namespace", ["ops", "ops.hand"])
@pytest.mark.parametrize("num_dims", [1, 2])
def test_float32_gradients_with_padding_wider_than_the_kernel_equal_float64(rng, namespace,
                                                                            num_dims):
  # The input gradient of a correlation padded wider than its kernel crops: a negative low
  # padding in its convolution, which XLA's CPU float32 convolutions get wrong. ops moves the
  # excess into jnp.pad, ops.hand crops with a slice. XLA's own convolutions (ops.hand
  # is pure JAX). One known-bad shape, then random ones of the family that fails (stride 1, no
  # dilation, low pad >= kernel, high pad < kernel: ~15% of them failed before the fix).
  from cnn_jax.ops import hand  # pylint: disable=g-import-not-at-top
  module = hand if namespace == "ops.hand" else ops
  cases = [_CROP_CASES[num_dims]]
  for _ in range(4):
    kernel = tuple(int(k) for k in rng.integers(1, 4, num_dims))
    cases.append(((2,) + tuple(int(n) for n in rng.integers(4, 10, num_dims)) + (3,),
                  kernel + (3, 2),
                  tuple((int(rng.integers(k, k + 4)), int(rng.integers(0, k))) for k in kernel)))
  for x_shape, w_shape, padding in cases:
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    y, vjp = jax.vjp(lambda x, w, padding=padding: module.correlate(x, w, padding=padding),
                     *(jnp.asarray(a, jnp.float32) for a in (x, w)))
    g = rng.standard_normal(y.shape)
    with jax.enable_x64(True):
      y64, vjp64 = jax.vjp(lambda x, w, padding=padding: ops.correlate(x, w, padding=padding),
                           x, w)
      want = (y64,) + vjp64(jnp.asarray(g))
    for got, ref in zip((y,) + vjp(jnp.asarray(g, jnp.float32)), want):
      # float32 against float64 sums of at most 3*3*3*4 = 108 products of unit normals: ~1e-6
      # of the largest entry; the bug this guards against was off by 50% or more.
      scale = float(np.max(np.abs(ref)))
      error = float(np.max(np.abs(np.asarray(got, np.float64) - np.asarray(ref))))
      assert error <= 1e-5 * scale, (padding, x_shape, w_shape)
