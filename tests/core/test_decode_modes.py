"""One file, the same pixels in training and in serving: every image mode through training's reader
(training/data.py load_image) and through the service's upload path (service/imaging.decode_image).

Before core/imaging.py was shared, training read 16-bit images with a guess (65535 if max > 255 else 255)
and composited alpha over white, while the service divided 16-bit by 65535 and kept alpha aside: the
same file was different pixels on the two sides.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.imaging import read_image
from service.imaging import decode_image
from training.data import load_image

RNG = np.random.default_rng(3)


def _gradient(h: int = 24, w: int = 32) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 255 // (w + h - 2)], -1).astype(np.uint8)


def _sixteen_small_max() -> Image.Image:
    values = RNG.integers(0, 200, (20, 30)).astype(np.uint16)  # 16-bit samples that never exceed 255
    return Image.fromarray(values)  # uint16 -> mode I;16


def _int32() -> Image.Image:
    return Image.fromarray(RNG.integers(0, 65535, (20, 30)).astype(np.int32))


def _float() -> Image.Image:
    return Image.fromarray(RNG.uniform(0, 1, (20, 30)).astype(np.float32))


def _la() -> Image.Image:
    gray = RNG.integers(0, 256, (20, 30)).astype(np.uint8)
    alpha = RNG.integers(0, 256, (20, 30)).astype(np.uint8)
    return Image.merge("LA", [Image.fromarray(gray), Image.fromarray(alpha)])


def _palette_transparent() -> Image.Image:
    image = Image.fromarray(_gradient()).quantize(16)
    image.info["transparency"] = 3
    return image


def _rgba() -> Image.Image:
    alpha = RNG.integers(0, 256, (24, 32, 1)).astype(np.uint8)
    return Image.fromarray(np.concatenate([_gradient(), alpha], -1))


def _cmyk() -> Image.Image:
    return Image.fromarray(_gradient()).convert("CMYK")


def _exif_rotated() -> tuple[Image.Image, dict]:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    return Image.fromarray(_gradient()), {"exif": exif}


# (name, make image, format, suffix)
CASES = [
    ("I;16 with a small maximum", _sixteen_small_max, "PNG", ".png"),
    ("I (32-bit)", _int32, "TIFF", ".tif"),
    ("F (float 0..1)", _float, "TIFF", ".tif"),
    ("LA", _la, "PNG", ".png"),
    ("P with transparency", _palette_transparent, "PNG", ".png"),
    ("RGBA", _rgba, "PNG", ".png"),
    ("CMYK", _cmyk, "JPEG", ".jpg"),
    ("CMYK TIFF", _cmyk, "TIFF", ".tif"),
    ("EXIF-rotated", _exif_rotated, "JPEG", ".jpg"),
    ("RGB", lambda: Image.fromarray(_gradient()), "PNG", ".png"),
    ("L", lambda: Image.fromarray(_gradient()[..., 0]), "PNG", ".png"),
]


def _write(tmp_path: Path, name: str, make, fmt: str, suffix: str) -> Path:
    made = make()
    image, extra = made if isinstance(made, tuple) else (made, {})
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **extra)
    path = tmp_path / (name.replace(" ", "_").replace("(", "").replace(")", "").replace(";", "") + suffix)
    path.write_bytes(buffer.getvalue())
    return path


@pytest.mark.parametrize("name, make, fmt, suffix", CASES, ids=[c[0] for c in CASES])
def test_training_reader_and_service_decode_give_the_same_pixels(tmp_path, name, make, fmt, suffix):
    path = _write(tmp_path, name, make, fmt, suffix)
    served = decode_image(path.read_bytes(), 4096 * 4096)  # what a request with this file decodes to
    mode = "L" if served.gray else "RGB"
    trained = np.asarray(load_image(path, mode))
    if trained.ndim == 2:
        trained = trained[..., None]
    assert trained.dtype == np.uint8 and served.pixels.dtype == np.uint8
    assert trained.shape == served.pixels.shape, name
    assert np.array_equal(trained, served.pixels), name
    assert np.array_equal(read_image(path).pixels, served.pixels)  # the core reader is that very decoder


def test_sixteen_bit_is_scaled_by_its_type_not_by_its_content(tmp_path):
    """The old training guess read a 16-bit image whose values stay below 256 as 8-bit: 200 -> 200.
    Both sides now read v * 255 / 65535: 200 -> 1."""
    path = tmp_path / "dim.png"
    Image.fromarray(np.full((4, 4), 200, np.uint16)).save(path)
    assert np.asarray(load_image(path, "L")).max() == 1
    assert decode_image(path.read_bytes(), 100).pixels.max() == 1


def test_alpha_is_set_aside_not_composited(tmp_path):
    """A fully transparent black pixel is black to the model on both sides (the service re-attaches alpha
    after the model); the old training reader made it white."""
    path = tmp_path / "clear.png"
    Image.fromarray(np.zeros((4, 4, 4), np.uint8)).save(path)
    assert np.asarray(load_image(path, "RGB")).max() == 0
    decoded = decode_image(path.read_bytes(), 100)
    assert decoded.pixels.max() == 0 and decoded.alpha is not None and decoded.alpha.max() == 0


def test_exif_orientation_is_applied_on_both_sides(tmp_path):
    path = _write(tmp_path, "rot", _exif_rotated, "JPEG", ".jpg")
    assert np.asarray(load_image(path)).shape[:2] == (32, 24)  # 24x32 stored, displayed rotated
    assert decode_image(path.read_bytes(), 4096).pixels.shape[:2] == (32, 24)
