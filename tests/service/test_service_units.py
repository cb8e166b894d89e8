"""Service building blocks without HTTP: decoding, pixel mapping, tiling, cards, settings, no torch."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image, ImageFile

from core import imaging
from service.imaging import decode_image as service_decode
from service.config import Settings, SettingsError
from service.errors import ApiError
from core.loading import load_model
from service.registry import ModelRegistry
from core.tiling import tile_and_blend
from service_fixtures import animated_gif, encode, png_claiming_size, synthetic_photo, write_fixture_models

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")


@pytest.fixture(scope="module")
def svc_unit_models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("svc_unit_models")
    write_fixture_models(root)
    return root


def cpu_settings(models_dir: Path, **kw) -> Settings:
    return Settings(models_dir=models_dir, device="cpu", **kw)


# ---------------------------------------------------------------- torch-free


def test_serving_path_never_imports_torch(svc_unit_models):
    """Import the service, build the app, serve one request of each kind: torch must stay out."""
    script = f"""
import os, sys, io
os.environ["GANFORGE_MODELS_DIR"] = {str(svc_unit_models)!r}
os.environ["GANFORGE_DEVICE"] = "cpu"
import service.service
from service.service import Ganforge
from starlette.testclient import TestClient
from PIL import Image
png = io.BytesIO(); Image.new("RGB", (20, 12), (10, 200, 30)).save(png, "PNG")
with TestClient(Ganforge.to_asgi()) as c:
    assert c.post("/generate", json={{"seed": 1}}).status_code == 200
    assert c.post("/upscale", files={{"image": ("a.png", png.getvalue())}}).status_code == 200
    assert c.post("/translate", files={{"image": ("a.png", png.getvalue())}}, data={{"model": "shoe2boot"}}).status_code == 200
    assert c.get("/models").status_code == 200
bad = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
print("TORCH_MODULES", bad)
sys.exit(1 if bad else 0)
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "TORCH_MODULES []" in proc.stdout


# ---------------------------------------------------------------- settings


def test_settings_defaults_and_env():
    s = Settings.from_env({})
    assert s.models_dir == REPO / "models"
    assert (s.max_upload_bytes, s.max_n, s.device, s.auth_token) == (20 * 1024 * 1024, 64, "auto", None)
    s = Settings.from_env({"GANFORGE_MAX_N": "8", "GANFORGE_DEVICE": "CPU", "GANFORGE_AUTH_TOKEN": "t"})
    assert (s.max_n, s.device, s.auth_token) == (8, "cpu", "t")
    for bad in ({"GANFORGE_MAX_N": "zero"}, {"GANFORGE_MAX_N": "0"}, {"GANFORGE_DEVICE": "tpu"}):
        with pytest.raises(SettingsError):
            Settings.from_env(bad)


# ---------------------------------------------------------------- decoding


def _decode(data: bytes, limit: int = 4096 * 4096) -> imaging.DecodedImage:
    return service_decode(data, limit)


def _status(data: bytes, limit: int = 4096 * 4096) -> int:
    with pytest.raises(ApiError) as info:
        _decode(data, limit)
    return info.value.status


def test_decompression_bomb_refused_from_header(monkeypatch):
    bomb = png_claiming_size(30000, 30000)
    assert len(bomb) < 100

    def never(self):  # the pixel check must come before any decoding
        raise AssertionError("load() was called on a decompression bomb")

    monkeypatch.setattr(ImageFile.ImageFile, "load", never)
    with pytest.raises(ApiError) as info:
        _decode(bomb)
    assert info.value.status == 413
    assert "pixels" in info.value.message


def test_pixel_limit_is_ours_not_pillows():
    img = encode(Image.new("RGB", (100, 100)))
    assert _status(img, limit=100 * 99) == 413
    assert _decode(img, limit=100 * 100).pixels.shape == (100, 100, 3)


@pytest.mark.parametrize(
    "data, status",
    [
        (b"", 400),
        (b"this is not an image at all", 400),
        (encode(Image.fromarray(synthetic_photo(64, 48)))[:300], 400),  # truncated PNG
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", 400),  # EPS: plugin not allowed
    ],
    ids=["empty", "garbage", "truncated-png", "eps"],
)
def test_bad_bytes(data, status):
    assert _status(data) == status


def test_animated_gif_refused():
    buf = io.BytesIO()
    animated_gif(buf)
    assert Image.open(io.BytesIO(buf.getvalue())).n_frames == 3
    assert _status(buf.getvalue()) == 400


def test_single_frame_gif_ok():
    assert _decode(encode(Image.new("P", (16, 16), 3), "GIF")).pixels.shape == (16, 16, 3)


def test_modes_to_arrays():
    rgb = synthetic_photo(33, 21)
    # L
    d = _decode(encode(Image.fromarray(rgb).convert("L")))
    assert d.gray and d.alpha is None
    # LA
    la = Image.fromarray(rgb).convert("LA")
    d = _decode(encode(la))
    assert d.gray and d.alpha is not None
    # P with transparency
    p = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    d = _decode(encode(p, transparency=0))
    assert not d.gray and d.alpha is not None and (d.alpha == 0).any() and (d.alpha == 255).any()
    # RGBA keeps alpha exactly
    alpha = np.tile(np.linspace(0, 255, 33).astype(np.uint8), (21, 1))
    d = _decode(encode(Image.fromarray(np.dstack([rgb, alpha]), "RGBA")))
    assert np.array_equal(d.alpha, alpha) and np.array_equal(d.pixels, rgb)
    # CMYK JPEG
    d = _decode(encode(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95))
    assert d.pixels.shape == (21, 33, 3)
    # 1-bit
    d = _decode(encode(Image.fromarray(rgb).convert("1")))
    assert d.gray and set(np.unique(d.pixels)) <= {0, 255}


def test_sixteen_bit_png_maps_to_eight_bit():
    values = np.array([[0, 200, 257, 32896, 65535]], dtype=np.uint16)  # 200 -> 0.78 -> 1 (rounded, not truncated)
    img = Image.fromarray(values)
    assert img.mode.startswith("I;16")
    d = _decode(encode(img))
    assert d.gray and d.pixels[..., 0].tolist() == [[0, 1, 1, 128, 255]]


def test_exif_orientation_applied():
    img = Image.fromarray(synthetic_photo(40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    d = _decode(encode(img, "JPEG", exif=exif.tobytes()))
    assert d.pixels.shape[:2] == (40, 20)


# ---------------------------------------------------------------- pixel mapping, padding, encoding


def test_pixel_mapping_round_trips():
    px = np.arange(256, dtype=np.uint8).reshape(16, 16, 1)
    for rng in ((-1.0, 1.0), (0.0, 1.0), (1.0, -1.0)):
        x = imaging.to_float(px, rng)
        assert x.shape == (1, 16, 16)
        assert x[0, 0, 0] == pytest.approx(rng[0]) and x[0, -1, -1] == pytest.approx(rng[1])
        assert np.array_equal(imaging.to_pixels(x, rng), px)
    assert imaging.to_pixels(np.array([[[np.nan, 5.0, -5.0]]]), (-1, 1)).ravel().tolist() == [0, 255, 0]


def test_to_float_is_lo_plus_pixel_times_step_in_float32():
    """Bit for bit float32(lo + float32(float32(p) * float32((hi - lo) / 255))), [C, H, W] and C-contiguous."""
    p = np.random.default_rng(3).integers(0, 256, (9, 13, 3), dtype=np.uint8)
    for lo, hi in ((-1.0, 1.0), (0.0, 1.0), (1.0, -1.0), (-0.5, 2.0)):
        step = np.float32((hi - lo) / 255.0)
        want = (np.float32(lo) + p.astype(np.float32) * step).astype(np.float32).transpose(2, 0, 1)
        got = imaging.to_float(p, (lo, hi))
        assert got.flags.c_contiguous and got.dtype == np.float32
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_to_pixels_is_the_rounding_formula_in_hwc_order():
    """Every value, specials included, maps as round((y - lo) / (hi - lo) * 255) clipped, NaN -> 0; the
    answer is [H, W, C] and C-contiguous (the encoders take it without another copy), from a view too."""
    rng = np.random.default_rng(5)
    y = (rng.standard_normal((3, 17, 23)) * 0.8).astype(np.float32)
    y.flat[:6] = [np.nan, np.inf, -np.inf, 1e30, -1e30, 0.5 / 127.5 - 1]  # the last: a tie, rounds to even
    for lo, hi in ((-1.0, 1.0), (0.0, 1.0)):
        want = np.nan_to_num(np.clip(np.rint((y.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo))),
                                     0, 255), nan=0.0).astype(np.uint8).transpose(1, 2, 0)
        got = imaging.to_pixels(y, (lo, hi))
        assert got.flags.c_contiguous and np.array_equal(got, want)
        assert np.array_equal(imaging.to_pixels(y[:, 2:9, 3:], (lo, hi)), want[2:9, 3:])


def test_pad_to_reflects_and_handles_one_pixel():
    x = np.arange(12, dtype=np.float32).reshape(1, 1, 3, 4)
    p = imaging.pad_to(x, 8, 8)
    assert p.shape == (1, 1, 8, 8)
    assert np.array_equal(p[..., :3, :4], x)
    assert p[0, 0, 0, 4] == x[0, 0, 0, 2]  # reflect, not edge
    one = imaging.pad_to(np.full((1, 3, 1, 1), 0.5, np.float32), 4, 8)
    assert one.shape == (1, 3, 8, 8) and np.all(one == 0.5)


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_encode_formats(fmt):
    rgb = synthetic_photo(30, 20)
    alpha = np.full((20, 30), 128, np.uint8)
    data = imaging.encode_image(rgb, alpha, fmt, 90)
    img = Image.open(io.BytesIO(data))
    assert img.format == {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt]
    assert img.size == (30, 20)
    assert ("A" in img.getbands()) == (fmt != "jpeg")


def test_grid_layout():
    imgs = np.stack([np.full((4, 5, 1), i, np.uint8) for i in range(5)])
    grid = imaging.make_grid(imgs)
    assert grid.shape == (8, 15, 1)  # 3 columns, 2 rows
    assert grid[4, 5, 0] == 4 and grid[4, 10, 0] == 0  # 5th image at (1, 1), last cell empty


# ---------------------------------------------------------------- tiling


def test_upscale_tiled_matches_untiled(svc_unit_models):
    """The fixture x4 model (3x3 conv: 1 px of context) tiled at 64/8 vs one pass.

    Bound: only a tile's outermost input pixel sees padding instead of real
    context, and it lies inside the dead margin (8 // 4 = 2 input pixels)
    where its weight is RAMP_FLOOR = 1e-4 against >= 1 for the neighbour
    tile that sees the real context. Outputs live in [-1, 1], so the blended
    error is <= 2e-4 plus float noise: assert < 1e-3 (~0.13 grey level; at
    most 1 level after rounding). Measured (printed): ~4e-5.
    A seam would show as >= 0.03 (that is what a plain linear ramp without
    the dead margin measured here).
    """
    settings = cpu_settings(svc_unit_models, tile=64, tile_overlap=8)
    model = load_model(svc_unit_models / "srresnet-x4", settings, ["CPUExecutionProvider"])
    assert model.ready
    from core import pipelines as inference

    pixels = synthetic_photo(150, 130, seed=5)
    x = imaging.to_float(pixels, model.image_spec.in_range)
    run = inference.image_runner(model, "generator")
    tiled = tile_and_blend(run, x, 64, 8, 4)
    untiled = run(x[None])[0]
    diff = np.abs(tiled - untiled)
    levels = np.abs(imaging.to_pixels(tiled, (-1, 1)).astype(int) - imaging.to_pixels(untiled, (-1, 1)).astype(int))
    print(f"\ntiled vs untiled (150x130 -> x4, tile 64, overlap 8): max abs {diff.max():.2e} "
          f"(range [-1, 1]), mean {diff.mean():.2e}, max {levels.max()} grey level(s)")
    assert tiled.shape == untiled.shape == (3, 520, 600)
    assert diff.max() < 1e-3
    assert levels.max() <= 1


# ---------------------------------------------------------------- cards and registry


def _copy_models(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_registry_loads_fixtures_on_cpu(svc_unit_models):
    reg = ModelRegistry.load(cpu_settings(svc_unit_models))
    assert sorted(reg.models) == ["edges2color", "fashion-dcgan", "shoe2boot", "srresnet-x4"]
    # GANFORGE_BACKEND auto on the CPU: OpenVINO (tests/core/test_backends.py); device CPU either way
    assert all(m.ready and m.device == "cpu" and m.provider in ("CPUExecutionProvider", "OpenVINO:CPU")
               for m in reg.models.values())
    assert reg.get("shoe2boot").directions == ("a2b", "b2a")
    assert reg.device == "cpu"


def test_auto_device_reports_what_runs(svc_unit_models):
    reg = ModelRegistry.load(Settings(models_dir=svc_unit_models, device="auto", autotune_budget_s=0.0))
    has_cuda = reg.device == "cuda"
    for m in reg.models.values():
        assert m.provider == ("CUDAExecutionProvider" if has_cuda else "OpenVINO:CPU")  # auto: OpenVINO on the CPU
        assert m.provider == m.sessions[next(iter(m.sessions))].get_providers()[0]


def test_device_cuda_refuses_without_gpu(svc_unit_models):
    probe = ModelRegistry.load(Settings(models_dir=svc_unit_models, device="auto"))
    if probe.device == "cuda":
        pytest.skip("a GPU is present here")
    with pytest.raises(RuntimeError, match="GANFORGE_DEVICE=cuda"):
        ModelRegistry.load(Settings(models_dir=svc_unit_models, device="cuda"))


def test_bad_models_are_unavailable_with_reasons(svc_unit_models, tmp_path):
    root = _copy_models(svc_unit_models, tmp_path / "models")
    # corrupt one byte of the upscaler
    onnx_path = root / "srresnet-x4" / "generator.onnx"
    data = bytearray(onnx_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx_path.write_bytes(bytes(data))
    # a card that points outside its folder
    card = json.loads((root / "edges2color" / "card.json").read_text())
    card["files"]["generator"]["path"] = "../srresnet-x4/generator.onnx"
    (root / "edges2color" / "card.json").write_text(json.dumps(card))
    # a folder without a card, a dot-folder (never served), a bad name (skipped)
    (root / "empty-model").mkdir()
    _copy_models(svc_unit_models / "shoe2boot", root / ".shoe2boot.prev")
    _copy_models(svc_unit_models / "shoe2boot", root / "Bad_Name")

    reg = ModelRegistry.load(cpu_settings(root))
    assert sorted(reg.models) == ["edges2color", "empty-model", "fashion-dcgan", "shoe2boot", "srresnet-x4"]
    sr = reg.get("srresnet-x4")
    assert sr.status == "unavailable" and "sha256 mismatch" in sr.reason and str(root) not in sr.reason
    assert "plain file name" in reg.get("edges2color").reason
    assert "card.json is missing" in reg.get("empty-model").reason
    assert reg.get("fashion-dcgan").ready and reg.get("shoe2boot").ready
    with pytest.raises(ApiError) as info:
        reg.pick("upscale", None)
    assert info.value.status == 503
    for name in ("../srresnet-x4", "srresnet-x4/../x", "/etc/passwd", ".shoe2boot.prev", "Bad_Name"):
        with pytest.raises(ApiError) as info:
            reg.pick("translate", name)
        assert info.value.status == 404


def test_card_graph_must_match_onnx(svc_unit_models, tmp_path):
    root = _copy_models(svc_unit_models, tmp_path / "models")
    card = json.loads((root / "srresnet-x4" / "card.json").read_text())
    card["graph"]["inputs"][0]["name"] = "lr"
    (root / "srresnet-x4" / "card.json").write_text(json.dumps(card))
    m = load_model(root / "srresnet-x4", cpu_settings(root), ["CPUExecutionProvider"])
    assert m.status == "unavailable" and "the card says" in m.reason


def test_missing_models_dir_serves_nothing(tmp_path):
    reg = ModelRegistry.load(cpu_settings(tmp_path / "nope"))
    assert reg.describe()["models"] == []


def test_onnxruntime_is_the_real_thing():
    assert "CPUExecutionProvider" in ort.get_available_providers()


def test_tile_follows_the_card(svc_unit_models):
    reg = ModelRegistry.load(cpu_settings(svc_unit_models, tile=100))
    assert reg.get("srresnet-x4").image_spec.tile == 100
    assert reg.get("edges2color").image_spec.tile == 96  # rounded down to multiple_of 8
    assert reg.get("shoe2boot").image_spec.tile == 100  # >= native 28: never tiled
    small = ModelRegistry.load(cpu_settings(svc_unit_models, tile=8))
    assert small.get("shoe2boot").image_spec.tile == 28
    assert small.get("edges2color").image_spec.overlap <= 4  # at most half a tile
