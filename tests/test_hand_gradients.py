"""Hand-written VJPs (cnn_jax.ops.hand) against autodiff, finite differences and by hand."""

import functools
import inspect
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import test_util as jtu

from cnn_jax import ops
from cnn_jax.analysis import gradcheck
from cnn_jax.ops import correlation, hand
from cnn_jax.ops.hand import correlation as hand_correlation
from experiments import gradcheck as gradcheck_experiment
from experiments.configs import gradcheck as gradcheck_config

OP_NAMES = ("correlate", "convolve", "locally_connected", "max_pool", "avg_pool",
            "weighted_avg_pool", "lp_pool", "global_avg_pool", "global_max_pool", "batch_norm",
            "output_size", "gaussian_window", "flip_kernel")


def _rel(a, b):
  return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


def test_quick_grid_passes_and_experiment_writes_tables(rng, tmp_path):
  # The gradcheck grid of the test suite: every op, 1-D/2-D/3-D, every padding mode, strides
  # that do not divide, dilation, groups, depthwise, 1x1; first order against autodiff and
  # central FD, second order against autodiff (tolerances in gradcheck.TOLERANCES).
  config = gradcheck_config.get_config()
  config.grid = "quick"
  config.seed = int(rng.integers(2 ** 31))
  summary = gradcheck_experiment.run(config, str(tmp_path))
  failed = [(r["op"], r["shapes"], r["padding"], r["err_autodiff"], r["err_fd"],
             r["err_second"], r["note"]) for r in summary["failed"]]
  assert summary["ok"], failed
  assert summary["num_rows"] == len(gradcheck.quick_grid()) == len(summary["rows"])
  assert {r["op"].split("(")[0] for r in summary["rows"]} == set(OP_NAMES[:10])
  assert all(r["second_order_ok"] for r in summary["rows"])
  table = (tmp_path / "gradcheck.md").read_text()
  hand_table, native_table = table.split("\n## Native kernels")
  assert "all rows pass" in table and hand_table.count("\n| ") == summary["num_rows"] + 1
  # The native rows (cnn_jax/native/tests/test_gradcheck_rows.py checks their content).
  assert native_table.count("\n| ") == (len(summary["native_rows"]) + 1
                                        if summary["native_rows"] else 0)
  csv_lines = (tmp_path / "gradcheck.csv").read_text().strip().splitlines()
  assert len(csv_lines) == summary["num_rows"] + 1


@pytest.mark.skipif(not os.environ.get("CNN_JAX_FULL_TESTS"),
                    reason="full gradcheck grid (~485 rows, tens of minutes): make test-full")
def test_full_grid_passes(rng):
  rows = gradcheck.run_grid("full", int(rng.integers(2 ** 31)))
  failed = [(r["op"], r["shapes"], r["padding"], r["err_autodiff"], r["err_fd"],
             r["err_second"], r["note"]) for r in rows if not r["passed"]]
  assert not failed, failed


def test_bad_grid_is_rejected_before_any_work(tmp_path):
  config = gradcheck_config.get_config()
  config.grid = "huge"
  with pytest.raises(ValueError, match="grid='huge' is not allowed"):
    gradcheck_experiment.run(config, str(tmp_path))
  assert not list(tmp_path.iterdir())


def test_hand_namespace_is_a_drop_in_for_ops():
  # Same parameters, in the same order, with the same defaults; hand may add keyword-only
  # options with defaults (correlate/convolve's weight_method), so any ops call works on it.
  assert ops.for_grad("hand") is hand
  for name in OP_NAMES:
    want = list(inspect.signature(getattr(ops, name)).parameters.values())
    got = list(inspect.signature(getattr(hand, name)).parameters.values())
    assert got[:len(want)] == want, name
    for extra in got[len(want):]:
      assert extra.kind is inspect.Parameter.KEYWORD_ONLY, (name, extra)
      assert extra.default is not inspect.Parameter.empty, (name, extra)


@pytest.mark.parametrize("kwargs", [
    dict(stride=2, padding="SAME", groups=1),
    dict(stride=3, padding="CIRCULAR", dilation=2, groups=2),
    dict(stride=(2, 1), padding=((2, 0), (1, 3)), groups=4),  # depthwise
])
def test_input_and_weight_gradients_float32(rng, kwargs):
  x = jnp.asarray(rng.normal(size=(3, 9, 8, 4)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 4 // kwargs["groups"], 8)), jnp.float32)
  loss = lambda fn, x, w: jnp.sum(jnp.sin(fn(x, w, **kwargs)))
  # jit: one compile per function instead of one per op (much faster on a busy 2-core CPU).
  dx_hand, dw_hand = jax.jit(jax.grad(functools.partial(loss, hand.correlate),
                                      argnums=(0, 1)))(x, w)
  dx_auto, dw_auto = jax.jit(jax.grad(functools.partial(loss, ops.correlate),
                                      argnums=(0, 1)))(x, w)
  # float32 sums of at most a few hundred terms in another order: ~1e-6 relative.
  assert _rel(dx_hand, dx_auto) < 1e-5
  assert _rel(dw_hand, dw_auto) < 1e-5


@pytest.mark.parametrize("num_dims,stride,padding,dilation", [
    (1, 2, "SAME", 1), (2, (2, 3), "CIRCULAR", 1), (2, 1, "FULL", 2), (3, 2, 1, 1)])
def test_weight_sharing_sums_locally_connected_gradients(rng, num_dims, stride, padding,
                                                         dilation):
  # correlate == locally_connected with the same kernel at every position, so the shared
  # kernel's gradient must be the sum over positions of the per-position kernel gradients.
  spatial = (9, 8, 5)[:num_dims]
  kernel = (3, 2, 2)[:num_dims]
  with jax.enable_x64(True):
    x = jnp.asarray(rng.normal(size=(2, *spatial, 3)))
    w = jnp.asarray(rng.normal(size=(*kernel, 3, 4)))
    out = ops.output_size(spatial, kernel, stride, padding, dilation)
    w_local = jnp.broadcast_to(w, out + w.shape)
    g = jnp.asarray(rng.normal(size=(2, *out, 4)))
    kw = dict(stride=stride, padding=padding, dilation=dilation)

    @jax.jit
    def both(x, w, w_local, g):
      y, vjp_shared = jax.vjp(lambda x, w: hand.correlate(x, w, **kw), x, w)
      y_local, vjp_local = jax.vjp(lambda x, w: hand.locally_connected(x, w, **kw), x,
                                   w_local)
      return y, vjp_shared(g), y_local, vjp_local(g)

    y, (dx, dw), y_local, (dx_local, dw_local) = both(x, w, w_local, g)
    # float64, sums of a few dozen terms in different orders: rounding ~1e-15.
    np.testing.assert_allclose(y_local, y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dw_local.sum(axis=tuple(range(num_dims))), dw, rtol=1e-12,
                               atol=1e-12)
    np.testing.assert_allclose(dx_local, dx, rtol=1e-12, atol=1e-12)


def test_worked_example_of_the_docs():
  # docs/gradients.md: x = [1, 2, 3, 4, 5], w = [2, 1, -1], g = [1, -1, 2] (VALID, stride 1).
  x = jnp.array([1.0, 2, 3, 4, 5]).reshape(1, 5, 1)
  w = jnp.array([2.0, 1, -1]).reshape(3, 1, 1)
  g = jnp.array([1.0, -1, 2]).reshape(1, 3, 1)
  y, vjp = jax.vjp(hand.correlate, x, w)
  dx, dw = vjp(g)
  # By hand: y[o] = 2x[o] + x[o+1] - x[o+2]; dw[t] = sum_o x[o+t] g[o];
  # dx[i] = sum_{o+t=i} g[o] w[t]. Small integers: exact in float32.
  np.testing.assert_array_equal(y.ravel(), [1, 3, 5])
  np.testing.assert_array_equal(dw.ravel(), [5, 7, 9])
  np.testing.assert_array_equal(dx.ravel(), [2, -1, 2, 3, -2])


def test_strided_worked_example_leaves_unread_inputs_at_zero():
  # Stride 2, kernel 2 on length 5: x[4] is never read (5 - 2 is odd), so its gradient is 0.
  x = jnp.arange(1.0, 6.0).reshape(1, 5, 1)
  w = jnp.array([2.0, -1.0]).reshape(2, 1, 1)
  g = jnp.array([1.0, 10.0]).reshape(1, 2, 1)
  dx, dw = jax.vjp(lambda x, w: hand.correlate(x, w, stride=2), x, w)[1](g)
  np.testing.assert_array_equal(dx.ravel(), [2, -1, 20, -10, 0])
  np.testing.assert_array_equal(dw.ravel(), [1 * 1 + 3 * 10, 2 * 1 + 4 * 10])


def test_max_pool_tie_rule_gives_the_first_argmax_everything():
  x = jnp.array([[3.0, 3.0], [3.0, 1.0]]).reshape(1, 2, 2, 1)
  grad = jax.grad(lambda x: hand.max_pool(x, 2).sum())(x)
  np.testing.assert_array_equal(grad.reshape(2, 2), [[1, 0], [0, 0]])
  grad = jax.grad(lambda x: hand.global_max_pool(x).sum())(x)
  np.testing.assert_array_equal(grad.reshape(2, 2), [[1, 0], [0, 0]])


def test_overlapping_max_windows_accumulate_on_a_shared_winner():
  # x[2] = 9 wins all three windows of size 3, stride 1, on length 5: it collects 1 + 2 + 3.
  x = jnp.array([1.0, 2, 9, 3, 4]).reshape(1, 5, 1)
  g = jnp.array([1.0, 2, 3]).reshape(1, 3, 1)
  dx = jax.vjp(lambda x: hand.max_pool(x, 3, 1), x)[1](g)[0]
  np.testing.assert_array_equal(dx.ravel(), [0, 0, 6, 0, 0])


@pytest.mark.parametrize("p", [1.0, 2.0, 3.5])
def test_lp_pool_zero_window_has_zero_gradient_not_nan(rng, p):
  x = rng.normal(size=(2, 6, 6, 3))
  x[:, :2, :2, :] = 0.0  # whole windows of zeros
  x = jnp.asarray(x, jnp.float32)
  loss = lambda x: jnp.sum(hand.lp_pool(x, 2, p) ** 2)
  grad = jax.jit(jax.grad(loss))(x)
  assert bool(jnp.all(jnp.isfinite(grad)))
  np.testing.assert_array_equal(grad[:, :2, :2, :], 0.0)
  # Second order stays finite too.
  hvp = jax.jit(jax.grad(lambda x: jnp.vdot(jax.grad(loss)(x), x)))(x)
  assert bool(jnp.all(jnp.isfinite(hvp)))


def test_second_order_by_finite_differences():
  # Independent of autodiff: JAX's own checker, reverse mode to order 2, at float64.
  rng = np.random.default_rng(0)
  with jax.enable_x64(True):
    x = jnp.asarray(rng.normal(size=(1, 6, 5, 2)))
    w = jnp.asarray(rng.normal(size=(3, 2, 2, 2)))
    fn = lambda x, w: jnp.tanh(hand.correlate(x, w, stride=2, padding="SAME"))
    jtu.check_grads(jax.jit(fn), (x, w), order=2, modes=["rev"])
    jtu.check_grads(jax.jit(lambda x: hand.lp_pool(x, 2, 3.0, 1) ** 2), (x,), order=2,
                    modes=["rev"])


@pytest.mark.parametrize("call", [
    lambda m: m.correlate(jnp.ones((1, 5, 2)), jnp.ones((3, 2, 4)), groups=3),
    lambda m: m.correlate(jnp.ones((1, 5, 2)), jnp.ones((3, 2, 4)), stride=0),
    lambda m: m.convolve(jnp.ones((1, 5, 2)), jnp.ones((7, 2, 4))),
    lambda m: m.correlate(jnp.ones((1, 5, 5, 2)), jnp.ones((3, 2, 4)), padding="HALF"),
    lambda m: m.locally_connected(jnp.ones((1, 5, 2)), jnp.ones((2, 3, 2, 4))),
    lambda m: m.max_pool(jnp.ones((1, 5, 2)), 2, padding=-1),
    lambda m: m.avg_pool(jnp.ones((5, 2)), 2),
    lambda m: m.weighted_avg_pool(jnp.ones((1, 5, 2)), jnp.ones((2, 2))),
    lambda m: m.lp_pool(jnp.ones((1, 5, 2)), 2, p=0.5),
])
def test_errors_are_the_forward_ops_errors(call):
  with pytest.raises(ValueError) as expected:
    call(ops)
  with pytest.raises(ValueError) as got:
    call(hand)
  assert str(got.value) == str(expected.value)


def test_hand_pools_differentiate_under_jit(rng):
  # The hand pools' VJPs under jit against autodiff of the pure ops under jit, on fresh
  # inputs (normal draws: no ties in a max-pool window). Each input gradient is one product
  # of two float32 numbers (max) or a quarter of one (avg): 1e-6 is float32 rounding.
  x = jnp.asarray(rng.normal(size=(2, 6, 6, 3)), jnp.float32)
  for name in ("max_pool", "avg_pool"):
    grads = [jax.jit(jax.grad(lambda v, pool=getattr(m, name): jnp.sum(pool(v, 2) ** 2)))(x)
             for m in (hand, ops)]
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-6, err_msg=name)


def _tiny_cnn(namespace, params, x):
  """conv 3x3 (stride 2, SAME) → relu → 2x2 max pool → global avg → dense, pure JAX."""
  h = jax.nn.relu(namespace.correlate(x, params["conv"], stride=2, padding="SAME")
                  + params["bias"].reshape(1, 1, 1, -1))
  h = namespace.max_pool(h, 2)
  h = namespace.global_avg_pool(h)
  return h @ params["dense"]


def test_training_with_hand_and_autodiff_gives_the_same_params(rng):
  params = {
      "conv": jnp.asarray(rng.normal(size=(3, 3, 3, 8)) * 0.3, jnp.float32),
      "bias": jnp.zeros((8,), jnp.float32),
      "dense": jnp.asarray(rng.normal(size=(8, 5)) * 0.3, jnp.float32),
  }
  x = jnp.asarray(rng.normal(size=(8, 12, 12, 3)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 5, size=8))

  def loss(namespace, params):
    logits = _tiny_cnn(namespace, params, x)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

  trained = {}
  for name, namespace in (("hand", hand), ("autodiff", ops)):
    p = params
    grad_fn = jax.jit(jax.grad(functools.partial(loss, namespace)))
    for _ in range(4):
      p = jax.tree.map(lambda v, dv: v - 0.5 * dv, p, grad_fn(p))
    trained[name] = p
  # Same forward, same backward up to float32 summation order: 4 steps drift ~1e-7 relative.
  for key in params:
    np.testing.assert_allclose(trained["hand"][key], trained["autodiff"][key], rtol=1e-5,
                               atol=1e-6)
  assert not np.allclose(trained["hand"]["conv"], params["conv"])  # it did train


@pytest.mark.parametrize("stride", [1, 2])
def test_hand_backward_convs_stay_canonical_inside_a_scan(rng, stride):
  # XLA's CPU backend rewrites convolutions into its fast (Eigen) form only at a program's top
  # level; inside a loop body a conv runs in whatever form it was written (docs/benchmarks.md,
  # "Scanned blocks"). The hand backward must therefore itself write every conv as
  # NHWC x HWIO -> NHWC ("b01f_01io->b01f" in HLO). Checked on the compiled gradient of a
  # scan over hand correlations: every convolution in it, forward and backward, is canonical.
  x = jnp.asarray(rng.standard_normal((2, 8, 8, 3)), jnp.float32)
  ws = jnp.asarray(rng.standard_normal((3, 3, 3, 3, 3)), jnp.float32)

  def loss(ws, x):
    def body(h, w):
      y = hand.correlate(h, w, stride=stride, padding="SAME")
      # Back to the carry's shape when strided (nearest upsampling), so the scan can carry it.
      return jnp.repeat(jnp.repeat(y, stride, 1), stride, 2), None
    return jnp.sum(jax.lax.scan(body, x, ws)[0] ** 2)

  hlo = jax.jit(jax.grad(loss)).lower(ws, x).compile().as_text()
  convs = [line for line in hlo.splitlines() if " convolution(" in line]
  assert len(convs) >= 3  # forward, dL/dx and dL/dw
  labels = {line.split("dim_labels=")[1].split(",")[0].split(" ")[0] for line in convs}
  assert labels == {"b01f_01io->b01f"}, labels


@pytest.mark.parametrize("pool", ["avg_pool", "weighted_avg_pool"])
def test_average_pools_and_their_hand_gradients_run_no_convolution(rng, pool):
  # An average pool is a depthwise correlation (one group per channel), which XLA's CPU
  # backend runs ~30x slower than the elementwise passes that make the same sums
  # (docs/benchmarks-history.md, "Pools without grouped convolutions"). Forward and hand backward are
  # written without a convolution; checked in the compiled gradient (w.r.t. x and weights).
  x = jnp.asarray(rng.standard_normal((2, 9, 9, 4)), jnp.float32)
  window = ops.gaussian_window((3, 3), 0.8)

  def loss(x, window):
    if pool == "avg_pool":
      y = hand.avg_pool(x, 3, 2, "SAME")
    else:
      y = hand.weighted_avg_pool(x, window, 2, "SAME")
    return jnp.sum(y ** 2)

  grads = jax.jit(jax.grad(loss, argnums=(0, 1)))
  hlo = grads.lower(x, window).compile().as_text()
  assert " convolution(" not in hlo
  assert float(jnp.max(jnp.abs(grads(x, window)[0]))) > 0  # the gradient is there


@pytest.mark.parametrize("pool,stride", [("max_pool", 1), ("max_pool", 2), ("lp_pool", 1),
                                         ("lp_pool", 2)])
def test_overlapping_window_pools_hand_gradients_build_no_patch_array(rng, pool, stride):
  # With overlapping windows, the patch array (N, *out, *window, C) holds each entry up to
  # k^D times; the hand forward and backward work on the taps' strided slices instead
  # (docs/benchmarks-history.md, "Pools without grouped convolutions"). Checked in the compiled
  # gradient: no array, fused intermediates included, is bigger than the padded input.
  x = jnp.asarray(rng.standard_normal((2, 9, 9, 4)), jnp.float32)
  grads = jax.jit(jax.grad(lambda x: jnp.sum(getattr(hand, pool)(x, 3, stride=stride,
                                                                 padding="SAME") ** 2)))
  hlo = grads.lower(x).compile().as_text()
  shapes = re.findall(r"\b(?:f32|s32|pred)\[([\d,]*)\]", hlo)
  largest = max(math.prod(int(d) for d in shape.split(",") if d) for shape in shapes)
  padded = 2 * 11 * 11 * 4
  assert largest <= padded, largest
  assert float(jnp.max(jnp.abs(grads(x)))) > 0  # the gradient is there


@pytest.mark.parametrize("num_dims", [1, 2, 3])
def test_input_gradient_by_phases_equals_the_spread_cotangent_form(rng, num_dims):
  # Two formulations of dL/dx of a strided correlation: one stride-1 correlation per phase of
  # the input grid (used at stride 2) and the correlation of the zero-spread g (used
  # otherwise). Same sums, another order: float64, so they agree to rounding (~1e-16 relative;
  # 1e-12 leaves room for the larger sums of 3-D kernels).
  with jax.enable_x64(True):
    for kernel, stride, padding, groups in [(3, 2, "SAME", 1), (2, 2, "VALID", 2),
                                            (1, 2, "VALID", 1), (4, 3, "CIRCULAR", 1),
                                            (3, (2, 1, 2)[:num_dims], ((0, 2),) * num_dims, 2),
                                            (5, 2, "CIRCULAR", 2)]:
      x_shape = (2, *(7, 6, 5)[:num_dims], 4)
      spec = correlation.window_spec(x_shape, (kernel,) * num_dims, stride, padding, 1)
      w = jnp.asarray(rng.standard_normal((kernel,) * num_dims + (4 // groups, 6)))
      g = jnp.asarray(rng.standard_normal((2, *spec.out_spatial, 6)))
      by_phases = hand_correlation.correlate_input_grad_polyphase(g, w, spec, x_shape, groups)
      spread = hand_correlation.correlate_input_grad_dilated(g, w, spec, x_shape, groups)
      assert by_phases.shape == spread.shape == x_shape
      assert _rel(by_phases, spread) < 1e-12, (kernel, stride, padding, groups)


def test_input_gradient_takes_the_phases_at_stride_2_without_dilation():
  def spec(stride, dilation):
    return correlation.window_spec((1, 9, 9, 1), (3, 3), stride, "SAME", dilation)
  assert hand_correlation.polyphase_is_faster(spec(2, 1))
  assert hand_correlation.polyphase_is_faster(spec((2, 1), 1))
  assert not hand_correlation.polyphase_is_faster(spec(1, 1))
  assert not hand_correlation.polyphase_is_faster(spec(3, 1))
  assert not hand_correlation.polyphase_is_faster(spec(2, 2))
  with pytest.raises(ValueError, match="dilation"):
    hand_correlation.correlate_input_grad_polyphase(
        jnp.zeros((1, 3, 3, 1)), jnp.zeros((3, 3, 1, 1)), spec(2, 2), (1, 9, 9, 1), 1)
