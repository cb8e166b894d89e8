"""Jobs (issue 23): what running a request as a job costs, and how fast a job stops and comes back.

1. A 128x128 -> 512x512 /upscale on the default upscaler, end to end from the client: sync (one POST)
   against the job path (POST with `Prefer: respond-async`, then GET /jobs/{id} every `POLL_S` until
   it succeeded, then GET its result), the same with one long poll (GET /jobs/{id} with
   `Prefer: wait=30`) and with its event stream instead of polling. Alternating rounds on one server; the figure is the ratio of medians (goal: <= 1.1x).
2. Cancel -> idle: a large upscale job, cancelled once it has done a few tiles; the time from sending
   POST /jobs/{id}/cancel to the worker's last graph run (GET /models `graph_runs`, polled every 10 ms).
3. Restart -> running: the same kind of job; the whole server SIGKILLed in the middle of it and started
   again on the same GANFORGE_JOBS_DIR; the time from spawning the new server to its /readyz, and to
   the job being `running` again.
"""
from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import numpy as np

from .coldstart import timed_server
from .common import Profile, fmt_ms, fmt_x, interleaved, median_ms, ratio, stats, table
from .models import BenchModels

POLL_S = 0.05
ASYNC = {"Prefer": "respond-async"}
TERMINAL = ("succeeded", "failed", "canceled")


def _png(side: int, seed: int = 0) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    img = np.stack([255 * xx / side, 255 * yy / side, 128 + 100 * np.sin(xx / 7) * np.cos(yy / 11)], axis=-1)
    img += rng.normal(0, 6, img.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _poll(client, job_id: str, until, timeout_s: float = 600.0, every_s: float = POLL_S) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        job = client.get(f"/jobs/{job_id}").json()
        if until(job):
            return job
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} never got there: {job}")
        time.sleep(every_s)


def _upscale_calls(client, model: str, image: bytes) -> dict[str, Any]:
    files = {"image": ("in.png", image, "image/png")}
    data = {"model": model}

    def sync() -> bytes:
        r = client.post("/upscale", files=files, data=data)
        r.raise_for_status()
        return r.content

    def job_polled() -> bytes:
        job = client.post("/upscale", files=files, data=data, headers=ASYNC).json()
        job = _poll(client, job["id"], lambda j: j["status"] in TERMINAL)
        return client.get(job["result_url"]).content

    def job_streamed() -> bytes:
        job = client.post("/upscale", files=files, data=data, headers=ASYNC).json()
        with client.stream("GET", f"/jobs/{job['id']}/events") as events:
            for line in events.iter_lines():
                if line.startswith("event: ") and line[7:] in TERMINAL:
                    break
        return client.get(f"/jobs/{job['id']}/result").content

    def job_long_poll() -> bytes:
        job = client.post("/upscale", files=files, data=data, headers=ASYNC).json()
        while job["status"] not in TERMINAL:
            job = client.get(f"/jobs/{job['id']}", headers={"Prefer": "wait=30"}).json()
        return client.get(job["result_url"]).content

    return {"sync": sync, "job (poll 50 ms)": job_polled, "job (Prefer: wait)": job_long_poll,
            "job (events)": job_streamed}


def _graph_runs(client) -> int:
    return client.get("/models").json()["admission"]["graph_runs"]


def cancel_to_idle(client, model: str, image: bytes, quiet_s: float = 1.0) -> float:
    job = client.post("/upscale", files={"image": ("big.png", image, "image/png")}, data={"model": model},
                      headers=ASYNC).json()
    _poll(client, job["id"], lambda j: j["status"] == "running" and j["done"] >= 2, every_s=0.01)
    sent = time.perf_counter()
    client.post(f"/jobs/{job['id']}/cancel").raise_for_status()
    runs, last_change = _graph_runs(client), sent
    while time.perf_counter() - last_change < quiet_s:
        time.sleep(0.01)
        now = _graph_runs(client)
        if now != runs:
            runs, last_change = now, time.perf_counter()
    return last_change - sent


def restart_to_running(models_dir: Path, tmp: Path, model: str, image: bytes) -> dict[str, float]:
    import httpx

    from testkit.launcher import kill_server_tree

    env = {"GANFORGE_JOBS_DIR": str(tmp / "restart-jobs")}
    with timed_server(models_dir, tmp, **env) as (base, _):
        with httpx.Client(base_url=base, timeout=120) as client:
            job = client.post("/upscale", files={"image": ("big.png", image, "image/png")},
                              data={"model": model}, headers=ASYNC).json()
            _poll(client, job["id"], lambda j: j["status"] == "running" and j["done"] >= 1, every_s=0.01)
            kill_server_tree(client.get("/models").json()["admission"]["worker_pid"])
    spawned = time.perf_counter()
    with timed_server(models_dir, tmp, **env) as (base, ready_s):
        with httpx.Client(base_url=base, timeout=120) as client:
            _poll(client, job["id"], lambda j: j["status"] == "running" or j["status"] in TERMINAL, every_s=0.01)
            running_s = time.perf_counter() - spawned
            client.post(f"/jobs/{job['id']}/cancel")
    return {"ready_s": ready_s, "running_s": running_s}


def run(models: BenchModels, profile: Profile, log=print) -> dict[str, Any]:
    import tempfile

    import httpx

    upscaler = models.first("upscale", prefer="srresnet-x4")
    if upscaler is None:
        return {"skipped": "no upscale model"}
    small = _png(128)
    big = _png(512 if profile.quick else 1024, seed=1)
    result: dict[str, Any] = {"model": upscaler.name, "input": "128x128 -> 512x512", "poll_s": POLL_S}
    with tempfile.TemporaryDirectory(prefix="ganforge-bench-jobs-") as work:
        tmp = Path(work)
        with timed_server(models.models_dir, tmp, GANFORGE_JOBS_DIR=str(tmp / "jobs")) as (base, _):
            with httpx.Client(base_url=base, timeout=120) as client:
                calls = _upscale_calls(client, upscaler.name, small)
                same = len({call() for call in calls.values()}) == 1
                log(f"  {upscaler.name} 128 -> 512: sync vs job, {profile.latency_rounds} rounds")
                samples = interleaved(calls, *profile.latency_rounds, budget_s=profile.latency_budget_s)
                result["latency"] = {name: stats(s) for name, s in samples.items()}
                result["identical_bytes"] = same
                base_ms = median_ms(samples["sync"])
                result["ratio"] = {name: ratio(median_ms(s), base_ms) for name, s in samples.items()}
                rounds = 2 if profile.quick else 5
                log(f"  cancel -> idle, {rounds} jobs on a {len(big)} B input")
                result["cancel_to_idle_s"] = [cancel_to_idle(client, upscaler.name, big) for _ in range(rounds)]
        log("  restart -> running (SIGKILL of the whole server mid-job)")
        result["restart"] = restart_to_running(models.models_dir, tmp, upscaler.name, big)
    return result


def report(result: dict[str, Any]) -> str:
    if "skipped" in result:
        return f"skipped: {result['skipped']}"
    rows = [[name, fmt_ms(s.get("p50_ms")), fmt_ms(s.get("p99_ms")), s.get("n"), fmt_x(result["ratio"][name])]
            for name, s in result["latency"].items()]
    lines = [f"{result['model']} {result['input']}, end to end from the client (job: submit + wait + result); "
             f"byte-identical answers: {result['identical_bytes']}",
             table(["path", "p50 ms", "p99 ms", "n", "vs sync"], rows)]
    cancel = result["cancel_to_idle_s"]
    lines.append(f"cancel -> idle (last graph run after POST /cancel): median {np.median(cancel) * 1e3:.0f} ms, "
                 f"max {max(cancel) * 1e3:.0f} ms over {len(cancel)} jobs")
    restart = result["restart"]
    lines.append(f"restart -> ready {restart['ready_s']:.2f} s, -> the killed job running again "
                 f"{restart['running_s']:.2f} s (spawn of the new server to `running`)")
    return "\n".join(lines)


def big_upscale(models_dir: Path, width: int = 2048, height: int = 1536, model: str = "srresnet-x4",
                log=print) -> dict[str, Any]:
    """The issue's acceptance run: a width x height x4 upscale as a job, followed on its event stream
    (the longest gap between events), then the same request sync (GANFORGE_TIMEOUT_S raised so the sync
    call is admitted at all): byte-identical?"""
    import tempfile

    import httpx
    from PIL import Image

    photo = Image.fromarray(np.asarray(Image.open(io.BytesIO(_png(max(width, height), seed=3))))[:height, :width])
    buf = io.BytesIO()
    photo.save(buf, format="PNG")
    image = buf.getvalue()
    files = {"image": ("big.png", image, "image/png")}
    with tempfile.TemporaryDirectory(prefix="ganforge-bench-bigjob-") as work:
        tmp = Path(work)
        with timed_server(models_dir, tmp, GANFORGE_JOBS_DIR=str(tmp / "jobs"), GANFORGE_TIMEOUT_S="3600") as (base, _):
            with httpx.Client(base_url=base, timeout=3600) as client:
                started = time.perf_counter()
                job = client.post("/upscale", files=files, data={"model": model}, headers=ASYNC).json()
                stamps, last = [], None
                while True:  # the stream ends after ~55 s: reconnect with Last-Event-ID, as a client does
                    headers = {"Last-Event-ID": str(last)} if last is not None else {}
                    with client.stream("GET", f"/jobs/{job['id']}/events", headers=headers) as events:
                        for line in events.iter_lines():
                            if line.startswith("id: "):
                                last = int(line[4:])
                            elif line.startswith("event: "):
                                stamps.append((time.perf_counter(), line[7:]))
                                log(f"  {stamps[-1][0] - started:7.1f} s  {line[7:]}")
                    if stamps and stamps[-1][1] in TERMINAL:
                        break
                job_s = time.perf_counter() - started
                result = client.get(f"/jobs/{job['id']}/result")
                started = time.perf_counter()
                sync = client.post("/upscale", files=files, data={"model": model})
                sync_s = time.perf_counter() - started
    running = [t for t, e in stamps if e in ("running", "progress")] + [stamps[-1][0]]
    gaps = [b - a for a, b in zip(running, running[1:])]
    return {"input": f"{width}x{height}", "model": model, "status": stamps[-1][1], "job_s": job_s, "sync_s": sync_s,
            "events": len(stamps), "max_gap_s": max(gaps) if gaps else None,
            "identical": result.status_code == 200 and result.content == sync.content, "bytes": len(result.content)}


if __name__ == "__main__":  # python -m bench.jobs [WIDTH HEIGHT]: the 2048x1536 x4 acceptance run
    import json
    import sys

    from .common import REPO

    size = [int(v) for v in sys.argv[1:3]] or [2048, 1536]
    print(json.dumps(big_upscale(REPO / "models", *size), indent=1))
