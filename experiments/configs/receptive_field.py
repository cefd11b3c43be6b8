"""Receptive field study: analytic vs measured, against depth, stride, pooling and dilation.

  python launch.py --experiment=receptive_field
"""

from experiments.configs import default


def get_config(variant: str = "full"):
  config = default.get_config()
  config.depths = "1,2,3,4,6,8"
  config.erf_depths = "2,4,8,16,32"
  config.erf_samples = 16
  config.zoo_models = "plain-20,resnet-20,resnet-56,simple_cnn-2"
  config.image_size = 32
  config.input_channels = 3
  if variant == "tiny":
    config.depths = "1,2,3"
    config.erf_depths = "2,4"
    config.erf_samples = 2
    config.zoo_models = "resnet-8"
    config.image_size = 16
  return config
