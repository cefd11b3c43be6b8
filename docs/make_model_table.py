"""The zoo's parameter and multiply-add counts against the papers' figures.

  python docs/make_model_table.py     # prints the Markdown table pasted into docs/models.md

Counted by ``cnn_jax.analysis.counting`` on one 32×32×3 image (CIFAR), 10 classes, from the
same configs ``launch.py`` would build (``experiments/configs/default.py`` plus overrides).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from cnn_jax import models  # pylint: disable=wrong-import-position
from cnn_jax.analysis import counting  # pylint: disable=wrong-import-position
from experiments.configs import default  # pylint: disable=wrong-import-position

# (label, overrides, paper figure, source)
ROWS = [
    ("resnet-20 (A)", dict(model="resnet", depth=20), "0.27M", "He et al. 2016, Table 6"),
    ("resnet-32 (A)", dict(model="resnet", depth=32), "0.46M", "He et al. 2016, Table 6"),
    ("resnet-44 (A)", dict(model="resnet", depth=44), "0.66M", "He et al. 2016, Table 6"),
    ("resnet-56 (A)", dict(model="resnet", depth=56), "0.85M", "He et al. 2016, Table 6"),
    ("resnet-110 (A)", dict(model="resnet", depth=110), "1.7M", "He et al. 2016, Table 6"),
    ("plain-56", dict(model="plain", depth=56), "0.85M", "same as resnet-56 (A)"),
    ("resnet-56 (B)", dict(model="resnet", depth=56, shortcut="B"), "", ""),
    ("bottleneck-56 (A)", dict(model="bottleneck", depth=56), "", ""),
    ("bottleneck-164 (B)", dict(model="bottleneck", depth=164, shortcut="B"), "1.7M",
     "He et al. 2016b (pre-act), Table 2"),
    ("resnext-29 8×64d", dict(model="resnext", depth=29, cardinality=8, width=64), "34.4M",
     "Xie et al. 2017, Table 7"),
    ("resnext-29 16×64d", dict(model="resnext", depth=29, cardinality=16, width=64), "68.1M",
     "Xie et al. 2017, Table 7"),
    ("simple_cnn (depth 3, width 32)", dict(model="simple_cnn", depth=3, width=32,
                                             downsample="pool"), "", ""),
    ("local (depth 3, width 32)", dict(model="local", depth=3, width=32, downsample="pool"),
     "", ""),
    ("mlp (depth 3, hidden 128)", dict(model="mlp", depth=3), "", ""),
    ("mlp (depth 1) on 224×224×3", dict(model="mlp", depth=1, image_size=224),
     "1,505,280 weights", "the lesson"),
]


def main() -> None:
  print("| model | params (all) | params (no BN) | MACs / image | paper | source |")
  print("|---|---:|---:|---:|---:|---|")
  for label, overrides, paper, source in ROWS:
    config = default.get_config()
    config.image_size = 32
    config.update(overrides)
    shape = (1, config.image_size, config.image_size, 3)
    model = models.build(config)
    records = counting.trace_layers(model, shape)
    total = sum(r.params for r in records)
    no_bn = sum(r.params for r in records if r.kind != "norm")
    macs = sum(r.macs for r in records)
    print(f"| {label} | {total:,} | {no_bn:,} | {macs:,} | {paper} | {source} |", flush=True)


if __name__ == "__main__":
  main()
