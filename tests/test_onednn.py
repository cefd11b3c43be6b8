"""oneDNN's convolutions through XLA's FFI (cnn_jax.ops.onednn) against XLA's convolutions.

Tolerances: the two libraries sum the same float32 products in different orders, so results
differ by rounding, ~1e-7 relative per sum; a sum of up to 5*5*8 = 200 products of unit-scale
terms stays within ~1e-6 of the largest entry. 1e-5 relative to the largest entry leaves a
10x margin (second order: three convolutions chained, 3e-5).
"""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import ops
from cnn_jax.ops import hand, onednn
from cnn_jax.train import steps as steps_lib

pytestmark = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None,
    reason="no C++ compiler: the oneDNN library cannot be built here (XLA's convolutions run)")


def _rel(a, b):
  scale = float(jnp.max(jnp.abs(b)))
  return float(jnp.max(jnp.abs(a - b))) / scale if scale else float(jnp.max(jnp.abs(a)))


def _draw_case(rng, num_dims):
  """A random float32 correlation that oneDNN takes: stride, dilation, padding mode, sizes."""
  kernel = tuple(int(k) for k in rng.integers(1, 6, num_dims))
  dilation = int(rng.integers(1, 3))
  stride = int(rng.integers(1, 4))
  padding = [("VALID", "SAME", "FULL")[int(rng.integers(3))],
             tuple((int(rng.integers(0, 3)), int(rng.integers(0, 3))) for _ in range(num_dims))
             ][int(rng.integers(2))]
  spatial = tuple(int(rng.integers((k - 1) * dilation + 1, 14)) for k in kernel)
  c_in, c_out = int(rng.integers(1, 9)), int(rng.integers(1, 9))
  x = jnp.asarray(rng.standard_normal((int(rng.integers(1, 4)),) + spatial + (c_in,)),
                  jnp.float32)
  w = jnp.asarray(rng.standard_normal(kernel + (c_in, c_out)), jnp.float32)
  return x, w, dict(stride=stride, padding=padding, dilation=dilation)


def _uses_onednn(fn, *args):
  return "CnnJaxOnednnConv" in str(jax.make_jaxpr(fn)(*args))


def test_library_builds_loads_and_is_switched_off_by_the_environment(monkeypatch):
  assert onednn.unavailable_reason() is None, onednn.unavailable_reason()
  monkeypatch.setenv(onednn.DISABLE_VARIABLE, "0")
  assert "switched off" in onednn.unavailable_reason()
  x, w = jnp.ones((1, 5, 5, 2)), jnp.ones((3, 3, 2, 3))
  assert not _uses_onednn(lambda x, w: hand.correlate(x, w), x, w)


def test_build_without_a_compiler_says_what_is_missing_in_one_line(monkeypatch):
  monkeypatch.setattr(onednn.shutil, "which", lambda name: None)
  built, message = onednn.build()
  assert not built
  assert "no C++ compiler" in message and "\n" not in message


@pytest.mark.parametrize("num_dims", [1, 2])
@pytest.mark.parametrize("op", ["correlate", "convolve"])
def test_forward_and_both_gradients_equal_xla(rng, num_dims, op):
  for _ in range(4):
    x, w, kwargs = _draw_case(rng, num_dims)
    fast = lambda x, w: getattr(hand, op)(x, w, **kwargs)
    reference = lambda x, w: getattr(ops, op)(x, w, **kwargs)
    assert _uses_onednn(fast, x, w), kwargs
    y, vjp = jax.vjp(fast, x, w)
    y_ref, vjp_ref = jax.vjp(reference, x, w)
    assert y.shape == y_ref.shape
    g = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
    for got, want in zip((y, *vjp(g)), (y_ref, *vjp_ref(g))):
      assert _rel(got, want) < 1e-5, (kwargs, x.shape, w.shape)


@pytest.mark.parametrize("num_dims", [1, 2])
def test_second_order_gradients_equal_xla(rng, num_dims):
  # Gradient of |dL/dx|^2 + |dL/dw|^2 with L = <f(x, w), h(x, w)> and h = tanh(f): the
  # cotangent reaching the backward products depends on x and w, so every VJP of every one of
  # the three oneDNN products is taken.
  x, w, kwargs = _draw_case(rng, num_dims)

  def second(namespace):
    def loss(x, w):
      y = namespace.correlate(x, w, **kwargs)
      return jnp.sum(y * jnp.tanh(y))

    def energy(x, w):
      dx, dw = jax.grad(loss, argnums=(0, 1))(x, w)
      return jnp.sum(dx ** 2) + jnp.sum(dw ** 2)
    return jax.jit(jax.grad(energy, argnums=(0, 1)))(x, w)

  for got, want in zip(second(hand), second(ops)):
    assert _rel(got, want) < 3e-5, kwargs


def test_vmap_and_jit_equal_xla(rng):
  x = jnp.asarray(rng.standard_normal((3, 2, 9, 9, 4)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 4, 5)), jnp.float32)
  fast = jax.jit(jax.vmap(lambda x: hand.correlate(x, w, stride=2, padding="SAME")))
  reference = jax.vmap(lambda x: ops.correlate(x, w, stride=2, padding="SAME"))
  assert _rel(fast(x), reference(x)) < 1e-5


@pytest.mark.parametrize("case", ["groups", "circular", "bfloat16", "3-D", "switched off"])
def test_other_convolutions_stay_on_xla_with_the_same_values(rng, case):
  num_dims = 3 if case == "3-D" else 2
  dtype = jnp.bfloat16 if case == "bfloat16" else jnp.float32
  x = jnp.asarray(rng.standard_normal((2,) + (6,) * num_dims + (4,)), dtype)
  w = jnp.asarray(rng.standard_normal((3,) * num_dims + ((2,) if case == "groups" else (4,))
                                      + (6,)), dtype)
  kwargs = dict(padding="CIRCULAR" if case == "circular" else "SAME",
                groups=2 if case == "groups" else 1)
  fast = lambda x, w: hand.correlate(x, w, **kwargs)
  with onednn.use(case != "switched off"):
    assert not _uses_onednn(fast, x, w)
    y = fast(x, w)
  # Same function as the reference: equal up to rounding (bfloat16: 8 mantissa bits).
  tolerance = 2e-2 if case == "bfloat16" else 1e-5
  assert _rel(y.astype(jnp.float32), ops.correlate(x, w, **kwargs).astype(jnp.float32)) < tolerance


def test_trainer_takes_onednn_only_when_asked_on_one_device():
  assert steps_lib.uses_onednn("onednn", 1)
  assert not steps_lib.uses_onednn("eigen", 1)
  assert not steps_lib.uses_onednn("xla_default", 1)
  # The FFI call is not partitioned: a mesh of several devices keeps XLA's convolutions.
  assert not steps_lib.uses_onednn("onednn", 2)
