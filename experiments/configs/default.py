"""The default configuration: every field any experiment, model or trainer reads.

Variants import this and override a few fields. On the command line every field can be set:
  python launch.py --experiment=train --config=experiments/configs/default.py \
      --config.model=resnet --config.depth=20 --config.dataset=digits --workdir=runs/x
Field names are the same in configs, flags, files and result tables.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Model.
  config.model = "resnet"          # mlp | local | simple_cnn | plain | resnet | bottleneck | resnext
  # None = the model's own default (cnn_jax.models.DEFAULTS; config.json records the value).
  config.depth = config_dict.placeholder(int)  # mlp 2 | simple_cnn, local 2 | plain, resnet 20
                                   # (6n+2) | bottleneck, resnext 29 (9n+2)
  config.width = config_dict.placeholder(int)  # first-stage filters (16); resnext: bottleneck
                                   # width per group (4)
  config.cardinality = config_dict.placeholder(int)  # groups: resnext 8, others 1
  config.stem_width = 64           # resnext stem filters (stage outputs 4x, 8x, 16x; Xie: 64)
  config.shortcut = "A"            # A: identity + zero-padded channels; B: 1x1 projection
  config.zero_init_residual = False
  config.scan_blocks = True        # nn.scan over a stage's repeated blocks, when there are
  config.min_scanned_blocks = 9    # at least this many (ResNet-110 scans, ResNet-56 does not):
                                   # compile time nearly flat in depth, but an unrolled step
                                   # runs ~8% faster (docs/benchmarks.md)
  config.stride = config_dict.placeholder(int)  # stride of each downsampling stage (2)
  config.first_stride = 1          # stride of the first conv
  config.downsample = config_dict.placeholder(str)  # conv (strided conv; residual nets) |
                                   # pool (simple_cnn, local)
  config.pool = "max"              # downsampling pool: max | avg | weighted (a centred
                                   # Gaussian, window 2*stride-1) | l2
  config.head = "flatten"          # simple_cnn/local: flatten | global_avg | global_max
  config.hidden = 128              # mlp / classifier hidden units
  config.grad = "hand"             # hand (our VJPs, tested equal to jax.grad) | autodiff;
                                   # on CPU, autodiff convs inside nn.scan run ~20x slower:
                                   # pair grad=autodiff with scan_blocks=False there
  config.dtype = "float32"         # float32 | bfloat16 (compute dtype)
  config.kernels = "auto"          # auto | xla | native: auto runs the native CPU kernels
                                   # (cnn_jax/native: oneDNN, Winograd; C++ through XLA's
                                   # FFI) where they apply (grad=hand, float32, 1-D/2-D
                                   # convs, one device, library built), XLA's elsewhere;
                                   # xla: the pure ops only (as on GPU/TPU); native: as auto,
                                   # but a layer or run they cannot take is an error
  config.conv_algorithm = "autotune"  # native convs: autotune (per layer shape the fastest
                                   # of XLA, oneDNN direct, F(2x2,3x3), measured on first
                                   # use, cached in ~/.cache/cnn_jax, recorded in the run's
                                   # kernels.json) | autotune_winograd4 (F(4x4,3x3) competes
                                   # too; ~1e-5 rounding) | auto (F(2x2) where it applies,
                                   # direct elsewhere) | auto_winograd4 (F(4x4) first) |
                                   # direct | winograd2 | winograd4 (forced on every native
                                   # conv)
  config.num_classes = 10          # classifier outputs (the trainer sets it from the dataset)
  # Data.
  config.dataset = "digits"        # see `launch.py --experiment=datasets`
  config.image_size = 16           # offline datasets are resized to this
  config.input_channels = 3        # for summaries without loading data (trainer uses the data's)
  config.data_dir = ""             # TFDS data_dir ("" = TFDS's default)
  config.download = False
  config.augment = False
  config.train_size = 0            # 0 = the whole training split
  config.validation_size = 0       # training images held out for validation (stratified by
                                   # class, chosen by data_seed); 0 = none
  config.data_seed = 0             # seeds the procedural datasets (shapes10, translated,
                                   # signals1d) and the validation split
  config.translated_split = "left_right"  # translated: left_right | center | random
  config.signal_length = 64        # signals1d sequence length
  # Optimisation.
  config.optimizer = "sgd"         # sgd | adamw
  config.learning_rate = 0.1
  config.momentum = 0.9
  config.weight_decay = 1e-4
  config.schedule = "step"         # step (÷10 at 50% and 75%) | cosine | constant
  config.warmup_steps = 0
  config.label_smoothing = 0.0
  config.grad_clip = 0.0           # 0 = off
  config.batch_size = 128
  config.num_steps = 200
  config.seed = 0
  # Bookkeeping.
  config.eval_every = 50
  config.checkpoint_every = 100
  config.keep_checkpoints = 2
  config.log_grad_norms_every = 50
  config.progress = True           # tqdm bar on a terminal (--noprogress: False)
  config.resume = True             # continue an unfinished run from its newest checkpoint
  config.overwrite = False         # train again in a workdir that holds a finished run
  # Studies that train several runs (experiments/study.py) train this many at once, on threads
  # of one process; each run's numbers are the same bits either way (docs/training.md).
  config.parallel_runs = 2
  # Multi-host (jax.distributed); num_processes = 1 is a single-process run.
  config.coordinator_address = ""  # "host:port" of process 0
  config.num_processes = 1
  config.process_id = 0
  return config


def small_study_recipe(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The optimiser of the small comparison studies: AdamW 1e-3, constant, batch 64.

  The He et al. SGD recipe (the default) is tuned for residual nets; the small MLPs and CNNs
  compared in scale/grid/translation/pooling/kernels train reliably with this one instead.
  """
  config.optimizer = "adamw"
  config.learning_rate = 1e-3
  config.schedule = "constant"
  config.batch_size = 64
  return config


def tiny(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks any config to seconds of work: the ``:tiny`` variant that the tests run."""
  config.dataset = "digits"
  config.image_size = 8
  config.batch_size = 16
  config.num_steps = 4
  config.eval_every = 2
  config.checkpoint_every = 2
  config.log_grad_norms_every = 2
  config.train_size = 128
  return config
