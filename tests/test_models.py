"""The model zoo: shapes, parameter counts against the papers, structure, and bad configs."""

import functools

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import layers, models, ops
from cnn_jax.analysis import counting
from cnn_jax.models import bottleneck, resnet, resnext
from experiments.configs import default

# Tiny configs for every model: CI compiles each once or twice on 8x8 / length-16 inputs.
TINY = {
    "mlp": dict(depth=2, hidden=8),
    "local": dict(depth=2, width=4, hidden=8),
    "simple_cnn": dict(depth=2, width=4, hidden=8),
    "plain": dict(depth=8, width=4),
    "resnet": dict(depth=8, width=4),
    "bottleneck": dict(depth=11, width=4),
    "resnext": dict(depth=11, width=2, cardinality=2, stem_width=4),
}


def make_config(model, **overrides):
  config = default.get_config()
  config.model = model
  config.num_classes = 5
  for key, value in {**TINY.get(model, {}), **overrides}.items():
    config[key] = value
  return config


def init_shapes(model, x):
  """Variable shapes only, by ``jax.eval_shape``: no compile, no compute."""
  return shapes_of(jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False)))


def random_variables(model, x, rng):
  """Fresh random variables of the right shapes, drawn with NumPy (no init to compile).

  Compiling Flax's init (threefry RNG for every kernel) costs seconds per model on CI's CPU,
  more than the forward pass; the tests of the forward function only need some weights.
  Kernels are scaled by 1/sqrt(fan-in) and BN variances kept positive so activations stay O(1).
  """
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))

  def draw(path, leaf):
    name = path[-1].key
    if name == "var":
      return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), jnp.float32)
    fan_in = int(np.prod(leaf.shape[:-1])) if name == "kernel" else 1
    scale = 1.0 / np.sqrt(max(fan_in, 1))
    return jnp.asarray(scale * rng.standard_normal(leaf.shape), jnp.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def jit_apply(model):
  """``model.apply`` compiled once per ``train`` value (eager dispatch of every op is slow)."""
  return jax.jit(functools.partial(model.apply, mutable=["batch_stats"]),
                 static_argnames="train")


def num_params(shapes) -> int:
  return sum(int(np.prod(shape)) for shape in jax.tree.leaves(
      shapes["params"], is_leaf=lambda s: isinstance(s, tuple)))


def shapes_of(tree):
  return jax.tree.map(jnp.shape, tree)


# Every model on 2-D input; 1-D and odd sizes on the cheaper ones (CI time).
FORWARD_CASES = [(name, (3, 8, 8, 2)) for name in models.MODELS] + [
    (name, (3, 16, 2)) for name in ("mlp", "local", "simple_cnn", "resnet")] + [
    (name, (3, 9, 7, 1)) for name in ("simple_cnn", "resnet")]


@pytest.mark.parametrize("name,shape", FORWARD_CASES)
def test_every_model_gives_logits_under_jit(name, shape, rng):
  model = models.build(make_config(name))
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  variables = random_variables(model, x, rng)

  @jax.jit
  def forward(variables, x):
    train_logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    return train_logits, model.apply(variables, x, train=False), updates

  train_logits, eval_logits, updates = forward(variables, x)
  for logits in (train_logits, eval_logits):
    assert logits.shape == (3, 5) and logits.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(logits)))
  assert shapes_of(updates.get("batch_stats", {})) == shapes_of(variables.get("batch_stats", {}))


def test_init_runs_under_jit_and_gives_float32_params(rng):
  model = models.build(make_config("resnet", dtype="bfloat16"))
  x = jnp.asarray(rng.standard_normal((2, 8, 8, 3)), jnp.float32)
  variables = jax.jit(lambda key, x: model.init(key, x, train=False))(jax.random.key(0), x)
  assert shapes_of(variables) == init_shapes(model, x)
  # Parameters stay float32 whatever the compute dtype (mixed precision); logits are float32.
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables["params"]))
  logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  assert logits.dtype == jnp.float32 and logits.shape == (2, 5)
  assert np.all(np.isfinite(np.asarray(logits)))


def resnet_params_by_hand(depth, width=16, in_channels=3, num_classes=10):
  """Option-A CIFAR ResNet parameter count, written out layer by layer (BN scale + bias)."""
  n = (depth - 2) // 6
  total = 9 * in_channels * width + 2 * width  # stem conv + BN
  c_prev = width
  for i in range(3):
    c = width * 2 ** i
    total += 9 * c_prev * c + 9 * c * c + 4 * c  # block 0 (may change channels)
    total += (n - 1) * (2 * 9 * c * c + 4 * c)  # identical blocks
    c_prev = c
  return total + 4 * width * num_classes + num_classes


@pytest.mark.parametrize("depth,paper_millions", [(20, 0.27), (32, 0.46), (44, 0.66),
                                                  (56, 0.85), (110, 1.7)])
def test_resnet_parameter_counts_match_he_et_al(depth, paper_millions):
  model = resnet.ResNet(num_classes=10, depth=depth)
  count = counting.count_params(model, (1, 32, 32, 3))
  assert count == resnet_params_by_hand(depth)
  # He et al. 2016, Table 6, quote two significant figures.
  digits = 1 if paper_millions >= 1 else 2
  assert round(count / 1e6, digits) == paper_millions


@pytest.mark.parametrize("cardinality,paper_millions", [(8, 34.4), (16, 68.1)])
def test_resnext29_parameter_counts_match_xie_et_al(cardinality, paper_millions):
  config = default.get_config()
  config.update(model="resnext", depth=29, cardinality=cardinality, width=64)
  model = models.build(config)
  # Xie et al. 2017, Table 7 count conv and dense weights; with BN's scale/bias included the
  # totals are 34.43M and 68.16M (docs/models.md lists both).
  weights = counting.count_params(model, (1, 32, 32, 3), exclude_norm=True)
  assert round(weights / 1e6, 1) == paper_millions
  total = counting.count_params(model, (1, 32, 32, 3))
  assert 0 < total - weights < 0.002 * total


def test_mlp_of_depth_one_is_the_lessons_1505280_weights():
  model = models.build(make_config("mlp", depth=1, num_classes=10))
  count = counting.count_params(model, (1, 224, 224, 3))
  assert count == 224 * 224 * 3 * 10 + 10  # 1,505,280 weights + 10 biases
  assert 224 * 224 * 3 * 10 == 1_505_280


def test_mlp_and_simple_cnn_counts_by_hand():
  mlp = models.build(make_config("mlp", depth=3, hidden=7))
  expected = (72 * 7 + 7) + (7 * 7 + 7) + (7 * 5 + 5)
  assert num_params(init_shapes(mlp, jnp.zeros((1, 6, 6, 2)))) == expected
  cnn = models.build(make_config("simple_cnn", depth=2, width=4, hidden=8, stride=2))
  # conv 3x3 2->4, conv 3x3 4->8 (channels double after a downsampling), dense 2*2*8->8, ->5.
  expected = (9 * 2 * 4 + 4) + (9 * 4 * 8 + 8) + (32 * 8 + 8) + (8 * 5 + 5)
  assert num_params(init_shapes(cnn, jnp.zeros((1, 8, 8, 2)))) == expected


def test_local_net_has_conv_params_times_positions():
  cnn = models.build(make_config("simple_cnn", depth=1, width=4, hidden=8, stride=2,
                                 downsample="pool"))
  loc = models.build(make_config("local", depth=1, width=4, hidden=8, stride=2,
                                 downsample="pool"))
  x = jnp.zeros((1, 8, 8, 3))
  conv_layer = init_shapes(cnn, x)["params"]["conv1"]
  local_layer = init_shapes(loc, x)["params"]["local1"]
  # Same topology; the locally connected layer owns one kernel and bias per output position.
  assert local_layer["kernel"] == (8, 8) + conv_layer["kernel"]
  assert local_layer["bias"] == (8, 8) + conv_layer["bias"]
  strip = lambda p: {k: v for k, v in p.items() if not k.startswith(("conv", "local"))}
  assert strip(init_shapes(cnn, x)["params"]) == strip(init_shapes(loc, x)["params"])


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_plain_and_resnet_have_the_same_layers_but_shortcuts(shortcut):
  x = jnp.zeros((1, 8, 8, 3))
  plain = init_shapes(models.build(make_config("plain", shortcut=shortcut)), x)
  res = init_shapes(models.build(make_config("resnet", shortcut=shortcut)), x)
  flat_res = {k: v for k, v in traverse_util.flatten_dict(res).items()
              if not any(part.startswith("shortcut") for part in k)}
  assert traverse_util.flatten_dict(plain) == flat_res
  has_shortcut_layers = len(flat_res) < len(traverse_util.flatten_dict(res))
  assert has_shortcut_layers == (shortcut == "B")  # option A adds no parameters


@pytest.mark.parametrize("strides,features", [(1, 6), (2, 6), (2, 9)])
def test_residual_block_is_plain_block_plus_shortcut(strides, features, rng):
  """Given the same weights, resnet = relu(branch + shortcut(x)) and plain = relu(branch)."""
  x = jnp.asarray(rng.standard_normal((2, 7, 7, 6)), jnp.float32)
  block = functools.partial(resnet.BasicBlock, features=features, strides=strides, shortcut="A")
  res, plain = block(residual=True), block(residual=False)
  variables = random_variables(res, x, rng)
  y_res, state = res.apply(variables, x, train=False, capture_intermediates=True,
                           mutable=["intermediates"])
  branch = state["intermediates"]["bn2"]["__call__"][0]
  y_plain = plain.apply(variables, x, train=False)
  short = resnet.stages.subsample_and_pad(x, strides, features)
  # Same float32 ops in the same order, so the results agree to rounding only.
  np.testing.assert_allclose(y_plain, nn.relu(branch), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(y_res, nn.relu(branch + short), rtol=1e-6, atol=1e-6)
  assert not np.allclose(y_res, y_plain)


def test_option_a_shortcut_subsamples_and_zero_pads(rng):
  x = jnp.asarray(rng.standard_normal((2, 5, 7, 3)), jnp.float32)
  y = resnet.stages.subsample_and_pad(x, 2, 8)
  assert y.shape == (2, 3, 4, 8)
  np.testing.assert_array_equal(y[..., :3], x[:, ::2, ::2, :])
  np.testing.assert_array_equal(y[..., 3:], 0)


def test_zero_init_residual_starts_every_block_as_identity(rng):
  # Bottleneck and ResNeXt blocks end in the same stages.batch_norm(zero_scale=...) helper.
  x = jnp.asarray(np.abs(rng.standard_normal((2, 6, 6, 4))), jnp.float32)
  block = resnet.BasicBlock(features=4, zero_init_residual=True)
  variables = block.init(jax.random.key(0), x, train=False)
  # The last BN's scale is 0, so the branch adds exactly its BN bias, 0: relu(x) = x for x >= 0.
  y, _ = jit_apply(block)(variables, x, train=True)
  np.testing.assert_array_equal(y, x)


def unstack_scanned(tree):
  """Scanned ``blocks/block`` params → unrolled ``block1 … blockK`` (the unscanned naming)."""
  if not isinstance(tree, dict):
    return tree
  out = {}
  for key, value in tree.items():
    if key == "blocks":
      stacked = value["block"]
      count = jax.tree.leaves(stacked)[0].shape[0]
      for i in range(count):
        out[f"block{i + 1}"] = jax.tree.map(lambda a, i=i: a[i], stacked)
    else:
      out[key] = unstack_scanned(value)
  return out


def test_scanned_and_unrolled_blocks_compute_the_same_function(rng):
  x = jnp.asarray(rng.standard_normal((2, 8, 8, 3)), jnp.float32)
  scanned = resnet.ResNet(num_classes=5, depth=26, width=4, scan_blocks=True,
                          min_scanned_blocks=3)
  unrolled = scanned.clone(scan_blocks=False)
  variables = random_variables(scanned, x, rng)
  assert "blocks" in variables["params"]["stage1"]  # 4 blocks per stage: 1 + scan over 3
  converted = {k: unstack_scanned(v) for k, v in variables.items()}
  assert shapes_of(converted) == init_shapes(unrolled, x)
  y_scan, stats_scan = jit_apply(scanned)(variables, x, train=True)
  y_unrolled, stats_unrolled = jit_apply(unrolled)(converted, x, train=True)
  # Identical ops; XLA may fuse the loop body differently, so allow float32 rounding.
  np.testing.assert_allclose(y_scan, y_unrolled, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(unstack_scanned(stats_scan)),
                  jax.tree.leaves(stats_unrolled)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("strides", [1, 2])
def test_resnext_block_grouped_form_equals_split_transform_merge(strides, rng):
  x = jnp.asarray(rng.standard_normal((4, 6, 6, 5)), jnp.float32)
  common = dict(features=8, inner_features=6, groups=3, strides=strides, shortcut="B")
  grouped = bottleneck.BottleneckBlock(**common)
  split = resnext.SplitBlock(**common)
  variables = random_variables(grouped, x, rng)
  split_vars = resnext.split_from_grouped(variables, 3)
  assert shapes_of(split_vars) == init_shapes(split, x)
  for train in (False, True):
    y_grouped, new_grouped = jit_apply(grouped)(variables, x, train=train)
    y_split, new_split = jit_apply(split)(split_vars, x, train=train)
    # Same products summed in a different order (per group vs per branch): float32 rounding,
    # amplified a little by BN's division by the batch std.
    np.testing.assert_allclose(y_grouped, y_split, rtol=1e-4, atol=1e-5)
    converted = resnext.split_from_grouped(new_grouped, 3)
    for a, b in zip(jax.tree.leaves(converted), jax.tree.leaves(new_split)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("depth,min_scanned,scanned", [
    (56, None, False), (62, None, True), (110, None, True), (26, 3, True), (20, 3, False)])
def test_stages_scan_from_min_scanned_blocks_repeated_blocks(depth, min_scanned, scanned):
  # The default (9) leaves ResNet-56's 8 repeated blocks per stage unrolled, scans ResNet-62's 9.
  config = make_config("resnet", depth=depth)
  if min_scanned is not None:
    config.min_scanned_blocks = min_scanned
  model = models.build(config)
  shapes = init_shapes(model, jnp.zeros((1, 8, 8, 3)))
  for stage in ("stage1", "stage2", "stage3"):
    assert ("blocks" in shapes["params"][stage]) == scanned
    assert (f"block{(depth - 2) // 6 - 1}" in shapes["params"][stage]) == (not scanned)


def test_split_from_grouped_slices_stacked_scan_blocks_like_single_blocks(rng):
  block = bottleneck.BottleneckBlock(features=8, inner_features=6, groups=3, shortcut="B")
  x = jnp.zeros((1, 6, 6, 5))
  first, second = random_variables(block, x, rng), random_variables(block, x, rng)
  stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), first, second)
  expected = jax.tree.map(lambda a, b: jnp.stack([a, b]),
                          resnext.split_from_grouped(first, 3),
                          resnext.split_from_grouped(second, 3))
  got = resnext.split_from_grouped(stacked, 3)
  assert jax.tree.structure(got) == jax.tree.structure(expected)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(a, b)


def test_resnext_network_grouped_form_equals_split_form(rng):
  x = jnp.asarray(rng.standard_normal((4, 8, 8, 3)), jnp.float32)
  common = dict(num_classes=5, depth=11, stem_features=4, bottleneck_width=2, cardinality=2,
                shortcut="B", model="resnext")
  grouped = bottleneck.BottleneckResNet(block_form="grouped", **common)
  split = bottleneck.BottleneckResNet(block_form="split", **common)
  variables = random_variables(grouped, x, rng)
  split_vars = resnext.split_from_grouped(variables, 2)
  assert shapes_of(split_vars) == init_shapes(split, x)
  y_grouped, _ = jit_apply(grouped)(variables, x, train=True)
  y_split, _ = jit_apply(split)(split_vars, x, train=True)
  np.testing.assert_allclose(y_grouped, y_split, rtol=1e-4, atol=1e-5)  # as the block test


@pytest.mark.parametrize("overrides,field", [
    (dict(model="resnet", depth=21), "depth"),
    (dict(model="plain", depth=7), "depth"),
    (dict(model="bottleneck", depth=21), "depth"),
    (dict(model="resnext", depth=28), "depth"),
    (dict(model="resnet", cardinality=3, width=16), "cardinality"),
    (dict(model="bottleneck", cardinality=3, width=16), "cardinality"),
    (dict(model="resnext", cardinality=0), "cardinality"),
    (dict(model="resnet", shortcut="C"), "shortcut"),
    (dict(model="simple_cnn", pool="median"), "pool"),
    (dict(model="resnet", downsample="dilate"), "downsample"),
    (dict(model="resnet", grad="finite_differences"), "grad"),
    (dict(model="mlp", dtype="float16"), "dtype"),
    (dict(model="mlp", depth=0), "depth"),
    (dict(model="plain", zero_init_residual=True), "zero_init_residual"),
    (dict(model="resnet", stride=True), "stride"),
    (dict(model="resnet", min_scanned_blocks=0), "min_scanned_blocks"),
    (dict(model="resnext", min_scanned_blocks=-1), "min_scanned_blocks"),
])
def test_bad_configs_raise_naming_the_field_at_build(overrides, field):
  config = make_config(overrides["model"])
  config.update(overrides)
  with pytest.raises(ValueError, match=f"^{field}="):
    models.build(config)


def test_unknown_model_lists_the_allowed_names():
  with pytest.raises(ValueError, match="model='vgg'.*mlp, local, simple_cnn, plain, resnet, "
                     "bottleneck, resnext"):
    models.build(make_config("vgg"))


@pytest.mark.parametrize("name,overrides,shape,field", [
    ("resnet", dict(first_stride=4, stride=4), (1, 8, 8, 3), "stride"),
    ("resnet", dict(first_stride=16), (1, 8, 8, 3), "first_stride"),
    ("simple_cnn", dict(depth=4, stride=2), (1, 8, 8, 3), "stride"),
    ("simple_cnn", dict(depth=2, stride=3), (1, 4, 3), "stride"),
    ("bottleneck", dict(stride=4), (1, 8, 8, 3), "stride"),
])
def test_a_stride_that_shrinks_a_map_below_1x1_is_refused_before_tracing(
    name, overrides, shape, field, monkeypatch):
  model = models.build(make_config(name, **overrides))

  def no_tracing(*args, **kwargs):
    raise AssertionError("an op was traced before the shape check")

  # The check runs on static shapes before the first layer: no conv is ever reached.
  monkeypatch.setattr(jax.lax, "conv_general_dilated", no_tracing)
  with pytest.raises(ValueError, match=f"^{field}=.*below 1x1"):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))


def test_missing_num_classes_is_a_clear_error():
  config = default.get_config()
  del config["num_classes"]
  with pytest.raises(ValueError, match="num_classes"):
    models.build(config)


# Layers: thin shells, so each must equal its op given the same weights.


@pytest.mark.parametrize("shape,kwargs", [
    ((2, 9, 8, 4), dict(kernel_size=3, strides=2, padding="SAME", groups=2)),
    ((2, 11, 3), dict(kernel_size=5, dilation=2, padding="CIRCULAR")),
])
def test_conv_layer_is_ops_correlate_with_its_kernel_and_bias(shape, kwargs, rng):
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  layer = layers.Conv(6, **kwargs)
  shapes = jax.eval_shape(lambda: layer.init(jax.random.key(0), x))
  params = jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape), jnp.float32), shapes)
  y = layer.apply(params, x)
  w, b = params["params"]["kernel"], params["params"]["bias"]
  expected = ops.correlate(x, w, stride=kwargs.get("strides", 1), padding=kwargs["padding"],
                           dilation=kwargs.get("dilation", 1), groups=kwargs.get("groups", 1))
  # The same op plus the bias broadcast over positions.
  np.testing.assert_array_equal(y, expected + b.reshape((1,) * (x.ndim - 1) + (6,)))


def test_conv_kernels_get_he_fan_in_variance():
  layer = layers.Conv(64, 3, groups=2)
  w = layer.init(jax.random.key(0), jnp.zeros((1, 4, 4, 32)))["params"]["kernel"]
  fan_in = 3 * 3 * 32 // 2
  # 9216 samples: the std estimate is within ~2% (1/sqrt(2n)); 5% leaves room.
  assert w.shape == (3, 3, 16, 64)
  assert abs(float(jnp.std(w)) / np.sqrt(2 / fan_in) - 1) < 0.05


def test_locally_connected_layer_with_one_shared_kernel_is_a_conv(rng):
  x = jnp.asarray(rng.standard_normal((2, 6, 5, 3)), jnp.float32)
  layer = layers.LocallyConnected(4, 3, strides=2, padding="SAME")
  shapes = jax.eval_shape(lambda: layer.init(jax.random.key(0), x))["params"]
  out_spatial = shapes["bias"].shape[:-1]
  w = jnp.asarray(rng.standard_normal((3, 3, 3, 4)), jnp.float32)
  b = jnp.asarray(rng.standard_normal((4,)), jnp.float32)
  params = {"kernel": jnp.broadcast_to(w, out_spatial + w.shape),
            "bias": jnp.broadcast_to(b, out_spatial + b.shape)}
  y = layer.apply({"params": params}, x)
  expected = ops.correlate(x, w, stride=2, padding="SAME") + b.reshape(1, 1, 1, 4)
  # einsum over patches vs lax.conv: float32 sums in another order.
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", layers.POOL_KINDS)
def test_pool_layer_is_the_matching_op(kind, rng):
  x = jnp.asarray(rng.standard_normal((2, 7, 6, 3)), jnp.float32)
  y = layers.Pool(kind, 3, stride=2, padding="SAME", sigma=0.8).apply({}, x)
  expected = {
      "max": lambda: ops.max_pool(x, 3, 2, "SAME"),
      "avg": lambda: ops.avg_pool(x, 3, 2, "SAME"),
      "l2": lambda: ops.lp_pool(x, 3, 2.0, 2, "SAME"),
      "weighted": lambda: ops.weighted_avg_pool(x, ops.gaussian_window((3, 3), 0.8), 2, "SAME"),
  }[kind]()
  np.testing.assert_array_equal(y, expected)


@pytest.mark.parametrize("model", ["simple_cnn", "resnet"])
def test_weighted_downsampling_pool_is_a_centred_gaussian_not_the_average(model, rng):
  # A centred 2x2 Gaussian is uniform: a weighted pool with window = stride = 2 would be
  # average pooling under another name. The models give it a 3x3 window (2*stride - 1) at
  # stride 2, so the same parameters give other outputs than pool=avg, of the same shape.
  assert layers.downsampling_window("weighted", 2) == 3
  assert [layers.downsampling_window(k, 2) for k in ("max", "avg", "l2")] == [2, 2, 2]
  x = jnp.asarray(rng.standard_normal((2, 8, 8, 3)), jnp.float32)
  outputs = {}
  for pool in ("avg", "weighted"):
    net = models.build(make_config(model, stride=2, downsample="pool", pool=pool))
    if pool == "avg":
      variables = net.init(jax.random.key(int(rng.integers(2 ** 31))), x, train=False)
    outputs[pool] = net.apply(variables, x, train=False)
  assert outputs["avg"].shape == outputs["weighted"].shape
  assert not np.allclose(outputs["avg"], outputs["weighted"], rtol=1e-3, atol=1e-4)
