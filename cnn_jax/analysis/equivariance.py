"""Translation equivariance and invariance, measured.

A map ``f`` is equivariant to shifts when shifting its input shifts its output:
``f(T_k x) = T_m f(x)``. A stride-1 convolution with circular padding is exactly equivariant
(``m = k``): every output is the same dot product of the same pixels, just moved. Zero padding
breaks it only at the borders (what falls off one side is replaced by zeros, not by what comes in
on the other). A layer with total stride ``J`` can at best be equivariant to shifts that are
multiples of ``J`` (``m = k / J``); other shifts move the input by a fraction of an output pixel,
and the subsampling aliases (Zhang, "Making convolutional networks shift-invariant again", ICML
2019). Global pooling turns equivariance into invariance: the output has no positions left.

``equivariance_error`` measures ``||f(T_k x) - T_m f(x)|| / ||f(x)||`` with ``m`` the best
integer output shift next to ``k * out_size / in_size`` (so a stride-2 layer is not blamed for
the half-pixel shift nobody could represent, but its aliasing is). ``layerwise_equivariance``
does so after every layer of a stack; ``prediction_invariance`` measures what a classifier's
probability of the true class does under input shifts (MLP vs CNN).
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

SHIFT_MODES = ("circular", "zero")
OffsetLike = Union[int, Sequence[int]]


def _offsets(offset: OffsetLike, num_dims: int) -> tuple[int, ...]:
  if isinstance(offset, bool):
    raise ValueError(f"offset={offset!r} is not allowed: give an int or one int per spatial dim.")
  if isinstance(offset, (int, np.integer)):
    return (int(offset),) * num_dims
  values = tuple(offset)
  if len(values) != num_dims or not all(
      isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
    raise ValueError(f"offset={offset!r} is not allowed: give an int or {num_dims} ints, one "
                     "per spatial dim.")
  return tuple(int(v) for v in values)


def shift(x, offset: OffsetLike, mode: str = "circular"):
  """Moves the content of ``x`` by ``offset`` pixels along its spatial dims.

  Args:
    x: ``(N, *spatial, C)``.
    offset: an int (the same for every spatial dim: a diagonal shift) or one int per dim;
      positive moves content towards higher indices.
    mode: "circular" (what leaves one side comes back on the other, ``jnp.roll``) or "zero"
      (what leaves is lost; zeros come in).

  Returns:
    An array like ``x``.

  Raises:
    ValueError: for an unknown mode, a malformed offset, or ``x`` of rank < 3.
  """
  if mode not in SHIFT_MODES:
    raise ValueError(f"mode={mode!r} is not allowed: give one of {', '.join(SHIFT_MODES)}.")
  if x.ndim < 3:
    raise ValueError(f"x has shape {tuple(x.shape)}: expected (N, *spatial, C).")
  offsets = _offsets(offset, x.ndim - 2)
  axes = tuple(range(1, x.ndim - 1))
  if mode == "circular":
    return jnp.roll(x, offsets, axis=axes)
  for axis, k in zip(axes, offsets):
    n = x.shape[axis]
    if abs(k) >= n:
      x = jnp.zeros_like(x)
      continue
    kept = jax.lax.slice_in_dim(x, max(-k, 0), n - max(k, 0), axis=axis)
    widths = [(0, 0)] * x.ndim
    widths[axis] = (max(k, 0), max(-k, 0))
    x = jnp.pad(kept, widths)
  return x


def _relative(a, b, reference) -> float:
  denominator = float(jnp.linalg.norm(reference))
  if denominator == 0:
    raise ValueError("f(x) is all zeros: the relative error is undefined; use another input.")
  return float(jnp.linalg.norm(a - b)) / denominator


def equivariance_error(fn: Callable, x, offset: OffsetLike, mode: str = "circular", *,
                       fx=None) -> tuple[float, Optional[tuple[int, ...]]]:
  """``||fn(shift(x, k)) - shift(fn(x), m)|| / ||fn(x)||`` for the best integer output shift.

  Args:
    fn: ``x (N, *spatial, C) -> y (N, *out_spatial, C')`` or ``(N, C')`` (pooled: then the
      invariance error ``||fn(shift(x)) - fn(x)|| / ||fn(x)||`` is measured).
    x: ``(N, *spatial, C)``.
    offset: input shift (int or per dim), as in ``shift``.
    mode: "circular" or "zero", used for both the input and the output shift.
    fx: ``fn(x)``, if already computed.

  Returns:
    ``(error, output_offset)``; ``output_offset`` is the ``m`` used, or None for pooled output.
    For each dim, ``m`` is ``floor`` or ``ceil`` of ``k * out_size / in_size``, whichever
    gives the smaller error.
  """
  num_dims = x.ndim - 2
  offsets = _offsets(offset, num_dims)
  fx = fn(x) if fx is None else fx
  moved = fn(shift(x, offsets, mode))
  if fx.ndim == 2:
    return _relative(moved, fx, fx), None
  if fx.ndim != x.ndim:
    raise ValueError(f"fn(x) has shape {tuple(fx.shape)}: expected (N, *out_spatial, C') with "
                     f"{num_dims} spatial dims, or (N, C').")
  choices = []
  for k, n_in, n_out in zip(offsets, x.shape[1:-1], fx.shape[1:-1]):
    exact = k * n_out / n_in
    choices.append(sorted({math.floor(exact), math.ceil(exact)}))
  best = None
  for candidate in itertools.product(*choices):
    error = _relative(moved, shift(fx, candidate, mode), fx)
    if best is None or error < best[0]:
      best = (error, tuple(candidate))
  return best


def layerwise_equivariance(layers: Sequence[tuple[str, Callable]], x,
                           offsets: Sequence[OffsetLike] = (1, 2, 3),
                           mode: str = "circular") -> list[dict]:
  """The equivariance error after every layer of a stack, for several input shifts.

  Args:
    layers: ``(name, fn)`` pairs applied in order; ``fn`` maps the previous output to the next
      (e.g. ``functools.partial(ops.correlate, w=w, padding="CIRCULAR")``, an activation, a
      pool, a global pool).
    x: ``(N, *spatial, C)``.
    offsets: the input shifts tried (ints: diagonal shifts; or per-dim tuples).
    mode: "circular" or "zero".

  Returns:
    One dict per (layer, offset): ``layer`` (name), ``index`` (0-based), ``offset``,
    ``output_offset`` (None after global pooling) and ``error``.
  """
  if not layers:
    raise ValueError("layers is empty: give at least one (name, fn) pair.")
  rows = []
  for index in range(len(layers)):
    prefix = layers[:index + 1]

    def stack(v, prefix=prefix):
      for _, fn in prefix:
        v = fn(v)
      return v

    fx = stack(x)
    for offset in offsets:
      error, output_offset = equivariance_error(stack, x, offset, mode, fx=fx)
      rows.append(dict(layer=layers[index][0], index=index, offset=offset,
                       output_offset=output_offset, error=error))
  return rows


def prediction_invariance(apply_fn: Callable, x, labels,
                          offsets: Sequence[OffsetLike] = (0, 1, 2, 3),
                          mode: str = "circular") -> list[dict]:
  """How a classifier's prediction changes when its inputs are shifted.

  Args:
    apply_fn: ``x (N, *spatial, C) -> logits (N, num_classes)``.
    x: ``(N, *spatial, C)`` inputs.
    labels: ``(N,)`` int true classes.
    offsets: input shifts (ints: diagonal; or per-dim tuples); 0 is the reference.
    mode: "circular" or "zero".

  Returns:
    One dict per offset: ``offset``, ``p_true`` (mean probability of the true class),
    ``accuracy``, ``p_true_change`` (mean |p_true(shifted) - p_true(unshifted)| per example)
    and ``agreement`` (fraction of examples whose predicted class is unchanged).
  """
  labels = jnp.asarray(labels)
  if labels.shape != (x.shape[0],):
    raise ValueError(f"labels has shape {tuple(labels.shape)}: expected ({x.shape[0]},), one "
                     "class per example of x.")

  def predict(v):
    probs = jax.nn.softmax(apply_fn(v), axis=-1)
    return jnp.take_along_axis(probs, labels[:, None], axis=-1)[:, 0], jnp.argmax(probs, -1)

  p_ref, pred_ref = predict(x)
  rows = []
  for offset in offsets:
    p, pred = predict(shift(x, offset, mode))
    rows.append(dict(offset=offset, p_true=float(jnp.mean(p)),
                     accuracy=float(jnp.mean(pred == labels)),
                     p_true_change=float(jnp.mean(jnp.abs(p - p_ref))),
                     agreement=float(jnp.mean(pred == pred_ref))))
  return rows
