"""Datasets that need no download: shipped (scikit-learn digits) or generated from a seed.

- ``digits``: scikit-learn's 1,797 real 8x8 handwritten digits, a fixed stratified 80/20
  split (1,438 / 359), resized to the requested size.
- ``shapes10``: ten procedural classes of shapes and textures on 32x32x3 canvases, with random
  position, scale, small rotation, colours, background gradient and pixel noise; the offline
  stand-in for CIFAR-10 (see docs/datasets.md for how hard it is).
- ``translated``: digits pasted on a larger canvas at controlled positions, with train/test
  position splits, for the translation-invariance experiment; ``translated_at_shift`` gives
  the test digits at one chosen position.
- ``signals1d``: 1-D sequences made of one of ten short motifs repeated at random places in
  noise, for 1-D convolutions.

Everything is generated with NumPy from explicit seeds, vectorised over examples, so the same
seed gives the same bytes everywhere and 12k shapes take about a second.
"""

from __future__ import annotations

import functools

import numpy as np

DIGITS_TEST_FRACTION = 0.2
SHAPES10_SIZE = 32
SHAPES10_TRAIN, SHAPES10_TEST = 10_000, 2_000
SHAPES10_CLASSES = ("disk", "ring", "square", "frame", "triangle", "plus", "striped_disk",
                    "checker", "diamond", "crescent")
SIGNALS1D_TRAIN, SIGNALS1D_TEST = 5_000, 1_000
SIGNALS1D_CLASSES = 10
SIGNALS1D_MOTIF = 9
TRANSLATED_SPLITS = ("left_right", "center", "random")


# --------------------------------------------------------------------------- resizing
def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) linear-interpolation weights, antialiased (widened) when shrinking."""
  scale = n_out / n_in
  centres = (np.arange(n_out) + 0.5) / scale - 0.5
  support = max(1.0, 1.0 / scale)
  w = np.maximum(0.0, 1.0 - np.abs(np.arange(n_in)[None, :] - centres[:, None]) / support)
  return w / w.sum(axis=1, keepdims=True)


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
  """Resizes uint8 (N, H, W, C) images to (N, size, size, C) by separable linear filtering.

  Pure NumPy (no device, same bytes everywhere); edges replicate the border pixel.
  """
  n, h, w, c = images.shape
  if (h, w) == (size, size):
    return images
  rows, cols = _resize_matrix(h, size), _resize_matrix(w, size)
  out = np.einsum("yh,nhwc,xw->nyxc", rows, images.astype(np.float32), cols, optimize=True)
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def check_image_size(image_size: int, minimum: int = 4) -> None:
  if image_size != 0 and image_size < minimum:
    raise ValueError(f"image_size={image_size} is too small; use 0 (native) or >= {minimum}.")


# --------------------------------------------------------------------------- digits
@functools.lru_cache(maxsize=1)
def _digits_native():
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  bunch = load_digits()
  # Values are 0..16 counts of a 4x4 block; spread them over the 8-bit range.
  x = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  y = bunch.target.astype(np.int32)
  # Fixed stratified split (independent of any config seed): per class, a seed-0 shuffle,
  # the first 20% go to test.
  rng = np.random.default_rng(0)
  test = np.zeros(len(y), bool)
  for label in range(10):
    members = np.flatnonzero(y == label)
    chosen = rng.permutation(members)[:int(round(len(members) * DIGITS_TEST_FRACTION))]
    test[chosen] = True
  arrays = (x[~test], y[~test], x[test], y[test])
  for array in arrays:  # cached: nobody may change them in place
    array.flags.writeable = False
  return arrays


def digits(image_size: int = 8):
  """scikit-learn digits, 1,438 train / 359 test, (size, size, 1) uint8, 10 classes.

  Args:
    image_size: output side; 0 or 8 keeps the native 8x8.

  Returns:
    (x_train, y_train, x_test, y_test).
  """
  check_image_size(image_size)
  x_train, y_train, x_test, y_test = _digits_native()
  if image_size:
    x_train, x_test = resize_images(x_train, image_size), resize_images(x_test, image_size)
  return x_train, y_train, x_test, y_test


# --------------------------------------------------------------------------- shapes10
def _shape_mask(label: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Boolean mask of class ``label`` in local coordinates (unit radius), arrays (n, H, W)."""
  r = np.sqrt(u * u + v * v)
  box = np.maximum(np.abs(u), np.abs(v))
  if label == 0:    # disk
    return r <= 1.0
  if label == 1:    # ring
    return (r <= 1.0) & (r >= 0.55)
  if label == 2:    # filled square
    return box <= 0.8
  if label == 3:    # square outline
    return (box <= 0.85) & (box >= 0.5)
  if label == 4:    # triangle, point down
    return (v <= 0.7) & (np.abs(u) <= (v + 0.9) * 0.6)
  if label == 5:    # plus sign
    return ((np.abs(u) <= 0.28) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.28) & (np.abs(u) <= 1.0))
  if label == 6:    # disk filled with stripes
    return (r <= 1.0) & (np.sin(u * 2.5 * np.pi) > 0)
  if label == 7:    # square filled with a checkerboard
    return (box <= 0.85) & ((np.floor(u * 2.4) + np.floor(v * 2.4)) % 2 == 0)
  if label == 8:    # diamond (rotation is kept small, so it is not a square)
    return np.abs(u) + np.abs(v) <= 1.0
  if label == 9:    # crescent
    return (r <= 1.0) & ((u - 0.55) ** 2 + v * v >= 0.75 ** 2)
  raise ValueError(f"label={label}; shapes10 has labels 0..9.")


def shapes10_images(num: int, seed: int, size: int = SHAPES10_SIZE):
  """Generates ``num`` shapes10 examples deterministically from ``seed``.

  Each example: one class shape (balanced classes) of radius 5-10 px centred anywhere it
  fits, rotated by up to +-15 degrees, in a random colour on a random-colour background with a
  linear brightness gradient and Gaussian pixel noise (sigma ~ 10 levels).

  Args:
    num: number of examples.
    seed: generation seed.
    size: canvas side (the class geometry scales with it).

  Returns:
    (x uint8 (num, size, size, 3), y int32 (num,)).
  """
  rng = np.random.default_rng(seed)
  y = rng.permutation(np.arange(num) % 10).astype(np.int32)
  scale = size / SHAPES10_SIZE
  radius = rng.uniform(5.0, 10.0, num) * scale
  cx = rng.uniform(radius, size - radius)
  cy = rng.uniform(radius, size - radius)
  angle = np.deg2rad(rng.uniform(-15.0, 15.0, num))
  background = rng.uniform(0.0, 1.0, (num, 3))
  # Foreground differs from the background in brightness by 0.3-0.7 (either way) plus a
  # per-channel hue jitter, so colour alone never names the class.
  sign = np.where(background.mean(1) > 0.5, -1.0, 1.0)
  shift = sign * rng.uniform(0.3, 0.7, num)
  foreground = np.clip(background + shift[:, None] + rng.uniform(-0.25, 0.25, (num, 3)), 0, 1)
  gradient = rng.uniform(-0.15, 0.15, (num, 2))
  noise = rng.normal(0.0, 0.04, (num, size, size, 3))

  coords = np.arange(size, dtype=np.float64) + 0.5
  yy, xx = np.meshgrid(coords, coords, indexing="ij")
  mask = np.zeros((num, size, size), bool)
  for label in range(10):
    idx = np.flatnonzero(y == label)
    if not idx.size:
      continue
    dx = (xx[None] - cx[idx, None, None]) / radius[idx, None, None]
    dy = (yy[None] - cy[idx, None, None]) / radius[idx, None, None]
    c, s = np.cos(angle[idx])[:, None, None], np.sin(angle[idx])[:, None, None]
    # Image rows grow downwards; flip v so "up" in the class definitions is up on screen.
    u, v = c * dx + s * dy, -(-s * dx + c * dy)
    mask[idx] = _shape_mask(label, u, v)

  ramp = (gradient[:, 0, None, None] * (xx[None] / size - 0.5)
          + gradient[:, 1, None, None] * (yy[None] / size - 0.5))
  image = np.where(mask[..., None], foreground[:, None, None, :], background[:, None, None, :])
  image = image + ramp[..., None] + noise
  return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8), y


def shapes10(image_size: int = SHAPES10_SIZE, seed: int = 0):
  """shapes10 train (10,000) and test (2,000), generated at 32x32 and resized to ``image_size``.

  Train and test come from different sub-seeds of ``seed``. The arrays are cached and
  read-only (generation takes seconds; a sweep loads the same data many times).
  """
  check_image_size(image_size)
  return _shapes10_cached(int(image_size), int(seed))


@functools.lru_cache(maxsize=2)
def _shapes10_cached(image_size: int, seed: int):
  x_train, y_train, x_test, y_test = _shapes10_native(seed)
  if image_size:
    x_train, x_test = resize_images(x_train, image_size), resize_images(x_test, image_size)
  arrays = (x_train, y_train, x_test, y_test)
  for array in arrays:
    array.flags.writeable = False
  return arrays


@functools.lru_cache(maxsize=1)
def _shapes10_native(seed: int):
  # Generated once per seed at 32x32; every image_size is resized from this.
  x_train, y_train = shapes10_images(SHAPES10_TRAIN, _subseed(seed, 1))
  x_test, y_test = shapes10_images(SHAPES10_TEST, _subseed(seed, 2))
  return x_train, y_train, x_test, y_test


def _subseed(seed: int, stream: int) -> int:
  return int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])


# --------------------------------------------------------------------------- translated
def translated_geometry(image_size: int) -> dict:
  """Canvas side, object side and the range of horizontal offsets of ``translated``.

  The canvas is ``image_size`` (default 16) and each digit is resized to half of it, so its
  top-left corner can sit at horizontal offsets ``0 .. max_shift`` with
  ``max_shift = canvas - object``.
  """
  check_image_size(image_size, minimum=8)
  canvas = image_size or 16
  obj = canvas // 2
  return {"canvas": canvas, "object": obj, "max_shift": canvas - obj}


def _paste(objects: np.ndarray, canvas: int, x_offsets: np.ndarray,
           y_offsets: np.ndarray) -> np.ndarray:
  n, obj = objects.shape[0], objects.shape[1]
  out = np.zeros((n, canvas, canvas, objects.shape[-1]), np.uint8)
  rows = y_offsets[:, None] + np.arange(obj)[None, :]
  cols = x_offsets[:, None] + np.arange(obj)[None, :]
  out[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]] = objects
  return out


def _split_offsets(split: str, which: str, n: int, max_shift: int, rng) -> np.ndarray:
  half = max_shift // 2
  if split == "left_right":
    # Train: the object's left edge in [0, half]; test: in [half + 1, max_shift]. No position
    # is shared, so test accuracy measures generalisation to unseen translations.
    lo, hi = (0, half) if which == "train" else (half + 1, max_shift)
  elif split == "center":
    lo, hi = (half, half) if which == "train" else (0, max_shift)
  elif split == "random":
    lo, hi = 0, max_shift
  else:
    raise ValueError(f"translated_split={split!r}; allowed: {', '.join(TRANSLATED_SPLITS)}.")
  return rng.integers(lo, hi + 1, n)


def translated(image_size: int = 16, split: str = "left_right", seed: int = 0):
  """Digits on a canvas twice their size, with a train/test split by position.

  Splits (horizontal offset of the digit's left edge; vertical offset is uniform everywhere):
    - ``left_right``: train in the left half of the offset range, test in the right half.
    - ``center``: train centred only, test anywhere.
    - ``random``: train and test anywhere (the control).

  Args:
    image_size: canvas side (>= 8; 0 means 16). Digits are resized to half of it.
    split: one of ``TRANSLATED_SPLITS``.
    seed: position seed.

  Returns:
    (x_train, y_train, x_test, y_test), uint8 (N, canvas, canvas, 1) and int32.
  """
  if split not in TRANSLATED_SPLITS:
    raise ValueError(f"translated_split={split!r}; allowed: {', '.join(TRANSLATED_SPLITS)}.")
  geo = translated_geometry(image_size)
  x_train, y_train, x_test, y_test = digits(geo["object"])
  rng = np.random.default_rng(_subseed(seed, 3))
  out = []
  for which, x in (("train", x_train), ("test", x_test)):
    xo = _split_offsets(split, which, len(x), geo["max_shift"], rng)
    yo = rng.integers(0, geo["max_shift"] + 1, len(x))
    out.append(_paste(x, geo["canvas"], xo, yo))
  return out[0], y_train, out[1], y_test


def translated_at_shift(image_size: int, shift: int):
  """The ``translated`` test digits all at horizontal offset ``shift``, vertically centred.

  For accuracy-versus-shift curves: evaluate a model trained on ``translated`` at every
  ``shift`` in ``range(translated_geometry(image_size)['max_shift'] + 1)``.

  Args:
    image_size: canvas side as in ``translated``.
    shift: offset of the digit's left edge in pixels, ``0 .. max_shift``.

  Returns:
    (x uint8 (359, canvas, canvas, 1), y int32 (359,)).

  Raises:
    ValueError: if ``shift`` is outside ``0 .. max_shift``.
  """
  geo = translated_geometry(image_size)
  if not 0 <= shift <= geo["max_shift"]:
    raise ValueError(f"shift={shift} is outside 0..{geo['max_shift']} for a {geo['canvas']}-px "
                     f"canvas with {geo['object']}-px digits.")
  _, _, x_test, y_test = digits(geo["object"])
  n = len(x_test)
  xo = np.full(n, shift, np.int64)
  yo = np.full(n, geo["max_shift"] // 2, np.int64)
  return _paste(x_test, geo["canvas"], xo, yo), y_test


# --------------------------------------------------------------------------- signals1d
def signals1d_examples(num: int, seed: int, length: int = 64):
  """1-D sequences: class k's motif (fixed for all seeds) 2-4 times at random places in noise.

  Args:
    num: number of examples.
    seed: placement/noise seed.
    length: sequence length L (>= 2 * motif length).

  Returns:
    (x uint8 (num, L, 1) centred at 128, y int32 (num,)).
  """
  if length < 2 * SIGNALS1D_MOTIF:
    raise ValueError(f"signal_length={length} is too short; need >= {2 * SIGNALS1D_MOTIF}.")
  motifs = np.random.default_rng(12345).normal(0.0, 1.0, (SIGNALS1D_CLASSES, SIGNALS1D_MOTIF))
  motifs /= np.abs(motifs).max(axis=1, keepdims=True)
  rng = np.random.default_rng(seed)
  y = rng.permutation(np.arange(num) % SIGNALS1D_CLASSES).astype(np.int32)
  signal = rng.normal(0.0, 0.3, (num, length))
  repeats = rng.integers(2, 5, num)
  for k in range(4):
    active = repeats > k
    starts = rng.integers(0, length - SIGNALS1D_MOTIF + 1, num)
    amplitude = rng.uniform(0.6, 1.0, num)
    cols = starts[:, None] + np.arange(SIGNALS1D_MOTIF)[None, :]
    rows = np.arange(num)[:, None]
    signal[rows, cols] += np.where(active, amplitude, 0.0)[:, None] * motifs[y]
  x = np.clip(np.rint(128.0 + 50.0 * signal), 0, 255).astype(np.uint8)[..., None]
  return x, y


def signals1d(length: int = 64, seed: int = 0):
  """signals1d train (5,000) and test (1,000), (N, length, 1) uint8, 10 classes."""
  x_train, y_train = signals1d_examples(SIGNALS1D_TRAIN, _subseed(seed, 4), length)
  x_test, y_test = signals1d_examples(SIGNALS1D_TEST, _subseed(seed, 5), length)
  return x_train, y_train, x_test, y_test
