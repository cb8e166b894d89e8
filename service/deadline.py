"""Per-request cancellation: a token made when an image request arrives, checked between graph runs.

The middleware (service/middleware.py) makes a `RequestToken` when a /generate, /translate or
/upscale request arrives: its deadline is GANFORGE_TIMEOUT_S from then. It binds the token to the
request's context (a ContextVar: `anyio.to_thread.run_sync`, which BentoML uses to run the sync API
methods, copies the context into the worker thread), and cancels it from the event loop when the
client disconnects. The pipelines (service/inference.py) call `check` before every graph run (each
tile of /upscale and /translate, each /generate run): a cancelled request, or one past its deadline,
stops there with `RequestCancelled` (503 client gone, 504 deadline), so it stops within one tile and
frees its thread. BentoML's own `traffic.timeout` answers 504 but lets the sync work go on; it is
kept only as a backstop, a little later than this deadline (service/service.py).

Counts of what was cancelled, and the last one, are in `CANCELLED` (shown by GET /models).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from typing import Any, Iterator

from .errors import ApiError

logger = logging.getLogger("bentoml.ganforge")

DISCONNECTED = "client_disconnected"
DEADLINE = "deadline"


class RequestCancelled(ApiError):
    """A request stopped before it finished: its client left (503) or its deadline passed (504)."""

    def __init__(self, status: int, message: str, reason: str) -> None:
        super().__init__(status, message, outcome="timeout" if reason == DEADLINE else "cancelled")
        self.reason = reason


class CancelLog:
    """How many requests were stopped, by reason, and the last one (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts = {DISCONNECTED: 0, DEADLINE: 0}
        self.last: dict[str, Any] | None = None

    def add(self, reason: str, what: dict[str, Any]) -> None:
        with self._lock:
            self.counts[reason] = self.counts.get(reason, 0) + 1
            self.last = {"reason": reason, **what}

    def describe(self) -> dict[str, Any]:
        with self._lock:
            return {**self.counts, "last": dict(self.last) if self.last else None}


CANCELLED = CancelLog()


class RequestToken:
    """One request's deadline and cancel flag; `cancel` from any thread, `check` from the worker."""

    def __init__(self, timeout_s: float, started: float | None = None) -> None:
        self.started = time.monotonic() if started is None else started
        self.timeout_s = timeout_s
        self.deadline = self.started + timeout_s
        self.reason: str | None = None
        self.model_seconds = 0.0  # graph time spent on this request (the rest is decode, blend, encode)
        self._event = threading.Event()
        self._reported = False

    def cancel(self, reason: str = DISCONNECTED) -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def stop_reason(self) -> str | None:
        """Why this request must stop now, or None."""
        if self._event.is_set():
            return self.reason
        if time.monotonic() >= self.deadline:
            return DEADLINE
        return None

    def check(self, model: str = "", done: int | None = None, total: int | None = None,
              unit: str = "tiles") -> None:
        """Raise RequestCancelled when the request must stop; `done` of `total` units are computed."""
        reason = self.stop_reason()
        if reason is None:
            return
        raise self.stopped(reason, model, done, total, unit)

    def tile_check(self, model: str):
        """The `check(done, total)` callback of `tiling.tile_and_blend` for this request."""
        return lambda done, total: self.check(model, done, total)

    def stopped(self, reason: str, model: str, done: int | None, total: int | None,
                unit: str) -> RequestCancelled:
        progress = f" after {done} of {total} {unit}" if total is not None else ""
        elapsed = self.elapsed()
        if not self._reported:  # one log line and one count per request, however often it is checked
            self._reported = True
            logger.warning("request on %s cancelled (%s)%s, %.1f s after it arrived", model or "?",
                           reason.replace("_", " "), progress, elapsed)
            CANCELLED.add(reason, {"model": model, "done": done, "total": total, "unit": unit,
                                   "elapsed_s": round(elapsed, 3)})
        if reason == DEADLINE:
            return RequestCancelled(504, f"the request did not finish within GANFORGE_TIMEOUT_S = "
                                         f"{self.timeout_s:g} s and was stopped{progress}; send a smaller "
                                         "input or retry when the server is less busy", reason)
        return RequestCancelled(503, f"the request was cancelled ({reason.replace('_', ' ')}){progress}", reason)


_CURRENT: contextvars.ContextVar[RequestToken | None] = contextvars.ContextVar("ganforge_request", default=None)


def current() -> RequestToken | None:
    """The token of the request this thread works for (None outside a request, e.g. at warm-up)."""
    return _CURRENT.get()


@contextlib.contextmanager
def bound(token: RequestToken) -> Iterator[RequestToken]:
    """Make `token` the current one in this context (and in threads started from it by anyio)."""
    reset = _CURRENT.set(token)
    try:
        yield token
    finally:
        _CURRENT.reset(reset)
