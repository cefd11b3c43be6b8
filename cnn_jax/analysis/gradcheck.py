"""Gradient checker: every hand-written VJP of ``cnn_jax.ops.hand`` against autodiff and FD.

For each configuration of a grid (op, shapes, stride, padding, dilation, groups, 1-D/2-D/3-D)
it draws fresh random float64 inputs and a random output cotangent ``g`` and measures
  * ``err_autodiff``: max relative error of the hand VJP (and forward) against ``jax.vjp`` of
    the ``cnn_jax.ops`` op, i.e. ``max|hand - autodiff| / max|autodiff|`` over every argument;
  * ``err_fd``: central finite differences along random directions ``v``:
    ``<g, f(a + h v) - f(a - h v)> / 2h`` against ``<VJP(g), v>``, relative to
    ``sum_i |VJP_i(g)| |v_i|`` (the Cauchy–Schwarz bound of the inner product);
  * ``err_second``: second order, the gradient of ``<VJP(a)(g), u>`` with respect to ``a`` and
    ``g`` (reverse over reverse through the hand backward) against the same through autodiff.
A row passes when all three are within ``TOLERANCES``. Max pooling gets tie-free inputs
(a permutation of well separated values) because ties are where hand and autodiff may route
the gradient differently and where finite differences are meaningless; Lp pooling gets inputs
away from 0, where ``|x|`` has a kink.

Usage: ``rows = gradcheck.run_grid("quick", seed=0)``; ``all(r["passed"] for r in rows)``.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax import ops
from cnn_jax.ops import hand

# float64 throughout. Autodiff and hand backward are the same sums in possibly another order:
# rounding only, ~1e-15 relative, so 1e-10 leaves room for long sums yet catches any wrong
# term. Central differences with step 1e-6 on O(1) inputs: truncation O(h^2) ~ 1e-12 for the
# smooth ops (0 for the linear ones) plus rounding ~ 1e-16 / 1e-6 = 1e-10; 1e-6 catches any
# wrong term, which errs by O(1).
TOLERANCES = {"autodiff": 1e-10, "fd": 1e-6, "second": 1e-10}
FD_STEP = 1e-6
FD_DIRECTIONS = 2

GRIDS = ("quick", "full")


@dataclasses.dataclass(frozen=True)
class Case:
  """One configuration of one op.

  Attributes:
    op: the op's name in ``cnn_jax.ops`` / ``cnn_jax.ops.hand``.
    x_shape: ``(N, *spatial, C)``.
    param_shape: shape of the second differentiable argument (kernel ``w``, pooling
      ``weights``, or batch norm's ``scale`` and ``bias`` stacked as ``(2, C)``), or None for
      ops of ``x`` only.
    window: pooling window (None for the convolutions and global pools).
    stride, padding, dilation, groups: as the op takes them (None where it takes none).
    p: the Lp pool's exponent (None otherwise).
  """
  op: str
  x_shape: tuple
  param_shape: tuple | None = None
  window: Any = None
  stride: Any = None
  padding: Any = None
  dilation: Any = None
  groups: int | None = None
  p: float | None = None

  def call(self, namespace, *args):
    """Applies this case's op from ``namespace`` (``ops`` or ``ops.hand``) to ``args``."""
    fn = getattr(namespace, self.op)
    if self.op in ("correlate", "convolve"):
      return fn(*args, stride=self.stride, padding=self.padding, dilation=self.dilation,
                groups=self.groups)
    if self.op == "locally_connected":
      return fn(*args, stride=self.stride, padding=self.padding, dilation=self.dilation)
    if self.op in ("max_pool", "avg_pool"):
      return fn(*args, self.window, self.stride, self.padding)
    if self.op == "lp_pool":
      return fn(*args, self.window, self.p, self.stride, self.padding)
    if self.op == "weighted_avg_pool":
      return fn(*args, self.stride, self.padding)
    if self.op == "batch_norm":
      # One output vector, so that the VJP carries a cotangent into every returned array:
      # y and the batch statistics (which feed the running averages).
      x, scale_bias = args
      y, mean, var = fn(x, scale_bias[0], scale_bias[1], epsilon=BATCH_NORM_EPSILON)
      return jnp.concatenate([y.ravel(), mean, var])
    return fn(*args)  # global pools

  def inputs(self, rng: np.random.Generator) -> list[np.ndarray]:
    """Fresh float64 inputs for this case (tie-free for max pools, away from 0 for Lp)."""
    size = int(np.prod(self.x_shape))
    if self.op in ("max_pool", "global_max_pool"):
      # Distinct values 1/size apart, shuffled: no ties, and an FD step of 1e-6 cannot
      # change any window's arg-max.
      x = (rng.permutation(size) + rng.uniform(0.0, 0.5, size)) / size - 0.5
    elif self.op == "lp_pool":
      x = rng.normal(size=size)
      x = np.sign(x) * (np.abs(x) + 0.05)
    else:
      x = rng.normal(size=size)
    args = [x.reshape(self.x_shape)]
    if self.param_shape is not None:
      if self.op == "weighted_avg_pool":  # positive window weights, away from a zero sum
        args.append(rng.uniform(0.5, 1.5, self.param_shape))
      else:
        args.append(rng.normal(size=self.param_shape))
    return args

  def describe(self) -> dict:
    """The table fields of this case."""
    return {
        "path": "ops.hand (XLA)",
        "op": self.op if self.p is None else f"{self.op}(p={self.p:g})",
        "shapes": "x" + _fmt(self.x_shape) + (
            "" if self.param_shape is None else
            " " + _PARAM_NAMES.get(self.op, "w") + _fmt(self.param_shape)),
        "dims": len(self.x_shape) - 2,
        "window": "" if self.window is None else _fmt(self.window),
        "stride": "" if self.stride is None else _fmt(self.stride),
        "padding": "" if self.padding is None else _fmt(self.padding),
        "dilation": "" if self.dilation is None else _fmt(self.dilation),
        "groups": "" if self.groups is None else self.groups,
    }


def _fmt(value) -> str:
  if isinstance(value, str):
    return value
  if isinstance(value, (tuple, list)):
    if len(value) == 1:
      return f"({_fmt(value[0])},)"
    return "(" + ",".join(_fmt(v) for v in value) + ")"
  return str(value)


# ---------------------------------------------------------------------------------------------
# The grids.
# ---------------------------------------------------------------------------------------------

# Per number of spatial dims: input spatial size (no size divisible by every stride) and a
# kernel (non-square where possible) that fits even when dilated by 2.
_SPATIAL = {1: (10,), 2: (7, 6), 3: (5, 5, 4)}
_PARAM_NAMES = {"weighted_avg_pool": "weights", "batch_norm": "scale,bias"}
# Small against the unit-variance inputs, so the op is far from dividing by ~0, and big enough
# that it still shows in the gradient (a wrong epsilon term would fail the check).
BATCH_NORM_EPSILON = 1e-3
_KERNEL = {1: (3,), 2: (3, 2), 3: (2, 3, 2)}
_POOL_WINDOW = {1: (3,), 2: (3, 2), 3: (2, 2, 2)}
_PADDINGS = ("VALID", "SAME", "FULL", "CIRCULAR", 1, "pairs")
_BATCH, _C_IN, _C_OUT = 2, 4, 4


def _pairs(num_dims):
  return tuple(((2, 0), (0, 1), (1, 2))[:num_dims])


def _conv_case(op, num_dims, stride, padding, dilation, groups, kernel=None) -> Case | None:
  kernel = kernel or _KERNEL[num_dims]
  spatial = _SPATIAL[num_dims]
  padding = _pairs(num_dims) if padding == "pairs" else padding
  x_shape = (_BATCH,) + spatial + (_C_IN,)
  try:
    out = ops.output_size(spatial, kernel, stride, padding, dilation)
  except ValueError:
    return None  # the dilated kernel does not fit: not a configuration of the op
  if op == "locally_connected":
    return Case(op, x_shape, out + kernel + (_C_IN, _C_OUT), stride=stride, padding=padding,
                dilation=dilation)
  return Case(op, x_shape, kernel + (_C_IN // groups, _C_OUT), stride=stride, padding=padding,
              dilation=dilation, groups=groups)


def _pool_case(op, num_dims, window, stride, padding, p=None) -> Case:
  if padding == "pairs":
    # Pads smaller than the window: a window of padding only would pool to -inf (max).
    padding = ((1, 0), (0, 1), (1, 1))[:num_dims]
  x_shape = (_BATCH,) + _SPATIAL[num_dims] + (3,)
  if op == "weighted_avg_pool":
    return Case(op, x_shape, tuple(window), stride=stride, padding=padding)
  return Case(op, x_shape, window=window, stride=stride, padding=padding, p=p)


def quick_grid() -> list[Case]:
  """28 configurations touching every op, dimension, padding mode and feature at least once.

  Sized for the test suite (about 40 s of CPU with ``jax_disable_most_optimizations``).
  """
  cases = [
      # correlate: every padding mode, strides that do not divide, dilation, groups, 1x1.
      _conv_case("correlate", 1, 2, "SAME", 1, 2),
      _conv_case("correlate", 1, 3, "FULL", 2, 1),
      _conv_case("correlate", 2, 2, "CIRCULAR", (1, 2), 1),
      _conv_case("correlate", 2, (2, 3), "pairs", 1, _C_IN),  # depthwise
      _conv_case("correlate", 2, 1, 1, 2, 2),
      _conv_case("correlate", 2, 2, "VALID", 1, 1, kernel=(1, 1)),
      _conv_case("correlate", 3, 2, "SAME", 1, 2),
      _conv_case("convolve", 1, 2, "CIRCULAR", 2, 1),
      _conv_case("convolve", 2, 3, "SAME", 1, 2),
      _conv_case("locally_connected", 1, 2, "SAME", 2, None),
      _conv_case("locally_connected", 2, (2, 1), "CIRCULAR", 1, None),
      _conv_case("locally_connected", 2, 3, "pairs", 1, None),
      # pools: overlapping windows (stride < window), stride not dividing, every padding.
      _pool_case("max_pool", 1, (3,), 2, "SAME"),
      _pool_case("max_pool", 2, (3, 2), 1, "CIRCULAR"),
      _pool_case("max_pool", 3, (2, 2, 2), 2, "FULL"),
      _pool_case("avg_pool", 1, (3,), 2, "CIRCULAR"),
      _pool_case("avg_pool", 2, (3, 2), (2, 1), 1),
      _pool_case("weighted_avg_pool", 2, (3, 2), 2, "SAME"),
      _pool_case("weighted_avg_pool", 3, (2, 2, 2), 1, "pairs"),
      _pool_case("lp_pool", 1, (3,), 2, "VALID", p=1.0),
      _pool_case("lp_pool", 2, (3, 2), 1, "CIRCULAR", p=3.5),
  ]
  for num_dims in (1, 2, 3):
    x_shape = (_BATCH,) + _SPATIAL[num_dims] + (3,)
    cases += [Case("global_avg_pool", x_shape), Case("global_max_pool", x_shape)]
  cases.append(_batch_norm_case(2))
  return [c for c in cases if c is not None]


def _batch_norm_case(num_dims) -> Case:
  return Case("batch_norm", (_BATCH,) + _SPATIAL[num_dims] + (3,), param_shape=(2, 3))


def full_grid() -> list[Case]:
  """The product grid, about 485 rows (tens of minutes on a 2-core CPU).

  correlate: dims × stride {1,2,3} × 6 paddings × (dilation, groups) in {(1,1), (2,2),
  (1,depthwise)}; convolve: dims × stride {1,2} × paddings at dilation 2, groups 2;
  locally_connected: dims × paddings × (stride, dilation) in {(1,1), (2,1), (3,2)}; 1x1
  kernels; every windowed pool over dims × stride {window, 1, 3} × paddings (Lp with p cycling
  through 1, 2, 3.5); the global pools.
  """
  cases = []
  for num_dims, stride, padding, (dilation, groups) in itertools.product(
      (1, 2, 3), (1, 2, 3), _PADDINGS, ((1, 1), (2, 2), (1, _C_IN))):
    cases.append(_conv_case("correlate", num_dims, stride, padding, dilation, groups))
  for num_dims, stride, padding in itertools.product((1, 2, 3), (1, 2), _PADDINGS):
    cases.append(_conv_case("convolve", num_dims, stride, padding, 2, 2))
  for num_dims, padding, (stride, dilation) in itertools.product(
      (1, 2, 3), _PADDINGS, ((1, 1), (2, 1), (3, 2))):
    cases.append(_conv_case("locally_connected", num_dims, stride, padding, dilation, None))
  for num_dims, stride, groups in itertools.product((1, 2), (1, 2), (1, _C_IN)):
    cases.append(_conv_case("correlate", num_dims, stride, "VALID", 1, groups,
                            kernel=(1,) * num_dims))
  for index, (num_dims, stride, padding) in enumerate(
      itertools.product((1, 2, 3), (None, 1, 3), _PADDINGS)):
    window = _POOL_WINDOW[num_dims]  # stride None: non-overlapping windows; 1: overlapping
    for op in ("max_pool", "avg_pool", "weighted_avg_pool"):
      cases.append(_pool_case(op, num_dims, window, stride, padding))
    cases.append(_pool_case("lp_pool", num_dims, window, stride, padding,
                            p=(1.0, 2.0, 3.5)[index % 3]))
  for num_dims in (1, 2, 3):
    x_shape = (_BATCH,) + _SPATIAL[num_dims] + (3,)
    cases += [Case("global_avg_pool", x_shape), Case("global_max_pool", x_shape),
              _batch_norm_case(num_dims)]
  return [c for c in cases if c is not None]


def grid(name: str) -> list[Case]:
  """The cases of grid ``"quick"`` or ``"full"``.

  Raises:
    ValueError: for any other name.
  """
  if name == "quick":
    return quick_grid()
  if name == "full":
    return full_grid()
  raise ValueError(f"grid={name!r} is not allowed: give one of {', '.join(GRIDS)}.")


# ---------------------------------------------------------------------------------------------
# The checks.
# ---------------------------------------------------------------------------------------------


def relative_error(actual: Sequence[Any], expected: Sequence[Any], *,
                   pooled: bool = False) -> float:
  """Max abs difference over max abs expected value (0 when they agree exactly).

  Args:
    actual, expected: matching sequences of arrays.
    pooled: divide by the largest expected value over ALL arrays instead of per array. Used
      for second order, where one block can be analytically zero (e.g. the Hessian of the
      piecewise-linear L1 pool) and autodiff returns rounding noise there (~1e-17): per-array
      scaling would call that noise a 100% error.
  """
  actual = [np.asarray(a) for a in actual]
  expected = [np.asarray(e) for e in expected]
  scales = [float(np.max(np.abs(e))) if e.size else 0.0 for e in expected]
  worst = 0.0
  for a, e, scale in zip(actual, expected, scales):
    diff = float(np.max(np.abs(a - e))) if a.size else 0.0
    if pooled:
      scale = max(scales)
    if diff > 0.0:
      worst = max(worst, diff / scale if scale > 0 else float("inf"))
  return worst


_NAMESPACES = {"hand": hand, "autodiff": ops}


def _vjp(case: Case, which: str, args, g):
  """Forward value and VJP at ``g`` of the case's op from ``ops.hand`` or ``ops``."""
  y, vjp = jax.vjp(functools.partial(case.call, _NAMESPACES[which]), *args)
  return y, vjp(g)


def _directional(case: Case, args, g, directions, grads):
  """Central differences of ``<g, f>`` along each direction, against ``<VJP(g), v>``."""
  fn = functools.partial(case.call, hand)
  numeric, analytic, bound = [], [], []
  for v in directions:
    plus = fn(*[a + FD_STEP * d for a, d in zip(args, v)])
    minus = fn(*[a - FD_STEP * d for a, d in zip(args, v)])
    numeric.append(jnp.vdot(g, plus - minus) / (2 * FD_STEP))
    analytic.append(sum(jnp.vdot(dg, d) for dg, d in zip(grads, v)))
    bound.append(sum(jnp.linalg.norm(dg) * jnp.linalg.norm(d) for dg, d in zip(grads, v)))
  return jnp.stack(numeric), jnp.stack(analytic), jnp.stack(bound)


def _second_order(case: Case, which: str, args, g, u):
  """Gradient of ``<VJP(args)(g), u>`` w.r.t. ``args`` and ``g`` (reverse over reverse)."""

  def projected(args, g):
    _, grads = _vjp(case, which, args, g)
    return sum(jnp.vdot(dg, d) for dg, d in zip(grads, u))

  return jax.grad(projected, argnums=(0, 1))(args, g)


def _all_checks(case: Case, args, g, directions, u):
  """Every quantity of one row, as one program (one compile per case)."""
  y_hand, grads_hand = _vjp(case, "hand", args, g)
  y_auto, grads_auto = _vjp(case, "autodiff", args, g)
  return ((y_hand, grads_hand), (y_auto, grads_auto),
          _directional(case, args, g, directions, grads_hand),
          _second_order(case, "hand", args, g, u), _second_order(case, "autodiff", args, g, u))


def check_case(case: Case, rng: np.random.Generator) -> dict:
  """Runs the three checks on one case with fresh inputs; returns its table row.

  Everything runs as one jit-compiled program per case: op-by-op dispatch of the nested VJPs
  is several times slower on a small CPU. If the joint program fails, the checks run one by
  one and the row's note says why.
  """
  notes = []
  with jax.enable_x64(True):
    args = [jnp.asarray(a, jnp.float64) for a in case.inputs(rng)]
    y_shape = jax.eval_shape(functools.partial(case.call, ops), *args).shape
    g = jnp.asarray(rng.normal(size=y_shape))
    directions = [[jnp.asarray(rng.normal(size=a.shape)) for a in args]
                  for _ in range(FD_DIRECTIONS)]
    u = [jnp.asarray(rng.normal(size=a.shape)) for a in args]
    second_hand = second_auto = None
    try:
      first_hand, first_auto, fd, second_hand, second_auto = jax.jit(
          _all_checks, static_argnums=0)(case, args, g, directions, u)
    except Exception as error:  # pylint: disable=broad-except
      notes.append(f"{type(error).__name__}: {str(error).splitlines()[0][:120]}")
      # Step by step, so that a failure of the second order still reports the first.
      first_hand = jax.jit(_vjp, static_argnums=(0, 1))(case, "hand", args, g)
      first_auto = _vjp(case, "autodiff", args, g)
      fd = jax.jit(_directional, static_argnums=0)(case, args, g, directions, first_hand[1])
      try:
        second_hand = jax.jit(_second_order, static_argnums=(0, 1))(case, "hand", args, g, u)
        second_auto = _second_order(case, "autodiff", args, g, u)
      except Exception as error2:  # pylint: disable=broad-except
        # Reported, not raised: the row fails and says why (e.g. no grad-of-grad).
        notes.append(f"second order: {type(error2).__name__}: "
                     f"{str(error2).splitlines()[0][:120]}")

    (y_hand, grads_hand), (y_auto, grads_auto) = first_hand, first_auto
    err_autodiff = relative_error([y_hand, *grads_hand], [y_auto, *grads_auto])
    numeric, analytic, bound = (np.asarray(a) for a in fd)
    # Relative to the Cauchy-Schwarz bound |VJP|·|v|, so a near-zero inner product is fine.
    err_fd = float(np.max(np.abs(numeric - analytic) / np.where(bound > 0, bound, 1.0)))
    if second_hand is None:
      err_second = float("nan")
    else:
      err_second = relative_error(jax.tree.leaves(second_hand), jax.tree.leaves(second_auto),
                                  pooled=True)

  second_ok = bool(err_second <= TOLERANCES["second"])
  row = case.describe()
  row.update(
      err_autodiff=err_autodiff,
      err_fd=err_fd,
      err_second=err_second,
      second_order_ok=second_ok,
      passed=bool(err_autodiff <= TOLERANCES["autodiff"] and err_fd <= TOLERANCES["fd"]
                  and second_ok),
      note="; ".join(notes),
  )
  return row


def run_grid(name: str = "quick", seed: int = 0, *, cases: Sequence[Case] | None = None,
             progress=None) -> list[dict]:
  """Checks every case of grid ``name`` (or the given ``cases``) with fresh inputs.

  Args:
    name: ``"quick"`` (28 rows, about a minute) or ``"full"`` (about 485 rows, tens of
      minutes on a 2-core CPU).
    seed: seeds the NumPy generator that draws every input, cotangent and FD direction.
    cases: overrides the grid.
    progress: optional callable given each row as it is done (e.g. to print it).

  Returns:
    One dict per case: op, shapes, dims, window, stride, padding, dilation, groups,
    err_autodiff, err_fd, err_second, second_order_ok, passed, note (why a row failed
    to run its second-order check, else "").

  Raises:
    ValueError: for an unknown grid name.
  """
  cases = grid(name) if cases is None else cases
  rng = np.random.default_rng(seed)
  rows = []
  for case in cases:
    row = check_case(case, rng)
    rows.append(row)
    # Every case compiles new programs; kept forever, a full grid's hundreds of executables
    # made LLVM fail with "Cannot allocate memory" (at row 473). Drop them now and then.
    if len(rows) % 25 == 0:
      jax.clear_caches()
    if progress is not None:
      progress(row)
  return rows


COLUMNS = ("path", "op", "shapes", "dims", "window", "stride", "padding", "dilation", "groups",
           "err_autodiff", "err_fd", "err_second", "second_order_ok", "passed")


def format_markdown(rows: Sequence[dict]) -> str:
  """The rows as a Markdown table (errors in ``%.1e``)."""
  lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
  for row in rows:
    lines.append("| " + " | ".join(_cell(row[c]) for c in COLUMNS) + " |")
  return "\n".join(lines) + "\n"


def format_csv(rows: Sequence[dict]) -> str:
  """The rows as CSV (full-precision errors, plus the ``note`` column)."""
  import csv  # pylint: disable=g-import-not-at-top
  import io  # pylint: disable=g-import-not-at-top
  buffer = io.StringIO()
  fields = COLUMNS + ("note",)
  writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
  writer.writeheader()
  for row in rows:
    writer.writerow({c: row.get(c, "") for c in fields})
  return buffer.getvalue()


def _cell(value) -> str:
  if isinstance(value, float):
    return f"{value:.1e}"
  if isinstance(value, bool):
    return "yes" if value else "NO"
  return str(value)
