"""The lesson's scale argument, counted by the project's own accounting tool.

  python docs/make_scale_plot.py      # prints the Markdown table, writes docs/scale.png

One layer on an ``n × n × 3`` image, for growing ``n``:
- dense → 10 classes (the lesson's example: 224×224×3 → 10 is 1,505,280 weights);
- dense → ``n × n × 16`` (a fully connected layer with the conv's output size): O(n⁴);
- locally connected 3×3, 3 → 16 channels (neighbours only, nothing shared): O(n²), with an
  untied bias per position;
- shared 3×3 convolution, 3 → 16 (neighbours and weight sharing): O(1).
Parameters and multiply-adds come from ``cnn_jax.analysis.counting.trace_layers`` (shapes
only, so even the 10¹¹-weight dense layer costs nothing to count).
"""

from __future__ import annotations

import os
import sys

import flax.linen as nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from cnn_jax import atomic, layers  # pylint: disable=wrong-import-position
from cnn_jax.analysis import counting  # pylint: disable=wrong-import-position
from cnn_jax.plotting import new_figure  # pylint: disable=wrong-import-position

SIZES = (8, 16, 32, 64, 128, 224)


class Flatten(nn.Module):
  """Flatten, then one dense layer of ``features`` units."""
  features: int

  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(self.features)(x.reshape(x.shape[0], -1))


class OneLayer(nn.Module):
  """A single layer given by class and keyword arguments."""
  layer: type
  kwargs: tuple

  @nn.compact
  def __call__(self, x, train=False):
    return self.layer(**dict(self.kwargs))(x)


def layer_counts(n: int) -> dict[str, tuple[int, int]]:
  """``{name: (params, MACs)}`` of each layer kind on one ``n × n × 3`` image."""
  shape = (1, n, n, 3)
  models = {
      "dense → 10": Flatten(10),
      "dense → n·n·16": Flatten(n * n * 16),
      "locally connected 3×3": OneLayer(layers.LocallyConnected,
                                        (("features", 16), ("kernel_size", 3))),
      "shared conv 3×3": OneLayer(layers.Conv, (("features", 16), ("kernel_size", 3))),
  }
  out = {}
  for name, model in models.items():
    (record,) = counting.trace_layers(model, shape)
    out[name] = (record.params, record.macs)
  return out


def main() -> None:
  counts = {n: layer_counts(n) for n in SIZES}
  names = list(counts[SIZES[0]])
  print("| input | " + " | ".join(f"{name} params" for name in names)
        + " | local MACs | conv MACs |")
  print("|---|" + "---:|" * (len(names) + 2))
  for n in SIZES:
    row = counts[n]
    print(f"| {n}×{n}×3 | " + " | ".join(f"{row[name][0]:,}" for name in names)
          + f" | {row['locally connected 3×3'][1]:,} | {row['shared conv 3×3'][1]:,} |")
  fig = new_figure(6, 4.2)
  ax = fig.subplots()
  for name, marker in zip(names, "osd^"):
    ax.loglog([n * n for n in SIZES], [counts[n][name][0] for n in SIZES], marker=marker,
              label=name)
  ax.set_xlabel("input pixels n × n (3 channels)")
  ax.set_ylabel("parameters of one layer")
  ax.set_title("One layer's parameters, P = n² pixels: "
               "dense O(P²) or O(P), local O(P), shared O(1)", fontsize=9)
  ax.grid(True, which="major", alpha=0.4)
  ax.legend()
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scale.png")
  atomic.save_figure(fig, path, dpi=120)
  print(f"\nwrote {path}")


if __name__ == "__main__":
  main()
