"""ResNeXt: cardinality against width at about equal parameters (Xie et al. 2017, Table 2).

Grouped 3×3 convolutions split a block into C parallel paths of width d; the table puts
parameters and FLOPs beside accuracy so that equal budgets are visible.

  python launch.py --experiment=resnext [--config.variants="field=v,...;field=v,..."]
"""

from experiments import study


def run(config, workdir):
  return study.compare_variants(config, workdir, title="test error by cardinality × width",
                                extra_columns=("cardinality", "width"))


if __name__ == "__main__":
  import launch  # pylint: disable=g-import-not-at-top
  launch.entry("resnext")
