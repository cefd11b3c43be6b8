"""The PyTorch twin of ``bench.resnet_twin``: the same CIFAR ResNet, for side-by-side timing.

An optional dependency: nothing in the library or the tests imports this module. Torch is
imported lazily inside the functions, so importing ``bench.torch_twin`` never fails; calling
``make_trainer`` without torch raises ``ImportError`` with one sentence saying what to
install (``pip install torch==2.13.0``, the CPU wheel).

The twin follows PyTorch's usual CPU recipe for speed: channels_last memory format, as many
intra-op threads as the machine has cores, SGD with momentum 0.9 and weight decay 1e-4
(coupled, as in ``torch.optim.SGD``), cross-entropy loss.
"""

from __future__ import annotations

import os

INSTALL_HINT = ("PyTorch is not installed: run `pip install torch==2.13.0` (the CPU wheel) "
                "to compare.")


def import_torch():
  """Imports torch, or raises ImportError with the one-sentence install hint."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise ImportError(INSTALL_HINT) from error
  return torch


def build_model(depth: int, num_classes: int = 10, width: int = 16):
  """The torch CIFAR ResNet of depth ``6 n + 2`` with option-A shortcuts (``torch.nn.Module``)."""
  from bench.resnet_twin import stage_blocks  # pylint: disable=g-import-not-at-top
  torch = import_torch()
  nn, functional = torch.nn, torch.nn.functional
  n = stage_blocks(depth)

  class Block(nn.Module):
    """Basic block: conv-BN-ReLU-conv-BN, plus the option-A shortcut, then ReLU."""

    def __init__(self, c_in, c_out, stride):
      super().__init__()
      self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(c_out)
      self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(c_out)
      self.stride, self.extra = stride, c_out - c_in

    def forward(self, x):
      y = functional.relu(self.bn1(self.conv1(x)))
      y = self.bn2(self.conv2(y))
      shortcut = x
      if self.stride != 1 or self.extra:
        shortcut = x[:, :, ::self.stride, ::self.stride]
        lo = self.extra // 2
        shortcut = functional.pad(shortcut, (0, 0, 0, 0, lo, self.extra - lo))
      return functional.relu(y + shortcut)

  class ResNet(nn.Module):
    """Stem conv, three stages of ``n`` blocks, global average pool, dense."""

    def __init__(self):
      super().__init__()
      self.conv = nn.Conv2d(3, width, 3, 1, 1, bias=False)
      self.bn = nn.BatchNorm2d(width)
      blocks, c_in = [], width
      for stage in range(3):
        c_out = width * 2 ** stage
        for block in range(n):
          blocks.append(Block(c_in, c_out, 2 if (stage > 0 and block == 0) else 1))
          c_in = c_out
      self.blocks = nn.Sequential(*blocks)
      self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x):
      x = functional.relu(self.bn(self.conv(x)))
      x = self.blocks(x)
      return self.fc(x.mean(dim=(2, 3)))

  return ResNet()


def make_trainer(depth: int, batch: int, image_size: int = 32, num_classes: int = 10,
                 threads: int | None = None, seed: int = 0):
  """Builds the twin, optimizer and one fixed random batch; returns ``step()``.

  Each call of ``step()`` runs one full training step (forward, backward, SGD update) and
  returns when it is done (PyTorch on CPU is synchronous).

  Raises:
    ImportError: with the install hint, if torch is missing.
  """
  torch = import_torch()
  torch.set_num_threads(threads or os.cpu_count() or 1)
  torch.manual_seed(seed)
  model = build_model(depth, num_classes).to(memory_format=torch.channels_last)
  model.train()
  optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
  images = torch.randn(batch, 3, image_size, image_size).to(memory_format=torch.channels_last)
  labels = torch.randint(0, num_classes, (batch,))
  loss_fn = torch.nn.CrossEntropyLoss()

  def step():
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(images), labels)
    loss.backward()
    optimizer.step()
    return loss

  return step


def time_alone(depth: int, batch: int, image_size: int = 32, steps: int = 5,
               repeats: int = 3) -> float:
  """Images/s of the twin's step, median of ``repeats`` x ``steps`` steps after a warm-up,
  in this process (``python -m bench.torch_twin`` runs it alone in its own)."""
  import statistics  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  step = make_trainer(depth, batch, image_size)
  step()
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(steps):
      step()
    seconds.append((time.perf_counter() - start) / steps)
  return batch / statistics.median(seconds)


def alone_in_subprocess(depth: int, batch: int, image_size: int = 32, steps: int = 5,
                        repeats: int = 3) -> float:
  """``time_alone`` in a fresh Python process (no JAX threads or memory beside it)."""
  import json  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run(
      [sys.executable, "-m", "bench.torch_twin", str(depth), str(batch), str(image_size),
       str(steps), str(repeats)], cwd=root, capture_output=True, text=True, check=True).stdout
  return float(json.loads(out.strip().splitlines()[-1])["images_per_s"])


if __name__ == "__main__":
  import json  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  print(json.dumps({"images_per_s": time_alone(*(int(a) for a in sys.argv[1:6]))}))
