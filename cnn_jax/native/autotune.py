"""Per-shape choice of convolution kernel by measurement, cached on disk (``conv_algorithm``
``"autotune"`` / ``"autotune_winograd4"``), in the manner of ``cudnn.benchmark``.

The first time a layer of a given shape is traced, each candidate that takes it is timed on
random float32 data, forward and both gradients together (what a train step runs): XLA's
convolutions with the hand VJPs (``ops.hand.correlate``), oneDNN's direct algorithm, Winograd
F(2x2, 3x3), and F(4x4, 3x3) only with ``"autotune_winograd4"`` (its rounding is 10-20x
F(2x2)'s: the user opts in). A candidate whose results differ from XLA's by more than float32
rounding (``native_gradcheck``'s rule) is never chosen. The fastest (a near tie, within
``TIE``, going to the earlier of ``CANDIDATES``) is written to
``$XDG_CACHE_HOME/cnn_jax/autotune.json`` (default ``~/.cache``; atomic writes) under a key of
the CPU model, the native library's source hash, the JAX version and the layer's shape, so
the next run (or the next layer of the same shape) reads it instead of measuring.

The choice is a function of the shape and the machine, read while tracing; a jitted function
traced again on the same machine makes the same choice. One tuner measures at a time (a
thread lock and a lock file beside the cache): parallel runs, in threads or processes, wait
for the first one's measurement and read the same choice. A training run also records its
choices in its workdir (``Kernels.choices_file``, ``kernels.json``) and reads them back
first, so a run resumed after the cache changed, or on another machine where the same
candidates apply, keeps its kernels and its numbers.

``python -m cnn_jax.native autotune`` tunes a ResNet's layers and prints the table of
candidates and times.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax import atomic
from cnn_jax.native import build as build_lib

XLA = "xla"
CANDIDATES = ("xla", "direct", "winograd2", "winograd4")
_TILE = {"direct": 0, "winograd2": 2, "winograd4": 4}
# float32 rounding allowed against XLA's result, relative to the largest entry (as
# native_gradcheck: 4 sqrt(K) u, doubled because both sides round; F(4x4) 16x that).
_FACTOR = {"direct": 8, "winograd2": 8, "winograd4": 128}
# A candidate within this fraction of the fastest time counts as tied with it: repeated
# measurements of one layer on one machine differ by a few percent.
TIE = 0.05


def cache_file() -> str:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "cnn_jax", "autotune.json")


@functools.lru_cache(maxsize=None)
def cpu_model() -> str:
  """The CPU's model name (``/proc/cpuinfo``, as ``lscpu`` shows it)."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return "unknown CPU"


def machine_key() -> str:
  """What a measurement holds for: this CPU model, native library and JAX version, and the
  rule that picks from the times (``TIE``)."""
  return "|".join([cpu_model(), build_lib.cache_key(), f"jax {jax.__version__}", f"tie {TIE}"])


def layer_key(x_shape, w_shape, spec, candidates) -> str:
  """One layer's shapes, window and candidates (the key of a run's recorded choice)."""
  return "|".join([f"x{tuple(x_shape)}", f"w{tuple(w_shape)}", f"s{spec.stride}",
                   f"d{spec.dilation}", f"p{spec.pads}", ",".join(candidates)])


def shape_key(x_shape, w_shape, spec, candidates) -> str:
  """The cache key of one layer on this machine and library."""
  return machine_key() + "|" + layer_key(x_shape, w_shape, spec, candidates)


def _read(path: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def _write(path: str, entries: dict) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  atomic.write_text(path, json.dumps(entries, indent=1, sort_keys=True) + "\n")


_ONE_TUNER = threading.Lock()


@contextlib.contextmanager
def _one_tuner():
  """Held while a layer is looked up, measured and written: by one thread of this process
  and, through ``autotune.json.lock`` beside the cache, by one process of this machine."""
  os.makedirs(os.path.dirname(cache_file()), exist_ok=True)
  with _ONE_TUNER, open(cache_file() + ".lock", "a", encoding="utf-8") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def _step(candidate, spec):
  """Forward and both gradients of one candidate, as one jitted function of (x, w, g)."""
  from cnn_jax import ops  # pylint: disable=g-import-not-at-top
  from cnn_jax.native import ffi  # pylint: disable=g-import-not-at-top
  if candidate == XLA:
    hand = ops.for_grad("hand")
    fn = lambda x, w: hand.correlate(x, w, stride=spec.stride, padding=spec.pads,
                                     dilation=spec.dilation)
  else:
    fn = lambda x, w: ffi.correlate(x, w, spec, _TILE[candidate])

  def step(x, w, g):
    y, vjp = jax.vjp(fn, x, w)
    return (y, *vjp(g))
  return jax.jit(step)


def _max_relative(got, want) -> float:
  worst = 0.0
  for a, b in zip(got, want):
    scale = float(jnp.max(jnp.abs(b)))
    worst = max(worst, float(jnp.max(jnp.abs(a - b))) / (scale or 1.0))
  return worst


def measure(x_shape, w_shape, spec, candidates, repeats: int = 5, timer=None) -> dict:
  """Times each candidate (best seconds of a forward + both gradients) and checks it
  against XLA's result; returns ``{"choice", "seconds": {c: s}, "rejected": {c: error}}``.

  Args:
    x_shape, w_shape, spec: the layer.
    candidates: names from ``CANDIDATES`` (``"xla"`` first: the reference).
    repeats: timed calls per candidate, interleaved.
    timer: ``(candidate, seconds) -> seconds`` applied to each measurement (tests fake it).
  """
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
  w = jnp.asarray(rng.standard_normal(w_shape) / np.sqrt(np.prod(w_shape[:-1])), jnp.float32)
  steps = {c: _step(c, spec) for c in candidates}
  out_spatial = spec.out_spatial
  g = jnp.asarray(rng.standard_normal((x_shape[0],) + tuple(out_spatial) + (w_shape[-1],)),
                  jnp.float32)
  reference = jax.block_until_ready(steps[XLA](x, w, g))
  longest = max(int(np.prod(w_shape[:-1])), int(np.prod(w_shape[:-2])) * w_shape[-1],
                x_shape[0] * int(np.prod(out_spatial)))
  rejected = {}
  for candidate in candidates[1:]:
    error = _max_relative(jax.block_until_ready(steps[candidate](x, w, g)), reference)
    if error > _FACTOR[candidate] * np.sqrt(longest) * 2.0 ** -24:
      rejected[candidate] = error
  times = {c: [] for c in candidates if c not in rejected}
  for _ in range(repeats):
    for candidate in times:
      start = time.perf_counter()
      jax.block_until_ready(steps[candidate](x, w, g))
      seconds = time.perf_counter() - start
      times[candidate].append(timer(candidate, seconds) if timer else seconds)
  # The fastest of the repeats: other processes only ever add time to a measurement.
  best = {c: min(t) for c, t in times.items()}
  return {"choice": fastest(best), "seconds": best, "rejected": rejected}


def fastest(seconds: dict) -> str:
  """The first candidate (in ``CANDIDATES`` order) within ``TIE`` of the fastest time, so a
  near tie goes the same way each time it is measured instead of by the noise."""
  least = min(seconds.values())
  return next(c for c in CANDIDATES if c in seconds and seconds[c] <= least * (1 + TIE))


def choose(x_shape, w_shape, spec, candidates, choices_file: str | None = None) -> str:
  """The choice for this layer: recorded in ``choices_file``, else cached on this machine,
  else measured now (and cached).

  Args:
    x_shape, w_shape, spec: the layer.
    candidates: names from ``CANDIDATES`` that take it (``"xla"`` first).
    choices_file: a run's record of its choices (``Kernels.choices_file``), or ``None``. A
      layer recorded there gets that choice whatever the cache says now; a layer that is not
      gets the cache's choice, which is added.
  """
  layer = layer_key(x_shape, w_shape, spec, candidates)
  if choices_file is not None:
    recorded = _read(choices_file).get(layer)
    if recorded is not None:
      return recorded
  key = machine_key() + "|" + layer
  with _one_tuner():
    entries = _read(cache_file())  # another run may have measured it meanwhile
    if key not in entries:
      # Called while a model is traced: the measurement runs eagerly, outside that trace.
      with jax.ensure_compile_time_eval():
        entries[key] = measure(x_shape, w_shape, spec, candidates)
      _write(cache_file(), entries)
    choice = entries[key]["choice"]
    if choices_file is not None:
      recorded = _read(choices_file)
      choice = recorded.setdefault(layer, choice)
      _write(choices_file, recorded)
  return choice


def table(entries: dict | None = None) -> str:
  """The cached choices and times on this CPU, library and JAX version, one line per layer
  shape."""
  entries = _read(cache_file()) if entries is None else entries
  lines = [f"autotuned convolutions on {cpu_model()} ({cache_file()}):"]
  machine = machine_key() + "|"
  for key, entry in sorted(entries.items()):
    if not key.startswith(machine):
      continue
    fields = key.split("|")
    times = ", ".join(f"{c} {1e3 * s:.2f} ms" for c, s in sorted(entry["seconds"].items(),
                                                                   key=lambda kv: kv[1]))
    rejected = "".join(f"; {c} rejected (error {e:.1e})" for c, e in entry["rejected"].items())
    lines.append(f"  {' '.join(fields[3:8])}: {entry['choice']}  ({times}{rejected})")
  return "\n".join(lines)
