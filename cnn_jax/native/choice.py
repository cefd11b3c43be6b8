"""Which kernels a model's layers run: the config's choice, resolved once, passed explicitly.

``config.kernels`` and ``config.conv_algorithm`` (``experiments/configs/default.py``) resolve
(``resolve``) into a ``Kernels`` value before anything is traced; ``models.build`` hands it to
every layer as a module field, so a jitted step's cache key (the module) holds the choice and
nothing is read from a global while tracing. Each convolution layer then asks ``conv_tile``
for its own shape.

``kernels``:
  * ``"auto"``: the native kernels where they apply (``grad="hand"``, one device, the library
    built, float32 1-D/2-D ungrouped zero-padded convolutions), XLA's elsewhere;
  * ``"xla"``: the pure ops everywhere (what runs on GPU and TPU);
  * ``"native"``: as ``"auto"``, but a layer or run the kernels cannot take is an error.

``conv_algorithm`` (for the convolutions that run natively):
  * ``"autotune"`` (the default): per layer shape, the fastest of XLA's convolution, oneDNN's
    direct algorithm and F(2x2, 3x3) (where it applies), measured on first use, cached on
    disk and recorded in the run's ``kernels.json`` (``autotune.py``; the fastest differs
    between CPUs); ``"autotune_winograd4"`` adds F(4x4, 3x3) to the candidates;
  * ``"auto"``: Winograd F(2x2, 3x3) on the layers it takes (stride 1, 3x3, padding 1, even
    sizes, channels multiples of 8 in and 16 out, AVX2+FMA), oneDNN's direct algorithm on the
    rest;
  * ``"auto_winograd4"``: F(4x4, 3x3) where the sizes are also multiples of 4 (its float32
    rounding 10-20x F(2x2)'s, ~1e-5 of the largest entry), then as ``"auto"``;
  * ``"direct"``: oneDNN's direct algorithm for every layer;
  * ``"winograd2"``, ``"winograd4"``: that Winograd algorithm on every native layer; a layer
    it does not take (a 5x5 or stride-2 convolution) is an error.

Several devices: the FFI call has no partitioning rule, so on a mesh XLA would gather the
batch onto each device around it; ``"auto"`` resolves to XLA there and ``"native"`` is an
error (see docs/training.md).
"""

from __future__ import annotations

import dataclasses
import functools
import sys

import jax.numpy as jnp

KERNELS = ("auto", "xla", "native")
CONV_ALGORITHMS = ("auto", "auto_winograd4", "autotune", "autotune_winograd4", "direct",
                   "winograd2", "winograd4")


@dataclasses.dataclass(frozen=True)
class Kernels:
  """A resolved choice, hashable (a Flax module field).

  Attributes:
    native: run the native kernels where they apply.
    conv_algorithm: one of ``CONV_ALGORITHMS``.
    strict: a layer the native kernels cannot take raises instead of running XLA's.
    choices_file: with ``"autotune*"``, the run's record of its per-layer choices
      (``workdir/kernels.json``, set by the trainer through ``with_choices_file``): a layer
      recorded there runs that choice, so a resumed run keeps its kernels; ``None``: the
      machine's cache alone.
  """
  native: bool = False
  conv_algorithm: str = "auto"
  strict: bool = False
  choices_file: str | None = None


XLA = Kernels()


def check(kernels: str, conv_algorithm: str) -> None:
  """Raises ``ValueError`` (one line) for a value not in ``KERNELS`` / ``CONV_ALGORITHMS``."""
  if kernels not in KERNELS:
    raise ValueError(f"kernels={kernels!r} is not allowed: give one of {', '.join(KERNELS)}")
  if conv_algorithm not in CONV_ALGORITHMS:
    raise ValueError(f"conv_algorithm={conv_algorithm!r} is not allowed: give one of "
                     f"{', '.join(CONV_ALGORITHMS)}")


def resolve(kernels: str, conv_algorithm: str = "auto", *, grad: str = "hand",
            num_devices: int | None = 1) -> Kernels:
  """The ``Kernels`` a run uses.

  Args:
    kernels: one of ``KERNELS``.
    conv_algorithm: one of ``CONV_ALGORITHMS``.
    grad: the model's gradient mode; the native kernels are the hand VJPs' accelerator.
    num_devices: devices the step runs on (``None``: ``jax.device_count()``, asked only when
      the answer matters, so that a refused choice fails before JAX starts its backends).

  Raises:
    ValueError: one line naming the choice and what is allowed: an unknown value, or
      ``kernels="native"`` where they cannot run (autodiff, several devices, the library not
      built or not loadable).
  """
  check(kernels, conv_algorithm)
  if kernels == "xla":
    return XLA
  from cnn_jax.native import ffi  # pylint: disable=g-import-not-at-top
  reason = None
  if grad != "hand":
    reason = f"grad={grad!r} (they run the hand-written VJPs: give grad=hand)"
  else:
    reason = ffi.load_failure()
    if reason is not None and kernels == "auto":
      _say_once(f"kernels='auto' runs XLA's convolutions: {reason}")
  if reason is None:
    if num_devices is None:
      import jax  # pylint: disable=g-import-not-at-top
      num_devices = jax.device_count()
    if num_devices != 1:
      reason = f"{num_devices} devices (they run on one)"
    else:
      reason = ffi.unavailable_reason()
  if reason is None:
    return Kernels(native=True, conv_algorithm=conv_algorithm, strict=kernels == "native")
  if kernels == "native":
    raise ValueError(f"kernels='native' cannot run: {reason}; allowed here: auto, xla")
  return XLA


@functools.lru_cache(maxsize=None)
def _say_once(line: str) -> None:
  """Prints ``line`` to stderr the first time this process meets it (a fall-back the user
  should know of, since it changes the speed, not the numbers)."""
  print(line, file=sys.stderr)


def from_config(config, num_devices: int | None = None) -> Kernels:
  """``resolve`` of the config's ``kernels``, ``conv_algorithm`` and ``grad``."""
  return resolve(config.get("kernels", "auto"), config.get("conv_algorithm", "auto"),
                 grad=config.get("grad", "autodiff"), num_devices=num_devices)


def with_choices_file(model, path: str):
  """``model`` whose autotuned layers record their choices in ``path`` and read them back
  (``Kernels.choices_file``); ``model`` itself where nothing is autotuned."""
  kernels = getattr(model, "kernels", None)
  if kernels is None or not kernels.native or not kernels.conv_algorithm.startswith("autotune"):
    return model
  return model.clone(kernels=dataclasses.replace(kernels, choices_file=path))


def without_tuning(model):
  """``model`` for the batch-of-one passes that only give the variables and their shapes
  (init, the model summary, layer names): the same kernels and the same checks, so a forced
  kernel that does not apply to a layer fails there, before a run writes anything; but an
  autotuned layer takes the fixed rule (``auto``) instead of measuring a shape no step runs.
  The variables do not depend on the kernels."""
  kernels = getattr(model, "kernels", None)
  if kernels is None or not kernels.conv_algorithm.startswith("autotune"):
    return model
  fixed = kernels.conv_algorithm.replace("autotune", "auto", 1)
  return model.clone(kernels=dataclasses.replace(kernels, conv_algorithm=fixed,
                                                 choices_file=None))


@functools.lru_cache(maxsize=None)
def cpu_has_avx2_fma() -> bool:
  """Whether this CPU has AVX2 and FMA (the Winograd kernels' instructions)."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")),
                   [])
  except OSError:
    return False
  return "avx2" in flags and "fma" in flags


def winograd_applies(tile: int, x_shape, w_shape, spec) -> bool:
  """Whether Winograd F(tile x tile, 3x3) takes ``correlate(x, w, spec)`` (the rule of
  ``csrc/winograd_f2x3.h``'s ``Applies``, and H, W multiples of 4 for tile 4)."""
  if spec.num_dims != 2:
    return False
  h, w = x_shape[1:3]
  kh, kw, c, o = w_shape
  return (cpu_has_avx2_fma() and (kh, kw) == (3, 3) and h % tile == 0 and w % tile == 0
          and c % 8 == 0 and o % 16 == 0 and spec.stride == (1, 1)
          and spec.dilation == (1, 1) and spec.pads == ((1, 1), (1, 1)))


def _describe(x_shape, w_shape, spec) -> str:
  kernel = "x".join(map(str, w_shape[:spec.num_dims]))
  size = "x".join(map(str, x_shape[1:-1]))
  stride = "x".join(map(str, spec.stride))
  return (f"{kernel} convolution with stride {stride} on {size} "
          f"({w_shape[-2]}->{w_shape[-1]} channels)")


def conv_tile(kernels: Kernels, x, w, spec, groups: int = 1) -> int | None:
  """How a convolution layer runs: ``None`` for XLA's (the pure or hand op), else the native
  kernels with this Winograd tile (0: oneDNN's direct algorithm).

  Args:
    kernels: the resolved choice.
    x, w: the layer's input ``(N, *spatial, C_in)`` and kernel (arrays or shape structs).
    spec: its window spec.
    groups: feature groups.

  Raises:
    ValueError: one line, where ``kernels`` is strict and the layer does not fit it.
  """
  if not kernels.native:
    return None
  takes = (spec.num_dims in (1, 2) and groups == 1 and not spec.circular
           and x.dtype == jnp.float32 and w.dtype == jnp.float32)
  if not takes:
    if kernels.strict:
      raise ValueError(f"kernels='native' does not apply to a {x.dtype} "
                       f"{_describe(x.shape, w.shape, spec)} with groups={groups}: the native "
                       "kernels take float32, 1-D or 2-D, ungrouped, zero padding; give "
                       "kernels=auto or xla")
    return None
  algorithm = kernels.conv_algorithm
  if algorithm == "direct":
    return 0
  if algorithm in ("winograd2", "winograd4"):
    tile = int(algorithm[-1])
    if not winograd_applies(tile, x.shape, w.shape, spec):
      raise ValueError(
          f"conv_algorithm={algorithm!r} does not apply to a {_describe(x.shape, w.shape, spec)}:"
          f" Winograd F({tile}x{tile},3x3) takes 3x3, stride 1, padding 1, sizes multiples of "
          f"{tile}, channels multiples of 8 in and 16 out, on a CPU with AVX2 and FMA; give "
          "conv_algorithm=auto, auto_winograd4, autotune, autotune_winograd4 or direct")
    return tile
  if algorithm.startswith("autotune"):
    from cnn_jax.native import autotune  # pylint: disable=g-import-not-at-top
    candidates = [autotune.XLA, "direct"]
    if winograd_applies(2, x.shape, w.shape, spec):
      candidates.append("winograd2")
    if algorithm == "autotune_winograd4" and winograd_applies(4, x.shape, w.shape, spec):
      candidates.append("winograd4")
    choice = autotune.choose(x.shape, w.shape, spec, tuple(candidates), kernels.choices_file)
    return None if choice == autotune.XLA else {"direct": 0, "winograd2": 2,
                                                "winograd4": 4}[choice]
  for tile in ((4, 2) if algorithm == "auto_winograd4" else (2,)):
    if winograd_applies(tile, x.shape, w.shape, spec):
      return tile
  return 0
