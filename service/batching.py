"""Adaptive batching: one runner thread per session merges queued same-shaped requests.

An idle session runs a request at once on the caller's own thread: there is
no waiting window and no thread hand-off, so a lone request pays nothing for
batching being on. While the session is busy, arriving
requests queue; the next run takes the oldest one together with every other
queued request whose inputs have the same non-batch shapes and dtypes, up to
`max_batch` rows, concatenated along the batch axis. Batching thus happens
exactly when there is load, and only between requests that can share a graph
run (/generate calls of one model; /translate and tiles of one size).

At most one run of a session is in flight at a time (the caller's direct run
or the runner thread's merged one), which also keeps onnxruntime's intra-op
thread pool from being oversubscribed by concurrent requests.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from . import telemetry

RunFn = Callable[[list[str], dict[str, np.ndarray]], list[np.ndarray]]


@dataclass(eq=False)
class _Job:
    feeds: dict[str, np.ndarray]
    key: tuple
    rows: int
    queued: float = field(default_factory=time.perf_counter)
    started: float = 0.0  # when its graph run began (the runner sets it)
    done: threading.Event = field(default_factory=threading.Event)
    result: list[np.ndarray] | None = None
    error: BaseException | None = None


def _key(feeds: dict[str, np.ndarray]) -> tuple:
    return tuple((name, a.shape[1:], a.dtype.str) for name, a in sorted(feeds.items()))


class SessionBatcher:
    """`run(outputs, feeds)` with the semantics of `InferenceSession.run`, batched under load."""

    def __init__(self, run: RunFn, max_batch: int, name: str = "session",
                 observe: Callable[[int], None] | None = None) -> None:
        """`observe(rows)` is called after every graph run (direct or merged) with its row count."""
        self._run = run
        self._observe = observe
        self.max_batch = max_batch
        self._queue: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._busy = False  # a run is in flight (direct on a caller's thread, or the runner's)
        self._outputs: list[str] | None = None
        self.stats = {"runs": 0, "requests": 0, "max_rows": 0}
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        rows = {a.shape[0] for a in feeds.values()}
        if len(rows) != 1:
            raise ValueError(f"inputs disagree on the batch size: {sorted(rows)}")
        job = _Job(feeds, (tuple(outputs), _key(feeds)), rows.pop())
        with self._cond:
            if self._closed:
                # A reload closed this model's batcher while a request still held the model:
                # run on the caller's thread, unbatched, on the session it started with.
                result = self._run(outputs, feeds)
                if self._observe is not None:
                    self._observe(job.rows)
                return result
            direct = not self._busy and not self._queue
            if direct:
                self._busy = True
            else:
                self._queue.append(job)
                self._cond.notify()
        if direct:  # the fast path: nothing to merge with, so no hand-off to the runner thread
            self._execute([job], done=True)
        else:
            job.done.wait()
            telemetry.add_wait(job.started - job.queued)  # the request's queue stage, not its compute
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]

    def close(self) -> None:
        """Stop taking jobs: queued ones still run; later `run` calls run directly, unbatched."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=5)

    def _take(self) -> list[_Job]:
        """The oldest job plus every queued job that can share its run (queue lock held)."""
        first = self._queue.popleft()
        jobs, rows = [first], first.rows
        for job in list(self._queue):
            if job.key == first.key and rows + job.rows <= self.max_batch:
                self._queue.remove(job)
                jobs.append(job)
                rows += job.rows
        return jobs

    def _loop(self) -> None:
        while True:
            with self._cond:
                while (self._busy or not self._queue) and not self._closed:
                    self._cond.wait()
                if self._closed and not self._queue:
                    return
                if self._busy:  # closed while a direct run is in flight: let it finish first
                    self._cond.wait(0.01)
                    continue
                self._busy = True
                jobs = self._take()
            self._execute(jobs)

    def _execute(self, jobs: list[_Job], done: bool = False) -> None:
        """Run `jobs` as one graph run, then clear the busy flag and wake the runner for the queue.
        `done`: the caller reads the result itself (the direct path); no event to set."""
        outputs = list(jobs[0].key[0])
        started = time.perf_counter()
        for job in jobs:
            job.started = started
        try:
            if len(jobs) == 1:
                results = [self._run(outputs, jobs[0].feeds)]
            else:
                feeds = {name: np.concatenate([j.feeds[name] for j in jobs]) for name in jobs[0].feeds}
                merged = self._run(outputs, feeds)
                bounds = np.cumsum([0] + [j.rows for j in jobs])
                results = [[y[a:b] for y in merged] for a, b in zip(bounds[:-1], bounds[1:])]
            for job, result in zip(jobs, results):
                job.result = result
        except BaseException as exc:  # noqa: BLE001 - every waiting request gets the failure
            for job in jobs:
                job.error = exc
        finally:
            self.stats["runs"] += 1
            self.stats["requests"] += len(jobs)
            self.stats["max_rows"] = max(self.stats["max_rows"], sum(j.rows for j in jobs))
            if self._observe is not None:
                self._observe(sum(j.rows for j in jobs))
            with self._cond:
                self._busy = False
                self._cond.notify()
            if not done:
                for job in jobs:
                    job.done.set()

    def describe(self) -> dict[str, Any]:
        return {"max_batch": self.max_batch, **self.stats}
