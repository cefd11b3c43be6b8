"""The in-memory dataset record every source returns, and the checks every source passes.

All datasets of this project fit in memory, so a dataset is just uint8 arrays on the host plus
the per-channel statistics of its training split. ``make_dataset`` is the one door through
which every source builds its record: it validates shapes, dtypes and labels (one-line
``ValueError`` naming the source and the problem) and computes mean/std.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from cnn_jax.data import pipeline


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """A train/test pair held as uint8 arrays.

  Attributes:
    name: the ``config.dataset`` string that produced it.
    x_train: uint8 (N, H, W, C) images, or (N, L, C) 1-D signals.
    y_train: int32 (N,) labels in ``[0, num_classes)``.
    x_test: uint8 (M, *same spatial, C).
    y_test: int32 (M,).
    num_classes: number of classes.
    mean: float32 (C,) per-channel mean of ``x_train`` in pixel units (0..255).
    std: float32 (C,) per-channel std of ``x_train`` in pixel units (floored at 1).
    class_names: optional names, index = label.
    x_val: uint8 validation images held out of the training split (``validation_size``;
      zero rows when there is none, None in records made without ``make_dataset``);
      ``mean``/``std`` do not see them.
    y_val: int32 validation labels.
  """
  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  mean: np.ndarray
  std: np.ndarray
  class_names: tuple = ()
  x_val: np.ndarray | None = None
  y_val: np.ndarray | None = None

  @property
  def input_shape(self) -> tuple:
    """Shape of one example, e.g. (32, 32, 3) or (L, C)."""
    return tuple(self.x_train.shape[1:])


def make_dataset(name: str, x_train, y_train, x_test, y_test, num_classes: int, *,
                 class_names=(), train_size: int = 0, validation_size: int = 0,
                 data_seed: int = 0, source: str | None = None) -> Dataset:
  """Validates the arrays, holds out a validation split, optionally subsets the training
  split, computes mean/std.

  Args:
    name: dataset name for the record.
    x_train, y_train, x_test, y_test: arrays as in ``Dataset`` (images may be any integer
      dtype with values in 0..255; they are stored as uint8).
    num_classes: labels must lie in ``[0, num_classes)``.
    class_names: optional tuple of names.
    train_size: keep this many training examples (0 = all), a fixed subset (seed 0) so the
      same ``train_size`` always means the same examples; taken from what the validation
      split leaves.
    validation_size: hold this many training examples out as the validation split (0 =
      none), stratified by class (``validation_indices``), chosen by ``data_seed``.
    data_seed: seeds the choice of the validation examples.
    source: what to name in error messages (a file path); defaults to ``name``.

  Returns:
    A ``Dataset``.

  Raises:
    ValueError: one line naming ``source`` and the problem.
  """
  where = source or name
  arrays = {}
  for field, x in (("x_train", x_train), ("x_test", x_test)):
    x = np.asarray(x)
    if x.ndim not in (3, 4):
      raise ValueError(f"{where}: {field} has shape {x.shape}; expected (N, H, W, C) or "
                       f"(N, L, C).")
    if x.dtype != np.uint8:
      if not np.issubdtype(x.dtype, np.integer) or (x.size and (x.min() < 0 or x.max() > 255)):
        raise ValueError(f"{where}: {field} has dtype {x.dtype}; expected uint8 pixels "
                         f"(integers in 0..255).")
      x = x.astype(np.uint8)
    arrays[field] = x
  if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
    raise ValueError(f"{where}: x_train examples have shape {arrays['x_train'].shape[1:]} but "
                     f"x_test examples have {arrays['x_test'].shape[1:]}; they must match.")
  if num_classes < 1:
    raise ValueError(f"{where}: num_classes={num_classes}; need at least 1 class.")
  for field, y, x_field in (("y_train", y_train, "x_train"), ("y_test", y_test, "x_test")):
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != arrays[x_field].shape[0]:
      n = arrays[x_field].shape[0]
      raise ValueError(f"{where}: {field} has shape {y.shape} but {x_field} has {n} examples; "
                       f"expected ({n},).")
    if not np.issubdtype(y.dtype, np.integer):
      raise ValueError(f"{where}: {field} has dtype {y.dtype}; expected integer labels.")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
      raise ValueError(f"{where}: {field} has labels in [{y.min()}, {y.max()}]; allowed "
                       f"[0, {num_classes - 1}] for {num_classes} classes.")
    arrays[field] = y.astype(np.int32)
  if arrays["x_train"].shape[0] == 0:
    raise ValueError(f"{where}: the training split is empty.")
  if num_classes < 2:
    raise ValueError(f"{where}: {num_classes} class; a classifier needs at least 2.")
  absent = _absent_classes(arrays["y_train"], num_classes, class_names)
  if absent:
    raise ValueError(f"{where}: class(es) {', '.join(absent)} have no training example; every "
                     f"class needs some.")
  if train_size < 0:
    raise ValueError(f"train_size={train_size} is negative; use 0 for the whole split.")
  n = arrays["x_train"].shape[0]
  if validation_size < 0 or validation_size >= n:
    raise ValueError(f"validation_size={validation_size} is not allowed: {where} has {n} "
                     f"training examples; give 0 (no validation split) to {n - 1}.")
  held = validation_indices(arrays["y_train"], validation_size, data_seed)
  kept = np.setdiff1d(np.arange(n), held)
  arrays["x_val"], arrays["y_val"] = arrays["x_train"][held], arrays["y_train"][held]
  arrays["x_train"], arrays["y_train"] = arrays["x_train"][kept], arrays["y_train"][kept]
  if train_size:
    n = arrays["x_train"].shape[0]
    if train_size > n:
      raise ValueError(f"train_size={train_size} exceeds the {n} training examples of {name}"
                       + (f" left by validation_size={validation_size}." if validation_size
                          else "."))
    keep = np.sort(pipeline.epoch_permutation(n, 0, 0)[:train_size])
    arrays["x_train"] = arrays["x_train"][keep]
    arrays["y_train"] = arrays["y_train"][keep]
    absent = _absent_classes(arrays["y_train"], num_classes, class_names)
    if absent:
      logging.warning("train_size=%d leaves class(es) %s of %s without a training example.",
                      train_size, ", ".join(absent), name)
  mean, std = pipeline.channel_stats(arrays["x_train"])
  return Dataset(name=name, num_classes=int(num_classes), mean=mean, std=std,
                 class_names=tuple(class_names), **arrays)


def _absent_classes(labels: np.ndarray, num_classes: int, class_names=()) -> list[str]:
  """The classes (named where ``class_names`` has names) that no label in ``labels`` holds."""
  absent = np.setdiff1d(np.arange(num_classes), labels)
  return [str(class_names[i]) if len(class_names) > i else str(i) for i in absent]


def validation_indices(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
  """Indices of ``size`` examples to hold out, stratified by class, chosen by ``seed``.

  Class ``c`` with ``n_c`` of the ``N`` examples gives ``size * n_c / N`` of them, rounded by
  largest remainder (ties to the smaller class index) so the counts sum to ``size``; a
  class-balanced split with ``size`` a multiple of the class count gives each class exactly
  ``size / K``. Within a class the examples are the first ones of a ``seed``-keyed
  permutation (``pipeline.epoch_permutation``, the same on every machine).

  Args:
    labels: int (N,) class labels.
    size: how many to hold out, ``0 <= size < N``.
    seed: the data seed.

  Returns:
    int64 (size,) sorted indices into ``labels``.
  """
  labels = np.asarray(labels)
  if size == 0:
    return np.zeros((0,), np.int64)
  classes, counts = np.unique(labels, return_counts=True)
  quota = size * counts / len(labels)
  take = np.floor(quota).astype(np.int64)
  # Largest remainders first; a stable sort breaks ties by class order.
  order = np.argsort(-(quota - take), kind="stable")
  take[order[:size - int(take.sum())]] += 1
  perm = pipeline.epoch_permutation(len(labels), seed, 0)
  chosen = [perm[labels[perm] == c][:k] for c, k in zip(classes, take)]
  return np.sort(np.concatenate(chosen)).astype(np.int64)
