"""The bench's reference models: FLOP formula, scan variant and the optional torch twin agree."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bench import resnet_twin
from cnn_jax import ops


@pytest.mark.parametrize("depth,image_size", [(8, 8), (14, 12)])
def test_forward_flops_match_traced_convs(rng, depth, image_size):
  """resnet_forward_flops equals 2 x the MACs of every conv and the dense layer, as traced."""
  macs = []

  def counting_correlate(x, w, **kwargs):
    y = ops.correlate(x, w, **kwargs)
    macs.append(int(np.prod(y.shape[1:])) * int(np.prod(w.shape[:-1])))  # per image
    return y

  model = resnet_twin.TwinResNet(depth=depth, correlate=counting_correlate)
  x = jnp.asarray(rng.standard_normal((1, image_size, image_size, 3)), jnp.float32)
  jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  dense = 64 * 10
  assert 2 * (sum(macs) + dense) == resnet_twin.resnet_forward_flops(depth, image_size)


def test_resnet20_flops_is_the_quoted_figure():
  # He et al.'s ResNet-20 is usually quoted at 40.6 M multiply-adds for 32x32x3.
  assert resnet_twin.resnet_forward_flops(20) == 2 * 40_551_040


def test_bad_depth_raises():
  with pytest.raises(ValueError, match="depth=21"):
    resnet_twin.stage_blocks(21)


def test_scan_variant_has_same_parameter_count_and_output_shape(rng):
  x = jnp.asarray(rng.standard_normal((2, 8, 8, 3)), jnp.float32)
  counts = []
  for scan in (False, True):
    model = resnet_twin.TwinResNet(depth=14, scan=scan)
    variables = jax.eval_shape(lambda m=model: m.init(jax.random.key(0), x, train=False))
    counts.append(sum(int(np.prod(a.shape)) for a in jax.tree.leaves(variables["params"])))
  assert counts[0] == counts[1]


def test_torch_twin_has_same_parameter_count():
  pytest.importorskip("torch")
  from bench import torch_twin  # pylint: disable=g-import-not-at-top
  x = jnp.zeros((1, 8, 8, 3), jnp.float32)
  variables = jax.eval_shape(
      lambda: resnet_twin.TwinResNet(depth=14).init(jax.random.key(0), x, train=False))
  flax_count = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(variables["params"]))
  torch_count = sum(p.numel() for p in torch_twin.build_model(14).parameters())
  assert flax_count == torch_count


def test_profile_step_sums_the_ops_of_a_real_trace(capsys):
  from cnn_jax import native  # pylint: disable=g-import-not-at-top
  if not native.available():
    pytest.skip(f"native kernels unavailable: {native.unavailable_reason()}")
  """bench.profile_step profiles a tiny ResNet step and attributes time to XLA op kinds:
  the convolutions appear under their kinds, and the op kinds' counts are per step."""
  import json  # pylint: disable=g-import-not-at-top
  from bench import profile_step  # pylint: disable=g-import-not-at-top
  profile_step.main(["--depth=8", "--batch=4", "--image_size=8", "--steps=2", "--cores=0",
                     "--json"])
  result = json.loads(capsys.readouterr().out)
  ops = result["ops"]
  assert result["step_s"] > 0 and result["summed_ms_per_step"] > 0
  assert result["kernels"] == "auto"
  # ResNet-8 has 7 convs + 2 shortcut pads; with the default kernels=auto each runs
  # its forward (and backward) products as FFI calls, at least one per layer each step.
  assert ops["ffi_call"]["count_per_step"] >= 7
  assert not any(kind.endswith(tuple("0123456789")) and "." in kind for kind in ops)


def test_batch_norm_bench_times_both_formulations_of_each_table(capsys):
  """bench.batch_norm times reductions vs matmul sums and both BatchNorms for every shape;
  with a tiny step it also times the hand step with either BatchNorm."""
  import json  # pylint: disable=g-import-not-at-top
  from bench import batch_norm  # pylint: disable=g-import-not-at-top
  batch_norm.main(["--batch=2", "--repeats=1", "--step_depth=8", "--step_rounds=1", "--json"])
  result = json.loads(capsys.readouterr().out)
  assert set(result["sums_ms"]) == set(result["batch_norm_ms"]) == set(batch_norm.SHAPES)
  for row in result["sums_ms"].values():
    assert set(row) == {"reduce", "matmul_unfolded", "matmul_folded"}
    assert all(ms > 0 for ms in row.values())
  assert all(set(row) == {"autodiff", "hand"} for row in result["batch_norm_ms"].values())
  assert set(result["step"]["images_per_s"]) == {"hand_convs_autodiff_bn", "hand_convs_hand_bn"}
  # The swap is undone: the hand namespace has its own BatchNorm again.
  from cnn_jax import ops  # pylint: disable=g-import-not-at-top
  assert ops.for_grad("hand").batch_norm is not ops.batch_norm


def test_train_step_dtype_flag_builds_bfloat16_models_and_rejects_others(capsys):
  """--dtype picks the project model's compute dtype; anything but float32/bfloat16, or a
  bfloat16 twin, is refused with exit code 2 before jax does any work."""
  # pylint: disable=protected-access
  from bench import train_step  # pylint: disable=g-import-not-at-top
  args = train_step._parse(["--dtype=float32,bfloat16", "--impl=project"])
  assert args.dtype_list == ["float32", "bfloat16"]
  model, _ = train_step.build_model(args, "hand", "bfloat16")
  x = jnp.zeros((2, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  # The first conv's activations are bfloat16, its parameters float32 (mixed precision).
  hidden = jax.eval_shape(lambda v: model.apply(v, x, train=False, capture_intermediates=True,
                                                mutable=["intermediates"]), variables)
  conv1_out = hidden[1]["intermediates"]["conv1"]["__call__"][0]
  assert conv1_out.dtype == jnp.bfloat16
  assert variables["params"]["conv1"]["kernel"].dtype == jnp.float32
  for bad in (["--dtype=float16"], ["--dtype=bfloat16", "--impl=twin"]):
    with pytest.raises(SystemExit) as error:
      train_step._parse(bad)
    assert error.value.code == 2
  assert "--dtype" in capsys.readouterr().err


def test_train_step_blocks_flag_times_scanned_and_unrolled_models(capsys):
  """--blocks=scan,unrolled builds one model of each form (parameters stacked under ``blocks``
  or not); an unknown form, or --blocks with --scan, is refused with exit code 2."""
  # pylint: disable=protected-access
  from bench import train_step  # pylint: disable=g-import-not-at-top
  args = train_step._parse(["--depth=110", "--blocks=scan,unrolled", "--grad=hand",
                            "--impl=project"])
  variants = train_step._variants(args)
  assert [v[-1] for v in variants] == ["scan", "unrolled"]
  x = jnp.zeros((1, 32, 32, 3), jnp.float32)
  for blocks in ("scan", "unrolled"):
    model, _ = train_step.build_model(train_step.with_blocks(args, blocks), "hand")
    shapes = jax.eval_shape(lambda m=model: m.init(jax.random.key(0), x, train=False))
    assert ("blocks" in shapes["params"]["stage2"]) == (blocks == "scan")
  for bad in (["--blocks=scanned"], ["--blocks=scan", "--scan"]):
    with pytest.raises(SystemExit) as error:
      train_step._parse(bad)
    assert error.value.code == 2
  assert "--blocks" in capsys.readouterr().err


def test_pools_bench_times_every_pool_both_ways_and_rejects_a_bad_shape(capsys):
  """bench.pools times each pool case under autodiff and by hand; a malformed --shape is
  refused with exit code 2 before jax runs anything."""
  import json  # pylint: disable=g-import-not-at-top
  from bench import pools  # pylint: disable=g-import-not-at-top
  pools.main(["--shape=2,6,6,3", "--repeats=1", "--json"])
  result = json.loads(capsys.readouterr().out)
  assert [(r["pool"], r["window"], r["stride"]) for r in result["rows"]] == list(pools.CASES)
  assert all(r["autodiff_ms"] > 0 and r["hand_ms"] > 0 for r in result["rows"])
  with pytest.raises(SystemExit) as error:
    pools.main(["--shape=2,6,6"])
  assert error.value.code == 2
  assert "--shape" in capsys.readouterr().err
