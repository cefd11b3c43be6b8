"""Output sizes over the whole grid of size, kernel, stride, dilation and padding (hypothesis).

The expected size is the closed form written out here from the definitions (Dumoulin & Visin,
2016), independent of ``cnn_jax.ops.shapes``: a window of extent ``e = d(k-1)+1`` on an input of
``n`` padded by ``lo + hi`` has ``floor((n + lo + hi - e) / s) + 1`` positions; SAME gives
``ceil(n / s)``; FULL pads ``e - 1`` on both sides. It is compared with ``ops.output_size`` and
with the shape that the ops themselves return (``jax.eval_shape``: nothing is computed).
"""

import math

import jax
import jax.numpy as jnp
from hypothesis import given, settings
from hypothesis import strategies as st

from cnn_jax import ops

PADDINGS = st.one_of(st.sampled_from(["VALID", "SAME", "FULL"]), st.integers(0, 3),
                     st.tuples(st.integers(0, 3), st.integers(0, 3)))


def closed_form(n: int, k: int, s: int, d: int, padding) -> int | None:
  """Positions of the window along one dim, or None where the window does not fit."""
  e = d * (k - 1) + 1
  if padding == "SAME":
    return math.ceil(n / s)
  lo, hi = {"VALID": (0, 0), "FULL": (e - 1, e - 1)}.get(padding, None) or (
      (padding, padding) if isinstance(padding, int) else padding)
  padded = n + lo + hi
  return (padded - e) // s + 1 if padded >= e else None


@st.composite
def window_cases(draw):
  num_dims = draw(st.integers(1, 2))
  dims = [(draw(st.integers(1, 12)), draw(st.integers(1, 4)), draw(st.integers(1, 3)),
           draw(st.integers(1, 3))) for _ in range(num_dims)]  # (n, k, stride, dilation)
  padding = draw(PADDINGS)
  expected = [closed_form(n, k, s, d, padding) for n, k, s, d in dims]
  return dims, padding, expected


def _per_dim(padding, num_dims):
  return (padding,) * num_dims if isinstance(padding, tuple) else padding


@settings(max_examples=150, deadline=None)
@given(window_cases(), st.integers(1, 3))
def test_correlate_output_shape_is_the_closed_form(case, groups):
  dims, padding, expected = case
  if None in expected:  # a window larger than the padded input is refused in one line
    return
  sizes = tuple(n for n, _, _, _ in dims)
  x = jax.ShapeDtypeStruct((2, *sizes, 2 * groups), jnp.float32)
  w = jax.ShapeDtypeStruct((*(k for _, k, _, _ in dims), 2, 3 * groups), jnp.float32)
  kwargs = dict(stride=tuple(s for _, _, s, _ in dims), dilation=tuple(d for *_, d in dims),
                padding=_per_dim(padding, len(dims)), groups=groups)
  shape = jax.eval_shape(lambda a, b: ops.correlate(a, b, **kwargs), x, w).shape
  assert shape == (2, *expected, 3 * groups)
  assert ops.output_size(sizes, w.shape[:len(dims)], kwargs["stride"], kwargs["padding"],
                         kwargs["dilation"]) == tuple(expected)


@settings(max_examples=100, deadline=None)
@given(window_cases(), st.sampled_from(["max_pool", "avg_pool"]))
def test_pool_output_shape_is_the_closed_form(case, pool):
  dims, padding, _ = case
  dims = [(n, k, s, 1) for n, k, s, _ in dims]  # pools have no dilation
  expected = [closed_form(n, k, s, 1, padding) for n, k, s, _ in dims]
  if None in expected:
    return
  x = jax.ShapeDtypeStruct((1, *(n for n, *_ in dims), 3), jnp.float32)
  window, stride = tuple(k for _, k, _, _ in dims), tuple(s for _, _, s, _ in dims)
  shape = jax.eval_shape(
      lambda a: getattr(ops, pool)(a, window, stride, _per_dim(padding, len(dims))), x).shape
  assert shape == (1, *expected, 3)
