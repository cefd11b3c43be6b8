"""Stride sweep: where and how a net downsamples, against accuracy, receptive field and cost.

  python launch.py --experiment=stride_sweep
  python launch.py --experiment=stride_sweep --config.variants="stride=2;stride=1;first_stride=2"

Each ``;``-separated item of ``variants`` is one run's overrides of the base config.
"""

from experiments.configs import default


def get_config(variant: str = "full"):
  config = default.get_config()
  config.model = "resnet"
  config.depth = 20
  config.dataset = "digits"
  config.image_size = 16
  config.num_steps = 300
  config.eval_every = 50
  config.variants = ("stride=2,first_stride=1,downsample=conv;"
                     "stride=2,first_stride=2,downsample=conv;"
                     "stride=2,first_stride=1,downsample=pool;"
                     "stride=1,first_stride=1,downsample=conv")
  if variant == "small":  # measured in docs/experiments.md (a few minutes on 2 cores)
    config.depth = 8
    config.image_size = 12
    config.batch_size = 64
    config.num_steps = 200
  if variant == "tiny":
    default.tiny(config)
    config.depth = 8
    config.variants = "stride=2;stride=2,downsample=pool"
  return config
