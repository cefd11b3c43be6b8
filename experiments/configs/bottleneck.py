"""Bottleneck study: 1×1 convolutions (weighted pooling along depth) save parameters and FLOPs.

  python launch.py --experiment=bottleneck

Compares basic-block ResNets (depth 6n+2) with bottleneck ResNets (1×1 → 3×3 → 1×1, depth 9n+2)
of similar depth: parameters, multiply-adds and accuracy.
"""

from experiments.configs import default


def get_config(variant: str = "full"):
  config = default.get_config()
  config.variants = "model=resnet,depth=20;model=bottleneck,depth=20;model=resnet,depth=56;model=bottleneck,depth=56"
  config.dataset = "digits"
  config.image_size = 16
  config.num_steps = 300
  config.eval_every = 50
  if variant == "small":  # measured in docs/experiments.md (a few minutes on 2 cores)
    config.variants = "model=resnet,depth=8;model=bottleneck,depth=11;model=resnet,depth=20;model=bottleneck,depth=20"
    config.image_size = 12
    config.batch_size = 64
    config.num_steps = 200
  if variant == "tiny":
    default.tiny(config)
    config.variants = "model=resnet,depth=8;model=bottleneck,depth=11"
  return config
