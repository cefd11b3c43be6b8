"""The native kernels (cnn_jax.native): oneDNN's convolutions through XLA's FFI and the Winograd
F(2x2, 3x3) / F(4x4, 3x3) kernels behind the same handlers (csrc/), against the pure ops.

Tolerances: the two libraries sum the same float32 products in different orders, so results
differ by rounding, ~1e-7 relative per sum; a sum of up to 5*5*8 = 200 products of unit-scale
terms stays within ~1e-6 of the largest entry. 1e-5 relative to the largest entry leaves a
10x margin (second order: three convolutions chained, 3e-5). Winograd adds the transforms'
rounding: each transformed value is a signed sum of at most 16 inputs or 9 kernel taps
(coefficients 1 and 1/2, exact in float32), so it carries a few ulps more than a direct sum;
measured here 2e-7 to 6e-7 of the largest entry for 16-48 channels, under the same 1e-5.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import native, ops
from cnn_jax.native import build as build_lib
from cnn_jax.ops import correlation, hand

pytestmark = pytest.mark.skipif(
    not native.available(), reason=f"native kernels unavailable: {native.unavailable_reason()}")


def _native_op(op, tile=0, stride=1, padding="VALID", dilation=1):
  """``ops.<op>`` with these arguments, on the native kernels with Winograd tile ``tile``."""
  def fn(x, w):
    num_dims = correlation.check_kernel(x.shape, w.shape, 1)
    spec = correlation.window_spec(x.shape, w.shape[:num_dims], stride, padding, dilation)
    return native.correlate(x, correlation.flip_kernel(w) if op == "convolve" else w, spec,
                            tile)
  return fn


class _NativeNamespace:
  """``correlate`` on the native kernels, as the second-order tests call ``namespace``."""

  def __init__(self, tile=0):
    self.tile = tile

  def correlate(self, x, w, **kwargs):
    return _native_op("correlate", self.tile, **kwargs)(x, w)


def _rel(a, b):
  scale = float(jnp.max(jnp.abs(b)))
  return float(jnp.max(jnp.abs(a - b))) / scale if scale else float(jnp.max(jnp.abs(a)))


def _draw_case(rng, num_dims):
  """A random float32 correlation that oneDNN takes: stride, dilation, padding mode, sizes."""
  kernel = tuple(int(k) for k in rng.integers(1, 6, num_dims))
  dilation = int(rng.integers(1, 3))
  stride = int(rng.integers(1, 4))
  padding = [("VALID", "SAME", "FULL")[int(rng.integers(3))],
             tuple((int(rng.integers(0, 3)), int(rng.integers(0, 3))) for _ in range(num_dims))
             ][int(rng.integers(2))]
  spatial = tuple(int(rng.integers((k - 1) * dilation + 1, 14)) for k in kernel)
  c_in, c_out = int(rng.integers(1, 9)), int(rng.integers(1, 9))
  x = jnp.asarray(rng.standard_normal((int(rng.integers(1, 4)),) + spatial + (c_in,)),
                  jnp.float32)
  w = jnp.asarray(rng.standard_normal(kernel + (c_in, c_out)), jnp.float32)
  return x, w, dict(stride=stride, padding=padding, dilation=dilation)


def _uses_onednn(fn, *args):
  return "CnnJaxOnednnConv" in str(jax.make_jaxpr(fn)(*args))


def test_the_hand_ops_never_run_the_native_kernels():
  x, w = jnp.ones((1, 6, 6, 16)), jnp.ones((3, 3, 16, 16))
  for op in (hand.correlate, hand.convolve, ops.correlate):
    assert not _uses_onednn(lambda x, w, op=op: op(x, w, padding="SAME"), x, w)
  assert "CnnJaxChannel" not in str(jax.make_jaxpr(
      lambda x: hand.batch_norm(x, jnp.ones(16), jnp.zeros(16)))(x))


@pytest.mark.parametrize("compiler", ["", "/nonexistent/g++"])
def test_build_without_a_compiler_says_what_is_missing_in_one_line(monkeypatch, tmp_path,
                                                                   compiler):
  if compiler:
    monkeypatch.setenv("CXX", compiler)
  else:
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(build_lib.shutil, "which", lambda name: None)
  built, message = build_lib.build(str(tmp_path / "lib.so"))
  assert not built
  assert "no C++ compiler" in message and "\n" not in message
  assert not list(tmp_path.iterdir())  # nothing half-written


@pytest.mark.parametrize("num_dims", [1, 2])
@pytest.mark.parametrize("op", ["correlate", "convolve"])
def test_forward_and_both_gradients_equal_xla(rng, num_dims, op):
  for _ in range(4):
    x, w, kwargs = _draw_case(rng, num_dims)
    fast = _native_op(op, **kwargs)
    reference = lambda x, w: getattr(ops, op)(x, w, **kwargs)
    assert _uses_onednn(fast, x, w), kwargs
    y, vjp = jax.vjp(fast, x, w)
    y_ref, vjp_ref = jax.vjp(reference, x, w)
    assert y.shape == y_ref.shape
    g = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
    for got, want in zip((y, *vjp(g)), (y_ref, *vjp_ref(g))):
      assert _rel(got, want) < 1e-5, (kwargs, x.shape, w.shape)


@pytest.mark.parametrize("num_dims", [1, 2])
def test_second_order_gradients_equal_xla(rng, num_dims):
  # Gradient of |dL/dx|^2 + |dL/dw|^2 with L = <f(x, w), h(x, w)> and h = tanh(f): the
  # cotangent reaching the backward products depends on x and w, so every VJP of every one of
  # the three oneDNN products is taken.
  x, w, kwargs = _draw_case(rng, num_dims)

  def second(namespace):
    def loss(x, w):
      y = namespace.correlate(x, w, **kwargs)
      return jnp.sum(y * jnp.tanh(y))

    def energy(x, w):
      dx, dw = jax.grad(loss, argnums=(0, 1))(x, w)
      return jnp.sum(dx ** 2) + jnp.sum(dw ** 2)
    return jax.jit(jax.grad(energy, argnums=(0, 1)))(x, w)

  for got, want in zip(second(_NativeNamespace()), second(ops)):
    assert _rel(got, want) < 3e-5, kwargs


def test_vmap_and_jit_equal_xla(rng):
  x = jnp.asarray(rng.standard_normal((3, 2, 9, 9, 4)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 4, 5)), jnp.float32)
  fast = jax.jit(jax.vmap(lambda x: _native_op("correlate", stride=2, padding="SAME")(x, w)))
  reference = jax.vmap(lambda x: ops.correlate(x, w, stride=2, padding="SAME"))
  assert _rel(fast(x), reference(x)) < 1e-5


@pytest.mark.parametrize("case", ["groups", "circular", "bfloat16", "3-D"])
def test_other_convolutions_stay_on_xla_under_auto_and_are_refused_under_native(case):
  num_dims = 3 if case == "3-D" else 2
  dtype = jnp.bfloat16 if case == "bfloat16" else jnp.float32
  x = jax.ShapeDtypeStruct((2,) + (6,) * num_dims + (4,), dtype)
  w = jax.ShapeDtypeStruct((3,) * num_dims + ((2,) if case == "groups" else (4,)) + (6,), dtype)
  spec = correlation.window_spec(x.shape, w.shape[:num_dims], 1,
                                 "CIRCULAR" if case == "circular" else "SAME", 1)
  groups = 2 if case == "groups" else 1
  assert native.conv_tile(native.Kernels(native=True), x, w, spec, groups) is None
  with pytest.raises(ValueError, match="kernels='native' does not apply to a .* give "
                     "kernels=auto or xla"):
    native.conv_tile(native.Kernels(native=True, strict=True), x, w, spec, groups)


# F(4x4, 3x3)'s transforms cancel larger terms (coefficients up to 8 and 1/24): its rounding
# is 10-20x F(2x2, 3x3)'s, measured against float64 at 3e-6 to 8e-6 of the largest entry
# (forward, 16-64 channels) and up to 3e-5 (weight gradient, 131,072 positions); these tests'
# sums are shorter. 1e-4 keeps a 3x margin over the worst measured.
TOLERANCE = {2: 1e-5, 4: 1e-4}
# Second order chains five products (the forward, its two VJPs, theirs) through tanh's
# curvature, each adding its rounding: over 10 random draws the worst was 1.9e-5 (F(2x2)) and
# 4.4e-5 (F(4x4)) of the largest entry, so 1e-4 and 3e-4 (5-7x margin).
SECOND_ORDER_TOLERANCE = {2: 1e-4, 4: 3e-4}


def _draw_winograd_case(rng, tile=2):
  """A random stride-1 3x3 "SAME" correlation that Winograd F(tile x tile, 3x3) takes: sizes
  multiples of ``tile`` (for tile 2, not of 4: F(4x4, 3x3) could take those), input channels
  a multiple of 8, output channels a multiple of 16."""
  batch = int(rng.integers(1, 4))
  if tile == 4:
    height, width = (4 * int(rng.integers(1, 4)) for _ in range(2))
  else:
    height, width = (4 * int(rng.integers(0, 3)) + 2 for _ in range(2))
  c_in, c_out = 8 * int(rng.integers(1, 5)), 16 * int(rng.integers(1, 4))
  x = jnp.asarray(rng.standard_normal((batch, height, width, c_in)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, c_in, c_out)), jnp.float32)
  return x, w


def _calls():
  return {tile: native.winograd_calls(tile) for tile in (2, 4)}


@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("op", ["correlate", "convolve"])
def test_winograd_runs_the_stride1_3x3_layers_and_equals_xla(rng, op, tile):
  for _ in range(3):
    x, w = _draw_winograd_case(rng, tile)
    fast = _native_op(op, tile, padding="SAME")
    reference = lambda x, w: getattr(ops, op)(x, w, padding="SAME")
    before = _calls()
    y, vjp = jax.vjp(fast, x, w)
    g = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
    got = jax.block_until_ready((y, *vjp(g)))
    # Forward and weight gradient always; the input gradient (a correlation from c_out
    # channels to c_in) when c_in is a multiple of 16 as well.
    ran = {t: native.winograd_calls(t) - before[t] for t in (2, 4)}
    expected = 3 if x.shape[-1] % 16 == 0 else 2
    assert ran == {2: expected if tile == 2 else 0, 4: expected if tile == 4 else 0}, x.shape
    y_ref, vjp_ref = jax.vjp(reference, x, w)
    for name, a, b in zip(("y", "dx", "dw"), got, (y_ref, *vjp_ref(g))):
      assert _rel(a, b) < TOLERANCE[tile], (name, x.shape, w.shape)


def test_winograd4_falls_back_to_2x2_tiles_where_sizes_are_not_multiples_of_4(rng):
  x, w = _draw_winograd_case(rng, tile=2)  # sizes 2 mod 4
  before = _calls()
  y = jax.block_until_ready(_native_op("correlate", 4, padding="SAME")(x, w))
  assert _calls() == {2: before[2] + 1, 4: before[4]}
  assert _rel(y, ops.correlate(x, w, padding="SAME")) < TOLERANCE[2]


def test_correlate_rejects_an_unknown_winograd_tile():
  x, w = jnp.ones((1, 4, 4, 8)), jnp.ones((3, 3, 8, 16))
  spec = correlation.window_spec(x.shape, (3, 3), 1, "SAME", 1)
  for tile in (1, 3):
    with pytest.raises(ValueError, match="tile=.* is not allowed: give one of 0, 2, 4"):
      native.correlate(x, w, spec, tile)


@pytest.mark.parametrize("tile", [2, 4])
def test_winograd_gradients_are_the_same_bits_every_run(rng, tile):
  # The weight gradient sums per-thread partial products: in thread order, not in the order
  # the threads finish, so a resumed run repeats a run's numbers exactly.
  x, w = _draw_winograd_case(rng, tile)
  x = jnp.concatenate([x] * 16)  # enough tiles for every thread to take some
  fast = _native_op("correlate", tile, padding="SAME")
  grad = jax.jit(jax.grad(lambda x, w: jnp.sum(fast(x, w) ** 2), argnums=(0, 1)))
  first = jax.block_until_ready(grad(x, w))
  for _ in range(3):
    for a, b in zip(first, grad(x, w)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_winograd_switched_off_runs_the_direct_algorithm_to_the_same_values(rng):
  x, w = _draw_winograd_case(rng)
  g = jnp.asarray(rng.standard_normal(x.shape[:-1] + w.shape[-1:]), jnp.float32)

  def run(tile):
    def forward_and_vjp(x, w):
      y, vjp = jax.vjp(_native_op("correlate", tile, padding="SAME"), x, w)
      return (y, *vjp(g))
    return jax.block_until_ready(jax.jit(forward_and_vjp)(x, w))

  before = _calls()
  direct = run(0)
  assert _calls() == before
  winograd = run(2)
  assert native.winograd_calls(2) > before[2]
  for a, b in zip(winograd, direct):
    assert _rel(a, b) < 1e-5


@pytest.mark.parametrize("case", ["stride 2", "5x5 kernel", "odd size", "7 input channels",
                                  "8 channels", "VALID", "dilation 2"])
def test_winograd_leaves_other_layers_to_onednn_with_the_same_values(rng, case):
  stride, dilation, padding = (2 if case == "stride 2" else 1), (2 if case == "dilation 2" else
                                                                  1), "SAME"
  if case == "VALID":
    padding = "VALID"
  size = 7 if case == "odd size" else 8
  kernel = 5 if case == "5x5 kernel" else 3
  # (16 input and 8 output channels would run the input gradient, 8 -> 16, as Winograd.)
  c_in = {"7 input channels": 7, "8 channels": 8}.get(case, 16)
  c_out = 8 if case == "8 channels" else 16
  x = jnp.asarray(rng.standard_normal((2, size, size, c_in)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((kernel, kernel, c_in, c_out)), jnp.float32)
  kwargs = dict(stride=stride, dilation=dilation, padding=padding)
  fast = _native_op("correlate", 4, **kwargs)
  before = _calls()
  y, vjp = jax.vjp(fast, x, w)
  g = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
  got = jax.block_until_ready((y, *vjp(g)))
  assert _calls() == before, case  # the library's own check agrees
  spec = correlation.window_spec(x.shape, (kernel, kernel), stride, padding, dilation)
  assert native.conv_tile(native.Kernels(True, "auto_winograd4"), x, w, spec) == 0, case
  with pytest.raises(ValueError, match="conv_algorithm='winograd2' does not apply to a "):
    native.conv_tile(native.Kernels(True, "winograd2"), x, w, spec)
  y_ref, vjp_ref = jax.vjp(lambda x, w: ops.correlate(x, w, **kwargs), x, w)
  for a, b in zip(got, (y_ref, *vjp_ref(g))):
    assert _rel(a, b) < 1e-5, case


@pytest.mark.parametrize("tile", [2, 4])
def test_winograd_second_order_gradients_equal_xla(rng, tile):
  # As test_second_order_gradients_equal_xla, on a layer Winograd takes: the VJPs of the
  # input and weight gradients are forward / weight-gradient calls on the same geometry.
  x, w = _draw_winograd_case(rng, tile)

  def second(namespace):
    def loss(x, w):
      y = namespace.correlate(x, w, padding="SAME")
      return jnp.sum(y * jnp.tanh(y))

    def energy(x, w):
      dx, dw = jax.grad(loss, argnums=(0, 1))(x, w)
      return jnp.sum(dx ** 2) + jnp.sum(dw ** 2)
    return jax.jit(jax.grad(energy, argnums=(0, 1)))(x, w)

  before = native.winograd_calls(tile)
  got = jax.block_until_ready(second(_NativeNamespace(tile)))
  assert native.winograd_calls(tile) > before
  for a, b in zip(got, second(ops)):
    assert _rel(a, b) < SECOND_ORDER_TOLERANCE[tile], x.shape


def test_resolve_takes_native_only_where_it_can_run_and_says_why_not():
  assert native.resolve("auto", grad="hand") == native.Kernels(True, "auto", strict=False)
  assert native.resolve("native", "direct", grad="hand") == native.Kernels(True, "direct", True)
  assert native.resolve("xla", grad="hand") == native.XLA
  assert native.resolve("auto", grad="autodiff") == native.XLA
  # The FFI call is not partitioned: a mesh of several devices keeps XLA's convolutions.
  assert native.resolve("auto", grad="hand", num_devices=2) == native.XLA
  with pytest.raises(ValueError, match="kernels='native' cannot run: 2 devices"):
    native.resolve("native", grad="hand", num_devices=2)
  with pytest.raises(ValueError, match="kernels='native' cannot run: grad='autodiff'"):
    native.resolve("native", grad="autodiff")


def test_auto_without_the_library_says_once_that_xla_runs(monkeypatch, capsys):
  """A library that is not built makes ``auto`` fall back to XLA (slower, same numbers): the
  user is told in one line, once per process; an explicit ``xla`` says nothing."""
  from cnn_jax.native import choice, ffi  # pylint: disable=g-import-not-at-top
  reason = "the native library is not built (a reason drawn for this test)"
  monkeypatch.setattr(ffi, "load_failure", lambda: reason)
  choice._say_once.cache_clear()  # pylint: disable=protected-access
  assert native.resolve("xla", grad="hand") == native.XLA
  assert capsys.readouterr().err == ""
  for _ in range(2):
    assert native.resolve("auto", grad="hand") == native.XLA
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "kernels='auto' runs XLA's convolutions" in err
  assert reason in err
  with pytest.raises(ValueError, match="kernels='native' cannot run: the native library"):
    native.resolve("native", grad="hand")
  choice._say_once.cache_clear()  # pylint: disable=protected-access


def test_conv_tile_picks_winograd_by_the_algorithm(rng):
  x, w = _draw_winograd_case(rng, tile=4)  # sizes multiples of 4: both tiles apply
  spec = correlation.window_spec(x.shape, (3, 3), 1, "SAME", 1)
  fixed = [a for a in native.CONV_ALGORITHMS if not a.startswith("autotune")]  # test_autotune
  tiles = {a: native.conv_tile(native.Kernels(True, a), x, w, spec) for a in fixed}
  assert tiles == {"auto": 2, "auto_winograd4": 4, "direct": 0, "winograd2": 2, "winograd4": 4}
  assert native.conv_tile(native.XLA, x, w, spec) is None


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_materialize_is_the_identity_in_value_and_derivatives(rng, dtype):
  shape = tuple(int(n) for n in rng.integers(1, 7, int(rng.integers(1, 5))))
  x, t, c = (jnp.asarray(rng.standard_normal(shape), dtype) for _ in range(3))
  assert "CnnJaxMaterialize" in str(jax.make_jaxpr(native.materialize)(x))
  # Exact equality: an identity moves bits, it rounds nothing.
  np.testing.assert_array_equal(jax.jit(native.materialize)(x), x)
  _, tangent = jax.jvp(native.materialize, (x,), (t,))
  np.testing.assert_array_equal(tangent, t)
  grad = jax.jit(jax.grad(lambda x: jnp.sum(native.materialize(x) * c)))(x)
  np.testing.assert_array_equal(grad, c)
  stacked = jnp.stack([x, t])
  np.testing.assert_array_equal(jax.vmap(native.materialize)(stacked), stacked)


def _residual_chain(x, kernels, store):
  """``x_{k+1} = relu(conv(x_k) / 2 + x_k)``: each ``x_k`` feeds a call and a fusion."""
  for w in kernels:
    x = jax.nn.relu(hand.correlate(x, w, padding="SAME") * 0.5 + x)
    if store:
      x = native.materialize(x)
  return x


def test_materialize_stops_xla_recomputing_a_residual_stream(rng):
  steps, channels = int(rng.integers(3, 8)), int(rng.integers(1, 9))
  x = jnp.asarray(rng.standard_normal((2, 6, 6, channels)), jnp.float32)
  kernels = [jnp.asarray(rng.standard_normal((3, 3, channels, channels)), jnp.float32)
             for _ in range(steps)]
  adds = {}
  for store in (False, True):
    fn = jax.jit(lambda x, kernels, store=store: _residual_chain(x, kernels, store))
    adds[store] = fn.lower(x, kernels).compile().as_text().count(" add(")
    # Same values either way (the same float32 ops in the same order).
    np.testing.assert_array_equal(fn(x, kernels), _residual_chain(x, kernels, False))
  # Stored, each step's add is compiled once; fused, XLA recomputes x_k inside every later
  # step's fusion, so step k holds k adds: steps * (steps + 1) / 2 in all.
  assert adds[True] == steps, adds
  assert adds[False] == steps * (steps + 1) // 2, adds


@pytest.mark.parametrize("grad,kernels", [("hand", "auto"), ("hand", "xla"),
                                          ("autodiff", "auto")])
def test_native_resnet_stores_each_block_output(grad, kernels):
  from cnn_jax.models import resnet  # pylint: disable=g-import-not-at-top
  model = resnet.ResNet(num_classes=3, depth=14, grad=grad,  # 3 stages of 2 blocks
                        kernels=native.resolve(kernels, grad=grad))
  x = jnp.ones((2, 8, 8, 3))
  variables = model.init(jax.random.key(0), x)
  jaxpr = str(jax.make_jaxpr(lambda v: model.apply(v, x, train=True,
                                                   mutable=["batch_stats"]))(variables))
  assert jaxpr.count("CnnJaxMaterialize") == (6 if model.kernels.native else 0)


def _activations(rng, channels):
  """A float32 activation with per-channel offsets and spreads (so centring matters)."""
  shape = (tuple(int(n) for n in rng.integers(1, 9, int(rng.integers(1, 4))))
           + (channels,))
  x = rng.normal(rng.uniform(-3, 3, channels), rng.uniform(0.3, 3, channels),
                 (int(rng.integers(1, 40)),) + shape)
  return x.astype(np.float32)


def test_channel_sums_equal_float64_sums(rng):
  channels = 8 * int(rng.integers(1, 9))
  x = _activations(rng, channels)
  g = rng.normal(size=x.shape).astype(np.float32)
  assert native.sums_apply(jnp.asarray(x))
  mean, var = jax.jit(native.channel_moments)(x)
  sum_g, sum_g_centred = jax.jit(native.channel_grad_sums)(g, x, mean)
  x64, g64 = (a.reshape(-1, channels).astype(np.float64) for a in (x, g))
  mean64 = np.asarray(mean, np.float64)  # the centring point the kernel was given
  # float32 sums over blocks of 256 rows, float64 across blocks: ~sqrt(256) * 6e-8 = 1e-6 of
  # the sum of magnitudes at worst, 2e-6 of each sum's scale leaves a 2x margin.
  for got, want, scale in [
      (mean, x64.mean(0), np.abs(x64).mean(0)),
      (var, x64.var(0), x64.var(0)),
      (sum_g, g64.sum(0), np.abs(g64).sum(0)),
      (sum_g_centred, (g64 * (x64 - mean64)).sum(0), np.abs(g64 * (x64 - mean64)).sum(0))]:
    np.testing.assert_array_less(np.abs(np.asarray(got, np.float64) - want), 2e-6 * scale)


def test_hand_batch_norm_takes_the_channel_sums_in_float32_and_equals_autodiff(rng):
  channels = 8 * int(rng.integers(1, 5))
  x = jnp.asarray(_activations(rng, channels))
  scale, bias = (jnp.asarray(rng.normal(size=channels), jnp.float32) for _ in range(2))
  g = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  fast = lambda x, s, b: hand.batch_norm(x, s, b, sums=native.CHANNEL_SUMS)[0]
  reference = lambda x, s, b: ops.batch_norm(x, s, b)[0]
  jaxpr = str(jax.make_jaxpr(lambda *a: jax.vjp(fast, *a)[1](g))(x, scale, bias))
  assert "CnnJaxChannelMoments" in jaxpr and "CnnJaxChannelGradSums" in jaxpr
  y, vjp = jax.vjp(fast, x, scale, bias)
  y_ref, vjp_ref = jax.vjp(reference, x, scale, bias)
  # float32, the same formula with sums in another order: ~1e-6 relative; 1e-5 of the largest
  # entry leaves a 10x margin (as the convolutions' tests).
  for got, want in zip((y,) + vjp(g), (y_ref,) + vjp_ref(g)):
    assert _rel(got, want) < 1e-5
  # Second order (the sums' derivatives are jnp sums): a Hessian-vector product of
  # <g, bn(x)>^2 against autodiff, three chained sums: 1e-4.
  v = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  hvp = lambda f: jax.grad(lambda x: jnp.vdot(jax.grad(
      lambda x: jnp.vdot(g, f(x, scale, bias)) ** 2)(x), v))(x)
  assert _rel(hvp(fast), hvp(reference)) < 1e-4


@pytest.mark.parametrize("case", ["7 channels", "float64", "not given"])
def test_hand_batch_norm_keeps_its_matmul_sums_elsewhere(rng, case):
  channels = 7 if case == "7 channels" else 16
  x = jnp.asarray(_activations(rng, channels), jnp.float32)
  scale, bias = jnp.ones(channels), jnp.zeros(channels)
  sums = None if case == "not given" else native.CHANNEL_SUMS
  fn = lambda x: jax.grad(lambda x: hand.batch_norm(x, scale, bias, sums=sums)[0].sum())(x)
  if case == "float64":
    with jax.enable_x64(True):
      jaxpr = str(jax.make_jaxpr(fn)(x.astype(jnp.float64)))
  else:
    jaxpr = str(jax.make_jaxpr(fn)(x))
  assert "CnnJaxChannel" not in jaxpr
