"""core/png.py and the answer encoders: PNG lossless pixel for pixel, JPEG / WebP decodable and close."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from PIL import Image

from core import imaging, png

RNG = np.random.default_rng(26)
MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


def photo(h: int, w: int, c: int, noise: int = 12) -> np.ndarray:
    """Smooth gradients plus noise: both kinds of content a model answers with."""
    y, x = np.mgrid[0:h, 0:w]
    base = (x * 255 // max(w - 1, 1) + y * 3)[..., None] + np.arange(c) * 40
    return ((base + RNG.integers(0, noise + 1, (h, w, c))) % 256).astype(np.uint8)


def decoded(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    image.load()
    array = np.asarray(image)
    return array[..., None] if array.ndim == 2 else array


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (9, 1), (37, 53), (256, 256)])
def test_png_round_trip_is_pixel_identical(channels, shape):
    pixels = photo(*shape, channels)
    data = png.encode_png(pixels)
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.mode == MODES[channels] and image.size == (shape[1], shape[0])
    assert np.array_equal(decoded(data), pixels)


def test_png_extremes_and_noise_round_trip():
    """Wrap-around in the Up filter (0 under 255 and back) and incompressible noise stay exact."""
    stripes = np.zeros((64, 64, 3), np.uint8)
    stripes[::2] = 255
    noise = RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for pixels in (stripes, noise, np.full((5, 5, 1), 255, np.uint8)):
        assert np.array_equal(decoded(png.encode_png(pixels)), pixels)


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_png_stream_is_a_valid_file(channels):
    """Every chunk's CRC and the zlib stream check out (what strict decoders verify), for both writers
    (gray: the Up filter and libdeflate; colour: fpng, whose one extra chunk is ancillary: lower-case first)."""
    data = png.encode_png(photo(20, 30, channels))
    assert data[:8] == png.SIGNATURE
    at, kinds, idat = 8, [], b""
    while at < len(data):
        length = int.from_bytes(data[at:at + 4], "big")
        kind, payload = data[at + 4:at + 8], data[at + 8:at + 8 + length]
        assert int.from_bytes(data[at + 8 + length:at + 12 + length], "big") == zlib.crc32(kind + payload)
        kinds.append(kind)
        idat += payload if kind == b"IDAT" else b""
        at += 12 + length
    assert len(zlib.decompress(idat)) == 20 * (30 * channels + 1)
    critical = [k for k in kinds if k[:1].isupper()]
    assert critical[0] == b"IHDR" and critical[-1] == b"IEND" and set(critical) == {b"IHDR", b"IDAT", b"IEND"}
    assert all(k[:1].islower() for k in kinds if k not in critical)


def test_colour_png_takes_fpng_and_its_fallback_keeps_pixels(monkeypatch):
    """RGB goes through fpng (its private chunk is there); with fpng refusing, the Up filter writer answers."""
    pixels = photo(33, 47, 3)
    assert b"fdEC" in png.encode_png(pixels)
    monkeypatch.setattr(png, "_fpng_encode", lambda array: b"")
    fallback = png.encode_png(pixels)
    assert b"fdEC" not in fallback and np.array_equal(decoded(fallback), pixels)


@pytest.mark.parametrize("shape", [(65535, 2), (65536, 2), (2, 70000), (248000, 4)])
def test_colour_png_past_fpngs_16_bit_sizes_round_trips(shape):
    """fpng writes width and height in 16 bits (a 65536-row image came back with height 0): longer sides take
    the other writer (found by the fuzz test: a 1 x 62000 upscale)."""
    pixels = photo(*shape, 3)
    data = png.encode_png(pixels)
    assert (b"fdEC" in data) == (max(shape) <= 65535)
    assert np.array_equal(decoded(data), pixels)


def test_png_refuses_what_it_cannot_write():
    with pytest.raises(ValueError):
        png.encode_png(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError):
        png.encode_png(np.zeros((4, 4, 5), np.uint8))


@pytest.mark.parametrize("gray", [False, True])
@pytest.mark.parametrize("with_alpha", [False, True])
def test_encode_image_png_keeps_pixels_and_alpha(gray, with_alpha):
    pixels = photo(40, 33, 1 if gray else 3)
    alpha = RNG.integers(0, 256, (40, 33), dtype=np.uint8) if with_alpha else None
    out = decoded(imaging.encode_image(pixels, alpha, "png", 90))
    want = pixels if alpha is None else np.concatenate([pixels, alpha[..., None]], axis=2)
    assert np.array_equal(out, want)


def test_encode_image_png_equals_pillows_pixels():
    """The answer's bytes changed compressor (issue 26); what a client decodes did not."""
    pixels = photo(64, 48, 3)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=1)
    assert np.array_equal(decoded(imaging.encode_image(pixels, None, "png", 90)), decoded(buffer.getvalue()))


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_lossy_formats_decode_close(fmt):
    y, x = np.mgrid[0:64, 0:64]
    pixels = np.stack([x * 3, y * 3, (x + y) * 2], axis=2).astype(np.uint8)  # smooth content
    out = decoded(imaging.encode_image(pixels, None, fmt, 95))
    assert out.shape == pixels.shape
    mse = np.mean((out.astype(np.float64) - pixels) ** 2)
    assert 10 * np.log10(255 ** 2 / max(mse, 1e-9)) > 30


def test_webp_gray_alpha_becomes_rgba():
    pixels, alpha = photo(16, 16, 1), np.full((16, 16), 77, np.uint8)
    image = Image.open(io.BytesIO(imaging.encode_image(pixels, alpha, "webp", 90)))
    assert image.mode == "RGBA" and np.all(np.asarray(image)[..., 3] == 77)
