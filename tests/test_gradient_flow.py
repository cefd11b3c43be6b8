"""Gradient flow (per-layer norms, ratios, call order) and residual-block statistics."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax.analysis import gradient_flow as gf
from cnn_jax.analysis import receptive_field as rf
from cnn_jax.analysis import residual


class TinyBlock(nn.Module):
  """A basic residual block; the test's stand-in for the zoo's blocks (models is elsewhere)."""
  features: int
  stride: int = 1
  shortcut: bool = True

  @nn.compact
  def __call__(self, x, train):
    norm = functools.partial(nn.BatchNorm, use_running_average=not train)
    self.sow("intermediates", "block_input", x)
    y = nn.Conv(self.features, (3, 3), strides=self.stride, name="conv1")(x)
    y = nn.relu(norm(name="bn1")(y))
    y = norm(name="bn2")(nn.Conv(self.features, (3, 3), name="conv2")(y))
    self.sow("intermediates", "residual", y)
    if self.shortcut:
      if self.stride != 1 or x.shape[-1] != self.features:
        x = nn.Conv(self.features, (1, 1), strides=self.stride, name="shortcut_conv")(x)
        x = norm(name="shortcut_bn")(x)
      y = y + x
    return nn.relu(y)


class TinyNet(nn.Module):
  num_blocks: int = 2
  shortcut: bool = True

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(4, (3, 3), name="conv_init")(x)
    for i in range(self.num_blocks):
      x = TinyBlock(8 if i else 4, stride=2 if i == 1 else 1, shortcut=self.shortcut,
                    name=f"block{i}")(x, train)
    return nn.Dense(3, name="head")(jnp.mean(x, axis=(1, 2)))


def _init(model, key, x):
  return jax.jit(model.init)(key, x)  # compiled: eager Flax init is slow on a busy CPU


def _batch(rng, n=4):
  x = jnp.asarray(rng.standard_normal((n, 8, 8, 2)), jnp.float32)
  return x, jnp.asarray(rng.integers(0, 3, n))


def test_layer_norms_by_hand(rng):
  tree = {"b": {"kernel": rng.standard_normal((3, 2)), "bias": rng.standard_normal(2)},
          "a": {"inner": {"kernel": rng.standard_normal(4)}}, "c": {"scale": np.zeros(3)}}
  tree = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), tree)
  norms = gf.layer_norms(tree)
  expected = np.sqrt(np.sum(np.square(tree["b"]["kernel"])) + np.sum(np.square(tree["b"]["bias"])))
  # float32 sums of a handful of squares: relative error ~1e-7; 1e-6 is the float32 bar.
  np.testing.assert_allclose(norms["b"], expected, rtol=1e-6)
  np.testing.assert_allclose(norms["a/inner"], np.linalg.norm(tree["a"]["inner"]["kernel"]),
                             rtol=1e-6)
  assert set(gf.layer_norms(tree, ("kernel",))) == {"b", "a/inner"}  # "c" has no kernel
  jitted = jax.jit(gf.layer_norms)(tree)
  for name in norms:
    np.testing.assert_allclose(jitted[name], norms[name], rtol=1e-6)


def test_order_layers_is_natural():
  names = ["Conv_10", "Conv_2", "head", "Conv_1"]
  assert gf.order_layers(names) == ["Conv_1", "Conv_2", "Conv_10", "head"]
  assert gf.order_layers(names, ["head", "Conv_10"]) == ["head", "Conv_10", "Conv_1", "Conv_2"]


def test_call_order_and_gradient_rows(rng):
  model = TinyNet()
  x, labels = _batch(rng)
  variables = _init(model, jax.random.key(0), x)
  order = gf.call_order(model, variables, x, train=False)
  assert order[:4] == ["conv_init", "block0", "block0/conv1", "block0/bn1"]
  assert order.index("block1/shortcut_conv") > order.index("block1/bn2")
  loss, grads = gf.cross_entropy_gradients(model, variables, x, labels, train=True)
  logits, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
  reference = -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), labels])
  np.testing.assert_allclose(loss, reference, rtol=1e-6)
  # The update of plain SGD is -lr * g, so each layer's update ratio is lr * |g| / |w|.
  lr = 0.1
  updates = jax.tree_util.tree_map(lambda g: -lr * g, grads)
  rows = gf.gradient_flow(grads, variables["params"], updates, order=order,
                          leaf_names=("kernel",))
  kernels = [name for name in order if name.split("/")[-1].startswith(("conv", "shortcut_conv",
                                                                        "head"))]
  assert [r["layer"] for r in rows] == kernels
  for row in rows:
    np.testing.assert_allclose(row["update_ratio"], lr * row["grad_ratio"], rtol=1e-5)
    assert row["grad_norm"] > 0
  metrics = gf.as_metrics(rows, ("grad_norm", "update_ratio"))
  assert metrics["grad_norm/head"] == rows[-1]["grad_norm"]
  assert len(metrics) == 2 * len(rows)
  back = gf.rows_from_metrics({"step": 3, **metrics}, "update_ratio", order=order)
  assert [(r["layer"], r["update_ratio"]) for r in back] == [
      (r["layer"], r["update_ratio"]) for r in rows]


def _zoo_model(name, depth):
  from cnn_jax import models  # pylint: disable=g-import-not-at-top
  from experiments.configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config.update(model=name, depth=depth, width=4, grad="autodiff")
  return models.build(config)


def test_gradient_flow_at_init_plain_vs_residual(rng):
  # Step 0 (init, BN in train mode), the zoo's plain-20 and ResNet-20 (width 4, 8x8 inputs,
  # batch 8). Measured first-conv / classifier gradient-norm ratios over seeds 0-2
  # (2026-12-07): plain-20 13.5-16.1 (it grows with depth: plain-8 1.4-1.6, plain-56
  # 2.6e3-5.8e3, first layer ~1.9e3), ResNet-20 0.88-1.72 (ResNet-56 1.0-2.4). At init the
  # plain net's gradient *explodes* towards the input; the shortcuts keep it level. Margins:
  # plain > 6, residual within 4x either way, plain at least 3x the residual's ratio.
  x = jnp.asarray(rng.standard_normal((8, 8, 8, 3)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 10, 8))
  ratios = {}
  for name in ("plain", "resnet"):
    rows = gf.gradient_flow_at_init(_zoo_model(name, 20), x, labels,
                                    key=jax.random.key(int(rng.integers(2 ** 31))))
    assert rows[0]["layer"] == "conv1" and rows[-1]["layer"] == "classifier"
    assert len(rows) == 20  # 19 convs and the classifier (option A shortcuts have none)
    summary = gf.summary(rows)
    assert summary["first"] == rows[0]["grad_norm"] and summary["last"] == rows[-1]["grad_norm"]
    ratios[name] = summary["first_over_last"]
  assert ratios["plain"] > 6, ratios
  assert 0.25 < ratios["resnet"] < 4, ratios
  assert ratios["plain"] > 3 * ratios["resnet"], ratios


def test_block_statistics_match_sown_values(rng):
  model = TinyNet()
  x, _ = _batch(rng)
  variables = _init(model, jax.random.key(int(rng.integers(2 ** 31))), x)
  stats = residual.block_statistics(model, variables, x)
  _, sown = model.apply(variables, x, mutable=["intermediates"])
  sown = sown["intermediates"]
  assert [b["block"] for b in stats["blocks"]] == ["block0", "block1"]
  for row in stats["blocks"]:
    f = sown[row["block"]]["residual"][0]
    inputs = sown[row["block"]]["block_input"][0]
    expected = float(jnp.sqrt(jnp.mean(f ** 2)) / jnp.sqrt(jnp.mean(inputs ** 2)))
    # Same float32 arrays reduced the same way: only the order of two means differs.
    np.testing.assert_allclose(row["ratio"], expected, rtol=1e-5)
  shortcut = [r["layer"] for r in stats["responses"] if r["on_shortcut"]]
  assert shortcut == ["block1/shortcut_bn"]
  assert len(stats["responses"]) == 5  # bn1, bn2 per block and block1's shortcut_bn
  assert residual.sorted_stds(stats["responses"])[0] == max(r["std"] for r in stats["responses"])


def test_zero_initialised_residual_has_zero_ratio(rng):
  model = TinyNet()
  x, _ = _batch(rng)
  variables = _init(model, jax.random.key(0), x)
  params = jax.tree_util.tree_map(lambda a: a, variables["params"])
  for i in range(2):  # zero_init_residual: the last BN scale of each block starts at 0
    params[f"block{i}"]["bn2"]["scale"] = jnp.zeros_like(params[f"block{i}"]["bn2"]["scale"])
  stats = residual.block_statistics(model, {**variables, "params": params}, x, train=True)
  assert all(b["ratio"] == 0 for b in stats["blocks"])


def test_gradient_plots_from_rows_and_metrics(tmp_path):
  from cnn_jax import plotting  # pylint: disable=g-import-not-at-top
  rows = [dict(index=i, layer=f"conv{i}", grad_norm=10.0 ** -i) for i in range(4)]
  plotting.plot_gradient_norms({"plain-8": rows, "resnet-8": rows[::-1]},
                               str(tmp_path / "grad.png"))
  metrics = tmp_path / "run" / "metrics.jsonl"
  metrics.parent.mkdir()
  metrics.write_text('{"step": 0, "loss": 2.0}\n{"step": 50, "loss": 1.0}\n{"step": 100, "lo')
  assert [r["step"] for r in plotting.read_jsonl(str(metrics))] == [0, 50]  # torn line skipped
  plotting.plot_metric({"run": str(metrics.parent)}, "loss", str(tmp_path / "loss.png"))
  for name in ("grad.png", "loss.png"):
    assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_layer_output_fn_measures_a_models_inner_field(rng):
  model = TinyNet()
  x = jnp.asarray(rng.uniform(0.5, 1.0, (1, 12, 12, 2)), jnp.float32)
  variables = _init(model, jax.random.key(int(rng.integers(2 ** 31))), x)
  # |kernels| and positive inputs keep every ReLU open (BN at init is the identity in eval
  # mode), so the gradient support is the whole field: conv_init then two 3x3 convs (the
  # identity shortcut adds nothing outside them).
  positive = jax.tree_util.tree_map(jnp.abs, variables)
  fn = residual.layer_output_fn(model, positive, "block0", train=False)
  _, sown = model.apply(positive, x, mutable=["intermediates"])
  np.testing.assert_array_equal(fn(x), sown["intermediates"]["block1"]["block_input"][0])
  record = rf.receptive_field([(3, 1, "SAME")] * 3, x.shape)[-1]
  for index in [(5, 5), (0, 11)]:
    np.testing.assert_array_equal(rf.gradient_support(fn, x, index),
                                  rf.field_mask(record, index))
  with pytest.raises(ValueError, match="path"):
    residual.layer_output_fn(model, positive, "block9", train=False)(x)
