"""oneDNN's convolutions through XLA's FFI (cnn_jax.ops.onednn), and the Winograd F(2x2, 3x3)
kernels behind the same handlers (cnn_jax/ops/winograd_f2x3.h), against XLA's convolutions.

Tolerances: the two libraries sum the same float32 products in different orders, so results
differ by rounding, ~1e-7 relative per sum; a sum of up to 5*5*8 = 200 products of unit-scale
terms stays within ~1e-6 of the largest entry. 1e-5 relative to the largest entry leaves a
10x margin (second order: three convolutions chained, 3e-5). Winograd adds the transforms'
rounding: each transformed value is a signed sum of at most 16 inputs or 9 kernel taps
(coefficients 1 and 1/2, exact in float32), so it carries a few ulps more than a direct sum;
measured here 2e-7 to 6e-7 of the largest entry for 16-48 channels, under the same 1e-5.
"""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import ops
from cnn_jax.ops import hand, onednn
from cnn_jax.train import steps as steps_lib

pytestmark = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None,
    reason="no C++ compiler: the oneDNN library cannot be built here (XLA's convolutions run)")


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


def test_library_builds_loads_and_is_switched_off_by_the_environment(monkeypatch):
  assert onednn.unavailable_reason() is None, onednn.unavailable_reason()
  monkeypatch.setenv(onednn.DISABLE_VARIABLE, "0")
  assert "switched off" in onednn.unavailable_reason()
  x, w = jnp.ones((1, 5, 5, 2)), jnp.ones((3, 3, 2, 3))
  assert not _uses_onednn(lambda x, w: hand.correlate(x, w), x, w)


def test_build_without_a_compiler_says_what_is_missing_in_one_line(monkeypatch):
  monkeypatch.setattr(onednn.shutil, "which", lambda name: None)
  built, message = onednn.build()
  assert not built
  assert "no C++ compiler" in message and "\n" not in message


@pytest.mark.parametrize("num_dims", [1, 2])
@pytest.mark.parametrize("op", ["correlate", "convolve"])
def test_forward_and_both_gradients_equal_xla(rng, num_dims, op):
  for _ in range(4):
    x, w, kwargs = _draw_case(rng, num_dims)
    fast = lambda x, w: getattr(hand, op)(x, w, **kwargs)
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

  for got, want in zip(second(hand), second(ops)):
    assert _rel(got, want) < 3e-5, kwargs


def test_vmap_and_jit_equal_xla(rng):
  x = jnp.asarray(rng.standard_normal((3, 2, 9, 9, 4)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 4, 5)), jnp.float32)
  fast = jax.jit(jax.vmap(lambda x: hand.correlate(x, w, stride=2, padding="SAME")))
  reference = jax.vmap(lambda x: ops.correlate(x, w, stride=2, padding="SAME"))
  assert _rel(fast(x), reference(x)) < 1e-5


@pytest.mark.parametrize("case", ["groups", "circular", "bfloat16", "3-D", "switched off"])
def test_other_convolutions_stay_on_xla_with_the_same_values(rng, case):
  num_dims = 3 if case == "3-D" else 2
  dtype = jnp.bfloat16 if case == "bfloat16" else jnp.float32
  x = jnp.asarray(rng.standard_normal((2,) + (6,) * num_dims + (4,)), dtype)
  w = jnp.asarray(rng.standard_normal((3,) * num_dims + ((2,) if case == "groups" else (4,))
                                      + (6,)), dtype)
  kwargs = dict(padding="CIRCULAR" if case == "circular" else "SAME",
                groups=2 if case == "groups" else 1)
  fast = lambda x, w: hand.correlate(x, w, **kwargs)
  with onednn.use(case != "switched off"):
    assert not _uses_onednn(fast, x, w)
    y = fast(x, w)
  # Same function as the reference: equal up to rounding (bfloat16: 8 mantissa bits).
  tolerance = 2e-2 if case == "bfloat16" else 1e-5
  assert _rel(y.astype(jnp.float32), ops.correlate(x, w, **kwargs).astype(jnp.float32)) < tolerance


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
  return {tile: onednn.winograd_calls(tile) for tile in (2, 4)}


@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("op", ["correlate", "convolve"])
def test_winograd_runs_the_stride1_3x3_layers_and_equals_xla(rng, op, tile):
  for _ in range(3):
    x, w = _draw_winograd_case(rng, tile)
    fast = lambda x, w: getattr(hand, op)(x, w, padding="SAME")
    reference = lambda x, w: getattr(ops, op)(x, w, padding="SAME")
    before = _calls()
    with onednn.use(True, winograd=tile):
      y, vjp = jax.vjp(fast, x, w)
      g = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
      got = jax.block_until_ready((y, *vjp(g)))
    # Forward and weight gradient always; the input gradient (a correlation from c_out
    # channels to c_in) when c_in is a multiple of 16 as well.
    ran = {t: onednn.winograd_calls(t) - before[t] for t in (2, 4)}
    expected = 3 if x.shape[-1] % 16 == 0 else 2
    assert ran == {2: expected if tile == 2 else 0, 4: expected if tile == 4 else 0}, x.shape
    y_ref, vjp_ref = jax.vjp(reference, x, w)
    for name, a, b in zip(("y", "dx", "dw"), got, (y_ref, *vjp_ref(g))):
      assert _rel(a, b) < TOLERANCE[tile], (name, x.shape, w.shape)


def test_winograd4_falls_back_to_2x2_tiles_where_sizes_are_not_multiples_of_4(rng):
  x, w = _draw_winograd_case(rng, tile=2)  # sizes 2 mod 4
  before = _calls()
  with onednn.use(True, winograd=4):
    y = jax.block_until_ready(hand.correlate(x, w, padding="SAME"))
  assert _calls() == {2: before[2] + 1, 4: before[4]}
  assert _rel(y, ops.correlate(x, w, padding="SAME")) < TOLERANCE[2]


def test_use_rejects_an_unknown_winograd_tile():
  for tile in (1, 3, True):
    with pytest.raises(ValueError, match="winograd=.* is not allowed: give one of 0, 2, 4"):
      with onednn.use(True, winograd=tile):
        pass


@pytest.mark.parametrize("tile", [2, 4])
def test_winograd_gradients_are_the_same_bits_every_run(rng, tile):
  # The weight gradient sums per-thread partial products: in thread order, not in the order
  # the threads finish, so a resumed run repeats a run's numbers exactly.
  x, w = _draw_winograd_case(rng, tile)
  x = jnp.concatenate([x] * 16)  # enough tiles for every thread to take some
  with onednn.use(True, winograd=tile):
    grad = jax.jit(jax.grad(lambda x, w: jnp.sum(hand.correlate(x, w, padding="SAME") ** 2),
                            argnums=(0, 1)))
    first = jax.block_until_ready(grad(x, w))
    for _ in range(3):
      for a, b in zip(first, grad(x, w)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_winograd_switched_off_runs_the_direct_algorithm_to_the_same_values(rng):
  x, w = _draw_winograd_case(rng)
  g = jnp.asarray(rng.standard_normal(x.shape[:-1] + w.shape[-1:]), jnp.float32)

  def run():  # a new function each time: jax.jit caches traces by function, not by context
    def forward_and_vjp(x, w):
      y, vjp = jax.vjp(lambda x, w: hand.correlate(x, w, padding="SAME"), x, w)
      return (y, *vjp(g))
    return jax.block_until_ready(jax.jit(forward_and_vjp)(x, w))

  with onednn.use(True, winograd=0):
    before = _calls()
    direct = run()
  assert _calls() == before
  winograd = run()
  assert onednn.winograd_calls(2) > before[2]
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
  fast = lambda x, w: hand.correlate(x, w, **kwargs)
  before = _calls()
  with onednn.use(True, winograd=4):
    y, vjp = jax.vjp(fast, x, w)
    g = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
    got = jax.block_until_ready((y, *vjp(g)))
  assert _calls() == before, case
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

  before = onednn.winograd_calls(tile)
  with onednn.use(True, winograd=tile):
    got = jax.block_until_ready(second(hand))
  assert onednn.winograd_calls(tile) > before
  for a, b in zip(got, second(ops)):
    assert _rel(a, b) < SECOND_ORDER_TOLERANCE[tile], x.shape


def test_trainer_takes_onednn_only_when_asked_on_one_device():
  assert steps_lib.uses_onednn("onednn", 1)
  assert steps_lib.uses_onednn("onednn_direct", 1)
  assert steps_lib.uses_onednn("onednn_winograd4", 1)
  assert [steps_lib.winograd_tile(c) for c in ("onednn", "onednn_winograd4", "onednn_direct",
                                               "eigen")] == [2, 4, 0, 0]
  assert not steps_lib.uses_onednn("eigen", 1)
  assert not steps_lib.uses_onednn("xla_default", 1)
  # The FFI call is not partitioned: a mesh of several devices keeps XLA's convolutions.
  assert not steps_lib.uses_onednn("onednn", 2)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_materialize_is_the_identity_in_value_and_derivatives(rng, dtype):
  shape = tuple(int(n) for n in rng.integers(1, 7, int(rng.integers(1, 5))))
  x, t, c = (jnp.asarray(rng.standard_normal(shape), dtype) for _ in range(3))
  assert "CnnJaxMaterialize" in str(jax.make_jaxpr(onednn.materialize)(x))
  # Exact equality: an identity moves bits, it rounds nothing.
  np.testing.assert_array_equal(jax.jit(onednn.materialize)(x), x)
  _, tangent = jax.jvp(onednn.materialize, (x,), (t,))
  np.testing.assert_array_equal(tangent, t)
  grad = jax.jit(jax.grad(lambda x: jnp.sum(onednn.materialize(x) * c)))(x)
  np.testing.assert_array_equal(grad, c)
  stacked = jnp.stack([x, t])
  np.testing.assert_array_equal(jax.vmap(onednn.materialize)(stacked), stacked)
  with onednn.use(False):  # a new function: traces are cached by function, not by context
    assert "CnnJaxMaterialize" not in str(jax.make_jaxpr(lambda x: onednn.materialize(x))(x))


def _residual_chain(x, kernels, store):
  """``x_{k+1} = relu(conv(x_k) / 2 + x_k)``: each ``x_k`` feeds a call and a fusion."""
  for w in kernels:
    x = jax.nn.relu(hand.correlate(x, w, padding="SAME") * 0.5 + x)
    if store:
      x = onednn.materialize(x)
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


@pytest.mark.parametrize("grad", ["hand", "autodiff"])
def test_hand_resnet_stores_each_block_output(grad):
  from cnn_jax.models import resnet  # pylint: disable=g-import-not-at-top
  model = resnet.ResNet(num_classes=3, depth=14, grad=grad)  # 3 stages of 2 blocks
  x = jnp.ones((2, 8, 8, 3))
  variables = model.init(jax.random.key(0), x)
  jaxpr = str(jax.make_jaxpr(lambda v: model.apply(v, x, train=True,
                                                   mutable=["batch_stats"]))(variables))
  assert jaxpr.count("CnnJaxMaterialize") == (6 if grad == "hand" else 0)


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
  assert onednn.sums_apply(jnp.asarray(x))
  mean, var = jax.jit(onednn.channel_moments)(x)
  sum_g, sum_g_centred = jax.jit(onednn.channel_grad_sums)(g, x, mean)
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
  fast = lambda x, s, b: hand.batch_norm(x, s, b)[0]
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


@pytest.mark.parametrize("case", ["7 channels", "float64", "switched off"])
def test_hand_batch_norm_keeps_its_matmul_sums_elsewhere(rng, case):
  channels = 7 if case == "7 channels" else 16
  x = jnp.asarray(_activations(rng, channels), jnp.float32)
  scale, bias = jnp.ones(channels), jnp.zeros(channels)
  fn = lambda x: jax.grad(lambda x: hand.batch_norm(x, scale, bias)[0].sum())(x)
  if case == "float64":
    with jax.enable_x64(True):
      jaxpr = str(jax.make_jaxpr(fn)(x.astype(jnp.float64)))
  elif case == "switched off":
    with onednn.use(False):
      jaxpr = str(jax.make_jaxpr(fn)(x))
  else:
    jaxpr = str(jax.make_jaxpr(fn)(x))
  assert "CnnJaxChannel" not in jaxpr
