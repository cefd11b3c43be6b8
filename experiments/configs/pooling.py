"""Pooling study: max vs average vs Gaussian-weighted average vs L2 pooling.

  python launch.py --experiment=pooling
"""

from experiments.configs import default


def get_config(variant: str = "full"):
  config = default.small_study_recipe(default.get_config())
  config.model = "simple_cnn"
  config.depth = 2
  config.downsample = "pool"
  config.dataset = "digits"
  config.image_size = 16
  config.num_steps = 400
  config.eval_every = 100
  config.variants = "pool=max;pool=avg;pool=weighted;pool=l2"
  config.shifts = "0,1,2,3"
  if variant == "tiny":
    default.tiny(config)
    config.variants = "pool=max;pool=l2"
    config.shifts = "0,1"
  return config
