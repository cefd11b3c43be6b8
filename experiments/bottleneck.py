"""Bottleneck blocks: 1×1 convolutions, weighted pooling along depth, save parameters and FLOPs.

Basic-block ResNets against bottleneck ResNets of similar depth: parameters, MACs, accuracy.

  python launch.py --experiment=bottleneck [--config.variants="field=v,...;field=v,..."]
"""

from experiments import study


def run(config, workdir):
  return study.compare_variants(config, workdir, title="test error: basic vs bottleneck blocks",
                                extra_columns=("model", "depth"))


if __name__ == "__main__":
  import launch  # pylint: disable=g-import-not-at-top
  launch.entry("bottleneck")
