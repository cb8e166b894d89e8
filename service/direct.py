"""The sync image APIs answered straight from the middleware's buffered body (issue 26).

The middleware (service/middleware.py) has already read the whole body (bounded), checked its type
and size, and parsed its multipart shape. Handing it on to BentoML meant a second parse, the upload
written to a temporary file and read back (BentoML's `Path` parameter), and its request machinery:
about 0.7 ms of a 3 ms small request, and a disk copy of every upload. Here instead:
- the form is the one the middleware parsed for its check, in memory (service/forms.py: no part is
  spooled to disk, the body is already bounded by GANFORGE_MAX_UPLOAD_BYTES);
- the fields are validated by the API's own pydantic input model, as BentoML validates them (multipart
  text fields JSON-decoded as BentoML does); a request that does not validate goes on to BentoML
  untouched, so every refusal keeps BentoML's checks and this service's error shape, word for word;
- the same handler runs through `image_response` in a worker thread, at most GANFORGE_THREADS at once
  in this worker (BentoML's `threads`);
- the answer carries the headers BentoML adds (`Server`, `X-BentoML-Request-ID`).

What stays as it was: the middlewares around this one (BentoML's metrics, tracing, access log, timeout
and concurrency backstops) and everything inside (the request's deadline token, disconnect watch,
telemetry record, the job priority), because this runs where BentoML's app ran.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any, Callable

import anyio
from starlette.datastructures import FormData, UploadFile
from starlette.responses import Response

from . import handlers, jobs, telemetry
from .forms import STAND_IN, api_kwargs, bentoml_text
from .deadline import RequestCancelled
from .errors import ApiError

logger = logging.getLogger("bentoml.ganforge")

SERVER_HEADER = "BentoML Service/{}"


def image_response(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Response:
    """Run an image handler; its answer, or its error in this service's shape (ApiError, a cancelled request)."""
    # jobs.PRIORITY: while a sync request is in its handler, this worker's running job waits at its next tile
    with telemetry.handler(), jobs.PRIORITY.sync():  # the request's queue stage ends here, its handler time starts
        try:
            result = fn(*args, **kwargs)
        except RequestCancelled as exc:  # logged where it stopped, with its progress
            telemetry.failed(exc)
            return exc.response()
        except ApiError as exc:
            telemetry.failed(exc)
            if exc.status >= 500:
                (logger.warning if exc.status in (503, 504) else logger.error)("%s", exc.message)
            return exc.response()
        return Response(content=result.body, media_type=result.media_type, headers=result.headers)


def bentoml_headers(response: Response, service_name: str) -> None:
    """The headers BentoML's own endpoint adds to every answer."""
    from bentoml._internal.context import trace_context

    response.headers["Server"] = SERVER_HEADER.format(service_name)
    if trace_context.request_id is not None:
        response.headers["X-BentoML-Request-ID"] = format(trace_context.request_id, "016x")


class DirectImageApi:
    """`answer(scope, form, fallback, receive, send)`, an ASGI step for a checked sync /translate or /upscale.
    `service` gives the running service instance (registry, settings) and `specs` the APIs' input models."""

    def __init__(self, name: str, service: Callable[[], Any], specs: dict[str, Any]) -> None:
        self._name = name
        self._service = service
        self._specs = specs
        self._limiter: anyio.CapacityLimiter | None = None  # made in the event loop, on first use

    def arguments(self, endpoint: str, form: FormData) -> dict[str, Any] | None:
        """The handler's keyword arguments, or None when the fields do not validate (BentoML answers those)."""
        from pydantic import ValidationError

        fields: dict[str, Any] = {}
        upload: UploadFile | None = None
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                upload = value
            else:
                fields[key] = bentoml_text(value)
        if upload is None:
            return None
        try:
            kwargs = api_kwargs(self._specs[endpoint], fields, {"image": STAND_IN})
        except ValidationError:
            return None
        upload.file.seek(0)
        kwargs["image"] = upload.file.read()  # from memory (parse_form)
        return kwargs

    async def answer(self, scope: dict, form: FormData, fallback, receive, send) -> None:
        """`form`: the request's multipart form, parsed in memory by the middleware (which closes it)."""
        endpoint = scope["path"].lstrip("/")
        kwargs = self.arguments(endpoint, form)
        if kwargs is None:
            await fallback(scope, receive, send)
            return
        service = self._service()
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(max(1, service.settings.threads))
        call = partial(image_response, getattr(handlers, endpoint), service.registry, service.settings, **kwargs)
        response = await anyio.to_thread.run_sync(call, limiter=self._limiter)
        bentoml_headers(response, self._name)
        await response(scope, receive, send)
