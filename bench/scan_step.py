"""Train-step time of a ResNet-56 with its repeated blocks under nn.scan vs unrolled.

  python -m bench.scan_step

One process, the two variants one after the other: first call (compile + run) and the mean of
three steps after it, batch 128 on 16x16x1 (the depth study's setting).
"""
import time, jax, jax.numpy as jnp, optax
from experiments.configs import default
from cnn_jax import models
c = default.get_config(); c.model="resnet"; c.depth=56
res = {}
for scan in (True, False):
  m = models.build(c).clone(scan_blocks=scan)
  x = jnp.ones((128,16,16,1)); y = jnp.zeros((128,), jnp.int32)
  v = m.init(jax.random.key(0), x[:1], train=False)
  tx = optax.sgd(0.1, 0.9); opt = tx.init(v["params"])
  def loss(p, bs):
    out, st = m.apply({"params": p, "batch_stats": bs}, x, train=True, mutable=["batch_stats"])
    return optax.softmax_cross_entropy_with_integer_labels(out, y).mean(), st
  @jax.jit
  def step(p, bs, o):
    (l, st), g = jax.value_and_grad(loss, has_aux=True)(p, bs)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), st["batch_stats"], o, l
  t = time.time(); p, bs, o, l = step(v["params"], v["batch_stats"], opt); l.block_until_ready(); comp = time.time()-t
  t = time.time()
  for _ in range(3): p, bs, o, l = step(p, bs, o)
  l.block_until_ready(); res[scan] = ((time.time()-t)/3, comp)
  print("scan", scan, "step s", res[scan][0], "first call s", comp, flush=True)
