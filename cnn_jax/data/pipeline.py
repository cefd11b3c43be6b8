"""Batching, normalisation and augmentation: the part of the data layer that runs every step.

Batches are a pure function of ``(num_examples, batch_size, seed, step)``, so a resumed run sees
exactly the batches it would have seen without the interruption, on any machine. The index
stream is the concatenation of one seeded permutation per epoch, and batch ``step`` is the slice
``[step * batch_size, (step + 1) * batch_size)`` of that stream: batches straddle epoch
boundaries and no example is ever dropped, so every epoch shows each example exactly once.

The permutation is built from a keyed integer hash (splitmix64) of ``(seed, epoch, index)``
and an argsort, not from ``numpy.random``: NumPy only promises its Generator streams within a
version, while the hash depends on nothing but 64-bit integer arithmetic.

``prepare_batch`` turns uint8 images into normalised float32 on the device and, when asked,
applies He et al. (2016)'s CIFAR augmentation (pad 4, random crop back to size, horizontal
flip) in jit-able JAX, so augmentation never has to wait on the host.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
  """The splitmix64 finaliser on uint64 arrays (wrapping arithmetic)."""
  with np.errstate(over="ignore"):
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@functools.lru_cache(maxsize=8)
def _epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  # Cached because consecutive steps almost always share an epoch; the result is read-only so
  # the cache cannot be corrupted by a caller.
  key = _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
  key = _splitmix64(key ^ np.uint64(epoch & 0xFFFFFFFFFFFFFFFF))
  scores = _splitmix64(np.arange(num_examples, dtype=np.uint64) ^ key)
  perm = np.argsort(scores, kind="stable").astype(np.int64)
  perm.flags.writeable = False
  return perm


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The order in which epoch ``epoch`` visits the examples.

  Args:
    num_examples: N, the size of the training split.
    seed: any int; the same seed gives the same order on every machine.
    epoch: 0-based epoch number.

  Returns:
    int64 array (N,), a permutation of ``range(N)`` (read-only).
  """
  _check_positive("num_examples", num_examples)
  return _epoch_permutation(int(num_examples), int(seed), int(epoch))


def batch_indices(num_examples: int, batch_size: int, seed: int, step: int) -> np.ndarray:
  """Indices of the training examples in batch ``step``.

  Batch ``step`` holds positions ``[step * B, (step + 1) * B)`` of the stream
  ``perm(epoch 0) ++ perm(epoch 1) ++ ...``; the epoch of the batch's first example is
  ``step * B // N``. A batch may straddle two epochs (or several, if ``B > N``); nothing is
  dropped.

  Args:
    num_examples: N, size of the training split (> 0).
    batch_size: B (> 0).
    seed: permutation seed.
    step: 0-based training step (>= 0).

  Returns:
    int64 array (B,) of indices into the training arrays.

  Raises:
    ValueError: if N or B is not positive or step is negative.
  """
  _check_positive("num_examples", num_examples)
  _check_positive("batch_size", batch_size)
  if int(step) < 0:
    raise ValueError(f"step={step} is negative; steps count from 0.")
  start = int(step) * int(batch_size)
  positions = np.arange(start, start + int(batch_size), dtype=np.int64)
  epochs = positions // num_examples
  offsets = positions % num_examples
  out = np.empty(int(batch_size), dtype=np.int64)
  for epoch in np.unique(epochs):
    sel = epochs == epoch
    out[sel] = epoch_permutation(num_examples, seed, int(epoch))[offsets[sel]]
  return out


def _check_positive(name: str, value) -> None:
  if int(value) <= 0:
    raise ValueError(f"{name}={value} must be a positive integer.")


def normalise(images, mean, std) -> jax.Array:
  """uint8 pixels → float32 ``(x - mean) / std`` (mean/std in pixel units, per channel).

  Args:
    images: uint8 (N, *spatial, C).
    mean: float (C,).
    std: float (C,).

  Returns:
    float32 (N, *spatial, C).
  """
  x = jnp.asarray(images).astype(jnp.float32)
  # Explicit (1, ..., 1, C) shapes: the project runs with jax_numpy_rank_promotion="raise".
  channel_shape = (1,) * (x.ndim - 1) + (x.shape[-1],)
  mean = jnp.asarray(mean, jnp.float32).reshape(channel_shape)
  std = jnp.asarray(std, jnp.float32).reshape(channel_shape)
  return (x - mean) / std


def random_crop(x: jax.Array, key: jax.Array, pad: int = 4) -> jax.Array:
  """Zero-pads every spatial dim by ``pad`` and crops back to the original size at a random
  offset per example (He et al. 2016). Zero is the mean colour if ``x`` is normalised.

  Args:
    x: float (N, *spatial, C).
    key: PRNG key.
    pad: pixels of padding on each side.

  Returns:
    (N, *spatial, C), same dtype; each example shifted by an offset in ``[-pad, pad]`` per dim.
  """
  n, *spatial, c = x.shape
  widths = [(0, 0)] + [(pad, pad)] * len(spatial) + [(0, 0)]
  padded = jnp.pad(x, widths)
  offsets = jax.random.randint(key, (n, len(spatial)), 0, 2 * pad + 1)

  def crop_one(image, offset):
    start = tuple(offset) + (0,)
    return jax.lax.dynamic_slice(image, start, tuple(spatial) + (c,))

  return jax.vmap(crop_one)(padded, offsets)


def random_flip(x: jax.Array, key: jax.Array) -> jax.Array:
  """Mirrors each (N, H, W, C) image left-right with probability 1/2."""
  flip = jax.random.bernoulli(key, 0.5, (x.shape[0],))
  return jnp.where(flip[:, None, None, None], x[:, :, ::-1, :], x)


@functools.partial(jax.jit, static_argnames=("augment", "pad", "flip"))
def prepare_batch(images_uint8, mean, std, *, augment: bool, key=None, pad: int = 4,
                  flip: bool = True) -> jax.Array:
  """A training/eval batch: normalise, then (if ``augment``) pad-crop and flip.

  Args:
    images_uint8: uint8 (N, H, W, C) images or (N, L, C) signals.
    mean: float32 (C,) per-channel training mean, in pixel units (0..255).
    std: float32 (C,) per-channel training std, in pixel units.
    augment: apply random crop (+ flip for 2-D data). Static.
    key: PRNG key; required when ``augment``.
    pad: crop padding (4 in He et al.). Static.
    flip: horizontal flip for 2-D images; never applied to 1-D signals, whose motifs are not
      mirror-symmetric. Static.

  Returns:
    float32 array of the input's shape.
  """
  x = normalise(images_uint8, mean, std)
  if not augment:
    return x
  if key is None:
    raise ValueError("prepare_batch: augment=True needs a PRNG key (key=None given).")
  crop_key, flip_key = jax.random.split(key)
  x = random_crop(x, crop_key, pad)
  if flip and x.ndim == 4:
    x = random_flip(x, flip_key)
  return x


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and std (pixel units) of uint8 images, as float32 (C,) each.

  The std is floored at 1 pixel level so a constant channel does not divide by zero.
  Computed in float64 chunks so 50k CIFAR images need no 600 MB float copy.
  """
  flat = images.reshape(-1, images.shape[-1])
  total = np.zeros(flat.shape[1], np.float64)
  total_sq = np.zeros(flat.shape[1], np.float64)
  chunk = 1 << 20
  for start in range(0, flat.shape[0], chunk):
    part = flat[start:start + chunk].astype(np.float64)
    total += part.sum(0)
    total_sq += (part * part).sum(0)
  count = max(flat.shape[0], 1)
  mean = total / count
  var = np.maximum(total_sq / count - mean * mean, 0.0)
  return mean.astype(np.float32), np.maximum(np.sqrt(var), 1.0).astype(np.float32)


def shard_batch(batch, mesh, axis: str = "data"):
  """Places a host batch on ``mesh``, split along its leading dim over mesh axis ``axis``.

  Args:
    batch: pytree of arrays with a common leading batch dim B.
    mesh: a ``jax.sharding.Mesh`` with an axis named ``axis``.
    axis: name of the data-parallel mesh axis.

  Returns:
    The same pytree as ``jax.Array``s sharded ``P(axis)`` on the leading dim.

  Raises:
    ValueError: if B does not divide by the number of devices on ``axis``.
  """
  devices = mesh.shape[axis]
  for leaf in jax.tree_util.tree_leaves(batch):
    if leaf.shape[0] % devices:
      raise ValueError(f"batch_size={leaf.shape[0]} must divide by the {devices} devices on "
                       f"mesh axis '{axis}'.")
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axis))
  return jax.device_put(batch, sharding)
