"""The whole path: train (tiny) -> export (ONNX + card) -> service (HTTP) == the torch model.

For each family, the image the service returns is compared with the output of
the trained torch network on the same input, quantised the same way: an
exported model is served as trained, with the card alone telling the service
how to feed it.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from service_fixtures import service_client, synthetic_photo
from training import checkpoint as ckpt
from training import export as ex
from training.recipes.base import Recipe

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")

NAMES = {"dcgan": "tiny-fashion", "pix2pix": "tiny-colorize", "cyclegan": "tiny-sneaker2boot",
         "srgan": "tiny-srresnet-x4"}


@pytest.fixture(scope="module")
def exported(tiny_runs, tmp_path_factory):
    """Each family's tiny run (conftest.tiny_runs) exported under this test's names, and its torch nets."""
    models = tmp_path_factory.mktemp("e2e-models")
    nets = {}
    for family, name in NAMES.items():
        path = tiny_runs[family][-1]
        ex.export_checkpoint(ex.ExportOptions(checkpoint=path, name=name, out=models, exporter="torchscript",
                                              fp16=False), log=lambda *a: None)
        nets[family] = {role: spec.module.eval() for role, spec in
                        Recipe.from_checkpoint(ckpt.load(path)).export_specs().items()}
    return models, nets


@pytest.fixture(scope="module")
def client(exported):
    with service_client(exported[0]) as c:
        yield c


def to_pixels(y: torch.Tensor) -> np.ndarray:
    """[-1, 1] C x H x W -> uint8 H x W (x C), as the card's range says."""
    a = np.clip(np.round((y.detach().numpy() + 1) * 127.5), 0, 255).astype(np.uint8)
    return a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)


def to_input(pixels: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(pixels.astype(np.float32) / 127.5 - 1)
    return (x[None] if x.ndim == 2 else x.permute(2, 0, 1))[None]


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def served(resp) -> np.ndarray:
    assert resp.status_code == 200, resp.text
    return np.asarray(Image.open(io.BytesIO(resp.content)))


def assert_matches(got: np.ndarray, want: np.ndarray):
    assert got.shape == want.shape
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 1, f"max diff {diff.max()} grey levels"  # rounding of values on a .5 boundary


def test_models_lists_every_exported_family(client):
    body = client.get("/models").json()
    ready = {m["name"]: m for m in body["models"] if m["status"] == "ready"}
    assert set(ready) == set(NAMES.values())
    assert ready["tiny-fashion"]["classes"][7] == "Sneaker"
    assert ready["tiny-srresnet-x4"]["metrics"]["parity_max_abs"] < 1e-4


def test_generate_equals_torch(client, exported):
    G = exported[1]["dcgan"]["generator"]
    resp = client.post("/generate", json={"model": "tiny-fashion", "label": "Bag", "seed": 11})
    z = np.random.default_rng(11).standard_normal((1, G.cfg.latent_dim), dtype=np.float32)
    with torch.no_grad():
        want = to_pixels(G(torch.from_numpy(z), torch.tensor([8]))[0])
    assert resp.headers["x-seed"] == "11"
    assert_matches(served(resp), want)


def test_upscale_equals_torch(client, exported):
    G = exported[1]["srgan"]["generator"]
    pixels = synthetic_photo(30, 22, 3)  # odd sizes: multiple_of 1
    resp = client.post("/upscale", files={"image": ("in.png", png(pixels))}, data={"model": "tiny-srresnet-x4"})
    with torch.no_grad():
        want = to_pixels(G(to_input(pixels))[0])
    assert_matches(served(resp), want)


def test_translate_pix2pix_equals_torch(client, exported):
    G = exported[1]["pix2pix"]["generator"]
    gray = synthetic_photo(64, 32, 4).mean(axis=2).astype(np.uint8)  # multiple_of 32: no padding needed
    resp = client.post("/translate", files={"image": ("in.png", png(gray))}, data={"model": "tiny-colorize"})
    with torch.no_grad():
        want = to_pixels(G(to_input(gray))[0])
    assert_matches(served(resp), want)


@pytest.mark.parametrize("direction,role", [("a2b", "a2b"), ("b2a", "b2a")])
def test_translate_cyclegan_both_directions_equal_torch(client, exported, direction, role):
    G = exported[1]["cyclegan"][role]
    item = synthetic_photo(28, 28, 5).mean(axis=2).astype(np.uint8)  # the native 28x28
    resp = client.post("/translate", files={"image": ("in.png", png(item))},
                       data={"model": "tiny-sneaker2boot", "direction": direction})
    with torch.no_grad():
        want = to_pixels(G(to_input(item))[0])
    assert_matches(served(resp), want)
