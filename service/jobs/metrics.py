"""The jobs' Prometheus series, beside service/telemetry.py's (same rules: made once per process on first
use, never at import; summed over workers by BentoML's multiprocess `/metrics`; none with GANFORGE_METRICS=0):

  ganforge_jobs_total{endpoint,model,status}              jobs that ended: succeeded, failed, canceled
  ganforge_jobs_queued                                    jobs waiting to run (all workers: read from the store)
  ganforge_job_queued_seconds{endpoint,model}             created -> started (each run of a job)
  ganforge_job_running_seconds{endpoint,model,status}     started -> ended
  ganforge_webhook_deliveries_total{outcome}              delivered | retry (error or non-2xx, tried again) |
                                                          failed (given up)
"""

from __future__ import annotations

import functools
from typing import Any

from ..telemetry import duration_buckets

JOB_BUCKETS = duration_buckets(3600.0)[:-1]  # 1 ms .. 1 h


class JobMetrics:
    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.ended = Counter("ganforge_jobs", "Jobs that ended, by final status", ["endpoint", "model", "status"])
        self.queued = Gauge("ganforge_jobs_queued", "Jobs waiting to run (the store's count, all workers)",
                            multiprocess_mode="mostrecent")
        self.queued_seconds = Histogram("ganforge_job_queued_seconds", "A job's wait from submission to start",
                                        ["endpoint", "model"], buckets=JOB_BUCKETS)
        self.running_seconds = Histogram("ganforge_job_running_seconds", "A job's run from start to its end",
                                         ["endpoint", "model", "status"], buckets=JOB_BUCKETS)
        self.deliveries = Counter("ganforge_webhook_deliveries", "Webhook delivery attempts by outcome",
                                  ["outcome"])


@functools.cache
def _metrics() -> JobMetrics:
    return JobMetrics()


class JobTelemetry:
    """What the job layer records; every call a no-op when `enabled` is false (GANFORGE_METRICS=0)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def _m(self) -> JobMetrics | None:
        return _metrics() if self.enabled else None

    def started(self, job: Any, waited_s: float) -> None:
        if (m := self._m()) is not None:
            m.queued_seconds.labels(job.endpoint, job.model or "-").observe(max(waited_s, 0.0))

    def ended(self, job: Any, ran_s: float | None) -> None:
        if (m := self._m()) is not None:
            m.ended.labels(job.endpoint, job.model or "-", job.status).inc()
            if ran_s is not None:
                m.running_seconds.labels(job.endpoint, job.model or "-", job.status).observe(max(ran_s, 0.0))

    def queue_depth(self, count: int) -> None:
        if (m := self._m()) is not None:
            m.queued.set(count)

    def delivery(self, outcome: str) -> None:
        if (m := self._m()) is not None:
            m.deliveries.labels(outcome).inc()
