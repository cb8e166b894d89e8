"""The embedded job store: one SQLite file in GANFORGE_JOBS_DIR, WAL mode, shared by every worker.

One connection per thread (sqlite3 connections are not shared across threads); a write is a
`BEGIN IMMEDIATE` transaction, so two workers claiming at once serialise on SQLite's write lock and
each job is claimed once. WAL with `synchronous=NORMAL`: a committed change survives a SIGKILL of
every process; a power loss may roll back the last commits (a finished job then runs again; its
result file was fsynced before the commit that names it). The folder must be on a local file system
(WAL needs shared memory between the processes).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from .record import CANCELED, FAILED, QUEUED, RUNNING, TERMINAL, Job
from .store import (
    Delivery,
    Event,
    IdempotencyConflict,
    QueueFull,
    compact,
    finish_values,
    interrupted_error,
    job_from_row,
    webhook_message,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, endpoint TEXT NOT NULL, model TEXT,
    params TEXT NOT NULL, inputs TEXT NOT NULL, status TEXT NOT NULL,
    progress REAL NOT NULL DEFAULT 0, done INTEGER NOT NULL DEFAULT 0, total INTEGER, unit TEXT NOT NULL,
    eta_s REAL, created_at REAL NOT NULL, started_at REAL, finished_at REAL, expires_at REAL,
    error TEXT, result TEXT, idempotency_key TEXT UNIQUE, fingerprint TEXT,
    webhook TEXT, webhook_events TEXT NOT NULL DEFAULT '[]',
    owner TEXT, lease_until REAL, attempts INTEGER NOT NULL DEFAULT 0, seq INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, created_at);
CREATE INDEX IF NOT EXISTS jobs_by_expiry ON jobs (expires_at);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL, seq INTEGER NOT NULL, event TEXT NOT NULL, data TEXT NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (job_id, seq)
);
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY, job_id TEXT NOT NULL, url TEXT NOT NULL, body TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL, claimed_until REAL NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'pending'
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, next_at);
CREATE TABLE IF NOT EXISTS gone (id TEXT PRIMARY KEY, at REAL NOT NULL);
"""
class SqliteJobStore:
    def __init__(self, path: Path, gone_keep_s: float) -> None:
        self.path = path
        self.gone_keep_s = gone_keep_s  # how long an expired id answers 410 rather than 404
        self._local = threading.local()
        conn = self._conn()
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _get(self, db: sqlite3.Connection, job_id: str) -> Job | None:
        row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else job_from_row(row)

    def _event(self, db: sqlite3.Connection, job: Job, event: str, webhook: bool = True) -> None:
        """Append `event` with the job as it is now; queue its webhook when the job asked for it."""
        seq = db.execute("UPDATE jobs SET seq = seq + 1 WHERE id = ? RETURNING seq", (job.id,)).fetchone()[0]
        now = time.time()
        db.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?)", (job.id, seq, event, compact(job.public()), now))
        message = webhook_message(job, event, now) if webhook else None
        if message is not None:
            db.execute("INSERT INTO deliveries (id, job_id, url, body, next_at) VALUES (?, ?, ?, ?, ?)",
                       (message[0], job.id, job.webhook, message[1], now))

    # ---------------------------------------------------------------- submit and read

    def submit(self, job: Job, max_queued: int) -> tuple[Job, bool]:
        with self._tx() as db:
            if job.idempotency_key is not None:
                row = db.execute("SELECT * FROM jobs WHERE idempotency_key = ?", (job.idempotency_key,)).fetchone()
                if row is not None:
                    existing = job_from_row(row)
                    if existing.fingerprint != job.fingerprint:
                        raise IdempotencyConflict()
                    return existing, False
            waiting = db.execute("SELECT count(*) FROM jobs WHERE status = ?", (QUEUED,)).fetchone()[0]
            if waiting >= max_queued:
                raise QueueFull(max_queued)
            db.execute(
                "INSERT INTO jobs (id, kind, endpoint, model, params, inputs, status, unit, created_at, "
                "idempotency_key, fingerprint, webhook, webhook_events) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (job.id, job.kind, job.endpoint, job.model, json.dumps(job.params), json.dumps(job.inputs),
                 QUEUED, job.unit, job.created_at, job.idempotency_key, job.fingerprint, job.webhook,
                 json.dumps(list(job.webhook_events))))
            self._event(db, job, QUEUED)
        return job, True

    def by_key(self, key: str) -> Job | None:
        row = self._conn().execute("SELECT * FROM jobs WHERE idempotency_key = ?", (key,)).fetchone()
        return None if row is None else job_from_row(row)

    def get(self, job_id: str) -> Job | None:
        return self._get(self._conn(), job_id)

    def is_gone(self, job_id: str) -> bool:
        return self._conn().execute("SELECT 1 FROM gone WHERE id = ?", (job_id,)).fetchone() is not None

    def list(self, status: str | None, limit: int) -> list[Job]:
        where, args = ("WHERE status = ?", (status,)) if status else ("", ())
        rows = self._conn().execute(f"SELECT * FROM jobs {where} ORDER BY created_at DESC, id LIMIT ?",
                                    (*args, limit)).fetchall()
        return [job_from_row(r) for r in rows]

    def queued(self) -> int:
        return self._conn().execute("SELECT count(*) FROM jobs WHERE status = ?", (QUEUED,)).fetchone()[0]

    def events(self, job_id: str, after: int) -> list[Event]:
        rows = self._conn().execute("SELECT seq, event, data FROM events WHERE job_id = ? AND seq > ? ORDER BY seq",
                                    (job_id, after)).fetchall()
        return [Event(r["seq"], r["event"], r["data"]) for r in rows]

    # ---------------------------------------------------------------- running

    def claim(self, owner: str, lease_s: float, owner_dead: Callable[[str], bool], max_attempts: int) -> Job | None:
        now = time.time()
        with self._tx() as db:
            rows = db.execute("SELECT * FROM jobs WHERE status = ? OR status = ? ORDER BY created_at LIMIT 64",
                              (QUEUED, RUNNING)).fetchall()
            for row in rows:
                job = job_from_row(row)
                if job.status == RUNNING and not ((job.lease_until or 0) < now or owner_dead(job.owner or "")):
                    continue  # another worker runs it
                if job.attempts >= max_attempts:
                    self._fail_interrupted(db, job, now)
                    continue
                job.status, job.owner, job.lease_until = RUNNING, owner, now + lease_s
                job.attempts += 1
                job.started_at = now
                db.execute("UPDATE jobs SET status = ?, owner = ?, lease_until = ?, attempts = ?, started_at = ? "
                           "WHERE id = ?", (RUNNING, owner, job.lease_until, job.attempts, now, job.id))
                self._event(db, job, RUNNING, webhook=job.attempts == 1)
                return job
        return None

    def _fail_interrupted(self, db: sqlite3.Connection, job: Job, now: float) -> None:
        job.status, job.finished_at = FAILED, now
        job.error = interrupted_error(job.attempts)
        db.execute("UPDATE jobs SET status = ?, finished_at = ?, error = ?, owner = NULL WHERE id = ?",
                   (FAILED, now, json.dumps(job.error), job.id))
        self._event(db, job, FAILED)

    def beat(self, job_id: str, owner: str, lease_s: float) -> str | None:
        with self._tx() as db:
            row = db.execute("UPDATE jobs SET lease_until = ? WHERE id = ? AND owner = ? RETURNING status",
                             (time.time() + lease_s, job_id, owner)).fetchone()
        return None if row is None else row[0]

    def progress(self, job_id: str, owner: str, done: int, total: int, progress: float, eta_s: float | None,
                 event: bool, webhook: bool) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET done = max(done, ?), total = ?, progress = max(progress, ?), eta_s = ? "
                       "WHERE id = ? AND owner = ? AND status = ?", (done, total, progress, eta_s, job_id, owner,
                                                                     RUNNING))
            if event:
                job = self._get(db, job_id)
                if job is not None and job.status == RUNNING and job.owner == owner:
                    self._event(db, job, "progress", webhook=webhook)

    def finish(self, job_id: str, owner: str, status: str, ttl_s: float, error: dict | None = None,
               result: dict | None = None, done: int = 0, total: int | None = None) -> Job | None:
        values = finish_values(status, ttl_s, error, result, done, total)
        with self._tx() as db:
            changed = db.execute(
                "UPDATE jobs SET status = ?, finished_at = ?, expires_at = ?, error = ?, result = ?, owner = NULL, "
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
            changed = db.execute("UPDATE jobs SET status = ?, finished_at = ?, expires_at = ?, eta_s = NULL "
                                 "WHERE id = ? AND status IN (?, ?)",
                                 (CANCELED, now, now + ttl_s, job_id, QUEUED, RUNNING)).rowcount
            job = self._get(db, job_id)
            if changed:
                self._event(db, job, CANCELED)
        return job, bool(changed)

    def requeue(self, job_id: str, owner: str) -> None:
        with self._tx() as db:
            changed = db.execute("UPDATE jobs SET status = ?, owner = NULL, lease_until = NULL, eta_s = NULL, "
                                 "attempts = max(attempts - 1, 0) WHERE id = ? AND owner = ? AND status = ?",
                                 (QUEUED, job_id, owner, RUNNING)).rowcount
            if changed:
                self._event(db, self._get(db, job_id), QUEUED, webhook=False)

    def expire(self, now: float) -> list[str]:
        with self._tx() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM jobs WHERE expires_at < ? AND status IN (?, ?, ?)",
                                            (now, *sorted(TERMINAL))).fetchall()]
            for job_id in ids:
                db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
                db.execute("DELETE FROM events WHERE job_id = ?", (job_id,))
                db.execute("DELETE FROM deliveries WHERE job_id = ? AND state != 'pending'", (job_id,))
                db.execute("INSERT OR REPLACE INTO gone VALUES (?, ?)", (job_id, now))
            db.execute("DELETE FROM gone WHERE at < ?", (now - self.gone_keep_s,))
            db.execute("DELETE FROM deliveries WHERE state != 'pending' AND job_id NOT IN (SELECT id FROM jobs)")
        return ids

    def listen(self, on_change: Callable[[str, str], None]) -> None:
        """Nothing: one host's workers see each other's changes by reading the file (signals.py)."""

    def close(self) -> None:
        """Nothing: each thread's connection closes with it."""

    # ---------------------------------------------------------------- webhook outbox

    def due_deliveries(self, now: float, claim_s: float, limit: int) -> list[Delivery]:
        with self._tx() as db:
            rows = db.execute("UPDATE deliveries SET claimed_until = ? WHERE id IN (SELECT id FROM deliveries "
                              "WHERE state = 'pending' AND next_at <= ? AND claimed_until <= ? ORDER BY next_at "
                              "LIMIT ?) RETURNING id, job_id, url, body, attempts",
                              (now + claim_s, now, now, limit)).fetchall()
        return [Delivery(*r) for r in rows]

    def delivered(self, delivery_id: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE deliveries SET state = 'delivered', attempts = attempts + 1 WHERE id = ?",
                       (delivery_id,))

    def retry_delivery(self, delivery_id: str, next_at: float | None) -> None:
        with self._tx() as db:
            if next_at is None:
                db.execute("UPDATE deliveries SET state = 'failed', attempts = attempts + 1 WHERE id = ?",
                           (delivery_id,))
            else:
                db.execute("UPDATE deliveries SET attempts = attempts + 1, next_at = ?, claimed_until = 0 "
                           "WHERE id = ?", (next_at, delivery_id))
