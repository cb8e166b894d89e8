"""Where jobs live: the `JobStore` interface, and errors its callers answer.

Everything the job layer keeps goes through this interface: `SqliteJobStore` (service/jobs/sqlite.py) is
the embedded one, `PostgresJobStore` (service/jobs/postgres.py) the one replicas share. Both make their
transitions through `SqlJobStore` (service/jobs/sqlstore.py), written once.
Each change of a job's status is one transaction that also appends its event (GET /jobs/{id}/events)
and, when the job asked for it, its webhook delivery (an outbox: delivered at least once by any
worker, service/jobs/webhooks.py).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol

from ..errors import ApiError
from .record import RUNNING, TERMINAL, Job, new_id, rfc3339

JSON_COLUMNS = ("params", "inputs", "error", "result")
WEBHOOK_OF = {RUNNING: "start", "progress": "progress", **{s: "completed" for s in TERMINAL}}


class IdempotencyConflict(ApiError):
    def __init__(self) -> None:
        super().__init__(409, "this Idempotency-Key was already used for a different request; use a new key")


class QueueFull(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(429, f"the job queue is full ({limit} jobs waiting, GANFORGE_JOBS_MAX_QUEUED); "
                              "retry later", {"Retry-After": "5"}, outcome="overload")


@dataclass
class Event:
    seq: int
    event: str  # queued, running, progress, succeeded, failed, canceled
    data: str  # the job's public JSON at that moment


@dataclass
class Delivery:
    id: str  # webhook-id: the same for every attempt of one message
    job_id: str
    url: str
    body: str
    attempts: int


def job_from_row(row: Mapping[str, Any]) -> Job:
    """A stored row (JSON columns as text) as a Job."""
    data: dict[str, Any] = dict(row)
    data.pop("seq", None)
    for column in JSON_COLUMNS:
        data[column] = json.loads(data[column]) if data[column] is not None else None
    data["webhook_events"] = tuple(json.loads(data["webhook_events"]))
    return Job(**data)


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def webhook_message(job: Job, event: str, now: float) -> tuple[str, str] | None:
    """(delivery id, body) of the webhook `event` sends for `job`, or None when it asked for none."""
    kind = WEBHOOK_OF.get(event)
    if not job.webhook or kind not in job.webhook_events:
        return None
    return "msg_" + new_id(), compact({"type": f"job.{kind}", "timestamp": rfc3339(now), "data": job.public()})


def finish_values(status: str, ttl_s: float, error: dict | None, result: dict | None, done: int,
                  total: int | None) -> tuple:
    """(status, finished_at, expires_at, error JSON, result JSON, done, total, all done?) of a job that
    ends now: what both stores' `finish` writes."""
    now = time.time()
    if result is not None:  # all of it is done
        total = total or 1
        done = total
    return (status, now, now + ttl_s, json.dumps(error) if error else None, json.dumps(result) if result else None,
            done, total, result is not None)


def interrupted_error(attempts: int) -> dict[str, Any]:
    return {"error": f"the job was interrupted {attempts} times (the server stopped while it ran) "
                     "and is not tried again", "status": 500}


class JobStore(Protocol):
    def submit(self, job: Job, max_queued: int) -> tuple[Job, bool]:
        """Insert a queued job, or return the one with the same idempotency key and fingerprint
        (False: nothing new). Raises IdempotencyConflict or QueueFull."""

    def by_key(self, key: str) -> Job | None: ...

    def get(self, job_id: str) -> Job | None: ...

    def is_gone(self, job_id: str) -> bool:
        """The job existed and expired (410, not 404)."""

    def list(self, status: str | None, limit: int) -> list[Job]: ...

    def queued(self) -> int: ...

    def claim(self, owner: str, lease_s: float, owner_dead: Callable[[str], bool], max_attempts: int) -> Job | None:
        """The oldest queued job, or a running one whose lease expired or whose owner is dead, now
        running under `owner` (in one transaction: each job runs once). A job claimed `max_attempts`
        times already fails instead."""

    def beat(self, job_id: str, owner: str, lease_s: float) -> str | None:
        """Extend `owner`'s lease; the job's status now, or None when `owner` lost it."""

    def progress(self, job_id: str, owner: str, done: int, total: int, progress: float, eta_s: float | None,
                 event: bool, webhook: bool) -> None: ...

    def finish(self, job_id: str, owner: str, status: str, ttl_s: float, error: dict | None = None,
               result: dict | None = None, done: int = 0, total: int | None = None) -> Job | None:
        """running -> a final status, only while `owner` holds it; None when it no longer does."""

    def cancel(self, job_id: str, ttl_s: float) -> tuple[Job | None, bool]:
        """queued/running -> canceled; (the job, whether this call changed it)."""

    def requeue(self, job_id: str, owner: str) -> None:
        """running -> queued (this worker is shutting down)."""

    def events(self, job_id: str, after: int) -> list[Event]: ...

    def expire(self, now: float) -> list[str]:
        """Remove finished jobs past `expires_at`; their ids (their files are the caller's)."""

    def due_deliveries(self, now: float, claim_s: float, limit: int) -> list[Delivery]: ...

    def delivered(self, delivery_id: str) -> None: ...

    def retry_delivery(self, delivery_id: str, next_at: float | None) -> None:
        """Another attempt at `next_at`; None: give up."""

    def listen(self, on_change: Callable[[str, str], None]) -> None:
        """Call `on_change(job_id, event)` from a thread of the store's whenever any replica changed a
        job (PostgreSQL: LISTEN/NOTIFY); a store of one host only may never call it."""

    def close(self) -> None: ...
