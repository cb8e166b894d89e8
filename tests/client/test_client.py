"""The `ganforge` client against a fake server that speaks just the job API's contract (issue 23's names).

The fake (Starlette + uvicorn in a thread) answers each Idempotency-Key's first POST 429, then 202 and a
job that runs for `job_s`, its result the input's sha256; a file named bad* makes a failed job, reject* a
400 at submit. The real end-to-end run against `bentoml serve` belongs with the job layer.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from client.__main__ import main
from client.api import Retry

ROOT = Path(__file__).resolve().parents[2]


class FakeJobs:
    def __init__(self, job_s: float = 0.2, throttle: bool = True, retry_after: str = "0",
                 token: str | None = None) -> None:
        self.job_s, self.throttle, self.retry_after, self.token = job_s, throttle, retry_after, token
        self.jobs: dict[str, dict] = {}
        self.by_key: dict[str, str] = {}
        self.posts: list[dict] = []
        self.lock = threading.Lock()

    def app(self) -> Starlette:
        routes = [Route("/{endpoint:str}", self.submit, methods=["POST"]),
                  Route("/jobs/{id}", self.get, methods=["GET"]),
                  Route("/jobs/{id}/result", self.result, methods=["GET"])]
        return Starlette(routes=routes)

    def refuse(self, request: Request) -> JSONResponse | None:
        if self.token and request.headers.get("authorization") != f"Bearer {self.token}":
            return JSONResponse({"error": "a valid bearer token is required", "status": 401}, 401)
        return None

    async def submit(self, request: Request) -> Response:
        if (refused := self.refuse(request)) is not None:
            return refused
        endpoint, key = request.path_params["endpoint"], request.headers.get("idempotency-key")
        if request.headers.get("content-type", "").startswith("application/json"):
            params, field, name, content = await request.json(), None, None, b""
        else:
            form = await request.form()
            field = "video" if "video" in form else "image"
            upload = form[field]
            name, content = upload.filename, await upload.read()
            params = {k: v for k, v in form.items() if k not in ("image", "video")}
        with self.lock:
            first = not any(p["key"] == key for p in self.posts)
            self.posts.append({"endpoint": endpoint, "key": key, "field": field, "name": name, "params": params,
                               "prefer": request.headers.get("prefer"), "content": content})
            if self.throttle and first:
                return JSONResponse({"error": "busy", "status": 429}, 429, {"Retry-After": self.retry_after})
            if key in self.by_key:
                return self.job_response(self.jobs[self.by_key[key]], 202)
            if name and name.startswith("reject"):
                return JSONResponse({"error": "could not decode the image: not a valid PNG", "status": 400}, 400)
            job_id = uuid.uuid4().hex
            body = json.dumps(params, sort_keys=True).encode() if field is None else content
            self.jobs[job_id] = {"id": job_id, "created": time.monotonic(), "endpoint": endpoint,
                                 "fails": bool(name and name.startswith("bad")),
                                 "result": expected(endpoint, body, params.get("format", "png"))}
            self.by_key[key] = job_id
            return self.job_response(self.jobs[job_id], 202)

    def view(self, job: dict) -> dict:
        elapsed, total = time.monotonic() - job["created"], 10
        done = min(total, int(total * elapsed / self.job_s))
        status = "queued" if done == 0 else "running" if done < total else "failed" if job["fails"] else "succeeded"
        error = {"error": "could not decode the image: the data is truncated", "status": 400} \
            if status == "failed" else None
        return {"id": job["id"], "endpoint": job["endpoint"], "status": status, "progress": done / total,
                "done": done, "total": total, "eta_s": None, "error": error,
                "result_url": f"/jobs/{job['id']}/result" if status == "succeeded" else None}

    def job_response(self, job: dict, status: int) -> JSONResponse:
        return JSONResponse(self.view(job), status, {"Location": f"/jobs/{job['id']}"})

    async def get(self, request: Request) -> Response:
        if (refused := self.refuse(request)) is not None:
            return refused
        job = self.jobs.get(request.path_params["id"])
        return self.job_response(job, 200) if job else JSONResponse({"error": "no such job", "status": 404}, 404)

    async def result(self, request: Request) -> Response:
        job = self.jobs.get(request.path_params["id"])
        if job is None:
            return JSONResponse({"error": "no such job", "status": 404}, 404)
        if self.view(job)["status"] != "succeeded":
            return JSONResponse({"error": "the job is not finished", "status": 409}, 409)
        return Response(job["result"], media_type="application/octet-stream")

    def created(self) -> int:
        return len(self.jobs)


def expected(endpoint: str, body: bytes, fmt: str) -> bytes:
    return f"{endpoint}:{fmt}:".encode() + hashlib.sha256(body).hexdigest().encode()


@pytest.fixture
def serve():
    servers = []

    def start(fake: FakeJobs) -> str:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(fake.app(), host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.01)
        servers.append((server, thread))
        return f"http://127.0.0.1:{port}"

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(5)


def make_tree(root: Path, names: list[str]) -> dict[str, bytes]:
    contents = {}
    for i, name in enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        contents[name] = f"file {i} {name}".encode() * 10
        path.write_bytes(contents[name])
    return contents


FAST = ["--poll", "0.05", "--no-progress"]


def test_a_folder_keeps_its_tree_retries_429_and_resumes_without_resending(serve, tmp_path, capsys):
    fake = FakeJobs()
    url = serve(fake)
    contents = make_tree(tmp_path / "photos", ["a.png", "sub/b.jpg", "sub/deep/c.webp", "clip.mp4",
                                               "sub/clip2.mkv", "notes.txt", ".hidden.png", ".git/x.png"])
    argv = ["upscale", str(tmp_path / "photos"), str(tmp_path / "out"), "--url", url, "--model", "srresnet-x4",
            "--concurrency", "3", "--format", "webp", "--video-format", "webm", *FAST]
    assert main(argv) == 0
    outputs = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert outputs == ["a.webp", "clip.webm", "sub/b.webp", "sub/clip2.webm", "sub/deep/c.webp"]
    for name, out, fmt in [("a.png", "a.webp", "webp"), ("clip.mp4", "clip.webm", "webm")]:
        assert (tmp_path / "out" / out).read_bytes() == expected("upscale", contents[name], fmt)
    posts = {p["name"]: p for p in fake.posts}
    assert posts["clip.mp4"]["field"] == "video" and posts["a.png"]["field"] == "image"
    assert posts["a.png"]["params"] == {"model": "srresnet-x4", "format": "webp"}
    assert all(p["prefer"] == "respond-async" for p in fake.posts)
    assert len(fake.posts) == 10 and fake.created() == 5  # each first POST answered 429, then retried
    keys = {p["key"] for p in fake.posts}
    assert len(keys) == 5
    want = hashlib.sha256(contents["a.png"] + b"\0upscale\0" +
                          json.dumps({"format": "webp", "model": "srresnet-x4"}).encode()).hexdigest()
    assert posts["a.png"]["key"] == want
    capsys.readouterr()
    assert main(argv) == 0  # everything there: nothing sent
    assert len(fake.posts) == 10
    assert "0 done, 5 already there, 0 failed" in capsys.readouterr().err


def test_same_stem_different_extensions_do_not_collide(tmp_path):
    from client.files import plan

    make_tree(tmp_path / "in", ["photo.jpg", "photo.png", "sub/photo.PNG"])
    tasks = plan(tmp_path / "in", tmp_path / "out", {}, "png", "mp4")
    assert [str(t.target.relative_to(tmp_path / "out")) for t in tasks] == ["photo.png", "photo.png.png",
                                                                             "sub/photo.png"]


def test_failed_files_are_listed_with_the_servers_message_and_exit_1(serve, tmp_path, capsys):
    url = serve(FakeJobs(throttle=False))
    make_tree(tmp_path / "in", ["good.png", "bad.png", "reject.png"])
    code = main(["translate", str(tmp_path / "in"), str(tmp_path / "out"), "--url", url, *FAST])
    err = capsys.readouterr().err
    assert code == 1
    assert "FAILED bad.png: could not decode the image: the data is truncated (400)" in err
    assert "FAILED reject.png: could not decode the image: not a valid PNG (400)" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.png"]


def test_retry_after_is_honoured(serve, tmp_path):
    url = serve(FakeJobs(retry_after="1"))
    make_tree(tmp_path, ["one.png"])
    started = time.monotonic()
    assert main(["upscale", str(tmp_path / "one.png"), str(tmp_path / "big.png"), "--url", url, *FAST]) == 0
    assert time.monotonic() - started >= 1.0
    assert (tmp_path / "big.png").exists()


def test_backoff_grows_and_respects_retry_after():
    retry = Retry(base_s=0.5, cap_s=8)
    assert 0.25 <= retry.delay(0, None) <= 0.5 and 4 <= retry.delay(5, None) <= 8
    assert retry.delay(0, "3") == 3.0 and retry.delay(0, "Wed, 21 Oct 2015 07:28:00 GMT") <= 0.5


def test_token_from_the_environment(serve, tmp_path, capsys, monkeypatch):
    url = serve(FakeJobs(throttle=False, token="s3cret"))
    make_tree(tmp_path, ["one.png"])
    argv = ["upscale", str(tmp_path / "one.png"), str(tmp_path / "out") + os.sep, "--url", url, *FAST]
    assert main(argv) == 1
    assert "a valid bearer token is required (401)" in capsys.readouterr().err
    monkeypatch.setenv("GANFORGE_TOKEN", "s3cret")
    assert main(argv) == 0
    assert (tmp_path / "out" / "one.png").exists()


def test_generate_writes_one_file_per_seed(serve, tmp_path):
    fake = FakeJobs(throttle=False)
    url = serve(fake)
    argv = ["generate", str(tmp_path / "gen"), "--model", "fashion", "--label", "Bag", "--seed", "5",
            "--count", "3", "--n", "4", "--url", url, *FAST]
    assert main(argv) == 0
    assert sorted(p.name for p in (tmp_path / "gen").iterdir()) == [f"fashion-Bag-seed{s}.png" for s in (5, 6, 7)]
    assert sorted(p["params"]["seed"] for p in fake.posts) == [5, 6, 7]
    assert fake.posts[0]["params"]["n"] == 4


@pytest.mark.slow
def test_killed_then_rerun_completes_and_reuses_the_jobs(serve, tmp_path):
    fake = FakeJobs(job_s=1.2, throttle=False)
    url = serve(fake)
    names = [f"set{i % 2}/img{i}.png" for i in range(6)]
    contents = make_tree(tmp_path / "in", names)
    cmd = [sys.executable, "-m", "client", "upscale", str(tmp_path / "in"), str(tmp_path / "out"), "--url", url,
           "--concurrency", "2", *FAST]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen(cmd, env=env, cwd=ROOT, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(list((tmp_path / "out").rglob("*.png"))) < 2:
        time.sleep(0.02)
    outputs = lambda: len(list((tmp_path / "out").rglob("*.png")))  # noqa: E731
    while time.monotonic() < deadline and fake.created() <= outputs():
        time.sleep(0.02)  # until a job is in flight on the server, not yet downloaded
    first.send_signal(signal.SIGKILL)
    first.wait()
    done_before = {p for p in (tmp_path / "out").rglob("*.png")}
    assert 2 <= len(done_before) < 6
    for path in done_before:  # complete or absent: never half-written under the final name
        name = str(path.relative_to(tmp_path / "out"))
        assert path.read_bytes() == expected("upscale", contents[name], "png")
    posts_before, created_before = len(fake.posts), fake.created()
    second = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    assert f"{6 - len(done_before)} done, {len(done_before)} already there, 0 failed" in second.stderr
    for name in names:
        assert (tmp_path / "out" / name).read_bytes() == expected("upscale", contents[name], "png")
    assert not [p for p in (tmp_path / "out").rglob("*") if p.name.startswith(".")]  # no temp file left
    resent = {p["name"] for p in fake.posts[posts_before:]}
    assert not resent & {p.name for p in done_before}  # finished files were not sent again
    assert fake.created() == 6 and created_before > len(done_before)  # in-flight jobs were picked up again


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_with_130(serve, tmp_path):
    url = serve(FakeJobs(job_s=5.0, throttle=False))
    make_tree(tmp_path / "in", ["a.png", "b.png", "c.png"])
    cmd = [sys.executable, "-m", "client", "upscale", str(tmp_path / "in"), str(tmp_path / "out"), "--url", url,
           *FAST]
    # SIGINT as at a terminal: a test run started in the background (`make test &`) ignores SIGINT, its children
    # inherit that, and Python then installs no KeyboardInterrupt handler
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(1.5)  # submitted and polling
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 130 and "run the same command again to resume" in err
    assert time.monotonic() - started < 3
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*"))


def test_the_console_script_needs_nothing_of_the_server():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["ganforge"] == "client.__main__:main"
    code = ("import sys, client.__main__, client.api, client.run, client.files; "
            "heavy = {'bentoml', 'torch', 'onnxruntime', 'openvino', 'numpy', 'PIL', 'av', 'core', 'service', "
            "'contract', 'starlette'}; print(sorted(heavy & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
