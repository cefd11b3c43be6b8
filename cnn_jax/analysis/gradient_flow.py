"""Gradient flow: per-layer gradient norms and update/weight ratios, the numbers behind the
vanishing-gradient plot (plain vs residual nets of growing depth).

Works on any parameter pytree of nested mappings (a Flax ``params`` dict): a *layer* is a
mapping that holds arrays directly (``{"kernel": ..., "bias": ...}``), named by its path
``"stage1/block0/conv1"``. ``layer_norms`` is pure ``jnp`` and can run inside a jitted train
step; the rest turns norms into rows for tables, metrics lines and plots.

Order: JAX returns dicts with sorted keys from every transformation (``grad``, ``jit``), so a
gradient pytree no longer remembers the order in which layers were called. ``call_order``
recovers it from one forward pass of a Flax model (``nn.intercept_methods``); without it, layers
are sorted by path with numbers compared as numbers (``Conv_2`` before ``Conv_10``), which is
call order for Flax's auto-named layers but not for arbitrary names.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax import xla_options


def _is_mapping(node) -> bool:
  return isinstance(node, Mapping)


def layer_groups(tree, leaf_names: Optional[Sequence[str]] = None) -> dict[str, list]:
  """Groups the arrays of a nested-mapping pytree by the layer (mapping) that holds them.

  Args:
    tree: nested mappings of arrays (lists/tuples are walked with their index as the key).
    leaf_names: if given, keep only arrays with these names (e.g. ``("kernel",)`` to follow
      the weights of conv and dense layers and skip biases and norm scales).

  Returns:
    ``{layer_path: [arrays]}`` in traversal order; layers left empty by ``leaf_names`` are
    dropped.
  """
  groups: dict[str, list] = {}

  def walk(node, path):
    if _is_mapping(node):
      items = node.items()
    elif isinstance(node, (list, tuple)):
      items = enumerate(node)
    else:
      return
    for key, child in items:
      if _is_mapping(child) or isinstance(child, (list, tuple)):
        walk(child, path + (str(key),))
      elif child is not None and (leaf_names is None or str(key) in leaf_names):
        groups.setdefault("/".join(path) or "<root>", []).append(child)

  walk(tree, ())
  return groups


def layer_norms(tree, leaf_names: Optional[Sequence[str]] = None) -> dict[str, jax.Array]:
  """The L2 norm of each layer's arrays taken together: ``sqrt(sum of squares)``.

  Pure ``jnp``: call it inside ``jax.jit`` (e.g. on the gradients in a train step).

  Returns:
    ``{layer_path: scalar}``.
  """
  return {name: jnp.sqrt(sum(jnp.sum(jnp.square(a.astype(jnp.float32))) for a in arrays))
          for name, arrays in layer_groups(tree, leaf_names).items()}


def _natural_key(path: str):
  return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


def order_layers(names, order: Optional[Sequence[str]] = None) -> list[str]:
  """Sorts layer paths by ``order`` (paths in call order); the rest after, naturally sorted."""
  names = list(names)
  if order is None:
    return sorted(names, key=_natural_key)
  rank = {name: i for i, name in enumerate(order)}
  return sorted(names, key=lambda n: (rank.get(n, len(rank)), _natural_key(n)))


def call_order(model, variables, x, **apply_kwargs) -> list[str]:
  """Paths of a Flax model's submodules in the order of their first call.

  Args:
    model: a ``flax.linen.Module``.
    variables: its variables (``{"params": ..., "batch_stats": ...}``).
    x: an input batch (a single example is enough).
    **apply_kwargs: passed to ``model.apply`` (e.g. ``train=False``).

  Returns:
    ``["conv_init", "stage1/block0/conv1", ...]``: the same paths ``layer_groups`` gives.
  """
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  seen: dict[str, None] = {}

  def interceptor(next_fun, args, kwargs, context):
    if context.method_name == "__call__":
      seen.setdefault("/".join(context.module.path), None)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    model.apply(variables, x, **apply_kwargs)
  return [path for path in seen if path]


def _host_norms(tree, leaf_names) -> dict[str, float]:
  leaf_names = None if leaf_names is None else tuple(leaf_names)
  norms = jax.jit(layer_norms, static_argnums=1)(tree, leaf_names)
  return {name: float(value) for name, value in jax.device_get(norms).items()}


def gradient_flow(grads, params=None, updates=None, *, order: Optional[Sequence[str]] = None,
                  leaf_names: Optional[Sequence[str]] = None) -> list[dict]:
  """One row per layer: gradient norm, and with params/updates the relative sizes.

  Args:
    grads: the gradient pytree (same structure as ``params``).
    params: the parameters, for ``param_norm`` and ``grad_ratio = grad_norm / param_norm``.
    updates: the optimiser's updates (``new_params - params``), for ``update_ratio =
      update_norm / param_norm``, the relative step each layer takes (~1e-3 is healthy).
    order: layer paths in call order (see ``call_order``); default: natural sort of paths.
    leaf_names: restrict to these array names (e.g. ``("kernel",)``).

  Returns:
    ``[{"index", "layer", "grad_norm", ["param_norm", "grad_ratio"], ["update_norm",
    "update_ratio"]}]`` with ``index`` the 0-based position in ``order``.
  """
  grad_norms = _host_norms(grads, leaf_names)
  param_norms = _host_norms(params, leaf_names) if params is not None else {}
  update_norms = _host_norms(updates, leaf_names) if updates is not None else {}
  rows = []
  for index, name in enumerate(order_layers(grad_norms, order)):
    row = dict(index=index, layer=name, grad_norm=grad_norms[name])
    if name in param_norms:
      row["param_norm"] = param_norms[name]
      row["grad_ratio"] = _ratio(grad_norms[name], param_norms[name])
    if name in update_norms:
      row["update_norm"] = update_norms[name]
      if name in param_norms:
        row["update_ratio"] = _ratio(update_norms[name], param_norms[name])
    rows.append(row)
  return rows


def _ratio(numerator: float, denominator: float) -> float:
  # A zero-initialised layer (e.g. the last BN scale with zero_init_residual) has no scale to
  # compare against; NaN marks it instead of inf so means and plots skip it.
  return numerator / denominator if denominator > 0 else float("nan")


def as_metrics(rows: Sequence[Mapping[str, Any]], keys: Sequence[str] = ("grad_norm",),
               ) -> dict[str, float]:
  """Flattens rows into ``{"grad_norm/<layer>": value, ...}`` for one metrics.jsonl line."""
  return {f"{key}/{row['layer']}": row[key] for row in rows for key in keys if key in row}


def rows_from_metrics(record: Mapping[str, Any], key: str = "grad_norm", *,
                      order: Optional[Sequence[str]] = None) -> list[dict]:
  """The inverse of ``as_metrics`` for one key: rows from one metrics.jsonl record.

  Lets a finished run's per-layer curves be replotted (``plotting.plot_gradient_norms``)
  from ``{"step": ..., "grad_norm/conv_init": ..., ...}`` lines without training again.
  """
  prefix = key + "/"
  values = {name[len(prefix):]: value for name, value in record.items()
            if name.startswith(prefix)}
  return [{"index": i, "layer": name, key: float(values[name])}
          for i, name in enumerate(order_layers(values, order))]


def cross_entropy_gradients(model, variables, x, labels, *, train: bool = True):
  """Gradients of the mean softmax cross-entropy with respect to ``variables["params"]``.

  Args:
    model: a Flax module called as ``model.apply(variables, x, train=..., mutable=[...])``
      returning logits ``(N, num_classes)`` (the project's model contract).
    variables: ``{"params": ..., ["batch_stats": ...]}``.
    x: ``(N, *spatial, C)`` float inputs.
    labels: ``(N,)`` int classes.
    train: BatchNorm in training mode (batch statistics), as in a train step.

  Returns:
    ``(loss, grads)`` with ``grads`` shaped like ``variables["params"]``.
  """
  labels = jnp.asarray(labels)
  if labels.shape != (x.shape[0],):
    raise ValueError(f"labels has shape {tuple(labels.shape)}: expected ({x.shape[0]},).")
  others = {k: v for k, v in variables.items() if k != "params"}
  mutable = ["batch_stats"] if train and "batch_stats" in variables else False

  def loss_fn(params):
    out = model.apply({"params": params, **others}, x, train=train, mutable=mutable)
    logits = out[0] if mutable else out
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=-1))

  # One compiled program instead of hundreds of eager dispatches (much faster on CPU).
  return jax.jit(jax.value_and_grad(loss_fn))(variables["params"])


def gradient_flow_at_init(model, x, labels, *, key: jax.Array, train: bool = True,
                          leaf_names: Optional[Sequence[str]] = ("kernel",)) -> list[dict]:
  """Initialises ``model`` and returns ``gradient_flow`` rows for one batch, in call order.

  The depth study's vanishing-gradient numbers: compare ``grad_norm`` of the first layers
  with the last ones, plain vs residual, as depth grows.
  """
  variables = jax.jit(lambda k, v: model.init(k, v, train=False),
                      compiler_options=xla_options.optimization_level())(key, x)
  _, grads = cross_entropy_gradients(model, variables, x, labels, train=train)
  order = call_order(model, variables, x, train=False)
  return gradient_flow(grads, variables["params"], order=order, leaf_names=leaf_names)


def summary(rows: Sequence[Mapping[str, Any]], key: str = "grad_norm") -> dict[str, float]:
  """First/last layer values and their ratio: ``first_over_last`` << 1 means vanishing."""
  values = np.asarray([row[key] for row in rows], dtype=np.float64)
  if values.size == 0:
    raise ValueError("rows is empty: nothing to summarise.")
  return dict(first=float(values[0]), last=float(values[-1]),
              first_over_last=_ratio(float(values[0]), float(values[-1])),
              geometric_mean=float(np.exp(np.mean(np.log(np.maximum(values, 1e-300))))))
