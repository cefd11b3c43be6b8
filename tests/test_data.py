"""Tests of cnn_jax.data: every source, splits, batching, augmentation and bad input."""

import functools
import os
import socket

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from cnn_jax import data
from cnn_jax.data import offline
from cnn_jax.data import pipeline
from experiments.configs.default import get_config


def config_for(dataset, **fields):
  config = get_config()
  config.dataset = dataset
  for key, value in fields.items():
    if key in config:
      setattr(config, key, value)
    else:
      config[key] = value
  return config


def check_dataset(ds, shape, num_classes):
  assert ds.x_train.dtype == np.uint8 and ds.x_test.dtype == np.uint8
  assert ds.y_train.dtype == np.int32 and ds.y_test.dtype == np.int32
  assert ds.x_train.shape[1:] == shape and ds.x_test.shape[1:] == shape
  assert ds.y_train.shape == ds.x_train.shape[:1] and ds.y_test.shape == ds.x_test.shape[:1]
  assert ds.num_classes == num_classes
  for y in (ds.y_train, ds.y_test):
    assert y.min() >= 0 and y.max() < num_classes
  assert ds.mean.dtype == np.float32 and ds.mean.shape == shape[-1:]
  assert ds.std.dtype == np.float32 and ds.std.shape == shape[-1:]
  # mean/std are the training split's, in pixel units; float32 accumulation error is tiny next
  # to 1e-3 of a pixel level at these sizes.
  flat = ds.x_train.reshape(-1, shape[-1]).astype(np.float64)
  np.testing.assert_allclose(ds.mean, flat.mean(0), rtol=1e-5)
  np.testing.assert_allclose(ds.std, np.maximum(flat.std(0), 1.0), rtol=1e-5)


# ------------------------------------------------------------------------ offline sources
@pytest.mark.parametrize("dataset, fields, shape, train, test", [
    ("digits", {"image_size": 16}, (16, 16, 1), 1438, 359),
    ("digits", {"image_size": 8}, (8, 8, 1), 1438, 359),
    ("shapes10", {"image_size": 32}, (32, 32, 3), 10_000, 2_000),
    ("shapes10", {"image_size": 16}, (16, 16, 3), 10_000, 2_000),
    ("translated", {"image_size": 16}, (16, 16, 1), 1438, 359),
    ("signals1d", {"signal_length": 48}, (48, 1), 5_000, 1_000),
])
def test_offline_source_loads_with_right_shapes(dataset, fields, shape, train, test):
  ds = data.load(config_for(dataset, **fields))
  check_dataset(ds, shape, 10)
  assert (len(ds.x_train), len(ds.x_test)) == (train, test)
  assert ds.name == dataset
  # Every class is present in both splits.
  assert set(ds.y_train.tolist()) == set(range(10)) == set(ds.y_test.tolist())


def test_digits_split_is_a_stratified_partition_of_sklearn_digits():
  from sklearn.datasets import load_digits
  x_train, y_train, x_test, y_test = offline.digits(8)
  full = np.rint(load_digits().images * 255 / 16).astype(np.uint8).reshape(1797, -1)
  ours = np.concatenate([x_train, x_test]).reshape(1797, -1)
  # Same multiset of (image, label) rows: a partition, nothing lost or duplicated.
  key = lambda x, y: sorted(map(bytes, np.concatenate([x, y[:, None].astype(np.uint8)], 1)))
  assert key(ours, np.concatenate([y_train, y_test])) == key(full, load_digits().target)
  # Stratified: each class has 20% (rounded) of its members in test.
  counts = np.bincount(np.concatenate([y_train, y_test]))
  np.testing.assert_array_equal(np.bincount(y_test), np.rint(counts * 0.2).astype(int))


def test_procedural_datasets_are_deterministic_and_seeded(rng):
  seed = int(rng.integers(1 << 30))
  a = offline.shapes10_images(64, seed)
  b = offline.shapes10_images(64, seed)
  c = offline.shapes10_images(64, seed + 1)
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  assert not np.array_equal(a[0], c[0])
  s1, s2 = offline.signals1d_examples(50, seed), offline.signals1d_examples(50, seed)
  np.testing.assert_array_equal(s1[0], s2[0])
  t1, t2 = offline.translated(16, "random", seed), offline.translated(16, "random", seed)
  np.testing.assert_array_equal(t1[0], t2[0])


@pytest.mark.parametrize("make", [lambda: offline.shapes10(32, 0), lambda: offline.signals1d(64, 0)],
                         ids=["shapes10", "signals1d"])
def test_procedural_train_and_test_share_no_example(make):
  x_train, _, x_test, _ = make()
  assert not set(map(bytes, x_train.reshape(len(x_train), -1))) & set(
      map(bytes, x_test.reshape(len(x_test), -1)))


def test_shapes10_classes_are_balanced(rng):
  _, y = offline.shapes10_images(200, int(rng.integers(1 << 30)))
  np.testing.assert_array_equal(np.bincount(y, minlength=10), np.full(10, 20))


def ink_columns(images):
  """Boolean (N, W): whether each column holds any non-zero pixel."""
  return images[..., 0].any(axis=1)


def test_translated_left_right_split_separates_positions():
  geo = offline.translated_geometry(16)
  x_train, _, x_test, _ = offline.translated(16, "left_right", 0)
  half = geo["max_shift"] // 2
  # Train digits sit with their left edge in [0, half]: no ink right of half + object - 1.
  assert not ink_columns(x_train)[:, half + geo["object"]:].any()
  # Test digits sit with their left edge in [half + 1, max_shift]: no ink left of half + 1.
  assert not ink_columns(x_test)[:, :half + 1].any()


def test_translated_center_trains_at_one_position():
  geo = offline.translated_geometry(16)
  x_train, _, _, _ = offline.translated(16, "center", 0)
  half = geo["max_shift"] // 2
  cols = ink_columns(x_train)
  assert not cols[:, :half].any() and not cols[:, half + geo["object"]:].any()


def test_translated_at_shift_moves_the_same_digits(rng):
  geo = offline.translated_geometry(16)
  shift = int(rng.integers(0, geo["max_shift"]))
  x0, y0 = data.translated_at_shift(16, shift)
  x1, y1 = data.translated_at_shift(16, shift + 1)
  np.testing.assert_array_equal(y0, y1)
  # Shifting by one pixel is exactly a roll of the canvas (the background is zero).
  np.testing.assert_array_equal(np.roll(x0, 1, axis=2), x1)
  assert not ink_columns(x0)[:, :shift].any()
  with pytest.raises(ValueError, match="shift=99"):
    data.translated_at_shift(16, 99)


def test_resize_keeps_constant_images_and_range(rng):
  value = int(rng.integers(0, 256))
  images = np.full((2, 8, 8, 3), value, np.uint8)
  for size in (4, 16, 32):
    out = offline.resize_images(images, size)
    assert out.shape == (2, size, size, 3) and out.dtype == np.uint8
    # Interpolation weights sum to one, so a constant image stays exactly constant.
    np.testing.assert_array_equal(out, value)


def test_train_size_takes_a_fixed_subset():
  a = data.load(config_for("digits", image_size=8, train_size=100))
  b = data.load(config_for("digits", image_size=8, train_size=100))
  assert a.x_train.shape == (100, 8, 8, 1)
  np.testing.assert_array_equal(a.x_train, b.x_train)
  flat = a.x_train.reshape(100, -1).astype(np.float64)
  np.testing.assert_allclose(a.mean, flat.mean(), rtol=1e-5)  # stats of the subset


# ------------------------------------------------------------------------ TFDS (mocked)
@pytest.mark.parametrize("name", data.TFDS_DATASETS)
def test_tfds_source_loads_through_mock_data(name):
  train, _, shape, classes = data.tfds_source.TFDS_DATASETS[name]
  del train
  # Random labels: 30 examples per class leave none of them without a training example
  # (which data.load refuses) but with odds of about classes * e^-30.
  n = 30 * classes
  with tfds.testing.mock_data(num_examples=n, policy=tfds.testing.MockPolicy.USE_CODE):
    ds = data.load(config_for(name))
  check_dataset(ds, shape, classes)
  assert len(ds.x_train) == n and len(ds.x_test) == n


def test_missing_tfds_dataset_fails_at_once_without_network(tmp_path, monkeypatch):
  def no_network(*args, **kwargs):
    raise AssertionError("the loader tried to open a network connection")
  monkeypatch.setattr(socket.socket, "connect", no_network)
  monkeypatch.setattr(socket, "create_connection", no_network)
  with pytest.raises(ValueError) as info:
    data.load(config_for("cifar10", data_dir=str(tmp_path)))
  message = str(info.value)
  assert "\n" not in message
  assert "'cifar10'" in message and str(tmp_path) in message
  assert "tfds build cifar10 --file_format=array_record" in message
  assert "folder:" in message and "npz:" in message


# ------------------------------------------------------------ TFDS (prepared on disk)
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                 "ship", "truck"]


def prepare_cifar10(data_dir, train, test):
  """Prepares ``cifar10`` in ``data_dir`` with TFDS's own builder, writer and array_record
  files, from the given ``(images, labels)`` instead of the download: the on-disk format a
  user's `tfds build cifar10 --file_format=array_record` leaves.

  TFDS's CIFAR-10 builder encodes NumPy images to PNG through TensorFlow; without it the
  examples are given as PNG bytes (PIL), which the same Image feature stores unchanged.
  """
  import io  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.image_classification import cifar  # pylint: disable=g-import-not-at-top

  def examples(prefix, images, labels):
    for i, (image, label) in enumerate(zip(images, labels)):
      png = io.BytesIO()
      Image.fromarray(image).save(png, format="PNG")
      yield i, {"id": f"{prefix}{i:05d}", "image": png.getvalue(), "label": int(label)}

  class LocalCifar10(cifar.Cifar10, skip_registration=True):
    name = "cifar10"

    def _split_generators(self, dl_manager):
      del dl_manager  # nothing to download
      self.info.features["label"].names = CIFAR10_NAMES
      return {"train": examples("train_", *train), "test": examples("test_", *test)}

  builder = LocalCifar10(data_dir=str(data_dir), file_format="array_record")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))


def _sorted_pairs(images, labels):
  order = sorted(range(len(labels)), key=lambda i: images[i].tobytes())
  return images[order], np.asarray(labels)[order]


def test_tfds_loader_reads_a_prepared_cifar10_from_its_array_record_files(tmp_path, rng,
                                                                         monkeypatch):
  def no_network(*args, **kwargs):
    raise AssertionError("preparing or loading tried to open a network connection")
  monkeypatch.setattr(socket.socket, "connect", no_network)
  monkeypatch.setattr(socket, "create_connection", no_network)
  train = (rng.integers(0, 256, (30, 32, 32, 3), dtype=np.uint8), np.arange(30) % 10)
  test = (rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8), rng.permutation(10))
  prepare_cifar10(tmp_path, train, test)
  files = sorted(os.listdir(tmp_path / "cifar10" / "3.0.2"))
  assert any(f.startswith("cifar10-train.array_record") for f in files), files
  assert "dataset_info.json" in files
  ds = data.load(config_for("cifar10", data_dir=str(tmp_path), validation_size=10))
  check_dataset(ds, (32, 32, 3), 10)
  assert ds.class_names == tuple(CIFAR10_NAMES)
  # TFDS stores the examples shuffled: compare as sets of (image, label), exact (PNG is
  # lossless).
  got_x, got_y = _sorted_pairs(np.concatenate([ds.x_train, ds.x_val]),
                               np.concatenate([ds.y_train, ds.y_val]))
  want_x, want_y = _sorted_pairs(*train)
  np.testing.assert_array_equal(got_x, want_x)
  np.testing.assert_array_equal(got_y, want_y)
  np.testing.assert_array_equal(np.bincount(ds.y_val, minlength=10), np.ones(10))
  got_x, got_y = _sorted_pairs(ds.x_test, ds.y_test)
  want_x, want_y = _sorted_pairs(*test)
  np.testing.assert_array_equal(got_x, want_x)
  np.testing.assert_array_equal(got_y, want_y)
  assert data.describe("cifar10", config_for("cifar10", data_dir=str(tmp_path)))["available"]


def test_preparing_without_tensorflow_says_where_to_prepare(monkeypatch):
  def needs_tensorflow(*args, **kwargs):
    raise ModuleNotFoundError("No module named 'tensorflow'", name="tensorflow")
  monkeypatch.setattr(tfds, "data_source", needs_tensorflow)
  with pytest.raises(ValueError) as info:
    data.load(config_for("cifar10", download=True))
  message = str(info.value)
  assert "\n" not in message and "needs TensorFlow" in message
  assert "tfds build cifar10 --file_format=array_record" in message
  assert "requirements-tf.txt" in message


# ------------------------------------------------------------------------ folder:
def write_tree(root, rng, classes, per_class, size=(6, 5), mode="RGB"):
  from PIL import Image
  written = {}
  for split in ("train", "test"):
    xs, ys = [], []
    for label, name in enumerate(sorted(classes)):
      os.makedirs(root / split / name, exist_ok=True)
      for i in range(per_class):
        channels = 3 if mode == "RGB" else 1
        array = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
        Image.fromarray(array if mode == "RGB" else array[..., 0], mode).save(
            root / split / name / f"{i:03d}.png")
        xs.append(array)
        ys.append(label)
    written[split] = (np.stack(xs), np.array(ys))
  return written


@pytest.mark.parametrize("mode, channels", [("RGB", 3), ("L", 1)])
def test_folder_round_trips_a_written_tree(tmp_path, rng, mode, channels):
  written = write_tree(tmp_path, rng, ["cat", "ant", "bee"], 3, mode=mode)
  (tmp_path / "train" / "ant" / "broken.png").write_bytes(b"not a png")
  (tmp_path / "train" / "ant" / "notes.txt").write_text("ignored")
  ds = data.load(config_for(f"folder:{tmp_path}"))
  check_dataset(ds, (5, 6, channels), 3)
  assert ds.class_names == ("ant", "bee", "cat")  # sorted by name
  np.testing.assert_array_equal(ds.x_train, written["train"][0])
  np.testing.assert_array_equal(ds.y_train, written["train"][1])
  np.testing.assert_array_equal(ds.x_test, written["test"][0])
  np.testing.assert_array_equal(ds.y_test, written["test"][1])


def test_folder_bad_input_errors(tmp_path, rng):
  with pytest.raises(ValueError, match="no such folder"):
    data.load(config_for(f"folder:{tmp_path}/nope"))
  (tmp_path / "train").mkdir()
  (tmp_path / "test").mkdir()
  with pytest.raises(ValueError, match="no class sub-folders"):
    data.load(config_for(f"folder:{tmp_path}"))
  (tmp_path / "train" / "a").mkdir()
  (tmp_path / "train" / "a" / "x.png").write_bytes(b"garbage")
  with pytest.raises(ValueError, match=r"no readable image .*1 unreadable"):
    data.load(config_for(f"folder:{tmp_path}"))
  write_tree(tmp_path, rng, ["a"], 1, size=(4, 4))
  from PIL import Image
  Image.fromarray(np.zeros((7, 7, 3), np.uint8)).save(tmp_path / "test" / "a" / "big.png")
  with pytest.raises(ValueError, match=r"big\.png is 7x7 .* one size"):
    data.load(config_for(f"folder:{tmp_path}"))


# ------------------------------------------------------------------------ npz:
def test_npz_round_trips_a_written_file(tmp_path, rng):
  arrays = {"x_train": rng.integers(0, 256, (7, 4, 4, 3), dtype=np.uint8),
            "y_train": rng.permutation(np.arange(7) % 5), "x_test": rng.integers(0, 256, (3, 4, 4, 3),
                                                                     dtype=np.uint8),
            "y_test": rng.integers(0, 5, 3)}
  path = tmp_path / "d.npz"
  np.savez(path, num_classes=5, **arrays)
  ds = data.load(config_for(f"npz:{path}"))
  check_dataset(ds, (4, 4, 3), 5)
  for key, value in arrays.items():
    np.testing.assert_array_equal(getattr(ds, key), value)


def test_npz_square_greyscale_gets_a_channel_axis(tmp_path, rng):
  path = tmp_path / "g.npz"
  np.savez(path, x_train=rng.integers(0, 256, (4, 6, 6), dtype=np.uint8), y_train=[0, 1, 2, 0],
           x_test=rng.integers(0, 256, (2, 6, 6), dtype=np.uint8), y_test=[1, 2])
  ds = data.load(config_for(f"npz:{path}"))
  check_dataset(ds, (6, 6, 1), 3)


@pytest.mark.parametrize("change, pattern", [
    (lambda a: a.pop("y_test"), r"missing arrays \['y_test'\]"),
    (lambda a: a.update(y_train=np.array([0, 1, 9])),
     r"y_train has labels in \[0, 9\]; allowed \[0, 2\]"),
    (lambda a: a.update(y_train=np.array([0, 1])), r"y_train has shape \(2,\) but x_train has 3"),
    (lambda a: a.update(x_test=np.zeros((1, 5, 5, 1), np.uint8)),
     r"x_test examples have \(5, 5, 1\)"),
    (lambda a: a.update(x_train=np.full((3, 4, 4, 1), 300)), r"x_train has dtype int64"),
])
def test_npz_bad_input_names_file_and_problem(tmp_path, change, pattern):
  arrays = {"x_train": np.zeros((3, 4, 4, 1), np.uint8), "y_train": np.array([0, 1, 2]),
            "x_test": np.zeros((1, 4, 4, 1), np.uint8), "y_test": np.array([2]),
            "num_classes": 3}
  change(arrays)
  path = tmp_path / "bad.npz"
  np.savez(path, **arrays)
  with pytest.raises(ValueError, match=pattern) as info:
    data.load(config_for(f"npz:{path}"))
  assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_npz_missing_or_garbage_file(tmp_path):
  with pytest.raises(ValueError, match="no such file"):
    data.load(config_for(f"npz:{tmp_path}/none.npz"))
  (tmp_path / "junk.npz").write_bytes(b"junk")
  with pytest.raises(ValueError, match="not a readable"):
    data.load(config_for(f"npz:{tmp_path}/junk.npz"))


# ------------------------------------------------------------------------ other bad input
def test_unknown_dataset_lists_allowed_names():
  with pytest.raises(ValueError, match=r"dataset='imagenet' is unknown; allowed: digits, "
                                       r"shapes10, .*cifar10.*folder:PATH, npz:PATH\."):
    data.load(config_for("imagenet"))


def test_bad_translated_split_and_train_size():
  with pytest.raises(ValueError, match="translated_split='up_down'; allowed: left_right"):
    data.load(config_for("translated", translated_split="up_down"))
  with pytest.raises(ValueError, match="train_size=5000 exceeds the 1438"):
    data.load(config_for("digits", train_size=5000))


# ------------------------------------------------------------------------ batching
def test_batch_indices_is_pure_and_pinned():
  # Pinned values: the permutation is integer hashing only, so these hold on any machine and
  # NumPy version. If this fails, resumed runs would change their batches: do not update
  # casually.
  np.testing.assert_array_equal(data.batch_indices(10, 4, 0, 0), [0, 9, 1, 6])
  np.testing.assert_array_equal(data.batch_indices(10, 4, 0, 2), [8, 7, 8, 3])
  np.testing.assert_array_equal(data.batch_indices(10, 4, 0, 2), data.batch_indices(10, 4, 0, 2))


def test_batch_indices_visit_every_example_once_per_epoch(rng):
  n, batch, seed = int(rng.integers(5, 60)), int(rng.integers(1, 17)), int(rng.integers(1 << 40))
  epochs = 3
  steps = -(-epochs * n // batch)
  stream = np.concatenate([data.batch_indices(n, batch, seed, s) for s in range(steps)])
  assert stream.dtype == np.int64
  for epoch in range(epochs):
    chunk = stream[epoch * n:(epoch + 1) * n]
    np.testing.assert_array_equal(np.sort(chunk), np.arange(n))
    np.testing.assert_array_equal(chunk, data.epoch_permutation(n, seed, epoch))
  # Epochs differ from each other and from another seed (n >= 5: a collision is 1/120 at most
  # per pair; use the whole 3-epoch stream to make it negligible).
  other = np.concatenate([data.batch_indices(n, batch, seed + 1, s) for s in range(steps)])
  assert not np.array_equal(stream, other)


def test_batch_indices_bad_arguments():
  with pytest.raises(ValueError, match="batch_size=0"):
    data.batch_indices(10, 0, 0, 0)
  with pytest.raises(ValueError, match="step=-1"):
    data.batch_indices(10, 2, 0, -1)


# ------------------------------------------------------------------------ prepare_batch
def test_prepare_batch_without_augment_normalises(rng):
  images = rng.integers(0, 256, (3, 5, 5, 2), dtype=np.uint8)
  mean = rng.uniform(50, 200, 2).astype(np.float32)
  std = rng.uniform(10, 80, 2).astype(np.float32)
  out = data.prepare_batch(images, mean, std, augment=False)
  assert out.dtype == jnp.float32 and out.shape == images.shape
  # float32 subtraction and division: relative error ~1e-7, 1e-5 leaves margin.
  np.testing.assert_allclose(out, (images - mean.astype(np.float64)) / std, rtol=1e-5, atol=1e-6)


def shifted_candidates(x, pad, flip):
  """All pad-crops (and flips) of one normalised (H, W, C) image, as a list."""
  h, w = x.shape[:2]
  padded = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))
  out = []
  for dy in range(2 * pad + 1):
    for dx in range(2 * pad + 1):
      crop = padded[dy:dy + h, dx:dx + w]
      out.append(crop)
      if flip:
        out.append(crop[:, ::-1])
  return out


def test_prepare_batch_augment_is_a_seeded_crop_and_flip(rng):
  images = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
  mean, std = np.full(3, 100, np.float32), np.full(3, 30, np.float32)
  key = jax.random.key(int(rng.integers(1 << 31)))
  augment = jax.jit(functools.partial(data.prepare_batch, augment=True))
  out = np.asarray(augment(images, mean, std, key=key))
  assert out.shape == images.shape and out.dtype == np.float32
  np.testing.assert_array_equal(out, np.asarray(augment(images, mean, std, key=key)))
  other = np.asarray(augment(images, mean, std, key=jax.random.split(key)[0]))
  assert not np.array_equal(out, other)
  plain = np.asarray(data.prepare_batch(images, mean, std, augment=False))
  for i in range(len(images)):
    # Each output is exactly one of the 81 crops x 2 flips of its input (pure data movement,
    # so equality is exact).
    assert any(np.array_equal(out[i], c) for c in shifted_candidates(plain[i], 4, True))


def test_prepare_batch_1d_shifts_but_never_flips(rng):
  signals = rng.integers(0, 256, (5, 20, 1), dtype=np.uint8)
  mean, std = np.zeros(1, np.float32), np.ones(1, np.float32)
  out = np.asarray(data.prepare_batch(signals, mean, std, augment=True,
                                      key=jax.random.key(int(rng.integers(1 << 31)))))
  plain = signals.astype(np.float32)
  for i in range(5):
    padded = np.pad(plain[i], ((4, 4), (0, 0)))
    assert any(np.array_equal(out[i], padded[d:d + 20]) for d in range(9))


def test_prepare_batch_needs_a_key_to_augment():
  with pytest.raises(ValueError, match="needs a PRNG key"):
    data.prepare_batch(np.zeros((1, 4, 4, 1), np.uint8), np.zeros(1), np.ones(1), augment=True)


def test_shard_batch_requires_divisible_batch():
  class FakeMesh:
    shape = {"data": 3}
  with pytest.raises(ValueError, match="batch_size=8 must divide by the 3 devices"):
    pipeline.shard_batch(np.zeros((8, 2)), FakeMesh())


def test_shard_batch_places_on_one_device_mesh(rng):
  mesh = jax.make_mesh((1,), ("data",))
  x = rng.normal(size=(4, 3)).astype(np.float32)
  out = pipeline.shard_batch({"x": x}, mesh)
  np.testing.assert_array_equal(np.asarray(out["x"]), x)


# ------------------------------------------------------------------------ experiment
def test_datasets_experiment_lists_every_dataset(tmp_path):
  from experiments import datasets as datasets_experiment
  config = ml_collections.ConfigDict(get_config())
  config.data_dir = str(tmp_path / "tfds")
  summary = datasets_experiment.run(config, str(tmp_path / "out"))
  names = [row["name"] for row in summary["datasets"]]
  for name in list(data.OFFLINE_DATASETS) + list(data.TFDS_DATASETS):
    assert name in names
  rows = {row["name"]: row for row in summary["datasets"]}
  assert rows["shapes10"]["available"] and rows["shapes10"]["shape"] == [16, 16, 3]
  assert not rows["cifar10"]["available"]
  assert (tmp_path / "out" / "datasets.md").read_text().count("|") > 20


# ------------------------------------------------------------------------- validation split


def _npz_dataset(tmp_path, rng, counts, num_test=6):
  """An npz of random images whose class c has counts[c] training examples (shuffled)."""
  y_train = rng.permutation(np.repeat(np.arange(len(counts)), counts))
  x_train = rng.integers(0, 256, (len(y_train), 4, 4, 3), dtype=np.uint8)
  # Each training image carries its own index in pixel (0, 0, 0:2), so a held-out image can
  # be traced back to the example it came from.
  x_train[:, 0, 0, 0], x_train[:, 0, 0, 1] = np.arange(len(y_train)) // 256, np.arange(
      len(y_train)) % 256
  path = tmp_path / "d.npz"
  np.savez(path, x_train=x_train, y_train=y_train,
           x_test=rng.integers(0, 256, (num_test, 4, 4, 3), dtype=np.uint8),
           y_test=rng.integers(0, len(counts), num_test))
  return f"npz:{path}", x_train, y_train


def _ids(x):
  return x[:, 0, 0, 0].astype(int) * 256 + x[:, 0, 0, 1]


@pytest.mark.parametrize("counts,size,expected", [
    ((50, 50, 50, 50), 20, (5, 5, 5, 5)),      # balanced: exactly size / K per class
    ((100, 50, 30, 20), 40, (20, 10, 6, 4)),   # proportional, exact quotas
    ((7, 7, 6), 10, (4, 3, 3)),                 # quotas 3.5/3.5/3: the largest remainder, ties
                                                # to the smaller class index, sums to size
])
def test_validation_split_is_stratified_disjoint_and_seeded(tmp_path, rng, counts, size,
                                                             expected):
  name, x_train, y_train = _npz_dataset(tmp_path, rng, counts)
  seed = int(rng.integers(1000))
  ds = data.load(config_for(name, validation_size=size, data_seed=seed))
  assert tuple(np.bincount(ds.y_val, minlength=len(counts))) == expected
  assert len(ds.x_train) + len(ds.x_val) == len(x_train)
  train_ids, val_ids = _ids(ds.x_train), _ids(ds.x_val)
  assert not set(train_ids) & set(val_ids)
  assert set(train_ids) | set(val_ids) == set(range(len(x_train)))
  np.testing.assert_array_equal(y_train[val_ids], ds.y_val)  # labels travel with images
  np.testing.assert_array_equal(y_train[train_ids], ds.y_train)
  # Mean/std are of the images trained on, never of the held-out ones.
  np.testing.assert_allclose(ds.mean, x_train[train_ids].reshape(-1, 3).mean(0), rtol=1e-5)
  again = data.load(config_for(name, validation_size=size, data_seed=seed))
  np.testing.assert_array_equal(_ids(again.x_val), val_ids)
  others = [set(_ids(data.load(config_for(name, validation_size=size,
                                          data_seed=seed + k)).x_val)) for k in (1, 2)]
  assert any(o != set(val_ids) for o in others)  # P(both equal by chance) is negligible


def test_validation_size_zero_holds_nothing_out(tmp_path, rng):
  name, x_train, _ = _npz_dataset(tmp_path, rng, (10, 10))
  ds = data.load(config_for(name))
  assert len(ds.x_val) == 0 and len(ds.x_train) == len(x_train)


@pytest.mark.parametrize("size", [-1, 40, 41])
def test_bad_validation_size_is_one_line(tmp_path, rng, size):
  name, _, _ = _npz_dataset(tmp_path, rng, (20, 20))
  with pytest.raises(ValueError, match=r"validation_size=-?\d+ is not allowed: .* has 40 "
                     r"training examples; give 0 \(no validation split\) to 39") as error:
    data.load(config_for(name, validation_size=size))
  assert "\n" not in str(error.value)


def test_train_size_is_taken_from_what_validation_leaves(tmp_path, rng):
  name, _, _ = _npz_dataset(tmp_path, rng, (30, 30))
  ds = data.load(config_for(name, validation_size=20, train_size=25))
  assert len(ds.x_train) == 25 and not set(_ids(ds.x_train)) & set(_ids(ds.x_val))
  with pytest.raises(ValueError, match="train_size=41 exceeds the 40 training examples"):
    data.load(config_for(name, validation_size=20, train_size=41))
