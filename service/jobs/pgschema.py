"""The PostgreSQL job store's schema, its migrations, and the LISTEN loop (service/jobs/postgres.py).

`migrate` runs at every start, in one transaction that first takes a transaction-scoped advisory lock:
replicas that start together queue on the lock, and each one after the first finds the schema at the
latest version and does nothing. A new version is one more entry of `MIGRATIONS` (never edit a shipped
one); `ganforge_schema` records which have run.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

logger = logging.getLogger("bentoml.ganforge")

CHANNEL = "ganforge_jobs"  # NOTIFY payload: '<job id> <event>'
LOCK_KEY = 0x67616E666F726765  # pg_advisory_xact_lock's key: "ganforge" in ASCII
RECONNECT_S = 1.0

SCHEMA_1 = """
CREATE TABLE jobs (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, endpoint TEXT NOT NULL, model TEXT,
    params TEXT NOT NULL, inputs TEXT NOT NULL, status TEXT NOT NULL,
    progress DOUBLE PRECISION NOT NULL DEFAULT 0, done INTEGER NOT NULL DEFAULT 0, total INTEGER,
    unit TEXT NOT NULL, eta_s DOUBLE PRECISION, created_at DOUBLE PRECISION NOT NULL,
    started_at DOUBLE PRECISION, finished_at DOUBLE PRECISION, expires_at DOUBLE PRECISION,
    error TEXT, result TEXT, idempotency_key TEXT UNIQUE, fingerprint TEXT,
    webhook TEXT, webhook_events TEXT NOT NULL DEFAULT '[]',
    owner TEXT, lease_until DOUBLE PRECISION, attempts INTEGER NOT NULL DEFAULT 0, seq INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX jobs_by_status ON jobs (status, created_at);
CREATE INDEX jobs_by_expiry ON jobs (expires_at);
CREATE TABLE events (
    job_id TEXT NOT NULL, seq INTEGER NOT NULL, event TEXT NOT NULL, data TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL, PRIMARY KEY (job_id, seq)
);
CREATE TABLE deliveries (
    id TEXT PRIMARY KEY, job_id TEXT NOT NULL, url TEXT NOT NULL, body TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, next_at DOUBLE PRECISION NOT NULL,
    claimed_until DOUBLE PRECISION NOT NULL DEFAULT 0, state TEXT NOT NULL DEFAULT 'pending'
);
CREATE INDEX deliveries_due ON deliveries (state, next_at);
CREATE TABLE gone (id TEXT PRIMARY KEY, at DOUBLE PRECISION NOT NULL);
"""
MIGRATIONS = (SCHEMA_1,)  # version N is MIGRATIONS[N - 1]


def migrate(conn: Any) -> int:
    """Bring the schema to the latest version (see the module docstring); that version."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        conn.execute("CREATE TABLE IF NOT EXISTS ganforge_schema (version INTEGER PRIMARY KEY, "
                     "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
        current = conn.execute("SELECT coalesce(max(version), 0) FROM ganforge_schema").fetchone()[0]
        for version in range(current + 1, len(MIGRATIONS) + 1):
            conn.execute(MIGRATIONS[version - 1])
            conn.execute("INSERT INTO ganforge_schema (version) VALUES (%s)", (version,))
            logger.info("jobs: PostgreSQL schema migrated to version %d", version)
    return len(MIGRATIONS)


def listen_loop(url: str, on_change: Callable[[str, str], None], stop: threading.Event) -> None:
    """LISTEN on `CHANNEL` until `stop`, calling `on_change(job_id, event)`; reconnects when the
    connection breaks (a change missed meanwhile is found by the runner's and the routes' polling)."""
    import psycopg

    while not stop.is_set():
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(f"LISTEN {CHANNEL}")
                while not stop.is_set():
                    for note in conn.notifies(timeout=0.5):
                        job_id, _, event = note.payload.partition(" ")
                        try:
                            on_change(job_id, event)
                        except Exception:  # noqa: BLE001 - one bad callback must not stop listening
                            logger.exception("jobs: handling a change of %s failed", job_id)
        except Exception:  # noqa: BLE001 - the database restarted, a network blip: listen again
            if not stop.is_set():
                logger.warning("jobs: LISTEN %s lost its connection; reconnecting", CHANNEL, exc_info=True)
                stop.wait(RECONNECT_S)
