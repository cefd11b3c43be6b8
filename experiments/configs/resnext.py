"""ResNeXt study: cardinality against width at about equal parameters (Xie et al. 2017 Tab. 2).

  python launch.py --experiment=resnext

Each item of ``variants`` sets cardinality C and bottleneck width d (per group); the table
shows that splitting the same budget into more, thinner paths keeps parameters and FLOPs
about equal and compares accuracy.
"""

from experiments.configs import default


def get_config(variant: str = "full"):
  config = default.get_config()
  config.model = "resnext"
  config.depth = 11
  config.dataset = "digits"
  config.image_size = 16
  config.num_steps = 300
  config.eval_every = 50
  config.variants = "cardinality=1,width=16;cardinality=2,width=10;cardinality=4,width=6;cardinality=8,width=4"
  if variant == "small":  # measured in docs/experiments.md (a few minutes on 2 cores)
    config.image_size = 12
    config.batch_size = 64
    config.num_steps = 200
  if variant == "tiny":
    default.tiny(config)
    config.variants = "cardinality=1,width=8;cardinality=4,width=2"
  return config
