"""The data layer: one ``load(config)`` for offline, TFDS and user datasets, plus batching.

Sources (``config.dataset``):
  - offline, never downloaded: ``digits``, ``shapes10``, ``translated``, ``signals1d``;
  - TFDS (prepared data read without TensorFlow): ``mnist``, ``fashion_mnist``, ``cifar10``,
    ``cifar100``, ``svhn_cropped``;
  - a user's data: ``folder:/path`` (``train/<class>/*.png``, ``test/<class>/...``) and
    ``npz:/path/file.npz`` (``x_train, y_train, x_test, y_test``).

Everything is held as uint8 arrays on the host (``Dataset``). Per step the trainer calls
``batch_indices(N, batch_size, seed, step)`` (a pure function of its arguments) and
``prepare_batch(x_train[idx], mean, std, augment=..., key=...)`` (jitted JAX: normalise,
optionally pad-4 crop + flip). See docs/datasets.md.

Config fields read: ``dataset``, ``image_size`` (offline image datasets are resized to it;
0 = native), ``data_dir``, ``download``, ``train_size`` (0 = all), ``validation_size``
(training images held out as a validation split, stratified by class and chosen by
``data_seed``; default 0 = none), and, where present,
``translated_split`` (default "left_right"), ``signal_length`` (default 64) and
``data_seed`` (default 0; seeds the procedural datasets and the validation split, so that
runs with different ``seed`` see the same data). ``augment`` and ``seed`` are used by the
trainer with ``prepare_batch`` and ``batch_indices``.
"""

from __future__ import annotations

import os

from cnn_jax.data import offline
from cnn_jax.data import tfds_source
from cnn_jax.data.dataset import Dataset
from cnn_jax.data.dataset import make_dataset
from cnn_jax.data.offline import translated_at_shift
from cnn_jax.data.offline import translated_geometry
from cnn_jax.data.pipeline import batch_indices
from cnn_jax.data.pipeline import channel_stats
from cnn_jax.data.pipeline import epoch_permutation
from cnn_jax.data.pipeline import prepare_batch
from cnn_jax.data.pipeline import shard_batch

__all__ = [
    "Dataset", "load", "available_datasets", "describe", "batch_indices", "prepare_batch",
    "epoch_permutation", "channel_stats", "shard_batch", "make_dataset", "translated_at_shift",
    "translated_geometry", "OFFLINE_DATASETS", "TFDS_DATASETS", "USER_PREFIXES",
]

OFFLINE_DATASETS = {
    "digits": "scikit-learn 8x8 handwritten digits (real), resized to image_size",
    "shapes10": "procedural 10-class shapes/textures, 32x32x3, resized to image_size",
    "translated": "digits on a 2x canvas with train/test position splits (translated_split)",
    "signals1d": "procedural 1-D motifs in noise, (signal_length, 1)",
}
TFDS_DATASETS = tuple(tfds_source.TFDS_DATASETS)
USER_PREFIXES = ("folder:", "npz:")


def available_datasets() -> tuple[str, ...]:
  """Every accepted ``config.dataset`` value (user sources as ``folder:PATH``, ``npz:PATH``)."""
  return tuple(OFFLINE_DATASETS) + TFDS_DATASETS + ("folder:PATH", "npz:PATH")


def _field(config, name, default):
  return config.get(name, default) if hasattr(config, "get") else getattr(config, name, default)


def _unknown(name) -> ValueError:
  return ValueError(f"dataset={name!r} is unknown; allowed: "
                    f"{', '.join(available_datasets())}.")


def load(config) -> Dataset:
  """Loads ``config.dataset`` as a ``Dataset`` (uint8 arrays + training mean/std).

  Args:
    config: a ConfigDict (or any object with the fields above).

  Returns:
    ``Dataset``; x arrays uint8 ``(N, H, W, C)`` (or ``(N, L, C)`` for signals1d), labels
    int32.

  Raises:
    ValueError: one line for an unknown name, missing/unprepared data or malformed input.
  """
  name = str(_field(config, "dataset", ""))
  image_size = int(_field(config, "image_size", 0))
  data_seed = int(_field(config, "data_seed", 0))
  train_size = int(_field(config, "train_size", 0))
  validation_size = int(_field(config, "validation_size", 0))
  class_names, source = (), None
  if name == "digits":
    arrays = offline.digits(image_size)
    num_classes, class_names = 10, tuple(str(i) for i in range(10))
  elif name == "shapes10":
    arrays = offline.shapes10(image_size, data_seed)
    num_classes, class_names = 10, offline.SHAPES10_CLASSES
  elif name == "translated":
    arrays = offline.translated(image_size, str(_field(config, "translated_split", "left_right")),
                                data_seed)
    num_classes, class_names = 10, tuple(str(i) for i in range(10))
  elif name == "signals1d":
    arrays = offline.signals1d(int(_field(config, "signal_length", 64)), data_seed)
    num_classes = offline.SIGNALS1D_CLASSES
  elif name in TFDS_DATASETS:
    *arrays, num_classes, class_names = tfds_source.load(
        name, str(_field(config, "data_dir", "") or ""), bool(_field(config, "download", False)))
  elif name.startswith("folder:"):
    from cnn_jax.data import folder  # pylint: disable=g-import-not-at-top
    source = name
    *arrays, num_classes, class_names = folder.load(os.path.expanduser(name[len("folder:"):]))
  elif name.startswith("npz:"):
    from cnn_jax.data import npz  # pylint: disable=g-import-not-at-top
    source = name
    *arrays, num_classes, class_names = npz.load(os.path.expanduser(name[len("npz:"):]))
  else:
    raise _unknown(name)
  return make_dataset(name, *arrays, num_classes, class_names=class_names,
                      train_size=train_size, validation_size=validation_size,
                      data_seed=data_seed, source=source)


def describe(name: str, config=None) -> dict:
  """What ``name`` is and whether it can be loaded here, without loading TFDS data.

  Offline and user datasets are loaded (cheap) to report exact shapes; TFDS datasets report
  their published sizes and whether they are prepared under ``config.data_dir``.

  Returns:
    dict with keys name, kind, available, train, test, shape, classes, note.
  """
  import ml_collections  # pylint: disable=g-import-not-at-top
  # An unlocked copy: the caller's config may be locked or frozen.
  cfg = ml_collections.ConfigDict(config.to_dict() if hasattr(config, "to_dict") else {})
  cfg.dataset = name
  if name in TFDS_DATASETS:
    train, test, shape, classes = tfds_source.TFDS_DATASETS[name]
    try:
      prepared, where = tfds_source.is_prepared(name, str(_field(cfg, "data_dir", "") or ""))
      note = (f"prepared in {where}" if prepared else
              f"not prepared in {where}; `tfds build {name} --file_format=array_record`")
    except Exception as error:  # pylint: disable=broad-except
      prepared, note = False, f"TFDS unavailable: {error}"
    return {"name": name, "kind": "tfds", "available": prepared, "train": train, "test": test,
            "shape": tuple(shape), "classes": classes, "note": note}
  kind = "user" if name.startswith(USER_PREFIXES) else "offline"
  if kind == "offline" and name not in OFFLINE_DATASETS:
    raise _unknown(name)
  try:
    data = load(cfg)
  except ValueError as error:
    return {"name": name, "kind": kind, "available": False, "train": 0, "test": 0,
            "shape": (), "classes": 0, "note": str(error)}
  return {"name": name, "kind": kind, "available": True, "train": int(data.x_train.shape[0]),
          "test": int(data.x_test.shape[0]), "shape": data.input_shape,
          "classes": data.num_classes, "note": OFFLINE_DATASETS.get(name, "user data")}
