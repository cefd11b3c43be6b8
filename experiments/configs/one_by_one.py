"""1×1 study: a bottleneck's 1×1 reduce learned, replaced by depth average pooling, or fixed.

  python launch.py --experiment=one_by_one
  python launch.py --experiment=one_by_one --config=experiments/configs/one_by_one.py:small

``small`` is the variant measured in docs/experiments.md (a few minutes on 2 cores).
"""

from experiments.configs import default


def get_config(variant: str = "full"):
  config = default.get_config()
  config.model = "bottleneck"
  config.depth = 29
  config.reduce = "conv"           # conv | depth_avg | fixed_random (models/bottleneck.py)
  config.variants = "reduce=conv;reduce=depth_avg;reduce=fixed_random"
  config.dataset = "digits"
  config.image_size = 16
  config.num_steps = 300
  config.eval_every = 50
  if variant == "small":
    config.depth = 11
    config.image_size = 12
    config.batch_size = 64
    config.num_steps = 300
    config.eval_every = 100
  if variant == "tiny":
    default.tiny(config)
    config.depth = 11
  return config
