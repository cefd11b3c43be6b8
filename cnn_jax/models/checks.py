"""Argument checks for the model zoo, in plain Python, run before anything is traced.

Every failure is one ``ValueError`` sentence naming the config field, its value and what is
allowed, so that a bad ``--config.depth`` fails at ``build`` time and not deep inside XLA.
"""

from __future__ import annotations

from typing import Sequence


def check_int(field: str, value, minimum: int = 1) -> int:
  """Returns ``value`` if it is an int ``>= minimum`` (bools rejected), else raises."""
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f"{field}={value!r} is not allowed: give an int >= {minimum}.")
  return value


def check_choice(field: str, value, allowed: Sequence[str]) -> str:
  """Returns ``value`` if it is one of ``allowed``, else raises naming all of them."""
  if value not in allowed:
    raise ValueError(f"{field}={value!r} is not allowed: give one of "
                     f"{', '.join(repr(a) for a in allowed)}.")
  return value


def check_depth(model: str, depth, layers_per_block: int, blocks_per_net: int = 3) -> int:
  """Checks ``depth = layers_per_block * blocks_per_net * n + 2`` (n >= 1); returns ``n``.

  The CIFAR networks of He et al. (2016, §4.2) have one stem conv, three stages of ``n``
  blocks of ``layers_per_block`` layers, and one classifier: 6n+2 for basic blocks, 9n+2 for
  bottlenecks.
  """
  step = layers_per_block * blocks_per_net
  examples = ", ".join(str(step * n + 2) for n in (1, 2, 3, 5, 9))
  if (isinstance(depth, bool) or not isinstance(depth, int) or depth < step + 2
      or (depth - 2) % step):
    raise ValueError(f"depth={depth!r} is not allowed for model={model!r}: give {step}n+2 with "
                     f"n >= 1 ({examples}, ...).")
  return (depth - 2) // step


def check_downsampling(spatial: Sequence[int], steps: Sequence[tuple[str, int]]) -> None:
  """Checks that a chain of downsamplings never steps past the edge of a feature map.

  Every layer uses SAME padding, so a stride ``s`` maps a size ``n`` to ``ceil(n / s)``; a stride
  larger than the map (``n < s``) would have no second position to skip to, i.e. it shrinks
  the map below 1×1, and is rejected.

  Args:
    spatial: the input's spatial sizes, e.g. ``(H, W)`` or ``(L,)``.
    steps: ``(config field, stride)`` for each downsampling, in order.

  Raises:
    ValueError: naming the field whose stride meets a map smaller than itself.
  """
  sizes = tuple(spatial)
  for index, (field, stride) in enumerate(steps):
    if stride == 1:
      continue
    if any(n < stride for n in sizes):
      shape = "x".join(str(n) for n in sizes)
      raise ValueError(
          f"{field}={stride} shrinks the feature map below 1x1 at downsampling step "
          f"{index + 1} (map {shape} is smaller than the stride): use a smaller {field}, "
          "fewer stages (depth) or larger inputs (image_size).")
    sizes = tuple(-(-n // stride) for n in sizes)
