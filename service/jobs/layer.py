"""The job layer of one worker: its store, files, runner and webhook deliverer, and the operations the
routes and the submit path call. Made and started by the service (service/service.py) in each worker.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import Any

from ..config import Settings, SettingsError
from ..registry import ModelRegistry
from .files import JobFiles
from .metrics import JobTelemetry
from .record import CANCELED, QUEUED, Job
from .runner import Runner
from .signals import JobSignals
from .sqlite import SqliteJobStore
from .store import IdempotencyConflict, JobStore
from .webhooks import Deliverer

logger = logging.getLogger("bentoml.ganforge")

DB_NAME = "jobs.sqlite3"


def make_store(settings: Settings, files: JobFiles) -> JobStore:
    """PostgreSQL when GANFORGE_JOBS_DB is set (replicas), else SQLite in GANFORGE_JOBS_DIR."""
    gone_keep_s = max(settings.jobs_ttl_s, 3600.0)
    try:
        files.make()
    except OSError as exc:
        raise SettingsError(f"GANFORGE_JOBS_DIR={settings.jobs_dir}: cannot keep jobs there ({exc}); "
                            "set it to a writable folder") from None
    if settings.jobs_db:
        import psycopg
        import psycopg_pool

        from .postgres import PostgresJobStore, redacted

        try:
            return PostgresJobStore(settings.jobs_db, gone_keep_s)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise SettingsError(f"GANFORGE_JOBS_DB={redacted(settings.jobs_db)}: cannot keep jobs there "
                                f"({exc})") from None
    try:
        return SqliteJobStore(settings.jobs_dir / DB_NAME, gone_keep_s=gone_keep_s)
    except sqlite3.Error as exc:
        raise SettingsError(f"GANFORGE_JOBS_DIR={settings.jobs_dir}: cannot keep jobs there ({exc}); "
                            "set it to a writable folder on a local file system") from None


class JobLayer:
    def __init__(self, registry: ModelRegistry, settings: Settings, specs: dict[str, Any]) -> None:
        self.registry, self.settings, self.specs = registry, settings, specs
        self.files = JobFiles(settings.jobs_dir)
        self.store = make_store(settings, self.files)
        self.telemetry = JobTelemetry(settings.metrics)
        self.signals = JobSignals()
        self.runner = Runner(self.store, self.files, registry, settings, specs, self.telemetry, self.signals)
        self.deliverer = Deliverer(self.store, settings, self.telemetry)

    def start(self) -> None:
        self.files.sweep_temporaries()
        self.store.listen(self.changed_elsewhere)
        self.runner.start()
        self.deliverer.start()
        hosts = ", ".join(self.settings.webhook_hosts) or "none"
        logger.info("ganforge jobs: dir %s (%s), ttl %g s, at most %d queued, webhook hosts: %s",
                    self.settings.jobs_dir, self.store_name(), self.settings.jobs_ttl_s,
                    self.settings.jobs_max_queued, hosts)

    def stop(self) -> None:
        self.runner.stop()
        self.deliverer.stop()
        self.store.close()

    def store_name(self) -> str:
        if self.settings.jobs_db:
            from .postgres import redacted

            return f"PostgreSQL {redacted(self.settings.jobs_db)}"
        return f"SQLite WAL {DB_NAME}"

    def changed_elsewhere(self, job_id: str, event: str) -> None:
        """A job changed in some replica (the store's LISTEN thread): wake what waits on it here."""
        if event == QUEUED:
            self.runner.wake()
        elif event == CANCELED:
            self.runner.cancel_local(job_id)  # running here: stops at its next tile
        self.signals.changed(job_id)

    def store_new(self, job: Job, uploads: dict[str, bytes]) -> tuple[Job, bool]:
        """Keep the uploads (atomically), then the job; (the job, False) for an idempotent repeat."""
        if job.idempotency_key is not None:
            existing = self.store.by_key(job.idempotency_key)
            if existing is not None:
                if existing.fingerprint != job.fingerprint:
                    raise IdempotencyConflict()
                return existing, False
        for name, data in uploads.items():
            self.files.save_input(job.id, job.inputs[name], data)
        try:
            stored, created = self.store.submit(job, self.settings.jobs_max_queued)
        except BaseException:
            self.files.drop_inputs(job.id)
            raise
        if created:
            self.runner.wake()
        else:  # another request with the key won the race
            self.files.drop_inputs(job.id)
        return stored, created

    def cancel(self, job_id: str) -> tuple[Job | None, bool]:
        job, changed = self.store.cancel(job_id, self.settings.jobs_ttl_s)
        if changed and job is not None:
            self.runner.cancel_local(job_id)  # running here: stops at its next tile
            self.signals.changed(job_id)
            if job.owner is None:  # it was queued: no runner will clean up after it
                self.files.drop(job_id)
            ran = job.finished_at - job.started_at if job.started_at and job.finished_at else None
            self.telemetry.ended(job, ran)
        return job, changed

    def expired(self, job: Job) -> bool:
        return job.expires_at is not None and job.expires_at < time.time()

    def describe(self) -> dict[str, Any]:
        """What GET /models shows under `jobs`."""
        store = "postgresql" if self.settings.jobs_db else "sqlite"
        return {"dir": str(self.settings.jobs_dir), "store": store, "ttl_s": self.settings.jobs_ttl_s,
                "max_queued": self.settings.jobs_max_queued, "queued": self.store.queued(),
                "webhook_hosts": list(self.settings.webhook_hosts)}
