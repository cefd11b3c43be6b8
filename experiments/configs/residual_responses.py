"""He et al. (2016) Fig. 7: response stds and |F(x)| / |x| per block, plain vs ResNet, trained.

  python launch.py --experiment=residual_responses
  python launch.py --experiment=residual_responses --config=experiments/configs/residual_responses.py:demo

``demo`` trains as the depth study's demo (digits at 12×12, batch 64, 400 steps): the variant
measured in docs/experiments.md.
"""

from experiments.configs import default
from experiments.configs import depth_study


def get_config(variant: str = "full"):
  if variant == "demo":
    config = depth_study.get_config("demo")
  else:
    config = depth_study.get_config("full")
  config.models = "plain,resnet"
  config.depths = "20,56"
  config.num_examples = 256        # test images in the batch the statistics are taken on
  if variant == "tiny":
    default.tiny(config)
    config.depths = "8"
    config.num_examples = 16
  return config
