"""Tests of the training engine: optimizers, steps, files, overwrite, NaN, bad input.

End-to-end runs use a tiny BN CNN on 8x8 synthetic data (tests/train_fakes.py), 6 steps. One
uninterrupted reference run (module fixture, fresh data seed) is compared with a second run
of the same seed (bitwise). The runs in other processes (SIGKILL and resume, 8 fake devices,
two processes) are in test_train_distributed.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shutil
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnn_jax import native
from cnn_jax.train import checkpoints as checkpoints_lib
from cnn_jax.train import metrics as metrics_lib
from cnn_jax.train import optim
from cnn_jax.train import sharding as sharding_lib
from cnn_jax.train import state as state_lib
from cnn_jax.train import steps as steps_lib
from tests import train_fakes



# ----------------------------------------------------------------------------- optimizers

def test_step_schedule_divides_by_ten_at_half_and_three_quarters():
  config = train_fakes.tiny_config(num_steps=100, learning_rate=0.1, schedule="step")
  lr = optim.make_schedule(config)
  got = [float(lr(s)) for s in (0, 49, 50, 74, 75, 99)]
  np.testing.assert_allclose(got, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)


def test_cosine_schedule_warms_up_linearly_then_decays_to_zero():
  config = train_fakes.tiny_config(num_steps=110, learning_rate=0.4, schedule="cosine",
                                   warmup_steps=10)
  lr = optim.make_schedule(config)
  np.testing.assert_allclose([float(lr(s)) for s in (0, 5, 10, 60, 110)],
                             [0.0, 0.2, 0.4, 0.2, 0.0], atol=1e-6)


@pytest.mark.parametrize("field,value,match", [
    ("learning_rate", 0.0, "learning_rate=0.0"),
    ("learning_rate", -0.1, "learning_rate=-0.1"),
    ("learning_rate", float("nan"), "learning_rate=nan"),
    ("optimizer", "adam", "optimizer='adam'"),
    ("schedule", "poly", "schedule='poly'"),
    ("momentum", 1.0, "momentum=1.0"),
    ("warmup_steps", 7, "warmup_steps=7"),
    ("eval_every", -1, "eval_every=-1"),
    ("keep_checkpoints", 0, "keep_checkpoints=0"),
    ("batch_size", 0, "batch_size=0"),
    ("num_processes", 2, "coordinator_address"),
])
def test_bad_config_raises_before_writing(tmp_path, field, value, match):
  config = train_fakes.tiny_config(**{field: value})
  workdir = tmp_path / "run"
  with pytest.raises(ValueError, match=match):
    train_fakes.run(config, str(workdir))
  assert not workdir.exists()


def test_weight_decay_masks_biases_and_norm_scales(rng):
  # One SGD step without momentum: kernels get lr * (g + wd * w), other leaves lr * g.
  config = train_fakes.tiny_config(learning_rate=0.5, momentum=0.0, weight_decay=0.1,
                                   schedule="constant")
  tx = optim.make_optimizer(config)
  params = {"kernel": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=(2,)), jnp.float32)}
  grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
  updates, _ = tx.update(grads, tx.init(params), params)
  # float32, two multiply-adds: 1e-6 relative.
  np.testing.assert_allclose(updates["kernel"], -0.5 * (grads["kernel"] + 0.1 * params["kernel"]),
                             rtol=1e-6)
  np.testing.assert_allclose(updates["bias"], -0.5 * grads["bias"], rtol=1e-6)


@pytest.mark.parametrize("model_name,overrides", [
    ("resnet", dict(depth=26, width=4, scan_blocks=True, min_scanned_blocks=3)),  # scanned
    ("local", dict(depth=1, width=4, hidden=8)),
])
def test_weight_decay_mask_takes_kernels_only_also_when_stacked_or_spatial(model_name,
                                                                          overrides):
  # A scanned stage stacks its blocks' BatchNorm scales into (blocks, C) arrays and a locally
  # connected bias is (*out_spatial, C): both have ndim > 1 and must still not be decayed.
  from cnn_jax import models  # pylint: disable=g-import-not-at-top
  from experiments.configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config.model, config.num_classes, config.image_size = model_name, 3, 8
  for key, value in overrides.items():
    config[key] = value
  model = models.build(config)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)),
                                             train=False))["params"]
  mask = optim.decay_mask(params)
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  masked = dict(jax.tree_util.tree_flatten_with_path(mask)[0])
  names = {jax.tree_util.keystr(path): (path[-1].key, leaf.ndim, masked[path])
           for path, leaf in leaves}
  assert all(decayed == (name == "kernel") for name, _, decayed in names.values()), names
  # The cases the rule exists for are really there.
  assert any(name != "kernel" and ndim > 1 for name, ndim, _ in names.values()), names


def test_cross_entropy_with_label_smoothing_matches_formula(rng):
  logits = rng.normal(size=(5, 4)).astype(np.float32)
  labels = rng.integers(0, 4, 5)
  alpha = 0.2
  target = np.full((5, 4), alpha / 4)
  target[np.arange(5), labels] += 1 - alpha
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  want = -(target * log_p).sum(-1)
  got = steps_lib.cross_entropy(jnp.asarray(logits), jnp.asarray(labels), 4, alpha)
  np.testing.assert_allclose(got, want, rtol=1e-5)  # float32 log-softmax


# ----------------------------------------------------------------------------- steps

@contextlib.contextmanager
def _as_a_run_compiles():
  """Without conftest's test-wide ``jax_disable_most_optimizations``, as a run compiles."""
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", False)
  try:
    yield
  finally:
    jax.config.update("jax_disable_most_optimizations", previous)


@pytest.mark.parametrize("trainer_options", [False, True])
def test_train_step_is_one_sgd_step_on_the_batch_loss(rng, trainer_options):
  """``trainer_options``: compiled as the trainer compiles it (``steps.compiler_options()``:
  LLVM level 2, Eigen convolutions), which must not change the math beyond rounding."""
  model = train_fakes.TinyCNN(num_classes=3)
  data = train_fakes.make_dataset(int(rng.integers(2 ** 31)))
  config = train_fakes.tiny_config(learning_rate=0.3, momentum=0.0, weight_decay=0.0,
                                   schedule="constant", augment=False)
  schedule = optim.make_schedule(config)
  tx = optim.make_optimizer(config, schedule)
  mesh = sharding_lib.make_mesh()
  seed = int(rng.integers(1000))
  init = lambda: state_lib.create(model, tx, (8, 8, 1), seed)
  sharding = jax.tree.map(lambda _: sharding_lib.replicated(mesh), jax.eval_shape(init))
  state = jax.jit(init, out_shardings=sharding)()
  names = state_lib.layer_names(model, (8, 8, 1))
  _, prepare = train_fakes.data_functions()
  with _as_a_run_compiles():
    options = steps_lib.compiler_options() if trainer_options else None
  assert not trainer_options or options["xla_backend_optimization_level"] == 2
  step = steps_lib.make_train_step(
      model, tx, schedule, prepare_batch=prepare, mean=data.mean, std=data.std, augment=False,
      num_classes=3, layer_names=names, mesh=mesh, state_sharding=sharding, xla_options=options)
  idx = rng.choice(len(data.x_train), 16, replace=False)
  batch = {"image": data.x_train[idx], "label": data.y_train[idx]}

  x = prepare(jnp.asarray(batch["image"]), data.mean, data.std, augment=False)

  def loss_fn(p):
    logits, _ = model.apply({"params": p, "batch_stats": state.batch_stats}, x, train=True,
                            mutable=["batch_stats"])
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]))

  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(state.params)
  want = jax.tree.map(lambda p, g: p - 0.3 * g, state.params, grads)
  want_norms = {n: float(np.sqrt(sum(np.sum(np.square(v)) for v in grads[n].values())))
                for n in names}
  with _as_a_run_compiles() if trainer_options else contextlib.nullcontext():
    new_state, metrics = step(state, sharding_lib.global_batch(batch, mesh, 16))
  # A second step reuses the compiled program (no retrace per step).
  step(jax.tree.map(jnp.copy, new_state), sharding_lib.global_batch(batch, mesh, 16))
  assert step._cache_size() == 1  # pylint: disable=protected-access
  # float32 forward/backward of the same graph: 1e-5 relative.
  np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
  chex.assert_trees_all_close(new_state.params, want, rtol=1e-5, atol=1e-7)
  assert int(new_state.step) == 1
  assert names == ["Conv_0", "BatchNorm_0", "Conv_1", "BatchNorm_1", "Dense_0"]
  np.testing.assert_allclose([float(metrics["layer_grad_norm"][n]) for n in names],
                             [want_norms[n] for n in names], rtol=1e-5)
  # BN running statistics moved.
  assert not np.allclose(new_state.batch_stats["BatchNorm_0"]["mean"], 0)


def test_layer_names_follow_call_order_past_ten_layers():
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  class Deep(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      for _ in range(12):
        x = nn.Dense(2)(x)
      return x

  names = state_lib.layer_names(Deep(), (3,))
  assert names == [f"Dense_{i}" for i in range(12)]  # a sorted order would put 10 after 1


# ----------------------------------------------------------------------------- runs

@pytest.fixture(scope="module")
def data_seed():
  return train_fakes.fresh_seed()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_seed):
  """The uninterrupted tiny run: (workdir, summary)."""
  return train_fakes.reference_run(str(tmp_path_factory.mktemp("reference")), data_seed)


_rows = train_fakes.rows
_summary = train_fakes.summary


def _final_state(workdir, step=6):
  return train_fakes.load_state(os.path.join(workdir, "checkpoints", str(step), "state"))


def test_run_writes_its_files(reference):
  workdir, summary = reference
  names = set(os.listdir(workdir))
  assert {"config.json", "metrics.jsonl", "grad_norms.jsonl", "summary.json",
          "checkpoints"} <= names
  assert any(n.startswith("events.out.tfevents") for n in names)
  with open(os.path.join(workdir, "config.json")) as f:
    config = json.load(f)
  assert config["num_classes"] == 3 and config["num_steps"] == 6
  rows = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  assert [r["step"] for r in rows] == [2, 4, 6]
  for r in rows:
    assert {"train_loss", "train_accuracy", "eval_loss", "eval_accuracy", "learning_rate",
            "images_per_sec", "grad_norm"} <= set(r)
  # Step schedule over 6 steps: lr of the last update in each window (steps 1, 3, 5).
  np.testing.assert_allclose([r["learning_rate"] for r in rows], [0.05, 0.005, 0.0005],
                             rtol=1e-6)
  grad_rows = metrics_lib.read_jsonl(os.path.join(workdir, "grad_norms.jsonl"))
  assert [r["step"] for r in grad_rows] == [3, 6]
  assert list(grad_rows[0]["grad_norms"]) == ["Conv_0", "BatchNorm_0", "Conv_1", "BatchNorm_1",
                                              "Dense_0"]
  assert sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))) == [4, 6]
  assert summary["steps"] == 6 and summary["num_params"] == 211
  for k in ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "wall_time_s"):
    assert np.isfinite(summary[k])
  assert summary["test_loss"] == rows[-1]["eval_loss"]


def test_finished_run_is_not_overwritten_and_same_seed_gives_same_run(reference, tmp_path,
                                                                       data_seed):
  workdir, _ = reference
  before = open(os.path.join(workdir, "metrics.jsonl")).read()
  with pytest.raises(FileExistsError, match="overwrite=True"):
    train_fakes.run(train_fakes.tiny_config(), workdir)
  assert open(os.path.join(workdir, "metrics.jsonl")).read() == before
  # overwrite=True trains a copy of the finished run again from scratch; the same seed gives
  # bitwise the same numbers.
  again = str(tmp_path / "again")
  shutil.copytree(workdir, again)
  train_fakes.run(train_fakes.tiny_config(overwrite=True), again,
                  dataset=train_fakes.make_dataset(data_seed))
  assert _rows(again, "metrics.jsonl") == _rows(workdir, "metrics.jsonl")
  assert _rows(again, "grad_norms.jsonl") == _rows(workdir, "grad_norms.jsonl")
  assert _summary(again) == _summary(workdir)
  assert len([n for n in os.listdir(again) if n.startswith("events.out")]) == 1


def test_resume_from_a_different_model_fails_before_training(reference, tmp_path):
  workdir, _ = reference
  unfinished = tmp_path / "unfinished"
  shutil.copytree(os.path.join(workdir, "checkpoints"), unfinished / "checkpoints")
  with pytest.raises(ValueError, match=r"parameter BatchNorm_0/bias has shape \[4\] there, "
                                       r"\[6\] now"):
    train_fakes.run(train_fakes.tiny_config(num_steps=8), str(unfinished),
                    model=train_fakes.OtherCNN(num_classes=3))
  with pytest.raises(ValueError, match="depth=20 there, 56 now"):
    train_fakes.run(train_fakes.tiny_config(num_steps=8, depth=56), str(unfinished))
  assert sorted(os.listdir(unfinished)) == ["checkpoints"]  # nothing written


def test_nan_loss_stops_the_run_naming_the_step(tmp_path):
  # lr 1e38 sends the weights to ~1e37 after one update; the next forward pass overflows.
  config = train_fakes.tiny_config(learning_rate=1e38, schedule="constant", checkpoint_every=1,
                                   weight_decay=0.0, grad_clip=0.0)
  workdir = tmp_path / "nan"
  with pytest.raises(FloatingPointError,
                     match=r"diverged at step \d+: NaN or inf in the loss .*the newest checkpoint"):
    train_fakes.run(config, str(workdir))
  assert not (workdir / "summary.json").exists()
  good = checkpoints_lib.Checkpoints(str(workdir / "checkpoints"), 2)
  step = good.latest_step()
  good.close()
  assert step is not None
  state = _final_state(str(workdir), step)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state))




def test_experiment_trains_a_real_model_on_real_data(tmp_path):
  # Integration with cnn_jax.models and cnn_jax.data (other packages): skipped until merged.
  pytest.importorskip("cnn_jax.models")
  pytest.importorskip("cnn_jax.data")
  from experiments import train  # pylint: disable=g-import-not-at-top
  config = train_fakes.tiny_config(model="resnet", depth=8, dataset="digits", image_size=8,
                                   num_steps=3, eval_every=3, checkpoint_every=3,
                                   log_grad_norms_every=3)
  summary = train.run(config, str(tmp_path / "run"))
  assert summary["steps"] == 3 and np.isfinite(summary["test_loss"])
  assert (tmp_path / "run" / "summary.json").exists()


def test_scanned_blocks_get_one_gradient_norm_each(rng):
  # Stacked parameters of 2 scanned blocks (leading axis) are split and named as unrolled.
  kernel = rng.normal(size=(2, 3, 3)).astype(np.float32)
  bias = rng.normal(size=(2, 3)).astype(np.float32)
  stem = rng.normal(size=(4,)).astype(np.float32)
  tree = {"stem": {"kernel": stem}, "s": {"blocks": {"block": {"conv": {"kernel": kernel,
                                                                         "bias": bias}}}}}
  norms = jax.device_get(steps_lib.layer_norms(tree, ["stem", "s/blocks/block/conv"]))
  out = steps_lib.expand_layer_norms(norms, ["stem", "s/block0/conv", "s/block1/conv",
                                             "s/block2/conv"])
  assert list(out) == ["stem", "s/block1/conv", "s/block2/conv"]
  want = [np.linalg.norm(stem)] + [np.sqrt(np.sum(kernel[i] ** 2) + np.sum(bias[i] ** 2))
                                   for i in range(2)]
  np.testing.assert_allclose(list(out.values()), want, rtol=1e-6)  # float32 sums of 13 squares


class _Terminal(io.StringIO):
  def isatty(self):
    return True


@pytest.mark.parametrize("progress,tty,shown", [(True, True, True), (False, True, False),
                                                 (True, False, False)])
def test_progress_bar_only_on_a_terminal_and_when_asked(tmp_path, monkeypatch, progress, tty,
                                                        shown):
  stderr = _Terminal() if tty else io.StringIO()
  monkeypatch.setattr(sys, "stderr", stderr)
  writer = metrics_lib.MetricsWriter(str(tmp_path), num_steps=10, start_step=0, enabled=True,
                                     progress=progress)
  writer.advance(1, loss=0.123456, accuracy=0.5)
  writer.close()
  assert ("loss=0.1235" in stderr.getvalue()) == shown


def test_resume_drops_rows_logged_after_the_checkpoint(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 2, "a": 1}\n{"step": 4, "a": 2}\n{"step": 6, "a"')  # torn last line
  writer = metrics_lib.MetricsWriter(str(tmp_path), num_steps=10, start_step=2, enabled=True,
                                     progress=False)
  writer.write(4, {"a": 3.0})
  writer.close()
  assert metrics_lib.read_jsonl(str(path)) == [{"step": 2, "a": 1}, {"step": 4, "a": 3.0}]


def test_autodiff_through_scanned_blocks_on_cpu_is_flagged_and_nothing_else():
  # The trainer warns about the one slow combination (docs/models.md): grad=autodiff with
  # scanned blocks on XLA's CPU backend. Names are the real ones of a scanned ResNet-110.
  from cnn_jax import models  # pylint: disable=g-import-not-at-top
  from cnn_jax.train import loop  # pylint: disable=g-import-not-at-top
  from experiments.configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  names = {}
  for depth in (20, 110):
    config.depth = depth
    variables = jax.eval_shape(lambda m=models.build(config): m.init(
        jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False))
    names[depth] = steps_lib.param_shapes(variables["params"])
  assert jax.default_backend() == "cpu"
  config.grad = "autodiff"
  assert loop.slow_scanned_autodiff(config, names[110])
  assert not loop.slow_scanned_autodiff(config, names[20])  # ResNet-20 has nothing scanned
  config.grad = "hand"
  assert not loop.slow_scanned_autodiff(config, names[110])


def _conv_program(options):
  """The compiled text of a 3x3 32->32 convolution (YNNPACK-eligible: > 16 channels)."""
  x = jnp.zeros((2, 8, 8, 32), jnp.float32)
  w = jnp.zeros((3, 3, 32, 32), jnp.float32)
  conv = lambda x_, w_: jax.lax.conv_general_dilated(
      x_, w_, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return jax.jit(conv, compiler_options=options).lower(x, w).compile().as_text()


def test_compiler_options_keep_convolutions_out_of_ynnpack():
  """The trainer's default compiler options make XLA's CPU backend run a convolution itself
  (Eigen) instead of in a YNNPACK fusion, which XLA's own default picks above 16 channels
  (docs/benchmarks-history.md, "Convolutions in Eigen, not YNNPACK")."""
  assert jax.default_backend() == "cpu"
  default_text = _conv_program(steps_lib.compiler_options(ynnpack_convolutions=True))
  eigen_text = _conv_program(steps_lib.compiler_options())
  assert "__ynn_fusion" in default_text  # the premise: XLA's default uses YNNPACK here
  assert "__ynn_fusion" not in eigen_text
  assert "convolution(" in eigen_text
  assert "xla_cpu_experimental_ynn_fusion_type" not in steps_lib.compiler_options(
      ynnpack_convolutions=True)


@pytest.mark.parametrize("model_name,depth", [("resnet", 8), ("local", 2)])
def test_state_created_with_fast_init_compile_options_is_bitwise_the_default(model_name, depth):
  """``create_jitted`` compiles init at a lower LLVM level (``xla_options.optimization_level``,
  for compile time); the parameters and optimizer state must be the same bits as XLA's default
  compile gives, so runs and checkpoints are unchanged by it. Fresh seed each run."""
  from cnn_jax import models  # pylint: disable=g-import-not-at-top
  from cnn_jax import xla_options  # pylint: disable=g-import-not-at-top
  from cnn_jax.train import loop  # pylint: disable=g-import-not-at-top
  from experiments.configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config.update(model=model_name, depth=depth, dataset="digits", image_size=8)
  config = loop.resolve_config(config)
  model = models.build(config)
  tx = optim.make_optimizer(config, optim.make_schedule(config))
  seed = int(np.random.default_rng().integers(1 << 30))
  with _as_a_run_compiles():
    assert xla_options.optimization_level()  # not empty on CPU: the two compiles differ
    fast = state_lib.create_jitted(model, tx, (8, 8, 1), seed)
    reference = jax.jit(lambda: state_lib.create(model, tx, (8, 8, 1), seed))()
  fast_leaves, reference_leaves = jax.tree.leaves(fast), jax.tree.leaves(reference)
  assert len(fast_leaves) == len(reference_leaves) > 2
  for a, b in zip(fast_leaves, reference_leaves):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"seed {seed}")


def test_kernels_values_are_checked():
  from cnn_jax.train import loop  # pylint: disable=g-import-not-at-top
  from experiments.configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config.kernels = "mkl"
  with pytest.raises(ValueError, match="kernels='mkl' is not allowed: give one of auto, xla, "
                     "native"):
    loop.validate(config)
  config.kernels, config.conv_algorithm = "xla", "fft"
  with pytest.raises(ValueError, match="conv_algorithm='fft' is not allowed: give one of auto, "
                     "auto_winograd4, autotune, autotune_winograd4, direct, winograd2, "
                     "winograd4"):
    loop.validate(config)
  for kernels in ("auto", "xla", "native"):
    config.kernels, config.conv_algorithm = kernels, "direct"
    loop.validate(config)


def test_validation_split_is_evaluated_and_reported_apart_from_test(tmp_path):
  # The validation arrays are a copy of the test split: whatever the trainer reports for
  # validation must then equal, bit for bit, what it reports for test (the independent
  # reference: its own test evaluation), in every metrics row and in the summary; with the
  # validation arrays a copy of the training split they must equal the training pass instead.
  base = train_fakes.make_dataset(int(np.random.default_rng().integers(2 ** 31)))
  for name, (x_val, y_val), reference in (("test", (base.x_test, base.y_test), "test"),
                                          ("train", (base.x_train, base.y_train), "train")):
    dataset = _with_validation(base, x_val.copy(), y_val.copy())
    summary = train_fakes.run(train_fakes.tiny_config(), str(tmp_path / name), dataset=dataset)
    assert summary["validation_accuracy"] == summary[f"{reference}_accuracy"]
    assert summary["validation_loss"] == summary[f"{reference}_loss"]
    rows = metrics_lib.read_jsonl(str(tmp_path / name / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [2, 4, 6]
    if reference == "test":
      for row in rows:
        assert (row["val_loss"], row["val_accuracy"]) == (row["eval_loss"], row["eval_accuracy"])


def _with_validation(base, x_val, y_val):
  @dataclasses.dataclass(frozen=True, eq=False)
  class WithValidation(train_fakes.FakeDataset):
    x_val: np.ndarray = None
    y_val: np.ndarray = None
  return WithValidation(**{f.name: getattr(base, f.name)
                           for f in dataclasses.fields(train_fakes.FakeDataset)},
                        x_val=x_val, y_val=y_val)


def test_no_validation_split_writes_no_validation_numbers(tmp_path):
  summary = train_fakes.run(train_fakes.tiny_config(num_steps=2), str(tmp_path / "r"))
  assert "validation_accuracy" not in summary
  rows = metrics_lib.read_jsonl(str(tmp_path / "r" / "metrics.jsonl"))
  assert all("val_accuracy" not in r for r in rows)


def _zoo_model(config, dataset):
  """``models.build`` of ``config`` (unchanged) for ``dataset``'s classes, on one device."""
  from cnn_jax import models  # pylint: disable=g-import-not-at-top
  built = config.copy_and_resolve_references()
  with built.unlocked():
    built.num_classes = dataset.num_classes
  return models.build(built, num_devices=1)


@pytest.mark.skipif(not native.available(),
                    reason=f"native kernels unavailable: {native.unavailable_reason()}")
def test_a_resumed_run_keeps_its_recorded_kernels_and_its_numbers(tmp_path, monkeypatch):
  # conv_algorithm=autotune (the default) picks kernels by measurement, and two kernels differ
  # in the last bits. A run killed after a checkpoint must resume on the kernels it trained
  # with even where the machine's cache now says otherwise (deleted, re-measured, another
  # CPU), or it would not end with the numbers of a run that never stopped.
  from cnn_jax.native import autotune  # pylint: disable=g-import-not-at-top
  config = train_fakes.tiny_config(model="resnet", depth=8, grad="hand")
  assert config.kernels == "auto" and config.conv_algorithm == "autotune"
  dataset = train_fakes.make_dataset(train_fakes.fresh_seed())

  def machine_measures(winner, cache):
    monkeypatch.setattr(autotune, "cache_file", lambda: str(tmp_path / cache / "autotune.json"))
    monkeypatch.setattr(autotune, "measure", lambda *args: {
        "choice": winner if winner in args[3] else "direct", "seconds": {}, "rejected": {}})

  machine_measures("direct", "cache_then")
  reference = str(tmp_path / "reference")
  train_fakes.run(config, reference, model=_zoo_model(config, dataset), dataset=dataset)
  with open(os.path.join(reference, "kernels.json")) as f:
    recorded = json.load(f)
  assert set(recorded.values()) == {"direct"}
  assert any("winograd2" in layer for layer in recorded)  # F(2x2) could have run there
  killed = str(tmp_path / "killed")  # as if killed after its checkpoint at step 4
  shutil.copytree(reference, killed)
  os.remove(os.path.join(killed, "summary.json"))
  shutil.rmtree(os.path.join(killed, "checkpoints", "6"))

  machine_measures("winograd2", "cache_now")
  summary = train_fakes.run(config, killed, model=_zoo_model(config, dataset), dataset=dataset)
  assert summary["resumed_from"] == 4
  # Bitwise: the same kernels on the same numbers.
  assert _rows(killed, "metrics.jsonl") == _rows(reference, "metrics.jsonl")
  assert _summary(killed) == _summary(reference)
  jax.tree.map(np.testing.assert_array_equal, _final_state(killed), _final_state(reference))


@pytest.mark.skipif(not native.available(),
                    reason=f"native kernels unavailable: {native.unavailable_reason()}")
def test_autotuning_measures_only_the_shapes_the_steps_run(tmp_path, monkeypatch):
  # Init, the model summary and the layer names run the model on one example for its shapes.
  # A kernel measured there costs compile time for a shape no step meets, and lands in the
  # run's kernels.json; the variables must not depend on the kernels, or init could not take
  # the fixed rule instead.
  from cnn_jax.native import autotune  # pylint: disable=g-import-not-at-top
  config = train_fakes.tiny_config(model="resnet", depth=8, grad="hand")
  dataset = train_fakes.make_dataset(train_fakes.fresh_seed())
  model = _zoo_model(config, dataset)
  measured = []
  monkeypatch.setattr(autotune, "cache_file", lambda: str(tmp_path / "cache" / "autotune.json"))
  monkeypatch.setattr(autotune, "measure", lambda *args: measured.append(args[0]) or {
      "choice": "direct", "seconds": {}, "rejected": {}})

  workdir = str(tmp_path / "run")
  train_fakes.run(config, workdir, model=model, dataset=dataset)
  assert measured and all(x_shape[0] > 1 for x_shape in measured), measured
  with open(os.path.join(workdir, "kernels.json")) as f:
    assert not [layer for layer in json.load(f) if "x(1," in layer]

  x = jnp.asarray(dataset.x_train[:1], jnp.float32)
  key = jax.random.key(train_fakes.fresh_seed())
  tuned = model.init(key, x, train=False)
  untuned = native.without_tuning(model).init(key, x, train=False)
  jax.tree.map(np.testing.assert_array_equal, tuned, untuned)


@pytest.mark.skipif(not native.available(),
                    reason=f"native kernels unavailable: {native.unavailable_reason()}")
def test_a_forced_kernel_that_does_not_fit_a_layer_stops_the_run_before_it_writes(tmp_path):
  # F(2x2, 3x3) takes channels in multiples of 8: the stem (1 -> 16 channels) refuses it.
  config = train_fakes.tiny_config(model="resnet", depth=8, grad="hand", kernels="native",
                                   conv_algorithm="winograd2")
  dataset = train_fakes.make_dataset()
  workdir = tmp_path / "run"
  with pytest.raises(ValueError, match="conv_algorithm='winograd2' does not apply to a 3x3 "):
    train_fakes.run(config, str(workdir), model=_zoo_model(config, dataset), dataset=dataset)
  assert not workdir.exists() or not list(workdir.iterdir())
