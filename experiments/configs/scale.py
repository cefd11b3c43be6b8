"""Scale study: dense vs locally connected vs shared (convolutional) layers.

  python launch.py --experiment=scale

Part 1 counts parameters and multiply-adds of one layer mapping an n×n image to an n×n map, for
each n in ``sizes`` (dense O(n²)→ here n⁴ weights for n² pixels, local O(n²) = O(pixels),
shared O(1)). Part 2 trains ``models`` on ``train_sizes`` examples and plots test accuracy
against training-set size (fewer parameters ⇒ less data needed).
"""

from experiments.configs import default


def get_config(variant: str = "full"):
  config = default.small_study_recipe(default.get_config())
  config.sizes = "8,16,32,64,128,224"
  config.models = "mlp,local,simple_cnn"
  config.train_sizes = "50,100,200,500,1000"
  config.depth = 2                 # mlp: 2 dense layers; simple_cnn/local: 2 conv-pool blocks
  config.downsample = "pool"
  config.dataset = "digits"
  config.image_size = 16
  config.num_steps = 300
  config.eval_every = 100
  if variant == "small":  # measured in docs/experiments.md (a few minutes on 2 cores)
    config.train_sizes = "50,200,1000"
    config.image_size = 12
    config.num_steps = 200
  if variant == "tiny":
    default.tiny(config)
    config.sizes = "8,16,32"
    config.models = "mlp,simple_cnn"
    config.train_sizes = "32,64"
  return config
