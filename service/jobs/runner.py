"""Each worker's job runner: claim a job, run its kind's function under a `JobToken`, keep the result.

One runner thread per worker runs one job at a time; a heartbeat thread, every `BEAT_S`:
- extends the lease of the job it runs, and reads its status: a job cancelled through any worker
  (or taken over by another) is stopped at its next tile;
- writes its progress (a `progress` event at most every `PROGRESS_EVERY_S` and at least every
  `PROGRESS_AT_LEAST_S`, a progress webhook at most every `WEBHOOK_PROGRESS_EVERY_S`);
- removes expired jobs and their files every `sweep_s`, and sets the queue-depth gauge.

A job whose owner died (SIGKILL, a crash) is claimed again: at once when the owner was a process of
this host that no longer exists (its pid and start time, from /proc), else once its lease expires.

Kinds: `image` runs the same handler function as the sync API (service/handlers.py) on the stored
upload, so a job's result is byte for byte the sync answer; `video` and `batch` (service/jobs/media.py)
run a video's frames or a zip's images through the same pipeline and write their result file themselves.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from .. import deadline, handlers
from ..admission import BOOK
from ..config import Settings
from ..deadline import RequestCancelled
from ..errors import ApiError
from ..forms import api_kwargs
from ..instance import process_start
from ..registry import ModelRegistry
from .files import JobFiles, StorageFull
from .media import FileResult, run_batch, run_video
from .metrics import JobTelemetry
from .record import CANCELED, FAILED, SUCCEEDED, Job
from .signals import JobSignals
from .store import JobStore
from .token import JOB_CANCELED, LEASE_LOST, SHUTDOWN, JobToken

logger = logging.getLogger("bentoml.ganforge")

LEASE_S = 10.0  # a job whose owner stopped beating for this long is taken over
BEAT_S = 0.25
POLL_S = 0.5  # how often an idle runner looks for work (another worker's submission, a dead owner's job)
PROGRESS_EVERY_S = 0.5
PROGRESS_AT_LEAST_S = 1.5
WEBHOOK_PROGRESS_EVERY_S = 2.0
MAX_ATTEMPTS = 3  # a job that takes its worker down this many times fails
HANDLERS = {"generate": handlers.generate, "translate": handlers.translate, "upscale": handlers.upscale}


@dataclass
class JobContext:
    job: Job
    files: JobFiles
    registry: ModelRegistry
    settings: Settings
    specs: dict[str, Any]  # endpoint -> the API's pydantic input model (BentoML's input_spec)
    first_estimate_s: float | None = None


def run_image(ctx: JobContext) -> handlers.ImageResult:
    """The sync API's handler on the stored fields and upload, validated as BentoML validates them."""
    job = ctx.job
    paths = {name: ctx.files.input_path(job.id, file) for name, file in job.inputs.items()}
    ctx.first_estimate_s = first_estimate(ctx, paths.get("image"))
    spec = ctx.specs[job.endpoint]
    kwargs = api_kwargs(spec, job.params, paths)
    return HANDLERS[job.endpoint](ctx.registry, ctx.settings, **kwargs)


def first_estimate(ctx: JobContext, image_path) -> float | None:
    """Seconds the job should take, from the model's measured speed (admission's estimate); None when
    the model has no measured speed yet or is not an image model."""
    served = ctx.registry.models.get(ctx.job.model or "")
    if image_path is None or served is None or served.image_spec is None:
        return None
    rate = BOOK.rate(served)
    if rate is None:
        return None
    try:
        from PIL import Image

        with Image.open(image_path) as img:
            width, height = img.size
    except Exception:  # noqa: BLE001 - the handler reports a bad image properly
        return None
    return BOOK.estimate(served, rate, height, width)


KINDS: dict[str, Callable[[JobContext], handlers.ImageResult | FileResult]] = {
    "image": run_image, "video": run_video, "batch": run_batch}


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{process_start(os.getpid()) or '?'}"


def owner_dead(owner: str) -> bool:
    """The owner was a process on this host that is gone (a reused pid has another start time)."""
    host, _, rest = owner.partition(":")
    pid, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit() or started == "?" or not os.path.isdir("/proc/self"):
        return False
    return process_start(int(pid)) != started


@dataclass
class Active:
    job: Job
    token: JobToken
    ctx: JobContext
    written: tuple[int, int | None] = (0, None)
    event_at: float = 0.0
    webhook_at: float = 0.0


class Runner:
    def __init__(self, store: JobStore, files: JobFiles, registry: ModelRegistry, settings: Settings,
                 specs: dict[str, Any], telemetry: JobTelemetry, signals: JobSignals) -> None:
        self.store, self.files, self.registry, self.settings = store, files, registry, settings
        self.specs, self.telemetry, self.signals = specs, telemetry, signals
        self.owner = owner_id()
        self.sweep_s = min(30.0, max(0.5, settings.jobs_ttl_s / 4))
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._active: Active | None = None
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for target, name in ((self._loop, "ganforge-jobs"), (self._beat_loop, "ganforge-jobs-beat")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def wake(self) -> None:
        self._wake.set()

    def cancel_local(self, job_id: str) -> None:
        """Stop `job_id` at its next tile if this worker runs it (the store already says canceled)."""
        with self._lock:
            if self._active is not None and self._active.job.id == job_id:
                self._active.token.cancel(JOB_CANCELED)

    def stop(self) -> None:
        """Shutdown: the running job stops at its next tile and goes back to the queue."""
        self._stop.set()
        self._wake.set()
        with self._lock:
            if self._active is not None:
                self._active.token.cancel(SHUTDOWN)
        for thread in self._threads:
            thread.join(timeout=5)

    # ---------------------------------------------------------------- the runner thread

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                job = self.store.claim(self.owner, LEASE_S, owner_dead, MAX_ATTEMPTS)
            except Exception:  # noqa: BLE001 - a locked or broken store must not end the runner
                logger.exception("jobs: claiming failed")
                job = None
            if job is None:
                self._wake.wait(POLL_S)
                self._wake.clear()
                continue
            try:
                self._run(job)
            except Exception:  # noqa: BLE001
                logger.exception("jobs: job %s could not be finished", job.id)

    def _run(self, job: Job) -> None:
        self.signals.changed(job.id)
        logger.info("job %s (%s %s) running, attempt %d", job.id, job.endpoint, job.model, job.attempts)
        self.telemetry.started(job, time.time() - job.created_at)
        token = JobToken()
        ctx = JobContext(job, self.files, self.registry, self.settings, self.specs)
        with self._lock:
            self._active = Active(job, token, ctx)
        try:
            with deadline.bound(token):
                outcome = self._execute(ctx, token)
        finally:
            with self._lock:
                self._active = None
        if outcome is not None:
            self._finish(job, *outcome, done=token.done, total=token.total)

    def _execute(self, ctx: JobContext, token: JobToken) -> tuple[str, dict | None, dict | None] | None:
        """(status, error, result) to record, or None when there is nothing to record."""
        job = ctx.job
        try:
            result = KINDS[job.kind](ctx)
            token.check(job.model or "")  # cancelled while it encoded: keep nothing
            stored = self.keep(job, result)
        except RequestCancelled:
            if token.reason == SHUTDOWN:
                self.store.requeue(job.id, self.owner)
                self.signals.changed(job.id)
                logger.info("job %s goes back to the queue (shutdown)", job.id)
            elif token.reason == JOB_CANCELED:  # keep nothing; LEASE_LOST: the new owner needs the inputs
                self.files.drop(job.id)
                logger.info("job %s stopped (%s) after %s of %s tiles", job.id, token.reason, token.done, token.total)
            return None
        except StorageFull as exc:
            logger.error("job %s failed: %s", job.id, exc.message)
            return FAILED, {"error": exc.message, "status": exc.status}, None
        except ApiError as exc:
            return FAILED, {"error": exc.message, "status": exc.status}, None
        except Exception:  # noqa: BLE001 - the job fails, the runner goes on
            logger.exception("job %s failed", job.id)
            return FAILED, {"error": "the job failed on the server; see the server log", "status": 500}, None
        return SUCCEEDED, None, stored

    def keep(self, job: Job, result: handlers.ImageResult | FileResult) -> dict:
        """The result in its file (a FileResult is there already); what the store keeps of it."""
        if isinstance(result, FileResult):
            stored = {"media_type": result.media_type, "headers": result.headers, "bytes": result.size}
            return {**stored, "media": result.media} if result.media is not None else stored
        self.files.save_result(job.id, result.body)
        return {"media_type": result.media_type, "headers": result.headers, "bytes": len(result.body)}

    def _finish(self, job: Job, status: str, error: dict | None, result: dict | None, done: int,
                total: int | None) -> None:
        ended = self.store.finish(job.id, self.owner, status, self.settings.jobs_ttl_s, error, result, done, total)
        self.signals.changed(job.id)
        if ended is None:  # cancelled, or taken over by another worker, while it finished
            now = self.store.get(job.id)
            if status == SUCCEEDED and (now is None or now.status == CANCELED):  # keep nothing
                self.files.result_path(job.id).unlink(missing_ok=True)
            return
        self.files.drop_inputs(job.id)
        self.telemetry.ended(ended, (ended.finished_at or 0) - (ended.started_at or 0))
        logger.info("job %s %s", job.id, status)

    # ---------------------------------------------------------------- the heartbeat thread

    def _beat_loop(self) -> None:
        swept = 0.0
        while not self._stop.wait(BEAT_S):
            try:
                self._beat()
                if time.monotonic() - swept >= self.sweep_s:
                    swept = time.monotonic()
                    self.sweep()
            except Exception:  # noqa: BLE001 - the next beat tries again
                logger.exception("jobs: heartbeat failed")

    def _beat(self) -> None:
        with self._lock:
            active = self._active
        if active is None:
            return
        job, token = active.job, active.token
        status = self.store.beat(job.id, self.owner, LEASE_S)
        if status is None:
            token.cancel(LEASE_LOST)
            return
        if status == CANCELED:
            token.cancel(JOB_CANCELED)
            return
        now = time.monotonic()
        state = (token.done, token.total)
        since = now - active.event_at
        # a progress event when a tile finished (at most every PROGRESS_EVERY_S), and at least every
        # PROGRESS_AT_LEAST_S even when one tile takes longer (its ETA moves on)
        if token.total and (state != active.written and since >= PROGRESS_EVERY_S or since >= PROGRESS_AT_LEAST_S):
            webhook = now - active.webhook_at >= WEBHOOK_PROGRESS_EVERY_S
            self.store.progress(job.id, self.owner, token.done, token.total, token.done / token.total,
                                token.eta_s(active.ctx.first_estimate_s), event=True, webhook=webhook)
            active.written, active.event_at = state, now
            self.signals.changed(job.id)
            if webhook:
                active.webhook_at = now

    def sweep(self) -> None:
        for job_id in self.store.expire(time.time()):
            self.files.drop(job_id)
        self.telemetry.queue_depth(self.store.queued())
