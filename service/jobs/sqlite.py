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
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from .record import QUEUED, RUNNING, TERMINAL, Job
from .sqlstore import SqlJobStore
from .store import Delivery, job_from_row

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


class SqliteJobStore(SqlJobStore):
    """The transitions are SqlJobStore's (service/jobs/sqlstore.py); here the connection, the claim, the
    heartbeat, expiry and the outbox claim."""

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

    def _read(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return contextlib.nullcontext(self._conn())  # WAL: a read sees the last commit, no transaction needed

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
                return self._take(db, job, owner, now, now + lease_s)
        return None

    def beat(self, job_id: str, owner: str, lease_s: float) -> str | None:
        with self._tx() as db:
            row = db.execute("UPDATE jobs SET lease_until = ? WHERE id = ? AND owner = ? RETURNING status",
                             (time.time() + lease_s, job_id, owner)).fetchone()
        return None if row is None else row["status"]

    def expire(self, now: float) -> list[str]:
        with self._tx() as db:
            ids = [r["id"] for r in db.execute("SELECT id FROM jobs WHERE expires_at < ? AND status IN (?, ?, ?)",
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
