"""Image decoding, colour handling, padding and encoding: numpy and Pillow only.

One decoder for every mode (`open_image`), used by the service on uploads (`decode_image`) and by
training on its files (`read_image`): the same file gives the same pixels on both sides.

Decoding (untrusted bytes, or a file):
- only PNG, JPEG, WebP, GIF, BMP and TIFF are opened (no EPS/PSD/... plugins);
- the size comes from the header and is checked against the pixel limit
  before any pixel is decoded (a 30000x30000 PNG of a few bytes is refused
  with 413 without allocating it);
- animated / multi-frame images are refused (400): which frame a user wants
  is not guessable, and silently taking the first surprises;
- EXIF orientation is applied;
- modes: 1, L, I;16*, I, F -> grayscale; LA / L+tRNS -> grayscale + alpha;
  P (+transparency), RGB(+tRNS), RGBA, CMYK, YCbCr, LAB, HSV -> RGB (+ alpha).
  16-bit samples are mapped to 8 bit (v * 255 / 65535, rounded); float ("F")
  images are read as 0..255 unless all values lie in 0..1.

Alpha never goes through a model: it is kept aside and re-attached to the
output (resized with the image for /upscale). JPEG cannot store alpha, so a
JPEG answer drops it. Errors are ImageError (ImageTooLarge over the pixel
limit); the service answers them 400 (413).
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from .png import encode_png



class ImageError(ValueError):
    """An image that cannot be used: undecodable, empty, animated, an unknown mode (a client's 400)."""


class ImageTooLarge(ImageError):
    """An image over the pixel limit (a client's 413), known from its header before any pixel is decoded."""


def bad_request(message: str) -> ImageError:
    return ImageError(message)


def too_large(message: str) -> ImageTooLarge:
    return ImageTooLarge(message)

OPEN_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
OUTPUT_FORMATS = {
    "png": ("PNG", "image/png"),
    "jpeg": ("JPEG", "image/jpeg"),
    "jpg": ("JPEG", "image/jpeg"),
    "webp": ("WEBP", "image/webp"),
}
DEFAULT_QUALITY = 90
# PNG answers are written by core/png.py (Up filter + libdeflate level 1): 5-6x faster than Pillow's zlib
# level 1 with Z_RLE on this project's outputs, 10-18% larger on photos, the same pixels (issue 26).
# WebP's fastest method (libwebp's default is 4): a 512x512 photo-like answer at quality 90 encoded in 17 ms
# instead of 53 (3x), 2% larger, 33.22 dB PSNR instead of 33.38 (issue 26). JPEG: Pillow's own libjpeg-turbo.
WEBP_METHOD = 0


@dataclass
class DecodedImage:
    pixels: np.ndarray  # uint8 [H, W, C], C = 1 (grayscale) or 3 (RGB)
    alpha: np.ndarray | None  # uint8 [H, W] or None

    @property
    def height(self) -> int:
        return self.pixels.shape[0]

    @property
    def width(self) -> int:
        return self.pixels.shape[1]

    @property
    def gray(self) -> bool:
        return self.pixels.shape[2] == 1


def configure_pillow(max_input_pixels: int) -> None:
    """Let our own pixel check (413) decide, not Pillow's default bomb limit (89.5 MP)."""
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_input_pixels:
        Image.MAX_IMAGE_PIXELS = max_input_pixels
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def check_pixels(width: int, height: int, limit: int, what: str) -> None:
    """ImageTooLarge when width * height is over `limit`; `what` names the image in the message."""
    if width * height > limit:
        raise too_large(f"{what} is {width}x{height} = {width * height} pixels; the limit is {limit} pixels")


def decode_image(data: bytes, max_pixels: int) -> DecodedImage:
    """Untrusted bytes -> DecodedImage, or ImageError / ImageTooLarge. Never decodes before the size check."""
    if not data:
        raise bad_request("the image file is empty")
    return open_image(io.BytesIO(data), max_pixels)


def read_image(path: str | Path, max_pixels: int | None = None) -> DecodedImage:
    """A file -> DecodedImage, exactly as the service decodes the same bytes (training's reader)."""
    with open(path, "rb") as file:
        return open_image(file, max_pixels if max_pixels is not None else UNLIMITED)


UNLIMITED = 2**62  # read_image without a pixel limit: files the caller itself chose (training data)


def open_image(source: BinaryIO, max_pixels: int) -> DecodedImage:
    """The one decoder of every mode: a readable binary file -> DecodedImage (see the module's notes)."""
    try:
        image = Image.open(source, formats=OPEN_FORMATS)
    except Image.DecompressionBombError:
        raise too_large(f"the image is larger than the limit of {max_pixels} pixels") from None
    except Exception:  # noqa: BLE001 - Pillow raises many types for malformed headers
        raise bad_request("could not decode the image: not a valid PNG, JPEG, WebP, GIF, BMP or TIFF file") from None
    width, height = image.size
    check_pixels(width, height, max_pixels, "the image")
    if width < 1 or height < 1:
        raise bad_request("the image has no pixels")
    if getattr(image, "n_frames", 1) > 1:
        raise bad_request("animated or multi-frame images are not supported; send a single frame")
    try:
        image.load()
    except Image.DecompressionBombError:
        raise too_large(f"the image is larger than the limit of {max_pixels} pixels") from None
    except Exception:  # noqa: BLE001
        raise bad_request("could not decode the image: the data is truncated or corrupt") from None
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - a broken EXIF block is not worth refusing the image
        pass
    return to_arrays(image)


def _sixteen_to_eight(values: np.ndarray) -> np.ndarray:
    v = np.clip(values.astype(np.int64), 0, 65535)
    return ((v * 255 + 32767) // 65535).astype(np.uint8)


def to_arrays(image: Image.Image) -> DecodedImage:
    """A loaded Pillow image in any common mode -> uint8 gray/RGB pixels + optional alpha."""
    mode = image.mode
    has_key = "transparency" in image.info
    if mode in ("1", "L") and not has_key:
        return DecodedImage(np.asarray(image.convert("L"))[..., None].copy(), None)
    if mode in ("LA", "La", "L"):
        la = np.asarray(image.convert("LA"))
        return DecodedImage(la[..., :1].copy(), la[..., 1].copy())
    if mode.startswith("I;16") or mode == "I":
        return DecodedImage(_sixteen_to_eight(np.asarray(image))[..., None], None)
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64))
        if values.size and values.min() >= 0.0 and values.max() <= 1.0:
            values = values * 255.0
        return DecodedImage(np.clip(np.rint(values), 0, 255).astype(np.uint8)[..., None], None)
    if mode in ("P", "PA", "RGBA", "RGBa") or (mode == "RGB" and has_key):
        rgba = np.asarray(image.convert("RGBA"))
        if mode == "P" and not has_key:
            return DecodedImage(rgba[..., :3].copy(), None)
        return DecodedImage(rgba[..., :3].copy(), rgba[..., 3].copy())
    try:
        rgb = image.convert("RGB")
    except Exception:  # noqa: BLE001
        raise bad_request(f"unsupported image mode {mode}") from None
    return DecodedImage(np.asarray(rgb).copy(), None)


# ------------------------------------------------------------------ colour and size


def luminance(pixels: np.ndarray) -> np.ndarray:
    """RGB uint8 [H, W, 3] -> [H, W, 1] with ITU-R 601 weights (what Pillow's convert('L') uses)."""
    rgb = pixels.astype(np.float32)
    y = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)[..., None]


def to_channels(pixels: np.ndarray, channels: int) -> np.ndarray:
    """uint8 [H, W, 1|3] -> uint8 [H, W, channels]."""
    have = pixels.shape[2]
    if have == channels:
        return pixels
    if channels == 1:
        return luminance(pixels)
    return np.repeat(pixels, 3, axis=2)


def resize(pixels: np.ndarray, width: int, height: int, resample=Image.Resampling.LANCZOS) -> np.ndarray:
    """uint8 [H, W, C] (C = 1 or 3) or [H, W] -> resized, same layout."""
    if pixels.shape[1] == width and pixels.shape[0] == height:
        return pixels
    squeeze = pixels.ndim == 3 and pixels.shape[2] == 1
    plane = pixels[..., 0] if squeeze else pixels
    out = np.asarray(Image.fromarray(plane).resize((width, height), resample))
    return out[..., None] if squeeze else out


def to_float(pixels: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """uint8 [H, W, C] -> float32 [C, H, W], pixel 0 -> lo, 255 -> hi."""
    lo, hi = value_range
    x = np.empty((pixels.shape[2], pixels.shape[0], pixels.shape[1]), dtype=np.float32)  # contiguous [C, H, W]
    np.multiply(pixels.transpose(2, 0, 1), np.float32((hi - lo) / 255.0), out=x)  # float32(pixel) * k, as before
    x += np.float32(lo)  # lo + that: the same float32 sum; two passes, no temporaries
    return x


def to_pixels(values: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """float [C, H, W] -> uint8 [H, W, C]: round((y - lo) / (hi - lo) * 255), clipped."""
    lo, hi = value_range
    c, h, w = values.shape
    y = np.empty((h, w, c), dtype=np.float32)  # one float copy, already [H, W, C] (the encoders take it
    np.subtract(values.transpose(1, 2, 0), np.float32(lo), out=y)  # contiguous), then in place: a big
    y *= np.float32(255.0 / (hi - lo))  # image holds no further float temporaries
    np.rint(y, out=y)
    np.fmax(y, 0, out=y)  # fmax/fmin, not clip: NaN -> 0 (as lo), -inf -> 0, +inf -> 255 (as hi)
    np.fmin(y, 255, out=y)
    return y.astype(np.uint8)


def padded_size(size: int, multiple_of: int, min_size: int) -> int:
    return max(math.ceil(size / multiple_of), math.ceil(min_size / multiple_of)) * multiple_of


def pad_to(x: np.ndarray, multiple_of: int, min_size: int) -> np.ndarray:
    """[N, C, H, W] -> reflect-padded at the bottom/right to the graph's multiple and minimum size.

    numpy's reflect repeats the reflection when the pad is wider than the
    image, and repeats the one row/column of a 1-pixel image.
    """
    h, w = x.shape[-2:]
    ph, pw = padded_size(h, multiple_of, min_size) - h, padded_size(w, multiple_of, min_size) - w
    if ph == 0 and pw == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="reflect")


# ------------------------------------------------------------------ output


def media_type(fmt: str) -> str:
    return OUTPUT_FORMATS[fmt][1]


def encode_image(pixels: np.ndarray, alpha: np.ndarray | None, fmt: str, quality: int) -> bytes:
    """uint8 [H, W, 1|3] (+ alpha [H, W]) -> PNG / JPEG / WebP bytes (PNG: core/png.py, lossless)."""
    pil_format = OUTPUT_FORMATS[fmt][0]
    gray = pixels.shape[2] == 1
    if pil_format == "JPEG":
        alpha = None
    planes = pixels if alpha is None else np.concatenate([pixels, alpha[..., None]], axis=2)
    if pil_format == "PNG":
        return encode_png(planes)
    if alpha is not None:
        image = Image.fromarray(planes, "LA" if gray else "RGBA")
        if gray:
            image = image.convert("RGBA")  # WebP stores no gray+alpha
    else:
        image = Image.fromarray(pixels[..., 0] if gray else pixels, "L" if gray else "RGB")
    buffer = io.BytesIO()
    if pil_format == "WEBP":
        image.save(buffer, format="WEBP", quality=quality, method=WEBP_METHOD)
    else:
        image.save(buffer, format=pil_format, quality=quality)
    return buffer.getvalue()


def make_grid(images: np.ndarray, columns: int | None = None) -> np.ndarray:
    """[N, H, W, C] -> one image, `columns` wide (default ceil(sqrt(N))), no gaps; empty cells black."""
    n, h, w, c = images.shape
    cols = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * h, cols * w, c), dtype=images.dtype)
    for i in range(n):
        r, k = divmod(i, cols)
        grid[r * h:(r + 1) * h, k * w:(k + 1) * w] = images[i]
    return grid
