"""The autotuner (cnn_jax/native/autotune.py): its choice by (faked) time among the correct
candidates, its disk cache, and that any choice changes a layer's results only by rounding.
No test here depends on real timings: the timer is replaced."""

import concurrent.futures
import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import layers, native
from cnn_jax.native import autotune
from cnn_jax.ops import correlation

pytestmark = pytest.mark.skipif(
    not native.available(), reason=f"native kernels unavailable: {native.unavailable_reason()}")

CANDIDATES = ("xla", "direct", "winograd2", "winograd4")
SHAPE = ((2, 8, 8, 16), (3, 3, 16, 16))  # a layer every candidate takes


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
  """A fresh autotune cache (the library itself is looked up where it was built)."""
  library = native.ffi._load()  # pylint: disable=protected-access
  assert library is None
  monkeypatch.setattr(autotune, "cache_file", lambda: str(tmp_path / "autotune.json"))
  return tmp_path


def _fastest(winner):
  """A fake timer under which ``winner`` takes 1 ms and every other candidate 2 ms."""
  return lambda candidate, seconds: 1e-3 if candidate == winner else 2e-3


def _spec():
  return correlation.window_spec(SHAPE[0], (3, 3), 1, "SAME", 1)


@pytest.mark.parametrize("winner", CANDIDATES)
def test_measure_picks_the_fastest_candidate(winner):
  result = autotune.measure(*SHAPE, _spec(), CANDIDATES, repeats=2, timer=_fastest(winner))
  assert result["choice"] == winner
  assert set(result["seconds"]) == set(CANDIDATES) and not result["rejected"]


@pytest.mark.parametrize("slower_by, choice", [(0.5, "direct"), (1.5, "winograd2")])
def test_a_near_tie_goes_to_the_earlier_candidate(slower_by, choice, rng):
  # direct is slower than winograd2 by slower_by x TIE (jittered): inside the tie it wins as
  # the earlier candidate whatever the noise says, outside it the faster one does.
  fraction = slower_by * autotune.TIE * rng.uniform(0.8, 1.2)
  times = {"xla": 2e-3, "direct": 1e-3 * (1 + fraction), "winograd2": 1e-3, "winograd4": 3e-3}
  result = autotune.measure(*SHAPE, _spec(), CANDIDATES, repeats=1,
                            timer=lambda candidate, seconds: times[candidate])
  assert result["choice"] == choice


def test_a_wrong_candidate_is_never_chosen(monkeypatch):
  original = autotune._step  # pylint: disable=protected-access

  def step(candidate, spec):
    fn = original(candidate, spec)
    if candidate != "direct":
      return fn
    return lambda x, w, g: tuple(a * (1 + 1e-3) for a in fn(x, w, g))  # planted: 0.1% off

  monkeypatch.setattr(autotune, "_step", step)
  result = autotune.measure(*SHAPE, _spec(), CANDIDATES, repeats=1, timer=_fastest("direct"))
  assert "direct" in result["rejected"] and result["choice"] != "direct"


def test_choose_measures_once_and_caches_on_disk(cache_dir, monkeypatch):
  calls = []
  original = autotune.measure

  def counted(*args, **kwargs):
    calls.append(args)
    return original(*args, repeats=1, timer=_fastest("winograd2"), **kwargs)

  monkeypatch.setattr(autotune, "measure", counted)
  assert autotune.choose(*SHAPE, _spec(), CANDIDATES) == "winograd2"
  assert autotune.choose(*SHAPE, _spec(), CANDIDATES) == "winograd2"
  assert len(calls) == 1
  entries = json.loads((cache_dir / "autotune.json").read_text())
  (key, entry), = entries.items()
  assert autotune.cpu_model() in key and "x(2, 8, 8, 16)" in key
  assert entry["choice"] == "winograd2"
  assert "winograd2" in autotune.table()
  # No temporary left; the lock file stays (removing it could split two waiting tuners).
  assert sorted(p.name for p in cache_dir.iterdir()) == ["autotune.json", "autotune.json.lock"]


def test_a_runs_recorded_choice_wins_over_the_machines_cache(cache_dir, monkeypatch):
  # A resumed run keeps its kernels even where the cache now says otherwise (deleted,
  # re-measured, another machine): the run's own record is read first.
  monkeypatch.setattr(autotune, "measure", functools.partial(
      autotune.measure, repeats=1, timer=_fastest("winograd2")))
  record = cache_dir / "run" / "kernels.json"
  layer = autotune.layer_key(*SHAPE, _spec(), CANDIDATES)
  record.parent.mkdir()
  record.write_text(json.dumps({layer: "direct"}))
  assert autotune.choose(*SHAPE, _spec(), CANDIDATES, str(record)) == "direct"
  assert not (cache_dir / "autotune.json").exists()  # nothing measured for a recorded layer
  # A layer the run has not met yet gets the cache's choice, and the record keeps it.
  other = ((2, 8, 8, 16), (3, 3, 16, 32))
  assert autotune.choose(*other, _spec(), CANDIDATES, str(record)) == "winograd2"
  assert json.loads(record.read_text()) == {
      layer: "direct", autotune.layer_key(*other, _spec(), CANDIDATES): "winograd2"}


def test_parallel_tuners_measure_a_layer_once_and_agree(cache_dir, monkeypatch):
  # Two runs in threads meet the same new layer at once. A measurement's winner depends on
  # the noise of the moment (faked here: each measurement names another winner), so both
  # must wait for one measurement and read it.
  winners = iter(["winograd2", "direct", "xla"])
  calls = []

  def measure(*args, **kwargs):
    calls.append(args)
    time.sleep(0.2)  # long enough for the other thread to arrive meanwhile
    return {"choice": next(winners), "seconds": {}, "rejected": {}}

  monkeypatch.setattr(autotune, "measure", measure)
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    choices = list(pool.map(lambda _: autotune.choose(*SHAPE, _spec(), CANDIDATES), range(2)))
  assert choices == ["winograd2", "winograd2"] and len(calls) == 1


@pytest.mark.parametrize("winner", CANDIDATES)
def test_any_choice_changes_a_layers_results_only_by_rounding(cache_dir, monkeypatch, rng,
                                                              winner):
  monkeypatch.setattr(autotune, "measure",
                      functools.partial(autotune.measure, repeats=1, timer=_fastest(winner)))
  x = jnp.asarray(rng.standard_normal(SHAPE[0]), jnp.float32)
  g = jnp.asarray(rng.standard_normal(SHAPE[0][:-1] + (16,)), jnp.float32)

  def values(kernels):
    conv = layers.Conv(16, 3, use_bias=False, grad="hand", kernels=kernels)
    params = conv.init(jax.random.key(0), x)
    y, vjp = jax.vjp(lambda p, x: conv.apply(p, x), params, x)
    dparams, dx = vjp(g)
    return [y, dx, dparams["params"]["kernel"]]

  tuned = values(native.Kernels(True, "autotune_winograd4"))
  reference = values(native.XLA)
  assert json.loads((cache_dir / "autotune.json").read_text()).popitem()[1]["choice"] == winner
  # float32 sums of at most 128 terms (dL/dw: 2*8*8), each side rounding: 8 sqrt(K) 2^-24 for
  # the direct and F(2x2) kernels, 16x that for F(4x4) (autotune._FACTOR).
  tolerance = (128 if winner == "winograd4" else 8) * np.sqrt(144) * 2.0 ** -24
  for got, want in zip(tuned, reference):
    scale = float(jnp.max(jnp.abs(want)))
    assert float(jnp.max(jnp.abs(got - want))) <= tolerance * scale, winner


def test_autotune_offers_winograd4_only_when_allowed(cache_dir, monkeypatch):
  seen = []
  monkeypatch.setattr(autotune, "choose", lambda *args: seen.append(args[3]) or "xla")
  x, w = (jax.ShapeDtypeStruct(s, jnp.float32) for s in SHAPE)
  for algorithm in ("autotune", "autotune_winograd4"):
    assert native.conv_tile(native.Kernels(True, algorithm), x, w, _spec()) is None
  assert seen == [("xla", "direct", "winograd2"), ("xla", "direct", "winograd2", "winograd4")]
