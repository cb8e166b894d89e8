"""The HTTP API in process: Ganforge.to_asgi() + Starlette TestClient, fixture models from tests/service_fixtures.py."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from core import imaging
from service_fixtures import (
    animated_gif,
    encode,
    png_claiming_size,
    service_client,
    synthetic_photo,
    write_fixture_models,
)

UPLOAD_LIMIT = 2 * 1024 * 1024

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")


@pytest.fixture(scope="module")
def svc_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("svc_api_models")
    write_fixture_models(root)
    return root


@pytest.fixture(scope="module")
def client(svc_models):
    with service_client(svc_models, GANFORGE_MAX_UPLOAD_BYTES=str(UPLOAD_LIMIT)) as c:
        yield c


def photo_png(w=48, h=36, seed=0) -> bytes:
    return encode(Image.fromarray(synthetic_photo(w, h, seed)))


def upload(client, route, data: bytes, filename="in.png", **fields):
    return client.post(route, files={"image": (filename, data, "application/octet-stream")},
                       data={k: str(v) for k, v in fields.items()})


def as_image(resp) -> Image.Image:
    assert resp.status_code == 200, resp.text
    img = Image.open(io.BytesIO(resp.content))
    img.load()
    return img


def assert_error(resp, status: int, *words: str):
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error", "status"} and body["status"] == status
    assert body["error"] and "Traceback" not in body["error"] and "/tmp" not in body["error"]
    for word in words:
        assert word.lower() in body["error"].lower(), body["error"]


def still_healthy(client):
    assert client.get("/readyz").status_code == 200
    assert as_image(client.post("/generate", json={"seed": 7})).size == (28, 28)


def reference_upscale(svc_models, pixels: np.ndarray) -> np.ndarray:
    """The fixture x4 model run directly with onnxruntime, mapped per the card."""
    sess = ort.InferenceSession(str(svc_models / "srresnet-x4" / "generator.onnx"), providers=["CPUExecutionProvider"])
    x = imaging.pad_to(imaging.to_float(pixels, (-1, 1))[None], 1, 8)
    y = sess.run(["output"], {"image": x})[0][0, :, : pixels.shape[0] * 4, : pixels.shape[1] * 4]
    return imaging.to_pixels(y, (-1, 1))


# ---------------------------------------------------------------- /models, health


def test_models_lists_cards_and_providers(client):
    resp = client.get("/models")
    assert resp.status_code == 200
    body = resp.json()
    assert body["device"] in ("cpu", "cuda")
    models = {m["name"]: m for m in body["models"]}
    assert sorted(models) == ["edges2color", "fashion-dcgan", "shoe2boot", "srresnet-x4"]
    for m in models.values():
        assert m["status"] == "ready" and m["reason"] is None
        assert m["provider"] in ("CPUExecutionProvider", "CUDAExecutionProvider", "OpenVINO:CPU")
        assert m["backend"] in ("onnxruntime", "openvino") and m["device"] in ("cpu", "cuda") and m["precision_reason"]
        assert m["version"] and m["endpoint"] in ("generate", "translate", "upscale")
    assert models["fashion-dcgan"]["classes"][7] == "Sneaker"
    assert models["shoe2boot"]["directions"] == ["a2b", "b2a"]
    assert models["srresnet-x4"]["output"]["scale"] == 4
    assert "path" not in json.dumps(models["srresnet-x4"]["files"])


def test_health_openapi(client):
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 200
    spec = client.get("/docs.json").json()
    assert {"/generate", "/translate", "/upscale"} <= set(spec["paths"])


# ---------------------------------------------------------------- /upscale


def test_upscale_is_x4_and_the_model_output(client, svc_models):
    pixels = synthetic_photo(48, 36, seed=1)
    resp = upload(client, "/upscale", encode(Image.fromarray(pixels)))
    img = as_image(resp)
    assert resp.headers["content-type"] == "image/png"
    assert img.size == (192, 144) and img.mode == "RGB"
    out = np.asarray(img)
    assert np.array_equal(out, reference_upscale(svc_models, pixels))
    nearest = np.asarray(Image.fromarray(pixels).resize((192, 144), Image.Resampling.NEAREST))
    assert np.abs(out.astype(int) - nearest.astype(int)).mean() > 5  # not the input, enlarged


def test_upscale_large_input_is_tiled_and_seamless(client, svc_models):
    pixels = synthetic_photo(150, 130, seed=2)  # > the card's 64-pixel tile
    out = np.asarray(as_image(upload(client, "/upscale", encode(Image.fromarray(pixels)))))
    assert out.shape == (520, 600, 3)
    diff = np.abs(out.astype(int) - reference_upscale(svc_models, pixels).astype(int))
    assert diff.max() <= 1


def test_upscale_smaller_scale_and_formats(client):
    img = as_image(upload(client, "/upscale", photo_png(), scale=2))
    assert img.size == (96, 72)
    assert as_image(upload(client, "/upscale", photo_png(), scale=2.5)).size == (120, 90)
    for fmt, ctype, pil in (("jpeg", "image/jpeg", "JPEG"), ("webp", "image/webp", "WEBP"), ("png", "image/png", "PNG")):
        resp = upload(client, "/upscale", photo_png(), format=fmt, quality=80)
        assert resp.headers["content-type"] == ctype
        assert as_image(resp).format == pil


def test_upscale_default_and_named_model(client):
    resp = upload(client, "/upscale", photo_png(), model="srresnet-x4")
    assert resp.headers["x-model"] == "srresnet-x4"
    assert as_image(upload(client, "/upscale", photo_png())).size == (192, 144)


# ---------------------------------------------------------------- /translate


def test_translate_pix2pix_keeps_size_and_pads_to_multiple(client):
    pixels = synthetic_photo(37, 23, seed=3)  # not multiples of 8: the graph fails unless padded
    resp = upload(client, "/translate", encode(Image.fromarray(pixels)), model="edges2color")
    img = as_image(resp)
    assert img.size == (37, 23) and img.mode == "RGB"  # 1-channel model in, 3 out
    out = np.asarray(img).astype(int)
    assert np.abs(out - pixels.astype(int)).mean() > 5


def test_translate_cyclegan_both_directions_native_size(client):
    png = photo_png(90, 60, seed=4)
    a2b = as_image(upload(client, "/translate", png, model="shoe2boot"))
    b2a = as_image(upload(client, "/translate", png, model="shoe2boot", direction="b2a"))
    a2b_explicit = as_image(upload(client, "/translate", png, model="shoe2boot", direction="a2b"))
    assert a2b.size == b2a.size == (90, 60) and a2b.mode == "L"  # fixed 28x28 graph, resized there and back
    assert np.array_equal(np.asarray(a2b), np.asarray(a2b_explicit))
    assert np.abs(np.asarray(a2b).astype(int) - np.asarray(b2a).astype(int)).mean() > 20  # a2b inverts


def test_translate_needs_model_when_several(client):
    assert_error(upload(client, "/translate", photo_png()), 400, "several translate models", "edges2color")


def test_direction_on_one_way_model(client):
    assert_error(upload(client, "/translate", photo_png(), model="edges2color", direction="b2a"), 422, "one way")


# ---------------------------------------------------------------- /generate


def test_generate_single_seeded_and_matches_the_graph(client, svc_models):
    resp = client.post("/generate", json={"label": "Sneaker", "seed": 42})
    img = as_image(resp)
    assert img.size == (28, 28) and img.mode == "L"
    assert resp.headers["x-seed"] == "42" and resp.headers["x-labels"] == "7"
    z = np.random.default_rng(42).standard_normal((1, 16), dtype=np.float32)
    sess = ort.InferenceSession(str(svc_models / "fashion-dcgan" / "generator.onnx"), providers=["CPUExecutionProvider"])
    ref = imaging.to_pixels(sess.run(["output"], {"z": z, "label": np.array([7])})[0][0], (-1, 1))[..., 0]
    assert np.array_equal(np.asarray(img), ref)
    again = client.post("/generate", json={"label": 7, "seed": 42})
    assert again.content == resp.content


def test_generate_seed_echo_reproduces(client):
    first = client.post("/generate", json={"label": "Bag"})
    seed = first.headers["x-seed"]
    assert seed.isdigit()
    assert client.post("/generate", json={"label": "Bag", "seed": int(seed)}).content == first.content
    assert client.post("/generate", json={"label": "Bag", "seed": int(seed) + 1}).content != first.content


@pytest.mark.parametrize("n, size", [(2, (56, 28)), (4, (56, 56)), (5, (84, 56)), (64, (224, 224))])
def test_generate_grid(client, n, size):
    resp = client.post("/generate", json={"n": n, "seed": 1, "label": "coat"})
    assert as_image(resp).size == size
    assert resp.headers["x-labels"] == ",".join(["4"] * n)


def test_generate_random_labels_without_label(client):
    resp = client.post("/generate", json={"n": 16, "seed": 3})
    labels = [int(v) for v in resp.headers["x-labels"].split(",")]
    assert len(labels) == 16 and len(set(labels)) > 1 and all(0 <= v < 10 for v in labels)


def test_generate_explicit_latent(client):
    z = np.random.default_rng(5).standard_normal((2, 16)).round(4).tolist()
    resp = client.post("/generate", json={"latent": z, "label": 0, "format": "jpeg"})
    assert resp.headers["content-type"] == "image/jpeg" and "x-seed" not in resp.headers
    assert as_image(resp).size == (56, 28)
    assert client.post("/generate", json={"latent": z, "label": 0, "format": "jpeg"}).content == resp.content


def test_generate_interpolation_strip_ends_match_seeds(client):
    resp = client.post("/generate", json={"label": "Dress", "interpolate": {"seeds": [11, 12], "steps": 5}})
    strip = np.asarray(as_image(resp))
    assert strip.shape == (28, 140) and resp.headers["x-seed"] == "11,12"
    left = np.asarray(as_image(client.post("/generate", json={"label": "Dress", "seed": 11})))
    right = np.asarray(as_image(client.post("/generate", json={"label": "Dress", "seed": 12})))
    assert np.abs(strip[:, :28].astype(int) - left).max() <= 1
    assert np.abs(strip[:, -28:].astype(int) - right).max() <= 1
    assert not np.array_equal(strip[:, 56:84], left)
    # without a label the class comes from seed a's generator, as for /generate with seed a
    resp = client.post("/generate", json={"interpolate": {"seeds": [21, 22], "steps": 3}})
    single = client.post("/generate", json={"seed": 21})
    assert resp.headers["x-labels"].split(",") == single.headers["x-labels"].split(",") * 3
    assert np.abs(np.asarray(as_image(resp))[:, :28].astype(int) - np.asarray(as_image(single))).max() <= 1


# ---------------------------------------------------------------- image modes


def _rgba(w=40, h=30):
    rgb = synthetic_photo(w, h, seed=6)
    alpha = np.zeros((h, w), np.uint8)
    alpha[5:25, 8:32] = 255
    alpha[10:20, 12:28] = 100
    return rgb, alpha


def test_rgba_alpha_preserved_upscale_and_translate(client):
    rgb, alpha = _rgba()
    png = encode(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"))
    up = as_image(upload(client, "/upscale", png))
    assert up.mode == "RGBA" and up.size == (160, 120)
    expected = np.asarray(Image.fromarray(alpha).resize((160, 120), Image.Resampling.LANCZOS))
    assert np.array_equal(np.asarray(up)[..., 3], expected)
    tr = as_image(upload(client, "/translate", png, model="edges2color"))
    assert tr.mode == "RGBA" and np.array_equal(np.asarray(tr)[..., 3], alpha)
    webp = as_image(upload(client, "/upscale", png, format="webp", quality=100))
    assert "A" in webp.getbands()


@pytest.mark.parametrize("mode", ["L", "LA", "P-transparent", "RGBA", "I;16", "1", "CMYK-jpeg"])
def test_mode_matrix(client, mode):
    rgb, alpha = _rgba()
    base = Image.fromarray(rgb)
    if mode == "L":
        data, want_mode = encode(base.convert("L")), "L"
    elif mode == "LA":
        la = Image.merge("LA", (base.convert("L"), Image.fromarray(alpha)))
        data, want_mode = encode(la), "LA"
    elif mode == "P-transparent":
        data, want_mode = encode(base.convert("P", palette=Image.Palette.ADAPTIVE, colors=32), transparency=3), "RGBA"
    elif mode == "RGBA":
        data, want_mode = encode(Image.fromarray(np.dstack([rgb, alpha]), "RGBA")), "RGBA"
    elif mode == "I;16":
        sixteen = Image.fromarray((np.asarray(base.convert("L")).astype(np.uint16) * 257))
        assert sixteen.mode.startswith("I;16")
        data, want_mode = encode(sixteen), "L"
    elif mode == "1":
        data, want_mode = encode(base.convert("1")), "L"
    else:
        data, want_mode = encode(base.convert("CMYK"), "JPEG", quality=95), "RGB"
    up = as_image(upload(client, "/upscale", data))
    assert up.size == (160, 120) and up.mode == want_mode
    tr = as_image(upload(client, "/translate", data, model="shoe2boot"))
    assert tr.size == (40, 30)
    if "A" in want_mode:
        assert "A" in tr.getbands()


def test_one_by_one_image_is_served(client):
    tiny = encode(Image.new("RGB", (1, 1), (200, 30, 60)))
    assert as_image(upload(client, "/upscale", tiny)).size == (4, 4)
    assert as_image(upload(client, "/translate", tiny, model="edges2color")).size == (1, 1)
    assert as_image(upload(client, "/translate", tiny, model="shoe2boot")).size == (1, 1)


# ---------------------------------------------------------------- bad input: each a clear 4xx, then still healthy


def _gif() -> bytes:
    buf = io.BytesIO()
    animated_gif(buf)
    return buf.getvalue()


BAD_UPLOADS = [
    ("garbage", b"\x00\x01garbage" * 50, {}, 400, "decode"),
    ("truncated-png", None, {}, 400, "truncated"),
    ("empty-file", b"", {}, 400, "empty"),
    ("bomb-header", png_claiming_size(30000, 30000), {}, 413, "pixels"),
    ("animated-gif", _gif(), {}, 400, "animated"),
    ("unknown-model", None, {"model": "nope"}, 404, "unknown model"),
    ("dotdot-model", None, {"model": "../srresnet-x4"}, 404, "unknown model"),
    ("abs-path-model", None, {"model": "/etc/passwd"}, 404, "unknown model"),
    ("wrong-endpoint-model", None, {"model": "fashion-dcgan"}, 422, "generate model"),
    ("scale-above-native", None, {"scale": 8}, 422, "scale"),
    ("scale-zero", None, {"scale": 0}, 422, "scale"),
    ("bad-format", None, {"format": "gif"}, 422, "format"),
    ("bad-quality", None, {"quality": 0}, 422, "quality"),
    ("quality-not-int", None, {"quality": "high"}, 400, "quality"),
]


@pytest.mark.parametrize("name, data, fields, status, word", BAD_UPLOADS, ids=[b[0] for b in BAD_UPLOADS])
def test_bad_uploads(client, name, data, fields, status, word):
    if data is None:
        data = photo_png()[:200] if name == "truncated-png" else photo_png()
    assert_error(upload(client, "/upscale", data, **fields), status, word)
    still_healthy(client)


def test_bad_direction(client):
    assert_error(upload(client, "/translate", photo_png(), model="shoe2boot", direction="sideways"), 422, "direction")
    still_healthy(client)


BAD_GENERATE = [
    ("n-zero", {"n": 0}, 422, "n must be"),
    ("n-huge", {"n": 100000}, 422, "n must be"),
    ("n-not-int", {"n": "many"}, 400, "n:"),
    ("label-out-of-range", {"label": 10}, 422, "out of range"),
    ("label-negative", {"label": -1}, 422, "out of range"),
    ("label-unknown-name", {"label": "Spaceship"}, 422, "unknown class"),
    ("seed-negative", {"seed": -5}, 422, "seed"),
    ("unknown-model", {"model": "nope"}, 404, "unknown model"),
    ("dotdot-model", {"model": "../../etc/passwd"}, 404, "unknown model"),
    ("upscale-model", {"model": "srresnet-x4"}, 422, "upscale model"),
    ("latent-wrong-dim", {"latent": [[0.0] * 3], "label": 0}, 422, "16 numbers"),
    ("latent-and-n", {"latent": [[0.0] * 16], "n": 2, "label": 0}, 422, "latent holds"),
    ("latent-not-numbers", {"latent": [["a"] * 16]}, 400, "latent"),
    ("interp-one-seed", {"interpolate": {"seeds": [1], "steps": 3}}, 422, "two seeds"),
    ("interp-steps", {"interpolate": {"seeds": [1, 2], "steps": 1000}}, 422, "steps"),
    ("interp-and-seed", {"interpolate": {"seeds": [1, 2]}, "seed": 3}, 422, "cannot be combined"),
    ("bad-format", {"format": "bmp"}, 422, "format"),
    ("body-is-list", [1, 2], 400, "invalid request"),
]


@pytest.mark.parametrize("name, body, status, word", BAD_GENERATE, ids=[b[0] for b in BAD_GENERATE])
def test_bad_generate(client, name, body, status, word):
    assert_error(client.post("/generate", json=body), status, word)
    still_healthy(client)


def test_malformed_json(client):
    resp = client.post("/generate", content=b'{"n": 2,', headers={"Content-Type": "application/json"})
    assert_error(resp, 400, "json")
    still_healthy(client)


def test_missing_image_field(client):
    resp = client.post("/upscale", files={"picture": ("a.png", photo_png())})
    assert_error(resp, 400, "'image'")
    resp = client.post("/upscale", data={"model": "srresnet-x4"}, files={"other": ("x", b"")})
    assert_error(resp, 400, "image")


def test_image_as_text_field_is_refused_not_fetched(client):
    # BentoML would try to download a URL given as text in place of the file
    resp = client.post("/upscale", data={"image": "http://203.0.113.7/cat.png"},
                       files={"unused": ("x.txt", b"x")})
    assert_error(resp, 400)
    resp = client.post("/upscale", files={"image": (None, "http://203.0.113.7/cat.png")})
    assert_error(resp, 400, "file upload")
    still_healthy(client)


def test_malformed_multipart(client):
    resp = client.post("/upscale", content=b"--xyz\r\nnonsense", headers={"Content-Type": "multipart/form-data; boundary=xyz"})
    assert_error(resp, 400, "multipart")
    resp = client.post("/upscale", content=b"abc", headers={"Content-Type": "multipart/form-data"})
    assert_error(resp, 400, "multipart")
    still_healthy(client)


@pytest.mark.parametrize(
    "route, ctype",
    [("/upscale", "application/json"), ("/translate", "image/png"), ("/generate", "text/plain"),
     ("/generate", "multipart/form-data; boundary=x"), ("/generate", "application/vnd.bentoml+pickle"),
     ("/upscale", "application/x-www-form-urlencoded")],
)
def test_wrong_content_type(client, route, ctype):
    assert_error(client.post(route, content=b"{}", headers={"Content-Type": ctype}), 415, "content-type")
    still_healthy(client)


def test_oversize_body(client):
    big = b"\x00" * (UPLOAD_LIMIT + 1)
    assert_error(upload(client, "/upscale", big), 413, "limit")

    def chunks():  # no Content-Length: the limit holds while reading
        for _ in range(3):
            yield b"\x00" * (UPLOAD_LIMIT // 2)

    resp = client.post("/upscale", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert_error(resp, 413, "limit")
    still_healthy(client)


def test_output_pixel_limit(svc_models):
    with service_client(svc_models, GANFORGE_MAX_OUTPUT_PIXELS=str(100 * 100)) as c:
        assert_error(upload(c, "/upscale", photo_png(30, 30)), 413, "pixels")
        assert as_image(upload(c, "/upscale", photo_png(25, 25))).size == (100, 100)
        assert_error(c.post("/generate", json={"n": 25, "seed": 1}), 413, "pixels")


def test_unknown_route_and_method(client):
    assert_error(client.get("/nothing-here"), 404)
    assert_error(client.get("/upscale"), 405)
    assert_error(client.post("/models"), 405)


# ---------------------------------------------------------------- corrupt model, empty dir, auth


def test_corrupt_model_unavailable_others_serve(svc_models, tmp_path):
    root = tmp_path / "models"
    shutil.copytree(svc_models, root)
    path = root / "srresnet-x4" / "generator.onnx"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0x55
    path.write_bytes(bytes(data))
    with service_client(root) as c:
        models = {m["name"]: m for m in c.get("/models").json()["models"]}
        assert models["srresnet-x4"]["status"] == "unavailable"
        assert "sha256" in models["srresnet-x4"]["reason"] and str(root) not in models["srresnet-x4"]["reason"]
        assert models["srresnet-x4"]["provider"] is None
        assert all(models[n]["status"] == "ready" for n in ("edges2color", "fashion-dcgan", "shoe2boot"))
        assert_error(upload(c, "/upscale", photo_png()), 503, "unavailable", "sha256")
        assert as_image(upload(c, "/translate", photo_png(), model="edges2color")).size == (48, 36)
        assert c.post("/generate", json={"seed": 1}).status_code == 200


def test_empty_models_dir(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / ".gitkeep").write_text("")
    with service_client(tmp_path / "models") as c:
        assert c.get("/livez").status_code == 200
        assert c.get("/readyz").status_code == 200
        assert c.get("/models").json()["models"] == []
        assert_error(c.post("/generate", json={}), 404, "no generate model")
        assert_error(upload(c, "/upscale", photo_png()), 404, "no upscale model")


def test_bearer_token(svc_models):
    with service_client(svc_models, GANFORGE_AUTH_TOKEN="s3cret") as c:
        for path in ("/livez", "/readyz"):
            assert c.get(path).status_code == 200
        assert c.get("/metrics").status_code != 401  # open (in process BentoML's metrics are off: 404)
        resp = c.get("/models")
        assert_error(resp, 401, "token")
        assert resp.headers["www-authenticate"] == "Bearer"
        assert_error(c.get("/models", headers={"Authorization": "Bearer wrong"}), 401)
        assert_error(c.post("/generate", json={"seed": 1}), 401)
        auth = {"Authorization": "Bearer s3cret"}
        assert c.get("/models", headers=auth).status_code == 200
        assert c.post("/generate", json={"seed": 1}, headers=auth).status_code == 200
