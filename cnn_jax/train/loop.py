"""``train_and_evaluate``: one training run from a config, resumable, into a workdir.

The run directory holds ``config.json`` (the resolved config), ``model_summary.txt`` (the
per-layer table: shapes, parameters, MACs, receptive field), ``metrics.jsonl`` (one row per
``eval_every`` steps), ``grad_norms.jsonl`` (per-layer gradient norms every
``log_grad_norms_every`` steps), TensorBoard ``events.*``, ``checkpoints/<step>/`` and, once the
run is finished, ``summary.json``; with ``conv_algorithm="autotune"`` (the default),
``kernels.json`` records each convolution layer's measured kernel choice. A workdir whose
``summary.json`` exists is a finished run: training there again raises ``FileExistsError``
unless ``overwrite=True`` (the sweep runner skips such runs itself). An unfinished run
resumes from its newest checkpoint (``resume=True``, the default) and ends with the same
parameters and metrics as a run that never stopped: batches and random keys are functions
of the step, the checkpoint carries the running metric sums, and ``kernels.json`` the
kernels.

Every input check runs before anything is written, traced or compiled.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from cnn_jax import atomic
from cnn_jax import native
from cnn_jax import rundir
from cnn_jax.train import checkpoints as checkpoints_lib
from cnn_jax.train import metrics as metrics_lib
from cnn_jax.train import optim
from cnn_jax.train import sharding as sharding_lib
from cnn_jax.train import state as state_lib
from cnn_jax.train import steps as steps_lib

# Fields the trainer reads beyond default.py's original list, with their defaults, so a config
# written before they existed still runs.
LOOP_DEFAULTS = {
    "progress": True,            # tqdm bar (only on a terminal)
    "resume": True,              # continue from the newest checkpoint of an unfinished run
    "overwrite": False,          # replace a finished run in the workdir
    "coordinator_address": "",   # multi-host: "host:port" of process 0
    "num_processes": 1,
    "process_id": 0,
    "kernels": "auto",           # see cnn_jax.native.choice
    "conv_algorithm": "auto",
}

# Config fields that define a model's structure: a checkpoint made with other values of any
# of them is of a different model.
MODEL_FIELDS = ("model", "depth", "width", "cardinality", "shortcut", "stride", "first_stride",
                "downsample", "pool", "hidden", "num_classes")

# Files of a previous run that a fresh start (overwrite, or resume=False) removes. Nothing else
# in the workdir is touched.
_RUN_FILES = ("summary.json", "config.json", "model_summary.txt", metrics_lib.METRICS_FILE,
              metrics_lib.GRAD_NORMS_FILE, "kernels.json")

SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.json"
MODEL_SUMMARY_FILE = "model_summary.txt"
# The autotuned layers' choices (conv_algorithm="autotune*"), recorded on first use and read
# back on resume: cnn_jax.native.autotune.choose.
KERNELS_FILE = "kernels.json"


def resolve_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of ``config`` with references resolved, the model fields left ``None`` set to the
  model's own defaults (``cnn_jax.models.with_defaults``) and the loop's new fields defaulted."""
  from cnn_jax import models  # pylint: disable=g-import-not-at-top
  config = models.with_defaults(config).copy_and_resolve_references()
  with config.unlocked():
    for name, value in LOOP_DEFAULTS.items():
      if name not in config:
        setattr(config, name, value)
  return config


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks every training field that needs no devices or data (see also ``optim.validate``).

  Raises:
    ValueError: one line naming the field, its value and what is allowed.
  """
  optim.validate(config)
  for name in ("eval_every", "checkpoint_every", "log_grad_norms_every"):
    value = config[name]
    if int(value) != value or value < 0:
      raise ValueError(f"{name}={value!r}: must be an integer >= 0 (0 = only at the end / off)")
  if int(config.keep_checkpoints) != config.keep_checkpoints or config.keep_checkpoints < 1:
    raise ValueError(f"keep_checkpoints={config.keep_checkpoints!r}: must be an integer >= 1")
  if int(config.batch_size) != config.batch_size or config.batch_size <= 0:
    raise ValueError(f"batch_size={config.batch_size!r}: must be an integer > 0")
  native.check(config.kernels, config.conv_algorithm)


def data_and_model(config: ml_collections.ConfigDict, dataset=None, model=None):
  """The run's dataset and model (loaded/built unless given); sets ``config.num_classes``.

  Raises:
    ValueError: the batch is larger than the training split (one line).
  """
  if dataset is None:
    from cnn_jax import data as data_lib  # pylint: disable=g-import-not-at-top
    dataset = data_lib.load(config)
  if config.batch_size > len(dataset.x_train):
    raise ValueError(f"batch_size={config.batch_size} is larger than the {len(dataset.x_train)} "
                     "training examples: give batch_size <= the training split.")
  with config.unlocked():
    config.num_classes = int(dataset.num_classes)
  if model is None:
    from cnn_jax import models  # pylint: disable=g-import-not-at-top
    model = models.build(config)
  return dataset, model


def preflight(config: ml_collections.ConfigDict, *, dataset=None, model=None) -> None:
  """Checks a run's config completely without training: fields, data, model and shapes.

  Loads the dataset (offline ones are cheap), builds the model and initialises it abstractly
  (``jax.eval_shape``: nothing is compiled or computed), so that a model that does not fit the
  data (a stride shrinking a map below 1x1, a channel mismatch) fails here, before a sweep
  starts any run or writes any file.

  Raises:
    ValueError: one line naming the field and what is allowed.
  """
  config = resolve_config(config)
  validate(config)
  dataset, model = data_and_model(config, dataset, model)
  tx = optim.make_optimizer(config, optim.make_schedule(config))
  input_shape = tuple(dataset.x_train.shape[1:])
  jax.eval_shape(lambda: state_lib.create(model, tx, input_shape, config.seed))


def slow_scanned_autodiff(config: ml_collections.ConfigDict, param_names) -> bool:
  """Whether this run differentiates convolutions inside ``nn.scan`` by autodiff on a CPU.

  ``param_names``: the model's parameter paths ("a/b/kernel"); scanned blocks hold theirs
  under ``steps.SCANNED``.

  JAX transposes a convolution into weight-gradient convolutions in a non-canonical layout;
  XLA's CPU backend rewrites those into its fast (Eigen) form only at a program's top level,
  not inside loop bodies, so there they run ~20x slower (docs/benchmarks-history.md,
  "Compile time against depth, and scanned blocks"). The hand VJPs (``cnn_jax.ops.hand``)
  emit the canonical form and do not suffer.
  """
  return (config.grad == "autodiff" and jax.default_backend() == "cpu"
          and any(steps_lib.SCANNED in name for name in param_names))


def _data_functions(batch_indices, prepare_batch):
  if batch_indices is None or prepare_batch is None:
    from cnn_jax import data as data_lib  # pylint: disable=g-import-not-at-top
    batch_indices = batch_indices or data_lib.batch_indices
    prepare_batch = prepare_batch or data_lib.prepare_batch
  return batch_indices, prepare_batch


def _write_model_summary(model, input_shape, workdir: str) -> None:
  """Writes the per-layer table of cnn_jax.analysis.counting (output shapes, parameters, MACs,
  receptive field) to ``workdir/model_summary.txt``; the log gets it at DEBUG level only."""
  try:
    from cnn_jax.analysis import counting  # pylint: disable=g-import-not-at-top
    text = counting.format_table(counting.summarize(model, (1, *input_shape)))
  except Exception as e:  # pylint: disable=broad-except
    # The summary is informational; a model the counter does not know must not stop training.
    logging.warning("model summary failed: %s: %s", type(e).__name__, e)
    return
  atomic.write_text(os.path.join(workdir, MODEL_SUMMARY_FILE), text + "\n")
  logging.debug("model summary:\n%s", text)


def _clear_run(workdir: str) -> None:
  """Removes a previous run's files (only the files a run writes)."""
  for name in _RUN_FILES:
    path = os.path.join(workdir, name)
    if os.path.exists(path):
      os.remove(path)
  for path in glob.glob(os.path.join(workdir, "events.out.tfevents.*")):
    os.remove(path)
  for name in ("checkpoints", "checkpoints.unreadable"):
    shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def evaluate(eval_step: Callable, state, images: np.ndarray, labels: np.ndarray,
             batch_size: int, mesh) -> dict[str, float]:
  """Mean loss and accuracy over all of ``images`` in batches of ``batch_size``.

  The last batch is padded (with row 0, masked out), so one compiled shape serves all. Each
  process feeds its rows of every batch.

  Args:
    eval_step: from ``steps.make_eval_step``.
    state: the train state.
    images: uint8 ``(N, *spatial, C)`` (the whole split, on every process).
    labels: int ``(N,)``.
    batch_size: global batch size (a multiple of the device count).
    mesh: the data mesh.
  Returns:
    ``{"loss": float, "accuracy": float}``.
  """
  n = len(images)
  rows = sharding_lib.process_rows(batch_size)
  loss_sum = correct = count = 0.0
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size)
    mask = (idx < n).astype(np.float32)
    idx = np.where(idx < n, idx, 0)
    local = {"image": images[idx[rows]], "label": labels[idx[rows]].astype(np.int32),
             "mask": mask[rows]}
    out = jax.device_get(eval_step(state, sharding_lib.global_batch(local, mesh, batch_size)))
    loss_sum += float(out["loss_sum"])
    correct += float(out["correct"])
    count += float(out["count"])
  return {"loss": loss_sum / count, "accuracy": correct / count}


def _holding_workdir_lock(train: Callable) -> Callable:
  """Runs ``train(config, workdir, ...)`` holding ``workdir``'s lock (``rundir.lock``; process
  0 of a multi-process run holds it for all)."""
  @functools.wraps(train)
  def locked(config, workdir, **kwargs):
    chief = int(config.get("process_id", 0)) == 0
    with rundir.lock(workdir) if chief else contextlib.nullcontext():
      return train(config, workdir, **kwargs)
  return locked


@contextlib.contextmanager
def _ctrl_c_between_steps():
  """Within the block, a first Ctrl-C (SIGINT) only sets ``stop["asked"]``, which the loop
  reads between steps: it then raises KeyboardInterrupt there, never inside a checkpoint
  save. A second Ctrl-C interrupts at once. Only in the main thread (signals go there)."""
  stop = {"asked": False}
  if threading.current_thread() is not threading.main_thread():
    yield stop
    return

  def ask(signum, frame):
    if stop["asked"]:
      signal.default_int_handler(signum, frame)
    stop["asked"] = True

  previous = signal.signal(signal.SIGINT, ask)
  try:
    yield stop
  finally:
    signal.signal(signal.SIGINT, previous)


def _divergence(step: int, scalars: dict, last_saved: int | None, ckpt_dir: str) -> str:
  """One line: the step and the first quantity (``steps.FINITE_CHECKS``) that was not finite."""
  quantity = next(q for q, ok in zip(steps_lib.FINITE_CHECKS, scalars["finite"]) if not ok)
  kept = (f"the newest checkpoint (step {last_saved}, in {ckpt_dir}) is the last good state"
          if last_saved is not None else "no checkpoint was saved before it")
  return (f"training diverged at step {step}: NaN or inf in the {quantity} (loss "
          f"{float(scalars['loss']):.4g}); {kept}; try a smaller learning_rate")


@_holding_workdir_lock
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, model=None,
                       dataset=None, devices: Sequence[jax.Device] | None = None,
                       batch_indices: Callable | None = None,
                       prepare_batch: Callable | None = None) -> dict[str, Any]:
  """Trains ``config``'s model on its dataset in ``workdir`` and returns the summary.

  Args:
    config: a ConfigDict with default.py's fields (the new loop fields default, see
      ``LOOP_DEFAULTS``); not modified (a resolved copy is used and saved).
    workdir: the run directory (created).
    model: a Flax module to use instead of ``cnn_jax.models.build(config)``.
    dataset: an object with the ``cnn_jax.data.Dataset`` fields (``x_train`` uint8, ``y_train``,
      ``x_test``, ``y_test``, ``num_classes``, ``mean``, ``std``) instead of
      ``cnn_jax.data.load(config)``.
    devices: the devices of the data mesh (default: all devices of all processes).
    batch_indices: ``(num_examples, batch_size, seed, step) -> indices`` instead of
      ``cnn_jax.data.batch_indices``.
    prepare_batch: ``(images_uint8, mean, std, *, augment, key) -> float32`` instead of
      ``cnn_jax.data.prepare_batch``.
  Returns:
    The summary (also in ``summary.json``): ``train_loss``, ``train_accuracy`` (a full pass over
    the training split in eval mode, after training), ``test_loss``, ``test_accuracy``,
    ``validation_loss`` and ``validation_accuracy`` (only with a validation split),
    ``steps``, ``wall_time_s`` (all sessions of the run), ``num_params``, ``devices``,
    ``processes``, ``resumed_from`` (the checkpoint step this session started from, or None).
  Raises:
    ValueError: a bad field (before anything is written), a checkpoint of another model, a
      run of another config in ``workdir`` (``rundir.RunDirError``, unless ``overwrite`` or
      not ``resume``), or checkpoints none of which can be read.
    FileExistsError: ``workdir`` holds a finished run and ``overwrite`` is False.
    FloatingPointError: the loss, the gradient or the update held a NaN/inf (the step and
      the quantity are named; no checkpoint is written from that step).
  """
  t_start = time.time()
  config = resolve_config(config)
  # Before any other JAX call: joining a multi-process run must come first.
  sharding_lib.initialize_distributed(config.coordinator_address, config.num_processes,
                                      config.process_id)
  validate(config)
  mesh = sharding_lib.make_mesh(devices)
  sharding_lib.check_batch_size(config.batch_size, mesh)
  is_chief = jax.process_index() == 0
  workdir = os.path.abspath(workdir)
  summary_path = os.path.join(workdir, SUMMARY_FILE)
  fresh = config.overwrite or not config.resume
  if not fresh:
    from cnn_jax import models  # pylint: disable=g-import-not-at-top
    rundir.check_same_config(workdir, config.to_dict(), resolve=models.resolved)
  if os.path.exists(summary_path) and not config.overwrite:
    raise FileExistsError(f"workdir {workdir} holds a finished run ({SUMMARY_FILE} exists); "
                          "set overwrite=True to train it again")

  batch_indices, prepare_batch = _data_functions(batch_indices, prepare_batch)
  dataset, model = data_and_model(config, dataset, model)
  input_shape = tuple(dataset.x_train.shape[1:])
  num_train = len(dataset.x_train)

  schedule = optim.make_schedule(config)
  tx = optim.make_optimizer(config, schedule)
  abstract_state = jax.eval_shape(lambda: state_lib.create(model, tx, input_shape, config.seed))
  fingerprint = {
      "model_config": {f: config[f] for f in MODEL_FIELDS if f in config},
      "param_shapes": steps_lib.param_shapes(abstract_state.params),
  }
  fingerprint["model_config"]["input_shape"] = list(input_shape)
  num_params = int(sum(np.prod(s) for s in fingerprint["param_shapes"].values()))

  # Decide fresh start vs resume, and restore the newest readable checkpoint (of the same
  # model), before writing.
  ckpt_dir = os.path.join(workdir, "checkpoints")
  replicated = sharding_lib.replicated(mesh)
  state_sharding = jax.tree.map(lambda _: replicated, abstract_state)

  def check_meta(step, meta):
    checkpoints_lib.check_same_model(meta["fingerprint"], fingerprint, ckpt_dir)
    if step > config.num_steps:
      raise ValueError(f"num_steps={config.num_steps}: the checkpoint in {ckpt_dir} is at "
                       f"step {step}, past the end")

  resume_step = state = meta = None
  if not fresh:
    resume_step, state, meta = checkpoints_lib.restore_newest(
        ckpt_dir, config.keep_checkpoints, jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state,
            state_sharding), check_meta, set_aside=is_chief)

  # Nothing to resume (no complete checkpoint): start clean, dropping a dead run's leftovers.
  fresh = fresh or resume_step is None

  logging.info("%s", sharding_lib.describe(mesh))
  logging.info("model %s: %d parameters, input %s, %d classes", config.model, num_params,
               input_shape, config.num_classes)
  if slow_scanned_autodiff(config, fingerprint["param_shapes"]):
    logging.warning("grad=autodiff with scan_blocks=True on CPU: XLA's CPU backend runs the "
                    "weight-gradient convolutions inside nn.scan ~20x slower; use grad=hand "
                    "or scan_blocks=False (docs/benchmarks.md)")
  if is_chief:
    if fresh:
      _clear_run(workdir)
    os.makedirs(workdir, exist_ok=True)
    atomic.write_json(os.path.join(workdir, CONFIG_FILE), config.to_dict())
    _write_model_summary(model, input_shape, workdir)
  _sync("cnn_jax.train: workdir ready")
  # From here on (the workdir is this run's), autotuned layers record their choices in it.
  model = native.with_choices_file(model, os.path.join(workdir, KERNELS_FILE))

  ckpts = checkpoints_lib.Checkpoints(ckpt_dir, config.keep_checkpoints)
  window = {"loss": 0.0, "accuracy": 0.0, "steps": 0}
  wall_before = 0.0
  if resume_step is None:
    state = state_lib.create_jitted(model, tx, input_shape, config.seed, state_sharding)
  else:
    window = meta["window"]
    wall_before = meta["wall_time_s"]
    logging.info("resumed from the checkpoint at step %d in %s", resume_step, ckpt_dir)

  layer_names = state_lib.layer_names(model, input_shape)
  layer_order = state_lib.layer_names(state_lib.unrolled(model), input_shape)
  logging.info("kernels=%s: %s", config.kernels, getattr(model, "kernels", native.XLA))
  data_kwargs = dict(prepare_batch=prepare_batch, mean=dataset.mean, std=dataset.std,
                     num_classes=config.num_classes, mesh=mesh, state_sharding=state_sharding,
                     xla_options=steps_lib.compiler_options())
  train_step = steps_lib.make_train_step(
      model, tx, schedule, augment=bool(config.augment), label_smoothing=config.label_smoothing,
      layer_names=layer_names, **data_kwargs)
  eval_step = steps_lib.make_eval_step(model, **data_kwargs)

  step = int(jax.device_get(state.step))
  writer = metrics_lib.MetricsWriter(workdir, num_steps=config.num_steps, start_step=step,
                                     enabled=is_chief, progress=config.progress,
                                     description=os.path.basename(workdir))
  rows = sharding_lib.process_rows(config.batch_size)
  x_train, y_train = dataset.x_train, np.asarray(dataset.y_train, np.int32)
  x_test, y_test = dataset.x_test, np.asarray(dataset.y_test, np.int32)
  # The validation split (config.validation_size), reported beside the test split, never
  # mixed with it; None when there is none.
  x_val = getattr(dataset, "x_val", None)
  has_val = x_val is not None and len(x_val) > 0
  y_val = np.asarray(dataset.y_val, np.int32) if has_val else None
  last_eval = last_val = None
  scalar_keys = ("loss", "accuracy", "learning_rate", "grad_norm", "param_norm", "update_norm",
                 "finite")

  def fingerprint_meta():
    return {"fingerprint": fingerprint, "window": window,
            "wall_time_s": wall_before + time.time() - t_start}

  interrupts = contextlib.ExitStack()
  ctrl_c = interrupts.enter_context(_ctrl_c_between_steps())
  try:
    # Throughput counts only this session's steps and time (a resumed window began earlier).
    timed_steps, window_time, window_start = 0, 0.0, time.time()
    while step < config.num_steps:
      if ctrl_c["asked"]:
        raise KeyboardInterrupt
      idx = np.asarray(batch_indices(num_train, config.batch_size, config.seed, step))[rows]
      batch = sharding_lib.global_batch({"image": x_train[idx], "label": y_train[idx]}, mesh,
                                        config.batch_size)
      state, m = train_step(state, batch)
      scalars = jax.device_get({k: m[k] for k in scalar_keys})
      if not all(scalars["finite"]):
        raise FloatingPointError(_divergence(step, scalars, ckpts.latest_step(), ckpt_dir))
      step += 1
      window["loss"] += float(scalars["loss"])
      window["accuracy"] += float(scalars["accuracy"])
      window["steps"] += 1
      timed_steps += 1
      writer.advance(1, float(scalars["loss"]), float(scalars["accuracy"]))
      if config.log_grad_norms_every and step % config.log_grad_norms_every == 0:
        writer.write_grad_norms(step, steps_lib.expand_layer_norms(
            jax.device_get(m["layer_grad_norm"]), layer_order))
      last = step == config.num_steps
      if last or (config.eval_every and step % config.eval_every == 0):
        window_time += time.time() - window_start
        row = {"train_loss": window["loss"] / window["steps"],
               "train_accuracy": window["accuracy"] / window["steps"],
               "learning_rate": float(scalars["learning_rate"]),
               "grad_norm": float(scalars["grad_norm"]),
               "param_norm": float(scalars["param_norm"]),
               "update_norm": float(scalars["update_norm"]),
               # Wall-clock: includes the compile in a session's first window.
               "images_per_sec": timed_steps * config.batch_size / max(window_time, 1e-9)}
        ev = last_eval = evaluate(eval_step, state, x_test, y_test, config.batch_size, mesh)
        row["eval_loss"], row["eval_accuracy"] = ev["loss"], ev["accuracy"]
        if has_val:
          val = last_val = evaluate(eval_step, state, x_val, y_val, config.batch_size, mesh)
          row["val_loss"], row["val_accuracy"] = val["loss"], val["accuracy"]
        writer.write(step, row)
        logging.info("step %d: %s", step, {k: round(v, 5) for k, v in row.items()})
        window = {"loss": 0.0, "accuracy": 0.0, "steps": 0}
        timed_steps, window_time, window_start = 0, 0.0, time.time()
      if last or (config.checkpoint_every and step % config.checkpoint_every == 0):
        pause = time.time()
        ckpts.save(step, state, fingerprint_meta())
        window_start += time.time() - pause  # saving is not training time
    if ckpts.latest_step() != step:  # resumed at the end, or num_steps already reached
      ckpts.save(step, state, fingerprint_meta())

    # The last step's eval row already holds the test numbers, unless this session resumed
    # at the end.
    test = last_eval if last_eval is not None else evaluate(
        eval_step, state, x_test, y_test, config.batch_size, mesh)
    train = evaluate(eval_step, state, x_train, y_train, config.batch_size, mesh)
    if has_val and last_val is None:
      last_val = evaluate(eval_step, state, x_val, y_val, config.batch_size, mesh)
  finally:
    interrupts.close()
    writer.close()
    ckpts.close()

  summary = {
      "train_loss": train["loss"], "train_accuracy": train["accuracy"],
      "test_loss": test["loss"], "test_accuracy": test["accuracy"],
      "steps": step, "wall_time_s": wall_before + time.time() - t_start,
      "num_params": num_params, "devices": int(mesh.devices.size),
      "processes": jax.process_count(), "resumed_from": resume_step,
  }
  if has_val:
    summary["validation_loss"] = last_val["loss"]
    summary["validation_accuracy"] = last_val["accuracy"]
  if is_chief:
    atomic.write_json(summary_path, summary)
  _sync("cnn_jax.train: summary written")
  logging.info("finished: %s", summary)
  return summary
