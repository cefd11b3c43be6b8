"""Layer-by-layer accounting: output shapes, parameters, multiply-adds, geometry.

``trace_layers(model, input_shape)`` runs ``model.init`` under ``jax.eval_shape`` (no real
compute, no memory for activations) with a Flax method interceptor that records every leaf
layer's call: its path, kind, input and output shapes, parameter count, multiply-accumulates
and, for sliding windows, the resolved kernel, stride, padding and dilation. The receptive-field
analysis reads these records; ``summarize`` turns them into a table and totals.

Counting conventions (the layer table prints MACs; FLOPs = 2 × MACs, one multiply + one add):
- conv: ``prod(output) · prod(kernel) · C_in / groups``; locally connected: the same with
  ``groups = 1``; dense: ``prod(output) · C_in``.
- avg / weighted / L2 pooling: ``prod(output) · prod(window)`` (one multiply-add per tap);
  max pooling: 0 (comparisons only); global average pooling: ``prod(input)``.
- BatchNorm and activations: 0, as is usual (He et al. and Xie et al. count conv and dense
  multiply-adds; at inference BN folds into the preceding conv).
- Parameters are everything in the ``params`` collection (BN's scale and bias included,
  running statistics excluded). Papers differ here; docs/models.md gives both counts.
MACs scale with the batch of ``input_shape``: pass ``N = 1`` for per-example figures.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax import layers
from cnn_jax import native


@dataclasses.dataclass(frozen=True)
class LayerRecord:
  """One leaf layer's call, in call order.

  Attributes:
    name: the layer's module path, ``"/"``-joined (e.g. ``"stage2/block0/conv1"``).
    kind: ``"conv"``, ``"local"``, ``"pool"``, ``"global_pool"``, ``"dense"`` or ``"norm"``.
    input_shape, output_shape: full shapes, batch first.
    params: number of entries in the layer's ``params`` collection.
    macs: multiply-accumulates of this call (see the module docstring).
    kernel, stride, dilation: per spatial dim, or None (dense, norm). A global pool is recorded
      as a window covering the whole map (kernel = stride = its input's spatial size).
    padding: one ``(lo, hi)`` pair per spatial dim, or None.
    on_shortcut: the layer lies on a residual shortcut branch (a path part starts with
      ``"shortcut"``).
  """
  name: str
  kind: str
  input_shape: tuple
  output_shape: tuple
  params: int
  macs: int
  kernel: Optional[tuple] = None
  stride: Optional[tuple] = None
  padding: Optional[tuple] = None
  dilation: Optional[tuple] = None
  on_shortcut: bool = False


def _prod(values) -> int:
  total = 1
  for v in values:
    total *= int(v)
  return total


def _record(module: nn.Module, x_shape, y_shape) -> Optional[LayerRecord]:
  """The record of one leaf layer's call, or None for modules that are not leaf layers."""
  path = tuple(module.scope.path)
  name = "/".join(path)
  on_shortcut = any(part.startswith("shortcut") for part in path)
  params = sum(_prod(leaf.shape) for leaf in jax.tree.leaves(
      module.variables.get("params", {})))
  x_shape, y_shape = tuple(x_shape), tuple(y_shape)
  common = dict(name=name, input_shape=x_shape, output_shape=y_shape, params=params,
                on_shortcut=on_shortcut)
  if isinstance(module, (layers.Conv, layers.LocallyConnected, layers.Pool)):
    geo = module.geometry(x_shape)
    window = _prod(geo.kernel)
    if isinstance(module, layers.Conv):
      kind, macs = "conv", _prod(y_shape) * window * (x_shape[-1] // module.groups)
    elif isinstance(module, layers.LocallyConnected):
      kind, macs = "local", _prod(y_shape) * window * x_shape[-1]
    else:
      kind, macs = "pool", 0 if module.kind == "max" else _prod(y_shape) * window
    return LayerRecord(kind=kind, macs=macs, kernel=geo.kernel, stride=geo.stride,
                       padding=geo.padding, dilation=geo.dilation, **common)
  if isinstance(module, layers.GlobalAvgPool):
    spatial = x_shape[1:-1]
    return LayerRecord(kind="global_pool", macs=_prod(x_shape), kernel=spatial, stride=spatial,
                       padding=((0, 0),) * len(spatial), dilation=(1,) * len(spatial), **common)
  if isinstance(module, nn.Dense):
    return LayerRecord(kind="dense", macs=_prod(y_shape) * x_shape[-1], **common)
  if isinstance(module, (layers.BatchNorm, nn.BatchNorm)):
    return LayerRecord(kind="norm", macs=0, **common)
  return None


def unrolled(model: nn.Module) -> nn.Module:
  """The same model with repeated blocks unrolled (``scan_blocks=False``), if it scans.

  ``nn.scan`` traces a stage's repeated blocks once, so a trace of the scanned model would list
  one block per stage; the unrolled twin computes the same function with the same parameter
  count and lists every block (``stage2/block0``, ``stage2/block1``, …).
  """
  if getattr(model, "scan_blocks", False):
    return model.clone(scan_blocks=False)
  return model


def trace_layers(model: nn.Module, input_shape: Sequence[int]) -> list[LayerRecord]:
  """Every leaf layer's call, in call order, for an input of ``input_shape``; no real compute.

  Args:
    model: an unbound Flax module of the zoo (or any module built from ``cnn_jax.layers``,
      ``nn.Dense`` and ``nn.BatchNorm``), called as ``model(x, train=False)``.
    input_shape: the full input shape, batch first, e.g. ``(1, 32, 32, 3)`` or ``(1, L, C)``.

  Returns:
    A list of ``LayerRecord``; scanned blocks are unrolled (see ``unrolled``).
  """
  model = unrolled(native.without_tuning(model))  # shapes only: no kernel to measure
  records: list[LayerRecord] = []

  def interceptor(next_fun, args, kwargs, context):
    if context.method_name != "__call__" or not args:
      return next_fun(*args, **kwargs)
    x_shape = getattr(args[0], "shape", None)
    out = next_fun(*args, **kwargs)
    if x_shape is not None and hasattr(out, "shape"):
      record = _record(context.module, x_shape, out.shape)
      if record is not None:
        records.append(record)
    return out

  def init():
    return model.init(jax.random.key(0), jnp.zeros(tuple(input_shape), jnp.float32),
                      train=False)

  with nn.intercept_methods(interceptor):
    jax.eval_shape(init)
  return records


def count_params(model: nn.Module, input_shape: Sequence[int], *,
                 exclude_norm: bool = False) -> int:
  """Number of parameters of ``model`` for ``input_shape``, by ``jax.eval_shape`` (no compute).

  ``exclude_norm=True`` leaves out BatchNorm scales and biases, the convention under which
  Xie et al. (2017, Table 7) report ResNeXt sizes.
  """
  if exclude_norm:
    return sum(r.params for r in trace_layers(model, input_shape) if r.kind != "norm")
  variables = jax.eval_shape(lambda: native.without_tuning(model).init(
      jax.random.key(0), jnp.zeros(tuple(input_shape), jnp.float32), train=False))
  return sum(_prod(leaf.shape) for leaf in jax.tree.leaves(variables.get("params", {})))


def receptive_fields(records: Sequence[LayerRecord], input_shape: Sequence[int]) -> Optional[list[Any]]:
  """Receptive-field records (``analysis.receptive_field``) along the traced main path.

  Returns None for a model without spatial layers (an MLP has no receptive field).
  """
  from cnn_jax.analysis import receptive_field  # pylint: disable=g-import-not-at-top
  if not any(r.kind in receptive_field.SPATIAL_KINDS and not r.on_shortcut for r in records):
    return None
  return list(receptive_field.receptive_field(records, input_shape=tuple(input_shape)))


def summarize(model: nn.Module, input_shape: Sequence[int]) -> dict:
  """A per-layer table and totals for ``model`` on ``input_shape`` (batch first).

  Returns:
    ``{"input_shape", "layers": [per-layer dicts: name, kind, output_shape, params, macs,
    flops (+ receptive_field)], "params", "macs", "flops", "receptive_field"}``, where
    ``flops = 2 * macs`` and ``receptive_field`` is the whole net's per-dim size, or None when
    the receptive-field module is not available.
  """
  records = trace_layers(model, input_shape)
  rf_records = receptive_fields(records, input_shape)
  rows = []
  for r in records:
    rows.append({"name": r.name, "kind": r.kind, "output_shape": list(r.output_shape),
                 "params": r.params, "macs": r.macs, "flops": 2 * r.macs})
  total_rf = None
  if rf_records:
    total_rf = list(rf_records[-1].size)
    by_name = {rf.name: rf for rf in rf_records}
    for row in rows:  # the field after each spatial layer of the main path
      if row["name"] in by_name:
        row["receptive_field"] = list(by_name[row["name"]].size)
  macs = sum(r.macs for r in records)
  return {"input_shape": list(input_shape), "layers": rows,
          "params": count_params(model, input_shape), "macs": macs, "flops": 2 * macs,
          "receptive_field": total_rf}


def format_table(summary: dict) -> str:
  """The summary as a fixed-width text table (MACs per layer; FLOPs = 2 × MACs in the totals)."""
  rows = summary["layers"]
  has_rf = any("receptive_field" in row for row in rows)
  header = ["layer", "kind", "output shape", "params", "MACs"] + (["RF"] if has_rf else [])
  body = []
  for row in rows:
    cells = [row["name"], row["kind"], "x".join(str(d) for d in row["output_shape"]),
             f"{row['params']:,}", f"{row['macs']:,}"]
    if has_rf:
      cells.append("x".join(str(d) for d in row.get("receptive_field", [])))
    body.append(cells)
  widths = [max(len(str(c)) for c in col) for col in zip(header, *body)]
  numeric = {3, 4}

  def line(cells):
    return "  ".join(str(c).rjust(w) if i in numeric else str(c).ljust(w)
                     for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

  out = [line(header), line(["-" * w for w in widths])] + [line(c) for c in body]
  rf = summary.get("receptive_field")
  out.append(f"input {'x'.join(str(d) for d in summary['input_shape'])}: "
             f"params {summary['params']:,}  MACs {summary['macs']:,}  "
             f"FLOPs (2 x MACs) {summary['flops']:,}"
             + (f"  receptive field {'x'.join(str(d) for d in rf)}" if rf else ""))
  return "\n".join(out)
