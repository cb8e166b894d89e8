"""`Prefer: respond-async` on POST /generate, /translate, /upscale: check the request, store it, answer 202.

The middleware (service/middleware.py) has already checked auth, the Content-Type, the body size and
the multipart shape, and hands over the buffered body. Here, before anything is stored:
- the fields are validated as BentoML validates the sync call (the API's own pydantic input model;
  multipart text fields JSON-decoded as BentoML does), 400 otherwise;
- the model is resolved (404 unknown, the endpoint's default when none is named);
- an upload's size is read from its header: the handler's pixel limits (413) and, for a header Pillow
  cannot read, the handler's 400; a file broken further in fails the job with the handler's error;
- `webhook` / `webhook_events` are checked (service/jobs/webhooks.py).
A `video` or an `archive` (always a job, `Prefer` or not) is checked by service/jobs/intake.py instead: probed
or listed, and its fields checked as the handlers check them.
Never checked: time. A job runs whatever fits the pixel limits, however slow the machine.

A /generate without `seed`, `latent` or `interpolate` gets its seed drawn here (as the handler would
draw it), so a job that runs again after a restart draws the same image.

`Idempotency-Key`: the request's fingerprint (endpoint, fields, sha256 of the upload) is stored with
the key; the same key and fingerprint return the stored job (nothing new runs), another fingerprint 409.
"""

from __future__ import annotations

import hashlib
import io
import json
import secrets
import time
from typing import Any

import anyio
from starlette.datastructures import UploadFile
from starlette.responses import JSONResponse

from core.imaging import OPEN_FORMATS

from .. import imaging
from ..errors import ApiError, bad_request
from ..forms import STAND_IN, bentoml_text, parse_form
from .intake import MEDIA_FIELDS, check_media, media_field
from .record import Job, new_id

PREFER_ASYNC = "respond-async"
MAX_KEY_CHARS = 255
WEBHOOK_FIELDS = ("webhook", "webhook_events")


def prefers_async(headers: list[tuple[bytes, bytes]]) -> bool:
    """RFC 7240: any `Prefer` header listing respond-async (case-insensitive token, parameters ignored)."""
    for key, value in headers:
        if key.lower() == b"prefer":
            tokens = value.decode("latin-1").lower().replace(";", ",").split(",")
            if any(t.strip() == PREFER_ASYNC for t in tokens):
                return True
    return False


def prefer_wait(values: list[str]) -> float | None:
    """RFC 7240 `Prefer: wait=<seconds>` (the first one), or None."""
    for value in values:
        for token in value.replace(";", ",").split(","):
            name, _, number = token.strip().partition("=")
            if name.strip().lower() == "wait":
                try:
                    seconds = float(number.strip().strip('"'))
                except ValueError:
                    return None
                return seconds if seconds >= 0 else None
    return None


def header(scope: dict, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


async def read_fields(scope: dict, body: bytes) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(fields, uploads) of the buffered body."""
    if (header(scope, b"content-type") or "").split(";")[0].strip().lower() == "application/json":
        try:
            fields = json.loads(body or b"null")
        except ValueError:
            raise bad_request("the body is not valid JSON") from None
        if not isinstance(fields, dict):
            raise bad_request("the JSON body must be an object")
        return fields, {}
    form = await parse_form(scope, body, in_memory=False)  # a video's part may be large: spooled as before
    fields: dict[str, Any] = {}
    uploads: dict[str, bytes] = {}
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                uploads[key] = await value.read()
            elif key == "webhook_events" and key in fields:  # repeated: one list
                fields[key] = f"{fields[key]},{value}"
            elif key in WEBHOOK_FIELDS:
                fields[key] = value
            else:
                fields[key] = bentoml_text(value)
    finally:
        await form.close()
    return fields, uploads


def validate(spec: Any, fields: dict[str, Any], uploads: dict[str, bytes]) -> Any:
    """The API's pydantic model on the fields (uploads stand in as paths; a video or an archive stands in for
    the image): 400 naming the problem. The validated model."""
    from pydantic import ValidationError

    stand_ins = {("image" if name in MEDIA_FIELDS else name): STAND_IN for name in uploads}
    try:
        return spec.model_validate({**fields, **stand_ins})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        raise bad_request(f"invalid request: {problems}") from None


def check_image(endpoint: str, data: bytes, served: Any, settings: Any) -> None:
    """The upload's size from its header, against the sync handler's pixel limits (same 413 messages);
    an upload whose header Pillow cannot read gets the handler's own 400 (decode_image fails fast on it).
    What only a full decode finds (a truncated file) fails the job with the handler's error."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=OPEN_FORMATS) as img:
            width, height = img.size
    except Exception:  # noqa: BLE001 - Pillow raises many types for a bad header
        imaging.decode_image(data, settings.max_input_pixels)  # raises the sync API's 400 / 413
        raise bad_request("could not decode the image") from None
    imaging.check_pixels(width, height, settings.max_input_pixels, "the image")
    if endpoint == "upscale":
        native = served.image_spec.scale
        imaging.check_pixels(width * native, height * native, settings.max_output_pixels, f"the x{native} output")
    else:
        imaging.check_pixels(width, height, settings.max_output_pixels, "the output")


def fingerprint(endpoint: str, fields: dict[str, Any], uploads: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps({"endpoint": endpoint, "fields": fields}, sort_keys=True, default=str).encode())
    for name in sorted(uploads):
        digest.update(name.encode() + b"\0" + hashlib.sha256(uploads[name]).digest())
    return digest.hexdigest()


async def build_job(layer: Any, scope: dict, body: bytes) -> tuple[Job, dict[str, bytes]]:
    """The job this request asks for (not stored yet) and its uploads; ApiError when refused."""
    from .webhooks import check_webhook

    endpoint = scope["path"].lstrip("/")
    key = header(scope, b"idempotency-key")
    if key is not None and not 0 < len(key.strip()) <= MAX_KEY_CHARS:
        raise bad_request(f"Idempotency-Key must be 1..{MAX_KEY_CHARS} characters")
    fields, uploads = await read_fields(scope, body)
    webhook, events = check_webhook(fields.pop("webhook", None), fields.pop("webhook_events", None), layer.settings)
    media = media_field(uploads)
    if media is not None and endpoint == "generate":
        raise bad_request(f"'{media}' is taken by /upscale and /translate only")
    spec = layer.specs[endpoint]
    validated = validate(spec, fields, uploads)
    model = fields.get("model")
    served = layer.registry.pick(endpoint, None if model in (None, "") else str(model))
    kind, unit = "image", "graph runs" if endpoint == "generate" else "tiles"
    if media is not None:
        await anyio.to_thread.run_sync(check_media, layer, endpoint, media, uploads[media], served, validated)
        kind, unit = MEDIA_FIELDS[media]
    elif "image" in uploads:
        await anyio.to_thread.run_sync(check_image, endpoint, uploads["image"], served, layer.settings)
    job = Job(id=new_id(), endpoint=endpoint, model=served.name, kind=kind, created_at=time.time(),
              idempotency_key=key.strip() if key else None, fingerprint=fingerprint(endpoint, fields, uploads),
              webhook=webhook, webhook_events=events, inputs={name: name for name in uploads}, unit=unit)
    if endpoint == "generate" and all(fields.get(k) is None for k in ("seed", "latent", "interpolate")):
        fields["seed"] = secrets.randbelow(2**32)  # as handlers.generate draws it; fixed for a re-run
    job.params = fields
    return job, uploads


async def submit(scope: dict, body: bytes) -> JSONResponse:
    """202 + Location (+ Preference-Applied when it was asked for), body the job; or the refusal as the sync API
    shapes it. A `video` or an `archive` (service/jobs/intake.py) is a job with or without `Prefer`."""
    import bentoml

    layer = bentoml.get_current_service().jobs
    try:
        job, uploads = await build_job(layer, scope, body)
        job, created = await anyio.to_thread.run_sync(layer.store_new, job, uploads)
    except ApiError as exc:
        return exc.response()
    headers = {"Location": f"/jobs/{job.id}"}
    if prefers_async(scope.get("headers", ())):
        headers["Preference-Applied"] = PREFER_ASYNC
    return JSONResponse(job.public(), status_code=202, headers=headers)
