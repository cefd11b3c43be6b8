"""Residual learning, measured (He et al. 2016, Fig. 7): do residual branches learn small
corrections around the identity?

Two numbers per forward pass of any Flax model, read with ``nn.intercept_methods`` (which sees
every submodule's inputs and outputs without the model's cooperation):

* the standard deviation of each layer's *response*: the output of each normalisation layer on
  the main path (after BN, before the addition and the nonlinearity, as in He et al.);
* per residual block, ``rms(F(x)) / rms(x)``: ``x`` is the block's input, ``F(x)`` its residual
  branch, taken as the last response inside the block that is not on a shortcut (paths with a
  part starting with "shortcut", the project's naming contract). For blocks that keep the shape
  this is ``||F(x)|| / ||x||``; RMS keeps downsampling blocks (half the positions, twice the
  channels) comparable.

Blocks are the modules whose class name ends in "Block" and responses the modules whose class
name contains "Norm", unless other predicates are given.

``layer_output_fn`` uses the same interception to turn any submodule's output into a function
of the model input, so the receptive-field and equivariance tools measure a zoo model's inner
layers (e.g. ``receptive_field.gradient_support(layer_output_fn(model, variables,
"stage1/block0"), x)``).
"""

from __future__ import annotations

from typing import Callable, Optional

import jax.numpy as jnp
import numpy as np


def _default_is_block(module) -> bool:
  return type(module).__name__.endswith("Block")


def _default_is_response(module) -> bool:
  return "Norm" in type(module).__name__


def _on_shortcut(path: tuple) -> bool:
  return any(str(part).startswith("shortcut") for part in path)


def _rms(a) -> float:
  return float(jnp.sqrt(jnp.mean(jnp.square(a.astype(jnp.float32)))))


def block_statistics(model, variables, x, *, train: bool = False,
                     is_block: Optional[Callable] = None,
                     is_response: Optional[Callable] = None) -> dict[str, list[dict]]:
  """Per-layer response std and per-block residual magnitude for one batch.

  Args:
    model: a Flax module, called as ``model.apply(variables, x, train=train, mutable=...)``.
    variables: its variables.
    x: ``(N, *spatial, C)`` a batch.
    train: BatchNorm with batch statistics (its running averages are not kept).
    is_block: ``module -> bool``; default: class name ends in "Block".
    is_response: ``module -> bool``; default: class name contains "Norm".

  Returns:
    ``{"responses": [{"index", "layer", "std", "on_shortcut"}],
    "blocks": [{"index", "block", "residual_rms", "input_rms", "ratio"}]}`` in call order.
    A block with no response inside (e.g. no normalisation) has no row.
  """
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  is_block = is_block or _default_is_block
  is_response = is_response or _default_is_response
  events = []  # (kind, path, input, output) at each call's exit, inner calls first

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and args and hasattr(args[0], "shape"):
      module, path = context.module, tuple(context.module.path)
      if is_block(module):
        events.append(("block", path, args[0], out))
      elif is_response(module):
        events.append(("response", path, args[0], out))
    return out

  mutable = ["batch_stats"] if train and "batch_stats" in variables else False
  with nn.intercept_methods(interceptor):
    model.apply(variables, x, train=train, mutable=mutable)

  responses, blocks = [], []
  last_response: dict[tuple, object] = {}
  for kind, path, inputs, out in events:
    if kind == "response":
      responses.append(dict(index=len(responses), layer="/".join(path),
                            std=float(jnp.std(out.astype(jnp.float32))),
                            on_shortcut=_on_shortcut(path)))
      if not _on_shortcut(path):
        last_response[path] = out
      continue
    # A block exits after everything inside it: its residual is its last main-path response.
    inside = [p for p in last_response if p[:len(path)] == path and len(p) > len(path)]
    if not inside:
      continue
    residual = last_response[inside[-1]]
    residual_rms, input_rms = _rms(residual), _rms(inputs)
    blocks.append(dict(index=len(blocks), block="/".join(path), residual_rms=residual_rms,
                       input_rms=input_rms,
                       ratio=residual_rms / input_rms if input_rms > 0 else float("nan")))
    for p in inside:
      del last_response[p]
  return dict(responses=responses, blocks=blocks)


def sorted_stds(responses) -> np.ndarray:
  """Response stds sorted in descending order (He et al. Fig. 7, bottom)."""
  return np.sort(np.asarray([r["std"] for r in responses], dtype=np.float64))[::-1]


def layer_output_fn(model, variables, path: str, **apply_kwargs) -> Callable:
  """``x -> the output of submodule ``path`` (e.g. "stage1/block0/conv1")`` of a Flax model.

  The whole model runs (its logits are discarded); the submodule's output is caught on the
  way, so the function is differentiable and jit-able like the model itself.

  Args:
    model: a Flax module.
    variables: its variables.
    path: the submodule's path, parts joined by "/" (as ``gradient_flow.call_order`` lists).
    **apply_kwargs: passed to ``model.apply`` (e.g. ``train=False``).

  Returns:
    ``fn(x) -> array``; it raises ValueError if no submodule with that path was called.
  """
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  target = tuple(part for part in path.split("/") if part)

  def fn(x):
    caught = []

    def interceptor(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if (context.method_name == "__call__" and not caught
          and tuple(context.module.path) == target):
        caught.append(out)
      return out

    with nn.intercept_methods(interceptor):
      model.apply(variables, x, **apply_kwargs)
    if not caught:
      raise ValueError(f"path={path!r} is not allowed: no submodule with that path was called; "
                       "see gradient_flow.call_order for the paths.")
    return caught[0]

  return fn
