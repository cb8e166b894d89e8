"""Request semantics of /generate, /translate and /upscale, free of HTTP plumbing.

Each handler validates its parameters (422 for a value out of range, 404
for an unknown model, 400/413 for the image), runs the pipeline and returns
an `ImageResult`. `service.py` binds them to BentoML.

/generate
- `seed` absent: one is drawn and echoed in `X-Seed`. z = default_rng(seed)
  .standard_normal((n, latent_dim), float32); when `label` is absent each
  image gets a class drawn from the same generator after z. `X-Labels`
  lists the class indices used.
- `latent`: explicit vectors (n = their count); no seed, no `X-Seed`.
- `interpolate` {"seeds": [a, b], "steps": k}: z_a and z_b are the first
  rows that seeds a and b give, and the k images walk the great circle
  between them (slerp: Gaussian latents concentrate on a sphere, where
  linear interpolation would pass through unlikely short vectors). The
  answer is a 1 x k strip, `X-Seed: a,b`; its ends equal /generate with
  seed a (resp. b) and n=1 for the same label.
- n > 1: a grid ceil(sqrt(n)) columns wide, no gaps, empty cells black.
"""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from contract import DIRECTION_ROLES
from core import imaging as core_imaging
from core.imaging import DecodedImage
from core.loading import ServedModel
from core.pipelines import slerp

from . import deadline, imaging, inference, telemetry
from .admission import BOOK
from .config import Settings
from .errors import bad_request, shown, unprocessable
from .registry import ModelRegistry

MAX_SEED = 2**63 - 1


class Interpolation(BaseModel):
    seeds: list[int]
    steps: int = 8


@dataclass
class ImageResult:
    body: bytes
    media_type: str
    headers: dict[str, str] = field(default_factory=dict)


def _encode_timed(served: ServedModel, started: float, out_pixels: int, pixels: np.ndarray,
                  alpha: np.ndarray | None, fmt: str, quality: int) -> bytes:
    """Encode, unless the request was cancelled or ran past its deadline while the graph ran; then
    give the time this request spent outside the graph to the admission estimate."""
    token = deadline.current()
    if token is not None:
        token.check(served.name)
    body = _encode(pixels, alpha, fmt, quality)
    if token is not None:
        BOOK.record_pipeline(time.perf_counter() - started - token.model_seconds, out_pixels)
    return body


def _encode(pixels: np.ndarray, alpha: np.ndarray | None, fmt: str, quality: int) -> bytes:
    """The answer's image bytes; the request's encode stage, and its output size."""
    with telemetry.stage("encode"):
        body = core_imaging.encode_image(pixels, alpha, fmt, quality)
    telemetry.images(output_pixels=pixels.shape[0] * pixels.shape[1])
    return body


def _decode(path: Path | bytes | None, settings: Settings) -> DecodedImage:
    """The upload (a stored file, or bytes: one file of a batch job's archive), read and decoded (pixel limit
    from its header first): the request's decode stage."""
    with telemetry.stage("decode"):
        decoded = imaging.decode_image(_read_upload(path), settings.max_input_pixels)
    return decoded


def _read_upload(path: Path | bytes | None) -> bytes:
    if isinstance(path, bytes):
        return path
    if path is None:
        raise bad_request("send the image as a file in the multipart field 'image'")
    try:
        return Path(path).read_bytes()
    except OSError:
        raise bad_request("could not read the uploaded image") from None


def resolve_label(model: ServedModel, label: str | int | None) -> int | None:
    classes = model.generate_spec.classes
    if label is None:
        return None
    if not classes:
        raise unprocessable(f"model {model.name!r} is unconditional: it takes no label")
    if isinstance(label, bool):
        raise unprocessable("label must be a class name or an index")
    if isinstance(label, int):
        if not 0 <= label < len(classes):
            raise unprocessable(f"label index {label} is out of range 0..{len(classes) - 1}")
        return label
    if label in classes:
        return classes.index(label)
    folded = [c.casefold() for c in classes]
    if label.strip().casefold() in folded:
        return folded.index(label.strip().casefold())
    if label.strip().isdigit():
        return resolve_label(model, int(label.strip()))
    raise unprocessable(f"unknown class {shown(label)}; classes: {', '.join(classes)}")


def _check_seed(seed: int, what: str = "seed") -> int:
    if not 0 <= seed <= MAX_SEED:
        raise unprocessable(f"{what} must be 0..{MAX_SEED}, got {shown(seed)}")
    return seed


def generate(
    registry: ModelRegistry,
    settings: Settings,
    *,
    model: str | None = None,
    label: str | int | None = None,
    n: int | None = None,
    seed: int | None = None,
    latent: list[list[float]] | None = None,
    interpolate: Interpolation | None = None,
    format: str | None = None,
    quality: int | None = None,
) -> ImageResult:
    served = registry.pick("generate", model)
    spec = served.generate_spec
    fmt, quality = imaging.parse_format(format, quality)
    label_index = resolve_label(served, label)
    headers: dict[str, str] = {}
    columns: int | None = None
    labels: np.ndarray | None = None

    if interpolate is not None:
        if n is not None or seed is not None or latent is not None:
            raise unprocessable("interpolate cannot be combined with n, seed or latent")
        if len(interpolate.seeds) != 2:
            raise unprocessable(f"interpolate.seeds must hold two seeds, got {len(interpolate.seeds)}")
        if not 2 <= interpolate.steps <= settings.max_n:
            raise unprocessable(f"interpolate.steps must be 2..{settings.max_n}, got {interpolate.steps}")
        a, b = (_check_seed(s, "interpolate.seeds[]") for s in interpolate.seeds)
        rng_a = np.random.default_rng(a)
        z_a = rng_a.standard_normal((1, spec.latent_dim), dtype=np.float32)[0]
        z_b = np.random.default_rng(b).standard_normal((1, spec.latent_dim), dtype=np.float32)[0]
        z = slerp(z_a, z_b, interpolate.steps)
        if label_index is None and spec.classes:
            label_index = int(rng_a.integers(0, len(spec.classes)))
        columns = interpolate.steps
        headers["X-Seed"] = f"{a},{b}"
    elif latent is not None:
        if seed is not None:
            raise unprocessable("seed cannot be combined with latent")
        count = len(latent)
        if not 1 <= count <= settings.max_n:
            raise unprocessable(f"latent must hold 1..{settings.max_n} vectors, got {count}")
        if n is not None and n != count:
            raise unprocessable(f"n={n} but latent holds {count} vectors")
        if any(len(v) != spec.latent_dim for v in latent):
            raise unprocessable(f"each latent vector must have {spec.latent_dim} numbers")
        z = np.asarray(latent, dtype=np.float32)
        if not np.all(np.isfinite(z)):
            raise unprocessable("latent values must be finite numbers")
        if label_index is None and spec.classes:
            raise unprocessable("label is required with latent")
    else:
        n = 1 if n is None else n
        if not 1 <= n <= settings.max_n:
            raise unprocessable(f"n must be 1..{settings.max_n}, got {shown(n)}")
        seed = secrets.randbelow(2**32) if seed is None else _check_seed(seed)
        rng = np.random.default_rng(seed)
        z = rng.standard_normal((n, spec.latent_dim), dtype=np.float32)
        if label_index is None and spec.classes:
            labels = rng.integers(0, len(spec.classes), size=n).astype(np.int64)
        headers["X-Seed"] = str(seed)

    count = z.shape[0]
    if labels is None and label_index is not None:
        labels = np.full(count, label_index, dtype=np.int64)
    if spec.size is not None:
        h, w = spec.size
        cols = columns or math.ceil(math.sqrt(count))
        imaging.check_pixels(w * cols, h * math.ceil(count / cols), settings.max_output_pixels, "the output")
    with telemetry.stage("compute"):
        images = inference.generate_images(served, z, labels)
    grid = images[0] if count == 1 else core_imaging.make_grid(images, columns)
    if labels is not None:
        headers["X-Labels"] = ",".join(str(int(v)) for v in labels)
    headers["X-Model"] = served.name
    body = _encode(grid, None, fmt, quality)
    return ImageResult(body, core_imaging.media_type(fmt), headers)


def translate_role(served: ServedModel, direction: str | None) -> str:
    """The graph role `direction` names on `served` (default a2b), or 422."""
    if direction is None or direction == "":
        direction = "a2b"
    if direction not in DIRECTION_ROLES:
        raise unprocessable(f"direction must be a2b or b2a, got {shown(direction)}")
    if served.directions:
        return direction
    if direction == "a2b":
        return "generator"
    raise unprocessable(f"model {served.name!r} translates one way only (a2b)")


def upscale_scale(served: ServedModel, scale: float | None) -> float:
    """The `scale` field on `served` (default: its native scale), or 422."""
    native = served.image_spec.scale
    if scale is None:
        return native
    if not (math.isfinite(scale) and 1 <= scale <= native):
        raise unprocessable(f"scale must be 1..{native} (the model's native scale is x{native}), got {shown(scale)}")
    return scale


def translate(
    registry: ModelRegistry,
    settings: Settings,
    *,
    image: Path | bytes | None,
    model: str | None = None,
    direction: str | None = None,
    format: str | None = None,
    quality: int | None = None,
) -> ImageResult:
    served = registry.pick("translate", model)
    fmt, quality = imaging.parse_format(format, quality)
    role = translate_role(served, direction)
    started = time.perf_counter()
    decoded = _decode(image, settings)
    telemetry.images(input_pixels=decoded.width * decoded.height)
    imaging.check_pixels(decoded.width, decoded.height, settings.max_output_pixels, "the output")
    with telemetry.stage("compute"):
        pixels, alpha = inference.translate_image(served, decoded, role)
    body = _encode_timed(served, started, pixels.shape[0] * pixels.shape[1], pixels, alpha, fmt, quality)
    return ImageResult(body, core_imaging.media_type(fmt), {"X-Model": served.name})


def upscale(
    registry: ModelRegistry,
    settings: Settings,
    *,
    image: Path | bytes | None,
    model: str | None = None,
    scale: float | None = None,
    format: str | None = None,
    quality: int | None = None,
) -> ImageResult:
    served = registry.pick("upscale", model)
    native = served.image_spec.scale
    fmt, quality = imaging.parse_format(format, quality)
    scale = upscale_scale(served, scale)
    started = time.perf_counter()
    decoded = _decode(image, settings)
    telemetry.images(input_pixels=decoded.width * decoded.height)
    imaging.check_pixels(decoded.width * native, decoded.height * native, settings.max_output_pixels,
                         f"the x{native} output")
    with telemetry.stage("compute"):
        pixels, alpha = inference.upscale_image(served, decoded, scale)
    native_pixels = decoded.width * decoded.height * native ** 2
    body = _encode_timed(served, started, native_pixels, pixels, alpha, fmt, quality)
    return ImageResult(body, core_imaging.media_type(fmt), {"X-Model": served.name})

