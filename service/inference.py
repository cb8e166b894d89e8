"""The three pipelines on a loaded model: arrays in, uint8 arrays out.

Everything a pipeline needs comes from the model's card (ImageSpec /
GenerateSpec); nothing here knows a model by name.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from PIL import Image

from . import deadline, imaging, telemetry
from .admission import BOOK
from .errors import ApiError
from .imaging import DecodedImage
from .loading import ImageSpec, ServedModel
from .tiling import tile_and_blend

logger = logging.getLogger("bentoml.ganforge")


class ModelRunError(ApiError):
    """The graph failed or answered a shape its card does not promise: a server fault (500)."""

    def __init__(self, model: str) -> None:
        super().__init__(500, f"model {model!r} failed to run; see the server log")


def run_session(model: ServedModel, role: str, feeds: dict[str, np.ndarray], output: str,
                tile: bool = False) -> np.ndarray:
    """One graph run (`tile`: one tile of a /translate or /upscale request), timed for the request's
    compute stage; the batcher counts its own runs and rows, a plain session's are counted here."""
    batcher = model.runners.get(role)
    started = time.perf_counter()
    try:
        y = (batcher or model.sessions[role]).run([output], feeds)[0]
    except Exception:  # noqa: BLE001 - onnxruntime raises its own types
        logger.exception("model %s (%s) failed", model.name, role)
        raise ModelRunError(model.name) from None
    telemetry.add_compute(time.perf_counter() - started, tile)
    if batcher is None and model.observe_run is not None:
        model.observe_run(next(iter(feeds.values())).shape[0])
    return y


def image_runner(model: ServedModel, role: str, record: bool = True):
    """[1, C, h, w] -> [1, C', h*s, w*s]: pad to the card's multiple/min size, run, crop back.
    Each run's time goes to the model's speed estimate (service/admission.py) when `record`."""
    spec: ImageSpec = model.image_spec
    token = deadline.current()

    def run(x: np.ndarray) -> np.ndarray:
        h, w = x.shape[-2:]
        padded = imaging.pad_to(np.ascontiguousarray(x, dtype=np.float32), spec.multiple_of, spec.min_size)
        started = time.perf_counter()
        y = run_session(model, role, {spec.input_name: padded}, spec.output_name, tile=record)
        took = time.perf_counter() - started
        if record:
            BOOK.record(model, took, padded.shape[2] * padded.shape[3] * spec.scale ** 2)
        if token is not None:
            token.model_seconds += took
        want = (padded.shape[0], spec.out_channels, padded.shape[2] * spec.scale, padded.shape[3] * spec.scale)
        if y.shape != want:
            logger.error("model %s (%s): output shape %s, card promises %s", model.name, role, y.shape, want)
            raise ModelRunError(model.name)
        return y[:, :, : h * spec.scale, : w * spec.scale]

    return run


def run_image_model(model: ServedModel, role: str, pixels: np.ndarray) -> np.ndarray:
    """uint8 [H, W, C_in] -> uint8 [H*s, W*s, C_out], tiled when larger than the tile.

    Within a request: refused up front (413/503) when the measured speed says it cannot finish in
    time, and stopped before the next tile once cancelled or past its deadline (service/deadline.py)."""
    spec = model.image_spec
    token = deadline.current()
    BOOK.admit(model, pixels.shape[0], pixels.shape[1], token, probe=lambda: warm_up(model))
    x = imaging.to_float(pixels, spec.in_range)
    check = token.tile_check(model.name) if token is not None else None
    return tile_and_blend(image_runner(model, role), x, spec.tile, spec.overlap, spec.scale,
                          finish=lambda y: imaging.to_pixels(y, spec.out_range), check=check)


WARM_UP_RUNS = 3  # the median of up to this many runs of one tile (one run on this CPU's single run noise
WARM_UP_BUDGET_S = 0.3  # ... is up to 3x on a shared machine); no further run once this much time is spent


def warm_up(model: ServedModel) -> float:
    """Graph runs on one full tile of zeros (the native size where the card has one): the median of up to
    WARM_UP_RUNS runs (fewer once WARM_UP_BUDGET_S is spent) seeds, or refreshes, the model's speed
    estimate. Returns the seconds spent; 0.0 for a model that is not a ready image model."""
    spec = model.image_spec
    if spec is None or not model.ready:
        return 0.0
    h, w = spec.native_size or (spec.tile, spec.tile)
    role = model.directions[0] if model.directions else "generator"
    run = image_runner(model, role, record=False)
    x = np.zeros((1, spec.in_channels, h, w), np.float32)
    times: list[float] = []
    while len(times) < WARM_UP_RUNS and (not times or sum(times) < WARM_UP_BUDGET_S):
        started = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - started)
    pixels = imaging.padded_size(h, spec.multiple_of, spec.min_size) * \
        imaging.padded_size(w, spec.multiple_of, spec.min_size) * spec.scale ** 2
    BOOK.record(model, float(np.median(times)), pixels, source="warm-up")
    return sum(times)


def warm_up_all(models: list[ServedModel]) -> None:
    """Seed the speed estimate of every ready image model (at startup); logs what it cost."""
    took: list[str] = []
    total = 0.0
    for model in models:
        try:
            seconds = warm_up(model)
        except ApiError:  # run_session logged the failure; the model's first request will say so too
            continue
        if seconds:
            total += seconds
            rate = BOOK.rate(model)
            per_mpx = rate.per_pixel * 1e6 if rate is not None else 0.0
            took.append(f"{model.name} {per_mpx:.3g} s/MPx ({seconds * 1000:.0f} ms)")
    if took:
        logger.info("speed warm-up (a tile or three per image model) took %.2f s: %s", total, ", ".join(took))


def translate_image(model: ServedModel, image: DecodedImage, role: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Same width and height out as in. A model with a native size runs at that size:
    the input is resized to it (LANCZOS), and the output back to the input's size (BICUBIC)."""
    spec = model.image_spec
    pixels = imaging.to_channels(image.pixels, spec.in_channels)
    if spec.native_size is not None:
        nh, nw = spec.native_size
        pixels = imaging.resize(pixels, nw, nh, Image.Resampling.LANCZOS)
    out = run_image_model(model, role, pixels)
    if spec.native_size is not None:
        out = imaging.resize(out, image.width, image.height, Image.Resampling.BICUBIC)
    return out, image.alpha


def upscale_image(model: ServedModel, image: DecodedImage, scale: float) -> tuple[np.ndarray, np.ndarray | None]:
    """Native x`spec.scale` through the model; a smaller `scale` resizes that output down (LANCZOS).
    Grayscale in -> grayscale out (a colour model's output is reduced to its luminance)."""
    spec = model.image_spec
    pixels = imaging.to_channels(image.pixels, spec.in_channels)
    out = run_image_model(model, "generator", pixels)
    if image.gray and out.shape[2] == 3:
        out = imaging.luminance(out)
    width, height = round(image.width * scale), round(image.height * scale)
    width, height = max(width, 1), max(height, 1)
    out = imaging.resize(out, width, height, Image.Resampling.LANCZOS)
    alpha = image.alpha
    if alpha is not None:
        alpha = imaging.resize(alpha, width, height, Image.Resampling.LANCZOS)
    return out, alpha


def slerp(z0: np.ndarray, z1: np.ndarray, steps: int) -> np.ndarray:
    """[D], [D] -> [steps, D] along the great circle (lerp when the two are (anti)parallel)."""
    t = np.linspace(0.0, 1.0, steps, dtype=np.float64)[:, None]
    a, b = z0.astype(np.float64), z1.astype(np.float64)
    cos = np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12)
    omega = np.arccos(np.clip(cos, -1.0, 1.0))
    if np.sin(omega) < 1e-6:
        return ((1 - t) * a + t * b).astype(np.float32)
    return ((np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)).astype(np.float32)


def generate_images(model: ServedModel, z: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    """z float32 [N, D], labels int64 [N] -> uint8 [N, H, W, C]."""
    spec = model.generate_spec
    feeds = {spec.z_name: np.ascontiguousarray(z, dtype=np.float32)}
    if spec.label_name is not None:
        feeds[spec.label_name] = np.ascontiguousarray(labels, dtype=np.int64)
    token = deadline.current()
    if token is not None:
        token.check(model.name, 0, 1, "graph runs")
    y = run_session(model, "generator", feeds, spec.output_name)
    if y.ndim != 4 or y.shape[0] != z.shape[0] or y.shape[1] != spec.out_channels:
        logger.error("model %s: output shape %s for N=%d", model.name, y.shape, z.shape[0])
        raise ModelRunError(model.name)
    return np.stack([imaging.to_pixels(img, spec.out_range) for img in y])
