"""The /jobs routes (Starlette, mounted with /models by service/service.py); token-guarded by the
middleware like every route but health and metrics.

  GET  /jobs?status=&limit=     newest first (limit 1..1000, default 50)
  GET  /jobs/{id}               the job; 404 unknown, 410 expired. `Prefer: wait=N` (RFC 7240): answer once
                                it has ended or N seconds (at most 60) passed: a long poll
  GET  /jobs/{id}/result        the sync call's bytes and headers; 409 while queued or running (or canceled),
                                a failed job's error with its status, 410 once expired
  POST /jobs/{id}/cancel        the job, canceled; 409 when it had already ended otherwise
  GET  /jobs/{id}/events        text/event-stream (service/jobs/events.py)
"""

from __future__ import annotations

import time

import anyio
import bentoml
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..errors import error_response
from .events import SSE_HEADERS, last_event_id, stream
from .layer import JobLayer
from .record import CANCELED, FAILED, STATUSES, SUCCEEDED, Job
from .submit import prefer_wait

MAX_LIMIT = 1000
MAX_WAIT_S = 60.0


def _layer() -> JobLayer:
    return bentoml.get_current_service().jobs


async def find(layer: JobLayer, job_id: str) -> Job | Response:
    """The job, or the 404 / 410 answer."""
    job = await anyio.to_thread.run_sync(layer.store.get, job_id)
    if job is not None and not layer.expired(job):
        return job
    if job is not None or await anyio.to_thread.run_sync(layer.store.is_gone, job_id):
        return error_response(410, "this job expired and was removed (GANFORGE_JOBS_TTL_S)")
    return error_response(404, "no such job")


async def list_jobs(request: Request) -> Response:
    status = request.query_params.get("status") or None
    if status is not None and status not in STATUSES:
        return error_response(422, f"status must be one of {', '.join(STATUSES)}")
    raw = request.query_params.get("limit", "50")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        return error_response(422, f"limit must be 1..{MAX_LIMIT}")
    layer = _layer()
    jobs = await anyio.to_thread.run_sync(layer.store.list, status, int(raw))
    return JSONResponse({"jobs": [j.public() for j in jobs if not layer.expired(j)]})


async def get_job(request: Request) -> Response:
    """With `Prefer: wait=N`: answers once the job has ended, or after N seconds (a long poll)."""
    layer, job_id = _layer(), request.path_params["job_id"]
    wait_s = prefer_wait(request.headers.getlist("prefer"))
    if wait_s is None:
        found = await find(layer, job_id)
        return found if isinstance(found, Response) else JSONResponse(found.public())
    wait_s = min(wait_s, MAX_WAIT_S, 0.8 * layer.settings.timeout_s)
    until = time.monotonic() + wait_s
    with layer.signals.watch(job_id) as watch:
        while True:
            watch.reset()
            found = await find(layer, job_id)
            if isinstance(found, Response) or found.finished or time.monotonic() >= until:
                break
            await watch.wait(until - time.monotonic())
    if isinstance(found, Response):
        return found
    return JSONResponse(found.public(), headers={"Preference-Applied": f"wait={wait_s:g}"})


async def get_result(request: Request) -> Response:
    layer = _layer()
    found = await find(layer, request.path_params["job_id"])
    if isinstance(found, Response):
        return found
    if found.status == FAILED and found.error:
        return error_response(int(found.error.get("status", 500)), str(found.error.get("error", "the job failed")))
    if found.status != SUCCEEDED:
        what = "was canceled" if found.status == CANCELED else f"is {found.status}"
        return error_response(409, f"the job {what}; it has no result" + (
            "" if found.status == CANCELED else " yet: GET /jobs/{id} or /events says when it has"))
    path = layer.files.result_path(found.id)
    try:
        body = await anyio.to_thread.run_sync(path.read_bytes)
    except FileNotFoundError:
        return error_response(410, "this job's result was removed (GANFORGE_JOBS_TTL_S)")
    result = found.result or {}
    return Response(body, media_type=result.get("media_type"), headers=result.get("headers") or {})


async def cancel_job(request: Request) -> Response:
    layer = _layer()
    found = await find(layer, request.path_params["job_id"])
    if isinstance(found, Response):
        return found
    job, _ = await anyio.to_thread.run_sync(layer.cancel, found.id)
    if job is None:
        return error_response(410, "this job expired and was removed (GANFORGE_JOBS_TTL_S)")
    if job.status != CANCELED:
        return error_response(409, f"the job already ended ({job.status}); nothing to cancel")
    return JSONResponse(job.public())


async def job_events(request: Request) -> Response:
    layer = _layer()
    found = await find(layer, request.path_params["job_id"])
    if isinstance(found, Response):
        return found
    after = last_event_id(request)
    if after is None:
        return error_response(400, "Last-Event-ID must be a non-negative integer")
    return StreamingResponse(stream(layer, found.id, after), media_type="text/event-stream", headers=SSE_HEADERS)


routes = [
    Route("/jobs", list_jobs, methods=["GET"]),
    Route("/jobs/{job_id}", get_job, methods=["GET"]),
    Route("/jobs/{job_id}/result", get_result, methods=["GET"]),
    Route("/jobs/{job_id}/cancel", cancel_job, methods=["POST"]),
    Route("/jobs/{job_id}/events", job_events, methods=["GET"]),
]
