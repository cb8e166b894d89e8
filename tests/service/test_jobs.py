"""Durable jobs (issue 23) over real HTTP against a real `bentoml serve`.

Two servers:
- `main`: one worker on the fixture models plus `slow-x4` (tests/test_deadlines.py: a heavy x4
  upscaler with 48-pixel tiles, so a few-hundred-pixel input is dozens of tiles and a job's middle is
  observable), GANFORGE_AUTH_TOKEN, webhooks to 127.0.0.1, at most 3 queued jobs, its jobs folder
  on a small tmpfs (disk full) when this runs as root, else a plain folder (that test skips);
- `workers`: two workers, SIGKILLed as a whole process group in the middle of a job and started
  again on the same folder (with a short GANFORGE_JOBS_TTL_S, for expiry).
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from testkit.launcher import kill_server_tree
from service_fixtures import encode, running_server, synthetic_photo, write_fixture_models
from test_deadlines import write_slow_model

pytestmark = pytest.mark.slow

TOKEN = "jobs-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ASYNC = {"Prefer": "respond-async"}
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SLOW_SIDE = 400  # slow-x4: 9 x 9 tiles of 48 px
SR = {"model": "srresnet-x4"}
TTL_S = 5  # GANFORGE_JOBS_TTL_S of the restarted two-worker server
TERMINAL = ("succeeded", "failed", "canceled")
FIELDS = {"id", "endpoint", "model", "status", "progress", "done", "total", "eta_s", "created_at", "started_at",
          "finished_at", "error", "result_url", "expires_at"}


def png(side: int, seed: int = 0, height: int | None = None) -> bytes:
    return encode(Image.fromarray(synthetic_photo(side, height or side, seed)))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("jobs_models") / "models"
    write_fixture_models(folder)
    write_slow_model(folder, width=128, depth=24)  # ~10x the deadline tests' slow-x4: seconds per job, even quiet
    return folder


@pytest.fixture(scope="module")
def jobs_dir(tmp_path_factory):
    """A 48 MiB tmpfs when mounting works (root), else a plain folder (disk full then skips)."""
    folder = tmp_path_factory.mktemp("jobs_tmpfs")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(folder)],
                             capture_output=True).returncode == 0 if os.geteuid() == 0 else False
    yield folder, mounted
    if mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture(scope="module")
def main(models, jobs_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("jobs_main")
    env = {"GANFORGE_AUTH_TOKEN": TOKEN, "GANFORGE_JOBS_DIR": str(jobs_dir[0]), "GANFORGE_JOBS_MAX_QUEUED": "3",
           "GANFORGE_WEBHOOK_HOSTS": "127.0.0.1", "GANFORGE_WEBHOOK_SECRET": SECRET}
    with running_server(models, tmp, **env) as (base, log):
        with httpx.Client(base_url=base, timeout=60, headers=AUTH) as client:
            yield client


def submit(http, endpoint: str, key: str | None = None, **kwargs) -> httpx.Response:
    headers = {**ASYNC, **({"Idempotency-Key": key} if key else {})}
    return http.post(endpoint, headers=headers, **kwargs)


def submit_slow(http, side: int = SLOW_SIDE, seed: int = 0, **data) -> dict:
    r = submit(http, "/upscale", files={"image": ("a.png", png(side, seed), "image/png")},
               data={"model": "slow-x4", **data})
    assert r.status_code == 202, r.text
    return r.json()


def wait(http, job_id: str, until, timeout: float = 60.0, seen: list | None = None) -> dict:
    """Poll the job until `until(job)`; every state seen goes into `seen`."""
    deadline = time.monotonic() + timeout
    while True:
        job = http.get(f"/jobs/{job_id}").json()
        if seen is not None:
            seen.append(job)
        if until(job):
            return job
        assert time.monotonic() < deadline, f"job never got there: {job}"
        time.sleep(0.05)  # polling interval, not an assertion


def finished(job: dict) -> bool:
    return job["status"] in TERMINAL


def graph_runs(http) -> int:
    return http.get("/models").json()["admission"]["graph_runs"]


def idle_after(http, quiet_s: float = 0.5, timeout: float = 20.0) -> float:
    """Seconds until graph_runs stopped changing for `quiet_s` (the server is idle)."""
    started = time.monotonic()
    runs, since = graph_runs(http), time.monotonic()
    while time.monotonic() - since < quiet_s:
        assert time.monotonic() - started < timeout, "the server kept computing"
        time.sleep(0.05)
        now = graph_runs(http)
        if now != runs:
            runs, since = now, time.monotonic()
    return since - started


def sse(http, job_id: str, last_id: int | None = None, stop_after: int | None = None) -> list[dict]:
    """Events of the stream (id, event, data) until the terminal one, or after `stop_after` events (then
    closed). A stream the server ends before the terminal event (it caps a stream's length) is resumed
    with the last id seen, as a client does."""
    events = sse_once(http, job_id, last_id, stop_after)
    while stop_after is None and (not events or events[-1]["event"] not in TERMINAL):
        more = sse_once(http, job_id, events[-1]["id"] if events else last_id, None)
        if not more and http.get(f"/jobs/{job_id}").json()["status"] in TERMINAL:
            break  # nothing after the last id, and the job is over: the terminal event was already seen
        events += more
    return events


def sse_once(http, job_id: str, last_id: int | None, stop_after: int | None) -> list[dict]:
    """One connection's events."""
    headers = {"Last-Event-ID": str(last_id)} if last_id is not None else {}
    events, current = [], {}
    with http.stream("GET", f"/jobs/{job_id}/events", headers=headers) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if not line:
                if "event" in current:
                    events.append({**current, "data": json.loads(current["data"]), "at": time.monotonic()})
                    if stop_after is not None and len(events) >= stop_after:
                        break
                current = {}
                continue
            key, _, value = line.partition(": ")
            if key in ("id", "event", "data"):
                current[key] = int(value) if key == "id" else value
    return events


# ---------------------------------------------------------------- states, result, priority


def test_states_progress_and_the_sync_bytes(main):
    r = submit(main, "/upscale", files={"image": ("a.png", png(SLOW_SIDE, 1), "image/png")},
               data={"model": "slow-x4"})
    assert r.status_code == 202, r.text
    assert r.headers["preference-applied"] == "respond-async"
    job = r.json()
    assert r.headers["location"] == f"/jobs/{job['id']}" and FIELDS <= set(job)
    assert job["status"] == "queued" and job["progress"] == 0 and job["endpoint"] == "upscale"
    assert job["model"] == "slow-x4" and job["result_url"] is None and len(job["id"]) >= 20
    second = submit_slow(main, side=64, seed=2)  # waits behind the first: queued
    seen: list[dict] = []
    running = wait(main, job["id"], lambda j: j["status"] == "running" and 0 < j["progress"] < 1, seen=seen)
    assert running["total"] > running["done"] > 0 and running["eta_s"] is not None and running["started_at"]
    assert main.get(f"/jobs/{second['id']}").json()["status"] == "queued"
    assert main.get(f"/jobs/{job['id']}/result").status_code == 409
    # a sync request while the job runs waits for about one tile, not for the job
    started = time.monotonic()
    small = main.post("/upscale", files={"image": ("s.png", png(32, 3), "image/png")}, data={"model": "slow-x4"})
    sync_s = time.monotonic() - started
    assert small.status_code == 200 and main.get(f"/jobs/{job['id']}").json()["status"] == "running"
    assert sync_s < 3.0, f"a small sync request waited {sync_s:.1f} s behind a job"
    done = wait(main, job["id"], finished, seen=seen)
    assert done["status"] == "succeeded" and done["progress"] == 1 and done["done"] == done["total"]
    assert done["result_url"] == f"/jobs/{job['id']}/result" and done["finished_at"] and done["expires_at"]
    progress = [j["progress"] for j in seen]
    assert progress == sorted(progress) and len(set(progress)) >= 3, progress
    result = main.get(done["result_url"])
    sync = main.post("/upscale", files={"image": ("a.png", png(SLOW_SIDE, 1), "image/png")}, data={"model": "slow-x4"})
    assert result.status_code == 200 and result.content == sync.content
    for name in ("content-type", "content-length", "x-model"):
        assert result.headers[name] == sync.headers[name]
    wait(main, second["id"], finished)
    listed = main.get("/jobs", params={"limit": 2}).json()["jobs"]
    assert [j["id"] for j in listed] == [second["id"], job["id"]]
    assert all(j["status"] == "succeeded" for j in main.get("/jobs", params={"status": "succeeded"}).json()["jobs"])
    assert main.get("/jobs", params={"status": "lost"}).status_code == 422
    print(f"a 32x32 sync request took {sync_s * 1000:.0f} ms while a job ran")


def test_generate_and_translate_jobs_match_sync(main):
    r = submit(main, "/generate", json={"label": "Trouser", "n": 4, "seed": 11})
    assert r.status_code == 202, r.text
    long_poll = main.get(f"/jobs/{r.json()['id']}", headers={"Prefer": "wait=30"})  # answers once it ended
    job = long_poll.json()
    assert job["status"] == "succeeded" and long_poll.headers["preference-applied"] == "wait=30"
    result = main.get(job["result_url"])
    sync = main.post("/generate", json={"label": "Trouser", "n": 4, "seed": 11})
    assert result.content == sync.content and result.headers["x-seed"] == "11" == sync.headers["x-seed"]
    drawn = wait(main, submit(main, "/generate", json={"n": 2}).json()["id"], finished)  # the seed is drawn once
    drawn_result = main.get(drawn["result_url"])
    again = main.post("/generate", json={"n": 2, "seed": int(drawn_result.headers["x-seed"])})
    assert drawn_result.content == again.content
    image = png(45, 5, 27)
    data = {"model": "shoe2boot", "direction": "b2a", "format": "webp"}
    job = wait(main, submit(main, "/translate", files={"image": ("a.png", image)}, data=data).json()["id"], finished)
    sync = main.post("/translate", files={"image": ("a.png", image)}, data=data)
    assert main.get(job["result_url"]).content == sync.content


def test_failed_job_carries_the_sync_error(main):
    data = {"model": "shoe2boot", "direction": "up"}
    r = submit(main, "/translate", files={"image": ("a.png", png(30))}, data=data)
    assert r.status_code == 202, r.text
    job = wait(main, r.json()["id"], finished)
    sync = main.post("/translate", files={"image": ("a.png", png(30))}, data=data)
    assert job["status"] == "failed" and job["error"] == sync.json() and sync.status_code == 422
    result = main.get(f"/jobs/{job['id']}/result")
    assert result.status_code == 422 and result.json() == sync.json()


def test_refused_at_submit_like_the_sync_api(main):
    assert submit(main, "/upscale", files={"image": ("a.png", png(30))}, data={"model": "nope"}).status_code == 404
    bad = submit(main, "/upscale", files={"image": ("a.png", b"not an image")}, data=SR)
    assert bad.status_code == 400 and bad.json() == main.post("/upscale", files={"image": ("a.png", b"not an image")}, data=SR).json()
    assert submit(main, "/generate", json={"n": "many"}).status_code == 400
    refused = submit(main, "/upscale", files={"image": ("a.png", png(30))},
                     data={"webhook": "http://10.1.2.3/hook"})
    assert refused.status_code == 422 and "GANFORGE_WEBHOOK_HOSTS" in refused.json()["error"]
    assert main.get("/jobs/no-such-job").status_code == 404


# ---------------------------------------------------------------- cancel, queue, idempotency


def test_cancel_mid_run_stops_within_a_tile_and_keeps_nothing(main, jobs_dir):
    job = submit_slow(main, seed=4)
    wait(main, job["id"], lambda j: j["status"] == "running" and j["done"] >= 2)
    canceled_at = time.monotonic()
    r = main.post(f"/jobs/{job['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "canceled" and r.json()["finished_at"]
    runs = graph_runs(main)
    idle_s = idle_after(main)
    assert graph_runs(main) - runs <= 2, "the job kept running after its cancel"
    after = main.get(f"/jobs/{job['id']}").json()
    assert after["status"] == "canceled" and after["done"] < after["total"]
    assert main.get(f"/jobs/{job['id']}/result").status_code == 409
    assert main.post(f"/jobs/{job['id']}/cancel").status_code == 200  # canceling again changes nothing
    folder = jobs_dir[0]
    assert not (folder / "inputs" / job["id"]).exists() and not (folder / "results" / job["id"]).exists()
    events = sse(main, job["id"])
    assert events[-1]["event"] == "canceled"
    print(f"cancel -> idle (last graph run): {idle_s:.2f} s after the cancel answered, "
          f"{time.monotonic() - canceled_at:.2f} s with the quiet window")


def test_queue_full_answers_429_and_a_queued_job_cancels(main):
    running = submit_slow(main, seed=6)
    wait(main, running["id"], lambda j: j["status"] == "running")
    queued = [submit_slow(main, side=40, seed=10 + k) for k in range(3)]
    full = submit(main, "/upscale", files={"image": ("a.png", png(40), "image/png")}, data={"model": "slow-x4"})
    assert full.status_code == 429 and "GANFORGE_JOBS_MAX_QUEUED" in full.json()["error"]
    for job in queued + [running]:
        assert main.post(f"/jobs/{job['id']}/cancel").json()["status"] == "canceled"
    assert main.get("/jobs", params={"status": "queued"}).json()["jobs"] == []
    idle_after(main)


def test_idempotency_key(main):
    body = {"label": "Bag", "seed": 5}
    first = submit(main, "/generate", key="order-17", json=body)
    again = submit(main, "/generate", key="order-17", json=body)
    assert first.status_code == again.status_code == 202 and first.json()["id"] == again.json()["id"]
    ids = [j["id"] for j in main.get("/jobs", params={"limit": 1000}).json()["jobs"]]
    assert ids.count(first.json()["id"]) == 1
    other = submit(main, "/generate", key="order-17", json={**body, "seed": 6})
    assert other.status_code == 409 and "Idempotency-Key" in other.json()["error"]
    image = png(30, 8)
    up = submit(main, "/upscale", key="upload-1", files={"image": ("a.png", image)}, data=SR)
    assert submit(main, "/upscale", key="upload-1", files={"image": ("b.png", image)}, data=SR).json()["id"] == up.json()["id"]
    assert submit(main, "/upscale", key="upload-1", files={"image": ("a.png", png(30, 9))}, data=SR).status_code == 409
    wait(main, first.json()["id"], finished)


# ---------------------------------------------------------------- events, webhooks, auth, disk


def test_events_stream_and_reconnect(main):
    job = submit_slow(main, seed=12)
    head = sse(main, job["id"], stop_after=4)  # queued, running, progress, progress: then the client goes
    assert [e["event"] for e in head[:2]] == ["queued", "running"] and head[2]["event"] == "progress"
    rest = sse(main, job["id"], last_id=head[-1]["id"])
    ids = [e["id"] for e in head + rest]
    assert ids == list(range(1, len(ids) + 1)), ids  # nothing missed, nothing twice
    assert rest[-1]["event"] == "succeeded" and rest[-1]["data"]["progress"] == 1
    assert [e["event"] for e in rest[:-1]] == ["progress"] * (len(rest) - 1)
    progress = [e["data"]["progress"] for e in head + rest]
    assert progress == sorted(progress)
    stamps = [e["at"] for e in rest]
    assert all(b - a < 2.0 for a, b in zip(stamps, stamps[1:])), "a progress event at least every 2 s"


class Receiver(http.server.ThreadingHTTPServer):
    """Records every POST; answers 500 to the first `failures`, then 204."""

    def __init__(self, failures: int) -> None:
        self.failures, self.got = failures, []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(handler) -> None:  # noqa: N805
                body = handler.rfile.read(int(handler.headers["content-length"]))
                self.got.append((dict(handler.headers.items()), body, time.monotonic()))
                handler.send_response(500 if len(self.got) <= self.failures else 204)
                handler.send_header("content-length", "0")
                handler.end_headers()

            def log_message(handler, *args) -> None:  # noqa: N805
                pass

        super().__init__(("127.0.0.1", 0), Handler)


def test_webhooks_signed_and_retried(main):
    from standardwebhooks.webhooks import Webhook

    receiver = Receiver(failures=2)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
        r = submit(main, "/generate", json={"seed": 3, "webhook": url, "webhook_events": ["start", "completed"]})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        deadline = time.monotonic() + 30
        while not any(json.loads(b)["type"] == "job.completed" for _, b, _ in receiver.got[2:]) or len(receiver.got) < 4:
            assert time.monotonic() < deadline, [json.loads(b)["type"] for _, b, _ in receiver.got]
            time.sleep(0.05)
        verifier = Webhook(SECRET)
        kinds = []
        for headers, body, _ in receiver.got:
            payload = verifier.verify(body, {k.lower(): v for k, v in headers.items()})  # raises when forged
            assert payload["data"]["id"] == job_id
            kinds.append((headers["webhook-id"], payload["type"]))
        # two 500s, each retried with the same webhook-id; then start and completed both arrive
        assert {k for _, k in kinds} == {"job.start", "job.completed"}
        first_id = kinds[0][0]
        assert kinds[1][0] == first_id or kinds[2][0] == first_id, kinds
        completed = [json.loads(b) for _, b, _ in receiver.got if json.loads(b)["type"] == "job.completed"]
        assert completed[-1]["data"]["status"] == "succeeded"
        forged = dict(receiver.got[-1][0], **{"webhook-signature": "v1," + "A" * 44})
        with pytest.raises(Exception):
            verifier.verify(receiver.got[-1][1], {k.lower(): v for k, v in forged.items()})
    finally:
        receiver.shutdown()
    metrics = httpx.get(str(main.base_url) + "/metrics").text
    assert 'ganforge_webhook_deliveries_total{outcome="retry"}' in metrics
    assert 'ganforge_webhook_deliveries_total{outcome="delivered"}' in metrics
    assert 'ganforge_jobs_total{endpoint="generate",model="fashion-dcgan",status="succeeded"}' in metrics
    assert "ganforge_job_queued_seconds_bucket" in metrics and "ganforge_job_running_seconds_bucket" in metrics
    assert "ganforge_jobs_queued" in metrics


def test_every_jobs_route_needs_the_token(main):
    job = wait(main, submit(main, "/generate", json={"seed": 1}).json()["id"], finished)
    base = str(main.base_url)
    for method, path in (("GET", "/jobs"), ("GET", f"/jobs/{job['id']}"), ("GET", f"/jobs/{job['id']}/result"),
                         ("POST", f"/jobs/{job['id']}/cancel"), ("GET", f"/jobs/{job['id']}/events")):
        r = httpx.request(method, base + path)
        assert r.status_code == 401 and r.json()["status"] == 401, (path, r.status_code)
    assert httpx.post(base + "/generate", json={"seed": 1}, headers=ASYNC).status_code == 401
    assert main.get(f"/jobs/{job['id']}/result").status_code == 200


def test_disk_full_fails_the_job_and_leaves_nothing(main, jobs_dir):
    folder, mounted = jobs_dir
    if not mounted:
        pytest.skip("needs root to mount a small tmpfs as the jobs folder")
    filler = folder / "filler"
    free = os.statvfs(folder)
    with open(filler, "wb") as f:  # leave ~1.5 MB: the upload and the store fit, the ~3 MB result does not
        f.truncate(0)
        f.write(b"\0" * max(free.f_bavail * free.f_frsize - 1_500_000, 0))
    try:
        r = submit(main, "/upscale", files={"image": ("a.png", png(300, 13), "image/png")}, data={"model": "srresnet-x4"})
        assert r.status_code == 202, r.text
        job = wait(main, r.json()["id"], finished)
        assert job["status"] == "failed" and job["error"]["status"] == 507
        assert "GANFORGE_JOBS_DIR" in job["error"]["error"] and "full" in job["error"]["error"]
        assert not list((folder / "results").iterdir()) or all(
            not p.name.startswith(".") and p.name != job["id"] for p in (folder / "results").iterdir())
        assert not (folder / "inputs" / job["id"]).exists()
        with open(filler, "ab") as f:  # now not even the upload fits: refused at once, nothing kept
            free = os.statvfs(folder)
            f.write(b"\0" * max(free.f_bavail * free.f_frsize - 16_000, 0))
        before = set((folder / "inputs").iterdir())
        refused = submit(main, "/upscale", files={"image": ("a.png", png(300, 14), "image/png")}, data=SR)
        assert refused.status_code == 507 and "GANFORGE_JOBS_DIR" in refused.json()["error"], refused.text
        assert set((folder / "inputs").iterdir()) == before
    finally:
        filler.unlink()
    again = wait(main, submit(main, "/upscale", files={"image": ("a.png", png(300, 13), "image/png")}, data={"model": "srresnet-x4"}).json()["id"],
                 finished)
    assert again["status"] == "succeeded"


def test_models_names_the_jobs_dir(main, jobs_dir):
    jobs = main.get("/models").json()["jobs"]
    assert jobs["dir"] == str(jobs_dir[0]) and jobs["ttl_s"] == 86400 and jobs["max_queued"] == 3


# ---------------------------------------------------------------- two workers, SIGKILL, restart, expiry


def kill_server(base: str) -> int:
    """SIGKILL every process of the server at once (testkit/launcher.py)."""
    return kill_server_tree(httpx.get(base + "/models", timeout=10).json()["admission"]["worker_pid"])


def running_attempts(http, job_id: str) -> int:
    return sum(e["event"] == "running" for e in sse(http, job_id))


def runs_again_after_requeue(models: Path, tmp: Path, env: dict[str, str], job_id: str) -> None:
    """A new server runs the job that its stopped predecessor put back in the queue (a "queued" event from
    on_shutdown, then a second "running")."""
    with running_server(models, tmp, **env) as (base, _):
        with httpx.Client(base_url=base, timeout=60) as http:
            assert wait(http, job_id, finished)["status"] == "succeeded"
            events = [e["event"] for e in sse(http, job_id)]
    assert events.count("running") == 2 and events.count("queued") == 2 and events[-1] == "succeeded", events


def test_two_workers_sigkill_restart_and_expiry(models, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("jobs_workers")
    folder = tmp / "jobs_dir"
    env = {"GANFORGE_WORKERS": "2", "GANFORGE_JOBS_DIR": str(folder)}
    with running_server(models, tmp, **env) as (base, _):
        http = httpx.Client(base_url=base, timeout=60)
        early = wait(http, submit(http, "/upscale", files={"image": ("a.png", png(40, 20))}, data={"model": "srresnet-x4"}).json()["id"], finished)
        early_bytes = http.get(early["result_url"]).content
        off = submit(http, "/generate", json={"seed": 1, "webhook": "http://127.0.0.1:9/hook"})  # no hosts listed
        assert off.status_code == 422 and "GANFORGE_WEBHOOK_HOSTS" in off.json()["error"]
        batch = [submit_slow(http, side=120, seed=30 + k)["id"] for k in range(4)]
        for job_id in batch:
            assert wait(http, job_id, finished)["status"] == "succeeded"
            assert running_attempts(http, job_id) == 1  # each job ran once, in one of the two workers
        victim = submit_slow(http, seed=40)
        wait(http, victim["id"], lambda j: j["status"] == "running" and j["done"] >= 2)
        assert kill_server(base) >= 3  # bentoml serve, its two workers (and circus' helpers)
        with pytest.raises(httpx.HTTPError):
            http.get("/readyz", timeout=2)
        http.close()
    restart = time.monotonic()
    with running_server(models, tmp, **env, GANFORGE_JOBS_TTL_S=str(TTL_S)) as (base, _):
        http = httpx.Client(base_url=base, timeout=60)
        ready_s = time.monotonic() - restart
        wait(http, victim["id"], lambda j: j["status"] == "running" or finished(j))
        running_s = time.monotonic() - restart
        done = wait(http, victim["id"], finished)
        result = http.get(done["result_url"])  # now: this server keeps results only TTL_S
        assert done["status"] == "succeeded" and running_attempts(http, victim["id"]) == 2
        sync = http.post("/upscale", files={"image": ("a.png", png(SLOW_SIDE, 40), "image/png")},
                         data={"model": "slow-x4"})
        assert result.content == sync.content  # byte-identical after the restart
        assert http.get(early["result_url"]).content == early_bytes  # finished before the kill: still there
        # expiry: this server keeps results TTL_S
        deadline = time.monotonic() + TTL_S + 20
        while http.get(f"/jobs/{victim['id']}/result").status_code != 410:
            assert time.monotonic() < deadline, "never expired"
            time.sleep(0.1)
        assert http.get(f"/jobs/{victim['id']}").status_code == 410
        while (folder / "results" / victim["id"]).exists():  # the service removes the file itself
            assert time.monotonic() < deadline, "the expired result was not removed"
            time.sleep(0.1)
        assert http.get("/jobs/never-was").status_code == 404
        # SIGTERM (running_server's stop) in the middle of a job: it goes back to the queue
        stopped = submit_slow(http, seed=41)
        wait(http, stopped["id"], lambda j: j["status"] == "running" and j["done"] >= 2)
        http.close()
    runs_again_after_requeue(models, tmp, env, stopped["id"])
    print(f"restart -> ready {ready_s:.1f} s, -> the killed job running again {running_s:.1f} s")


def test_a_sigkilled_bentoml_serve_takes_its_worker_with_it(models, tmp_path_factory):
    """SIGKILL of `bentoml serve` alone (the pid an operator knows; its worker runs in a session of its own):
    the orphaned worker stops itself (service/orphan.py) instead of answering on the inherited socket, puts
    its running job back in the queue as on a normal stop, and the next server runs it."""
    import signal

    from testkit.launcher import process_parents

    tmp = tmp_path_factory.mktemp("jobs_orphan")
    env = {"GANFORGE_JOBS_DIR": str(tmp / "jobs_dir")}
    with running_server(models, tmp, **env) as (base, log_path):
        http = httpx.Client(base_url=base, timeout=60)
        worker = http.get("/models").json()["admission"]["worker_pid"]
        server = process_parents()[worker]
        job = submit_slow(http, seed=50)
        wait(http, job["id"], lambda j: j["status"] == "running" and j["done"] >= 2)
        os.kill(server, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while worker in process_parents():
            assert time.monotonic() < deadline, "the orphaned worker is still running"
            time.sleep(0.1)
        with pytest.raises(httpx.HTTPError):
            http.get("/readyz", timeout=2)
        http.close()
        assert "is gone: stopping this worker" in log_path.read_text(errors="replace")
    runs_again_after_requeue(models, tmp, env, job["id"])


# ---------------------------------------------------------------- units: settings, the store's claim


def test_job_settings_parse_and_refuse_bad_values(tmp_path):
    from service.config import Settings, SettingsError

    s = Settings.from_env({"GANFORGE_JOBS_DIR": str(tmp_path), "GANFORGE_JOBS_TTL_S": "60",
                           "GANFORGE_JOBS_MAX_QUEUED": "7", "GANFORGE_WEBHOOK_HOSTS": "Hooks.Example, a.example:8443",
                           "GANFORGE_WEBHOOK_SECRET": SECRET})
    assert s.jobs_dir == tmp_path and s.jobs_ttl_s == 60 and s.jobs_max_queued == 7
    assert s.webhook_hosts == ("hooks.example", "a.example:8443") and s.webhook_secret == SECRET
    defaults = Settings.from_env({})
    assert defaults.jobs_ttl_s == 86400 and defaults.webhook_hosts == () and defaults.webhook_secret is None
    for bad in ({"GANFORGE_WEBHOOK_SECRET": "plain"}, {"GANFORGE_WEBHOOK_SECRET": "whsec_!!"},
                {"GANFORGE_WEBHOOK_SECRET": "whsec_c2hvcnQ="}, {"GANFORGE_WEBHOOK_HOSTS": "https://x.example/"},
                {"GANFORGE_JOBS_TTL_S": "0"}, {"GANFORGE_JOBS_MAX_QUEUED": "0"}):
        with pytest.raises(SettingsError, match=next(iter(bad))):
            Settings.from_env(bad)


def _claim_all(path: str, owner: str, ready, go, out) -> None:
    from service.jobs.sqlite import SqliteJobStore

    store, got = SqliteJobStore(Path(path), 60.0), []
    ready.put(owner)
    go.wait(60)
    while (job := store.claim(owner, 60.0, lambda _: False, 3)) is not None:
        got.append(job.id)
        time.sleep(0.002)  # let the other process in
    out.put((owner, got))


def test_two_processes_claim_each_job_once(tmp_path):
    import multiprocessing

    from service.jobs.record import Job
    from service.jobs.sqlite import SqliteJobStore

    db = tmp_path / "jobs.sqlite3"
    store = SqliteJobStore(db, 60.0)
    ids = [store.submit(Job(id=f"j{k:03d}", endpoint="upscale", model="m", created_at=k), 1000)[0].id
           for k in range(60)]
    ctx = multiprocessing.get_context("spawn")
    ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    workers = [ctx.Process(target=_claim_all, args=(str(db), f"w{k}", ready, go, out)) for k in range(2)]
    for w in workers:
        w.start()
    for _ in workers:
        ready.get(timeout=60)
    go.set()
    claimed = dict(out.get(timeout=60) for _ in workers)
    for w in workers:
        w.join(timeout=30)
    assert sorted(claimed["w0"] + claimed["w1"]) == ids  # every job once, by one of the two
    assert claimed["w0"] and claimed["w1"], "no contention: one process took every job"
    assert store.queued() == 0 and all(j.status == "running" for j in store.list(None, 100))
    # a live owner's job stays with it (until its lease expires); a dead owner's is taken over at once
    assert store.claim("w9", 60.0, lambda _: False, 3) is None
    job = store.claim("w9", 60.0, lambda owner: owner == "w0", 3)
    assert job is not None and job.attempts == 2 and job.id == claimed["w0"][0]


def test_job_token_yields_to_sync_requests_reports_progress_and_is_never_late():
    import threading

    from service.admission import SpeedBook
    from service.deadline import RequestCancelled
    from service.jobs.token import JOB_CANCELED, JobToken, SyncPriority
    from test_deadlines import _model

    priority = SyncPriority()
    token = JobToken(priority)
    with priority.sync():  # a sync request is in its handler: the job's next tile waits
        tile = threading.Thread(target=token.check, args=("m", 1, 4))
        tile.start()
        tile.join(0.3)
        assert tile.is_alive()
    tile.join(5)
    assert not tile.is_alive() and (token.done, token.total) == (1, 4) and token.yielded_s >= 0.3
    book, model = SpeedBook(), _model()
    book.record(model, 1.0, 1e5)  # ~10 s per output megapixel: a 4000x4000 x4 input needs hours
    book.admit(model, 4000, 4000, token, lambda: None)  # a job is never refused for time
    token.cancel(JOB_CANCELED)
    with pytest.raises(RequestCancelled):
        token.check("m", 2, 4)
