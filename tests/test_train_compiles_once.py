"""A run compiles its train step once and its eval step once, however many steps it takes.

``chex.assert_max_traces`` counts how often a Python function is traced: the batch preparation
runs inside both jitted steps (with ``augment=True`` in the train step, ``False`` in the eval
step), so one trace of each proves that every later step and evaluation reused the compiled
program. A retrace per step would cost a compile per step (seconds each).
"""

import chex

from cnn_jax.train import train_and_evaluate
from tests import train_fakes


def test_a_run_traces_its_train_step_once_and_its_eval_step_once(tmp_path):
  chex.clear_trace_counter()
  _, prepare = train_fakes.data_functions()

  @chex.assert_max_traces(n=1)
  def prepare_in_train_step(images, mean, std, *, key):
    return prepare(images, mean, std, augment=True, key=key)

  @chex.assert_max_traces(n=1)
  def prepare_in_eval_step(images, mean, std, *, key):
    return prepare(images, mean, std, augment=False, key=key)

  def prepare_batch(images, mean, std, *, augment, key=None):
    chosen = prepare_in_train_step if augment else prepare_in_eval_step
    return chosen(images, mean, std, key=key)

  batch_indices, _ = train_fakes.data_functions()
  # 6 steps, an evaluation every 2 (test split 24 rows: a padded last batch), checkpoints.
  config = train_fakes.tiny_config(augment=True)
  summary = train_and_evaluate(config, str(tmp_path), model=train_fakes.TinyCNN(num_classes=3),
                               dataset=train_fakes.make_dataset(), batch_indices=batch_indices,
                               prepare_batch=prepare_batch)
  assert summary["steps"] == config.num_steps == 6
