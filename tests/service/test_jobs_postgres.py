"""The PostgreSQL job store (service/jobs/postgres.py) on a real throwaway cluster (testkit/postgres.py):
the schema made once by replicas that start together, claims that never give one job twice across
processes, takeover by lease on another host and by pid only on the same host, idempotency across
stores, and NOTIFY reaching the other replicas. Skipped, saying why, where PostgreSQL is not installed."""

from __future__ import annotations

import multiprocessing
import threading
import time

import pytest

from service.config import Settings, SettingsError
from service.jobs.record import Job
from service.jobs.store import IdempotencyConflict
from testkit import postgres

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def url():
    reason = postgres.missing()
    if reason:
        pytest.skip(reason)
    with postgres.throwaway_postgres() as found:
        yield found


@pytest.fixture
def empty(url):
    """The cluster with a fresh database: its URL."""
    import psycopg

    name = f"t{time.monotonic_ns()}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return url.rsplit("/", 1)[0] + "/" + name


def store(url: str):
    from service.jobs.postgres import PostgresJobStore

    return PostgresJobStore(url, gone_keep_s=3600)


def job(n: int, key: str | None = None, fingerprint: str = "f") -> Job:
    return Job(id=f"job{n}", endpoint="upscale", model="m", created_at=time.time() + n * 1e-3,
               idempotency_key=key, fingerprint=fingerprint)


def never_dead(owner: str) -> bool:
    return False


def test_the_variable_takes_only_postgresql_urls(tmp_path):
    assert Settings.from_env({}).jobs_db is None
    assert Settings.from_env({"GANFORGE_JOBS_DB": "postgresql://u:p@db:5432/jobs"}).jobs_db.endswith("/jobs")
    with pytest.raises(SettingsError, match="GANFORGE_JOBS_DB"):
        Settings.from_env({"GANFORGE_JOBS_DB": "sqlite:///x"})


def test_schema_made_once_by_replicas_starting_together(empty):
    import psycopg

    started, stores, errors = time.monotonic(), [], []

    def start():
        try:
            stores.append(store(empty))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - started
    assert not errors and len(stores) == 6
    with psycopg.connect(empty) as conn:
        assert conn.execute("SELECT version FROM ganforge_schema").fetchall() == [(1,)]
    for s in stores:
        s.close()
    print(f"schema on an empty database, 6 replicas at once: {took * 1000:.0f} ms")


def claim_all(url: str, owner: str, ready, go, out) -> None:
    s = store(url)
    ready.put(owner)
    go.wait()
    while (claimed := s.claim(owner, 30, never_dead, 3)) is not None:
        out.put(claimed.id)
    s.close()


def test_four_processes_claim_each_job_once(empty):
    s = store(empty)
    for n in range(60):
        s.submit(job(n), 1000)
    ctx = multiprocessing.get_context("spawn")
    ready, go, out = ctx.Queue(), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=claim_all, args=(empty, f"host{k}:1:1", ready, go, out)) for k in range(4)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=60)
    go.set()
    for p in procs:
        p.join(timeout=120)
    claimed = [out.get(timeout=5) for _ in range(60)]
    assert sorted(claimed) == sorted(f"job{n}" for n in range(60))  # each once, none left
    assert out.empty() and s.queued() == 0
    s.close()


def test_takeover_by_lease_across_hosts_and_by_pid_only_on_the_same_host(empty):
    s = store(empty)
    s.submit(job(1), 10)
    first = s.claim("hostA:100:5", 1.0, never_dead, 3)
    assert first.id == "job1"
    everyone_dead = lambda owner: True  # noqa: E731 - what a pid check on the wrong host would say
    assert s.claim("hostB:200:5", 1.0, everyone_dead, 3) is None  # hostB never asks about hostA's pids
    assert s.claim("hostA:300:5", 1.0, everyone_dead, 3).id == "job1"  # same host, owner dead: at once
    assert s.beat("job1", "hostA:100:5", 1.0) is None  # the first owner lost it
    time.sleep(1.2)  # hostA:300's lease expires
    taken = s.claim("hostB:200:5", 10.0, never_dead, 3)
    assert taken.id == "job1" and taken.attempts == 3
    assert s.finish("job1", "hostA:300:5", "succeeded", 60, result={"bytes": 1}) is None  # not its job now
    assert s.finish("job1", "hostB:200:5", "succeeded", 60, result={"bytes": 1}).status == "succeeded"
    s.close()


def test_idempotency_across_replicas_and_notify(empty):
    one, two = store(empty), store(empty)
    seen: list[tuple[str, str]] = []
    two.listen(lambda job_id, event: seen.append((job_id, event)))
    time.sleep(0.5)  # LISTEN is on
    stored, created = one.submit(job(1, key="k"), 10)
    again, created_again = two.submit(job(2, key="k"), 10)
    assert created and not created_again and again.id == stored.id
    with pytest.raises(IdempotencyConflict):
        two.submit(job(3, key="k", fingerprint="other"), 10)
    one.cancel("job1", 60)
    deadline = time.monotonic() + 5
    while ("job1", "canceled") not in seen:
        assert time.monotonic() < deadline, seen
        time.sleep(0.05)
    assert seen[0] == ("job1", "queued")
    one.close()
    two.close()
