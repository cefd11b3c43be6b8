"""Training-step throughput of a CIFAR ResNet in JAX, optionally side by side with PyTorch.

  python -m bench.train_step --model=resnet --depth=20 --batch=128 [--json] \
      [--compare=torch] [--torch_threads=T,...] [--steps=N] [--repeats=R]
      [--grad=autodiff,hand,...] [--devices=D,...]
      [--kernels=auto,xla,native:direct,native:winograd2,native:auto_winograd4,...]
      [--dtype=float32,bfloat16]
      [--[no]scan | --blocks=scan,unrolled] [--compile_only] [--matmul [--matmul_size=4096]]

prints images/s, achieved GFLOP/s (``3 x forward FLOPs x images/s``: the backward pass of a
conv costs two forward-sized products, one per operand) and the jit compile time of the step.

What is timed is one full SGD step (forward, backward, momentum 0.9 + weight decay 1e-4,
update) on one fixed random float32 batch already on the device, jit-compiled with the state
donated, so the figure is the model's compute, not the input pipeline's. With
``--compare=torch`` the PyTorch twin (``bench.torch_twin``) is timed in the same process, in
alternating repetitions (JAX ``steps`` steps, then torch ``steps`` steps, ``repeats`` times),
so load from other processes on a shared machine hits both alike; the ratio of medians is
printed; then torch is timed again alone, in a process of its own
(``bench.torch_twin.alone_in_subprocess``), and the first JAX variant's ratio to that is
printed too. ``--matmul`` measures the float32 matmul rate in the same run (a ``--matmul_size``²
product, 4096 by default; JAX reaches the machine's rate only on large products) and prints
the step's GFLOP/s as a fraction of the faster of JAX's and NumPy's.

The model is ``cnn_jax.models.build(config)`` (the project's model) when that package is
importable, else the bench's own twin ``bench.resnet_twin.TwinResNet`` (same architecture as
the torch twin); ``--impl`` forces one. ``--grad=hand`` sets ``config.grad="hand"`` for the
project model, or swaps the twin's correlation for ``cnn_jax.ops.hand.correlate``
(hand-written VJP, ``weight_method="auto"``; ``hand-conv`` and ``hand-taps`` force one
weight-gradient formulation, twin only). ``--devices=D``
splits the batch over ``D`` fake CPU devices
(``--xla_force_host_platform_device_count``) with a ``NamedSharding`` on a "data" mesh axis
(parameters replicated; batch-norm statistics are then computed over the whole batch by an
all-reduce, the same function as on one device). ``--grad`` and ``--devices`` take
comma-separated lists; every combination is compiled and timed, alternating, in one process
(so ``--devices=1,2`` compares one device with two fake ones under the same load).
With no ``--grad`` and ``--kernels`` the step is the trainer's default path
(``experiments/configs/default.py``: ``grad="hand"``, ``kernels="auto"``,
``conv_algorithm="autotune"``: the native kernels where they apply, cnn_jax/native, each
layer on the kernel measured fastest for its shape), compiled with the trainer's XLA options
(``cnn_jax.train.steps.compiler_options``).
``--kernels=auto,xla,native:direct,...`` times each choice in the same run: ``xla`` the pure
ops (the path on GPU/TPU), ``native:ALGORITHM`` the native kernels with that
``conv_algorithm`` (``cnn_jax.native.CONV_ALGORITHMS``). Every figure is printed with the CPU
model (``lscpu``) it was measured on.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np


GRADS = ("autodiff", "hand", "hand-conv", "hand-taps")
# The trainer's kernel choices (cnn_jax.native.KERNELS, CONV_ALGORITHMS), spelled out: the
# bench runs without the project package too.
KERNEL_CHOICES = ("auto", "xla") + tuple(
    f"native:{a}" for a in ("auto", "auto_winograd4", "autotune", "autotune_winograd4",
                            "direct", "winograd2", "winograd4"))


def cpu_model() -> str:
  """The CPU's model name, as ``lscpu`` shows it, for every figure."""
  from cnn_jax.native import autotune  # pylint: disable=g-import-not-at-top
  return autotune.cpu_model()


def _parse(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="resnet", help="only 'resnet' (CIFAR ResNet 6n+2)")
  parser.add_argument("--depth", type=int, default=20)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--image_size", type=int, default=32)
  parser.add_argument("--steps", type=int, default=5, help="timed steps per repetition")
  parser.add_argument("--repeats", type=int, default=3, help="alternating repetitions")
  parser.add_argument("--compare", default="", help="'torch' to time the PyTorch twin too")
  parser.add_argument("--grad", default="hand",
                      help="comma-separated: autodiff, hand (ops.hand, weight_method=auto; the "
                      "trainer's default), hand-conv, hand-taps (twin only: that weight_method)")
  parser.add_argument("--impl", default="auto", choices=("auto", "project", "twin"))
  parser.add_argument("--devices", default="1",
                      help="comma-separated numbers of fake CPU devices to split the batch over")
  parser.add_argument("--torch_threads", default="",
                      help="comma-separated torch thread counts (default: the machine's cores)")
  parser.add_argument("--scan", action=argparse.BooleanOptionalAction, default=None,
                      help="nn.scan over each stage's repeated blocks (--noscan: unrolled); "
                      "default: the project model scans with grad=hand and unrolls with "
                      "grad=autodiff (what runs fast on CPU, docs/models.md), the twin unrolls")
  parser.add_argument("--blocks", default="",
                      help="comma-separated: scan, unrolled; time each (as --scan / --noscan) "
                      "in the same run; scan runs stages of >= min_scanned_blocks (9) repeated "
                      "blocks under nn.scan, so ResNet-56 is unrolled either way")
  parser.add_argument("--kernels", default="auto",
                      help="comma-separated: auto (the trainer's default: kernels=auto, "
                      "conv_algorithm=autotune), xla (the pure ops), native:ALGORITHM (kernels=native "
                      "with conv_algorithm=ALGORITHM: auto, auto_winograd4, autotune, "
                      "autotune_winograd4, direct, winograd2, winograd4); see cnn_jax/native/choice.py")
  parser.add_argument("--dtype", default="float32",
                      help="comma-separated compute dtypes of the project model: float32, "
                      "bfloat16 (parameters stay float32; the twin is float32 only)")
  parser.add_argument("--compile_only", action="store_true",
                      help="only compile the JAX step(s) and print the compile time")
  parser.add_argument("--matmul", action="store_true", help="measure matmul GFLOP/s too")
  parser.add_argument("--matmul_size", type=int, default=4096,
                      help="side of the --matmul product (4096: the machine's large-matmul "
                           "rate; 1024 was used before 453653c (2026-11-24) and is ~25%% lower "
                           "in JAX)")
  parser.add_argument("--json", action="store_true", help="print one JSON object")
  args = parser.parse_args(argv)
  if args.model != "resnet":
    parser.error(f"--model={args.model!r} is not allowed: only 'resnet' is benchmarked")
  if args.compare not in ("", "torch"):
    parser.error(f"--compare={args.compare!r} is not allowed: give 'torch' or leave it out")
  for name in ("batch", "steps", "repeats", "image_size", "matmul_size"):
    if getattr(args, name) < 1:
      parser.error(f"--{name}={getattr(args, name)} is not allowed: give an int >= 1")
  try:
    args.torch_threads_list = ([int(t) for t in args.torch_threads.split(",")]
                               if args.torch_threads else [os.cpu_count() or 1])
  except ValueError:
    parser.error(f"--torch_threads={args.torch_threads!r} is not allowed: give ints >= 1")
  if min(args.torch_threads_list) < 1:
    parser.error(f"--torch_threads={args.torch_threads!r} is not allowed: give ints >= 1")
  args.grad_list = args.grad.split(",")
  for grad in args.grad_list:
    if grad not in GRADS:
      parser.error(f"--grad: {grad!r} is not allowed: give some of {', '.join(GRADS)}")
  try:
    args.devices_list = [int(d) for d in args.devices.split(",")]
  except ValueError:
    parser.error(f"--devices={args.devices!r} is not allowed: give comma-separated ints >= 1")
  args.dtype_list = args.dtype.split(",")
  for value in args.dtype_list:
    if value not in ("float32", "bfloat16"):
      parser.error(f"--dtype: {value!r} is not allowed: give some of float32, bfloat16")
  if args.dtype_list != ["float32"] and args.impl == "twin":
    parser.error("--dtype: the bench twin computes in float32 only; use --impl=project")
  args.blocks_list = args.blocks.split(",") if args.blocks else [None]
  for value in args.blocks_list:
    if value not in (None, "scan", "unrolled"):
      parser.error(f"--blocks: {value!r} is not allowed: give some of scan, unrolled")
  if args.blocks and args.scan is not None:
    parser.error("--blocks and --[no]scan are not allowed together: give one")
  args.kernels_list = args.kernels.split(",")
  for value in args.kernels_list:
    if value not in KERNEL_CHOICES:
      parser.error(f"--kernels: {value!r} is not allowed: give some of "
                   f"{', '.join(KERNEL_CHOICES)}")
  for devices in args.devices_list:
    if devices < 1 or args.batch % devices:
      parser.error(f"--devices: {devices} is not allowed: give ints >= 1 dividing "
                   f"--batch={args.batch}")
  # Checked here without importing bench.resnet_twin: jax must not be imported before
  # --devices has set XLA_FLAGS.
  if args.depth < 8 or (args.depth - 2) % 6:
    parser.error(f"--depth={args.depth} is not allowed: a CIFAR ResNet has depth 6n+2 "
                 "(8, 14, 20, 32, 44, 56, 110, ...)")
  return args


def build_model(args, grad, dtype="float32", kernels="auto", devices=1):
  """The project model if importable (or asked for), else the bench twin; returns (model, name).

  ``grad`` is one of ``GRADS``; the "hand-*" variants differ only for the twin. ``dtype``:
  the project model's compute dtype (``config.dtype``). ``kernels``: one of
  ``KERNEL_CHOICES``, for the project model on ``devices`` devices.
  """
  if args.impl in ("auto", "project"):
    try:
      from cnn_jax import models  # pylint: disable=g-import-not-at-top
      from experiments.configs import default  # pylint: disable=g-import-not-at-top
    except ImportError:
      if args.impl == "project":
        raise
    else:
      config = default.get_config()
      config.model, config.depth = "resnet", args.depth
      config.grad = "hand" if grad.startswith("hand") else "autodiff"
      config.shortcut, config.image_size, config.dtype = "A", args.image_size, dtype
      config.scan_blocks = config.grad == "hand" if args.scan is None else args.scan
      config.kernels, _, algorithm = kernels.partition(":")
      config.conv_algorithm = algorithm or config.conv_algorithm  # "auto": the default's
      with config.unlocked():
        config.num_classes = 10
      return models.build(config, num_devices=devices), "cnn_jax.models"
  if dtype != "float32":
    raise ValueError(f"dtype={dtype!r}: the bench twin computes in float32 only")
  from bench import resnet_twin  # pylint: disable=g-import-not-at-top
  correlate = resnet_twin.ops.correlate
  if grad.startswith("hand"):
    import functools  # pylint: disable=g-import-not-at-top
    from cnn_jax.ops import hand  # pylint: disable=g-import-not-at-top
    correlate = functools.partial(hand.correlate,
                                  weight_method={"hand": "auto", "hand-conv": "conv",
                                                 "hand-taps": "taps"}[grad])
  return (resnet_twin.TwinResNet(depth=args.depth, correlate=correlate, scan=bool(args.scan)),
          "bench.resnet_twin" + (" (scan)" if args.scan else ""))


def make_jax_trainer(model, batch, image_size, devices, seed=0, lr=0.1, momentum=0.9,
                     weight_decay=1e-4, run_once=True, xla_options=None):
  """Compiles a donated SGD-momentum train step; returns ``(step, compile_seconds)``.

  ``xla_options``: XLA compiler options for the step (``cnn_jax.train.steps.compiler_options``).

  ``step()`` runs one step and returns the loss (a device array, not waited for).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec  # pylint: disable=g-import-not-at-top
  from cnn_jax import native  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(seed)
  images = rng.standard_normal((batch, image_size, image_size, 3), dtype=np.float32)
  labels = rng.integers(0, 10, batch).astype(np.int32)
  variables = native.without_tuning(model).init(jax.random.key(seed), jnp.asarray(images[:2]),
                                                train=False)
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

  # Auto (GSPMD) axes: with jax 0.10's default Explicit axes, a conv that contracts the
  # sharded batch (the weight gradient written by hand) must be given an out_sharding.
  mesh = jax.make_mesh((devices,), ("data",), devices=jax.devices()[:devices],
                       axis_types=(jax.sharding.AxisType.Auto,))
  replicated = NamedSharding(mesh, PartitionSpec())
  sharded = NamedSharding(mesh, PartitionSpec("data"))
  state = jax.device_put(state, replicated)
  x, y = jax.device_put(images, sharded), jax.device_put(labels, sharded)
  jitted = jax.jit(train_step, donate_argnums=0, in_shardings=(replicated, sharded, sharded),
                   out_shardings=(replicated, replicated), compiler_options=xla_options)
  start = time.perf_counter()
  compiled = jitted.lower(state, x, y).compile()
  compile_seconds = time.perf_counter() - start
  holder = {"state": state}

  def step():
    holder["state"], loss = compiled(holder["state"], x, y)
    return loss

  if run_once:
    step().block_until_ready()  # first run: allocations, thread pools
  return step, compile_seconds


def _time_steps(step, steps, wait):
  start = time.perf_counter()
  for _ in range(steps):
    out = step()
  wait(out)
  return (time.perf_counter() - start) / steps


def _variants(args):
  """(grad, devices, kernels, dtype, blocks) to time, from the comma-separated
  ``--grad``, ``--devices``, ``--kernels``, ``--dtype`` and ``--blocks``."""
  return [(g, d, c, t, b) for b in args.blocks_list for t in args.dtype_list
          for c in args.kernels_list for d in args.devices_list for g in args.grad_list]


def with_blocks(args, blocks):
  """``args`` for ``build_model`` with the block form of a ``--blocks`` variant set as ``scan``
  (``blocks`` None: ``args`` as they are)."""
  if blocks is None:
    return args
  return argparse.Namespace(**{**vars(args), "scan": blocks == "scan"})


def run(args) -> dict:
  """Runs the benchmark described by parsed ``args``; returns the result dict.

  Every (grad, devices) variant and the torch twin are timed in alternating repetitions; the
  first variant's figures are also the top-level ``images_per_s``, ``gflops``, ``compile_s``.
  """
  max_devices = max(args.devices_list)
  if max_devices > 1:
    # Must happen before jax is imported anywhere in this process. The collective timeout is
    # raised because on a loaded 2-core machine one fake device's thread can be descheduled
    # long enough for XLA's default to abort with "Termination timeout for all reduce".
    if "jax" in sys.modules:
      raise RuntimeError("--devices > 1 needs XLA_FLAGS set before jax is imported")
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") +
        f" --xla_force_host_platform_device_count={max_devices}"
        " --xla_cpu_collective_call_terminate_timeout_seconds=600")
  import jax  # pylint: disable=g-import-not-at-top
  from bench.resnet_twin import resnet_forward_flops  # pylint: disable=g-import-not-at-top

  runners, compile_seconds, impl = {}, {}, None
  from cnn_jax.train import steps as steps_lib  # pylint: disable=g-import-not-at-top
  for grad, devices, kernels, dtype, blocks in _variants(args):
    label = f"jax_{grad}_{devices}dev"
    if len(args.blocks_list) > 1:
      label += f"_{blocks}"
    if len(args.kernels_list) > 1:
      label += f"_{kernels.replace(':', '_')}"
    if dtype != "float32":
      label += f"_{dtype}"
    model, impl = build_model(with_blocks(args, blocks), grad, dtype, kernels, devices)
    step, compile_seconds[label] = make_jax_trainer(
        model, args.batch, args.image_size, devices, run_once=not args.compile_only,
        xla_options=steps_lib.compiler_options())
    runners[label] = (step, lambda out: out.block_until_ready())
  if args.compile_only:
    return {"model": f"resnet{args.depth}", "impl": impl, "batch": args.batch,
            "backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
            "cpu_model": cpu_model(),
            "compile_s": compile_seconds[next(iter(compile_seconds))],
            "variants": {k: {"compile_s": v} for k, v in compile_seconds.items()},
            "load_avg": os.getloadavg()[0]}
  if args.compare == "torch":
    from bench import torch_twin  # pylint: disable=g-import-not-at-top
    for threads in args.torch_threads_list:
      # Each torch trainer sets the process-wide thread count; set it again before each step.
      torch_step = torch_twin.make_trainer(args.depth, args.batch, args.image_size,
                                           threads=threads)
      torch_step()  # warm-up

      def step_with_threads(step=torch_step, threads=threads):
        torch_twin.import_torch().set_num_threads(threads)
        return step()

      name = "torch" if len(args.torch_threads_list) == 1 else f"torch_{threads}threads"
      runners[name] = (step_with_threads, lambda out: None)
  seconds = {name: [] for name in runners}
  for _ in range(args.repeats):
    for name, (step, wait) in runners.items():
      seconds[name].append(_time_steps(step, args.steps, wait))
  flops = resnet_forward_flops(args.depth, args.image_size)
  variants = {}
  for name, times in seconds.items():
    variants[name] = {
        "images_per_s": args.batch / statistics.median(times),
        "images_per_s_best": args.batch / min(times),
        "gflops": 3 * flops * args.batch / statistics.median(times) / 1e9,
    }
    if name in compile_seconds:
      variants[name]["compile_s"] = compile_seconds[name]
  first = next(iter(compile_seconds))
  result = {"model": f"resnet{args.depth}", "impl": impl, "batch": args.batch,
            "backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
            "cpu_model": cpu_model(), "jax_devices": len(jax.devices()),
            "forward_mflops_per_image": flops / 1e6,
            "images_per_s": variants[first]["images_per_s"],
            "gflops": variants[first]["gflops"], "compile_s": compile_seconds[first],
            "variants": variants}
  torch_names = [name for name in variants if name.startswith("torch")]
  if torch_names:
    # The reference is the first torch entry: the machine's cores unless --torch_threads says.
    result["torch_images_per_s"] = variants[torch_names[0]]["images_per_s"]
    result["jax_over_torch"] = result["images_per_s"] / result["torch_images_per_s"]
    for variant in variants.values():
      variant["over_torch"] = variant["images_per_s"] / result["torch_images_per_s"]
    # Torch again, alone in a process of its own: no JAX threads or memory beside it.
    result["torch_alone_images_per_s"] = torch_twin.alone_in_subprocess(
        args.depth, args.batch, args.image_size, args.steps, args.repeats)
    result["jax_over_torch_alone"] = (result["images_per_s"]
                                      / result["torch_alone_images_per_s"])
  if args.matmul:
    from bench import matmul  # pylint: disable=g-import-not-at-top
    peak = matmul.measure(size=args.matmul_size, repeats=3)
    result["matmul_size"] = args.matmul_size
    result["matmul_gflops"] = peak["jax_gflops"]
    result["numpy_matmul_gflops"] = peak["numpy_gflops"]
    best = max(peak["jax_gflops"], peak["numpy_gflops"])
    for variant in variants.values():
      variant["fraction_of_matmul"] = variant["gflops"] / best
    result["fraction_of_matmul"] = result["gflops"] / best
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
  print(f"{result['model']} ({result['impl']}) on {result['backend']} "
        f"({result['cpu_model']}), batch {args.batch}, median of "
        f"{args.repeats} alternating repetitions x {args.steps} steps, "
        f"load avg {result['load_avg']:.2f}")
  for name, v in result["variants"].items():
    if args.compile_only:
      print(f"  {name:22s} compile {v['compile_s']:6.2f} s")
      continue
    line = f"  {name:22s} {v['images_per_s']:8.1f} images/s  {v['gflops']:6.1f} GFLOP/s"
    if "compile_s" in v:
      line += f"  compile {v['compile_s']:6.2f} s"
    if "over_torch" in v and not name.startswith("torch"):
      line += f"  x{v['over_torch']:.2f} torch"
    if "fraction_of_matmul" in v:
      line += f"  {100 * v['fraction_of_matmul']:.0f}% of matmul"
    print(line)
  if "torch_alone_images_per_s" in result:
    print(f"  torch alone (own process) {result['torch_alone_images_per_s']:8.1f} images/s  "
          f"first JAX variant x{result['jax_over_torch_alone']:.2f}")
  if "matmul_gflops" in result:
    print(f"  matmul {result['matmul_size']}^2 in the same run: JAX "
          f"{result['matmul_gflops']:.1f}, NumPy "
          f"{result['numpy_matmul_gflops']:.1f} GFLOP/s")

if __name__ == "__main__":
  main()
