"""Grid study: convolutions assume grid-like data.

  python launch.py --experiment=grid

One fixed random permutation of pixel positions is applied to train and test images. An MLP
does not see pixel order, so its accuracy stays the same; a CNN's locality prior is broken,
so its accuracy drops.
"""

from experiments.configs import default


def get_config(variant: str = "full"):
  config = default.small_study_recipe(default.get_config())
  config.models = "mlp,simple_cnn"
  config.depth = 2                 # mlp: 2 dense layers; simple_cnn/local: 2 conv-pool blocks
  config.downsample = "pool"
  # shapes10, not digits: on 8x8 digits upsampled to 16x16 even a CNN does as well on
  # permuted pixels (measured: 0.975 -> 0.978), so the caveat only shows on richer images.
  config.dataset = "shapes10"
  config.image_size = 16
  config.num_steps = 400
  config.eval_every = 100
  config.permutation_seed = 1234
  if variant == "tiny":
    default.tiny(config)
  return config
