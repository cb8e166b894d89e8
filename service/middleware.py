"""ASGI middleware for what BentoML 1.4.39 has no setting for.

In order, per HTTP request:
1. bearer-token auth when GANFORGE_AUTH_TOKEN is set (401; /livez, /readyz,
   /healthz, /metrics and the demo page's static files under /ui stay open:
   the page sends the token its user types in with its API calls);
2. for the image APIs: Content-Type check (415), body size limit from
   Content-Length and while reading (413: GANFORGE_MAX_UPLOAD_BYTES for an image,
   GANFORGE_MAX_MEDIA_BYTES for a `video` or an `archive`), and for multipart bodies a parse
   that requires exactly one *file*, in `image`, `video` or `archive` (400). The last one matters:
   BentoML downloads a URL given as a text field in place of a file, and
   turns a malformed multipart body into a 500;
3. overload: more than GANFORGE_MAX_CONCURRENCY image-API requests in
   flight in this worker (counted from the first byte of the body) -> 429
   with Retry-After. BentoML's own traffic.max_concurrency is set to twice
   that as a backstop: it wraps this middleware, so when it fires first its
   answer is BentoML's {"error": "Too many requests"}, rewritten by nothing;
4. every error answer (status >= 400) from BentoML or Starlette is rewritten
   to this service's shape {"error": "...", "status": N}: BentoML answers
   pydantic errors with {"error", "detail"}, its own exceptions with a JSON
   *list* [{"error": ...}], and unknown routes with plain text.

5. for the image APIs: a `RequestToken` (service/deadline.py) made on arrival, with the deadline
   GANFORGE_TIMEOUT_S from then, bound to the request's context; once the body is read, a small
   task waits on the real `receive` for `http.disconnect` and cancels the token when the client
   leaves before its answer started, so the worker thread stops within one tile.

   With `Prefer: respond-async`, or a `video` or an `archive`, the checked body goes to service/jobs/
   instead (202 and a job). A sync `image` request is answered from the checked body by
   service/direct.py (the API's own validation and handler), not parsed again by BentoML.

6. every POST to an image API gets a `telemetry.RequestRecord` on arrival (bound like the token), which
   counts it once, with the status it was answered and what the handler noted, when it ends
   (service/telemetry.py; not with GANFORGE_METRICS=0).

BentoML's own TimeoutMiddleware (504) and MaxConcurrencyMiddleware (429)
wrap this one, so those two answers keep BentoML's body {"error": "..."}. Its timeout is set a
little later than GANFORGE_TIMEOUT_S (service/service.py), as a backstop: the token's deadline
answers first, in this service's shape, and stops the work, which BentoML's does not.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from typing import Any, Awaitable, Callable

from . import deadline, jobs, telemetry

from starlette.datastructures import FormData, UploadFile

from .config import Settings, settings as process_settings
from .errors import error_response
from .forms import parse_form
from .ui import is_ui_path

logger = logging.getLogger("bentoml.ganforge")
# (scope, the checked body's parsed form, BentoML's app to fall back on, receive, send): service/direct.py
DirectAnswer = Callable[[dict, FormData, Any, Any, Any], Awaitable[None]]

OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/metrics"})
BODY_TYPES = {
    "/generate": "application/json",
    "/translate": "multipart/form-data",
    "/upscale": "multipart/form-data",
}
FILE_FIELD = "image"
MEDIA_FIELDS = ("video", "archive")  # always a job (service/jobs/intake.py), up to GANFORGE_MAX_MEDIA_BYTES
FILE_FIELDS = (FILE_FIELD, *MEDIA_FIELDS)
DEFAULT_MESSAGES = {
    400: "bad request",
    401: "missing or wrong bearer token",
    403: "forbidden",
    404: "not found",
    405: "method not allowed",
    413: "request too large",
    415: "unsupported media type",
    422: "unprocessable request",
    429: "too many requests",
    500: "internal server error",
    503: "service unavailable",
    504: "timed out",
}


class BodyTooLarge(Exception):
    pass


def _header(scope: dict, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _summarise_validation(detail: Any) -> str | None:
    """BentoML's pydantic `detail` list -> one readable line."""
    if not isinstance(detail, list) or not detail:
        return None
    parts = []
    for item in detail[:5]:
        if not isinstance(item, dict):
            continue
        loc = ".".join(str(p) for p in item.get("loc", ()) if p not in ("body",))
        msg = str(item.get("msg", "invalid value"))
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "invalid request: " + "; ".join(parts) if parts else None


def normalised_error_body(status: int, body: bytes, content_type: str) -> bytes | None:
    """The {"error", "status"} body for an error answer, or None when it already is one."""
    message = None
    if "json" in content_type:
        try:
            data = json.loads(body or b"null")
        except ValueError:
            data = None
        if isinstance(data, list) and len(data) == 1:
            data = data[0]
        if isinstance(data, dict):
            if set(data) == {"error", "status"} and data["status"] == status:
                return None
            message = _summarise_validation(data.get("detail")) or data.get("error")
    if not isinstance(message, str) or not message:
        message = DEFAULT_MESSAGES.get(status, "error")
    return json.dumps({"error": message, "status": status}).encode()


class ErrorBodySend:
    """Wraps `send`: buffers an error answer and re-emits it in the service's JSON shape."""

    def __init__(self, send) -> None:
        self.send = send
        self.start: dict | None = None
        self.chunks: list[bytes] = []
        self.started = False  # the answer began: a disconnect after this stops nothing
        self.status: int | None = None  # the answer's status, once it began

    async def __call__(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            self.status = message["status"]
            if message["status"] >= 400:
                self.start = message
                return
            await self.send(message)
            return
        if message["type"] != "http.response.body" or self.start is None:
            await self.send(message)
            return
        self.chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        start, self.start = self.start, None
        status = start["status"]
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() not in (b"content-length", b"content-type")]
        content_type = next((v.decode("latin-1") for k, v in start.get("headers", []) if k.lower() == b"content-type"), "")
        body = b"".join(self.chunks)
        new_body = normalised_error_body(status, body, content_type)
        if new_body is not None:
            body = new_body
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        await self.send({"type": "http.response.body", "body": body, "more_body": False})


async def read_body(receive, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            telemetry.client_left()
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def run_watched(app, scope, body: bytes, receive, send: "ErrorBodySend",
                      token: deadline.RequestToken) -> None:
    """Run `app` on the buffered `body`, cancelling `token` when the client disconnects first.

    The watcher owns the real `receive` from here on (after the body only `http.disconnect` can
    come); the app's `receive` yields the body, then waits for the watcher to see the disconnect.
    """
    gone = asyncio.Event()

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        if not send.started:
            token.cancel(deadline.DISCONNECTED)
            telemetry.client_left()
        gone.set()

    async def until_gone() -> dict:
        await gone.wait()
        return {"type": "http.disconnect"}

    watcher = asyncio.ensure_future(watch())
    try:
        with deadline.bound(token):
            await app(scope, replay(body, until_gone), send)
    finally:
        watcher.cancel()  # not awaited: this task may itself be being cancelled (BentoML's timeout)


def replay(body: bytes, receive):
    """A `receive` that yields the buffered body once, then defers to the real one."""
    sent = False

    async def _receive() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return _receive


def check_form(form: FormData) -> tuple[str | None, str | None]:
    """(the file's field, None) when the multipart form holds exactly one file, in `image`, `video` or
    `archive`; else (None, the problem)."""
    present = [name for name in FILE_FIELDS if name in form]
    if not present:
        return None, (f"send the image as a file in the multipart field '{FILE_FIELD}' (or a video in "
                      "'video', a zip of images in 'archive')")
    if len(present) > 1 or len(form.getlist(present[0])) > 1:
        return None, f"send exactly one file, in one of {', '.join(repr(f) for f in FILE_FIELDS)}"
    field = present[0]
    if not isinstance(form[field], UploadFile):
        return None, f"'{field}' must be a file upload, not a text field"
    for key, value in form.multi_items():
        if key != field and isinstance(value, UploadFile):
            return None, f"unexpected file in field {key[:40]!r}; only '{field}' takes a file"
    return field, None


class GanforgeMiddleware:
    def __init__(self, app, settings: Settings | None = None, direct: DirectAnswer | None = None) -> None:
        self.app = app
        self.direct = direct  # service/direct.py: a checked sync image request without BentoML's second parse
        self.settings = settings if settings is not None else process_settings()
        token = self.settings.auth_token
        self._expected = f"Bearer {token}".encode() if token else None
        self._in_flight = 0  # image-API requests in this worker; one event loop, so a plain int

    @staticmethod
    def _open(path: str) -> bool:
        return path in OPEN_PATHS or is_ui_path(path)

    def _authorised(self, scope: dict) -> bool:
        given = (_header(scope, b"authorization") or "").strip().encode("latin-1", "replace")
        return hmac.compare_digest(given, self._expected)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = ErrorBodySend(send)
        record = None  # every POST to an image API is counted once, however it ends (service/telemetry.py)
        if self.settings.metrics and scope["method"] == "POST" and scope["path"] in BODY_TYPES:
            record = telemetry.RequestRecord(scope["path"].lstrip("/"))
        try:
            with telemetry.bound(record):
                await self._handle(scope, receive, send)
        except Exception:
            # Answer now: an exception escaping here would otherwise hold the
            # client until BentoML's TimeoutMiddleware fires (traffic.timeout).
            logger.exception("unhandled error on %s", scope.get("path"))
            if send.started:
                raise
            await error_response(500, "internal server error")(scope, receive, send)
        finally:
            if record is not None:  # no status: BentoML's timeout cancelled it before it answered
                record.finish(send.status)

    async def _handle(self, scope, receive, send: "ErrorBodySend") -> None:
        path = scope["path"]
        if self._expected is not None and not self._open(path) and not self._authorised(scope):
            response = error_response(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        wanted = BODY_TYPES.get(path)
        if wanted is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        limit = self.settings.max_concurrency
        if self._in_flight >= limit:
            response = error_response(429, f"too many requests in flight (limit {limit}); retry shortly",
                                      {"Retry-After": "1"})
            await response(scope, receive, send)
            return
        token = deadline.RequestToken(self.settings.timeout_s)  # the deadline counts from arrival
        self._in_flight += 1
        try:
            checked = await self._check_body(scope, receive, wanted)
            if isinstance(checked[0], int):  # (status, message): refused
                await error_response(*checked)(scope, receive, send)
                return
            body, field, form = checked
            try:
                await self._answer(scope, body, field, form, receive, send, token)
            finally:
                if form is not None:
                    await form.close()
        finally:
            self._in_flight -= 1

    async def _answer(self, scope, body: bytes, field: str | None, form: FormData | None, receive,
                      send: "ErrorBodySend", token: deadline.RequestToken) -> None:
        """A checked body: a job (202), the direct path (a sync image, from its parsed `form`), or BentoML."""
        if field in MEDIA_FIELDS or jobs.prefers_async(scope.get("headers", ())):  # a job: 202 (service/jobs/)
            await (await jobs.submit(scope, body))(scope, receive, send)
            return
        app = self.app
        if self.direct is not None and form is not None:
            direct = self.direct

            async def app(scope, receive, send) -> None:
                await direct(scope, form, self.app, receive, send)
        await run_watched(app, scope, body, receive, send, token)

    async def _check_body(self, scope, receive, wanted: str) -> tuple[bytes, str | None, FormData | None] | tuple[int, str]:
        """(the buffered body, its file's field, its parsed form), or (status, message) to refuse it. A multipart
        body may be as large as GANFORGE_MAX_MEDIA_BYTES until its field says it is an image. The form is
        parsed once, in memory where the body is image-sized, and kept (for the caller to close) only when it
        holds an image: the direct path answers from it."""
        content_type = (_header(scope, b"content-type") or "").split(";")[0].strip().lower()
        if content_type != wanted:
            shown_type = content_type[:60] or "none"
            return 415, f"Content-Type must be {wanted} for {scope['path']}, got {shown_type}"
        image_limit = self.settings.max_upload_bytes
        limit = max(image_limit, self.settings.max_media_bytes) if wanted == "multipart/form-data" else image_limit
        length = _header(scope, b"content-length")
        if length is not None and length.strip().isdigit() and int(length) > limit:
            return 413, f"request body is {int(length)} bytes; the limit is {limit} bytes"
        try:
            body = await read_body(receive, limit)
        except BodyTooLarge:
            return 413, f"request body is larger than the limit of {limit} bytes"
        if wanted != "multipart/form-data":
            return body, None, None
        in_memory = len(body) <= image_limit
        try:
            form = await parse_form(scope, body, in_memory=in_memory)
        except Exception:  # noqa: BLE001 - python-multipart raises several types
            form, (field, problem) = None, (None, "malformed multipart/form-data body")
        else:
            field, problem = check_form(form)
            if field != FILE_FIELD or not in_memory:
                await form.close()
                form = None
        if problem is not None and in_memory:
            return 400, problem
        if field not in MEDIA_FIELDS and not in_memory:
            return 413, f"request body is {len(body)} bytes; the limit for an image is {image_limit} bytes"
        return body, field, form
