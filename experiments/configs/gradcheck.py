"""Config of the gradient checker: the default config plus the grid to run.

  python launch.py --experiment=gradcheck --config=experiments/configs/gradcheck.py \
      --workdir=runs/gradcheck                      # the full grid (~450 rows)
  ... --config.grid=quick                          # the 27-row grid the tests run
"""

from experiments.configs import default


def get_config():
  config = default.get_config()
  config.grid = "full"   # full | quick (see cnn_jax.analysis.gradcheck.GRIDS)
  config.seed = 0        # draws every input, cotangent and finite-difference direction
  return config
