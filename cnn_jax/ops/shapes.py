"""Shape arithmetic and argument checks shared by every op.

The size arithmetic follows Dumoulin & Visin (2016), "A guide to convolution arithmetic":
with input size ``n``, kernel ``k``, dilation ``d`` (effective kernel ``d(k-1)+1``), stride
``s`` and padding ``lo + hi``, the output has ``floor((n + lo + hi - d(k-1) - 1) / s) + 1``
positions. Every op resolves its padding here and checks its arguments here, in plain Python
on static shapes, so that a bad call raises a ``ValueError`` before anything is traced.
"""

from __future__ import annotations

from typing import Sequence, Union

PaddingLike = Union[str, int, Sequence[Union[int, Sequence[int]]]]

PADDING_MODES = ("VALID", "SAME", "FULL", "CIRCULAR")
ALLOWED_PADDING = (
    '"VALID", "SAME", "FULL", "CIRCULAR", an int >= 0, or one (lo, hi) pair of ints >= 0 '
    "per spatial dimension"
)


def as_tuple(value, num_dims: int, name: str, *, minimum: int = 1) -> tuple[int, ...]:
  """Returns ``value`` as a tuple of ``num_dims`` ints, each ``>= minimum``.

  Args:
    value: an int (used for every dimension) or a sequence of ``num_dims`` ints.
    num_dims: number of spatial dimensions.
    name: the argument's name, for the error message.
    minimum: smallest allowed value.

  Raises:
    ValueError: naming ``name``, its value and what is allowed.
  """
  if isinstance(value, bool):
    raise ValueError(f"{name}={value!r} is not allowed: give an int >= {minimum} or "
                     f"a tuple of {num_dims} such ints.")
  if isinstance(value, int):
    values = (value,) * num_dims
  else:
    try:
      values = tuple(value)
    except TypeError:
      raise ValueError(f"{name}={value!r} is not allowed: give an int >= {minimum} or "
                       f"a tuple of {num_dims} such ints.") from None
  if len(values) != num_dims or not all(
      isinstance(v, int) and not isinstance(v, bool) for v in values):
    raise ValueError(f"{name}={value!r} is not allowed: give an int >= {minimum} or "
                     f"a tuple of {num_dims} such ints.")
  if any(v < minimum for v in values):
    raise ValueError(f"{name}={value!r} is not allowed: every entry must be >= {minimum}.")
  return values


def effective_kernel(kernel: int, dilation: int) -> int:
  """Extent of a kernel of ``kernel`` taps with gaps of ``dilation - 1``."""
  return dilation * (kernel - 1) + 1


def padding_mode(padding: PaddingLike) -> str:
  """Returns ``"CIRCULAR"`` for wrap-around padding and ``"ZEROS"`` for every other form."""
  if isinstance(padding, str) and padding.upper() == "CIRCULAR":
    return "CIRCULAR"
  return "ZEROS"


def _same_pads(n: int, eff_k: int, stride: int) -> tuple[int, int]:
  # XLA/TensorFlow convention: output ceil(n / s); the odd pixel of padding goes to the end.
  out = -(-n // stride)
  total = max((out - 1) * stride + eff_k - n, 0)
  return total // 2, total - total // 2


def resolve_padding(padding: PaddingLike, sizes: Sequence[int], kernel: Sequence[int],
                    stride: Sequence[int], dilation: Sequence[int]) -> tuple[tuple[int, int], ...]:
  """Turns any accepted ``padding`` into one ``(lo, hi)`` pair per spatial dimension.

  ``"SAME"`` gives ``ceil(n / stride)`` outputs, ``"FULL"`` pads ``d(k-1)`` on each side (every
  partial overlap), ``"CIRCULAR"`` pads the amounts of ``"SAME"`` but with wrapped-around
  values (the caller does the wrapping), an int pads that much on both sides of every dim.

  Raises:
    ValueError: for an unknown mode or a malformed pad.
  """
  num_dims = len(sizes)
  eff = [effective_kernel(k, d) for k, d in zip(kernel, dilation)]
  if isinstance(padding, str):
    mode = padding.upper()
    if mode == "VALID":
      return ((0, 0),) * num_dims
    if mode in ("SAME", "CIRCULAR"):
      return tuple(_same_pads(n, e, s) for n, e, s in zip(sizes, eff, stride))
    if mode == "FULL":
      return tuple((e - 1, e - 1) for e in eff)
    raise ValueError(f"padding={padding!r} is not allowed: give {ALLOWED_PADDING}.")
  if isinstance(padding, int) and not isinstance(padding, bool):
    if padding < 0:
      raise ValueError(f"padding={padding!r} is not allowed: give {ALLOWED_PADDING}.")
    return ((padding, padding),) * num_dims
  try:
    pairs = tuple(tuple(p) for p in padding)
  except TypeError:
    raise ValueError(f"padding={padding!r} is not allowed: give {ALLOWED_PADDING}.") from None
  if len(pairs) != num_dims or not all(
      len(p) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in p)
      for p in pairs):
    raise ValueError(f"padding={padding!r} is not allowed for {num_dims} spatial dims: "
                     f"give {ALLOWED_PADDING}.")
  return pairs


def output_size(n, kernel, stride=1, padding: PaddingLike = "VALID", dilation=1):
  """Number of output positions of a sliding window (Dumoulin & Visin, 2016).

  Args:
    n: input size, an int or a tuple (one per spatial dimension).
    kernel: window size, int or tuple.
    stride: step, int or tuple, >= 1.
    padding: any form accepted by the ops (see ``resolve_padding``).
    dilation: gap factor, int or tuple, >= 1.

  Returns:
    An int if ``n`` is an int, else a tuple of ints.

  Raises:
    ValueError: if an argument is malformed or the (dilated) kernel is larger than the padded
      input.
  """
  scalar = isinstance(n, int)
  sizes = (n,) if scalar else tuple(n)
  num_dims = len(sizes)
  sizes = as_tuple(sizes, num_dims, "input size")
  kernel = as_tuple(kernel, num_dims, "kernel")
  stride = as_tuple(stride, num_dims, "stride")
  dilation = as_tuple(dilation, num_dims, "dilation")
  if scalar and not isinstance(padding, (str, int)):
    padding = (tuple(padding),)
  pads = resolve_padding(padding, sizes, kernel, stride, dilation)
  out = []
  for dim, (size, k, s, d, (lo, hi)) in enumerate(zip(sizes, kernel, stride, dilation, pads)):
    eff = effective_kernel(k, d)
    if size + lo + hi < eff:
      raise ValueError(
          f"kernel={k} (dilation {d}, extent {eff}) is larger than the padded input "
          f"({size} + {lo} + {hi} = {size + lo + hi}) in spatial dim {dim}: "
          f"the kernel extent must be <= the padded input size.")
    out.append((size + lo + hi - eff) // s + 1)
  return out[0] if scalar else tuple(out)


def check_input_rank(x_shape: Sequence[int], num_dims: int, name: str = "x") -> None:
  """Checks ``x`` is ``(N, *spatial, C)`` with ``num_dims`` spatial dims (1, 2 or 3)."""
  if num_dims not in (1, 2, 3):
    raise ValueError(f"{num_dims} spatial dims is not allowed: ops support 1-D, 2-D and 3-D.")
  if len(x_shape) != num_dims + 2:
    raise ValueError(
        f"{name} has shape {tuple(x_shape)} (rank {len(x_shape)}): expected rank "
        f"{num_dims + 2}, (N, {', '.join('HWD'[:num_dims]) if num_dims > 1 else 'W'}, C), "
        f"for {num_dims} spatial dims.")
