"""GET /jobs/{id}/events: the job's stored events as Server-Sent Events.

Every event is stored with the status change or progress write that made it (service/jobs/sqlite.py),
so any worker serves any job's stream and a reconnect loses nothing:

  id: <seq>            event: queued | running | progress | succeeded | failed | canceled
  data: <the job's JSON at that moment>

A stream starts after `Last-Event-ID` (the header a browser's EventSource sends on reconnect, or the
`last_event_id` query parameter; none: from the first event), reads the store when this worker changed
the job (service/jobs/signals.py) and at least every 0.25 s (another worker's change), and ends after
the terminal event. It also ends after `STREAM_S` (BentoML's request timeout would cut it); a
client reconnects with the last id it saw (`retry:` tells EventSource how soon).
"""

from __future__ import annotations

import time
from typing import AsyncIterator

import anyio
from starlette.requests import Request

from .record import TERMINAL

STREAM_S = 55.0
KEEPALIVE_S = 15.0
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def last_event_id(request: Request) -> int | None:
    raw = (request.headers.get("last-event-id") or request.query_params.get("last_event_id") or "0").strip()
    return int(raw) if raw.isdigit() else None


async def stream(layer, job_id: str, after: int) -> AsyncIterator[bytes]:
    yield b"retry: 1000\n\n"
    until = time.monotonic() + min(STREAM_S, 0.8 * layer.settings.timeout_s)
    quiet_since = time.monotonic()
    with layer.signals.watch(job_id) as watch:  # wakes at once on this worker's changes of the job
        while True:
            watch.reset()
            events = await anyio.to_thread.run_sync(layer.store.events, job_id, after)
            for event in events:
                yield f"id: {event.seq}\nevent: {event.event}\ndata: {event.data}\n\n".encode()
                after = event.seq
                if event.event in TERMINAL:
                    return
            now = time.monotonic()
            if events:
                quiet_since = now
            elif now - quiet_since >= KEEPALIVE_S:
                quiet_since = now
                yield b": keep-alive\n\n"
                if await anyio.to_thread.run_sync(layer.store.get, job_id) is None:
                    return  # expired while we watched
            if now >= until:
                return
            await watch.wait(until - now)
