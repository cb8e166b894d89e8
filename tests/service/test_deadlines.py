"""No request that runs for minutes and dies: admission by measured speed, cancellation within a tile.

Unit tests for the tiler's cancellation hook, the request token and the speed estimator; then a real
`bentoml serve` on the fixture models plus `slow-x4`, an x4 upscaler whose graph is heavy (ten
64-channel convolutions) with a 48-pixel tile, so a few-hundred-pixel input is dozens of tiles of a
few ms to tens of ms each. Sizes are taken from the server's own measured estimate (its 413 names
the largest input that fits), so the tests hold on fast and slow machines alike.
"""

from __future__ import annotations

import io
import os
import re
import signal
import statistics
import threading
import time

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from service import deadline as deadline_mod
from service.admission import ADMIT_SHARE, ADVISE_SHARE, Rate, SpeedBook, processed_pixels
from service.deadline import RequestCancelled, RequestToken
from service.errors import ApiError
from core.loading import ImageSpec, ServedModel
from core.tiling import tile_grid
from service_fixtures import (IR_VERSION, OPSET, encode, fixture_card, image_graph, running_server,
                              service_client, synthetic_photo, write_fixture_models, write_onnx)
from contract.folder import write_card

TIMEOUT_S = 8.0
SLOW_TILE, SLOW_OVERLAP = 48, 4


# ---------------------------------------------------------------- the tiler's cancellation hook


# ---------------------------------------------------------------- the request token


def test_token_deadline_and_cancel_raise_once_logged():
    before = deadline_mod.CANCELLED.describe()
    token = RequestToken(5.0, started=time.monotonic() - 6.0)
    with pytest.raises(RequestCancelled) as late:
        token.check("m", 3, 10)
    assert late.value.status == 504 and "after 3 of 10 tiles" in late.value.message
    with pytest.raises(RequestCancelled):
        token.check("m", 4, 10)
    gone = RequestToken(60.0)
    gone.check("m", 0, 1)  # in time and not cancelled: nothing
    gone.cancel()
    with pytest.raises(RequestCancelled) as left:
        gone.tile_check("m")(7, 9)
    assert left.value.status == 503 and "client disconnected" in left.value.message
    after = deadline_mod.CANCELLED.describe()
    assert after["deadline"] == before["deadline"] + 1  # counted once, however often checked
    assert after["client_disconnected"] == before["client_disconnected"] + 1
    assert after["last"]["done"] == 7 and after["last"]["total"] == 9


def test_token_is_seen_by_the_worker_thread():
    import anyio

    token = RequestToken(10.0)
    seen = []

    async def main():
        with deadline_mod.bound(token):
            await anyio.to_thread.run_sync(lambda: seen.append(deadline_mod.current()))

    anyio.run(main)
    assert seen == [token] and deadline_mod.current() is None


# ---------------------------------------------------------------- the speed estimator


def _model(name="m", tile=64, overlap=8, scale=4, multiple_of=1, min_size=8) -> ServedModel:
    spec = ImageSpec(input_name="image", output_name="output", in_channels=3, in_range=(-1.0, 1.0),
                     multiple_of=multiple_of, min_size=min_size, native_size=None, out_channels=3,
                     out_range=(-1.0, 1.0), scale=scale, tile=tile, overlap=overlap)
    return ServedModel(name=name, status="ready", provider="CPUExecutionProvider", image_spec=spec)


def test_rate_follows_recent_samples():
    rate = Rate()
    for _ in range(20):
        rate.add(0.1, 1e5)  # 1 s per MPx
    assert rate.per_pixel == pytest.approx(1e-6)
    for _ in range(200):
        rate.add(0.2, 1e5)  # the machine got twice as slow: 40 s of compute later, the estimate says so
    assert rate.per_pixel == pytest.approx(2e-6, rel=0.01)
    rate.add(0.001, 10.0)  # a tiny request barely moves it (pixel-weighted)
    assert rate.per_pixel == pytest.approx(2e-6, rel=0.01)


def test_processed_pixels_counts_tiles_overlap_and_padding():
    model = _model(tile=64, overlap=8, scale=4)
    assert processed_pixels(model.image_spec, 64, 64) == 64 * 64 * 16  # one tile
    ys, xs, _, _ = tile_grid(200, 300, 64, 8)
    assert processed_pixels(model.image_spec, 200, 300) == len(ys) * len(xs) * 64 * 64 * 16
    padded = _model(tile=64, overlap=8, scale=1, multiple_of=8, min_size=16)
    assert processed_pixels(padded.image_spec, 5, 13) == 16 * 16


def test_admit_refuses_with_the_size_that_fits_and_probes_when_unmeasured():
    book, model = SpeedBook(), _model()
    probes = []

    def probe():
        probes.append(1)
        book.record(model, 0.01 * 64 * 64 * 16 / 1e6, 64 * 64 * 16)  # 0.01 s per output MPx

    token = RequestToken(10.0)
    book.admit(model, 32, 32, None, probe)  # no request token (in-process use): never refused
    assert not probes
    book.admit(model, 32, 32, token, probe)
    assert probes == [1]  # measured before deciding
    book.record(model, 1.0, 1e5)  # now ~6 s per output MPx (the probe's sample fades)
    rate = book.rate(model)
    with pytest.raises(ApiError) as refused:
        book.admit(model, 1200, 1920, token, probe)
    assert refused.value.status == 413
    message = refused.value.message
    assert "this 1920x1200 input needs ~" in message and "the limit (GANFORGE_TIMEOUT_S) is 10 s" in message
    w, h = map(int, re.search(r"send at most (\d+)x(\d+)", message).groups())
    assert abs(w / h - 1920 / 1200) < 0.05
    assert book.estimate(model, rate, h, w) <= ADVISE_SHARE * 10 < book.estimate(model, rate, h + 8, w + 13)
    book.admit(model, h, w, RequestToken(10.0), probe)  # the size it names is admitted
    assert book.refused["413"] == 1


def test_admit_answers_503_when_it_fits_the_limit_but_not_the_time_left():
    book, model = SpeedBook(), _model()
    book.record(model, 1.0, 1e5)
    rate = book.rate(model)
    fits = next(s for s in range(400, 8, -8) if book.estimate(model, rate, s, s) <= 0.5 * ADMIT_SHARE * 10)
    book.admit(model, fits, fits, RequestToken(10.0), lambda: None)
    left = 0.5 * book.estimate(model, rate, fits, fits) / ADMIT_SHARE  # it waited for a thread: half of it left
    waited = RequestToken(10.0, started=time.monotonic() - (10.0 - left))
    with pytest.raises(ApiError) as busy:
        book.admit(model, fits, fits, waited, lambda: None)
    assert busy.value.status == 503 and busy.value.headers["Retry-After"].isdigit()
    gone = RequestToken(10.0)
    gone.cancel()
    with pytest.raises(RequestCancelled):  # a request whose client left is not even estimated
        book.admit(model, fits, fits, gone, lambda: None)


# ---------------------------------------------------------------- a slow model, over real HTTP


def heavy_upscaler(width: int = 64, depth: int = 10, seed: int = 5) -> onnx.ModelProto:
    """x4: `depth` 3x3 convolutions of `width` channels (ReLU), then Conv -> 48, DepthToSpace(4), Tanh."""
    rng = np.random.default_rng(seed)
    nodes, inits, prev, cin = [], [], "image", 3
    for i in range(depth):
        w = (rng.standard_normal((width, cin, 3, 3)) * (0.5 / np.sqrt(cin * 9))).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        prev, cin = f"r{i}", width
    inits.append(numpy_helper.from_array((rng.standard_normal((48, cin, 3, 3)) * 0.05).astype(np.float32), "wo"))
    nodes += [helper.make_node("Conv", [prev, "wo"], ["o"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
              helper.make_node("DepthToSpace", ["o"], ["d"], blocksize=4, mode="CRD"),
              helper.make_node("Tanh", ["d"], ["output"])]
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3, "H4", "W4"])
    model = helper.make_model(helper.make_graph(nodes, "slow_x4", [x], [y], initializer=inits),
                              opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def write_slow_model(models, width: int = 64, depth: int = 10) -> None:
    """models/slow-x4: `heavy_upscaler(width, depth)` with small tiles (the job tests take a heavier one, so
    that a job is still running seconds after it starts on a quiet CPU too)."""
    folder = models / "slow-x4"
    folder.mkdir(parents=True)
    files = {"generator": write_onnx(folder, "generator.onnx", heavy_upscaler(width, depth))}
    rgb = {"range": [-1.0, 1.0], "channels": 3}
    write_card(folder, fixture_card(
        "slow-x4", "upscale", "srgan", "a heavy x4 upscaler with small tiles (tests/service/test_deadlines.py)", files,
        graph=image_graph(3, 3, ["N", 3, "H*4", "W*4"]), input={**rgb, "multiple_of": 1, "min_size": 8,
                                                                "native_size": None},
        output={**rgb, "scale": 4}, tiling={"tile": SLOW_TILE, "overlap": SLOW_OVERLAP}))


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    models = tmp_path_factory.mktemp("deadline_models") / "models"
    write_fixture_models(models)
    write_slow_model(models)
    return models


@pytest.fixture(scope="module")
def server(models_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("deadline_server")
    with running_server(models_dir, tmp, GANFORGE_TIMEOUT_S=str(TIMEOUT_S)) as served:
        yield served


@pytest.fixture(scope="module")
def http(server):
    base, _ = server
    with httpx.Client(base_url=base, timeout=60) as client:
        yield client


def _png(w: int, h: int, seed: int = 0) -> bytes:
    return encode(Image.fromarray(synthetic_photo(w, h, seed)))


def _upscale(client, png: bytes, model: str = "slow-x4") -> httpx.Response:
    return client.post("/upscale", files={"image": ("in.png", png, "image/png")}, data={"model": model})


def _admission(http) -> dict:
    r = http.get("/models")
    assert r.status_code == 200 and "admission" in r.json(), (r.status_code, r.text[:500])
    return r.json()["admission"]


def _largest(http) -> tuple[int, int]:
    """The largest slow-x4 input the server says fits GANFORGE_TIMEOUT_S (from its 413), and the 413's latency."""
    big = _png(1600, 1600)
    started = time.perf_counter()
    r = _upscale(http, big)
    took = time.perf_counter() - started
    assert r.status_code == 413, r.text
    w, h = map(int, re.search(r"send at most (\d+)x(\d+)", r.json()["error"]).groups())
    return w, took


def _calibrated_largest(http) -> int:
    """As `_largest`, after one real request of a quarter of that work has tuned the estimate (the
    startup warm-up's few runs can be far off on a shared machine)."""
    side, _ = _largest(http)
    assert _upscale(http, _png(side // 2, side // 2, seed=7)).status_code == 200
    return _largest(http)[0]


def _quiet_runs(http, wait: float = 0.6) -> int:
    """graph_runs once it stopped changing (it must, within a few tiles)."""
    runs = _admission(http)["graph_runs"]
    for _ in range(20):
        time.sleep(wait)
        now = _admission(http)["graph_runs"]
        if now == runs:
            return now
        runs = now
    raise AssertionError("the server kept computing")


@pytest.mark.slow
def test_too_large_is_refused_at_once_naming_a_size_that_then_answers(http):
    side, took = _largest(http)
    assert took < 1.0, f"413 took {took:.2f} s"
    r = _upscale(http, _png(1600, 1600))
    body = r.json()
    assert r.status_code == 413 and body["status"] == 413
    assert "this 1600x1600 input needs ~" in body["error"] and "slow-x4" in body["error"]
    assert f"is {TIMEOUT_S:g} s" in body["error"] and "faster model" in body["error"]
    started = time.perf_counter()
    ok = _upscale(http, _png(side, side, seed=1))  # the size the 413 named
    assert ok.status_code == 200, ok.text
    assert time.perf_counter() - started < TIMEOUT_S
    assert _admission(http)["refused"]["413"] >= 2
    print(f"413 in {took * 1000:.0f} ms (upload included); the {side}x{side} it named answered 200 in "
          f"{time.perf_counter() - started:.1f} s")


@pytest.mark.slow
def test_a_client_that_disconnects_stops_the_work_within_a_tile(http, server):
    _, log_path = server
    side = int(_calibrated_largest(http) * 0.85)  # ~45% of the limit's work: admitted, seconds long
    small = _png(40, 40, seed=3)
    _upscale(http, small)
    # leave at a quarter of this request's measured time (at most 1 s): still computing tiles then, on a
    # fast CPU too (the estimate the size came from can be pessimistic on a loaded machine)
    started = time.perf_counter()
    assert _upscale(http, _png(side // 2, side // 2, seed=5)).status_code == 200
    leave_after = min(1.0, max(0.2, time.perf_counter() - started))  # a quarter of the work took this long

    def latency() -> float:
        times = []
        for _ in range(5):
            started = time.perf_counter()
            assert _upscale(http, small).status_code == 200
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    before_latency = latency()
    before = _admission(http)["cancelled"]["client_disconnected"]
    with pytest.raises(httpx.ReadTimeout):
        with httpx.Client(base_url=http.base_url, timeout=httpx.Timeout(60, read=leave_after)) as leaving:
            _upscale(leaving, _png(side, side, seed=2))  # gives up and closes the connection
    deadline = time.monotonic() + 5
    while (now := _admission(http))["cancelled"]["client_disconnected"] == before:
        assert time.monotonic() < deadline, f"the server did not notice the client leaving: {now}"
        time.sleep(0.05)
    last = _admission(http)["cancelled"]["last"]
    assert last["reason"] == "client_disconnected" and last["model"] == "slow-x4"
    assert 0 < last["done"] < last["total"], last
    stopped = _quiet_runs(http, wait=0.3)
    time.sleep(0.5)
    assert _admission(http)["graph_runs"] == stopped  # nothing runs on for the client that left
    after_latency = latency()
    assert after_latency < 2 * before_latency + 0.1, (before_latency, after_latency)
    log = log_path.read_text()
    assert re.search(r"cancelled \(client disconnected\) after \d+ of \d+ tiles", log)
    print(f"disconnect: stopped after {last['done']} of {last['total']} tiles; small request "
          f"{before_latency * 1000:.0f} ms before, {after_latency * 1000:.0f} ms after")


@pytest.mark.slow
def test_a_deadline_passing_mid_request_answers_504_and_stops(http):
    side = int(_calibrated_largest(http) * 0.6)
    pid = _admission(http)["worker_pid"]
    runs = _admission(http)["graph_runs"]
    result: dict = {}

    def request():
        with httpx.Client(base_url=http.base_url, timeout=60) as client:
            result["response"] = _upscale(client, _png(side, side, seed=4))

    worker = threading.Thread(target=request)
    worker.start()
    deadline = time.monotonic() + 5
    while _admission(http)["graph_runs"] < runs + 3:  # a few tiles done: mid-request
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(pid, signal.SIGSTOP)  # the machine stalls past the deadline (a stand-in for heavy load)
    try:
        time.sleep(TIMEOUT_S + 0.5)
    finally:
        os.kill(pid, signal.SIGCONT)
    worker.join(timeout=30)
    r = result["response"]
    assert r.status_code == 504, r.text
    body = r.json()
    assert body["status"] == 504 and "GANFORGE_TIMEOUT_S" in body["error"]
    assert re.search(r"stopped after \d+ of \d+ tiles", body["error"])
    last = _admission(http)["cancelled"]["last"]
    assert last["reason"] == "deadline" and last["done"] < last["total"]
    stopped = _quiet_runs(http, wait=0.3)
    time.sleep(0.5)
    assert _admission(http)["graph_runs"] == stopped
    print(f"deadline: 504 after {last['elapsed_s']:.1f} s, stopped after {last['done']} of {last['total']} tiles")


@pytest.mark.slow
def test_normal_requests_are_unchanged(http, models_dir):
    """Same bytes over real HTTP (token, watcher, admission) as in-process, for upscale, translate, generate."""
    png = _png(100, 70, seed=5)
    gray = encode(Image.fromarray(synthetic_photo(64, 48, 6)).convert("L"))
    cases = [("/upscale", {"files": {"image": ("a.png", png, "image/png")}, "data": {"model": "slow-x4"}}),
             ("/upscale", {"files": {"image": ("a.png", png, "image/png")}, "data": {"model": "srresnet-x4"}}),
             ("/translate", {"files": {"image": ("g.png", gray, "image/png")}, "data": {"model": "edges2color"}}),
             ("/generate", {"json": {"model": "fashion-dcgan", "n": 4, "seed": 3}})]
    served = [http.post(path, **kwargs) for path, kwargs in cases]
    with service_client(models_dir) as local:
        expected = [local.post(path, **kwargs) for path, kwargs in cases]
    for r, e in zip(served, expected):
        assert r.status_code == e.status_code == 200, (r.text, e.text)
        assert r.content == e.content
    Image.open(io.BytesIO(served[0].content)).load()
