"""TFDS image datasets, read without TensorFlow through ``tfds.data_source`` (array_record).

The core install has no TensorFlow, so prepared data is read by random access from
array_record files. Data prepared as tfrecord (the TFDS default when TensorFlow builds it) can
only be read by ``tfds.load``, which needs TensorFlow: we use it when TensorFlow is importable
(``pip install -r requirements-tf.txt``) and otherwise say so in one sentence.

Downloading is opt-in (``config.download=True``). Offline, TFDS would retry its download for
minutes before failing, so by default a dataset that is not prepared fails at once, with one
sentence naming the dataset, where we looked and how to provide it.
"""

from __future__ import annotations

import importlib.util

import numpy as np

# Static facts, so `experiments/datasets.py` can describe a dataset that is not prepared here.
# name: (train examples, test examples, image shape, classes)
TFDS_DATASETS = {
    "mnist": (60_000, 10_000, (28, 28, 1), 10),
    "fashion_mnist": (60_000, 10_000, (28, 28, 1), 10),
    "cifar10": (50_000, 10_000, (32, 32, 3), 10),
    "cifar100": (50_000, 10_000, (32, 32, 3), 100),
    "svhn_cropped": (73_257, 26_032, (32, 32, 3), 10),
}


def _tfds():
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise ValueError(f"TFDS datasets need tensorflow-datasets, which failed to import ({error}); "
                     f"install requirements.txt or use an offline dataset.") from None
  return tfds


def _builder(tfds, name: str, data_dir: str):
  return tfds.builder(name, data_dir=data_dir or None)


def not_found_message(name: str, where: str) -> str:
  return (f"dataset={name!r} is not prepared in {where} and config.download=False: on a "
          f"connected machine run `tfds build {name} --file_format=array_record "
          f"--data_dir=DIR` and pass --config.data_dir=DIR, set --config.download=true, or "
          f"give the images as --config.dataset=folder:/path or npz:/path/file.npz.")


def is_prepared(name: str, data_dir: str = "") -> tuple[bool, str]:
  """Whether ``name`` is prepared under ``data_dir`` (TFDS's default if empty), and where."""
  tfds = _tfds()
  builder = _builder(tfds, name, data_dir)
  return bool(builder.is_prepared()), str(builder.data_dir)


def _tensorflow_importable() -> bool:
  return importlib.util.find_spec("tensorflow") is not None


def _arrays_from_source(source, key: str):
  n = len(source)
  first = source[0]
  image = np.asarray(first["image"])
  x = np.empty((n,) + image.shape, np.uint8)
  y = np.empty((n,), np.int64)
  for i in range(n):
    example = first if i == 0 else source[i]
    x[i] = example["image"]
    y[i] = example[key]
  return x, y


def load(name: str, data_dir: str = "", download: bool = False):
  """Reads the train and test splits of a TFDS image dataset into uint8 arrays.

  Args:
    name: a key of ``TFDS_DATASETS``.
    data_dir: TFDS data_dir ("" = TFDS's default, ``$TFDS_DATA_DIR`` or
      ``~/tensorflow_datasets``).
    download: allow TFDS to download and prepare (as array_record) if missing.

  Returns:
    (x_train, y_train, x_test, y_test, num_classes, class_names).

  Raises:
    ValueError: one sentence when the data is missing, prepared in a format that needs
      TensorFlow, or TFDS cannot be imported.
  """
  tfds = _tfds()
  try:
    sources = tfds.data_source(name, split=["train", "test"], data_dir=data_dir or None,
                               download=download)
  except ModuleNotFoundError as error:
    if error.name == "tensorflow":
      # Preparing (download=True) encodes the images with TensorFlow; reading does not.
      raise ValueError(f"dataset={name!r}: preparing it needs TensorFlow (TFDS encodes the "
                       f"images with it): run `tfds build {name} --file_format=array_record` "
                       f"once where requirements-tf.txt is installed (docs/datasets.md); "
                       f"reading the prepared files then needs no TensorFlow.") from None
    # tensorflow-datasets 4.9.10 imports importlib_resources lazily without declaring it.
    raise ValueError(f"dataset={name!r}: tensorflow-datasets could not import {error.name!r}; "
                     f"install the pinned requirements.txt (it lists it).") from None
  except Exception as error:  # pylint: disable=broad-except
    # TFDS reports a missing dataset as a file-format error; tell the user what really happened.
    builder = _builder(tfds, name, data_dir)
    if not builder.is_prepared():
      raise ValueError(not_found_message(name, str(builder.data_dir))) from None
    if _tensorflow_importable():
      return _load_with_tensorflow(tfds, name, data_dir)
    raise ValueError(
        f"dataset={name!r} in {builder.data_dir} is prepared in a format tfds.data_source "
        f"cannot read without TensorFlow ({type(error).__name__}): install the optional "
        f"requirements-tf.txt, or rebuild it with `tfds build {name} "
        f"--file_format=array_record`.") from None
  train, test = sources
  features = train.dataset_info.features
  label = features["label"]
  x_train, y_train = _arrays_from_source(train, "label")
  x_test, y_test = _arrays_from_source(test, "label")
  names = tuple(label.names) if getattr(label, "names", None) else ()
  return x_train, y_train, x_test, y_test, int(label.num_classes), names


def _load_with_tensorflow(tfds, name: str, data_dir: str):
  """tfrecord-prepared data through ``tfds.load`` (needs TensorFlow; not exercised in CI)."""
  train, test = tfds.as_numpy(tfds.load(name, split=["train", "test"], batch_size=-1,
                                        data_dir=data_dir or None, download=False))
  label = _builder(tfds, name, data_dir).info.features["label"]
  names = tuple(label.names) if getattr(label, "names", None) else ()
  return (train["image"], train["label"], test["image"], test["label"], int(label.num_classes),
          names)
