"""Work-arounds for upstream bugs, each applied once at service import, each with its measurement.

BentoML 1.4.39's TimeoutMiddleware (bentoml/_internal/server/http/traffic.py) arms
`loop.call_later(traffic.timeout, ...)` for every request and never cancels it. The timer handle keeps
the request's future and its contextvars copy (holding the OpenTelemetry server span, its attributes
and events) alive until the timeout passes, answered or not: ~5 KB a request, held for
GANFORGE_TIMEOUT_S. Under a steady 50-200 requests/s that is RSS growing linearly for the first
timeout's worth of load (12000 requests x 5 KB = 60 MB per worker at 200/s and 60 s), which `make
soak` read as a leak (issue 16). tracemalloc in a worker of a one-endpoint BentoML service showed two
retained spans per answered request, allocated under that middleware. `cancel_timeout_timers` gives
the middleware the same behaviour with the timer cancelled once the request is done.
"""
from __future__ import annotations

import asyncio
from typing import Any

_PATCHED = "_ganforge_cancels_timer"


def cancel_timeout_timers() -> bool:
    """Patch BentoML's TimeoutMiddleware so a finished request cancels its timeout timer (idempotent);
    False when BentoML has no such middleware (nothing to do)."""
    try:
        from bentoml._internal.server.http.traffic import TimeoutMiddleware
    except ImportError:
        return False
    if getattr(TimeoutMiddleware, _PATCHED, False):
        return True
    from starlette.responses import JSONResponse

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Any] = loop.create_future()
        timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

        async def _send(message) -> None:
            if not waiter.done():
                waiter.set_result(None)
            await send(message)

        fut = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
        try:
            await waiter
        except asyncio.TimeoutError:
            if fut.cancel():
                body = {"error": f"Not able to process the request in {self.timeout} seconds"}
                await JSONResponse(body, status_code=504)(scope, receive, send)
        else:
            await fut
        finally:
            timer.cancel()  # the one change: the handle (and the request it holds) goes now, not in `timeout` s

    TimeoutMiddleware.__call__ = __call__
    setattr(TimeoutMiddleware, _PATCHED, True)
    return True
