"""Pure train and eval steps, each compiled once with explicit shardings.

``train_step(state, batch) -> (state, metrics)`` normalises (and augments) the uint8 batch on
device, runs the model in train mode, takes the gradient of the mean cross-entropy (with
optional label smoothing) and applies the optimizer. Its metrics carry the loss, accuracy,
learning rate, L2 norms of the gradient, the parameters and the update, ``finite`` flags
(NaN/inf in the loss, the gradient, the updated parameters: ``FINITE_CHECKS``; checked by the
loop, which stops before saving such a step) and the gradient norm of every parameterised layer.
``eval_step(state, batch) -> metrics`` returns *sums* over the unmasked rows, so a padded last
batch and any number of batches add up exactly.

Batches are dicts ``{"image": uint8 (N, *spatial, C), "label": int32 (N,), ["mask": float32
(N,)]}`` sharded on the "data" mesh axis; the state is replicated (see ``sharding.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from cnn_jax import xla_options
from cnn_jax.train import sharding as sharding_lib
from cnn_jax.train.state import TrainState

# Folded into the per-step key to get independent streams for augmentation and dropout.
_AUGMENT_STREAM, _DROPOUT_STREAM = 0, 1


def cross_entropy(logits: jax.Array, labels: jax.Array, num_classes: int,
                  label_smoothing: float = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy, computed in float32.

  Args:
    logits: ``(N, num_classes)``, any float dtype (bfloat16 logits are upcast first).
    labels: int ``(N,)``.
    num_classes: classes.
    label_smoothing: mass moved uniformly from the true class to all classes.
  Returns:
    ``(N,)`` float32.
  """
  targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


# Which library XLA's CPU backend runs its own convolutions with. jax 0.10's XLA hands every
# 2-D convolution with more than 16 channels to YNNPACK; on the 2-core CPU those ran on one
# core, 2x slower than Eigen's multi-threaded ones (ResNet 3x3 layers: 16x16 32->32 21.5 vs
# 10.0 ms, 8x8 64->64 18.8 vs 9.3 ms; weight-gradient convs 3x faster), and the ResNet-20 train
# step was 1.2x (hand) to 1.6x (autodiff) faster with Eigen (docs/benchmarks-history.md,
# "Convolutions in Eigen, not YNNPACK"), so the steps keep YNNPACK for dots only. Which layers
# run the native kernels instead is the model's own field (``cnn_jax.native``).
def compiler_options(ynnpack_convolutions: bool = False) -> dict[str, str | int]:
  """XLA compiler options for the steps' ``jax.jit`` (``{}`` off the CPU backend).

  On CPU: ``xla_options.optimization_level()`` (faster compiles), and unless
  ``ynnpack_convolutions`` XLA's own convolutions in Eigen instead of YNNPACK.
  """
  options: dict[str, str | int] = dict(xla_options.optimization_level())
  if not ynnpack_convolutions and jax.default_backend() == "cpu":
    options["xla_cpu_experimental_ynn_fusion_type"] = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
  return options


# What ``metrics["finite"]`` says, in order: each holds no NaN or inf. Checked element by
# element (not through a norm, whose squares overflow float32 for finite values past 1.8e19).
FINITE_CHECKS = ("loss", "gradient", "updated parameters")


def all_finite(tree) -> jax.Array:
  """Whether every element of every leaf of ``tree`` is finite (a bool scalar)."""
  leaves = jax.tree.leaves(tree)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else (
      jnp.array(True))


def global_norm(tree) -> jax.Array:
  """L2 norm of all leaves of ``tree`` together (float32)."""
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.zeros((), jnp.float32)
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


# cnn_jax.models runs a stage's repeated blocks with nn.scan: their parameters sit under
# ".../blocks/block/..." stacked along a leading block axis, and the unrolled twin of the same
# model (``scan_blocks=False``) names block i (i >= 1) ".../block{i}/...". See
# cnn_jax/models/stages.py.
SCANNED = "blocks/block"


def layer_norms(tree, names: Sequence[str]) -> dict[str, jax.Array]:
  """L2 norm of each layer's own parameters, for layers ``"A/B"`` of a params tree.

  A layer inside scanned blocks (path containing ``SCANNED``) gets a vector: one norm per
  stacked block (``expand_layer_norms`` names them as the unrolled model does).
  """
  out = {}
  for name in names:
    node = tree
    for key in name.split("/"):
      node = node[key]
    # Only the layer's own leaves: a sub-layer has its own entry.
    own = [v for v in node.values() if not hasattr(v, "items")]
    if f"/{SCANNED}/" in f"/{name}/":
      out[name] = jnp.sqrt(sum(
          jnp.sum(jnp.square(v.astype(jnp.float32)), axis=tuple(range(1, v.ndim)))
          for v in own))
    else:
      out[name] = global_norm(own)
  return out


def expand_layer_norms(norms: dict[str, np.ndarray],
                       order: Sequence[str] = ()) -> dict[str, float]:
  """Host side of ``layer_norms``: one float per layer, scanned blocks unrolled, in ``order``.

  Args:
    norms: ``layer_norms`` output, fetched to the host.
    order: the layer names of the unrolled model in call order (``state.layer_names`` of
      ``unrolled(model)``); names not in it keep their place after those that are.
  Returns:
    ``{layer: norm}``; ``"s/blocks/block/conv1"`` with norms ``[a, b]`` becomes
    ``"s/block1/conv1": a, "s/block2/conv1": b``.
  """
  flat = {}
  for name, value in norms.items():
    value = np.asarray(value)
    if f"/{SCANNED}/" in f"/{name}/":
      head, tail = f"/{name}/".split(f"/{SCANNED}/", 1)
      for i, v in enumerate(value):
        flat["/".join(p for p in (head.strip("/"), f"block{i + 1}", tail.strip("/")) if p)] = (
            float(v))
    else:
      flat[name] = float(value)
  ordered = {n: flat[n] for n in order if n in flat}
  ordered.update({n: v for n, v in flat.items() if n not in ordered})
  return ordered


def make_train_step(model, tx: optax.GradientTransformation, schedule: optax.Schedule, *,
                    prepare_batch: Callable, mean: np.ndarray, std: np.ndarray, augment: bool,
                    num_classes: int, label_smoothing: float = 0.0,
                    layer_names: Sequence[str] = (), mesh: Mesh, state_sharding,
                    xla_options: dict[str, str] | None = None,
                    ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """Builds the jitted ``train_step(state, batch) -> (state, metrics)``.

  The state argument is donated (its buffers are reused for the new state): callers must not
  use a state after passing it in.

  Args:
    model: Flax Linen module.
    tx: optimizer.
    schedule: learning rate by step, reported in the metrics.
    prepare_batch: ``(images_uint8, mean, std, *, augment, key) -> float32 images``.
    mean, std: per-channel float32 statistics of the training split.
    augment: random crop and flip in ``prepare_batch``.
    num_classes: classes.
    label_smoothing: see ``cross_entropy``.
    layer_names: layers whose gradient norms go into ``metrics["layer_grad_norm"]``.
    mesh: the data mesh.
    state_sharding: pytree of shardings matching the state (replicated).
    xla_options: XLA compiler options (``compiler_options``); ``None``: XLA's defaults.
  Returns:
    The compiled step. Metrics are replicated float32 scalars (and a dict of them).
  """
  mean = np.asarray(mean, np.float32)
  std = np.asarray(std, np.float32)

  def step_fn(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    key = jax.random.fold_in(state.rng, state.step)
    images = prepare_batch(batch["image"], mean, std, augment=augment,
                           key=jax.random.fold_in(key, _AUGMENT_STREAM))
    labels = batch["label"]

    def loss_fn(params):
      logits, updates = model.apply(
          {"params": params, "batch_stats": state.batch_stats}, images, train=True,
          mutable=["batch_stats"], rngs={"dropout": jax.random.fold_in(key, _DROPOUT_STREAM)})
      loss = jnp.mean(cross_entropy(logits, labels, num_classes, label_smoothing))
      return loss, (logits, updates.get("batch_stats", {}))

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    accuracy = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
    grad_norm = global_norm(grads)
    metrics = {
        "loss": loss,
        "accuracy": accuracy,
        "learning_rate": jnp.asarray(schedule(state.step), jnp.float32),
        "grad_norm": grad_norm,
        "param_norm": global_norm(params),
        "update_norm": global_norm(updates),
        "finite": jnp.stack([jnp.isfinite(loss), all_finite(grads),
                             all_finite((params, batch_stats))]),
        "layer_grad_norm": layer_norms(grads, layer_names),
    }
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state)
    return new_state, metrics

  return jax.jit(step_fn,
                 in_shardings=(state_sharding, sharding_lib.batch_sharding(mesh)),
                 out_shardings=(state_sharding, sharding_lib.replicated(mesh)),
                 donate_argnums=0, compiler_options=xla_options)


def make_eval_step(model, *, prepare_batch: Callable, mean: np.ndarray, std: np.ndarray,
                   num_classes: int, mesh: Mesh, state_sharding,
                   xla_options: dict[str, str] | None = None,
                   ) -> Callable[[TrainState, dict], dict]:
  """Builds the jitted ``eval_step(state, batch) -> metrics`` (sums, see module doc).

  The batch may carry ``"mask"`` (float32 ``(N,)``, 0 for padding rows). Returns
  ``{"loss_sum", "correct", "count"}`` replicated float32 scalars. Uses BN running statistics
  (``train=False``) and no augmentation. Loss is the plain cross-entropy (no smoothing).
  ``xla_options``: as in ``make_train_step``.
  """
  mean = np.asarray(mean, np.float32)
  std = np.asarray(std, np.float32)

  def eval_fn(state: TrainState, batch: dict) -> dict:
    images = prepare_batch(batch["image"], mean, std, augment=False, key=state.rng)
    logits = model.apply({"params": state.params, "batch_stats": state.batch_stats}, images,
                         train=False)
    labels = batch["label"]
    mask = batch.get("mask", jnp.ones(labels.shape, jnp.float32))
    loss = cross_entropy(logits, labels, num_classes)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return {"loss_sum": jnp.sum(loss * mask), "correct": jnp.sum(correct * mask),
            "count": jnp.sum(mask)}

  return jax.jit(eval_fn,
                 in_shardings=(state_sharding, sharding_lib.batch_sharding(mesh)),
                 out_shardings=sharding_lib.replicated(mesh), compiler_options=xla_options)


def param_shapes(params) -> dict[str, list[int]]:
  """``{"Layer/kernel": shape}`` for every parameter: the fingerprint of a model's structure."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {"/".join(str(getattr(k, "key", k)) for k in path): list(v.shape)
          for path, v in flat}

