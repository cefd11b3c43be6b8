"""The train state: everything a step reads and writes, as one pytree.

A flax.struct dataclass of arrays only (no functions), so it can be jitted, donated, sharded
and checkpointed by orbax as it is. The model and the optimizer live outside, closed over by
the step functions (see ``steps.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from cnn_jax import native
from cnn_jax import xla_options


@flax.struct.dataclass
class TrainState:
  """Params, BatchNorm statistics, optimizer state, step and base RNG key.

  Attributes:
    step: int32 scalar, number of updates applied so far.
    params: the model's ``params`` collection.
    batch_stats: the model's ``batch_stats`` collection (``{}`` for models without BN).
    opt_state: the optax state for ``params``.
    rng: uint32 ``(2,)`` base key; step ``s`` uses ``fold_in(rng, s)``, so no key is carried
      from step to step and a resumed run draws the same numbers.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array


def create(model, tx: optax.GradientTransformation, input_shape: tuple[int, ...],
           seed: int) -> TrainState:
  """Initialises the model on zeros of ``input_shape`` (one example) and the optimizer.

  Pure in ``seed``: call it under ``jax.jit`` (with ``out_shardings``) to place the state.

  Args:
    model: a Flax Linen module called as ``model.apply(v, x, train=bool, mutable=[...])``.
    tx: the optimizer.
    input_shape: ``(H, W, C)`` or ``(L, C)``, without the batch axis.
    seed: the run's seed.
  """
  root = jax.random.PRNGKey(seed)
  init_key, state_key = jax.random.split(root)
  # The same variables and kernel checks, and no kernel measured for a batch of one.
  variables = native.without_tuning(model).init(
      {"params": init_key, "dropout": init_key}, jnp.zeros((1, *input_shape), jnp.float32),
      train=False)
  params = variables["params"]
  batch_stats = variables.get("batch_stats", {})
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=tx.init(params), rng=state_key)


def create_jitted(model, tx: optax.GradientTransformation, input_shape: tuple[int, ...],
                  seed: int, out_shardings: Any = None) -> TrainState:
  """``create`` compiled (``xla_options.optimization_level()``: the same bits, compiled
  several times faster on CPU) and placed by ``out_shardings``."""
  return jax.jit(lambda: create(model, tx, input_shape, seed), out_shardings=out_shardings,
                 compiler_options=xla_options.optimization_level())()


def layer_names(model, input_shape: tuple[int, ...]) -> list[str]:
  """Names of the parameterised layers (``"Block_0/Conv_1"``) in the order they are called.

  Flax creates variables in call order and keeps them in dict insertion order, but every
  pytree round trip (jit, eval_shape) sorts dict keys, so "Block_10" would come before
  "Block_2". The order is read here, inside the trace, before any such round trip. Costs no
  FLOPs (abstract evaluation only).
  """
  names: list[str] = []

  def init(x):
    keys = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(0)}
    variables = native.without_tuning(model).init(keys, x, train=False)
    _walk(variables["params"], (), names)
    return 0

  jax.eval_shape(init, jax.ShapeDtypeStruct((1, *input_shape), jnp.float32))
  return names


def unrolled(model):
  """The same model with scanned repeated blocks unrolled, when it has that switch.

  ``cnn_jax.models``' residual families scan repeated blocks (``scan_blocks=True``), which
  stacks their parameters and loses the blocks' call order; the unrolled twin has the same
  function and names each block, so it gives the per-layer order for gradient-norm logs.
  """
  if getattr(model, "scan_blocks", False):
    return model.clone(scan_blocks=False)
  return model


def _walk(tree, prefix, out):
  leaves_here = [k for k, v in tree.items() if not isinstance(v, Mapping)]
  if leaves_here and prefix:
    out.append("/".join(prefix))
  for k, v in tree.items():
    if isinstance(v, Mapping):
      _walk(v, prefix + (k,), out)
