"""Bad input at scale (issue 7): hypothesis-generated image files and parameters, and
schemathesis against the service's own OpenAPI (/docs.json), in process on the fixture models.

The property everywhere: every answer is 200 with an image, or a documented error status
with the JSON body {"error", "status"} and no stack trace or file path; never a 500; and the
service still serves afterwards.
"""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from service_fixtures import REPO, png_claiming_size, service_client, write_fixture_models

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")

DOCUMENTED = {400, 401, 404, 405, 413, 415, 422, 429, 503}
FUZZ = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much,
                                       HealthCheck.too_slow])
MODES = ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "I", "I;16", "I;16B", "F"]
FORMATS = ["PNG", "JPEG", "WEBP", "GIF", "TIFF", "BMP"]


@pytest.fixture(scope="module")
def fuzz_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz_models")
    write_fixture_models(root)
    return root


@pytest.fixture(scope="module")
def client(fuzz_models):
    with service_client(fuzz_models, GANFORGE_MAX_UPLOAD_BYTES=str(2 * 1024 * 1024),
                        GANFORGE_MAX_INPUT_PIXELS=str(512 * 512)) as c:
        yield c


def check_answer(resp, root) -> None:
    status = resp.status_code
    assert status == 200 or status in DOCUMENTED, (status, resp.text[:300])
    if status == 200:
        assert resp.headers["content-type"].startswith("image/")
        Image.open(io.BytesIO(resp.content)).load()
        return
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    body = resp.json()
    assert set(body) == {"error", "status"} and body["status"] == status, body
    text = body["error"]
    assert isinstance(text, str) and text
    for leak in ("Traceback", "File \"", str(REPO), str(root), "/tmp/", "site-packages"):
        assert leak not in text, text


def still_serving(client) -> None:
    assert client.get("/readyz").status_code == 200
    assert client.post("/generate", json={"seed": 1}).status_code == 200


# ---------------------------------------------------------------- images


@st.composite
def image_files(draw) -> bytes:
    """A real encoded image in a random mode, size and format, then maybe mutated."""
    fmt = draw(st.sampled_from(FORMATS))
    mode = draw(st.sampled_from(MODES))
    w = draw(st.one_of(st.integers(1, 64), st.sampled_from([1, 2, 3, 7, 300])))
    h = draw(st.one_of(st.integers(1, 64), st.sampled_from([1, 2, 3, 5, 1])))
    seed = draw(st.integers(0, 2**16))
    rgb = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))
    try:
        image = rgb.convert(mode)
        buf = io.BytesIO()
        image.save(buf, format=fmt)
        data = buf.getvalue()
    except (OSError, ValueError, KeyError, TypeError):
        data = None
    if data is None:  # this mode cannot be written in this format: an RGB file of that format
        buf = io.BytesIO()
        rgb.save(buf, format=fmt)
        data = buf.getvalue()
    mutation = draw(st.sampled_from(["none", "truncate", "flip", "garbage-body", "header-only"]))
    if mutation == "truncate":
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
    elif mutation == "flip":
        raw = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            raw[draw(st.integers(0, len(raw) - 1))] ^= draw(st.integers(1, 255))
        data = bytes(raw)
    elif mutation == "garbage-body":
        keep = min(len(data), draw(st.integers(8, 64)))
        data = data[:keep] + draw(st.binary(min_size=0, max_size=512))
    elif mutation == "header-only":
        data = data[: min(len(data), 16)]
    return data


@st.composite
def huge_claims(draw) -> bytes:
    """A PNG header claiming an extreme size (decompression-bomb shape) with a tiny body."""
    w = draw(st.sampled_from([0, 1, 2**16, 2**20, 2**31 - 1, 2**32 - 1]))
    h = draw(st.sampled_from([0, 1, 600, 2**16, 2**31 - 1]))
    return png_claiming_size(w, h)


fields = st.fixed_dictionaries({}, optional={
    "model": st.one_of(st.sampled_from(["srresnet-x4", "edges2color", "shoe2boot", "fashion-dcgan", "../x", ""]),
                       st.text(max_size=20)),
    "scale": st.one_of(st.integers(-5, 10).map(str), st.sampled_from(["nan", "inf", "-0", "1e400", "x", "2.5"])),
    "direction": st.one_of(st.sampled_from(["a2b", "b2a", "up"]), st.text(max_size=8)),
    "format": st.one_of(st.sampled_from(["png", "jpeg", "jpg", "webp", "gif", "PNG"]), st.text(max_size=8)),
    "quality": st.one_of(st.integers(-10, 200).map(str), st.text(max_size=6)),
})


@FUZZ
@given(data=st.one_of(image_files(), huge_claims(), st.binary(max_size=256)), route=st.sampled_from(["/upscale", "/translate"]),
       form=fields)
def test_random_and_mutated_images(client, fuzz_models, data, route, form):
    form = {k: v for k, v in form.items() if "\x00" not in v}
    resp = client.post(route, files={"image": ("in.bin", data, "application/octet-stream")}, data=form)
    check_answer(resp, fuzz_models)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)
generate_bodies = st.fixed_dictionaries({}, optional={
    "model": st.one_of(st.sampled_from(["fashion-dcgan", "srresnet-x4", "nope"]), json_values),
    "label": st.one_of(st.integers(-3, 12), st.sampled_from(["Sneaker", "bag", "Unicorn"]), json_values),
    "n": st.one_of(st.integers(-2, 80), json_values),
    "seed": st.one_of(st.integers(-1, 2**64), json_values),
    "latent": st.one_of(st.lists(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), max_size=17), max_size=3), json_values),
    "interpolate": st.one_of(st.fixed_dictionaries({"seeds": st.lists(st.integers(-1, 10), max_size=3),
                                                    "steps": st.integers(-1, 70)}), json_values),
    "format": st.one_of(st.sampled_from(["png", "jpeg", "webp", "bmp"]), json_values),
    "quality": st.one_of(st.integers(-5, 120), json_values),
})


@FUZZ
@given(body=st.one_of(generate_bodies, json_values))
def test_random_generate_parameters(client, fuzz_models, body):
    check_answer(client.post("/generate", json=body), fuzz_models)


@FUZZ
@given(raw=st.binary(max_size=300), ctype=st.sampled_from(["application/json", "multipart/form-data; boundary=x",
                                                             "multipart/form-data", "text/plain", ""]),
       route=st.sampled_from(["/generate", "/translate", "/upscale"]))
def test_random_bodies_and_content_types(client, fuzz_models, raw, ctype, route):
    check_answer(client.post(route, content=raw, headers={"Content-Type": ctype}), fuzz_models)


@pytest.mark.parametrize("raw", [b'{"latent": [[NaN, 1]]}', b'{"seed": Infinity}', b'{"n": -Infinity}',
                                 b'{"latent": [[1e999]]}', b'{"quality": NaN}', b'{"n": 1e400}'])
def test_non_finite_json_numbers(client, fuzz_models, raw):
    resp = client.post("/generate", content=raw, headers={"Content-Type": "application/json"})
    assert resp.status_code in (400, 422), resp.text
    check_answer(resp, fuzz_models)


def test_still_serving_after_the_fuzzing(client):
    still_serving(client)


# ---------------------------------------------------------------- schemathesis on /docs.json


@pytest.fixture(scope="module")
def openapi(client):
    import schemathesis

    spec = client.get("/docs.json").json()
    assert {"/generate", "/translate", "/upscale"} <= set(spec["paths"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return schemathesis.openapi.from_dict(spec)


def _as_bytes(value) -> bytes:
    if isinstance(value, bytes):
        return value
    return value.encode() if isinstance(value, str) else json.dumps(value).encode()


@pytest.mark.parametrize("path", ["/generate", "/translate", "/upscale"])
def test_schemathesis_openapi_operations(client, fuzz_models, openapi, path):
    """Positive and negative cases generated from the documented schema of each operation."""
    operation = openapi[path]["POST"]
    seen: set[int] = set()

    @settings(max_examples=60, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def run(case):
        kwargs = case.as_transport_kwargs(base_url="http://testserver")
        kwargs.pop("allow_redirects", None)
        kwargs.pop("verify", None)
        method, url = kwargs.pop("method"), kwargs.pop("url")
        files = kwargs.get("files")
        if isinstance(files, list):  # requests-style [(field, value)]: httpx wants (name, bytes) per file
            kwargs["files"] = [(k, (v[0] or "f", _as_bytes(v[1]), *v[2:]) if isinstance(v, tuple) else ("f", _as_bytes(v)))
                               for k, v in files]
        resp = client.request(method, url, **kwargs)
        seen.add(resp.status_code)
        check_answer(resp, fuzz_models)

    run()
    assert seen, "schemathesis generated no case"
    still_serving(client)
