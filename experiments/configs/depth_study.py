"""Depth study config: plain vs ResNet at growing depth (He et al. 2016, Fig. 6).

  python launch.py --experiment=depth_study                                   # full study
  python launch.py --experiment=depth_study --config=experiments/configs/depth_study.py:demo
  python launch.py --experiment=depth_study \
      --config=experiments/configs/depth_study.py:cifar10 --workdir=runs/cifar10   # the paper
  python launch.py --experiment=depth_study \
      --config=experiments/configs/depth_study.py:cifar10_cpu \
      --config.dataset=npz:../shared/data/cifar10_subset.npz \
      --sweep=seed=0,1,2 --workdir=runs/cifar10_cpu                       # 2 CPU cores

``cifar10`` is the paper's recipe (Sec. 4.2): plain nets at 20/32/44/56 layers and ResNets at
20/32/44/56/110, option A shortcuts, batch 128, SGD momentum 0.9, weight decay 1e-4, lr 0.1
÷10 at 32k and 48k of 64k iterations, pad-4 crop + flip, 45k/5k train/validation; on TFDS
``cifar10`` (docs/datasets.md) or any ``folder:``/``npz:`` source of 32×32 images. Its table
puts the paper's test errors beside the run's. It is meant for a GPU; on a CPU it first says
how long it will take (from timed first steps), then runs.

``cifar10_cpu`` fits the CPU: plain and ResNet at 20 and 56 layers, 800 iterations of batch
128 on 9,000 training images (1,000 held out for validation), no augmentation, the same
optimiser and schedule shape after a 100-step linear warm-up; it is sized for ≤ 40 minutes per
seed on 2 cores and shows the paper's two findings in training error (docs/experiments.md).

The full study trains 20/32/44/56-layer nets with the paper's recipe (SGD momentum 0.9, lr 0.1
÷10 at 50% and 75%, weight decay 1e-4, batch 128, option A shortcuts). ``demo`` is the
`make demo` job: 8/20/56 layers on scikit-learn's digits upsampled to 12×12, 400 steps each
at batch 64, which shows the degradation of the deep plain net in about 5 minutes on 2 CPU
cores (at 16×16 the same study takes 11 minutes and shows the same: docs/experiments.md).
"""

from experiments.configs import default


def get_config(variant: str = "full"):
  config = default.get_config()
  config.models = "plain,resnet"
  config.depths = "20,32,44,56"
  config.dataset = "digits"
  config.image_size = 16
  config.num_steps = 2000
  config.eval_every = 100
  config.log_grad_norms_every = 100
  config.extra = ""                # runs beyond the models x depths grid: "resnet-110,..."
  config.require_image_size = 0    # > 0: the data must be this many pixels square
  config.paper = ""                # "cifar10": the table gains He et al.'s test errors
  config.announce_time = False     # on a CPU: time the first steps, say how long it will take
  if variant == "demo":
    config.depths = "8,20,56"
    config.image_size = 12
    # Batch 64 for 400 steps, not 128 for 200: the same images and wall time, twice the
    # updates. At 200 steps the ResNet-56 ended anywhere from 0% to 31% training error by seed
    # (seeds 0-2); at 400 it ended at 0.1-1.2% in each of seeds 0-2, the plain-56 at 60-71%
    # (docs/experiments.md).
    config.batch_size = 64
    config.num_steps = 400
    config.eval_every = 50
    config.checkpoint_every = 200
    config.log_grad_norms_every = 20
    # 400 short steps: compile time outweighs the unrolled step's ~8%, so the 56-layer nets
    # scan their 8 repeated blocks per stage (the demo's job: 275 s unrolled, 267 s scanned).
    config.min_scanned_blocks = 3
  elif variant in ("cifar10", "cifar10_cpu"):
    cifar10(config, cpu=variant == "cifar10_cpu")
  elif variant == "tiny":
    default.tiny(config)
    config.depths = "8,14"
  elif variant != "full":
    raise ValueError(f"depth_study config variant {variant!r} is not known: use full, demo, "
                     "cifar10, cifar10_cpu or tiny.")
  return config


def cifar10(config, *, cpu: bool):
  """He et al. (2016) Sec. 4.2 on CIFAR-10; ``cpu``: the 2-core budget version."""
  config.dataset = "cifar10"
  config.image_size = 32
  config.require_image_size = 32
  config.shortcut = "A"
  config.batch_size = 128
  config.optimizer = "sgd"
  config.momentum = 0.9
  config.weight_decay = 1e-4
  config.learning_rate = 0.1
  config.schedule = "step"         # ÷10 at 50% and 75%: 32k and 48k of 64k
  config.announce_time = True
  if not cpu:
    config.models = "plain,resnet"
    config.depths = "20,32,44,56"
    config.extra = "resnet-110"
    config.num_steps = 64_000
    config.augment = True          # pad 4, random 32x32 crop, horizontal flip
    config.validation_size = 5_000  # 45k/5k
    config.eval_every = 1_000
    config.checkpoint_every = 2_000
    config.log_grad_norms_every = 1_000
    config.paper = "cifar10"
    return config
  config.depths = "20,56"
  # 10,000 training images (the shared subset, or a fixed 10k of TFDS cifar10's 50k): 1,000
  # held out for validation, 9,000 trained on for 800 iterations (~11 epochs): the four runs
  # took 32-35 min per seed on 2 cores (AMD EPYC Zen 3, 2026-12-07; docs/experiments.md).
  config.validation_size = 1_000
  config.train_size = 9_000
  config.num_steps = 800
  # The paper's remedy for a deep net that lr 0.1 cannot start (Sec. 4.2, ResNet-110: 0.01
  # until training error is below 80%), as a linear warm-up over the first 100 steps for every
  # net. Without it the ResNet-56 (option A) was still near chance after 100 steps (mean loss
  # 2.75, 11% accuracy, seed 0); with it, loss 1.90 at step 100, as the plain-20's.
  config.warmup_steps = 100
  # No augmentation: the findings are about training error, which a budget of ~11 epochs
  # shows more clearly on the images themselves (docs/experiments.md).
  config.augment = False
  config.eval_every = 100
  config.checkpoint_every = 200
  config.log_grad_norms_every = 200
  # One run at a time: the native kernels' OpenMP threads spin at their barriers, and two runs
  # sharing 2 cores slowed the 56-layer net's steps from ~1 s to ~2.7 s (2026-12-07, AMD EPYC).
  config.parallel_runs = 1
  return config
