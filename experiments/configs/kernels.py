"""Kernels study: what many kernels per layer specialise into.

  python launch.py --experiment=kernels
"""

from experiments.configs import default


def get_config(variant: str = "full"):
  config = default.small_study_recipe(default.get_config())
  config.model = "simple_cnn"
  config.depth = 3
  config.width = 16
  config.downsample = "pool"
  config.dataset = "shapes10"
  config.image_size = 32
  config.num_steps = 600
  config.eval_every = 100
  config.example_index = 0
  if variant == "tiny":
    default.tiny(config)
    config.dataset = "shapes10"
    config.image_size = 16
    config.depth = 2
    config.width = 4
  return config
