"""1×1 convolution = per-pixel weighted sum over channels; equal weights = depth average pool."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import ops


@pytest.mark.parametrize("num_dims", [1, 2, 3])
def test_one_by_one_correlation_is_a_weighted_sum_over_channels(rng, num_dims):
  c_in, c_out = int(rng.integers(2, 7)), int(rng.integers(1, 6))
  x = rng.standard_normal((2,) + (5,) * num_dims + (c_in,))
  w = rng.standard_normal((1,) * num_dims + (c_in, c_out))
  # Reference in float64 NumPy: at every pixel, output d = sum_c x[..., c] w[c, d].
  expected = np.einsum("...c,cd->...d", x, w.reshape(c_in, c_out))
  got = ops.correlate(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32))
  # float32 sums of <= 6 products of O(1) numbers: errors ~1e-6; 1e-5 absolute is the bar.
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_equal_weights_are_average_pooling_over_depth(rng):
  groups, size = int(rng.integers(2, 4)), int(rng.integers(2, 5))  # >= 2: orders differ
  c_in = groups * size
  x = jnp.asarray(rng.standard_normal((2, 4, 4, c_in)), jnp.float32)
  # The 1x1 kernel with 1/size on channel c for output c // size (block-diagonal equal weights).
  w = np.zeros((1, 1, c_in, groups))
  w[0, 0, np.arange(c_in), np.arange(c_in) // size] = 1.0 / size
  conv = ops.correlate(x, jnp.asarray(w, jnp.float32))
  pooled = ops.depth_avg_pool(x, groups)
  reference = np.asarray(x).reshape(2, 4, 4, groups, size).mean(axis=-1)
  np.testing.assert_allclose(conv, reference, rtol=1e-5, atol=1e-6)  # float32 rounding
  np.testing.assert_allclose(pooled, reference, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ops.depth_avg_pool(x, 1)[..., 0], np.asarray(x).mean(-1),
                             rtol=1e-5, atol=1e-6)  # one group: the mean over all of depth
  with pytest.raises(ValueError, match="divides"):
    ops.depth_avg_pool(x, c_in + 1)


@pytest.mark.parametrize("reduce", ["conv", "depth_avg", "fixed_random"])
def test_bottleneck_reduce_variants_count_and_run(reduce):
  from cnn_jax import models  # pylint: disable=g-import-not-at-top
  from experiments.configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config.update(model="bottleneck", depth=11, width=4, grad="autodiff", reduce=reduce)
  model = models.build(config)
  x = jnp.ones((2, 8, 8, 3))
  variables = jax.jit(lambda v: model.init(jax.random.key(0), v))(x)
  params = variables["params"]
  reduces = [path for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]
             if "conv1" in jax.tree_util.keystr(path) and "stage" in jax.tree_util.keystr(path)]
  # One block per stage (depth 11): the learned reduce has a kernel in each, the others none.
  assert len(reduces) == (3 if reduce == "conv" else 0)
  logits = model.apply(variables, x)
  assert logits.shape == (2, 10) and bool(jnp.all(jnp.isfinite(logits)))
