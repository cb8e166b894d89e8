"""Wake-ups for the routes that wait on a job (GET /jobs/{id} with `Prefer: wait=N`, the event stream).

The runner and the cancel path call `changed(job_id)` after they wrote to the store; a route waiting
on the event loop for that job wakes at once. A change made by another worker is not signalled
here: waiters also wake every `FALLBACK_S` and read the store.

    with signals.watch(job_id) as watch:
        while ...:
            watch.reset()          # before reading the store: a change after it is not missed
            ... read the store ...
            await watch.wait(seconds_left)
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Iterator

FALLBACK_S = 0.25


class Watch:
    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.event = asyncio.Event()

    def reset(self) -> None:
        self.event.clear()

    async def wait(self, timeout_s: float) -> None:
        """Until the job changed in this worker, or `min(timeout_s, FALLBACK_S)` passed."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.event.wait(), max(0.0, min(timeout_s, FALLBACK_S)))


class JobSignals:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watches: dict[str, set[Watch]] = {}

    def changed(self, job_id: str) -> None:
        """From any thread."""
        with self._lock:
            watches = list(self._watches.get(job_id, ()))
        for watch in watches:
            watch.loop.call_soon_threadsafe(watch.event.set)

    @contextlib.contextmanager
    def watch(self, job_id: str) -> Iterator[Watch]:
        """On the event loop."""
        watch = Watch()
        with self._lock:
            self._watches.setdefault(job_id, set()).add(watch)
        try:
            yield watch
        finally:
            with self._lock:
                watches = self._watches.get(job_id)
                if watches is not None:
                    watches.discard(watch)
                    if not watches:
                        del self._watches[job_id]
