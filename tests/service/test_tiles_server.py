"""The measured tile over HTTP (issue 28): a real `bentoml serve` with the autotune budget on shows each tiled
model's curve in /models, runs a big upscale in the tiles its curve plans (the job's `total` is that plan's
tile count), and answers it at the right size; with GANFORGE_TILE set by hand nothing is measured."""

from __future__ import annotations

import io
import time

import httpx
import pytest
from PIL import Image
from service_fixtures import encode, running_server, synthetic_photo, write_fixture_models

from core.loading import ImageSpec
from core.tiling import tile_grid

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tile_models")
    write_fixture_models(root)
    return root


def spec_of(entry: dict) -> ImageSpec:
    """The served ImageSpec, rebuilt from /models (the card's blocks and the measured `tiles`)."""
    tiles, card_in = entry["tiles"], entry["input"]
    curve = tuple((r["edge"], r["ms"] / 1e3 / r["edge"] ** 2) for r in tiles.get("rows", []))
    return ImageSpec(input_name="x", output_name="y", in_channels=card_in["channels"], in_range=tuple(card_in["range"]),
                     multiple_of=card_in["multiple_of"], min_size=card_in["min_size"], native_size=None,
                     out_channels=3, out_range=(-1.0, 1.0), scale=entry["output"]["scale"], tile=tiles["tile"],
                     overlap=tiles["overlap"], tile_curve=curve)


def test_the_curve_is_measured_shown_and_planned(models, tmp_path):
    with running_server(models, tmp_path, GANFORGE_DEVICE="cpu", GANFORGE_AUTOTUNE_BUDGET_S="1",
                        GANFORGE_AUTOTUNE_DIR=str(tmp_path / "tuned")) as (base, _), \
            httpx.Client(base_url=base, timeout=120) as http:
        entry = next(m for m in http.get("/models").json()["models"] if m["name"] == "srresnet-x4")
        tiles = entry["tiles"]
        assert tiles["source"] == "measured" and len(tiles["rows"]) >= 2, tiles
        assert tiles["tile"] in [r["edge"] for r in tiles["rows"]] and tiles["card_tile"] == entry["tiling"]["tile"]
        assert all(r["ms"] > 0 and r["s_per_covered_mpx"] >= r["s_per_output_mpx"] for r in tiles["rows"])
        spec = spec_of(entry)
        height, width = 150, 410  # wider than any measured tile: tiled
        ys, xs, _, _ = tile_grid(height, width, spec.tile_for(height, width), spec.overlap)
        body = encode(Image.fromarray(synthetic_photo(width, height, seed=3)))
        r = http.post("/upscale", files={"image": ("a.png", body, "image/png")}, data={"model": "srresnet-x4"},
                      headers={"Prefer": "respond-async"})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        deadline = time.monotonic() + 60
        while (job := http.get(f"/jobs/{job_id}", headers={"Prefer": "wait=5"}).json())["status"] != "succeeded":
            assert job["status"] in ("queued", "running") and time.monotonic() < deadline, job
        assert job["total"] == len(ys) * len(xs)  # the planned tiles, not the card's square grid
        out = Image.open(io.BytesIO(http.get(f"/jobs/{job_id}/result").content))
        assert out.size == (width * 4, height * 4)


def test_a_tile_set_by_hand_measures_nothing(models, tmp_path):
    with running_server(models, tmp_path, GANFORGE_DEVICE="cpu", GANFORGE_AUTOTUNE_BUDGET_S="1", GANFORGE_TILE="64",
                        GANFORGE_AUTOTUNE_DIR=str(tmp_path / "tuned")) as (base, _):
        entry = next(m for m in httpx.get(f"{base}/models").json()["models"] if m["name"] == "srresnet-x4")
    assert entry["tiles"] == {"tile": 64, "overlap": entry["tiles"]["overlap"], "skipped": "GANFORGE_TILE=64 set by hand"}
    assert not (tmp_path / "tuned" / "srresnet-x4.tiles.json").exists()
