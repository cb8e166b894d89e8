"""service/upstream.py: BentoML's TimeoutMiddleware, patched so a finished request leaves nothing behind."""
from __future__ import annotations

import asyncio
import contextvars
import gc
import weakref

from bentoml._internal.server.http.traffic import TimeoutMiddleware

from service.upstream import cancel_timeout_timers

REQUEST_STATE: contextvars.ContextVar = contextvars.ContextVar("request_state")


class State:
    """Stands for what a request puts in its context (BentoML's OpenTelemetry span does)."""


def run(app, timeout: float, requests: int = 1) -> tuple[list[int], list[weakref.ref]]:
    statuses: list[int] = []
    refs: list[weakref.ref] = []

    async def outer(scope, receive, send):  # as the ASGI instrumentation does: state in the context
        state = State()
        refs.append(weakref.ref(state))
        REQUEST_STATE.set(state)
        await TimeoutMiddleware(app, timeout=timeout)(scope, receive, send)

    async def main():
        for _ in range(requests):
            async def send(message):
                if message["type"] == "http.response.start":
                    statuses.append(message["status"])

            async def receive():
                return {"type": "http.request", "body": b"", "more_body": False}

            task = asyncio.create_task(outer({"type": "http", "path": "/", "headers": []}, receive, send))
            await task
            del task
        await asyncio.sleep(0)  # the loop lets go of the last task's callbacks
        gc.collect()
        return [r for r in refs if r() is not None]

    alive = asyncio.run(main())
    return statuses, alive


async def ok_app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def slow_app(scope, receive, send):
    await asyncio.sleep(0.5)
    await ok_app(scope, receive, send)


def test_a_finished_request_is_not_held_for_the_timeout():
    """Unpatched, every request's context (and what it holds) lives on in the timer for `timeout` seconds:
    ~5 KB a request, so RSS climbed for the first 60-120 s of load (make soak, issue 16)."""
    assert cancel_timeout_timers() and cancel_timeout_timers()  # idempotent
    statuses, alive = run(ok_app, timeout=60, requests=50)
    assert statuses == [200] * 50
    assert alive == []  # every request's state is gone once its answer is out


def test_the_timeout_still_answers_504():
    cancel_timeout_timers()
    statuses, alive = run(slow_app, timeout=0.05)
    assert statuses == [504] and alive == []
