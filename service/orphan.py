"""A worker stops when its `bentoml serve` is gone.

BentoML 1.4 starts each worker in a session of its own (its process group is not the server's). So a
SIGKILL of `bentoml serve` (an OOM kill, `kill -9` of the pid an operator knows) left the worker alive,
reparented to init, still answering on the socket it inherited: a restarted server could not bind the
port, or a health check went on answering for a server that was no longer there (found by hand: a
SIGKILLed server's worker answered /readyz 200 minutes later).

`stop_when_orphaned` (started in each worker by the service) polls the parent pid; once the parent is
gone it sends the worker SIGTERM, its normal stop: uvicorn finishes the answers in flight, and the job
layer puts a running job back in the queue (the next server runs it again, service/jobs/).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

logger = logging.getLogger("bentoml.ganforge")

POLL_S = 1.0


def in_bentoml_worker() -> bool:
    """Whether this process is a worker that `bentoml serve` started (not an in-process app, not a test)."""
    from bentoml._internal.context import server_context

    return server_context.worker_index is not None


def stop_when_orphaned(poll_s: float = POLL_S) -> threading.Thread | None:
    """Watch the parent pid from a daemon thread; SIGTERM this process once it changes. None where the parent
    is already init (nothing to watch)."""
    parent = os.getppid()
    if parent <= 1:
        return None

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:
                logger.error("the bentoml serve process that started this worker (pid %d) is gone: stopping this "
                             "worker (pid %d)", parent, os.getpid())
                os.kill(os.getpid(), signal.SIGTERM)
                return

    thread = threading.Thread(target=watch, name="ganforge-parent-watch", daemon=True)
    thread.start()
    return thread
