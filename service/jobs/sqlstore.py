"""What the two SQL job stores share: every transition written once, in SQLite's dialect.

service/jobs/sqlite.py (the embedded store) and service/jobs/postgres.py (the one replicas share) keep the
same tables row for row and make the same transitions: submit with idempotency, read, finish, cancel,
requeue, progress, the webhook outbox's bookkeeping. Those are written here once, with `?` placeholders
and SQLite's `max(a, b)`; `sql()` turns a statement into the store's dialect (PostgreSQL: `%s`,
`greatest`). What differs stays in each store: the connection and its transaction (`_tx`, `_read`), the
claim (PostgreSQL: `FOR UPDATE SKIP LOCKED` and the database's clock), the heartbeat, expiry, the outbox
claim, and `_notify` (PostgreSQL tells the other replicas of every event).

Rows are read by column name only (both `sqlite3.Row` and psycopg's `dict_row` give that).
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

from .record import CANCELED, FAILED, QUEUED, RUNNING, Job
from .store import Event, IdempotencyConflict, QueueFull, compact, finish_values, interrupted_error, job_from_row, \
    webhook_message


class SqlJobStore:
    """The shared transitions; a subclass gives `_tx`, `_read`, `sql` (when not SQLite's) and `_notify`."""

    gone_keep_s: float

    def sql(self, statement: str) -> str:
        """`statement` (SQLite's dialect) in this store's."""
        return statement

    def _tx(self) -> contextlib.AbstractContextManager[Any]:
        """A connection or cursor in one write transaction: committed when the block ends, else rolled back."""
        raise NotImplementedError

    def _read(self) -> contextlib.AbstractContextManager[Any]:
        """A connection or cursor to read with."""
        return self._tx()

    def _notify(self, db: Any, job: Job, event: str) -> None:
        """Tell whoever else watches this store of `event` (nothing by default)."""

    def _x(self, db: Any, statement: str, args: tuple = ()) -> Any:
        return db.execute(self.sql(statement), args)

    def _get(self, db: Any, job_id: str) -> Job | None:
        row = self._x(db, "SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else job_from_row(row)

    def _event(self, db: Any, job: Job, event: str, webhook: bool = True) -> None:
        """Append `event` with the job as it is now; queue its webhook when the job asked for it."""
        seq = self._x(db, "UPDATE jobs SET seq = seq + 1 WHERE id = ? RETURNING seq", (job.id,)).fetchone()["seq"]
        now = time.time()
        self._x(db, "INSERT INTO events VALUES (?, ?, ?, ?, ?)", (job.id, seq, event, compact(job.public()), now))
        message = webhook_message(job, event, now) if webhook else None
        if message is not None:
            self._x(db, "INSERT INTO deliveries (id, job_id, url, body, next_at) VALUES (?, ?, ?, ?, ?)",
                    (message[0], job.id, job.webhook, message[1], now))
        self._notify(db, job, event)

    # ---------------------------------------------------------------- submit and read

    def submit(self, job: Job, max_queued: int) -> tuple[Job, bool]:
        with self._tx() as db:
            if job.idempotency_key is not None:
                existing = self._by_key(db, job.idempotency_key)
                if existing is not None:
                    return self._same_request(existing, job)
            waiting = self._x(db, "SELECT count(*) AS n FROM jobs WHERE status = ?", (QUEUED,)).fetchone()["n"]
            if waiting >= max_queued:
                raise QueueFull(max_queued)
            inserted = self._x(
                db, "INSERT INTO jobs (id, kind, endpoint, model, params, inputs, status, unit, created_at, "
                "idempotency_key, fingerprint, webhook, webhook_events) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
                (job.id, job.kind, job.endpoint, job.model, json.dumps(job.params), json.dumps(job.inputs),
                 QUEUED, job.unit, job.created_at, job.idempotency_key, job.fingerprint, job.webhook,
                 json.dumps(list(job.webhook_events)))).fetchone()
            if inserted is None:  # another replica stored the same key meanwhile
                return self._same_request(self._by_key(db, job.idempotency_key), job)
            self._event(db, job, QUEUED)
        return job, True

    @staticmethod
    def _same_request(existing: Job, job: Job) -> tuple[Job, bool]:
        if existing.fingerprint != job.fingerprint:
            raise IdempotencyConflict()
        return existing, False

    def _by_key(self, db: Any, key: str) -> Job | None:
        row = self._x(db, "SELECT * FROM jobs WHERE idempotency_key = ?", (key,)).fetchone()
        return None if row is None else job_from_row(row)

    def by_key(self, key: str) -> Job | None:
        with self._read() as db:
            return self._by_key(db, key)

    def get(self, job_id: str) -> Job | None:
        with self._read() as db:
            return self._get(db, job_id)

    def is_gone(self, job_id: str) -> bool:
        with self._read() as db:
            return self._x(db, "SELECT 1 FROM gone WHERE id = ?", (job_id,)).fetchone() is not None

    def list(self, status: str | None, limit: int) -> list[Job]:
        where, args = ("WHERE status = ?", (status,)) if status else ("", ())
        with self._read() as db:
            rows = self._x(db, f"SELECT * FROM jobs {where} ORDER BY created_at DESC, id LIMIT ?",
                           (*args, limit)).fetchall()
        return [job_from_row(r) for r in rows]

    def queued(self) -> int:
        with self._read() as db:
            return self._x(db, "SELECT count(*) AS n FROM jobs WHERE status = ?", (QUEUED,)).fetchone()["n"]

    def events(self, job_id: str, after: int) -> list[Event]:
        with self._read() as db:
            rows = self._x(db, "SELECT seq, event, data FROM events WHERE job_id = ? AND seq > ? ORDER BY seq",
                           (job_id, after)).fetchall()
        return [Event(r["seq"], r["event"], r["data"]) for r in rows]

    # ---------------------------------------------------------------- running

    def _fail_interrupted(self, db: Any, job: Job, now: float) -> None:
        job.status, job.finished_at, job.error = FAILED, now, interrupted_error(job.attempts)
        self._x(db, "UPDATE jobs SET status = ?, finished_at = ?, error = ?, owner = NULL WHERE id = ?",
                (FAILED, now, json.dumps(job.error), job.id))
        self._event(db, job, FAILED)

    def _take(self, db: Any, job: Job, owner: str, now: float, lease_until: float) -> Job:
        """Claim `job` (read in this transaction) for `owner` until `lease_until`."""
        job.status, job.owner, job.lease_until = RUNNING, owner, lease_until
        job.attempts += 1
        job.started_at = now
        self._x(db, "UPDATE jobs SET status = ?, owner = ?, lease_until = ?, attempts = ?, started_at = ? WHERE id = ?",
                (RUNNING, owner, job.lease_until, job.attempts, job.started_at, job.id))
        self._event(db, job, RUNNING, webhook=job.attempts == 1)
        return job

    def progress(self, job_id: str, owner: str, done: int, total: int, progress: float, eta_s: float | None,
                 event: bool, webhook: bool) -> None:
        with self._tx() as db:
            changed = self._x(db, "UPDATE jobs SET done = max(done, ?), total = ?, progress = max(progress, ?), "
                                  "eta_s = ? WHERE id = ? AND owner = ? AND status = ?",
                              (done, total, progress, eta_s, job_id, owner, RUNNING)).rowcount
            if event and changed:
                self._event(db, self._get(db, job_id), "progress", webhook=webhook)

    def finish(self, job_id: str, owner: str, status: str, ttl_s: float, error: dict | None = None,
               result: dict | None = None, done: int = 0, total: int | None = None) -> Job | None:
        values = finish_values(status, ttl_s, error, result, done, total)
        with self._tx() as db:
            changed = self._x(
                db, "UPDATE jobs SET status = ?, finished_at = ?, expires_at = ?, error = ?, result = ?, owner = NULL, "
                "eta_s = NULL, done = max(done, ?), total = coalesce(?, total), "
                "progress = CASE WHEN ? THEN 1.0 ELSE progress END WHERE id = ? AND owner = ? AND status = ?",
                (*values, job_id, owner, RUNNING)).rowcount
            if not changed:
                return None
            job = self._get(db, job_id)
            self._event(db, job, status)
        return job

    def cancel(self, job_id: str, ttl_s: float) -> tuple[Job | None, bool]:
        now = time.time()
        with self._tx() as db:
            changed = self._x(db, "UPDATE jobs SET status = ?, finished_at = ?, expires_at = ?, eta_s = NULL "
                                  "WHERE id = ? AND status IN (?, ?)",
                              (CANCELED, now, now + ttl_s, job_id, QUEUED, RUNNING)).rowcount
            job = self._get(db, job_id)
            if changed:
                self._event(db, job, CANCELED)
        return job, bool(changed)

    def requeue(self, job_id: str, owner: str) -> None:
        with self._tx() as db:
            changed = self._x(db, "UPDATE jobs SET status = ?, owner = NULL, lease_until = NULL, eta_s = NULL, "
                                  "attempts = max(attempts - 1, 0) WHERE id = ? AND owner = ? AND status = ?",
                              (QUEUED, job_id, owner, RUNNING)).rowcount
            if changed:
                self._event(db, self._get(db, job_id), QUEUED, webhook=False)

    # ---------------------------------------------------------------- webhook outbox

    def delivered(self, delivery_id: str) -> None:
        with self._tx() as db:
            self._x(db, "UPDATE deliveries SET state = 'delivered', attempts = attempts + 1 WHERE id = ?",
                    (delivery_id,))

    def retry_delivery(self, delivery_id: str, next_at: float | None) -> None:
        with self._tx() as db:
            if next_at is None:
                self._x(db, "UPDATE deliveries SET state = 'failed', attempts = attempts + 1 WHERE id = ?",
                        (delivery_id,))
            else:
                self._x(db, "UPDATE deliveries SET attempts = attempts + 1, next_at = ?, claimed_until = 0 "
                            "WHERE id = ?", (next_at, delivery_id))
