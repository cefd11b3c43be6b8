"""Receptive fields: analytic (closed-form recurrences), measured (backprop and forward), effective.

Three views of "which input pixels can an output unit see":

* **Analytic** (Araujo, Norris & Sim, "Computing receptive fields of convolutional neural
  networks", Distill 2019). For a chain of sliding-window layers with kernel ``k``, stride ``s``,
  left padding ``p`` and dilation ``d`` (extent ``e = d(k-1)+1``), per spatial dimension::

      size_l  = size_{l-1} + (e_l - 1) * jump_{l-1}          size_0 = 1
      jump_l  = jump_{l-1} * s_l                             jump_0 = 1
      left_l  = left_{l-1} - p_l * jump_{l-1}                left_0 = 0
      start_l = left_l + (size_l - 1) / 2

  ``jump`` is the distance, in input pixels, between the fields of neighbouring outputs (the
  product of strides), ``left`` the input coordinate of the first output's left-most pixel
  (negative where padding is seen) and ``start`` that field's centre. Output ``o`` sees input
  pixels ``left + o * jump + t`` for ``t`` in the field's *taps*: the Minkowski sum over layers of
  ``{t * d_l * jump_{l-1} : 0 <= t < k_l}``. The taps fill ``0 .. size-1`` unless dilation or a
  stride larger than the next kernel leaves holes (gridding); ``size`` is the extent either way.
* **Measured**: the non-zero support of the gradient of one output unit with respect to the
  input (``gradient_support``), and the set of outputs that move when one input pixel is
  perturbed (``forward_influence``). With no dead paths (positive weights and inputs, ReLU, no
  max pooling in the backward check) they equal the analytic taps exactly; the tests hold them
  so.
* **Effective** (Luo, Li, Urtasun & Zemel, "Understanding the effective receptive field in deep
  convolutional neural networks", NeurIPS 2016): the mean |gradient| map over random weights and
  inputs. Its mass concentrates in a Gaussian-like blob whose width grows like sqrt(depth) while
  the analytic size grows linearly (``erf_growth``).

Residual nets: a block sums several paths, and its field is the union of theirs. ``Branches``
states that explicitly (e.g. ``Branches(([Window(3, 2, 1), Window(3, 1, 1)], []))`` for a basic
block with an identity shortcut); the union's extent is exact, and the record says whether the
paths' centres were aligned. A traced model (a list of ``LayerRecord`` s) carries no block
structure, so only its main path is used: in every block of the zoo the shortcut is the
identity or a 1x1 convolution (kernel 1, no padding, the block's stride), which samples the
block input at ``o * stride``, a pixel that the main path's first window (``o * stride - lo ..
o * stride - lo + e - 1`` with ``lo <= e - 1``) already covers; hence the main path's field
is the block's. Any shortcut layer that breaks that assumption (kernel > 1 or padding) raises.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax.ops import correlation, shapes

# Layer kinds of a traced model (``counting.LayerRecord.kind``) that slide a window over space.
SPATIAL_KINDS = ("conv", "local", "pool")


@dataclasses.dataclass(frozen=True)
class Window:
  """One sliding-window layer (conv, pool, locally connected: only the window matters).

  Attributes:
    kernel: int or per-dim tuple, >= 1.
    stride: int or per-dim tuple, >= 1.
    padding: "VALID", "SAME", "FULL", "CIRCULAR", an int, or per-dim ``(lo, hi)`` pairs, as
      in ``cnn_jax.ops``. "SAME"/"CIRCULAR" with stride > 1 need the input size.
    dilation: int or per-dim tuple, >= 1.
    name: shown in the records.
  """
  kernel: Any
  stride: Any = 1
  padding: Any = 0
  dilation: Any = 1
  name: str = ""


@dataclasses.dataclass(frozen=True)
class Branches:
  """Parallel paths whose outputs are summed (a residual or multi-branch block).

  Attributes:
    paths: a tuple of paths; each path is a sequence of layers (``Window``, tuples or nested
      ``Branches``); an empty path is the identity shortcut.
    name: shown in the records.
  """
  paths: tuple
  name: str = ""


@dataclasses.dataclass(frozen=True)
class FieldRecord:
  """The receptive field of a layer's outputs, in input pixels, one entry per spatial dim.

  Attributes:
    name: the layer's name (or ``"layer_<i>"``).
    size: extent of one output's field (pixels, padding included).
    jump: input-pixel distance between the fields of neighbouring outputs.
    start: centre of the first output's field (may be negative or fractional).
    left: left-most input coordinate of the first output's field.
    output_size: the layer's output spatial size, if the input size was given, else None.
    aligned: False if a ``Branches`` block summed paths whose field centres differ (the
      ``size`` is then the extent of the union, and ``start`` its centre).
    taps: per dim, the sorted offsets from ``left`` that an interior output's field reaches
      (near the borders, padded zeros of intermediate layers cut some paths: ``field_mask``
      follows the layers one by one to get those exactly).
    input_size: the input's spatial size, if given.
    program: the layers up to here, resolved (what ``field_mask`` walks back through).
  """
  name: str
  size: tuple[int, ...]
  jump: tuple[int, ...]
  start: tuple[float, ...]
  left: tuple[int, ...]
  output_size: Optional[tuple[int, ...]]
  aligned: bool = True
  taps: tuple[tuple[int, ...], ...] = dataclasses.field(default=(), repr=False, compare=False)
  input_size: Optional[tuple[int, ...]] = None
  program: tuple = dataclasses.field(default=(), repr=False, compare=False)

  def bounds(self, index: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """Inclusive ``(first, last)`` input coordinates of output ``index``'s field, per dim."""
    return tuple((l + o * j, l + o * j + s - 1)
                 for l, o, j, s in zip(self.left, index, self.jump, self.size))


LayerLike = Union[Window, Branches, tuple, Any]


@dataclasses.dataclass(frozen=True)
class _DimState:
  size: int
  jump: int
  left: int
  taps: frozenset
  n: Optional[int]  # current spatial size, if known


class _Resolved(NamedTuple):
  """One window layer in one spatial dim, padding resolved (for walking the field exactly)."""
  kernel: int
  stride: int
  lo: int
  hi: int
  dilation: int
  n_in: Optional[int]
  n_out: Optional[int]
  circular: bool


def _is_flax_module(obj) -> bool:
  try:
    import flax.linen as nn  # pylint: disable=g-import-not-at-top
  except ImportError:  # pragma: no cover - flax is a pinned dependency
    return False
  return isinstance(obj, nn.Module)


def _as_window(layer, position: int) -> Union[Window, Branches, None]:
  """Normalises one layer description; ``None`` for traced layers that are not spatial."""
  if isinstance(layer, (Window, Branches)):
    return layer
  if hasattr(layer, "kind"):  # a counting.LayerRecord, or anything shaped like one
    if layer.kind not in SPATIAL_KINDS:
      return None
    name = getattr(layer, "name", "") or f"layer_{position}"
    if layer.kernel is None or layer.stride is None:
      raise ValueError(f"layer {name!r} of kind {layer.kind!r} has kernel={layer.kernel!r}, "
                       f"stride={layer.stride!r}: a {layer.kind} layer needs both.")
    padding = layer.padding if layer.padding is not None else 0
    dilation = layer.dilation if layer.dilation is not None else 1
    if getattr(layer, "on_shortcut", False):
      if isinstance(padding, str):
        padded = padding.upper() != "VALID"
      elif isinstance(padding, int):
        padded = padding != 0
      else:
        padded = any(v for pair in padding for v in pair)
      if any(k != 1 for k in layer.kernel) or padded:
        raise ValueError(
            f"shortcut layer {name!r} has kernel={layer.kernel!r}, padding={padding!r}: a "
            "traced model's field is read off its main path, which covers 1x1 unpadded "
            "shortcuts only; describe this block with receptive_field.Branches instead.")
      return None
    return Window(tuple(layer.kernel), tuple(layer.stride), padding, dilation, name)
  if isinstance(layer, (tuple, list)) and 1 <= len(layer) <= 4:
    return Window(*layer, name=f"layer_{position}")
  raise ValueError(f"layer {position} is {layer!r}: give a (kernel, stride, padding, dilation) "
                   "tuple, a Window, a Branches, or a traced LayerRecord.")


def _infer_num_dims(layers) -> Optional[int]:
  for layer in layers:
    if isinstance(layer, Branches):
      for path in layer.paths:
        found = _infer_num_dims([_as_window(l, i) for i, l in enumerate(path)])
        if found:
          return found
      continue
    if layer is None:
      continue
    for value in (layer.kernel, layer.stride, layer.dilation):
      if not isinstance(value, int):
        return len(tuple(value))
    if not isinstance(layer.padding, (int, str)):
      return len(tuple(layer.padding))
  return None


def _step_window(states: list[_DimState], window: Window):
  num_dims = len(states)
  name = window.name or "layer"
  kernel = shapes.as_tuple(window.kernel, num_dims, f"{name}.kernel")
  stride = shapes.as_tuple(window.stride, num_dims, f"{name}.stride")
  dilation = shapes.as_tuple(window.dilation, num_dims, f"{name}.dilation")
  sizes = [st.n for st in states]
  padding = window.padding
  if isinstance(padding, str) and padding.upper() in ("SAME", "CIRCULAR"):
    for dim, (n, s) in enumerate(zip(sizes, stride)):
      if n is None and s > 1:
        raise ValueError(
            f"{name}.padding={padding!r} with stride {s} in spatial dim {dim}: its pads depend "
            "on the input size; give input_shape=(N, *spatial, C).")
  # For stride 1 the SAME pads do not depend on the size; any size >= the extent will do.
  dummy = [n if n is not None else shapes.effective_kernel(k, d)
           for n, k, d in zip(sizes, kernel, dilation)]
  if isinstance(padding, (tuple, list)) and num_dims == 1 and len(padding) == 2 and all(
      isinstance(v, int) for v in padding):
    padding = (tuple(padding),)
  pads = shapes.resolve_padding(padding, dummy, kernel, stride, dilation)
  circular = shapes.padding_mode(padding) == "CIRCULAR"
  out, op = [], []
  for dim, (st, k, s, d, (lo, hi)) in enumerate(zip(states, kernel, stride, dilation, pads)):
    extent = shapes.effective_kernel(k, d)
    n_out = None
    if st.n is not None:
      if st.n + lo + hi < extent:
        raise ValueError(
            f"{name}: kernel extent {extent} is larger than the padded input "
            f"({st.n} + {lo} + {hi}) in spatial dim {dim}; input_shape is too small.")
      n_out = (st.n + lo + hi - extent) // s + 1
    taps = frozenset(a + t * d * st.jump for a in st.taps for t in range(k))
    out.append(_DimState(size=st.size + (extent - 1) * st.jump, jump=st.jump * s,
                         left=st.left - lo * st.jump, taps=taps, n=n_out))
    op.append(_Resolved(k, s, lo, hi, d, st.n, n_out, circular))
  return out, ("window", tuple(op))


def _step_branches(states, block: Branches, num_dims: int):
  name = block.name or "branches"
  if not block.paths:
    raise ValueError(f"{name}.paths is empty: give at least one path (an empty path is the "
                     "identity).")
  ends, programs, inner_aligned = [], [], True
  for path in block.paths:
    current, program = states, []
    for i, layer in enumerate(path):
      window = _as_window(layer, i)
      if window is not None:
        current, path_aligned, op = _step(current, window, num_dims)
        inner_aligned = inner_aligned and path_aligned
        program.append(op)
    ends.append(current)
    programs.append(tuple(program))
  merged, aligned = [], inner_aligned
  for dim in range(num_dims):
    dims = [end[dim] for end in ends]
    jumps = {d.jump for d in dims}
    if len(jumps) > 1:
      raise ValueError(f"{name}: its paths have jumps {sorted(jumps)} in spatial dim {dim}: "
                       "paths with different total strides cannot be summed.")
    sizes = {d.n for d in dims}
    if len(sizes) > 1:
      raise ValueError(f"{name}: its paths give output sizes {sorted(sizes)} in spatial dim "
                       f"{dim}: summed paths must have the same output size.")
    centres = {2 * d.left + d.size - 1 for d in dims}
    aligned = aligned and len(centres) == 1
    left = min(d.left for d in dims)
    right = max(d.left + d.size - 1 for d in dims)
    taps = frozenset(d.left - left + a for d in dims for a in d.taps)
    merged.append(_DimState(right - left + 1, dims[0].jump, left, taps, dims[0].n))
  return merged, aligned, ("branches", tuple(programs))


def _step(states, layer, num_dims):
  """One layer or block: the new per-dim states, whether paths were aligned, the resolved op."""
  if isinstance(layer, Branches):
    return _step_branches(states, layer, num_dims)
  new_states, op = _step_window(states, layer)
  return new_states, True, op


def receptive_field(layers_or_model, input_shape: Optional[Sequence[int]] = None, *,
                    num_dims: Optional[int] = None) -> list[FieldRecord]:
  """The analytic receptive field after every layer (Araujo et al., Distill 2019).

  Args:
    layers_or_model: a sequence of layers, each a ``(kernel, stride, padding, dilation)``
      tuple (trailing entries may be left out: stride 1, padding 0, dilation 1), a ``Window``,
      a ``Branches`` block, or a traced layer record (anything with the attributes of
      ``counting.LayerRecord``: ``kind``, ``name``, ``kernel``, ``stride``, ``padding``,
      ``dilation``, ``on_shortcut``; only main-path conv/local/pool layers are used, see the
      module docstring); or a Flax module, traced with ``counting.trace_layers``.
    input_shape: shape of the input ``x``, ``(N, *spatial, C)``. Needed for a Flax module and
      for "SAME" padding with stride > 1; with it every record also has ``output_size``.
    num_dims: number of spatial dims, when neither ``input_shape`` nor a tuple-valued layer
      argument says it; else 2 (images).

  Returns:
    One ``FieldRecord`` per layer (per ``Branches`` block, per used traced layer), in order;
    the last one is the whole network's field.

  Raises:
    ValueError: for malformed layers, an unusable shortcut, paths that cannot be summed, or a
      kernel larger than its padded input.
  """
  if _is_flax_module(layers_or_model):
    if input_shape is None:
      raise ValueError("input_shape=None is not allowed for a Flax model: give the shape of "
                       "x, (N, *spatial, C), to trace it.")
    from cnn_jax.analysis import counting  # pylint: disable=g-import-not-at-top
    layers_or_model = counting.trace_layers(layers_or_model, tuple(input_shape))
  try:
    raw = list(layers_or_model)
  except TypeError:
    raise ValueError(f"layers_or_model={layers_or_model!r} is not allowed: give a sequence of "
                     "layers or a Flax module.") from None
  layers = [_as_window(layer, i) for i, layer in enumerate(raw)]
  kept = [(i, layer) for i, layer in enumerate(layers) if layer is not None]
  if not kept:
    raise ValueError("layers_or_model has no spatial layers (conv, local, pool): there is no "
                     "receptive field to compute.")
  if input_shape is not None:
    input_shape = tuple(input_shape)
    if len(input_shape) not in (3, 4, 5):
      raise ValueError(f"input_shape={input_shape!r} is not allowed: give the shape of x, "
                       "(N, *spatial, C), with 1, 2 or 3 spatial dims.")
    dims_from_shape = len(input_shape) - 2
    if num_dims is not None and num_dims != dims_from_shape:
      raise ValueError(f"num_dims={num_dims} disagrees with input_shape={input_shape!r}.")
    num_dims = dims_from_shape
  if num_dims is None:
    num_dims = _infer_num_dims([layer for _, layer in kept]) or 2
  spatial = input_shape[1:-1] if input_shape is not None else (None,) * num_dims
  states = [_DimState(1, 1, 0, frozenset([0]), n) for n in spatial]
  records, program = [], []
  for i, layer in kept:
    states, aligned, op = _step(states, layer, num_dims)
    program.append(op)
    if aligned and records and not records[-1].aligned:
      aligned = False  # a misaligned union stays misaligned for every later layer
    out = tuple(st.n for st in states)
    records.append(FieldRecord(
        name=layer.name or f"layer_{i}",
        size=tuple(st.size for st in states),
        jump=tuple(st.jump for st in states),
        start=tuple(st.left + (st.size - 1) / 2 for st in states),
        left=tuple(st.left for st in states),
        output_size=None if None in out else out,
        aligned=aligned,
        taps=tuple(tuple(sorted(st.taps)) for st in states),
        input_size=None if None in spatial else tuple(spatial),
        program=tuple(program)))
  return records


def _walk_back(program, positions: np.ndarray) -> np.ndarray:
  """Input positions ``(M, D)`` that output positions ``(M0, D)`` of ``program`` see."""
  for kind, op in reversed(program):
    if kind == "branches":
      parts = [_walk_back(path, positions) for path in op]
      positions = np.unique(np.concatenate(parts), axis=0)
      continue
    # Output q reads padded position q*s + t*d, i.e. input position q*s + t*d - lo; positions
    # outside the input are padding (dropped: constants carry no dependence) or wrap around.
    for dim, r in enumerate(op):
      offsets = np.arange(r.kernel) * r.dilation - r.lo
      coords = positions[:, dim:dim + 1] * r.stride + offsets[None, :]  # (M, k)
      positions = np.repeat(positions, r.kernel, axis=0)
      positions[:, dim] = coords.ravel()
      if r.circular:
        positions[:, dim] %= r.n_in
      else:
        positions = positions[(positions[:, dim] >= 0) & (positions[:, dim] < r.n_in)]
    positions = np.unique(positions, axis=0)
  return positions


def _walk_forward(program, positions: np.ndarray) -> np.ndarray:
  """Output positions of ``program`` that see any of the input positions ``(M, D)``."""
  for kind, op in program:
    if kind == "branches":
      parts = [_walk_forward(path, positions) for path in op]
      positions = np.unique(np.concatenate(parts), axis=0)
      continue
    for dim, r in enumerate(op):
      padded = positions[:, dim:dim + 1] + r.lo  # (M, 1) coordinates in the padded input
      if r.circular:  # a wrapped copy of the pixel also sits in the padding
        padded = np.concatenate([padded, padded - r.n_in, padded + r.n_in], axis=1)
      # q*s + t*d == padded for some tap t: solve for q, keep integer solutions in range.
      numer = padded[:, :, None] - (np.arange(r.kernel) * r.dilation)[None, None, :]
      ok = (numer % r.stride == 0) & (numer >= 0) & (numer // r.stride < r.n_out)
      ok &= (padded[:, :, None] >= 0) & (padded[:, :, None] < r.n_in + r.lo + r.hi)
      rows, _, _ = np.nonzero(ok)
      positions = positions[rows].copy()
      positions[:, dim] = (numer[ok] // r.stride)
    positions = np.unique(positions, axis=0)
  return positions


def _check_sized(record: FieldRecord, what: str):
  if record.input_size is None or record.output_size is None:
    raise ValueError(f"{what} needs the record's input and output sizes: compute the field "
                     "with receptive_field(..., input_shape=(N, *spatial, C)).")


def _walk_to_mask(walk, program, index, name, value, grid_from, grid_to, where):
  """Checks ``index`` lies in ``grid_from``, walks it through ``program``, marks ``grid_to``."""
  if len(index) != len(grid_from) or not all(0 <= i < n for i, n in zip(index, grid_from)):
    raise ValueError(f"{name}={value!r} is not allowed: give one index per dim inside the "
                     f"{where} {grid_from}.")
  reached = walk(program, np.asarray([index], dtype=np.int64))
  mask = np.zeros(grid_to, dtype=bool)
  mask[tuple(reached.T)] = True
  return mask


def field_mask(record: FieldRecord, output_index: Optional[Sequence[int]] = None) -> np.ndarray:
  """The input pixels that output ``output_index`` depends on, by the layers' geometry.

  Walks back through the layers one at a time, so it is exact at the borders too, where the
  padded zeros of intermediate layers cut paths that the interior ``taps`` assume.

  Args:
    record: a ``FieldRecord`` computed with ``input_shape``.
    output_index: the output position (default: the centre output, ``(n - 1) // 2``).

  Returns:
    Boolean ``(*record.input_size,)``.

  Raises:
    ValueError: if the record has no sizes or the index is outside the output.
  """
  _check_sized(record, "field_mask")
  index = (tuple((n - 1) // 2 for n in record.output_size) if output_index is None
           else tuple(output_index))
  return _walk_to_mask(_walk_back, record.program, index, "output_index", output_index,
                       record.output_size, record.input_size, "output")


def influence_mask(record: FieldRecord, input_index: Sequence[int]) -> np.ndarray:
  """The outputs whose field contains input pixel ``input_index`` (forward direction).

  Returns:
    Boolean ``(*record.output_size,)``.

  Raises:
    ValueError: if the record has no sizes or the index is outside the input.
  """
  _check_sized(record, "influence_mask")
  return _walk_to_mask(_walk_forward, record.program, tuple(input_index), "input_index",
                       input_index, record.input_size, record.output_size, "input")


# ---------------------------------------------------------------------------------------------
# Measured fields.


def _select_output(y, output_index, channel):
  index = tuple(output_index) if output_index is not None else tuple(
      (n - 1) // 2 for n in y.shape[1:-1])
  unit = y[(0,) + index]  # (C_out,)
  return jnp.sum(unit) if channel is None else unit[channel]


def gradient_map(apply_fn: Callable, x, output_index: Optional[Sequence[int]] = None, *,
                 channel: Optional[int] = None) -> jax.Array:
  """|d y[0, output_index, channel] / d x| summed over input channels.

  Args:
    apply_fn: ``x (1, *spatial, C) -> y (1, *out_spatial, C_out)``.
    x: ``(1, *spatial, C)``, the point where the gradient is taken.
    output_index: output position (default: the centre of the output grid).
    channel: output channel (default: the sum over channels, as Luo et al. do).

  Returns:
    ``(*spatial,)`` non-negative gradient magnitudes.
  """
  if x.ndim < 3 or x.shape[0] != 1:
    raise ValueError(f"x has shape {tuple(x.shape)}: give one example, (1, *spatial, C).")
  grad = jax.grad(lambda v: _select_output(apply_fn(v), output_index, channel))(x)
  return jnp.sum(jnp.abs(grad[0]), axis=-1)


def gradient_support(apply_fn: Callable, x, output_index: Optional[Sequence[int]] = None, *,
                     channel: Optional[int] = None) -> np.ndarray:
  """The measured field by backprop: the input pixels with a non-zero gradient.

  Exactly the analytic taps when no path is dead at ``x`` (e.g. positive weights and inputs
  through ReLU); max pooling routes the gradient to one pixel per window, so it shrinks the
  support (use ``forward_influence`` for max-pooled nets).

  Returns:
    Boolean ``(*spatial,)``.
  """
  return np.asarray(gradient_map(apply_fn, x, output_index, channel=channel) > 0)


def forward_influence(apply_fn: Callable, x, input_index: Sequence[int], *,
                      delta: float = 1.0) -> np.ndarray:
  """The outputs that change when input pixel ``input_index`` (every channel) moves by ``delta``.

  Use a ``delta`` large against ``x`` for max-pooled nets, so the perturbed pixel becomes the
  window's maximum wherever it is seen.

  Args:
    apply_fn: ``x (1, *spatial, C) -> y (1, *out_spatial, C_out)``.
    x: ``(1, *spatial, C)``.
    input_index: the perturbed spatial position.
    delta: added to that pixel.

  Returns:
    Boolean ``(*out_spatial,)``: True where any channel of the output changed.
  """
  if x.ndim < 3 or x.shape[0] != 1:
    raise ValueError(f"x has shape {tuple(x.shape)}: give one example, (1, *spatial, C).")
  moved = x.at[(0,) + tuple(input_index)].add(delta)
  return np.asarray(jnp.any(apply_fn(moved)[0] != apply_fn(x)[0], axis=-1))


# ---------------------------------------------------------------------------------------------
# Effective receptive field (Luo et al., 2016).


def effective_receptive_field(apply_fn: Callable, init_fn: Callable, input_shape: Sequence[int],
                              *, key: jax.Array, num_samples: int = 16,
                              output_index: Optional[Sequence[int]] = None) -> np.ndarray:
  """Mean |gradient| of the centre output over random weights and random normal inputs.

  Args:
    apply_fn: ``(params, x (1, *spatial, C)) -> y (1, *out_spatial, C_out)``.
    init_fn: ``key -> params``: one random draw of the weights.
    input_shape: ``(1, *spatial, C)``.
    key: a ``jax.random`` key.
    num_samples: number of (weights, input) draws averaged; vmapped, so compiled once.
    output_index: output position (default: the centre).

  Returns:
    ``(*spatial,)`` float map, normalised to sum to 1.
  """
  if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
    raise ValueError(f"num_samples={num_samples!r} is not allowed: give an int >= 1.")
  input_shape = tuple(input_shape)
  if len(input_shape) < 3 or input_shape[0] != 1:
    raise ValueError(f"input_shape={input_shape!r} is not allowed: give (1, *spatial, C).")

  def one(sample_key):
    k_w, k_x = jax.random.split(sample_key)
    params = init_fn(k_w)
    x = jax.random.normal(k_x, input_shape, jnp.float32)
    return gradient_map(lambda v: apply_fn(params, v), x, output_index)

  maps = jax.jit(jax.vmap(one))(jax.random.split(key, num_samples))
  mean = np.asarray(jnp.mean(maps, axis=0), dtype=np.float64)
  return mean / mean.sum()


def mass_radius(field_map: np.ndarray, fraction: float = 0.95,
                centre: Optional[Sequence[int]] = None) -> int:
  """Smallest half-width ``r`` of the square (cube) around ``centre`` holding ``fraction`` of
  the map's mass; the effective field's size is then ``2r + 1``, comparable with the analytic
  (square) size.

  Args:
    field_map: ``(*spatial,)`` non-negative weights.
    fraction: in (0, 1].
    centre: default: the map's centre pixel ``(n - 1) // 2``.

  Raises:
    ValueError: for a fraction outside (0, 1] or a map with no mass.
  """
  if not 0 < fraction <= 1:
    raise ValueError(f"fraction={fraction!r} is not allowed: give a number in (0, 1].")
  field_map = np.asarray(field_map, dtype=np.float64)
  total = field_map.sum()
  if not total > 0:
    raise ValueError("field_map has no mass (all zeros): nothing to measure.")
  centre = tuple((n - 1) // 2 for n in field_map.shape) if centre is None else tuple(centre)
  grids = np.meshgrid(*[np.abs(np.arange(n) - c) for n, c in zip(field_map.shape, centre)],
                      indexing="ij")
  distance = np.max(np.stack(grids), axis=0)  # Chebyshev distance: square boxes
  # Mass inside radius r, for every r, by one bincount; 1e-12 absorbs float summation error.
  by_radius = np.cumsum(np.bincount(distance.ravel(), weights=field_map.ravel()))
  return int(np.argmax(by_radius >= fraction * total * (1 - 1e-12)))


def mass_std(field_map: np.ndarray, centre: Optional[Sequence[int]] = None) -> float:
  """Root-mean-square distance from ``centre`` along one axis, averaged over axes: the width
  (Gaussian sigma) of the map's mass, steadier than a tail quantile on a few samples.

  Args:
    field_map: ``(*spatial,)`` non-negative weights.
    centre: default: the map's centre pixel ``(n - 1) // 2``.
  """
  field_map = np.asarray(field_map, dtype=np.float64)
  total = field_map.sum()
  if not total > 0:
    raise ValueError("field_map has no mass (all zeros): nothing to measure.")
  centre = tuple((n - 1) // 2 for n in field_map.shape) if centre is None else tuple(centre)
  variances = []
  for axis, (n, c) in enumerate(zip(field_map.shape, centre)):
    other = tuple(a for a in range(field_map.ndim) if a != axis)
    marginal = field_map.sum(axis=other) / total
    variances.append(float(np.sum(marginal * (np.arange(n) - c) ** 2)))
  return float(np.sqrt(np.mean(variances)))


def conv_stack(depth: int, *, kernel: int = 3, channels: int = 8, in_channels: int = 1,
               num_dims: int = 2, activation: str = "relu", padding="SAME"):
  """A plain stack of stride-1 convolutions with He-normal weights, for the ERF study.

  Layers after the first are applied with ``lax.scan`` over stacked kernels, so the compile
  time does not grow with depth.

  Args:
    depth: number of conv layers, >= 1.
    kernel, channels, in_channels, num_dims, padding: the layers' shape.
    activation: "relu" or "linear" (Luo et al. show both give sqrt(depth) growth).

  Returns:
    ``(init_fn, apply_fn, layers)``: ``init_fn(key) -> {"first": (*k, C_in, C), "rest":
    (depth - 1, *k, C, C)}``, ``apply_fn(params, x) -> y`` (no bias; activation between
    layers, none after the last) and the ``Window`` list for ``receptive_field``.
  """
  if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
    raise ValueError(f"depth={depth!r} is not allowed: give an int >= 1.")
  if activation not in ("relu", "linear"):
    raise ValueError(f"activation={activation!r} is not allowed: give 'relu' or 'linear'.")
  shape_k = (kernel,) * num_dims

  def init_fn(key):
    k_first, k_rest = jax.random.split(key)
    first = jax.random.normal(k_first, shape_k + (in_channels, channels), jnp.float32)
    rest = jax.random.normal(k_rest, (depth - 1,) + shape_k + (channels, channels), jnp.float32)
    # He et al. (2015) scaling keeps the activations' scale constant with depth.
    return {"first": first * math.sqrt(2.0 / (in_channels * kernel ** num_dims)),
            "rest": rest * math.sqrt(2.0 / (channels * kernel ** num_dims))}

  def apply_fn(params, x):
    x = correlation.correlate(x, params["first"], padding=padding)

    def layer(h, w):
      if activation == "relu":
        h = jax.nn.relu(h)
      return correlation.correlate(h, w, padding=padding), None

    x, _ = jax.lax.scan(layer, x, params["rest"])
    return x

  layers = [Window(kernel, 1, padding, 1, name=f"conv_{i}") for i in range(depth)]
  return init_fn, apply_fn, layers


def erf_growth(depths: Sequence[int], *, key: jax.Array, kernel: int = 3, channels: int = 8,
               activation: str = "relu", num_samples: int = 16, fraction: float = 0.95,
               num_dims: int = 2) -> list[dict]:
  """Effective vs analytic receptive field size as depth grows (Luo et al., 2016, Fig. 1).

  Each depth gets an input just large enough to hold the analytic field (plus a margin of
  ``kernel`` pixels), so borders do not cut the field.

  Returns:
    One dict per depth: ``depth``, ``analytic_size`` (per-dim extent), ``erf_radius``,
    ``erf_size`` (``2 * radius + 1``), ``erf_fraction`` (``erf_size / analytic_size``),
    ``erf_std`` (``mass_std`` of the map: its Gaussian width) and ``map`` (the normalised map).
  """
  rows = []
  for depth, depth_key in zip(depths, jax.random.split(key, len(depths))):
    init_fn, apply_fn, layers = conv_stack(depth, kernel=kernel, channels=channels,
                                           num_dims=num_dims, activation=activation)
    analytic = receptive_field(layers, num_dims=num_dims)[-1].size[0]
    n = analytic + 2 * kernel
    field = effective_receptive_field(apply_fn, init_fn, (1,) + (n,) * num_dims + (1,),
                                      key=depth_key, num_samples=num_samples)
    radius = mass_radius(field, fraction)
    rows.append(dict(depth=depth, analytic_size=analytic, erf_radius=radius,
                     erf_size=2 * radius + 1, erf_fraction=(2 * radius + 1) / analytic,
                     erf_std=mass_std(field), map=field))
  return rows


def growth_exponent(depths: Sequence[float], sizes: Sequence[float]) -> float:
  """Least-squares slope of log(size) against log(depth): ~1 linear, ~0.5 for sqrt growth."""
  if len(depths) != len(sizes) or len(depths) < 2:
    raise ValueError(f"depths and sizes need the same length >= 2, got {len(depths)} and "
                     f"{len(sizes)}.")
  slope, _ = np.polyfit(np.log(np.asarray(depths, float)), np.log(np.asarray(sizes, float)), 1)
  return float(slope)
