"""The service's side of image handling: core.imaging's errors as HTTP answers, and the `format` field.

Decoding, colour, padding and encoding themselves live in core/imaging.py (training reads its files
through the same decoder).
"""

from __future__ import annotations

from core import imaging as core_imaging
from core.imaging import DEFAULT_QUALITY, OUTPUT_FORMATS, DecodedImage, ImageError, ImageTooLarge

from .errors import ApiError, bad_request, too_large, unprocessable


def as_api_error(exc: ImageError) -> ApiError:
    """The status the error carries (core/video.py, core/archive.py: 400, 413, 415), else 413 for an image
    over a pixel limit and 400 for any other unusable image; the message as it is."""
    status = getattr(exc, "status", None)
    if status is not None:
        return ApiError(status, str(exc))
    return too_large(str(exc)) if isinstance(exc, ImageTooLarge) else bad_request(str(exc))


def decode_image(data: bytes, max_pixels: int) -> DecodedImage:
    """Untrusted bytes -> DecodedImage, or ApiError 400 / 413. Never decodes before the size check."""
    try:
        return core_imaging.decode_image(data, max_pixels)
    except ImageError as exc:
        raise as_api_error(exc) from None


def check_pixels(width: int, height: int, limit: int, what: str) -> None:
    """ApiError 413 when width * height is over `limit`."""
    try:
        core_imaging.check_pixels(width, height, limit, what)
    except ImageError as exc:
        raise as_api_error(exc) from None


def parse_format(fmt: str | None, quality: int | None) -> tuple[str, int]:
    """The `format` and `quality` fields -> (format name, quality), or 422."""
    name = (fmt or "png").strip().lower()
    if name not in OUTPUT_FORMATS:
        raise unprocessable(f"format must be png, jpeg or webp, got {fmt!r:.40}")
    if quality is None:
        quality = DEFAULT_QUALITY
    if not 1 <= quality <= 100:
        raise unprocessable(f"quality must be 1..100, got {quality}")
    return name, quality
