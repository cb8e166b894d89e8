"""The job API over HTTP (httpx): submit, wait, download, with retries.

The contract (the server's README, "Jobs"): `POST /upscale|/translate|/generate` with `Prefer: respond-async`
answers 202 and the job (`id`, `status` queued|running|succeeded|failed|canceled, `progress`, `done`,
`total`, `error` {"error", "status"} or null, `result_url`), `Location: /jobs/{id}`; `GET /jobs/{id}` is the
job, `GET /jobs/{id}/result` the result's bytes. A server that answers 200 instead (one without jobs, for
an image) is taken at its word: the body is the result.

429, 503 and 502 (and a connection that fails: a server restarting) are retried with exponential backoff and
jitter, waiting at least what `Retry-After` says; everything else that is not 2xx fails the file with the
server's own message.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import httpx

from .files import MEDIA_TYPES, Task, clear_stale_parts, part_path, publish

RETRY_STATUSES = {429, 502, 503}  # 502: a proxy in front found no replica ready (a restart)
TERMINAL = {"succeeded", "failed", "canceled"}


class JobFailed(Exception):
    """The server refused the file or its job failed; the message is the server's."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text} ({self.status})" if self.status else text


class Stopped(Exception):
    """The run is stopping (Ctrl-C): leave the job on the server, a rerun picks it up."""


class Gone(Exception):
    """The server no longer has the job (404 / 410): submit again."""


@dataclass(frozen=True)
class Retry:
    attempts: int = 10
    base_s: float = 0.5
    cap_s: float = 30.0

    def delay(self, attempt: int, retry_after: str | None) -> float:
        backoff = min(self.cap_s, self.base_s * 2 ** attempt) * random.uniform(0.5, 1.0)
        try:
            return max(backoff, min(float(retry_after), self.cap_s * 4)) if retry_after else backoff
        except ValueError:  # an HTTP date: not worth parsing; the backoff is as good
            return backoff


def error_message(response: httpx.Response) -> JobFailed:
    try:
        body = response.json()
        return JobFailed(str(body.get("error") or body), int(body.get("status") or response.status_code))
    except (ValueError, AttributeError):
        return JobFailed(response.text[:200] or response.reason_phrase, response.status_code)


class JobClient:
    """One server. Thread-safe: one httpx.Client (a connection pool) shared by every job slot."""

    def __init__(self, url: str, token: str | None = None, retry: Retry = Retry(), poll_s: float = 1.0,
                 timeout_s: float = 600.0, stop: threading.Event | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        # a server without jobs answers an image in the POST itself: its read may take minutes
        timeout = httpx.Timeout(timeout_s, connect=10.0)
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)
        self.retry, self.poll_s = retry, poll_s
        self.stop = stop or threading.Event()

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        """One call, retried on 429 / 503 / connection errors; any other answer is returned."""
        for attempt in range(self.retry.attempts):
            self.check_stop()
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if attempt == self.retry.attempts - 1:
                    raise JobFailed(f"could not reach the server: {exc}") from None
                self.sleep(self.retry.delay(attempt, None))
                continue
            if response.status_code not in RETRY_STATUSES or attempt == self.retry.attempts - 1:
                return response
            self.sleep(self.retry.delay(attempt, response.headers.get("Retry-After")))
        raise AssertionError("unreachable")

    def submit(self, task: Task, endpoint: str, key: str) -> httpx.Response:
        headers = {"Prefer": "respond-async", "Idempotency-Key": key}
        if task.source is None:
            return self.request("POST", f"/{endpoint}", json=task.params, headers=headers)
        media = MEDIA_TYPES.get(task.source.suffix.lower(), "application/octet-stream")
        with open(task.source, "rb") as file:  # reopened per attempt: a retry sends the whole file again
            data = {k: str(v) for k, v in task.params.items() if v is not None}
            files = {task.field: (task.source.name, file, media)}
            return self.request("POST", f"/{endpoint}", data=data, files=files, headers=headers)

    def run(self, task: Task, endpoint: str, key: str, on_progress: Callable[[dict], None]) -> None:
        """Submit, wait, download into task.target (atomically). JobFailed / Stopped."""
        clear_stale_parts(task.target)
        for _ in range(2):  # once more when the server lost the job (expired, store wiped)
            response = self.submit(task, endpoint, key)
            if response.status_code == 200:
                self.save(task.target, response.iter_bytes())
                return
            if response.status_code != 202:
                raise error_message(response)
            try:
                job = self.wait(response.json(), on_progress)
                self.download(job, task.target)
                return
            except Gone:
                continue
        raise JobFailed("the server lost the job twice")

    def wait(self, job: dict, on_progress: Callable[[dict], None]) -> dict:
        delay = min(0.2, self.poll_s)
        while True:
            on_progress(job)
            if job.get("status") in TERMINAL:
                break
            self.sleep(delay)
            delay = min(self.poll_s, delay * 1.5)
            job = self.get_job(job["id"])
        if job["status"] == "failed":
            error = job.get("error") or {}
            raise JobFailed(error.get("error", "the job failed"), error.get("status"))
        if job["status"] == "canceled":
            raise JobFailed("the job was canceled on the server")
        return job

    def get_job(self, job_id: str) -> dict:
        response = self.request("GET", f"/jobs/{job_id}")
        if response.status_code in (404, 410):
            raise Gone
        if response.status_code != 200:
            raise error_message(response)
        return response.json()

    def download(self, job: dict, target: Path) -> None:
        url = job.get("result_url") or f"/jobs/{job['id']}/result"
        with self.http.stream("GET", url) as response:
            if response.status_code in (404, 410):
                raise Gone
            if response.status_code != 200:
                response.read()
                raise error_message(response)
            self.save(target, response.iter_bytes())

    def save(self, target: Path, chunks) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        part = part_path(target)
        try:
            with open(part, "wb") as file:
                for chunk in chunks:
                    self.check_stop()
                    file.write(chunk)
            publish(part, target)
        finally:
            part.unlink(missing_ok=True)

    def sleep(self, seconds: float) -> None:
        if self.stop.wait(seconds):
            raise Stopped

    def check_stop(self) -> None:
        if self.stop.is_set():
            raise Stopped

