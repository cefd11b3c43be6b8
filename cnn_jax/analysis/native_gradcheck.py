"""Gradient check of the native kernels the trainer can run: float32 against float64 autodiff.

The hand VJPs (``cnn_jax.analysis.gradcheck``) are checked in float64, where the native
kernels (``cnn_jax.native``) never run: they take float32 only. Each row here runs one kernel
the trainer can choose (oneDNN's direct convolution, Winograd F(2x2, 3x3) and F(4x4, 3x3),
BatchNorm's one-pass channel sums) in float32 on fresh random inputs and compares its forward
value and both gradients (and, for the convolutions, second order: the gradient of
``<dL/dx, u> + <dL/dw, v>``) with ``jax.vjp`` of the pure op (``ops.correlate``,
``ops.batch_norm``) in float64.

Tolerance, per row: the kernels compute float32 sums of ``K`` products (forward ``K = kh kw
C_in``, dL/dx ``kh kw C_out``, dL/dw ``N Ho Wo``; BatchNorm's sums ``N H W``). Each sum's
rounding error is at most ``K u |terms|`` (``u = 2^-24``) and, with errors of random sign,
grows like ``sqrt(K) u`` in practice. The error is measured relative to the largest entry of
the float64 result, so the bound allowed is ``FACTOR[path] * sqrt(K_max) * u`` with ``K_max``
the longest sum of the row: ``FACTOR`` 4 for the direct algorithm, F(2x2, 3x3) and the channel
sums (one rounding for each product and each addition, twice the sqrt(K) growth for margin;
F(2x2)'s transforms add and halve, exactly in float32 up to a few ulps), and 64 for
F(4x4, 3x3) (its transforms' coefficients, up to 8 and 1/24, cancel: measured 10-20x
F(2x2)'s error, docs/gradients.md). Second order chains three products: three times the
first-order bound. Over seeds 0-3 of the quick grid the worst row reached 0.24 of its bound.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax import native, ops
from cnn_jax.ops import correlation

UNIT_ROUNDOFF = 2.0 ** -24
FACTOR = {"direct": 4, "winograd2": 4, "winograd4": 64, "channel_sums": 4}
_TILE = {"direct": 0, "winograd2": 2, "winograd4": 4}


@dataclasses.dataclass(frozen=True)
class NativeCase:
  """One native kernel on one shape.

  Attributes:
    path: ``"direct"``, ``"winograd2"``, ``"winograd4"`` (a convolution on that algorithm) or
      ``"channel_sums"`` (``ops.hand.batch_norm`` with the native sums).
    x_shape: ``(N, H, W, C)``.
    w_shape: the kernel ``(kh, kw, C_in, C_out)`` (``None`` for BatchNorm).
    stride: of the convolution.
    default: whether the default training config (a CIFAR ResNet, ``kernels=auto``,
      ``conv_algorithm=autotune``: per layer shape, the fastest of XLA's convolution, the
      direct algorithm and F(2x2, 3x3)) can run this kernel on layers of this kind.
  """
  path: str
  x_shape: tuple
  w_shape: tuple | None = None
  stride: int = 1
  default: bool = False

  @property
  def label(self) -> str:
    return f"native:{self.path}" + (" (default)" if self.default else "")

  def sum_lengths(self) -> dict:
    """The float32 sum length of each checked quantity."""
    n, h, w, _ = self.x_shape
    if self.w_shape is None:
      return {"y": n * h * w, "dx": n * h * w, "dparams": n * h * w}
    kh, kw, c_in, c_out = self.w_shape
    ho, wo = -(-h // self.stride), -(-w // self.stride)
    return {"y": kh * kw * c_in, "dx": kh * kw * c_out, "dparams": n * ho * wo}

  def tolerance(self) -> float:
    return FACTOR[self.path] * math.sqrt(max(self.sum_lengths().values())) * UNIT_ROUNDOFF


def quick_cases() -> list[NativeCase]:
  """One row per kernel and layer kind of a CIFAR ResNet (the trainer's default); the
  stride-1 3x3 layers run whichever of direct and F(2x2) the autotuner measures faster."""
  return [
      NativeCase("direct", (2, 8, 8, 3), (3, 3, 3, 16), default=True),    # the stem
      NativeCase("direct", (2, 8, 8, 16), (3, 3, 16, 32), stride=2, default=True),
      NativeCase("direct", (2, 6, 6, 16), (3, 3, 16, 16), default=True),
      NativeCase("winograd2", (2, 6, 6, 16), (3, 3, 16, 16), default=True),
      NativeCase("winograd4", (2, 8, 8, 16), (3, 3, 16, 16)),
      NativeCase("channel_sums", (4, 6, 6, 16), default=True),
  ]


def full_cases() -> list[NativeCase]:
  """Every kernel over each CIFAR ResNet stage's shape (32x32x16, 16x16x32, 8x8x64)."""
  cases = []
  for size, channels in ((32, 16), (16, 32), (8, 64)):
    x = (2, size, size, channels)
    w = (3, 3, channels, channels)
    cases += [NativeCase("direct", x, w, default=True),
              NativeCase("winograd2", x, w, default=True),
              NativeCase("winograd4", x, w), NativeCase("channel_sums", x, default=True)]
    cases.append(NativeCase("direct", x, (3, 3, channels, 2 * channels), stride=2,
                            default=True))
  return cases + [NativeCase("direct", (2, 32, 32, 3), (3, 3, 3, 16), default=True)]


def _pure(case: NativeCase):
  if case.w_shape is None:
    return lambda x, sb: ops.batch_norm(x, sb[0], sb[1])[0]
  return lambda x, w: ops.correlate(x, w, stride=case.stride, padding=1)


def _fast(case: NativeCase):
  if case.w_shape is None:
    hand = ops.for_grad("hand")
    return lambda x, sb: hand.batch_norm(x, sb[0], sb[1], sums=native.CHANNEL_SUMS)[0]
  spec = correlation.window_spec(case.x_shape, case.w_shape[:2], case.stride, 1, 1)
  tile = _TILE[case.path]
  return lambda x, w: native.correlate(x, w, spec, tile)


def _first_and_second(fn, args, g, u):
  y, vjp = jax.vjp(fn, *args)
  grads = vjp(g)

  def projected(*args):
    return sum(jnp.vdot(d, e) for d, e in zip(jax.vjp(fn, *args)[1](g), u))
  return (y, *grads), jax.grad(projected, argnums=(0, 1))(*args)


def _relative(got, want) -> float:
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  scale = float(np.max(np.abs(want)))
  return float(np.max(np.abs(got - want))) / scale if scale else float(np.max(np.abs(got)))


def check(case: NativeCase, rng: np.random.Generator) -> dict:
  """Runs one row with fresh inputs; returns it (errors, tolerance, passed)."""
  x = rng.normal(size=case.x_shape)
  if case.w_shape is None:
    x = x * rng.uniform(0.3, 3, case.x_shape[-1]) + rng.uniform(-3, 3, case.x_shape[-1])
    params = rng.normal(size=(2, case.x_shape[-1]))
  else:
    params = rng.normal(size=case.w_shape) / math.sqrt(np.prod(case.w_shape[:3]))
  y_shape = jax.eval_shape(_pure(case), jnp.zeros(case.x_shape, jnp.float32),
                           jnp.zeros(params.shape, jnp.float32)).shape
  g = rng.normal(size=y_shape)
  u = [rng.normal(size=case.x_shape), rng.normal(size=params.shape)]
  second_order = case.w_shape is not None  # the convolutions are closed under VJPs
  f32 = [jnp.asarray(a, jnp.float32) for a in (x, params, g, *u)]
  first, second = jax.jit(functools.partial(_first_and_second, _fast(case)))(
      f32[:2], f32[2], f32[3:])
  with jax.enable_x64(True):
    f64 = [jnp.asarray(a, jnp.float64) for a in (x, params, g, *u)]
    first_ref, second_ref = jax.jit(functools.partial(_first_and_second, _pure(case)))(
        f64[:2], f64[2], f64[3:])
    first_ref = [np.asarray(a) for a in first_ref]
    second_ref = [np.asarray(a) for a in second_ref]
  errors = [_relative(a, b) for a, b in zip(first, first_ref)]
  err_second = (max(_relative(a, b) for a, b in zip(second, second_ref)) if second_order
                else float("nan"))
  tolerance = case.tolerance()
  passed = max(errors) <= tolerance and (not second_order or err_second <= 3 * tolerance)
  return {"path": case.label, "op": "batch_norm" if case.w_shape is None else "correlate",
          "shapes": f"x{case.x_shape}" + ("" if case.w_shape is None else f" w{case.w_shape}"),
          "stride": case.stride, "sum_length": max(case.sum_lengths().values()),
          "err_forward": errors[0], "err_dx": errors[1], "err_dparams": errors[2],
          "err_second": err_second, "tolerance": tolerance, "passed": bool(passed)}


def run(grid: str = "quick", seed: int = 0, progress=None) -> tuple[list[dict], str | None]:
  """Checks the native kernels of grid ``grid``; returns ``(rows, why_none)``: no rows and the
  reason where the native kernels cannot run here."""
  reason = native.unavailable_reason()
  if reason is not None:
    return [], reason
  cases = quick_cases() if grid == "quick" else full_cases()
  rng = np.random.default_rng([seed, 1])  # a stream apart from the hand rows'
  rows = []
  for case in cases:
    rows.append(check(case, rng))
    if progress is not None:
      progress(rows[-1])
  return rows, None


COLUMNS = ("path", "op", "shapes", "stride", "sum_length", "err_forward", "err_dx",
           "err_dparams", "err_second", "tolerance", "passed")


def format_markdown(rows) -> str:
  """The rows as a Markdown table (errors in ``%.1e``; second order ``-`` where not run)."""
  lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
  for row in rows:
    cells = []
    for column in COLUMNS:
      value = row[column]
      if isinstance(value, bool):
        cells.append("yes" if value else "NO")
      elif isinstance(value, float):
        cells.append("-" if math.isnan(value) else f"{value:.1e}")
      else:
        cells.append(str(value))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def format_csv(rows) -> str:
  """The rows as CSV (full-precision errors)."""
  import csv  # pylint: disable=g-import-not-at-top
  import io  # pylint: disable=g-import-not-at-top
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
  writer.writeheader()
  for row in rows:
    writer.writerow({c: row[c] for c in COLUMNS})
  return buffer.getvalue()
