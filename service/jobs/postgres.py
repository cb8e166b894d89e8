"""The shared job store: PostgreSQL (GANFORGE_JOBS_DB=postgresql://...), for replicas (issue 25).

The same `JobStore` as service/jobs/sqlite.py, row for row, on psycopg 3 (a small connection pool per
worker); inputs and results stay files in GANFORGE_JOBS_DIR, a folder every replica mounts.
- A claim is `SELECT ... FOR UPDATE SKIP LOCKED` in one transaction: two replicas never claim one job,
  and neither waits on the rows the other is claiming.
- Leases are on the database's clock (`clock_timestamp()`), so replicas whose clocks differ agree on
  when a lease expired. A running job's owner is `<host>:<pid>:<start>`: only the claimer on the same
  host asks `owner_dead` (a pid means nothing on another host); elsewhere only an expired lease lets
  another replica take a job over.
- Every event also sends `NOTIFY ganforge_jobs, '<job id> <event>'` (delivered at commit): `listen`
  wakes the runner of every replica on a new job, stops a job cancelled through another replica at once
  (the heartbeat would at its next beat), and wakes the routes that wait on a job (signals.py).
- The schema is made and migrated at start inside one transaction that holds an advisory lock, so
  replicas that start together wait for each other and migrate once (`MIGRATIONS`, `ganforge_schema`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from typing import Any, Callable, Iterator

from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from .pgschema import CHANNEL, listen_loop, migrate
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

logger = logging.getLogger("bentoml.ganforge")

POOL_MAX = 6  # connections per worker: the runner, its heartbeat, the deliverer, a few routes at once
CONNECT_WAIT_S = 60.0  # at start, how long to wait for the database (it may start after the service)
CLAIM_SCAN = 8
DB_NOW = "SELECT extract(epoch FROM clock_timestamp())::float8 AS now"


def redacted(url: str) -> str:
    """The URL without its password, for logs and GET /models."""
    info = conninfo_to_dict(url)
    where = f"{info.get('host', '')}:{info.get('port', 5432)}/{info.get('dbname', '')}"
    return f"postgresql://{info.get('user', '')}@{where}"


class PostgresJobStore:
    def __init__(self, url: str, gone_keep_s: float) -> None:
        self.url = url
        self.gone_keep_s = gone_keep_s
        self.pool = ConnectionPool(url, min_size=1, max_size=POOL_MAX, open=True, name="ganforge-jobs",
                                   check=ConnectionPool.check_connection)
        self._stop = threading.Event()
        self._listener: threading.Thread | None = None
        with self.pool.connection(timeout=CONNECT_WAIT_S) as conn:
            self.schema_version = migrate(conn)

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Any]:
        """A cursor (rows as dicts) in one transaction: committed when the block ends, else rolled back."""
        with self.pool.connection() as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            yield cur

    def _get(self, db: Any, job_id: str, lock: bool = False) -> Job | None:
        row = db.execute("SELECT * FROM jobs WHERE id = %s" + (" FOR UPDATE" if lock else ""), (job_id,)).fetchone()
        return None if row is None else job_from_row(row)

    def _event(self, db: Any, job: Job, event: str, webhook: bool = True) -> None:
        """Append `event` with the job as it is now, queue its webhook when asked for, notify replicas."""
        seq = db.execute("UPDATE jobs SET seq = seq + 1 WHERE id = %s RETURNING seq", (job.id,)).fetchone()["seq"]
        now = time.time()
        db.execute("INSERT INTO events VALUES (%s, %s, %s, %s, %s)", (job.id, seq, event, compact(job.public()), now))
        message = webhook_message(job, event, now) if webhook else None
        if message is not None:
            db.execute("INSERT INTO deliveries (id, job_id, url, body, next_at) VALUES (%s, %s, %s, %s, %s)",
                       (message[0], job.id, job.webhook, message[1], now))
        db.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"{job.id} {event}"))

    # ---------------------------------------------------------------- submit and read

    def submit(self, job: Job, max_queued: int) -> tuple[Job, bool]:
        with self._tx() as db:
            if job.idempotency_key is not None:
                existing = self._by_key(db, job.idempotency_key)
                if existing is not None:
                    return self._same_request(existing, job)
            waiting = db.execute("SELECT count(*) AS n FROM jobs WHERE status = %s", (QUEUED,)).fetchone()["n"]
            if waiting >= max_queued:
                raise QueueFull(max_queued)
            inserted = db.execute(
                "INSERT INTO jobs (id, kind, endpoint, model, params, inputs, status, unit, created_at, "
                "idempotency_key, fingerprint, webhook, webhook_events) "
                "VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
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
        row = db.execute("SELECT * FROM jobs WHERE idempotency_key = %s", (key,)).fetchone()
        return None if row is None else job_from_row(row)

    def by_key(self, key: str) -> Job | None:
        with self._tx() as db:
            return self._by_key(db, key)

    def get(self, job_id: str) -> Job | None:
        with self._tx() as db:
            return self._get(db, job_id)

    def is_gone(self, job_id: str) -> bool:
        with self._tx() as db:
            return db.execute("SELECT 1 FROM gone WHERE id = %s", (job_id,)).fetchone() is not None

    def list(self, status: str | None, limit: int) -> list[Job]:
        where, args = ("WHERE status = %s", (status,)) if status else ("", ())
        with self._tx() as db:
            rows = db.execute(f"SELECT * FROM jobs {where} ORDER BY created_at DESC, id LIMIT %s",
                              (*args, limit)).fetchall()
        return [job_from_row(r) for r in rows]

    def queued(self) -> int:
        with self._tx() as db:
            return db.execute("SELECT count(*) AS n FROM jobs WHERE status = %s", (QUEUED,)).fetchone()["n"]

    def events(self, job_id: str, after: int) -> list[Event]:
        with self._tx() as db:
            rows = db.execute("SELECT seq, event, data FROM events WHERE job_id = %s AND seq > %s ORDER BY seq",
                              (job_id, after)).fetchall()
        return [Event(r["seq"], r["event"], r["data"]) for r in rows]

    # ---------------------------------------------------------------- running

    def claim(self, owner: str, lease_s: float, owner_dead: Callable[[str], bool], max_attempts: int) -> Job | None:
        host = owner.partition(":")[0]
        with self._tx() as db:
            now = db.execute(DB_NOW).fetchone()["now"]
            # running here on this host under a process that is gone (the only owners `owner_dead` can judge)
            dead = [r["id"] for r in db.execute(
                "SELECT id, owner FROM jobs WHERE status = %s AND split_part(owner, ':', 1) = %s AND lease_until >= %s",
                (RUNNING, host, now)).fetchall() if owner_dead(r["owner"] or "")]
            rows = db.execute(
                "SELECT * FROM jobs WHERE status = %s OR (status = %s AND (lease_until < %s OR id = ANY(%s))) "
                "ORDER BY created_at LIMIT %s FOR UPDATE SKIP LOCKED",
                (QUEUED, RUNNING, now, dead, CLAIM_SCAN)).fetchall()
            for row in rows:
                job = job_from_row(row)
                if job.status == RUNNING and not ((job.lease_until or 0) < now or owner_dead(job.owner or "")):
                    continue  # taken over meanwhile by a live worker
                if job.attempts >= max_attempts:
                    self._fail_interrupted(db, job, time.time())
                    continue
                job.status, job.owner, job.lease_until = RUNNING, owner, now + lease_s
                job.attempts += 1
                job.started_at = time.time()
                db.execute("UPDATE jobs SET status = %s, owner = %s, lease_until = %s, attempts = %s, "
                           "started_at = %s WHERE id = %s",
                           (RUNNING, owner, job.lease_until, job.attempts, job.started_at, job.id))
                self._event(db, job, RUNNING, webhook=job.attempts == 1)
                return job
        return None

    def _fail_interrupted(self, db: Any, job: Job, now: float) -> None:
        job.status, job.finished_at, job.error = FAILED, now, interrupted_error(job.attempts)
        db.execute("UPDATE jobs SET status = %s, finished_at = %s, error = %s, owner = NULL WHERE id = %s",
                   (FAILED, now, json.dumps(job.error), job.id))
        self._event(db, job, FAILED)

    def beat(self, job_id: str, owner: str, lease_s: float) -> str | None:
        with self._tx() as db:
            row = db.execute("UPDATE jobs SET lease_until = extract(epoch FROM clock_timestamp()) + %s "
                             "WHERE id = %s AND owner = %s RETURNING status", (lease_s, job_id, owner)).fetchone()
        return None if row is None else row["status"]

    def progress(self, job_id: str, owner: str, done: int, total: int, progress: float, eta_s: float | None,
                 event: bool, webhook: bool) -> None:
        with self._tx() as db:
            changed = db.execute(
                "UPDATE jobs SET done = greatest(done, %s), total = %s, progress = greatest(progress, %s), "
                "eta_s = %s WHERE id = %s AND owner = %s AND status = %s",
                (done, total, progress, eta_s, job_id, owner, RUNNING)).rowcount
            if event and changed:
                self._event(db, self._get(db, job_id), "progress", webhook=webhook)

    def finish(self, job_id: str, owner: str, status: str, ttl_s: float, error: dict | None = None,
               result: dict | None = None, done: int = 0, total: int | None = None) -> Job | None:
        values = finish_values(status, ttl_s, error, result, done, total)
        with self._tx() as db:
            changed = db.execute(
                "UPDATE jobs SET status = %s, finished_at = %s, expires_at = %s, error = %s, result = %s, "
                "owner = NULL, eta_s = NULL, done = greatest(done, %s), total = coalesce(%s, total), "
                "progress = CASE WHEN %s THEN 1.0 ELSE progress END WHERE id = %s AND owner = %s AND status = %s",
                (*values, job_id, owner, RUNNING)).rowcount
            if not changed:
                return None
            job = self._get(db, job_id)
            self._event(db, job, status)
        return job

    def cancel(self, job_id: str, ttl_s: float) -> tuple[Job | None, bool]:
        now = time.time()
        with self._tx() as db:
            changed = db.execute("UPDATE jobs SET status = %s, finished_at = %s, expires_at = %s, eta_s = NULL "
                                 "WHERE id = %s AND status IN (%s, %s)",
                                 (CANCELED, now, now + ttl_s, job_id, QUEUED, RUNNING)).rowcount
            job = self._get(db, job_id)
            if changed:
                self._event(db, job, CANCELED)
        return job, bool(changed)

    def requeue(self, job_id: str, owner: str) -> None:
        with self._tx() as db:
            changed = db.execute("UPDATE jobs SET status = %s, owner = NULL, lease_until = NULL, eta_s = NULL, "
                                 "attempts = greatest(attempts - 1, 0) WHERE id = %s AND owner = %s AND status = %s",
                                 (QUEUED, job_id, owner, RUNNING)).rowcount
            if changed:
                self._event(db, self._get(db, job_id), QUEUED, webhook=False)

    def expire(self, now: float) -> list[str]:
        with self._tx() as db:
            ids = [r["id"] for r in db.execute(
                "DELETE FROM jobs WHERE expires_at < %s AND status IN (%s, %s, %s) RETURNING id",
                (now, *sorted(TERMINAL))).fetchall()]
            if ids:
                db.execute("DELETE FROM events WHERE job_id = ANY(%s)", (ids,))
                db.execute("DELETE FROM deliveries WHERE job_id = ANY(%s) AND state != 'pending'", (ids,))
                db.execute("INSERT INTO gone SELECT unnest(%s::text[]), %s ON CONFLICT (id) DO UPDATE SET at = "
                           "excluded.at", (ids, now))
            db.execute("DELETE FROM gone WHERE at < %s", (now - self.gone_keep_s,))
            db.execute("DELETE FROM deliveries d WHERE state != 'pending' AND NOT EXISTS "
                       "(SELECT 1 FROM jobs j WHERE j.id = d.job_id)")
        return ids

    # ---------------------------------------------------------------- webhook outbox

    def due_deliveries(self, now: float, claim_s: float, limit: int) -> list[Delivery]:
        with self._tx() as db:
            rows = db.execute(
                "UPDATE deliveries SET claimed_until = %s WHERE id IN (SELECT id FROM deliveries WHERE state = "
                "'pending' AND next_at <= %s AND claimed_until <= %s ORDER BY next_at LIMIT %s FOR UPDATE SKIP "
                "LOCKED) RETURNING id, job_id, url, body, attempts", (now + claim_s, now, now, limit)).fetchall()
        return [Delivery(r["id"], r["job_id"], r["url"], r["body"], r["attempts"]) for r in rows]

    def delivered(self, delivery_id: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE deliveries SET state = 'delivered', attempts = attempts + 1 WHERE id = %s",
                       (delivery_id,))

    def retry_delivery(self, delivery_id: str, next_at: float | None) -> None:
        with self._tx() as db:
            if next_at is None:
                db.execute("UPDATE deliveries SET state = 'failed', attempts = attempts + 1 WHERE id = %s",
                           (delivery_id,))
            else:
                db.execute("UPDATE deliveries SET attempts = attempts + 1, next_at = %s, claimed_until = 0 "
                           "WHERE id = %s", (next_at, delivery_id))

    # ---------------------------------------------------------------- other replicas' changes

    def listen(self, on_change: Callable[[str, str], None]) -> None:
        self._listener = threading.Thread(target=listen_loop, args=(self.url, on_change, self._stop),
                                          name="ganforge-jobs-listen", daemon=True)
        self._listener.start()

    def close(self) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.join(timeout=3)
        self.pool.close()
