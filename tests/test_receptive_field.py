"""Receptive fields: hand-checked analytic cases, analytic == measured support, ERF growth."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import ops
from cnn_jax.analysis import receptive_field as rf


@pytest.mark.parametrize("layers, size, jump", [
    ([(3, 1, 1)] * 3, 7, 1),                       # three 3x3 stride 1: 1 + 3 * 2
    ([(3, 2, 1), (3, 1, 1)], 7, 2),                # 3 + 2 * jump 2
    ([(3, 1, 0, 2)], 5, 1),                        # dilation 2: extent 2 * 2 + 1
    ([(2, 2), (2, 2), (2, 2)], 8, 8),              # three 2x2/2 pools tile 8x8 blocks
    ([(7, 2, 3), (3, 2, 1)], 11, 4),               # ResNet-ImageNet stem: conv7/2 + pool3/2
    ([(3, 1, 1)] * 19, 39, 1),                     # 19 stride-1 3x3 convs
])
def test_hand_cases(layers, size, jump):
  record = rf.receptive_field(layers)[-1]
  assert record.size == (size, size)
  assert record.jump == (jump, jump)


def test_start_offsets_by_hand():
  # Padding 1 on a 3x3 conv centres the first output's field on pixel 0; VALID puts it at 1;
  # a following 2x2/2 pool averages outputs 0 and 1, so the centre moves half a jump.
  valid = rf.receptive_field([(3, 1, 0), (2, 2, 0)])
  assert valid[0].start == (1.0, 1.0) and valid[0].left == (0, 0)
  assert valid[1].start == (1.5, 1.5) and valid[1].size == (4, 4)
  padded = rf.receptive_field([(3, 1, 1)])
  assert padded[0].start == (0.0, 0.0) and padded[0].left == (-1, -1)
  assert padded[0].bounds((2, 5)) == ((1, 3), (4, 6))


def test_per_dim_arguments_and_dims():
  record = rf.receptive_field([rf.Window((3, 5), (1, 2), ((1, 1), (0, 0)), (1, 2))])[-1]
  assert record.size == (3, 9) and record.jump == (1, 2) and record.left == (-1, 0)
  one_d = rf.receptive_field([(3, 2, 1)], (1, 10, 1))
  assert one_d[-1].size == (3,) and one_d[-1].output_size == (5,)
  three_d = rf.receptive_field([(3, 1, "SAME"), (2, 2)], (1, 8, 8, 8, 1))
  assert three_d[-1].size == (4, 4, 4) and three_d[-1].output_size == (4, 4, 4)


def test_output_sizes_match_ops(rng):
  n = int(rng.integers(9, 20))
  layers = [(3, 2, "SAME"), (3, 1, "VALID"), (2, 2, "SAME", 1), (3, 1, "FULL", 2)]
  records = rf.receptive_field(layers, (1, n, n + 1, 1))
  size = (n, n + 1)
  for (kernel, stride, padding, dilation), record in zip(
      [(3, 2, "SAME", 1), (3, 1, "VALID", 1), (2, 2, "SAME", 1), (3, 1, "FULL", 2)], records):
    size = ops.output_size(size, kernel, stride, padding, dilation)
    assert record.output_size == size


def test_bad_layers_raise():
  with pytest.raises(ValueError, match="input_shape"):
    rf.receptive_field([(3, 2, "SAME")])  # SAME with stride 2 needs the size
  with pytest.raises(ValueError, match="stride"):
    rf.receptive_field([(3, 0)])
  with pytest.raises(ValueError, match="larger than the padded input"):
    rf.receptive_field([(5, 1, 0)], (1, 4, 4, 1))
  with pytest.raises(ValueError, match="layer 0"):
    rf.receptive_field(["conv3x3"])
  with pytest.raises(ValueError, match="no spatial layers"):
    rf.receptive_field([])
  with pytest.raises(ValueError, match="jumps"):
    rf.receptive_field([rf.Branches(([(3, 2, 1)], []))])


@dataclasses.dataclass
class FakeLayerRecord:
  """Stands in for counting.LayerRecord (another helper's module; duck typing is the contract)."""
  name: str
  kind: str
  kernel: tuple = None
  stride: tuple = None
  padding: tuple = None
  dilation: tuple = None
  on_shortcut: bool = False


def test_traced_records_use_main_path():
  # A basic ResNet block with a 1x1 stride-2 projection, as trace_layers would list it.
  pad1 = ((1, 1), (1, 1))
  records = [
      FakeLayerRecord("conv_init", "conv", (3, 3), (1, 1), pad1, (1, 1)),
      FakeLayerRecord("bn_init", "norm"),
      FakeLayerRecord("block/conv1", "conv", (3, 3), (2, 2), ((0, 1), (0, 1)), (1, 1)),
      FakeLayerRecord("block/conv2", "conv", (3, 3), (1, 1), pad1, (1, 1)),
      FakeLayerRecord("block/shortcut_conv", "conv", (1, 1), (2, 2), ((0, 0), (0, 0)),
                      (1, 1), on_shortcut=True),
      FakeLayerRecord("pool", "global_pool"),
      FakeLayerRecord("head", "dense"),
  ]
  fields = rf.receptive_field(records, (1, 16, 16, 3))  # 3, then 3 + 2, then 5 + 2 * 2
  assert [f.name for f in fields] == ["conv_init", "block/conv1", "block/conv2"]
  assert fields[-1].size == (9, 9) and fields[-1].jump == (2, 2)
  # The same block written out with both paths: the union is the main path's field.
  explicit = rf.receptive_field([
      rf.Window(3, 1, 1), rf.Branches(([rf.Window(3, 2, ((0, 1), (0, 1))), rf.Window(3, 1, 1)],
                                       [rf.Window(1, 2, 0)]))], (1, 16, 16, 3))
  assert explicit[-1].size == fields[-1].size and explicit[-1].left == fields[-1].left
  bad = records[:4] + [FakeLayerRecord("block/shortcut_conv", "conv", (3, 3), (2, 2),
                                       ((1, 1), (1, 1)), (1, 1), on_shortcut=True)]
  with pytest.raises(ValueError, match="Branches"):
    rf.receptive_field(bad)


def test_misaligned_branches_are_reported():
  # Paths of sizes 3 (centred on 1) and 1 (on 0): the union spans 0..2 but is not centred
  # on either path; the record says so instead of claiming one path's field.
  record = rf.receptive_field([rf.Branches(([(3, 1, ((0, 2),))], [(1, 1, 0)]))],
                              (1, 8, 1))[-1]
  assert not record.aligned
  assert record.size == (3,) and record.start == (1.0,)
  assert rf.receptive_field([rf.Branches(([(3, 1, 1)], []))])[-1].aligned


# ---- analytic == measured, on random stacks built from cnn_jax.ops ----------------------------

_SIZES = {1: 48, 2: 20, 3: 11}


def _random_stack(rng, num_dims):
  """A random conv/pool stack that fits the input; returns (windows, ops) lists."""
  n = _SIZES[num_dims]
  while True:
    windows, steps = [], []
    for _ in range(int(rng.integers(2, 5))):
      if rng.random() < 0.3:
        window = int(rng.integers(2, 4))
        stride = int(rng.integers(1, window + 1))
        windows.append(rf.Window(window, stride, "VALID"))
        steps.append(("pool", window, stride))
      else:
        kernel = int(rng.integers(1, 4))
        stride = int(rng.integers(1, 3))
        dilation = int(rng.integers(1, 3))
        padding = ["VALID", "SAME", int(rng.integers(0, 3))][int(rng.integers(0, 3))]
        windows.append(rf.Window(kernel, stride, padding, dilation))
        steps.append(("conv", kernel, stride, padding, dilation))
    try:
      records = rf.receptive_field(windows, (1,) + (n,) * num_dims + (2,))
    except ValueError:
      continue  # the stack shrank the input away; draw again
    return records, steps


def _apply_stack(steps, params, x, pool):
  for step, w in zip(steps, params):
    if step[0] == "pool":
      fn = ops.max_pool if pool == "max" else ops.avg_pool
      x = fn(x, step[1], step[2])
    else:
      _, _, stride, padding, dilation = step
      x = jax.nn.relu(ops.correlate(x, w, stride=stride, padding=padding, dilation=dilation))
  return x


def _positive_params(rng, steps, num_dims, channels=2, dtype=np.float32):
  params = []
  for step in steps:
    if step[0] == "pool":
      params.append(None)
      continue
    kernel = step[1]
    fan_in = channels * kernel ** num_dims
    # Positive weights and inputs keep every ReLU open and every path alive; dividing by the
    # fan-in keeps activations O(1).
    params.append(jnp.asarray(rng.uniform(0.5, 1.0, (kernel,) * num_dims + (channels, channels))
                              / fan_in, dtype))
  return params


@pytest.mark.parametrize("num_dims", [1, 2, 3])
def test_gradient_support_equals_analytic_field(rng, num_dims):
  for _ in range(2):
    records, steps = _random_stack(rng, num_dims)
    params = _positive_params(rng, steps, num_dims)
    n = _SIZES[num_dims]
    x = jnp.asarray(rng.uniform(0.5, 1.0, (1,) + (n,) * num_dims + (2,)), jnp.float32)
    out = records[-1].output_size
    for index in [None, (0,) * num_dims, tuple(int(rng.integers(0, s)) for s in out)]:
      measured = rf.gradient_support(lambda v: _apply_stack(steps, params, v, "avg"), x, index)
      analytic = rf.field_mask(records[-1], index)
      np.testing.assert_array_equal(measured, analytic, err_msg=f"{steps} at {index}")


@pytest.mark.parametrize("num_dims", [1, 2])
def test_forward_influence_equals_analytic_field(rng, num_dims):
  n = _SIZES[num_dims]
  # float64: the smallest single-path contribution of an edge pixel is ~(0.5/fan_in)^depth
  # ~ 1e-10 of an O(1) output, below float32 resolution (1e-7) but far above float64's.
  with jax.enable_x64(True):
    for _ in range(2):
      records, steps = _random_stack(rng, num_dims)
      params = _positive_params(rng, steps, num_dims, dtype=np.float64)
      x = jnp.asarray(rng.uniform(0.5, 1.0, (1,) + (n,) * num_dims + (2,)), jnp.float64)
      pixel = tuple(int(rng.integers(0, n)) for _ in range(num_dims))
      # A large delta makes the perturbed pixel the maximum of every pool window it is in.
      moved = rf.forward_influence(lambda v: _apply_stack(steps, params, v, "max"), x, pixel,
                                   delta=1e6)
      np.testing.assert_array_equal(
          moved, rf.influence_mask(records[-1], pixel),
          err_msg=f"{steps} at {pixel}")


def test_dilation_holes_are_measured(rng):
  # One 3-tap conv with dilation 2 has extent 5 but sees only pixels 0, 2, 4 (gridding).
  w = jnp.asarray(rng.uniform(0.5, 1.0, (3, 1, 1)), jnp.float32)
  x = jnp.asarray(rng.uniform(0.5, 1.0, (1, 9, 1)), jnp.float32)
  support = rf.gradient_support(lambda v: ops.correlate(v, w, dilation=2), x, (0,))
  np.testing.assert_array_equal(np.flatnonzero(support), [0, 2, 4])
  record = rf.receptive_field([(3, 1, 0, 2)], (1, 9, 1))[-1]
  assert record.size == (5,) and record.taps == ((0, 2, 4),)


def test_circular_field_wraps(rng):
  w = jnp.asarray(rng.uniform(0.5, 1.0, (3, 3, 1, 1)), jnp.float32)
  x = jnp.asarray(rng.uniform(0.5, 1.0, (1, 6, 6, 1)), jnp.float32)
  apply = lambda v: ops.correlate(ops.correlate(v, w, padding="CIRCULAR"), w,
                                  padding="CIRCULAR")
  record = rf.receptive_field([(3, 1, "CIRCULAR")] * 2, (1, 6, 6, 1))[-1]
  np.testing.assert_array_equal(rf.gradient_support(apply, x, (0, 0)),
                                rf.field_mask(record, (0, 0)))


# ---- effective receptive field ----------------------------------------------------------------

def test_mass_radius_by_hand():
  field = np.zeros((9, 9))
  field[4, 4] = 0.9
  field[4, 6] = 0.1  # two pixels right of the centre
  assert rf.mass_radius(field, 0.9) == 0
  assert rf.mass_radius(field, 0.95) == 2
  with pytest.raises(ValueError, match="fraction"):
    rf.mass_radius(field, 1.5)


def test_mass_std_by_hand():
  field = np.zeros((5, 7))
  field[2, 1] = field[2, 5] = 0.5  # two pixels +-2 along axis 1 from the centre (2, 3)
  np.testing.assert_allclose(rf.mass_std(field), np.sqrt((0.0 + 4.0) / 2), rtol=1e-12)


def test_erf_grows_like_sqrt_depth(rng):
  # 1-D keeps the test cheap; Luo et al.'s argument is per dimension.
  key = jax.random.key(int(rng.integers(2 ** 31)))
  depths = [4, 16, 64]
  rows = rf.erf_growth(depths, key=key, channels=4, num_samples=16, activation="linear",
                       num_dims=1)
  analytic = rf.growth_exponent(depths, [r["analytic_size"] for r in rows])
  width = rf.growth_exponent(depths, [r["erf_std"] for r in rows])
  size95 = rf.growth_exponent(depths, [r["erf_size"] for r in rows])
  # Analytic size 2d+1 grows linearly (slope 0.96 on these depths). The ERF is the law of a sum
  # of d independent tap displacements, width ~ sqrt(d): slope 0.5; over seeds 16 samples gave
  # 0.53-0.59 for the std and 0.45-0.62 for the noisier 95% box, so the bounds 0.35-0.7 and
  # < 0.8 exclude linear growth without flaking.
  assert analytic > 0.9
  assert 0.35 < width < 0.7, [(r["depth"], r["erf_std"]) for r in rows]
  assert size95 < 0.8, [(r["depth"], r["erf_size"]) for r in rows]
  assert all(r["erf_size"] <= r["analytic_size"] for r in rows)


def test_residual_block_support_equals_branches_field(rng):
  # relu(conv3x3/2(relu(conv3x3(x)))) + conv1x1/2(x): the measured support is the union of
  # both paths, which Branches computes (and here the main path's field contains the other).
  c = 2
  w1, w2 = (jnp.asarray(rng.uniform(0.5, 1.0, (3, 3, c, c)) / 18, jnp.float32) for _ in "ab")
  ws = jnp.asarray(rng.uniform(0.5, 1.0, (1, 1, c, c)), jnp.float32)
  x = jnp.asarray(rng.uniform(0.5, 1.0, (1, 12, 12, c)), jnp.float32)

  def block(v):
    main = jax.nn.relu(ops.correlate(v, w1, stride=2, padding="SAME"))
    main = ops.correlate(main, w2, padding="SAME")
    return jax.nn.relu(main + ops.correlate(v, ws, stride=2))

  record = rf.receptive_field(
      [rf.Branches(([rf.Window(3, 2, "SAME"), rf.Window(3, 1, "SAME")], [rf.Window(1, 2)]))],
      x.shape)[-1]
  assert record.aligned is False  # XLA's SAME puts stride-2 pads at the end: centres differ
  for index in [(0, 0), (5, 5), tuple(int(i) for i in rng.integers(0, 6, 2))]:
    np.testing.assert_array_equal(rf.gradient_support(block, x, index),
                                  rf.field_mask(record, index))


def test_heatmaps_are_written(tmp_path, rng):
  from cnn_jax import plotting  # pylint: disable=g-import-not-at-top
  record = rf.receptive_field([(3, 1, 1)] * 2, (1, 9, 9, 1))[-1]
  field = rng.random((9, 9))
  plotting.heatmap(field, str(tmp_path / "one.png"), title="field", box=record.bounds((4, 4)),
                   log=True)
  plotting.heatmap_grid({"1-D": rng.random(7), "2-D": field, "3-D": rng.random((3, 4, 5))},
                        str(tmp_path / "grid.png"))
  plotting.plot_erf_growth([dict(depth=d, analytic_size=2 * d + 1, erf_size=d + 2,
                                 erf_std=d ** 0.5) for d in (2, 4, 8)],
                           str(tmp_path / "growth.png"))
  for name in ("one.png", "grid.png", "growth.png"):
    assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_masks_reject_bad_indices():
  record = rf.receptive_field([(3, 1, 1)], (1, 5, 5, 1))[-1]
  with pytest.raises(ValueError, match="output_index"):
    rf.field_mask(record, (5, 0))
  with pytest.raises(ValueError, match="input_index"):
    rf.influence_mask(record, (0,))
  with pytest.raises(ValueError, match="input_shape"):
    rf.field_mask(rf.receptive_field([(3, 1, 1)])[-1])


# ---- the closed form (size, jump, left, start, taps) against the measured field ---------------

def _closed_form_mask(record, index, n):
  """Input pixels ``left + o * jump + t`` (t in taps) per dim, from the recurrences alone."""
  mask = np.ones((n,) * len(index), dtype=bool)
  for dim, o in enumerate(index):
    line = np.zeros(n, dtype=bool)
    coords = record.left[dim] + o * record.jump[dim] + np.asarray(record.taps[dim])
    line[coords[(coords >= 0) & (coords < n)]] = True
    mask &= line.reshape([-1 if d == dim else 1 for d in range(len(index))])
  return mask


def _strided_padded_stack(rng, num_dims):
  """A random conv/pool stack whose layers after the first stride have explicit padding."""
  n = _SIZES[num_dims]
  while True:
    records, steps = _random_stack(rng, num_dims)
    jump, padded_after_stride = 1, False
    for kind, op in records[-1].program:  # resolved pads: (kernel, stride, lo, hi, ...) per dim
      padded_after_stride |= kind == "window" and op[0].lo > 0 and jump > 1
      jump *= op[0].stride
    out = records[-1].output_size
    interior = [o for o in range(out[0])
                if 0 <= records[-1].bounds((o,) * num_dims)[0][0]
                and records[-1].bounds((o,) * num_dims)[0][1] < n]
    if padded_after_stride and interior:  # the case a wrong `left` recurrence gets wrong
      return records, steps


@pytest.mark.parametrize("num_dims", [1, 2])
def test_closed_form_field_equals_gradient_support(rng, num_dims):
  # The recurrences of the module docstring, not field_mask's layer-by-layer walk: every
  # output's measured support lies in {left + o * jump + taps}, and where that box lies inside
  # the input no padded zero cuts a path (a path through padding would reach a pixel outside
  # the input), so the two are equal, and the support's bounding box is centred on
  # start + o * jump with extent size.
  n = _SIZES[num_dims]
  for _ in range(3):
    records, steps = _strided_padded_stack(rng, num_dims)
    record = records[-1]
    params = _positive_params(rng, steps, num_dims)
    x = jnp.asarray(rng.uniform(0.5, 1.0, (1,) + (n,) * num_dims + (2,)), jnp.float32)
    apply = jax.jit(lambda v: _apply_stack(steps, params, v, "avg"))
    for o in range(record.output_size[0]):
      index = (o,) * num_dims
      measured = rf.gradient_support(apply, x, index)
      closed = _closed_form_mask(record, index, n)
      assert not np.any(measured & ~closed), f"{steps} at {index}: support outside the field"
      box = record.bounds(index)
      if all(0 <= lo and hi < n for lo, hi in box):
        np.testing.assert_array_equal(measured, closed, err_msg=f"{steps} at {index}")
        hit = np.flatnonzero(measured.reshape(n, -1).any(axis=1))
        assert hit[-1] - hit[0] + 1 == record.size[0], f"{steps} at {index}"
        assert (hit[0] + hit[-1]) / 2 == record.start[0] + o * record.jump[0], f"{steps}"
