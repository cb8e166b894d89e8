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
import logging
import threading
import time
from typing import Any, Callable, Iterator

from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from .pgschema import CHANNEL, listen_loop, migrate
from .record import QUEUED, RUNNING, TERMINAL, Job
from .sqlstore import SqlJobStore
from .store import Delivery, job_from_row

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


class PostgresJobStore(SqlJobStore):
    """The transitions are SqlJobStore's (service/jobs/sqlstore.py), in this dialect; here the pool, the
    claim, the heartbeat, expiry, the outbox claim and the notifications."""

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

    def sql(self, statement: str) -> str:
        """SqlJobStore's statements (SQLite's dialect) in PostgreSQL's: `%s` placeholders, `greatest`."""
        return statement.replace("?", "%s").replace("max(", "greatest(")

    def _notify(self, db: Any, job: Job, event: str) -> None:
        db.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"{job.id} {event}"))

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
                return self._take(db, job, owner, time.time(), now + lease_s)
        return None

    def beat(self, job_id: str, owner: str, lease_s: float) -> str | None:
        with self._tx() as db:
            row = db.execute("UPDATE jobs SET lease_until = extract(epoch FROM clock_timestamp()) + %s "
                             "WHERE id = %s AND owner = %s RETURNING status", (lease_s, job_id, owner)).fetchone()
        return None if row is None else row["status"]

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
