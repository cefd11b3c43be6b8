"""Translation study: MLP vs CNN (flatten head) vs CNN (global-pooling head) at unseen shifts.

  python launch.py --experiment=translation

Trains on ``translated`` digits whose left edge lies in the left half of the canvas, then tests
every model on the test digits placed at every horizontal offset: accuracy against shift.
"""

from experiments.configs import default


def get_config(variant: str = "full"):
  config = default.small_study_recipe(default.get_config())
  config.dataset = "translated"
  config.translated_split = "left_right"
  config.image_size = 16
  config.depth = 2
  config.downsample = "pool"
  config.num_steps = 600
  config.eval_every = 100
  config.variants = "model=mlp;model=simple_cnn,head=flatten;model=simple_cnn,head=global_avg"
  if variant == "tiny":
    default.tiny(config)
    config.dataset = "translated"
    config.image_size = 16
  return config
