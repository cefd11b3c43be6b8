"""Every model runs with only its name: per-model defaults where the user set nothing.

The default config leaves the model-dependent fields ``None`` ("the model's own");
``cnn_jax.models.with_defaults`` fills them from the model's ``CONFIG_DEFAULTS``, a value the
user sets wins and is checked as before, and the trainer records the values it used in
``config.json``.
"""

import json

import jax
import numpy as np
import pytest

from cnn_jax import data
from cnn_jax import models
from cnn_jax import train
from cnn_jax.train import loop
from cnn_jax.train import optim
from cnn_jax.train import sharding as sharding_lib
from cnn_jax.train import state as state_lib
from cnn_jax.train import steps as steps_lib
from experiments import runner
from experiments.configs import default


def _named_only(model: str, dataset: str):
  """The default config with ``model`` and ``dataset`` set, shrunk only through fields that
  are not model fields (data size, batch, steps, bookkeeping), so it runs in seconds."""
  config = default.get_config()
  config.model, config.dataset = model, dataset
  config.image_size, config.signal_length = 8, 18
  config.train_size, config.batch_size, config.num_steps = 32, 32, 1
  config.eval_every = config.log_grad_norms_every = 0
  config.checkpoint_every, config.progress = 0, False
  return config


def test_model_fields_are_unset_in_the_default_config():
  config = default.get_config()
  fields = {f for d in models.DEFAULTS.values() for f in d}
  assert fields >= {"depth", "width", "stride", "downsample", "cardinality"}
  assert all(config[f] is None for f in fields)


def _one_trainer_step(config) -> dict:
  """What ``train_and_evaluate`` does up to its first step, without its evaluation and
  checkpoint (two more compiles per model): the preflight, the trainer's config resolution,
  data, model, state and jitted train step; returns the step's metrics."""
  train.preflight(config)
  config = loop.resolve_config(config)
  dataset, model = loop.data_and_model(config)
  schedule = optim.make_schedule(config)
  tx = optim.make_optimizer(config, schedule)
  mesh = sharding_lib.make_mesh()
  shape = dataset.x_train.shape[1:]
  abstract = jax.eval_shape(lambda: state_lib.create(model, tx, shape, config.seed))
  sharding = jax.tree.map(lambda _: sharding_lib.replicated(mesh), abstract)
  state = state_lib.create_jitted(model, tx, shape, config.seed, sharding)
  step = steps_lib.make_train_step(
      model, tx, schedule, prepare_batch=data.prepare_batch, mean=dataset.mean,
      std=dataset.std, augment=bool(config.augment), num_classes=config.num_classes, mesh=mesh,
      state_sharding=sharding)
  size = config.batch_size
  batch = {"image": dataset.x_train[:size], "label": dataset.y_train[:size].astype(np.int32)}
  _, metrics = step(state, sharding_lib.global_batch(batch, mesh, size))
  return jax.device_get(metrics)


@pytest.mark.parametrize("dataset", sorted(data.OFFLINE_DATASETS))
@pytest.mark.parametrize("model", sorted(models.MODELS))
def test_every_model_trains_one_step_on_every_offline_dataset_named_alone(model, dataset):
  metrics = _one_trainer_step(_named_only(model, dataset))
  assert np.all(metrics["finite"]) and metrics["grad_norm"] > 0


@pytest.mark.parametrize("model", sorted(models.MODELS))
def test_a_run_records_the_models_own_values_in_config_json(model, tmp_path):
  if model not in ("mlp", "simple_cnn"):  # the others: resolution only (compiles are slow)
    config = loop.resolve_config(_named_only(model, "digits"))
    assert {f: config[f] for f in models.DEFAULTS[model]} == models.DEFAULTS[model]
    return
  summary = train.train_and_evaluate(_named_only(model, "digits"), str(tmp_path))
  assert summary["steps"] == 1
  saved = json.loads((tmp_path / "config.json").read_text())
  assert {f: saved[f] for f in models.DEFAULTS[model]} == models.DEFAULTS[model]


def test_an_explicit_value_wins_and_is_checked(tmp_path):
  config = _named_only("simple_cnn", "digits")
  config.depth, config.downsample = 1, "conv"
  train.train_and_evaluate(config, str(tmp_path))
  saved = json.loads((tmp_path / "config.json").read_text())
  assert (saved["depth"], saved["downsample"], saved["width"]) == (1, "conv", 16)
  config = _named_only("resnet", "digits")
  config.depth = 21
  with pytest.raises(ValueError, match=r"depth=21 is not allowed for model='resnet'"):
    train.preflight(config)


def test_with_defaults_fills_only_unset_fields_and_leaves_its_input_alone():
  config = default.get_config()
  config.model, config.width = "resnext", 8
  resolved = models.with_defaults(config)
  assert (resolved.depth, resolved.width, resolved.cardinality) == (29, 8, 8)
  assert config.depth is None and config.cardinality is None


def test_a_sweep_over_an_unset_model_field_parses_its_type():
  axes = runner.parse_sweeps(["depth=8,14", "downsample=pool"], default.get_config())
  assert [a.values for a in axes] == [(8, 14), ("pool",)]
  with pytest.raises(runner.UsageError, match="depth takes a int"):
    runner.parse_sweeps(["depth=eight"], default.get_config())
