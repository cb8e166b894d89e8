"""The real thing: `bentoml serve service.service:Ganforge` in a subprocess, spoken to over HTTP."""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from service_fixtures import (BENTOML, REPO, encode, png_claiming_size, running_server, synthetic_photo,
                              write_fixture_models)

MAX_IN_FLIGHT = 3

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def svc_server(tmp_path_factory):
    """(base_url, log_path) of a served Ganforge on the fixture models; stopped at session end."""
    tmp = tmp_path_factory.mktemp("svc_server")
    models = tmp / "models"
    write_fixture_models(models)
    with running_server(models, tmp, GANFORGE_MAX_CONCURRENCY=str(MAX_IN_FLIGHT)) as served:
        yield served


@pytest.fixture(scope="session")
def http(svc_server):
    base, _ = svc_server
    with httpx.Client(base_url=base, timeout=60) as client:
        yield client


def _png(w=40, h=30, seed=0) -> bytes:
    return encode(Image.fromarray(synthetic_photo(w, h, seed)))


def _image(resp) -> Image.Image:
    assert resp.status_code == 200, resp.text
    img = Image.open(io.BytesIO(resp.content))
    img.load()
    return img


def _error(resp, status: int) -> str:
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert body["status"] == status and isinstance(body["error"], str) and body["error"]
    return body["error"]


def _healthy(http) -> None:
    assert http.get("/readyz").status_code == 200
    assert _image(http.post("/generate", json={"seed": 1})).size == (28, 28)


def test_health_metrics_docs(http):
    assert http.get("/livez").status_code == 200
    assert http.get("/readyz").status_code == 200
    http.post("/generate", json={"seed": 2})
    metrics = http.get("/metrics")
    assert metrics.status_code == 200 and "bentoml_service_request" in metrics.text
    paths = http.get("/docs.json").json()["paths"]
    assert {"/generate", "/translate", "/upscale"} <= set(paths)


def test_models_and_startup_log(http, svc_server):
    _, log_path = svc_server
    models = {m["name"]: m for m in http.get("/models").json()["models"]}
    assert sorted(models) == ["edges2color", "fashion-dcgan", "shoe2boot", "srresnet-x4"]
    assert all(m["status"] == "ready" for m in models.values())
    log = log_path.read_text(errors="replace")
    for name, model in models.items():
        assert f"model {name} (" in log and f"ready on {model['provider']}" in log


def test_upscale(http):
    pixels = synthetic_photo(40, 30, seed=1)
    resp = http.post("/upscale", files={"image": ("a.png", encode(Image.fromarray(pixels)), "image/png")})
    img = _image(resp)
    assert resp.headers["content-type"] == "image/png" and img.size == (160, 120)
    nearest = np.asarray(Image.fromarray(pixels).resize((160, 120), Image.Resampling.NEAREST)).astype(int)
    assert np.abs(np.asarray(img).astype(int) - nearest).mean() > 5


def test_sync_answers_keep_bentomls_headers_and_refusals(http):
    """A sync image answer runs from the middleware (service/direct.py): it still carries BentoML's Server and
    request-id headers, and a field BentoML's validation refuses still gets BentoML's refusal, in our shape."""
    resp = http.post("/upscale", files={"image": ("a.png", _png(20, 16, 4))}, data={"scale": "2"})
    assert _image(resp).size == (40, 32)
    assert resp.headers["server"] == "BentoML Service/ganforge"
    assert re.fullmatch(r"[0-9a-f]{16}", resp.headers["x-bentoml-request-id"])
    refused = http.post("/upscale", files={"image": ("a.png", _png(20, 16, 4))}, data={"scale": "abc"})
    assert "scale" in _error(refused, 400)
    assert "unknown model '7'" in _error(http.post("/upscale", files={"image": ("a.png", _png())},
                                                   data={"model": "7"}), 404).lower()


def test_upscale_tiled_large(http):
    img = _image(http.post("/upscale", files={"image": ("a.png", _png(300, 200, 3))}, data={"format": "jpeg"}))
    assert img.size == (1200, 800) and img.format == "JPEG"


def test_translate(http):
    pixels = synthetic_photo(45, 27, seed=2)
    png = encode(Image.fromarray(pixels))
    resp = http.post("/translate", files={"image": ("a.png", png)}, data={"model": "edges2color", "format": "webp"})
    img = _image(resp)
    assert resp.headers["content-type"] == "image/webp" and img.size == (45, 27)
    out = _image(http.post("/translate", files={"image": ("a.png", png)}, data={"model": "shoe2boot", "direction": "b2a"}))
    assert out.size == (45, 27)
    assert np.abs(np.asarray(img.convert("RGB")).astype(int) - pixels.astype(int)).mean() > 5


def test_generate(http):
    resp = http.post("/generate", json={"label": "Trouser", "n": 9, "seed": 123})
    assert resp.headers["content-type"] == "image/png" and resp.headers["x-seed"] == "123"
    assert _image(resp).size == (84, 84)
    again = http.post("/generate", json={"label": "Trouser", "n": 9, "seed": 123})
    assert again.content == resp.content


def test_bad_inputs_then_still_healthy(http):
    cases = [
        (lambda: http.post("/upscale", files={"image": ("a.png", b"not an image")}), 400),
        (lambda: http.post("/upscale", files={"image": ("a.png", _png()[:150])}), 400),
        (lambda: http.post("/upscale", files={"image": ("a.png", b"")}), 400),
        (lambda: http.post("/upscale", files={"image": ("a.png", png_claiming_size(30000, 30000))}), 413),
        (lambda: http.post("/upscale", files={"image": ("a.png", _png())}, data={"model": "../models"}), 404),
        (lambda: http.post("/upscale", files={"image": ("a.png", _png())}, data={"scale": "16"}), 422),
        (lambda: http.post("/translate", files={"image": ("a.png", _png())},
                           data={"model": "shoe2boot", "direction": "up"}), 422),
        (lambda: http.post("/generate", json={"n": 0}), 422),
        (lambda: http.post("/generate", json={"n": 100000}), 422),
        (lambda: http.post("/generate", json={"label": "Unicorn"}), 422),
        (lambda: http.post("/generate", content=b"{oops", headers={"Content-Type": "application/json"}), 400),
        (lambda: http.post("/generate", content=b"n=1", headers={"Content-Type": "text/plain"}), 415),
        (lambda: http.post("/upscale", json={"image": "x"}), 415),
        (lambda: http.post("/upscale", data={"image": "http://203.0.113.9/a.png"}, files={"f": ("x", b"x")}), 400),
        (lambda: http.get("/no-such-route"), 404),
    ]
    for call, status in cases:
        message = _error(call(), status)
        assert "Traceback" not in message and str(REPO) not in message
    _healthy(http)


def test_oversize_body_real_http(http):
    big = b"\x00" * (20 * 1024 * 1024 + 1024)  # default GANFORGE_MAX_UPLOAD_BYTES is 20 MiB
    _error(http.post("/upscale", files={"image": ("big.png", big)}), 413)

    def stream():  # chunked, no Content-Length
        for _ in range(22):
            yield b"\x00" * (1024 * 1024)

    _error(http.post("/upscale", content=stream(), headers={"Content-Type": "multipart/form-data; boundary=b"}), 413)
    _healthy(http)


def test_overload_429_then_recovers(http, svc_server):
    """Uploads that stall mid-body hold the slots; once they fill all MAX_IN_FLIGHT, a request gets 429 JSON.

    The server registers a stalled upload asynchronously (and a finished
    request may hold its slot a moment longer than the client waits), so
    the test tops up with one more stalled upload after each non-429 probe
    instead of assuming an order; slots taken by stalled uploads never free
    while their sockets are open, so this converges.
    """
    host, port = http.base_url.host, http.base_url.port
    stalled = []
    try:
        while True:
            sock = socket.create_connection((host, port), timeout=10)
            sock.sendall(b"POST /upscale HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                         b"Content-Length: 100000\r\n\r\n--b\r\n")
            stalled.append(sock)
            time.sleep(0.1)  # the server reads the stalled body's first bytes asynchronously
            resp = http.post("/upscale", files={"image": ("a.png", _png())})
            if resp.status_code == 429 or len(stalled) > 10 * MAX_IN_FLIGHT:
                break
        message = _error(resp, 429)
        assert "too many" in message and resp.headers["retry-after"] == "1"
        assert len(stalled) >= MAX_IN_FLIGHT
        assert http.get("/readyz").status_code == 200  # health is never limited
        assert http.get("/models").status_code == 200  # nor the model list
    finally:
        for sock in stalled:
            sock.close()
    deadline = time.monotonic() + 15
    while True:  # slots free once the server sees the disconnects
        resp = http.post("/upscale", files={"image": ("a.png", _png())})
        if resp.status_code != 429 or time.monotonic() > deadline:
            break
    assert _image(resp).size == (160, 120)


def test_bentoml_build_offline(tmp_path):
    """`bentoml build` packs service/ and models/ without touching the network (lock_packages: false)."""
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "home"), "BENTOML_DO_NOT_TRACK": "True"}
    proc = subprocess.run([str(BENTOML), "build", "--output", "tag"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    src = next((tmp_path / "home" / "bentos" / "ganforge").glob("*/src"))
    assert (src / "service" / "service.py").is_file() and (src / "models").is_dir()
    assert not list(src.rglob("*.pyc")) and not (src / "tests").exists() and not (src / "training").exists()


def test_bentoml_build_gpu_variant(tmp_path):
    """The GPU Bento: onnxruntime-gpu with the pip CUDA 13 runtime + cuDNN, no torch, device=cuda."""
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "home"), "BENTOML_DO_NOT_TRACK": "True"}
    proc = subprocess.run([str(BENTOML), "build", "-f", "bentofile.gpu.yaml", "--output", "tag"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    bento = next((tmp_path / "home" / "bentos" / "ganforge-gpu").glob("*/"))
    requirements = "\n".join(p.read_text() for p in bento.rglob("requirements*.txt"))
    assert "onnxruntime-gpu[cuda,cudnn]==1.31.1" in requirements
    assert "torch" not in requirements
    dockerfile = next(bento.rglob("Dockerfile")).read_text()
    assert "GANFORGE_DEVICE" in dockerfile and "cuda" in dockerfile
