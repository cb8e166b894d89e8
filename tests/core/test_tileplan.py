"""Per-request tiles from a measured curve (core/tileplan.py) and the load-time probe (core/tiletune.py):
the plan is the measured edge (or the one whole-image run) with the least predicted work; the probe walks
to the curve's minimum and stops; the curve is cached, read back, bypassed by GANFORGE_TILE, and shown by
/models. Timings in the probe tests are faked (a cost function of the edge), so each knows which edge must
win."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

from core import tiletune
from core.imaging import padded_size
from core.tileplan import plan_tile, rate_at
from core.tiling import tile_grid
from core.tuned import load_tuned
from core.settings import RuntimeSettings
from service_fixtures import write_fixture_models

# srresnet-x4's shape on this CPU: cheapest per pixel around 160, dearer beyond
SR_CURVE = ((96, 0.50e-6), (128, 0.43e-6), (160, 0.41e-6), (192, 0.45e-6), (256, 0.52e-6), (384, 0.61e-6))
FLAT_CURVE = ((256, 1e-7), (512, 1e-7), (768, 1e-7), (1024, 1e-7))


def work(height: int, width: int, tile, overlap: int, curve, multiple_of: int = 1) -> float:
    ys, xs, th, tw = tile_grid(height, width, tile, overlap)
    ph, pw = padded_size(th, multiple_of, 1), padded_size(tw, multiple_of, 1)
    return len(ys) * len(xs) * ph * pw * rate_at(curve, ph * pw)


def test_rate_is_interpolated_between_points_and_flat_beyond():
    assert rate_at(SR_CURVE, 128 * 128) == pytest.approx(0.43e-6)
    assert rate_at(SR_CURVE, 10) == 0.50e-6 and rate_at(SR_CURVE, 4096 * 4096) == 0.61e-6
    mid = rate_at(SR_CURVE, 144 * 144)
    assert 0.41e-6 < mid < 0.43e-6


@pytest.mark.parametrize("height,width", [(1200, 1920), (1024, 1024), (300, 5000), (2048, 2048), (40, 40), (129, 131)])
def test_the_plan_is_the_cheapest_measured_edge_and_never_beyond_the_largest(height, width):
    edge = plan_tile(height, width, SR_CURVE, 12, 1, 1)
    assert edge in dict(SR_CURVE)
    planned = work(height, width, edge, 12, SR_CURVE)
    for square, _ in SR_CURVE:
        assert planned <= work(height, width, square, 12, SR_CURVE) * (1 + 1e-9)


def test_a_flat_curve_runs_a_1024_image_whole_and_a_bigger_one_in_measured_tiles():
    assert plan_tile(1024, 1024, FLAT_CURVE, 32, 128, 128) == 1024  # one run, not the card's 9 of 512
    edge = plan_tile(3000, 2100, FLAT_CURVE, 32, 128, 128)
    assert edge in dict(FLAT_CURVE)
    assert work(3000, 2100, edge, 32, FLAT_CURVE, 128) <= work(3000, 2100, 512, 32, FLAT_CURVE, 128)


def test_1920x1200_plans_fewer_padded_pixels_than_the_card_tile():
    edge = plan_tile(1200, 1920, SR_CURVE, 12, 1, 1)
    ys, xs, h, w = tile_grid(1200, 1920, edge, 12)
    card_ys, card_xs, _, _ = tile_grid(1200, 1920, 128, 12)
    assert len(ys) * len(xs) * h * w < len(card_ys) * len(card_xs) * 128 * 128
    assert ys[-1] + h == 1200 and xs[-1] + w == 1920


def test_a_cheaper_small_edge_wins_only_when_its_overlaps_do_not_eat_the_gain():
    cheap_small = ((96, 0.30e-6), (256, 0.40e-6))  # 25% cheaper per pixel at 96 ...
    assert plan_tile(2000, 2000, cheap_small, 12, 1, 1) == 96
    costly_overlap = ((96, 0.30e-6), (256, 0.40e-6))
    assert plan_tile(2000, 2000, costly_overlap, 40, 1, 1) == 256  # ... but 40 px of overlap costs more


# ---------------------------------------------------------------- the probe


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fake_runs(clock: FakeClock, per_px: dict[int, float]):
    """seconds_at(edge): the curve's time (and the clock moves by it); counts calls per edge."""
    calls: dict[int, int] = {}

    def seconds_at(edge: int) -> float:
        calls[edge] = calls.get(edge, 0) + 1
        seconds = per_px[edge] * edge * edge
        clock.now += seconds
        return seconds

    return seconds_at, calls


def test_the_probe_walks_to_the_minimum_and_stops_past_it():
    edges = [64, 96, 128, 160, 192, 224, 256, 320, 384, 512]
    per_px = {64: 0.9e-6, 96: 0.5e-6, 128: 0.43e-6, 160: 0.41e-6, 192: 0.45e-6, 224: 0.5e-6, 256: 0.52e-6,
              320: 0.56e-6, 384: 0.61e-6, 512: 0.7e-6}
    clock = FakeClock()
    seconds_at, calls = fake_runs(clock, per_px)
    measured = tiletune.measure_curve(seconds_at, edges, 128, 12, budget_s=60, clock=clock)
    best = min(measured, key=lambda e: tiletune.covered_cost(e, measured[e], 12))
    assert best == 160
    assert 384 not in measured and 512 not in measured  # two edges past the minimum: stopped
    assert 96 in measured and 64 in measured
    assert all(calls[e] == 1 + tiletune.TIMED_RUNS + 1 for e in measured)  # untimed, timed, one confirming


def test_the_least_run_counts_and_a_burst_on_one_edge_does_not_decide():
    """A burst of load during 96's runs (3x slower) would make 128 look best; 96's confirming run, after the
    burst, puts it back: the curve keeps each edge's least time."""
    edges = [64, 96, 128, 160]
    per_px = {64: 0.6e-6, 96: 0.4e-6, 128: 0.45e-6, 160: 0.5e-6}
    clock = FakeClock()
    seconds_at, calls = fake_runs(clock, per_px)

    def bursty(edge: int) -> float:
        seconds = seconds_at(edge)
        return seconds * 3 if edge == 96 and calls[96] <= 1 + tiletune.TIMED_RUNS else seconds

    measured = tiletune.measure_curve(bursty, edges, 128, 12, budget_s=60, clock=clock)
    assert measured[96] == pytest.approx(0.4e-6)
    assert min(measured, key=lambda e: tiletune.covered_cost(e, measured[e], 12)) == 96


def test_the_probe_keeps_to_its_budget():
    edges = [128, 160, 192, 224, 256, 320, 384]
    per_px = dict.fromkeys(edges, 1e-5)  # slow: 0.16 s per run at 128
    clock = FakeClock()
    seconds_at, _ = fake_runs(clock, {e: s * (1 - e / 1000) for e, s in per_px.items()})  # bigger is cheaper
    measured = tiletune.measure_curve(seconds_at, edges, 128, 12, budget_s=2.0, clock=clock)
    assert 128 in measured and len(measured) < len(edges)
    assert clock.now < 2.0 + 2 * max(per_px[e] * e * e for e in measured) * (1 + tiletune.TIMED_RUNS)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tile_models")
    write_fixture_models(root)
    return root


def upscaler(models: Path) -> str:
    from contract.folder import read_card

    return next(f.name for f in sorted(models.iterdir()) if f.is_dir() and (f / "card.json").exists()
                and read_card(f).endpoint == "upscale" and read_card(f).input.native_size is None)


class Others:
    """Stands in for core.cpu.OthersCpu: other processes' share of the CPU while the curve was measured."""
    share_value = 0.0

    def share(self) -> float:
        return self.share_value


def test_the_curve_is_measured_cached_and_read_back(models, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(tiletune, "OthersCpu", Others)  # a quiet machine: the curve is cached
    name = upscaler(models)
    s = RuntimeSettings(device="cpu", backend="onnxruntime", autotune_budget_s=0.5, autotune_dir=tmp_path / "cache")
    first = load_tuned(models / name, s, ["CPUExecutionProvider"])
    assert first.tiles["source"] == "measured" and first.tiles["file"]
    assert (tmp_path / "cache" / f"{name}.tiles.json").exists()
    assert first.image_spec.tile_curve and first.image_spec.tile == first.tiles["tile"]
    assert first.tiles["tile"] in [r["edge"] for r in first.tiles["rows"]]
    assert first.public()["tiles"]["rows"] == first.tiles["rows"]
    with caplog.at_level(logging.INFO, logger="bentoml.ganforge"):
        again = load_tuned(models / name, s, ["CPUExecutionProvider"])
    assert again.tiles["source"] == "cache" and again.image_spec.tile_curve == first.image_spec.tile_curve
    assert "tile curve from cache" in caplog.text


def test_a_curve_measured_beside_other_work_serves_but_is_not_cached(models, tmp_path, monkeypatch, caplog):
    busy = type("Busy", (Others,), {"share_value": 0.4})
    monkeypatch.setattr(tiletune, "OthersCpu", busy)
    name = upscaler(models)
    s = RuntimeSettings(device="cpu", backend="onnxruntime", autotune_budget_s=0.5, autotune_dir=tmp_path / "cache")
    with caplog.at_level(logging.WARNING, logger="bentoml.ganforge"):
        m = load_tuned(models / name, s, ["CPUExecutionProvider"])
    assert m.tiles["source"] == "measured" and m.tiles["file"] is None and m.image_spec.tile_curve
    assert not (tmp_path / "cache" / f"{name}.tiles.json").exists()
    assert "other processes used 40% of the CPU" in caplog.text


def test_others_cpu_sees_another_process_and_not_this_one():
    """A child burning one core for 0.6 s: at least a quarter of a 2-core machine (a half, less noise);
    the same burn in this process is not counted as others'."""
    import subprocess
    import sys
    import time

    from core.cpu import OthersCpu, logical_cores

    watch = OthersCpu()
    subprocess.run([sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<0.6: pass"], check=True)
    assert watch.share() >= 0.5 / logical_cores()
    mine = OthersCpu()
    end = time.monotonic() + 0.6
    while time.monotonic() < end:
        pass
    assert mine.share() < watch.share()


@pytest.mark.parametrize("given,why", [({"tile": 64}, "GANFORGE_TILE=64 set by hand"),
                                       ({"autotune_budget_s": 0.0}, "GANFORGE_AUTOTUNE_BUDGET_S=0")])
def test_a_tile_given_by_hand_or_no_budget_measures_nothing(models, tmp_path, given, why):
    name = upscaler(models)
    base = {"device": "cpu", "backend": "onnxruntime", "autotune_budget_s": 0.5, "autotune_dir": tmp_path / "c"}
    m = load_tuned(models / name, RuntimeSettings(**{**base, **given}), ["CPUExecutionProvider"])
    assert why in m.tiles["skipped"] and not m.image_spec.tile_curve
    assert m.image_spec.tile_for(999, 999) == m.image_spec.tile
    assert not (tmp_path / "c").exists()


def test_admission_estimates_the_planned_tiles():
    from core.loading import ImageSpec
    from service.admission import processed_pixels

    spec = ImageSpec(input_name="x", output_name="y", in_channels=3, in_range=(-1.0, 1.0), multiple_of=1,
                     min_size=4, native_size=None, out_channels=3, out_range=(-1.0, 1.0), scale=4, tile=128,
                     overlap=12)
    planned = dataclasses.replace(spec, tile=160, tile_curve=SR_CURVE)
    edge = planned.tile_for(1200, 1920)
    assert edge == plan_tile(1200, 1920, SR_CURVE, 12, 1, 4)  # the served spec plans from its curve
    whole = dataclasses.replace(spec, scale=1, tile=512, overlap=32, multiple_of=128, min_size=128,
                                tile_curve=FLAT_CURVE)
    assert whole.tile_for(1024, 1024) == 1024 and whole.tile == 512  # one run, not the card's 9 of 512
    ys, xs, _, _ = tile_grid(1200, 1920, edge, 12)
    assert processed_pixels(planned, 1200, 1920) == len(ys) * len(xs) * edge * edge * 16
    assert processed_pixels(planned, 1200, 1920) < processed_pixels(spec, 1200, 1920)
