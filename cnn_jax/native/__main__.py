"""``python -m cnn_jax.native build|status|autotune``: build the native library, say whether
it loads, or autotune a CIFAR ResNet's convolutions and print the table of choices and times.

  python -m cnn_jax.native autotune [--depth=20] [--batch=128] [--image_size=32] [--winograd4]
"""

import argparse
import sys


def autotune(argv) -> int:
  """Traces a ResNet's train-mode forward and backward with ``conv_algorithm=autotune`` (each
  new layer shape is measured and cached) and prints the cached table."""
  parser = argparse.ArgumentParser(prog="python -m cnn_jax.native autotune")
  parser.add_argument("--depth", type=int, default=20)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--image_size", type=int, default=32)
  parser.add_argument("--winograd4", action="store_true",
                      help="let F(4x4, 3x3) compete (its rounding is 10-20x F(2x2)'s)")
  args = parser.parse_args(argv)
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from cnn_jax import models  # pylint: disable=g-import-not-at-top
  from cnn_jax.native import autotune as autotune_lib  # pylint: disable=g-import-not-at-top
  from experiments.configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config.update(model="resnet", depth=args.depth, grad="hand", kernels="native",
                conv_algorithm="autotune_winograd4" if args.winograd4 else "autotune")
  with config.unlocked():
    config.num_classes = 10
  try:
    model = models.build(config, num_devices=1)
  except ValueError as error:
    print(error, file=sys.stderr)
    return 2
  x = jnp.zeros((args.batch, args.image_size, args.image_size, 3), jnp.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=True))
  jax.eval_shape(lambda v: jax.grad(lambda p: jnp.sum(model.apply(
      {**v, "params": p}, x, train=True, mutable=["batch_stats"])[0]))(v["params"]), variables)
  print(autotune_lib.table())
  return 0


def main(argv=None) -> int:
  """Prints one line; ``build`` exits 0 either way (the pure path runs without the library)."""
  args = sys.argv[1:] if argv is None else argv
  if args == ["build"]:
    from cnn_jax.native import build  # pylint: disable=g-import-not-at-top
    print(build.build()[1])
    return 0
  if args == ["status"]:
    from cnn_jax.native import ffi  # pylint: disable=g-import-not-at-top
    reason = ffi.unavailable_reason()
    print("native kernels: " + ("available" if reason is None else f"unavailable: {reason}"))
    return 0
  if args[:1] == ["autotune"]:
    return autotune(args[1:])
  print("usage: python -m cnn_jax.native build|status|autotune", file=sys.stderr)
  return 2


if __name__ == "__main__":
  sys.exit(main())
