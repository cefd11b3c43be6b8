"""Stride sweep: strides per stage, first-layer stride, strided conv vs pooling.

Side by side for each variant: accuracy, receptive field, FLOPs and images/s. Larger strides
downsample earlier: fewer FLOPs and a faster-growing receptive field, at some cost in accuracy
on small images.

  python launch.py --experiment=stride_sweep [--config.variants="field=v,...;field=v,..."]
"""

from experiments import study


def run(config, workdir):
  return study.compare_variants(config, workdir, title="test error by downsampling scheme",
                                extra_columns=("stride", "first_stride", "downsample"))


if __name__ == "__main__":
  import launch  # pylint: disable=g-import-not-at-top
  launch.entry("stride_sweep")
