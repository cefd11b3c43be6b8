"""Training-step throughput of a CIFAR ResNet in JAX, optionally side by side with PyTorch.

  python -m bench.train_step --model=resnet --depth=20 --batch=128 [--json] \
      [--compare=torch] [--steps=N] [--repeats=R] [--grad=autodiff|hand] [--devices=D] \
      [--matmul]

prints images/s, achieved GFLOP/s (``3 x forward FLOPs x images/s``: the backward pass of a
conv costs two forward-sized products, one per operand) and the jit compile time of the step.

What is timed is one full SGD step (forward, backward, momentum 0.9 + weight decay 1e-4,
update) on one fixed random float32 batch already on the device, jit-compiled with the state
donated, so the figure is the model's compute, not the input pipeline's. With
``--compare=torch`` the PyTorch twin (``bench.torch_twin``) is timed in the same process, in
alternating repetitions (JAX ``steps`` steps, then torch ``steps`` steps, ``repeats`` times),
so load from other processes on a shared machine hits both alike; the ratio of medians is
printed. ``--matmul`` measures the float32 matmul rate in the same run and prints the step's
GFLOP/s as a fraction of it.

The model is ``cnn_jax.models.build(config)`` (the project's model) when that package is
importable, else the bench's own twin ``bench.resnet_twin.TwinResNet`` (same architecture as
the torch twin); ``--impl`` forces one. ``--grad=hand`` swaps the twin's correlation for
``bench.fast_conv.correlate`` (hand-written VJP) or sets ``config.grad="hand"`` for the
project model. ``--devices=D`` splits the batch over ``D`` fake CPU devices
(``--xla_force_host_platform_device_count``) with a ``NamedSharding`` on a "data" mesh axis
(parameters replicated; batch-norm statistics are then computed over the whole batch by an
all-reduce, the same function as on one device).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np


def _parse(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="resnet", help="only 'resnet' (CIFAR ResNet 6n+2)")
  parser.add_argument("--depth", type=int, default=20)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--image_size", type=int, default=32)
  parser.add_argument("--steps", type=int, default=5, help="timed steps per repetition")
  parser.add_argument("--repeats", type=int, default=3, help="alternating repetitions")
  parser.add_argument("--compare", default="", help="'torch' to time the PyTorch twin too")
  parser.add_argument("--grad", default="autodiff", choices=("autodiff", "hand"))
  parser.add_argument("--impl", default="auto", choices=("auto", "project", "twin"))
  parser.add_argument("--devices", type=int, default=1, help="fake CPU devices to split over")
  parser.add_argument("--matmul", action="store_true", help="measure matmul GFLOP/s too")
  parser.add_argument("--json", action="store_true", help="print one JSON object")
  args = parser.parse_args(argv)
  if args.model != "resnet":
    parser.error(f"--model={args.model!r} is not allowed: only 'resnet' is benchmarked")
  if args.compare not in ("", "torch"):
    parser.error(f"--compare={args.compare!r} is not allowed: give 'torch' or leave it out")
  for name in ("batch", "steps", "repeats", "devices", "image_size"):
    if getattr(args, name) < 1:
      parser.error(f"--{name}={getattr(args, name)} is not allowed: give an int >= 1")
  if args.batch % args.devices:
    parser.error(f"--batch={args.batch} must be divisible by --devices={args.devices}")
  from bench.resnet_twin import stage_blocks  # pylint: disable=g-import-not-at-top
  try:
    stage_blocks(args.depth)
  except ValueError as error:
    parser.error(str(error))
  return args


def build_model(args):
  """The project model if importable (or asked for), else the bench twin; returns (model, name)."""
  if args.impl in ("auto", "project"):
    try:
      from cnn_jax import models  # pylint: disable=g-import-not-at-top
      from experiments.configs import default  # pylint: disable=g-import-not-at-top
    except ImportError:
      if args.impl == "project":
        raise
    else:
      config = default.get_config()
      config.model, config.depth, config.grad = "resnet", args.depth, args.grad
      config.shortcut, config.image_size = "A", args.image_size
      with config.unlocked():
        config.num_classes = 10
      return models.build(config), "cnn_jax.models"
  from bench import resnet_twin  # pylint: disable=g-import-not-at-top
  correlate = resnet_twin.ops.correlate
  if args.grad == "hand":
    from bench import fast_conv  # pylint: disable=g-import-not-at-top
    correlate = fast_conv.correlate
  return resnet_twin.TwinResNet(depth=args.depth, correlate=correlate), "bench.resnet_twin"


def make_jax_trainer(model, batch, image_size, devices, seed=0, lr=0.1, momentum=0.9,
                     weight_decay=1e-4):
  """Compiles a donated SGD-momentum train step; returns ``(step, compile_seconds)``.

  ``step()`` runs one step and returns the loss (a device array, not waited for).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(seed)
  images = rng.standard_normal((batch, image_size, image_size, 3), dtype=np.float32)
  labels = rng.integers(0, 10, batch).astype(np.int32)
  variables = model.init(jax.random.key(seed), jnp.asarray(images[:2]), train=False)
  state = (variables["params"], variables["batch_stats"],
           jax.tree.map(jnp.zeros_like, variables["params"]))

  def loss_fn(params, batch_stats, x, y):
    logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, x,
                                  train=True, mutable=["batch_stats"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, updates["batch_stats"]

  def train_step(state, x, y):
    params, batch_stats, velocity = state
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, batch_stats, x, y)
    # torch.optim.SGD's rule: g += wd p; v = mu v + g; p -= lr v.
    grads = jax.tree.map(lambda g, p: g + weight_decay * p, grads, params)
    velocity = jax.tree.map(lambda v, g: momentum * v + g, velocity, grads)
    params = jax.tree.map(lambda p, v: p - lr * v, params, velocity)
    return (params, batch_stats, velocity), loss

  mesh = jax.make_mesh((devices,), ("data",), devices=jax.devices()[:devices])
  replicated = NamedSharding(mesh, PartitionSpec())
  sharded = NamedSharding(mesh, PartitionSpec("data"))
  state = jax.device_put(state, replicated)
  x, y = jax.device_put(images, sharded), jax.device_put(labels, sharded)
  jitted = jax.jit(train_step, donate_argnums=0, in_shardings=(replicated, sharded, sharded),
                   out_shardings=(replicated, replicated))
  start = time.perf_counter()
  compiled = jitted.lower(state, x, y).compile()
  compile_seconds = time.perf_counter() - start
  holder = {"state": state}

  def step():
    holder["state"], loss = compiled(holder["state"], x, y)
    return loss

  step().block_until_ready()  # first run: allocations, thread pools
  return step, compile_seconds


def _time_steps(step, steps, wait):
  start = time.perf_counter()
  for _ in range(steps):
    out = step()
  wait(out)
  return (time.perf_counter() - start) / steps


def run(args) -> dict:
  """Runs the benchmark described by parsed ``args``; returns the result dict."""
  if args.devices > 1:
    # Must happen before jax is imported anywhere in this process.
    if "jax" in sys.modules:
      raise RuntimeError("--devices > 1 needs XLA_FLAGS set before jax is imported")
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={args.devices}")
  import jax  # pylint: disable=g-import-not-at-top
  from bench.resnet_twin import resnet_forward_flops  # pylint: disable=g-import-not-at-top

  model, impl = build_model(args)
  jax_step, compile_seconds = make_jax_trainer(model, args.batch, args.image_size, args.devices)
  runners = {"jax": (jax_step, lambda out: out.block_until_ready())}
  if args.compare == "torch":
    from bench import torch_twin  # pylint: disable=g-import-not-at-top
    torch_step = torch_twin.make_trainer(args.depth, args.batch, args.image_size,
                                         threads=os.cpu_count())
    torch_step()  # warm-up
    runners["torch"] = (torch_step, lambda out: None)
  seconds = {name: [] for name in runners}
  for _ in range(args.repeats):
    for name, (step, wait) in runners.items():
      seconds[name].append(_time_steps(step, args.steps, wait))
  flops = resnet_forward_flops(args.depth, args.image_size)
  result = {"model": f"resnet{args.depth}", "impl": impl, "grad": args.grad,
            "batch": args.batch, "devices": args.devices, "jax_devices": len(jax.devices()),
            "compile_s": compile_seconds, "forward_mflops_per_image": flops / 1e6}
  for name, times in seconds.items():
    prefix = "" if name == "jax" else f"{name}_"
    result[f"{prefix}images_per_s"] = args.batch / statistics.median(times)
    result[f"{prefix}images_per_s_best"] = args.batch / min(times)
    result[f"{prefix}gflops"] = 3 * flops * result[f"{prefix}images_per_s"] / 1e9
  if "torch" in seconds:
    result["jax_over_torch"] = result["images_per_s"] / result["torch_images_per_s"]
  if args.matmul:
    from bench import matmul  # pylint: disable=g-import-not-at-top
    peak = matmul.measure(size=1024, repeats=5)
    result["matmul_gflops"] = peak["jax_gflops"]
    result["numpy_matmul_gflops"] = peak["numpy_gflops"]
    result["fraction_of_matmul"] = result["gflops"] / max(peak["jax_gflops"],
                                                          peak["numpy_gflops"])
  result["load_avg"] = os.getloadavg()[0]
  return result


def main(argv=None):
  args = _parse(argv)
  try:
    result = run(args)
  except ImportError as error:
    if "torch" in str(error):
      print(str(error))
      raise SystemExit(1) from None
    raise
  if args.json:
    print(json.dumps(result))
    return
  print(f"{result['model']} ({result['impl']}, grad={result['grad']}), batch {args.batch}, "
        f"{args.devices} device(s), median of {args.repeats} x {args.steps} steps, "
        f"load avg {result['load_avg']:.2f}")
  print(f"  JAX    {result['images_per_s']:8.1f} images/s  {result['gflops']:6.1f} GFLOP/s  "
        f"compile {result['compile_s']:.2f} s")
  if "torch_images_per_s" in result:
    print(f"  torch  {result['torch_images_per_s']:8.1f} images/s  "
          f"{result['torch_gflops']:6.1f} GFLOP/s")
    print(f"  JAX / torch = {result['jax_over_torch']:.2f}")
  if "matmul_gflops" in result:
    print(f"  matmul: JAX {result['matmul_gflops']:.1f}, NumPy {result['numpy_matmul_gflops']:.1f} "
          f"GFLOP/s; train step = {100 * result['fraction_of_matmul']:.0f}% of the best")


if __name__ == "__main__":
  main()
