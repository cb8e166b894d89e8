"""auto on the CPU serves each model's fastest gated candidate (core/autotune.py, core/tuned.py): the
choice honoured, cached (a second load measures nothing), remeasured when a version changes or the file is
corrupt, bypassed by settings given by hand, routed per size class, and shown by /models.

The timings are faked (`time_call` patched) so each test knows which candidate must win; nothing here
asserts a real duration."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from contract.folder import read_card
from core import autotune, tuned
from core.autotune import Candidate, RoutedSession, SizeClass, candidates, size_classes
from core.backends import OPENVINO, ONNXRUNTIME, OpenVinoSession, OrtSession
from core.runtime import CPU
from service.config import Settings
from service.registry import ModelRegistry
from service_fixtures import write_fixture_models

FAST, SLOW = 1.0, 5.0


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("autotune_models")
    write_fixture_models(root)
    return root


def settings(models: Path, cache: Path, **kw) -> Settings:
    return Settings(models_dir=models, device="cpu", autotune_dir=cache, autotune_budget_s=2.0, **kw)


def backend_of(session) -> str:
    return session.describe()["backend"]


@pytest.fixture
def measured(monkeypatch):
    """Fake timings: `winner["backend"]` is FAST, the other SLOW; counts the measurements made."""
    state = {"backend": OPENVINO, "calls": 0, "measures": 0}

    def fake_time(session, feeds, settle_s):
        state["calls"] += 1
        return FAST if backend_of(session) == state["backend"] else SLOW

    real_measure = tuned.measure

    def counting_measure(*args, **kwargs):
        state["measures"] += 1
        return real_measure(*args, **kwargs)

    monkeypatch.setattr(autotune, "time_call", fake_time)
    monkeypatch.setattr(tuned, "measure", counting_measure)
    monkeypatch.setattr(autotune, "machine_load", lambda: 0.0)  # a quiet machine: its tables are cached
    monkeypatch.setattr(tuned, "OthersCpu", lambda: OthersShare(0.0))
    return state


class OthersShare:
    """Stands in for core.cpu.OthersCpu: what other processes used of the CPU during the measurement."""

    def __init__(self, value: float | None) -> None:
        self.value = value

    def share(self) -> float | None:
        return self.value


def load(models: Path, name: str, s: Settings):
    return tuned.load_tuned(models / name, s, [CPU])


@pytest.mark.parametrize("winner", [ONNXRUNTIME, OPENVINO])
def test_the_measured_fastest_serves_and_is_cached(models, tmp_path, measured, winner, caplog):
    measured["backend"] = winner
    s = settings(models, tmp_path / "cache")
    m = load(models, "edges2color", s)
    assert m.ready and m.backend == winner and m.precision == "fp32"
    assert all(backend_of(session) == winner for session in m.sessions.values())
    assert measured["measures"] == 1 and m.autotune["source"] == "measured"
    assert all(row["choice"] == f"{winner} fp32" for row in m.autotune["rows"])
    assert "measured here (measured)" in m.precision_reason
    cache = tmp_path / "cache" / "edges2color.json"
    saved = json.loads(cache.read_text())
    assert saved["key"]["version"] == m.version and saved["rows"][0]["choice"] == f"{winner} fp32"

    measured["backend"] = OPENVINO if winner == ONNXRUNTIME else ONNXRUNTIME  # would now choose the other
    with caplog.at_level(logging.INFO, logger="bentoml.ganforge"):
        again = load(models, "edges2color", s)
    assert measured["measures"] == 1, "the second load measured again"
    assert again.backend == winner and again.autotune["source"] == "cache"
    assert any("from cache" in r.getMessage() for r in caplog.records)


def test_a_version_change_or_a_corrupt_file_measures_again(models, tmp_path, measured, monkeypatch):
    s = settings(models, tmp_path / "cache")
    load(models, "fashion-dcgan", s)
    assert measured["measures"] == 1
    cache = tmp_path / "cache" / "fashion-dcgan.json"

    real_versions = autotune.library_versions
    monkeypatch.setattr(autotune, "library_versions", lambda: {**real_versions(), "onnxruntime": "0.0.1"})
    assert load(models, "fashion-dcgan", s).autotune["source"] == "measured" and measured["measures"] == 2
    assert json.loads(cache.read_text())["key"]["onnxruntime"] == "0.0.1"  # rewritten for the new setup

    cache.write_text('{"key": {"autotune": 1}, "rows": [')  # a torn write from elsewhere
    assert load(models, "fashion-dcgan", s).autotune["source"] == "measured" and measured["measures"] == 3
    assert json.loads(cache.read_text())["rows"]  # valid again
    saved = json.loads(cache.read_text())
    saved["key"]["version"] = "another-version"
    cache.write_text(json.dumps(saved))
    assert load(models, "fashion-dcgan", s).autotune["source"] == "measured" and measured["measures"] == 4
    assert not [p for p in cache.parent.iterdir() if p.name.startswith(".")]  # no temporary file left


@pytest.mark.parametrize("forced", [{"backend": "onnxruntime"}, {"backend": "openvino"}, {"precision": "fp32"},
                                    {"autotune_budget_s": 0.0}])
def test_settings_given_by_hand_bypass_the_measurement(models, tmp_path, measured, forced):
    measured["backend"] = ONNXRUNTIME
    s = settings(models, tmp_path / "cache").__class__(
        **{**settings(models, tmp_path / "cache").__dict__, **forced})
    m = load(models, "srresnet-x4", s)
    assert m.ready and measured["measures"] == 0 and "skipped" in m.autotune
    assert not (tmp_path / "cache" / "srresnet-x4.json").exists()  # no table (the tile curve is another step)
    expected = forced.get("backend", OPENVINO)  # the static rule: OpenVINO on the CPU
    assert m.backend == expected


def test_a_per_model_precision_bypasses_only_that_model(models, tmp_path, measured):
    s = Settings.from_env({"GANFORGE_PRECISION": "edges2color:fp32", "GANFORGE_DEVICE": "cpu",
                           "GANFORGE_AUTOTUNE_DIR": str(tmp_path / "cache")})
    assert "GANFORGE_PRECISION=fp32" in load(models, "edges2color", s).autotune["skipped"]
    assert load(models, "srresnet-x4", s).autotune["source"] == "measured"


def test_size_classes_route_to_their_own_choice(models, tmp_path, monkeypatch, measured):
    """fashion-dcgan: n=1 fastest on onnxruntime, n=64 on OpenVINO -> a RoutedSession."""
    def by_size(session, feeds, settle_s):
        small = feeds["z"].shape[0] == 1
        return FAST if (backend_of(session) == ONNXRUNTIME) == small else SLOW

    monkeypatch.setattr(autotune, "time_call", by_size)
    m = load(models, "fashion-dcgan", settings(models, tmp_path / "cache"))
    session = m.sessions["generator"]
    assert isinstance(session, RoutedSession)
    assert [row["choice"] for row in m.autotune["rows"]] == [f"{ONNXRUNTIME} fp32", f"{OPENVINO} fp32"]
    latent = m.generate_spec.latent_dim
    assert isinstance(session.session_for(latent), OrtSession)
    assert isinstance(session.session_for(64 * latent), OpenVinoSession)
    assert m.backend == OPENVINO  # the largest class's choice
    z = np.zeros((3, m.generate_spec.latent_dim), np.float32)
    feeds = {"z": z, "label": np.zeros(3, np.int64)} if m.generate_spec.label_name else {"z": z}
    assert session.run(None, feeds)[0].shape[0] == 3
    assert [r["backend"] for r in session.describe()["routes"]] == [ONNXRUNTIME, OPENVINO]


def test_models_shows_the_table_choice_and_reason(models, tmp_path, measured):
    measured["backend"] = ONNXRUNTIME
    registry = ModelRegistry.load(settings(models, tmp_path / "cache"))
    shown = {m["name"]: m for m in registry.describe()["models"]}
    for name, m in shown.items():
        table = m["autotune"]
        assert table["source"] == "measured" and table["rows"], name
        row = table["rows"][0]
        assert set(row) >= {"input", "shape", "ms", "choice", "reason"}
        assert row["ms"][f"{ONNXRUNTIME} fp32"] == FAST and row["choice"] == f"{ONNXRUNTIME} fp32"
        assert m["backend"] == ONNXRUNTIME and "fastest measured" in m["precision_reason"]
        assert "openvino bf16" in table["excluded"]  # the fixtures' cards carry no bf16 gate


def test_candidates_follow_the_quality_gates(models):
    card = read_card(models / "edges2color")
    found, out = candidates(card, True, (True, "native bf16 (amx_bf16)"))
    assert [c.label for c in found] == ["onnxruntime fp32", "openvino fp32"]
    assert "no bf16 measurement" in out["openvino bf16"] and "int8" in out["onnxruntime int8"]
    card.variants["bf16"] = type("V", (), {"extra": {"psnr_vs_fp32_db_min": 60.0, "passed": True,
                                                     "of_version": card.version}, "files": {}})()
    assert Candidate(OPENVINO, "bf16") in candidates(card, True, (True, "native"))[0]
    assert Candidate(OPENVINO, "bf16") not in candidates(card, True, (False, "no native bf16"))[0]
    assert [c.label for c in candidates(card, False, (True, "native"))[0]] == ["onnxruntime fp32"]


def test_size_classes_are_the_request_shapes(models):
    classes = size_classes(read_card(models / "edges2color"), 512)
    assert [c.label for c in classes] == ["256x256", "512x512"] and classes[0].shape == (1, 1, 256, 256)
    assert [c.label for c in size_classes(read_card(models / "shoe2boot"), 28)] == ["28x28"]
    assert [c.label for c in size_classes(read_card(models / "fashion-dcgan"), 0)] == ["n=1", "n=64"]
    assert [c.label for c in size_classes(read_card(models / "srresnet-x4"), 64)] == ["64x64"]


def test_routed_session_picks_the_nearest_class_on_a_log_scale():
    class Fake:
        def __init__(self, name):
            self.name = name

        def run(self, names, feeds):
            return [self.name]

    routed = RoutedSession.__new__(RoutedSession)
    routed.routes = [(100, Fake("small")), (10000, Fake("large"))]
    routed.input_name = "x"
    routed.bounds = [1000.0]
    assert routed.run(None, {"x": np.zeros(900)}) == ["small"]
    assert routed.run(None, {"x": np.zeros(1100)}) == ["large"]
    assert SizeClass("a", (1, 2), 2).elements == 2


class FakeSession:
    def __init__(self, ms: float) -> None:
        self.ms = ms

    def run(self, names, feeds):
        return [np.zeros(1)]


def fake_clock(monkeypatch):
    monkeypatch.setattr(autotune, "time_call", lambda session, feeds, settle_s: session.ms)


def test_measure_class_keeps_the_close_ones_and_drops_the_slow(monkeypatch):
    fake_clock(monkeypatch)
    sessions = {"a": FakeSession(10.0), "b": FakeSession(11.0), "c": FakeSession(25.0), "d": FakeSession(100.0)}
    row = autotune.measure_class(sessions, {}, deadline=float("inf"))
    assert row["ms"]["a"] == 10.0 and row["ms"]["b"] == 11.0 and row["rounds"] == autotune.MAX_ROUNDS
    assert row["ms"]["c"] is None and row["pruned_ms"]["c"] == 25.0 and "3 rounds" in row["pruned_at"]["c"]
    assert row["ms"]["d"] is None and "first timed call" in row["pruned_at"]["d"]
    assert autotune.choose(row)[0] == "a"


def test_measure_class_is_bounded_by_its_deadline(monkeypatch):
    fake_clock(monkeypatch)
    row = autotune.measure_class({"a": FakeSession(1.0), "b": FakeSession(1.5)}, {}, deadline=0.0)
    assert row["rounds"] == 1  # past the deadline: the one round a choice needs, no more


@pytest.mark.parametrize("others, loadavg", [(0.5, 0.1), (None, 64.0)])  # None: no /proc/stat, the load average decides
def test_a_table_measured_on_a_busy_machine_serves_but_is_not_cached(models, tmp_path, measured, monkeypatch, others,
                                                                      loadavg):
    monkeypatch.setattr(autotune, "machine_load", lambda: loadavg)
    monkeypatch.setattr(tuned, "OthersCpu", lambda: OthersShare(others))
    s = settings(models, tmp_path / "cache")
    m = load(models, "shoe2boot", s)
    assert m.autotune["source"] == "measured" and m.autotune["file"] is None and m.backend == OPENVINO
    assert m.autotune["rows"][0]["loadavg"] == loadavg and m.autotune["others_cpu"] == others
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())
    load(models, "shoe2boot", s)
    assert measured["measures"] == 2  # nothing cached: measured again
