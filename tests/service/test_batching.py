"""Adaptive batching: same-shaped queued requests share one graph run, and every caller gets its own rows."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from service.batching import SessionBatcher
from service_fixtures import running_server, write_fixture_models


class SlowDouble:
    """A stand-in session: doubles its input; the first call blocks until released, so others queue."""

    def __init__(self):
        self.calls: list[int] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.threads: list[int] = []

    def run(self, outputs, feeds):
        self.threads.append(threading.get_ident())
        if not self.calls:
            self.entered.set()
            self.release.wait(10)
        self.calls.append(feeds["x"].shape[0])
        if np.any(feeds["x"] < 0):
            raise RuntimeError("negative input")
        return [feeds["x"] * 2]


def _submit_all(batcher, inputs, fake):
    with ThreadPoolExecutor(len(inputs)) as pool:
        futures = [pool.submit(batcher.run, ["y"], {"x": inputs[0]})]
        assert fake.entered.wait(10)  # the first request is running: the rest must queue
        futures += [pool.submit(batcher.run, ["y"], {"x": x}) for x in inputs[1:]]
        deadline = time.monotonic() + 10
        while len(batcher._queue) < len(inputs) - 1 and time.monotonic() < deadline:
            time.sleep(0.005)  # wait until all but the blocked first request are queued
        fake.release.set()
        return [f for f in futures]


def test_lone_request_runs_at_once_on_the_callers_thread():
    fake = SlowDouble()
    fake.release.set()
    b = SessionBatcher(fake.run, max_batch=8)
    for _ in range(3):
        out = b.run(["y"], {"x": np.ones((2, 3), np.float32)})
        assert np.array_equal(out[0], np.full((2, 3), 2, np.float32))
    assert fake.calls == [2, 2, 2]
    assert fake.threads == [threading.get_ident()] * 3  # no hand-off to the runner thread when idle
    with pytest.raises(RuntimeError, match="negative"):  # the direct path raises the session's error
        b.run(["y"], {"x": -np.ones((1, 3), np.float32)})
    assert b.run(["y"], {"x": np.ones((1, 3), np.float32)})[0][0, 0] == 2  # and is not left busy
    assert b.describe()["runs"] == 5
    b.close()


def test_queued_requests_merge_and_split_back():
    fake = SlowDouble()
    b = SessionBatcher(fake.run, max_batch=16)
    inputs = [np.full((1, 4), i, np.float32) for i in range(9)]
    futures = _submit_all(b, inputs, fake)
    for i, f in enumerate(futures):
        assert np.array_equal(f.result()[0], np.full((1, 4), 2 * i, np.float32))
    assert fake.calls == [1, 8]  # the first alone (it was running), the 8 queued ones in one run
    b.close()


def test_shapes_and_max_batch_are_respected():
    fake = SlowDouble()
    b = SessionBatcher(fake.run, max_batch=3)
    inputs = [np.zeros((1, 4), np.float32)] + [np.ones((1, 4), np.float32)] * 4 + [np.ones((1, 5), np.float32)] * 2
    futures = _submit_all(b, inputs, fake)
    shapes = [f.result()[0].shape for f in futures]
    assert shapes == [(1, 4)] * 5 + [(1, 5)] * 2
    assert max(fake.calls) <= 3 and sum(fake.calls) == 7 and len(fake.calls) == 4  # 1 | 3 | 1 | 2
    b.close()


def test_an_error_reaches_the_batch_and_the_batcher_goes_on():
    fake = SlowDouble()
    b = SessionBatcher(fake.run, max_batch=8)
    inputs = [np.ones((1, 2), np.float32), np.ones((1, 2), np.float32), -np.ones((1, 2), np.float32)]
    futures = _submit_all(b, inputs, fake)
    assert futures[0].result()[0][0, 0] == 2
    for f in futures[1:]:
        with pytest.raises(RuntimeError, match="negative"):
            f.result()
    assert b.run(["y"], {"x": np.ones((1, 2), np.float32)})[0][0, 0] == 2
    b.close()


@pytest.mark.slow
def test_concurrent_http_requests_batch_and_stay_correct(tmp_path):
    """16 concurrent /generate calls on a server with 8 threads: each answer equals the sequential one."""
    models = tmp_path / "models"
    write_fixture_models(models)
    with running_server(models, tmp_path, GANFORGE_THREADS="8", GANFORGE_BATCH_MAX="16") as (base, _):
        with httpx.Client(base_url=base, timeout=60) as http:
            def call(seed):
                r = http.post("/generate", json={"seed": seed, "label": seed % 10})
                assert r.status_code == 200, r.text
                return r.content
            sequential = [call(s) for s in range(16)]
            with ThreadPoolExecutor(16) as pool:
                concurrent = list(pool.map(call, range(16)))
            model = next(m for m in http.get("/models").json()["models"] if m["endpoint"] == "generate")
    assert concurrent == sequential
    stats = model["batching"]["generator"]
    # every call went through the batcher; whether concurrent calls overlap enough to share a run depends on
    # the machine's speed (the tiny fixture graph runs in microseconds), so merging itself is proven above
    assert stats["requests"] == 32 and 1 <= stats["runs"] <= 32 and stats["max_rows"] >= 1, stats


def test_batching_auto_is_off_on_the_cpu_and_on_when_asked(tmp_path):
    """GANFORGE_BATCH_MAX unset (auto): no batcher on the CPU provider (measured slower there, make bench);
    an explicit value turns it on; 1 turns it off."""
    from service.config import Settings
    from service.registry import ModelRegistry

    models = tmp_path / "models"
    write_fixture_models(models)
    for env, want in (({}, None), ({"GANFORGE_BATCH_MAX": "16"}, 16), ({"GANFORGE_BATCH_MAX": "1"}, None)):
        settings = Settings.from_env({"GANFORGE_MODELS_DIR": str(models), "GANFORGE_DEVICE": "cpu", **env})
        registry = ModelRegistry.load(settings)
        for model in registry.models.values():
            assert model.ready
            got = {r.max_batch for r in model.runners.values()} or {None}
            assert got == {want}, (env, model.name, got)
            model.close()
