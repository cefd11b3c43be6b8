"""1-D study: dense vs locally connected vs shared layers on signals1d, against data.

  python launch.py --experiment=signals1d
"""

from experiments.configs import default


def get_config(variant: str = "full"):
  config = default.small_study_recipe(default.get_config())
  config.dataset = "signals1d"
  config.signal_length = 64
  config.models = "mlp,local,simple_cnn"
  config.train_sizes = "50,100,200,500,1000,5000"
  config.depth = 2                 # mlp: 2 dense layers; local/simple_cnn: 2 conv-pool blocks
  config.width = 16                # local/simple_cnn filters (their own default, stated: the
                                   # study's parameter counts are read from it)
  config.downsample = "pool"
  config.head = "global_avg"       # local/simple_cnn: no flatten, so the counts show sharing
  config.num_steps = 300
  config.eval_every = 100
  if variant == "small":  # measured in docs/experiments.md
    config.train_sizes = "50,200,1000,5000"
    config.num_steps = 200
  if variant == "tiny":
    default.tiny(config)
    config.dataset = "signals1d"
    config.models = "mlp,simple_cnn"
    config.train_sizes = "32,64"
  return config
