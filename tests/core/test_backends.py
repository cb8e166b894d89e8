"""OpenVINO beside onnxruntime (core/backends.py): the backend and precision choices, OpenVINO's outputs
against onnxruntime's, bf16 within its card gate (modelops/bf16.py), concurrent callers, and a CPU-only start
without onnxruntime's CUDA error lines (service/runtime.py)."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from core import backends
from core.backends import (OPENVINO, OPENVINO_CPU, ONNXRUNTIME, bf16_support, choose_backend,
                              choose_float_precision, gate_result, make_openvino_session)
from service.config import Settings, SettingsError
from service.registry import ModelRegistry
from core.runtime import CPU, CUDA, make_session, nvidia_gpu, resolve_providers
from service_fixtures import running_server, write_fixture_models

NATIVE_BF16 = backends.native_bf16()[0]
needs_bf16 = pytest.mark.skipif(not NATIVE_BF16, reason=f"no native bf16 here: {backends.native_bf16()[1]}")


@pytest.fixture(scope="module")
def fixture_models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("backend_models")
    write_fixture_models(root)
    return root


def feeds_for(folder: Path, role: str, size: tuple[int, int], batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    card = json.loads((folder / "card.json").read_text())
    rng = np.random.default_rng(seed)
    if card["endpoint"] == "generate":
        z = rng.standard_normal((batch, card["latent_dim"])).astype(np.float32)
        return {"z": z, "label": (np.arange(batch) % len(card["classes"])).astype(np.int64)}
    card_in = (card.get("roles") or {}).get(role, card)["input"]
    size = tuple(card_in["native_size"] or size)  # a graph fixed at one size runs at that size
    return {"image": rng.uniform(-1, 1, (batch, card_in["channels"], *size)).astype(np.float32)}


# ---------------------------------------------------------------- choices


def test_backend_choice():
    assert choose_backend("auto", [CPU], True) == (OPENVINO, "auto: the CPU, so OpenVINO")
    assert choose_backend("auto", [(CUDA, {}), CPU], True)[0] == ONNXRUNTIME  # CUDA: onnxruntime
    assert choose_backend("auto", [CPU], False)[0] == ONNXRUNTIME  # no openvino package: onnxruntime
    assert choose_backend("onnxruntime", [CPU], True) == (ONNXRUNTIME, "GANFORGE_BACKEND=onnxruntime")
    assert choose_backend("openvino", [CPU], True)[0] == OPENVINO
    with pytest.raises(RuntimeError, match="not installed"):
        choose_backend("openvino", [CPU], False)


def test_backend_and_precision_settings():
    assert (Settings.from_env({}).backend, Settings.from_env({}).precision) == ("auto", "auto")
    assert Settings.from_env({"GANFORGE_BACKEND": " OpenVINO "}).backend == "openvino"
    s = Settings.from_env({"GANFORGE_PRECISION": "bf16,colorize:fp32"})
    assert (s.precision_for("x"), s.precision_for("colorize")) == ("bf16", "fp32")
    with pytest.raises(SettingsError, match="GANFORGE_BACKEND"):
        Settings.from_env({"GANFORGE_BACKEND": "tensorrt"})
    with pytest.raises(SettingsError, match="GANFORGE_DEVICE=cuda"):
        Settings.from_env({"GANFORGE_BACKEND": "openvino", "GANFORGE_DEVICE": "cuda"})


def bf16_entry(worst: float | None, passed: bool | None, gate: float = 45.0) -> SimpleNamespace:
    extra = {"gate_db": gate}
    if worst is not None:
        extra.update(psnr_vs_fp32_db=worst + 3, psnr_vs_fp32_db_min=worst, passed=passed)
    return SimpleNamespace(extra=extra)


@pytest.mark.parametrize("flags, capabilities, native", [
    ({"avx512f", "amx_bf16", "amx_tile", "avx512_bf16"}, ["FP32", "BF16"], True),  # Sapphire Rapids and later
    ({"avx512f", "avx512_bf16"}, ["FP32", "BF16"], True),  # Cooper Lake, Zen 4: AVX512-BF16 without AMX
    ({"avx512f", "avx2"}, ["FP32"], False),  # AVX-512 without bf16 (Skylake, Ice Lake)
    ({"avx2"}, None, False),  # neither
    ({"avx512_bf16"}, ["FP32"], False),  # the flag, but OpenVINO does not list BF16
])
@pytest.mark.parametrize("gate", ["passed", "failed", "missing", "passed-low-gate"])
def test_precision_choice(flags, capabilities, native, gate):
    here = bf16_support(flags, capabilities)
    assert here[0] is native
    entry = {"passed": bf16_entry(61.7, True), "failed": bf16_entry(38.0, False), "missing": None,
             "passed-low-gate": bf16_entry(41.0, True, gate=40.0)}[gate]  # a card's lower gate is not enough
    precision, reason, note = choose_float_precision("auto", OPENVINO, here, entry)
    assert note is None  # auto falling back to fp32 is no warning
    if native and gate == "passed":
        assert precision == "bf16" and "native bf16" in reason and "61.7 dB >= 45 dB" in reason
        return
    assert precision == "fp32" and reason.startswith("auto: fp32 because")
    if not native:
        assert ("no native bf16" in reason) or ("does not list BF16" in reason)
    elif gate == "missing":
        assert "no bf16 measurement" in reason and "python -m training bf16" in reason
    else:
        assert "under the 45 dB gate" in reason
    # an explicit bf16 that cannot be honoured is a warning (note); fp32 is the opt-out
    assert choose_float_precision("bf16", OPENVINO, here, entry)[2] is not None
    assert choose_float_precision("fp32", OPENVINO, here, entry) == ("fp32", "GANFORGE_PRECISION=fp32", None)


def test_bf16_only_on_openvino():
    precision, reason, _ = choose_float_precision("auto", ONNXRUNTIME, (True, "native bf16"), bf16_entry(60, True))
    assert precision == "fp32" and "bf16 runs on OpenVINO only" in reason
    assert gate_result(SimpleNamespace(extra={"passed": True}))[0] is False  # no figure: no bf16
    measured = SimpleNamespace(extra={**bf16_entry(60, True).extra, "of_version": "v1"})
    assert gate_result(measured, "v1")[0] is True
    assert gate_result(measured, "v2") == (False, "the card's bf16 measurement is of version v1, the graphs are v2 "
                                                  "(python -m training bf16 NAME measures them again)")


# ---------------------------------------------------------------- the registry


def test_auto_serves_openvino_on_this_cpu_and_onnxruntime_when_forced(fixture_models):
    # the static rule (GANFORGE_AUTOTUNE_BUDGET_S=0); the measured choice: tests/test_autotune.py
    auto = ModelRegistry.load(Settings(models_dir=fixture_models, device="auto", autotune_budget_s=0.0))
    if auto.device == "cuda":
        pytest.skip("a GPU is here: auto is onnxruntime on CUDA")
    for m in auto.models.values():
        assert m.ready and (m.backend, m.device, m.provider) == (OPENVINO, "cpu", OPENVINO_CPU)
        assert m.precision == "fp32" and "no bf16 measurement" in m.precision_reason  # fixtures: no gate yet
        public = m.public()
        assert public["backend"] == OPENVINO and public["runtime"][next(iter(m.sessions))]["inference_precision"] == "f32"
    ort = ModelRegistry.load(Settings(models_dir=fixture_models, device="cpu", backend="onnxruntime"))
    for m in ort.models.values():
        assert m.ready and (m.backend, m.provider) == (ONNXRUNTIME, CPU) and "bf16 runs on OpenVINO only" in m.precision_reason


def test_a_graph_openvino_cannot_compile_runs_on_onnxruntime(fixture_models, tmp_path, monkeypatch):
    import core.loading as loading

    def refuse(*args, **kwargs):
        raise RuntimeError("unsupported op")

    monkeypatch.setattr(loading, "make_openvino_session", refuse)
    m = loading.load_model(fixture_models / "srresnet-x4", Settings(models_dir=fixture_models, device="cpu"), [CPU])
    assert m.ready and m.backend == ONNXRUNTIME and "OpenVINO cannot compile" in m.precision_note


# ---------------------------------------------------------------- outputs


@pytest.mark.parametrize("name", ["srresnet-x4", "edges2color", "shoe2boot", "fashion-dcgan"])
def test_openvino_fp32_equals_onnxruntime(fixture_models, name):
    folder = fixture_models / name
    card = json.loads((folder / "card.json").read_text())
    for role, entry in card["files"].items():
        data = (folder / entry["path"]).read_bytes()
        ov, ort = make_openvino_session(data, "fp32"), make_session(data)
        for size, batch in (((32, 32), 1), ((40, 72), 2), ((64, 48), 3)):  # new shapes: no recompile needed
            feeds = feeds_for(folder, role, size, batch)
            want = ort.run(None, feeds)[0]
            got = ov.run(["output"], feeds)[0]
            assert got.shape == want.shape and got.dtype == np.float32
            assert np.abs(got - want).max() <= 1e-4, (name, role, size)


def test_openvino_session_concurrent_callers(fixture_models):
    data = (fixture_models / "srresnet-x4" / "generator.onnx").read_bytes()
    session = make_openvino_session(data, "fp32")
    inputs = [feeds_for(fixture_models / "srresnet-x4", "generator", (16 + 4 * (i % 3), 20), seed=i) for i in range(12)]
    want = [session.run(None, f)[0] for f in inputs]
    got: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def client(k: int) -> None:
        try:
            for r in range(5):
                i = (k + r) % len(inputs)
                got[(k, r)] = (i, session.run(["output"], inputs[i])[0])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(got) == 40
    for i, y in got.values():
        np.testing.assert_array_equal(y, want[i])  # every caller got its own input's output, whole
    with pytest.raises(ValueError, match="no output named"):
        session.run(["nope"], inputs[0])


# ---------------------------------------------------------------- bf16 and its gate


@needs_bf16
def test_bf16_command_records_the_gate_and_the_service_runs_it(fixture_models, tmp_path):
    from training.__main__ import main as cli

    root = tmp_path / "models"
    shutil.copytree(fixture_models, root)
    before = {p: p.read_bytes() for p in root.glob("*/*.onnx")}
    assert cli(["bf16", "srresnet-x4", "shoe2boot", "--models", str(root), "--count", "2", "--rounds", "1"]) == 0
    assert {p: p.read_bytes() for p in root.glob("*/*.onnx")} == before  # only card.json changed
    card = json.loads((root / "srresnet-x4" / "card.json").read_text())
    entry = card["variants"]["bf16"]
    assert entry["produced"] == "measure" and entry["gate_db"] == 45.0 and not entry.get("files")
    assert entry["passed"] is (entry["psnr_vs_fp32_db_min"] >= 45.0)
    assert entry["measured_on"]["flags"] and entry["measured_on"]["openvino"] and entry["speedup"] > 0

    registry = ModelRegistry.load(Settings(models_dir=root, device="cpu", autotune_budget_s=0.0))  # the static rule
    sr = registry.get("srresnet-x4")
    assert sr.ready and sr.precision == ("bf16" if entry["passed"] else "fp32"), sr.precision_reason
    assert registry.get("edges2color").precision == "fp32"  # not measured: fp32
    listed = {m["name"]: m for m in registry.describe()["models"]}
    assert listed["srresnet-x4"]["variants"]["bf16"]["passed"] is entry["passed"]
    if sr.precision == "bf16":  # what it serves is within the gate of onnxruntime fp32
        feeds = feeds_for(root / "srresnet-x4", "generator", (48, 40))
        want = np.clip(make_session((root / "srresnet-x4" / "generator.onnx").read_bytes()).run(None, feeds)[0], -1, 1)
        got = np.clip(sr.sessions["generator"].run(None, feeds)[0], -1, 1)
        assert 10 * np.log10(4 / np.mean((got - want) ** 2)) >= 45.0
        assert sr.sessions["generator"].describe()["inference_precision"] == "bf16"
    opt_out = ModelRegistry.load(Settings(models_dir=root, device="cpu", precision="fp32")).get("srresnet-x4")
    assert opt_out.precision == "fp32" and opt_out.sessions["generator"].describe()["inference_precision"] == "f32"


# ---------------------------------------------------------------- no CUDA noise on a CPU machine


def test_cuda_probe_asks_the_driver_first(caplog):
    assert nvidia_gpu("libno-such-cuda.so.1") == (False, "no NVIDIA driver (libno-such-cuda.so.1 is not loadable)")
    present, _ = nvidia_gpu()
    if present:
        pytest.skip("an NVIDIA GPU is here")
    with caplog.at_level("INFO", logger="bentoml.ganforge"):
        assert resolve_providers(Settings(device="auto", backend="onnxruntime")) == [CPU]
    assert [r.getMessage() for r in caplog.records if "CUDA" in r.getMessage()] == [
        "onnxruntime: CUDA not tried (no NVIDIA driver (libcuda.so.1 is not loadable)); running on the CPU"]
    with pytest.raises(RuntimeError, match="GANFORGE_DEVICE=cuda"):
        resolve_providers(Settings(device="cuda", backend="onnxruntime"))


@pytest.mark.slow
def test_a_cpu_only_start_prints_no_cuda_errors(fixture_models, tmp_path):
    if nvidia_gpu()[0]:
        pytest.skip("an NVIDIA GPU is here")
    with running_server(fixture_models, tmp_path, GANFORGE_BACKEND="auto",
                        GANFORGE_AUTOTUNE_BUDGET_S="0") as (_base, log_path):  # the static rule's log lines
        log = log_path.read_text(errors="replace")
    assert "Failed to load" not in log and "[E:" not in log and "libcublas" not in log, log[-3000:]
    assert "CUDA not tried" in log
    for name in ("srresnet-x4", "edges2color", "shoe2boot", "fashion-dcgan"):
        assert f"model {name}: backend openvino" in log
