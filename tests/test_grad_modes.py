"""grad=hand reaches every layer of the zoo and trains to the same parameters as autodiff."""

import jax
import numpy as np
import pytest

from cnn_jax import train
from cnn_jax.train import restore
from experiments.configs import default


@pytest.mark.parametrize("model, depth, extra", [
    ("simple_cnn", 2, {"pool": "max", "downsample": "pool"}),
    ("resnet", 8, {}),
])
def test_hand_and_autodiff_train_to_the_same_parameters(tmp_path, model, depth, extra):
  params = {}
  for grad in ("hand", "autodiff"):
    config = default.tiny(default.get_config())
    config.model, config.depth, config.grad, config.progress = model, depth, grad, False
    config.num_steps = 3
    for field, value in extra.items():
      config[field] = value
    workdir = str(tmp_path / grad)
    train.train_and_evaluate(config, workdir)
    _, variables = restore.load_trained(config, workdir)
    params[grad] = variables["params"]
  # Same forward; the backward differs only in float32 summation order, so after 3 SGD steps
  # the parameters agree to ~1e-6 relative. 1e-4 absolute leaves room for BatchNorm's
  # divisions by small variances on 8x8 inputs while still catching any wrong gradient
  # (a wrong one changes parameters by ~lr * grad ~ 1e-2).
  flat_hand = jax.tree_util.tree_leaves_with_path(params["hand"])
  flat_auto = dict(jax.tree_util.tree_leaves_with_path(params["autodiff"]))
  for path, value in flat_hand:
    np.testing.assert_allclose(np.asarray(value), np.asarray(flat_auto[path]), rtol=1e-4,
                               atol=1e-4, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("model, depth", [("simple_cnn", 2), ("local", 2), ("resnet", 8),
                                          ("bottleneck", 11), ("resnext", 11)])
def test_grad_field_selects_the_hand_backward_in_every_layer(model, depth):
  from cnn_jax import models  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  counts = {}
  for grad in ("hand", "autodiff"):
    config = default.get_config()
    config.model, config.depth, config.grad, config.width = model, depth, grad, 4
    config.cardinality = 2 if model == "resnext" else 1
    net = models.build(config)
    x = jnp.zeros((1, 8, 8, 1))
    variables = net.init(jax.random.key(0), x, train=False)
    jaxpr = str(jax.make_jaxpr(lambda v, net=net, x=x: net.apply(v, x, train=False))(variables))
    counts[grad] = jaxpr.count("custom_vjp_call")
  assert counts["autodiff"] == 0
  assert counts["hand"] > 0
