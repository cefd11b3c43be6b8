"""Effective receptive field (Luo et al. 2016) at init and after training, plain vs ResNet.

  python launch.py --experiment=effective_field
  python launch.py --experiment=effective_field --config=experiments/configs/effective_field.py:demo

``demo`` trains as the depth study's demo (digits at 12×12, batch 64, 400 steps): the variant
measured in docs/experiments.md. The 20-layer nets' theoretical field (81×81) covers all of
a 12×12 image, so there ``fraction_of_field`` is the fraction of the image.
"""

from experiments.configs import default
from experiments.configs import depth_study


def get_config(variant: str = "full"):
  config = depth_study.get_config("demo" if variant == "demo" else "full")
  config.models = "plain,resnet"
  config.depth = 20
  config.num_examples = 64         # test images the gradient maps are averaged over
  config.num_inits = 4             # random initialisations averaged for the "init" maps
  if variant == "tiny":
    default.tiny(config)
    config.depth = 8
    config.num_examples = 4
    config.num_inits = 2
  return config
