"""One job as stored and as shown: the `Job` record, its public JSON, and the status names.

A job is an endpoint + its parameters (JSON) + its stored input files + a kind (`image`, `video`, `batch`)
whose runner function turns them into one result file. Nothing here is pickled:
parameters, errors and the result's media type and headers are JSON in the store.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass, field
from typing import Any

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED = "queued", "running", "succeeded", "failed", "canceled"
STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELED})
WEBHOOK_EVENTS = ("start", "progress", "completed")


def new_id() -> str:
    """Unguessable: 144 random bits, URL-safe."""
    return secrets.token_urlsafe(18)


def rfc3339(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


@dataclass
class Job:
    id: str
    endpoint: str
    model: str | None
    kind: str = "image"
    params: dict[str, Any] = field(default_factory=dict)  # the request's fields, JSON values
    inputs: dict[str, str] = field(default_factory=dict)  # field name -> file name under inputs/<id>/
    status: str = QUEUED
    progress: float = 0.0
    done: int = 0
    total: int | None = None
    unit: str = "tiles"
    eta_s: float | None = None
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None
    error: dict[str, Any] | None = None  # the sync API's {"error", "status"}
    result: dict[str, Any] | None = None  # {"media_type", "headers", "bytes"} (+ "media": video / batch)
    idempotency_key: str | None = None
    fingerprint: str | None = None
    webhook: str | None = None
    webhook_events: tuple[str, ...] = ()
    owner: str | None = None
    lease_until: float | None = None
    attempts: int = 0

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    def public(self) -> dict[str, Any]:
        """The job as the API shows it (GET /jobs/{id}, the 202, events, webhooks)."""
        return {
            "id": self.id,
            "endpoint": self.endpoint,
            "model": self.model,
            "status": self.status,
            "progress": round(self.progress, 4),
            "done": self.done,
            "total": self.total,
            "unit": self.unit,
            "eta_s": None if self.eta_s is None else round(self.eta_s, 1),
            "created_at": rfc3339(self.created_at),
            "started_at": rfc3339(self.started_at),
            "finished_at": rfc3339(self.finished_at),
            "error": self.error,
            "result_url": f"/jobs/{self.id}/result" if self.status == SUCCEEDED else None,
            "expires_at": rfc3339(self.expires_at),
            "media": (self.result or {}).get("media"),  # video: frames, size, audio copied / re-encoded; batch: counts
        }
