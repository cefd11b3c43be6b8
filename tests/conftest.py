"""Test-wide settings: strict numerics and fresh random inputs with a printed seed."""

import os

import jax
import numpy as np
import pytest

# Implicit rank promotion hides shape bugs; make it an error in tests (Equinox's habit).
jax.config.update("jax_numpy_rank_promotion", "raise")
# Small programs compile much faster without XLA's heavy optimisations (Flax examples' habit).
jax.config.update("jax_disable_most_optimizations", True)


@pytest.fixture
def rng(request):
  """A NumPy Generator seeded freshly each run; the seed is printed if the test fails.

  Set CNN_JAX_SEED to replay a failure.
  """
  seed = int(os.environ.get("CNN_JAX_SEED", np.random.SeedSequence().entropy % (2 ** 32)))
  request.node.user_properties.append(("seed", seed))
  print(f"random seed: {seed} (replay with CNN_JAX_SEED={seed})")
  return np.random.default_rng(seed)
