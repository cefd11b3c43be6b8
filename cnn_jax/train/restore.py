"""Reading a trained model back: the module and its final variables from a run's checkpoint.

Studies that look inside trained nets (learned kernels, accuracy at unseen shifts, invariance
of pooling) call ``load_trained`` on a finished run instead of keeping state in memory, so
they also work on runs trained earlier or by another process.
"""

from __future__ import annotations

import os

import jax
import ml_collections

from cnn_jax.train import checkpoints as checkpoints_lib
from cnn_jax.train import loop
from cnn_jax.train import optim
from cnn_jax.train import state as state_lib


def load_trained(config: ml_collections.ConfigDict, workdir: str, *, dataset=None):
  """The model of ``config`` and the variables of the newest checkpoint in ``workdir``.

  Args:
    config: the run's config (as trained; ``num_classes`` is taken from the dataset).
    workdir: the run directory (holding ``checkpoints/``).
    dataset: the run's dataset (default ``cnn_jax.data.load(config)``); gives the input shape.

  Returns:
    ``(model, variables)`` with ``variables = {"params": ..., "batch_stats": ...}``, ready for
    ``model.apply(variables, x, train=False)``.

  Raises:
    ValueError: if ``workdir`` has no checkpoint, or none that can be read (an unreadable
      newest one falls back to the next older, see ``checkpoints.restore_newest``).
  """
  config = loop.resolve_config(config)
  dataset, model = loop.data_and_model(config, dataset)
  input_shape = tuple(dataset.x_train.shape[1:])
  tx = optim.make_optimizer(config, optim.make_schedule(config))
  abstract = jax.eval_shape(lambda: state_lib.create(model, tx, input_shape, config.seed))
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  like = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                      abstract)
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    raise ValueError(f"workdir={workdir!r} has no checkpoints/ to load a trained model from.")
  _, state, _ = checkpoints_lib.restore_newest(
      directory, max(1, int(config.keep_checkpoints)), like)
  if state is None:
    raise ValueError(f"workdir={workdir!r} has no complete checkpoint to load.")
  return model, {"params": state.params, "batch_stats": state.batch_stats}
