"""`python -m bench --smoke`: the whole bench path end to end on tiny models, and the JSON it writes.

It measures nothing (tiny networks, the shortest windows); it checks that
every section runs against a real `bentoml serve` and records every figure
bench/README.md describes. Timings are never asserted.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke(repo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-results")
    proc = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--name", "smoke", "--out", str(out)],
                          cwd=repo_root, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, (f"exit {proc.returncode}\n--- stderr\n{proc.stderr[-4000:]}\n"
                                  f"--- stdout\n{proc.stdout[-2000:]}")
    return json.loads((out / "smoke.json").read_text()), proc.stdout, out


def test_machine_and_mode(smoke):
    result, _, _ = smoke
    m = result["machine"]
    assert m["cpu"]["model"] and m["cpu"]["physical_cores"] >= 1
    assert {"avx2", "avx512f", "amx_tile"} <= set(m["cpu"]["flags"])
    assert m["versions"]["onnxruntime"] and m["versions"]["torch"] and m["date"]
    assert result["mode"]["profile"] == "smoke" and result["mode"]["tiny"]
    assert any("measures nothing" in w for w in result["warnings"])
    assert {m["name"] for m in result["models"]} >= {"fashion", "colorize", "sneaker2boot", "srresnet-x4", "srgan-x4"}


def test_compute_rows(smoke):
    compute = smoke[0]["sections"]["compute"]
    assert compute["peak_gflops"] > 0
    families = {r["family"] for r in compute["rows"]}
    assert families == {"dcgan", "pix2pix", "cyclegan", "srgan"}
    for r in compute["rows"]:
        assert r["gflop"] > 0 and r["onnxruntime_ms"] > 0 and r["torch_ms"] > 0
        assert r["torch_over_onnxruntime"] > 0 and 0 < r["onnxruntime_peak_fraction"]
        assert len(r["samples_s"]["onnxruntime"]) == len(r["samples_s"]["torch"]) == r["rounds"] >= 2


def test_precision_rows(smoke):
    rows = smoke[0]["sections"]["precision"]["rows"]
    assert {r["model"] for r in rows} >= {"fashion", "colorize", "sneaker2boot", "srresnet-x4", "srgan-x4"}
    for r in rows:
        assert r["fp32_ms"] > 0 and r["int8_ms"] > 0 and r["fp32_over_int8"] == pytest.approx(r["fp32_ms"] / r["int8_ms"])
        assert r["psnr_vs_fp32_db"] > 0 and r["int8_source"]
        assert len(r["samples_s"]["fp32"]) == len(r["samples_s"]["int8"]) == r["rounds"] >= 2
    assert "fp32/int8" in smoke[1]


def test_backends_rows(smoke):
    section = smoke[0]["sections"]["backends"]
    assert section["openvino"] and section["fp32_peak_gflops"] > 0 and section["bf16_peak_gflops"] > 0
    assert {r["model"] for r in section["rows"]} >= {"fashion", "colorize", "sneaker2boot", "srresnet-x4", "srgan-x4"}
    for r in section["rows"]:
        assert {"ort fp32", "ov fp32", "ov bf16"} <= set(r["ms"]) and all(v > 0 for v in r["ms"].values())
        assert r["ort_fp32_over_ov_bf16"] == pytest.approx(r["ms"]["ort fp32"] / r["ms"]["ov bf16"])
        assert r["psnr_vs_ort_fp32_db"]["ov fp32"] >= 60 and r["psnr_vs_ort_fp32_db"]["ov bf16"] > 0
        assert r["gflop"] > 0 and r["peak_fraction"]["ov bf16"] > 0
        assert all(len(v) == r["rounds"] >= 2 for v in r["samples_s"].values())
    assert "ort/ov bf16" in smoke[1]


def test_tuning_rows(smoke):
    tuning = smoke[0]["sections"]["tuning"]
    variants = ["service", "1 thread", "no spinning", "opt extended", "opt basic", "no arena"]
    assert tuning["variants"] == variants
    assert {r["model"] for r in tuning["rows"]} >= {"fashion", "colorize", "sneaker2boot"}
    for r in tuning["rows"]:
        assert set(r["ms"]) == set(variants) and all(v > 0 for v in r["ms"].values())
        assert r["service_over"]["1 thread"] == pytest.approx(r["ms"]["service"] / r["ms"]["1 thread"])
        assert r["best"] in variants and r["max_abs_diff_vs_service"] < 1e-4  # settings never change the output
        assert all(len(v) == r["rounds"] >= 2 for v in r["samples_s"].values())
    assert "service ms" in smoke[1]


def test_serving_figures(smoke):
    serving = smoke[0]["sections"]["serving"]
    assert set(serving["servers"]) == {"default", "serial", "batching"}
    assert {r["workload"].split(" (")[0] for r in serving["latency"]} >= {"generate n=1", "translate 28x28"}
    for r in serving["latency"]:
        for who in ("session", "pipeline", "http"):
            assert r[who]["p50_ms"] > 0 and r[who]["p99_ms"] >= r[who]["p50_ms"]
        assert r["http_over_session"] > 0 and r["pipeline_over_session"] > 0
    assert [t["workload"].split(" (")[0] for t in serving["throughput"]] == [
        "generate n=1", "translate 28x28", "translate 256x256"]
    for t in serving["throughput"]:
        assert t["bare_batch1_rps"] > 0 and t["bare_batch16_rows_per_s"] > 0
        assert {(r["server"], r["clients"]) for r in t["rows"]} == {
            (s, c) for s in ("default", "serial", "batching") for c in (1, 4, 16)}
        for r in t["rows"]:
            assert r["rps"] > 0 and r["over_bare_batch1"] > 0 and not r["errors"]
        assert t["batching_server"]["requests"] >= t["batching_server"]["runs"] > 0


def test_telemetry_figures(smoke):
    telemetry = smoke[0]["sections"]["telemetry"]
    assert telemetry["servers"]["off"] == telemetry["servers"]["off 2"] == {"GANFORGE_METRICS": "0"}
    assert {r["workload"].split()[0] for r in telemetry["latency"]} == {"generate", "translate"}
    for r in telemetry["latency"]:
        assert r["on_over_off"] > 0 and r["on_over_on2"] > 0 and r["off_over_off2"] > 0 and r["paired_median"] > 0
        assert len(r["samples_s"]["on"]) == len(r["samples_s"]["off 2"]) == r["on"]["n"] >= 2
        assert r["all_on"]["n"] == 2 * r["on"]["n"]
    assert telemetry["record_us"] > 0 and 0 < telemetry["record_share_of_256"] < 1
    assert "on/on 2 (noise)" in smoke[1] and "recording one request's metrics" in smoke[1]


def test_bigimage_and_coldstart(smoke):
    result = smoke[0]
    cases = {c["op"]: c for c in result["sections"]["bigimage"]["cases"]}
    assert set(cases) == {"upscale", "translate"}
    for case in cases.values():
        kinds = {r["kind"] for r in case["rows"]}
        assert kinds == {"tiled", "untiled"}
        for r in case["rows"]:
            assert r["wall_s"] > 0 and r["peak_rss_mib"] > 0 and r["growth_mib"] >= 0 and r["tiles"] >= 1
    cold = result["sections"]["coldstart"]
    assert cold["ready_median_s"]["models"] > 0 and cold["ready_median_s"]["empty"] > 0
    assert cold["models_over_empty"] > 0
    assert all(r["first_ms"] > 0 and r["second_ms"] > 0 for r in cold["first_request"])


def test_prints_tables_and_writes_the_plot(smoke):
    _, stdout, out = smoke
    for heading in ("== compute", "== tuning", "== serving", "== bigimage", "== coldstart", "torch/ort", "http/session",
                    "peak RSS MiB", "/readyz"):
        assert heading in stdout
    png = (out / "smoke.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_gpu_check_says_there_is_no_gpu_and_exits_0(capsys, monkeypatch):
    """`make gpu-check` elsewhere than on a GPU machine: one line saying why, exit 0, no server started."""
    from bench import gpu_check
    from testkit import launcher

    monkeypatch.setattr("core.runtime.nvidia_gpu", lambda: (False, "no NVIDIA driver (test)"))
    monkeypatch.setattr(launcher, "running_server", None)  # must not be reached
    assert gpu_check.main([]) == 0
    assert capsys.readouterr().out.strip() == "gpu-check: no GPU here (no NVIDIA driver (test)); nothing to check"


def test_jobs_section(smoke):
    jobs = smoke[0]["sections"]["jobs"]
    assert jobs["identical_bytes"] is True
    assert set(jobs["latency"]) == {"sync", "job (poll 50 ms)", "job (Prefer: wait)", "job (events)"}
    assert all(v["n"] >= 2 and v["p50_ms"] > 0 for v in jobs["latency"].values())
    assert jobs["ratio"]["sync"] == 1.0 and len(jobs["cancel_to_idle_s"]) >= 1
    assert jobs["restart"]["running_s"] >= jobs["restart"]["ready_s"] > 0
    assert "restart -> ready" in smoke[1]


def test_fastpath_rows(smoke):
    """issue 26's section: ganforge vs the peer and the bare sessions, default vs forced per model, upscale."""
    section = smoke[0]["sections"]["fastpath"]
    peer = section["peer"]
    assert {"ganforge", "peer", "session ort fp32"} <= set(peer["stats"])
    assert peer["ganforge_over_peer"] == pytest.approx(peer["stats"]["ganforge"]["p50_ms"] / peer["stats"]["peer"]["p50_ms"])
    assert {r["model"] for r in section["choice"]} >= {"fashion", "colorize", "sneaker2boot", "srresnet-x4", "srgan-x4"}
    for r in section["choice"]:
        assert set(r["stats"]) == {"default", "ort fp32", "ov fp32", "ov bf16"} and r["default_over_fastest"] > 0
        assert r["fastest_forced"] in ("ort fp32", "ov fp32", "ov bf16")
    for name, choice in section["choices"].items():
        assert choice["backend"] in ("onnxruntime", "openvino") and choice["reason"], name
    if section["upscale"] is not None:  # needs native bf16
        assert section["upscale"]["http_over_session"] > 0 and section["upscale"]["served_psnr_vs_ort_fp32_db"] > 30
    assert "ganforge/peer" in smoke[1] and "default/fastest forced" in smoke[1]


def test_bigtile_rows(smoke):
    """issue 28's section: each big request over HTTP against the bare graph's best tile time x its area."""
    section = smoke[0]["sections"]["bigtile"]
    assert {c["op"] for c in section["cases"]} == {"upscale", "translate"}
    for c in section["cases"]:
        assert c["backend"] in ("onnxruntime", "openvino") and c["precision"] in ("fp32", "bf16", "int8")
        best = min(c["curve"], key=lambda r: r["s_per_px"])
        assert c["best_edge"] == best["edge"] and len(c["curve"]) >= 2
        assert c["curve_reference_s"] == pytest.approx(best["s_per_px"] * c["input_pixels"])
        assert c["reference_s"] == pytest.approx(c["bare_s_per_px"] * c["input_pixels"])
        assert c["http_over_reference"] == pytest.approx(c["http_s"] / c["reference_s"])
        assert len(c["samples_s"]["http"]) == len(c["samples_s"]["bare"]) >= 2
        assert c["stages_s"]["tiles"] >= 1 and "compute" in c["stages_s"]
    memory = section["memory"]
    assert memory["peak_rss_mib"] > 0 and memory["tiles"] >= 1 and memory["backend"] in ("onnxruntime", "openvino")
    assert "http/reference" in smoke[1] and "s/output MPx" in smoke[1]
