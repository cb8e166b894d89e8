"""The CPU image end to end (`make container-test`): build it, run it, call it, stop it, remove it.

It builds with `make container` on the model folders in models/ (the fixture
models of service_fixtures.py when models/ holds none), runs the image bound to
127.0.0.1 with limits, workers and a token from environment variables, calls
every endpoint each model's card names with the sample images, and compares
each answer with the same request to the service run in-process on the same
folders. Minutes, not seconds: it runs only with GANFORGE_CONTAINER_TEST=1
(what `make container-test` sets); where no container engine can run a
container, it is skipped with the reason.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from service_fixtures import REPO, free_port, service_client

pytestmark = pytest.mark.slow

SAMPLES = REPO / "samples"
TOKEN = "container-test-token"
WORKERS = 2
STOP_TIMEOUT_S = 30  # as deploy/kubernetes.yaml's grace period; then the engine sends SIGKILL (exit 137)
READY_TIMEOUT_S = 180
# BentoML's own text log line: "2026-11-23T11:58:07+0000 [INFO] [...] ..."
TEXT_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\S* \[(DEBUG|INFO|WARNING|ERROR|CRITICAL)\]")

if os.environ.get("GANFORGE_CONTAINER_TEST") != "1":
    pytest.skip("builds and runs the service image (minutes): `make container-test` runs it",
                allow_module_level=True)


def _run(cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _cards(models: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(models.glob("[!.]*/card.json"))}


def requests_for(name: str, card: dict) -> list[tuple[str, dict]]:
    """(path, httpx request kwargs) for each call this model's card asks for, with the sample images."""
    endpoint = card["endpoint"]
    if endpoint == "generate":
        label = (card.get("classes") or [0])[-1]
        return [("/generate", {"json": {"model": name, "label": label, "n": 4, "seed": 7}}),
                ("/generate", {"json": {"model": name, "seed": 11}})]
    if endpoint == "upscale":
        return [("/upscale", {"files": {"image": _sample("raindrops-128.png")}, "data": {"model": name}})]
    if card.get("family") == "cyclegan":
        return [("/translate", {"files": {"image": _sample("sneaker-28.png")}, "data": {"model": name, "direction": "a2b"}}),
                ("/translate", {"files": {"image": _sample("boot-28.png")}, "data": {"model": name, "direction": "b2a"}})]
    sample = "flower-gray-256.png" if card["input"]["channels"] == 1 else "flower-256.jpg"
    return [("/translate", {"files": {"image": _sample(sample)}, "data": {"model": name}})]


def _sample(filename: str) -> tuple[str, bytes]:
    return filename, (SAMPLES / filename).read_bytes()


def _pixels(content: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(content))
    img.load()
    return img


@pytest.fixture(scope="module")
def served(engine, image, tmp_path_factory):
    """The image running on a loopback port with settings from the environment; yields (base_url, container id)."""
    port = free_port()
    proc = _run([engine, "run", "-d", "-p", f"127.0.0.1:{port}:3000",
                 "-e", f"GANFORGE_AUTH_TOKEN={TOKEN}", "-e", f"GANFORGE_WORKERS={WORKERS}",
                 "-e", "GANFORGE_MAX_UPLOAD_BYTES=1048576",
                 # the in-process service it is compared with keeps the static rule (tests/conftest.py):
                 # the same backend, precision and tiles on both sides, whatever a measurement would pick
                 "-e", f"GANFORGE_AUTOTUNE_BUDGET_S={os.environ['GANFORGE_AUTOTUNE_BUDGET_S']}", image])
    assert proc.returncode == 0, proc.stderr
    cid = proc.stdout.strip()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            state = _run([engine, "inspect", "--format", "{{.State.Running}}", cid]).stdout.strip()
            assert state == "true" and time.monotonic() < deadline, _run([engine, "logs", cid]).stdout[-3000:]
            time.sleep(0.5)  # polling interval, not an assertion
        yield base, cid
    finally:
        _run([engine, "rm", "-f", cid], timeout=600)


@pytest.fixture(scope="module")
def http(served):
    base, _ = served
    with httpx.Client(base_url=base, timeout=120, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client


def test_image_holds_service_and_models_not_torch(engine, served, http, models):
    _, cid = served
    assert _run([engine, "exec", cid, "id", "-u"]).stdout.strip() not in ("", "0")
    probe = "import importlib.util as u; print(u.find_spec('torch'), u.find_spec('onnxruntime') is not None)"
    assert _run([engine, "exec", cid, "python", "-c", probe]).stdout.split() == ["None", "True"]
    served_models = {m["name"]: m for m in http.get("/models").json()["models"]}
    assert sorted(served_models) == sorted(_cards(models))
    assert all(m["status"] == "ready" for m in served_models.values())


def test_settings_from_environment(engine, served, http):
    base, cid = served
    assert httpx.get(f"{base}/models").status_code == 401  # GANFORGE_AUTH_TOKEN
    assert httpx.get(f"{base}/livez").status_code == 200 and httpx.get(f"{base}/readyz").status_code == 200
    big = {"image": ("big.png", b"\x00" * (1024 * 1024 + 1))}
    assert http.post("/upscale", files=big).status_code == 413  # GANFORGE_MAX_UPLOAD_BYTES
    count = ("import pathlib; w = b'_bentoml_impl.worker' + b'.service'; "  # not this probe's own cmdline
             "print(sum(w in p.read_bytes() for p in pathlib.Path('/proc').glob('[0-9]*/cmdline')))")
    assert _run([engine, "exec", cid, "python", "-c", count]).stdout.strip() == str(WORKERS)


def test_endpoints_match_the_service_in_process(http, models):
    cards = _cards(models)
    calls = [(name, path, kw) for name, card in cards.items() for path, kw in requests_for(name, card)]
    assert calls, "no model to call"
    with service_client(models, GANFORGE_DEVICE="cpu") as local:
        for name, path, kw in calls:
            resp = http.post(path, **kw)
            assert resp.status_code == 200, (name, path, resp.text)
            expected = local.post(path, **kw)
            assert expected.status_code == 200, (name, path, expected.text)
            got, want = _pixels(resp.content), _pixels(expected.content)
            assert resp.headers["content-type"] == expected.headers["content-type"]
            assert (got.size, got.mode) == (want.size, want.mode), (name, path)
            if path == "/translate":
                assert got.size == _pixels(kw["files"]["image"][1]).size
            elif path == "/upscale":
                native = cards[name]["output"]["scale"]
                assert got.size == tuple(native * s for s in _pixels(kw["files"]["image"][1]).size)
            else:
                assert resp.headers["x-seed"] == str(kw["json"]["seed"])
            diff = np.abs(np.asarray(got, dtype=np.int16) - np.asarray(want, dtype=np.int16))
            assert diff.max() <= 2 and diff.mean() < 0.05, (name, path, diff.max(), diff.mean())


def test_metrics(served, http):
    http.post("/generate", json={"n": 0})  # a 422 counts too
    resp = httpx.get(f"{served[0]}/metrics")  # open without the token
    assert resp.status_code == 200
    text = resp.text
    assert "bentoml_service_request_total" in text
    assert re.search(r'bentoml_service_request_total\{[^}]*endpoint="/(generate|translate|upscale)"', text)


def test_logs_are_json_lines(engine, served, http):
    _, cid = served
    assert http.get("/models").status_code == 200
    deadline = time.monotonic() + 10
    while True:  # the access line is written after the response
        logs = _run([engine, "logs", cid])
        if "path=/models" in logs.stdout + logs.stderr or time.monotonic() > deadline:
            break
        time.sleep(0.2)  # polling interval, not an assertion
    lines = [line for line in (logs.stdout + logs.stderr).splitlines() if line.strip()]
    assert not [line for line in lines if TEXT_LOG_LINE.match(line)], "BentoML text log lines in the image's log"
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    assert {"time", "level", "logger", "message"} <= set(entries[0])
    assert any(e["logger"] == "bentoml.access" and "path=/models" in e["message"] for e in entries)
    assert any(e["message"].startswith("ganforge: ") for e in entries)


def test_stops_cleanly_on_sigterm(engine, served):
    """Last: `stop` sends SIGTERM; the server must exit 0 by itself, before the engine's SIGKILL (137).

    1.2 s on a quiet 2-core machine; 17 s measured under a load average of 7, hence no tighter bound.
    """
    _, cid = served
    started = time.monotonic()
    proc = _run([engine, "stop", "-t", str(STOP_TIMEOUT_S), cid], timeout=STOP_TIMEOUT_S + 60)
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    code = _run([engine, "inspect", "--format", "{{.State.ExitCode}}", cid]).stdout.strip()
    print(f"\nstopped in {took:.1f} s, exit code {code}")
    assert code == "0" and took < STOP_TIMEOUT_S
