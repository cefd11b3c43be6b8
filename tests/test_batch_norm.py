"""Batch normalisation: the pure op, its hand-written VJP, and the Flax layer over them."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import layers, ops
from cnn_jax.ops import hand
from cnn_jax.ops.hand import normalization as hand_normalization


def _inputs(rng, shape, dtype=np.float64):
  # Mean away from 0 and a spread unlike 1, so that centring and scaling both matter.
  x = rng.normal(loc=rng.uniform(-2, 2), scale=rng.uniform(0.5, 3), size=shape)
  scale, bias = rng.normal(size=shape[-1]), rng.normal(size=shape[-1])
  return (jnp.asarray(x, dtype), jnp.asarray(scale, dtype), jnp.asarray(bias, dtype))


@pytest.mark.parametrize("shape", [(5, 3), (4, 7, 2), (3, 6, 5, 4), (2, 3, 4, 5, 3)])
def test_reference_normalises_each_channel_over_batch_and_positions(rng, shape):
  epsilon = float(rng.uniform(1e-5, 1e-2))
  with jax.enable_x64(True):
    x, scale, bias = _inputs(rng, shape)
    y, mean, var = ops.batch_norm(x, scale, bias, epsilon=epsilon)
  flat = np.asarray(x).reshape(-1, shape[-1])  # NumPy, not the op: every channel's entries
  # float64 throughout: only rounding separates the two computations.
  np.testing.assert_allclose(mean, flat.mean(0), rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(var, flat.var(0), rtol=1e-12)
  want = ((flat - flat.mean(0)) / np.sqrt(flat.var(0) + epsilon) * np.asarray(scale)
          + np.asarray(bias))
  np.testing.assert_allclose(np.asarray(y).reshape(-1, shape[-1]), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", [(6, 5, 3), (3, 8, 8, 16), (5, 7, 3, 40), (2, 3, 300)])
def test_channel_sum_as_a_matmul_is_the_sum_over_all_but_the_channels(rng, shape):
  # Shapes where the fold width does not divide the positions (5*7*3 positions), C above
  # the 256-wide row (300), and the ResNet-like 16 channels (16 positions per row).
  with jax.enable_x64(True):
    a = jnp.asarray(rng.normal(size=shape))
    got = hand_normalization.channel_sum(a)
  # float64 sums of O(100) unit normals: a different summation order differs by ~1e-15.
  np.testing.assert_allclose(got, np.asarray(a).reshape(-1, shape[-1]).sum(0), atol=1e-12)


@pytest.mark.parametrize("shape", [(8, 4, 4, 16), (3, 5, 7, 3)])
def test_hand_vjp_equals_autodiff_of_the_reference_for_every_output(rng, shape):
  # Cotangents for y and for the returned mean and var, so every term of the VJP is used.
  with jax.enable_x64(True):
    args = _inputs(rng, shape)
    cotangents = (jnp.asarray(rng.normal(size=shape)),
                  jnp.asarray(rng.normal(size=shape[-1])), jnp.asarray(rng.normal(size=shape[-1])))
    outs_hand, vjp_hand = jax.vjp(lambda *a: hand.batch_norm(*a, epsilon=1e-3), *args)
    outs_ref, vjp_ref = jax.vjp(lambda *a: ops.batch_norm(*a, epsilon=1e-3), *args)
    for got, want in zip(outs_hand + vjp_hand(cotangents), outs_ref + vjp_ref(cotangents)):
      # float64: same sums in another order, ~1e-15 relative.
      np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12 * float(jnp.max(abs(want))))


@pytest.mark.parametrize("op", [ops.batch_norm, hand.batch_norm])
@pytest.mark.parametrize("x_shape,scale_shape,epsilon,match", [
    ((4, 3), (4,), 1e-5, r"scale must have shape \(3,\)"),
    ((4, 5, 3), (3,), 0.0, "epsilon must be > 0"),
    ((7,), (7,), 1e-5, r"needs x of shape \(N, ..., C\)"),
])
def test_bad_arguments_get_one_line_errors_before_tracing(op, x_shape, scale_shape, epsilon,
                                                          match):
  x, scale = jnp.zeros(x_shape), jnp.ones(scale_shape)
  with pytest.raises(ValueError, match=match) as error:
    op(x, scale, jnp.zeros(scale_shape), epsilon=epsilon)
  assert "\n" not in str(error.value)


@pytest.mark.parametrize("grad", ["autodiff", "hand"])
def test_layer_has_flax_batch_norm_variables_values_and_running_averages(rng, grad):
  # The layer must read and write the same checkpoints as flax.linen.BatchNorm and compute
  # the same function in training and in eval mode.
  x = jnp.asarray(rng.normal(loc=1.0, scale=2.0, size=(16, 5, 5, 8)), jnp.float32)
  ours = layers.BatchNorm(momentum=0.9, epsilon=1e-5, grad=grad)
  theirs = nn.BatchNorm(momentum=0.9, epsilon=1e-5)
  variables = ours.init(jax.random.key(0), x, use_running_average=False)
  reference = theirs.init(jax.random.key(0), x, use_running_average=False)
  assert (jax.tree.map(lambda a: (a.shape, a.dtype), variables)
          == jax.tree.map(lambda a: (a.shape, a.dtype), reference))
  # Give the params random values, so a swapped scale/bias would show.
  params = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), a.dtype),
                        variables["params"])
  variables = {"params": params, "batch_stats": variables["batch_stats"]}
  y, updates = ours.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
  y_ref, updates_ref = theirs.apply(variables, x, use_running_average=False,
                                    mutable=["batch_stats"])
  # float32 over 200 entries per channel, flax's E[x²]-E[x]² against a two-pass variance:
  # ~1e-6 relative; 2e-5 leaves room for the cancellation at mean/std = 0.5.
  np.testing.assert_allclose(y, y_ref, rtol=2e-5, atol=2e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6),
               updates, updates_ref)
  assert not np.allclose(updates["batch_stats"]["mean"], 0.0)  # it did move
  evaluated = {"params": params, **updates}
  np.testing.assert_allclose(ours.apply(evaluated, x, use_running_average=True),
                             theirs.apply(evaluated, x, use_running_average=True),
                             rtol=1e-5, atol=1e-5)


def test_hand_layer_gradients_equal_autodiff_in_a_small_network(rng):
  # conv -> BN -> relu -> BN -> <w, .>: the BN's VJP feeds another BN's and a conv's. In
  # float64: a BN's input gradient is a difference of nearly equal terms (the part along the
  # batch mean and along x̂ is removed), so float32 would compare rounding noise.
  class Net(nn.Module):
    grad: str

    @nn.compact
    def __call__(self, x):
      x = layers.Conv(8, 3, padding="SAME", use_bias=False, grad=self.grad,
                      dtype=jnp.float64)(x)
      x = nn.relu(layers.BatchNorm(use_running_average=False, grad=self.grad)(x))
      return layers.BatchNorm(use_running_average=False, grad=self.grad)(x)

  with jax.enable_x64(True):
    x = jnp.asarray(rng.normal(size=(8, 6, 6, 3)))
    w = jnp.asarray(rng.normal(size=(8, 6, 6, 8)))
    variables = Net("autodiff").init(jax.random.key(int(rng.integers(2 ** 31))), x)
    variables = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)

    def grads(grad):
      def loss(params):
        y, _ = Net(grad).apply({**variables, "params": params}, x, mutable=["batch_stats"])
        return jnp.vdot(w, y)
      return jax.grad(loss)(variables["params"])

    # float64, the same sums in another order. The kernel's gradient is a small difference of
    # O(1-10) terms (a BN removes its input's mean), so rounding shows as an absolute error
    # of ~1e-14 (float64 eps 2e-16 x a few hundred terms x their size): atol 1e-11.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11),
                 grads("hand"), grads("autodiff"))


def test_hand_layer_in_bfloat16_keeps_float32_statistics_and_rounds_only_at_the_end(rng):
  # Mixed precision: bfloat16 activations in and out, statistics and parameter gradients in
  # float32. Against the float32 computation on the same (bfloat16-valued) input, only the
  # final roundings to bfloat16 differ: 8-bit mantissa, relative 2^-9 per entry; 2^-7 of the
  # largest entry leaves room for a few roundings and is far below any formula error.
  x = jnp.asarray(rng.normal(loc=0.7, scale=1.5, size=(16, 4, 4, 8)), jnp.bfloat16)
  w = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  layer = layers.BatchNorm(use_running_average=False, grad="hand", dtype=jnp.bfloat16)
  variables = layer.init(jax.random.key(0), x)
  params = {"scale": jnp.asarray(rng.normal(size=8), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=8), jnp.float32)}

  def loss(params, x, module):
    y, updates = module.apply({"params": params, **{k: v for k, v in variables.items()
                                                    if k != "params"}},
                              x, mutable=["batch_stats"])
    return jnp.vdot(w, y.astype(jnp.float32)), (y, updates)

  (_, (y, updates)), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
      params, x, layer)
  reference = layers.BatchNorm(use_running_average=False, grad="autodiff", dtype=jnp.float32)
  (_, (y_ref, updates_ref)), grads_ref = jax.value_and_grad(
      loss, argnums=(0, 1), has_aux=True)(params, x.astype(jnp.float32), reference)
  assert y.dtype == jnp.bfloat16 and grads[1].dtype == jnp.bfloat16
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves((updates, grads[0])))
  # y and dL/dx are rounded to bfloat16 on the way out; the cotangent of y arrives rounded to
  # bfloat16 too (the VJP of the layer's cast), so the parameter gradients see that rounding.
  for got, want in [(y, y_ref), (grads[1], grads_ref[1]), (grads[0]["scale"],
                    grads_ref[0]["scale"]), (grads[0]["bias"], grads_ref[0]["bias"])]:
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert np.max(np.abs(got - want)) <= 2 ** -7 * np.max(np.abs(want))
  # The statistics see the same input values in float32: float32 rounding only (~1e-6).
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               updates, updates_ref)


_SHARDED_SCRIPT = r"""
import json, sys
import chex
chex.set_n_cpu_devices(4)  # fake CPU devices: before JAX's backend starts
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
from cnn_jax.ops import hand
rng = np.random.default_rng(int(sys.argv[1]))
x = jnp.asarray(rng.normal(loc=0.5, scale=2.0, size=(8, 6, 6, 16)))
w = jnp.asarray(rng.normal(size=x.shape))
scale, bias = jnp.asarray(rng.normal(size=(2, 16)))
def loss(x, s, b):
  y, mean, var = hand.batch_norm(x, s, b)
  return jnp.vdot(w, y) + jnp.vdot(mean, var)
fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
sharded = jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))
hlo = fn.lower(sharded, scale, bias).compile().as_text()
(l1, g1), (l4, g4) = fn(x, scale, bias), fn(sharded, scale, bias)
diff = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
           for a, b in zip((l4, *g4), (l1, *g1)))
print(json.dumps({"devices": len(jax.devices()), "all_reduce": "all-reduce" in hlo,
                  "x_grad_sharded": len(g4[0].sharding.device_set), "rel_diff": diff}))
"""


def test_hand_batch_norm_on_a_batch_sharded_over_four_devices_matches_one_device(rng):
  # The trainer shards the batch over every device; the channel sums, matmuls over rows of
  # the merged (batch, positions) axis, must then become per-device sums and an all-reduce.
  # In another process: fake CPU devices only exist if set before JAX's backend starts.
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  done = subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT, str(rng.integers(2 ** 31))],
                        cwd=repo, capture_output=True, text=True, timeout=300, check=True)
  result = json.loads(done.stdout.strip().splitlines()[-1])
  assert result["devices"] == 4 and result["all_reduce"] and result["x_grad_sharded"] == 4
  # float64, the same sums split over devices: rounding only (~1e-15).
  assert result["rel_diff"] < 1e-12
