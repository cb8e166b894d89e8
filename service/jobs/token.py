"""A job's `RequestToken`: no deadline, progress reported from every check, cancel, and sync priority.

The pipelines call `token.check(model, done, total)` before every tile or graph run
(service/deadline.py). For a job that check:
1. notes `done` of `total` (the runner's heartbeat writes it to the store, throttled);
2. yields while sync image requests are in this worker's handlers (`SyncPriority`), so a sync
   request waits for about one tile of a job at most; a job waits at most `MAX_YIELD_S` per tile,
   so a stream of sync requests slows a job but cannot stop it;
3. raises `RequestCancelled` once the job was cancelled (or this worker lost it or shuts down).

Its deadline is infinite, so admission (service/admission.py) never refuses a job for time:
`estimate <= ADMIT_SHARE * remaining()` always holds; pixel limits still apply in the handlers.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from typing import Iterator

from ..deadline import RequestToken

JOB_CANCELED = "job_canceled"
LEASE_LOST = "job_lease_lost"  # another worker took the job over (this one looked dead)
SHUTDOWN = "worker_shutdown"  # the job goes back to the queue
MAX_YIELD_S = 5.0


class SyncPriority:
    """How many sync image requests are in their handler in this worker; jobs wait for none."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._running = 0

    @contextlib.contextmanager
    def sync(self) -> Iterator[None]:
        with self._cond:
            self._running += 1
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1
                if not self._running:
                    self._cond.notify_all()

    def wait_idle(self, stop: threading.Event, limit_s: float) -> float:
        """Wait (up to `limit_s`, or until `stop` is set) while sync requests run; the seconds waited."""
        started = time.monotonic()
        with self._cond:
            while self._running and not stop.is_set():
                left = limit_s - (time.monotonic() - started)
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.05))
        return time.monotonic() - started


PRIORITY = SyncPriority()  # one per worker process


class JobToken(RequestToken):
    """One running job: cancel from any thread, progress read by the runner's heartbeat."""

    def __init__(self, priority: SyncPriority = PRIORITY) -> None:
        super().__init__(math.inf)
        self.priority = priority
        self.done = 0
        self.total: int | None = None
        self.first_tile_at: float | None = None  # when the first tile started
        self.done_at = 0.0  # when `done` last moved
        self.yielded_s = 0.0

    def check(self, model: str = "", done: int | None = None, total: int | None = None,
              unit: str = "tiles") -> None:
        if total is not None:
            if (done or 0) != self.done:
                self.done_at = time.monotonic()
            self.done, self.total = done or 0, total
            if self.first_tile_at is None:
                self.first_tile_at = time.monotonic()
        waited = self.priority.wait_idle(self._event, MAX_YIELD_S)
        if waited > 0.001:
            self.yielded_s += waited
            self.model_seconds += waited  # not the pipeline's time: keeps admission's estimate of it right
        super().check(model, done, total, unit)

    def eta_s(self, first_estimate: float | None) -> float | None:
        """Seconds left: from this job's own pace once a tile is done, before that `first_estimate`."""
        if self.total is None or self.first_tile_at is None or not self.done:
            if first_estimate is None or self.first_tile_at is None:
                return first_estimate
            return max(first_estimate - (time.monotonic() - self.first_tile_at - self.yielded_s), 0.0)
        now = time.monotonic()
        per_unit = (self.done_at - self.first_tile_at - self.yielded_s) / self.done
        return max(per_unit * (self.total - self.done) - (now - self.done_at), 0.0)


class PartToken(RequestToken):
    """What the pipeline sees while one frame of a video job, or one image of a batch job, runs: every tile
    check yields and stops as the job's own token does, but the job's progress stays in frames (images),
    not in this part's tiles. Its graph time (`model_seconds`) is this part's, as for a sync request."""

    def __init__(self, job: JobToken) -> None:
        super().__init__(math.inf)
        self.job = job

    def check(self, model: str = "", done: int | None = None, total: int | None = None,
              unit: str = "tiles") -> None:
        self.job.check(model)

    def stop_reason(self) -> str | None:
        return self.job.stop_reason()

    @property
    def cancelled(self) -> bool:
        return self.job.cancelled
