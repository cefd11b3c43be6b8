"""Layer accounting: trace records, MACs and parameters by hand, totals, table."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import layers
from cnn_jax.analysis import counting
from cnn_jax.models import mlp, resnet, simple_cnn
from experiments import summary as summary_experiment
from experiments.configs import default


class Tiny(nn.Module):
  """conv (stride 2) → BN → max pool → grouped dilated conv → avg pool → GAP → dense."""

  @nn.compact
  def __call__(self, x, train=False):
    x = layers.Conv(6, 3, strides=2, padding="SAME", name="conv_a")(x)
    x = nn.BatchNorm(use_running_average=not train, name="bn")(x)
    x = layers.Pool("max", 2, name="pool_max")(x)
    x = layers.Conv(4, (3, 1), dilation=(2, 1), padding=1, groups=2, use_bias=False,
                    name="conv_b")(x)
    x = layers.Pool("avg", (1, 2), stride=1, name="pool_avg")(x)
    x = layers.GlobalAvgPool(name="gap")(x)
    return nn.Dense(3, name="head")(x)


def test_records_of_a_small_net_match_hand_counts():
  records = counting.trace_layers(Tiny(), (2, 11, 11, 2))
  assert [r.name for r in records] == ["conv_a", "bn", "pool_max", "conv_b", "pool_avg", "gap",
                                       "head"]
  conv_a, bn, pool_max, conv_b, pool_avg, gap, head = records
  # conv_a: SAME with stride 2 on 11 → ceil(11/2) = 6; pads total (6-1)*2+3-11 = 2 → (1, 1).
  assert conv_a.kind == "conv" and conv_a.output_shape == (2, 6, 6, 6)
  assert (conv_a.kernel, conv_a.stride, conv_a.padding, conv_a.dilation) == (
      (3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1))
  assert conv_a.params == 3 * 3 * 2 * 6 + 6
  assert conv_a.macs == (2 * 6 * 6 * 6) * (3 * 3 * 2)
  assert (bn.kind, bn.params, bn.macs) == ("norm", 12, 0)
  assert pool_max.kind == "pool" and pool_max.output_shape == (2, 3, 3, 6)
  assert (pool_max.stride, pool_max.padding, pool_max.macs) == ((2, 2), ((0, 0), (0, 0)), 0)
  # conv_b: kernel (3, 1), dilation (2, 1), pad 1 → rows: extent 5 on 3+2 → 1; columns 3+2.
  assert conv_b.output_shape == (2, 1, 5, 4) and conv_b.dilation == (2, 1)
  assert conv_b.params == 3 * 1 * (6 // 2) * 4
  assert conv_b.macs == (2 * 1 * 5 * 4) * (3 * 1 * 3)  # C_in / groups = 3 inputs per output
  assert pool_avg.output_shape == (2, 1, 4, 4) and pool_avg.macs == (2 * 1 * 4 * 4) * 2
  # The whole (1, 4) map enters global pooling: one multiply-add per input value.
  assert gap.kind == "global_pool" and gap.kernel == (1, 4) and gap.macs == 2 * 1 * 4 * 4
  assert head.kind == "dense" and head.params == 4 * 3 + 3 and head.macs == 2 * 4 * 3
  assert not any(r.on_shortcut for r in records)


def test_trace_runs_no_computation():
  # eval_shape only: a net with 1.5M weights and a 224x224 input traces in no time and memory.
  records = counting.trace_layers(mlp.MLP(num_classes=10, depth=1), (1, 224, 224, 3))
  (dense,) = records
  assert dense.params == 1_505_280 + 10  # the lesson's 224x224x3 → 10 weights, plus biases
  assert dense.macs == 1_505_280  # one multiply-add per weight for a single image


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_resnet_trace_lists_every_block_even_when_scanned(shortcut):
  model = resnet.ResNet(num_classes=10, depth=26, width=4, shortcut=shortcut, scan_blocks=True,
                         min_scanned_blocks=3)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3))))
  assert "blocks" in shapes["params"]["stage1"]  # scanned; the trace unrolls it by itself
  records = counting.trace_layers(model, (1, 16, 16, 3))
  names = [r.name for r in records]
  for stage in (1, 2, 3):
    for block in range(4):
      assert f"stage{stage}/block{block}/conv1" in names
      assert f"stage{stage}/block{block}/conv2" in names
  assert names.index("stage1/block3/conv2") < names.index("stage2/block0/conv1")
  convs = [r for r in records if r.kind == "conv" and not r.on_shortcut]
  assert len(convs) + 1 == 26  # 25 convs + the classifier make ResNet-26's 26 layers
  shortcut_records = [r for r in records if r.on_shortcut]
  # Option B: a 1x1 projection + BN where the shape changes (stages 2 and 3); A: none.
  assert [r.name for r in shortcut_records] == ([] if shortcut == "A" else [
      "stage2/block0/shortcut_conv", "stage2/block0/shortcut_bn",
      "stage3/block0/shortcut_conv", "stage3/block0/shortcut_bn"])
  assert sum(r.params for r in records) == counting.count_params(model, (1, 16, 16, 3))


@pytest.mark.parametrize("depth", [20, 56])
def test_every_bias_free_conv_does_one_mac_per_weight_per_output_position(depth):
  model = resnet.ResNet(num_classes=10, depth=depth)
  for r in counting.trace_layers(model, (1, 32, 32, 3)):
    if r.kind == "conv":
      positions = int(np.prod(r.output_shape[:-1]))
      assert r.macs == r.params * positions, r.name


def test_resnet20_macs_are_the_usual_41_million():
  # The often-quoted ~41M multiply-adds of CIFAR ResNet-20 (0.04 GFLOPs in MAC units).
  summary = counting.summarize(resnet.ResNet(num_classes=10, depth=20), (1, 32, 32, 3))
  assert round(summary["macs"] / 1e6) == 41
  assert summary["flops"] == 2 * summary["macs"]


def test_summary_totals_are_the_sums_of_the_rows_and_the_table_prints_them():
  model = simple_cnn.SimpleCNN(num_classes=10, depth=2, width=4, pool="l2")
  summary = counting.summarize(model, (1, 16, 3))  # 1-D input
  assert summary["params"] == sum(row["params"] for row in summary["layers"])
  assert summary["macs"] == sum(row["macs"] for row in summary["layers"])
  assert all(row["flops"] == 2 * row["macs"] for row in summary["layers"])
  table = counting.format_table(summary)
  assert "MACs" in table and "FLOPs (2 x MACs)" in table
  assert f"params {summary['params']:,}" in table
  for row in summary["layers"]:
    assert row["name"] in table


def test_local_layer_macs_equal_the_conv_and_params_scale_with_positions():
  shape = (1, 8, 8, 3)
  conv = counting.trace_layers(
      simple_cnn.SimpleCNN(num_classes=2, depth=1, width=4, stride=1), shape)[0]
  local = counting.trace_layers(simple_cnn.SimpleCNN(
      num_classes=2, depth=1, width=4, stride=1, connectivity="local"), shape)[0]
  # Weight sharing saves parameters, not arithmetic (the lesson's point).
  assert local.kind == "local" and local.macs == conv.macs
  assert local.params == conv.params * 8 * 8


def test_count_params_can_leave_out_batchnorm():
  model = resnet.ResNet(num_classes=10, depth=8, width=4)
  records = counting.trace_layers(model, (1, 8, 8, 3))
  norm = sum(r.params for r in records if r.kind == "norm")
  assert norm > 0
  assert counting.count_params(model, (1, 8, 8, 3), exclude_norm=True) == (
      counting.count_params(model, (1, 8, 8, 3)) - norm)


def test_receptive_field_column_only_where_there_is_a_field():
  dense = counting.summarize(mlp.MLP(num_classes=3, depth=2, hidden=4), (1, 4, 4, 1))
  assert dense["receptive_field"] is None  # no spatial layer, no field
  assert all("receptive_field" not in row for row in dense["layers"])
  cnn = counting.summarize(resnet.ResNet(num_classes=3, depth=8, width=4), (1, 16, 16, 1))
  fields = {row["name"]: row.get("receptive_field") for row in cnn["layers"]}
  assert fields["conv1"] == [3, 3]                 # one 3x3 conv
  assert fields["stage1/block0/conv1"] == [5, 5]   # two
  assert fields["classifier"] is None              # dense layers have no column
  assert cnn["receptive_field"] == fields["stage3/block0/conv2"]


def test_summary_experiment_prints_and_writes_summary_json(tmp_path, capsys):
  config = default.get_config()
  config.update(model="resnet", depth=8, width=4, image_size=8, input_channels=1)
  result = summary_experiment.run(config, str(tmp_path))
  written = json.loads((tmp_path / "summary.json").read_text())
  assert written["params"] == result["params"] == counting.count_params(
      resnet.ResNet(num_classes=10, depth=8, width=4), (1, 8, 8, 1))
  assert written["flops"] == 2 * written["macs"] > 0
  assert "receptive_field" in written
  assert "stage3/block0/conv2" in capsys.readouterr().out


def test_summary_experiment_refuses_a_bad_config_before_writing(tmp_path):
  config = default.get_config()
  config.update(model="resnet", depth=19)
  with pytest.raises(ValueError, match="^depth=19"):
    summary_experiment.run(config, str(tmp_path))
  assert not list(tmp_path.iterdir())
