"""service/direct.py and service/forms.py: the sync image APIs answered from the middleware's buffered body.

Over real HTTP, the answers and refusals of the direct path are those of the whole service test suite
(tests/service/test_service_server.py checks BentoML's headers on it); here, the parts: the form stays in
memory, and the handler's arguments are what BentoML's own validation gives."""

from __future__ import annotations

import os

import pytest
from starlette.responses import JSONResponse

from service.direct import DirectImageApi
from service.forms import bentoml_text, parse_form


def multipart(fields: dict[str, str], file: bytes | None, boundary: str = "b0undary") -> tuple[dict, bytes]:
    """(an ASGI scope with the Content-Type header, the body)."""
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    if file is not None:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
                     f"Content-Type: image/png\r\n\r\n".encode() + file + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    scope = {"type": "http", "headers": [(b"content-type", f"multipart/form-data; boundary={boundary}".encode()),
                                          (b"content-length", str(len(body)).encode())]}
    return scope, body


@pytest.mark.anyio
@pytest.mark.parametrize("in_memory", [True, False])
async def test_parse_form_keeps_a_big_upload_in_memory_only_when_asked(in_memory):
    data = os.urandom(3 * 1024 * 1024)  # over starlette's 1 MiB spool: it would be written to a temporary file
    scope, body = multipart({"model": "x"}, data)
    form = await parse_form(scope, body, in_memory=in_memory)
    try:
        upload = form["image"]
        assert upload.file._rolled is not in_memory  # SpooledTemporaryFile: rolled over = on disk
        assert await upload.read() == data and form["model"] == "x"
    finally:
        await form.close()


def test_text_fields_are_json_decoded_as_bentoml_does():
    assert bentoml_text("2") == 2 and bentoml_text("2.5") == 2.5 and bentoml_text("jpeg") == "jpeg"
    assert bentoml_text('{"a": 1}') == {"a": 1} and bentoml_text("") == ""


@pytest.fixture(scope="module")
def direct():
    from service.service import Ganforge

    return DirectImageApi("ganforge", lambda: None, {n: a.input_spec for n, a in Ganforge.apis.items()})


@pytest.mark.anyio
async def test_arguments_are_the_apis_validated_fields_and_the_upload_bytes(direct):
    data = b"\x89PNG not really"
    scope, body = multipart({"model": "1", "scale": "2", "format": "webp", "quality": "70"}, data)
    form = await parse_form(scope, body, in_memory=True)
    kwargs = direct.arguments("upscale", form)
    # model "1" arrives as int 1 (JSON-decoded) and the API's own validator makes it text again
    assert kwargs == {"image": data, "model": "1", "scale": 2.0, "format": "webp", "quality": 70}
    scope, body = multipart({"direction": "a2b"}, data)
    assert direct.arguments("translate", await parse_form(scope, body, in_memory=True)) == \
        {"image": data, "model": None, "direction": "a2b", "format": None, "quality": None}


@pytest.mark.anyio
@pytest.mark.parametrize("fields, file", [({"scale": "abc"}, b"x"), ({"quality": "[1]"}, b"x"), ({"model": "m"}, None)])
async def test_what_does_not_validate_goes_on_to_bentoml(direct, fields, file):
    """None: the middleware hands the request to BentoML, whose refusal (in this service's error shape) stays
    word for word what it was."""
    scope, body = multipart(fields, file)
    assert direct.arguments("upscale", await parse_form(scope, body, in_memory=True)) is None


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
@pytest.mark.parametrize("case", ["sync image", "async image", "video", "bad shape"])
async def test_the_middleware_hands_a_sync_image_its_parsed_form(case, monkeypatch):
    """A sync image request goes to the direct answer with the form the check parsed (open, the upload in
    memory), not to BentoML's app; a job, a video or a refused body never reaches it."""
    from service.config import Settings
    from service.middleware import GanforgeMiddleware

    calls: list[tuple[str, object]] = []

    async def bentoml_app(scope, receive, send):
        calls.append(("bentoml", None))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def direct(scope, form, fallback, receive, send):
        upload = form["image"]
        upload.file.seek(0)
        calls.append(("direct", (upload.file.read(), upload.file._rolled, form["model"])))
        await fallback(scope, receive, send)

    data = os.urandom(2 * 1024 * 1024)  # over starlette's 1 MiB spool
    scope, body = multipart({"model": "m"}, data)
    if case == "video":
        body = body.replace(b'name="image"', b'name="video"')
    if case == "bad shape":
        body = body.replace(b'name="image"', b'name="picture"')
    scope.update(method="POST", path="/upscale", query_string=b"")
    if case == "async image":
        scope["headers"].append((b"prefer", b"respond-async"))
    submitted = []

    async def fake_submit(scope, body):
        submitted.append(len(body))
        return JSONResponse({"id": "x"}, 202)

    import service.middleware as middleware
    monkeypatch.setattr(middleware.jobs, "submit", fake_submit)
    messages, sent = [], False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message):
        messages.append(message)

    await GanforgeMiddleware(bentoml_app, Settings(max_upload_bytes=8 * 1024 * 1024, metrics=False),
                             direct=direct)(scope, receive, send)
    status = messages[0]["status"]
    if case == "sync image":
        assert calls == [("direct", (data, False, "m")), ("bentoml", None)] and status == 200
    elif case in ("async image", "video"):
        assert calls == [] and submitted == [len(body)] and status == 202
    else:
        assert calls == [] and status == 400
