"""The three pipelines on a loaded model: arrays in, uint8 arrays out.

Everything a pipeline needs comes from the model's card (ImageSpec / GenerateSpec); nothing here knows a
model by name, and nothing here decides policy. What a caller wants to happen around the work comes in as
`Hooks`: a check before every graph run (a deadline or a cancel raises there), a progress callback after
each tile, and an observer of every graph run's time (speed estimates, metrics). The service passes its
admission, deadlines and telemetry that way (service/inference.py); offline evaluation passes nothing, so
the figures it measures come from this very code with no server state touched.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image

from . import imaging
from .imaging import DecodedImage
from .loading import ImageSpec, ServedModel
from .tiling import tile_and_blend

logger = logging.getLogger("bentoml.ganforge")


class ModelRunError(RuntimeError):
    """The graph failed or answered a shape its card does not promise (logged where it happened)."""

    def __init__(self, model: str) -> None:
        super().__init__(f"model {model!r} failed to run; see the server log")
        self.model = model


@dataclass(frozen=True)
class Hooks:
    """What a caller hangs on a pipeline; every hook is optional.

    - `admit(height, width)`: once, before an image is run, with the size the graph will see (a model with
      a native size sees that size); raises to refuse it.
    - `check(done, total)`: before every graph run (each tile, each /generate run); raises to stop.
    - `progress(done, total)`: after every tile of an image.
    - `on_run(seconds, output_pixels, tile)`: after every graph run; `tile` is False for a /generate run.
    """

    admit: Callable[[int, int], None] | None = None
    check: Callable[[int, int], None] | None = None
    progress: Callable[[int, int], None] | None = None
    on_run: Callable[[float, int, bool], None] | None = None


NO_HOOKS = Hooks()


def run_session(model: ServedModel, role: str, feeds: dict[str, np.ndarray], output: str) -> np.ndarray:
    """One graph run, on the role's batcher when the model has one; ModelRunError when it fails."""
    batcher = model.runners.get(role)
    try:
        y = (batcher or model.sessions[role]).run([output], feeds)[0]
    except Exception:  # noqa: BLE001 - onnxruntime and OpenVINO raise their own types
        logger.exception("model %s (%s) failed", model.name, role)
        raise ModelRunError(model.name) from None
    if batcher is None and model.observe_run is not None:
        model.observe_run(next(iter(feeds.values())).shape[0])
    return y


def image_runner(model: ServedModel, role: str, hooks: Hooks = NO_HOOKS) -> Callable[[np.ndarray], np.ndarray]:
    """[1, C, h, w] -> [1, C', h*s, w*s]: pad to the card's multiple/min size, run, crop back; each run's time
    and output pixels go to `hooks.on_run`."""
    spec: ImageSpec = model.image_spec

    def run(x: np.ndarray) -> np.ndarray:
        h, w = x.shape[-2:]
        padded = imaging.pad_to(np.ascontiguousarray(x, dtype=np.float32), spec.multiple_of, spec.min_size)
        started = time.perf_counter()
        y = run_session(model, role, {spec.input_name: padded}, spec.output_name)
        if hooks.on_run is not None:
            hooks.on_run(time.perf_counter() - started, padded.shape[2] * padded.shape[3] * spec.scale ** 2, True)
        want = (padded.shape[0], spec.out_channels, padded.shape[2] * spec.scale, padded.shape[3] * spec.scale)
        if y.shape != want:
            logger.error("model %s (%s): output shape %s, card promises %s", model.name, role, y.shape, want)
            raise ModelRunError(model.name)
        return y[:, :, : h * spec.scale, : w * spec.scale]

    return run


def run_image_model(model: ServedModel, role: str, pixels: np.ndarray, hooks: Hooks = NO_HOOKS) -> np.ndarray:
    """uint8 [H, W, C_in] -> uint8 [H*s, W*s, C_out], tiled when larger than the card's tile."""
    spec = model.image_spec
    if hooks.admit is not None:
        hooks.admit(pixels.shape[0], pixels.shape[1])
    x = imaging.to_float(pixels, spec.in_range)
    tile = spec.tile_for(pixels.shape[0], pixels.shape[1])
    return tile_and_blend(image_runner(model, role, hooks), x, tile, spec.overlap, spec.scale,
                          finish=lambda y: imaging.to_pixels(y, spec.out_range), check=hooks.check,
                          progress=hooks.progress)


def time_one_tile(model: ServedModel, runs: int, budget_s: float) -> tuple[list[float], int]:
    """Graph runs on one full tile of zeros (the native size where the card has one): up to `runs` runs, no
    further one once `budget_s` is spent. (the seconds of each run, the output pixels of one run)."""
    spec = model.image_spec
    h, w = spec.native_size or (spec.tile, spec.tile)
    role = model.directions[0] if model.directions else "generator"
    run = image_runner(model, role)
    x = np.zeros((1, spec.in_channels, h, w), np.float32)
    times: list[float] = []
    while len(times) < runs and (not times or sum(times) < budget_s):
        started = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - started)
    pixels = imaging.padded_size(h, spec.multiple_of, spec.min_size) * \
        imaging.padded_size(w, spec.multiple_of, spec.min_size) * spec.scale ** 2
    return times, pixels


def translate_image(model: ServedModel, image: DecodedImage, role: str,
                    hooks: Hooks = NO_HOOKS) -> tuple[np.ndarray, np.ndarray | None]:
    """Same width and height out as in. A model with a native size runs at that size:
    the input is resized to it (LANCZOS), and the output back to the input's size (BICUBIC)."""
    spec = model.image_spec
    pixels = imaging.to_channels(image.pixels, spec.in_channels)
    if spec.native_size is not None:
        nh, nw = spec.native_size
        pixels = imaging.resize(pixels, nw, nh, Image.Resampling.LANCZOS)
    out = run_image_model(model, role, pixels, hooks)
    if spec.native_size is not None:
        out = imaging.resize(out, image.width, image.height, Image.Resampling.BICUBIC)
    return out, image.alpha


def upscale_image(model: ServedModel, image: DecodedImage, scale: float,
                  hooks: Hooks = NO_HOOKS) -> tuple[np.ndarray, np.ndarray | None]:
    """Native x`spec.scale` through the model; a smaller `scale` resizes that output down (LANCZOS).
    Grayscale in -> grayscale out (a colour model's output is reduced to its luminance)."""
    spec = model.image_spec
    pixels = imaging.to_channels(image.pixels, spec.in_channels)
    out = run_image_model(model, "generator", pixels, hooks)
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


def generate_images(model: ServedModel, z: np.ndarray, labels: np.ndarray | None,
                    hooks: Hooks = NO_HOOKS) -> np.ndarray:
    """z float32 [N, D], labels int64 [N] -> uint8 [N, H, W, C]."""
    spec = model.generate_spec
    feeds = {spec.z_name: np.ascontiguousarray(z, dtype=np.float32)}
    if spec.label_name is not None:
        feeds[spec.label_name] = np.ascontiguousarray(labels, dtype=np.int64)
    if hooks.check is not None:
        hooks.check(0, 1)
    started = time.perf_counter()
    y = run_session(model, "generator", feeds, spec.output_name)
    if hooks.on_run is not None:
        hooks.on_run(time.perf_counter() - started, 0, False)
    if y.ndim != 4 or y.shape[0] != z.shape[0] or y.shape[1] != spec.out_channels:
        logger.error("model %s: output shape %s for N=%d", model.name, y.shape, z.shape[0])
        raise ModelRunError(model.name)
    return np.stack([imaging.to_pixels(img, spec.out_range) for img in y])
