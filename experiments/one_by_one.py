"""1×1 convolutions as weighted pooling along depth: what learning the weights buys.

A bottleneck block's first 1×1 conv (the reduce) is a per-pixel weighted sum over channels.
Each variant replaces it and trains the same net: ``reduce=conv`` (learned weights, He et al.),
``reduce=depth_avg`` (equal weights: average pooling over groups of channels, no parameters)
and ``reduce=fixed_random`` (a He-normal 1×1 drawn once and never trained, no parameters).
The table puts parameters, MACs and error side by side; ``plots/test_error.png`` the errors.

  python launch.py --experiment=one_by_one
"""

from experiments import study

# Models whose blocks start with a 1x1 reduce that ``reduce`` can replace.
MODELS_WITH_1X1_REDUCE = ("bottleneck",)


def check(config):
  """One-line ValueError (exit 2) for a model without a 1×1 reduce or an unknown variant."""
  for name, overrides in study.parse_variants(config.variants, config):
    model = overrides.get("model", config.model)
    if model not in MODELS_WITH_1X1_REDUCE:
      raise ValueError(f"variant {name!r}: model={model!r} has no 1x1 reduce layer to replace: "
                       f"the one_by_one study needs model in {MODELS_WITH_1X1_REDUCE}.")


def run(config, workdir):
  check(config)
  return study.compare_variants(config, workdir,
                                title="test error: learned vs fixed 1×1 reduce",
                                extra_columns=("model", "depth", "reduce"))


if __name__ == "__main__":
  import launch  # pylint: disable=g-import-not-at-top
  launch.entry("one_by_one")
