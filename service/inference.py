"""The service's policy around core's pipelines: admission, deadlines, telemetry.

core/pipelines.py does the maths (pad, tile, run, blend); here each request's hooks are built from its
token (service/deadline.py: the check before every graph run, which stops a cancelled or late request
within one tile), the worker's speed book (service/admission.py: refuse up front what cannot finish in
time, learn from every run) and the request's telemetry (compute time). A graph failure becomes a 500.
"""

from __future__ import annotations

import logging

import numpy as np

from core import pipelines
from core.imaging import DecodedImage
from core.loading import ServedModel
from core.pipelines import Hooks, ModelRunError

from . import deadline, telemetry
from .admission import BOOK
from .errors import ApiError

logger = logging.getLogger("bentoml.ganforge")

WARM_UP_RUNS = 3  # the median of up to this many runs of one tile (one run on this CPU's single run noise
WARM_UP_BUDGET_S = 0.3  # ... is up to 3x on a shared machine); no further run once this much time is spent


def model_failed(exc: ModelRunError) -> ApiError:
    """A graph that failed or answered the wrong shape: a server fault (500)."""
    return ApiError(500, str(exc))


def image_hooks(model: ServedModel) -> Hooks:
    """The current request's hooks for an image pipeline on `model`."""
    token = deadline.current()

    def admit(height: int, width: int) -> None:
        BOOK.admit(model, height, width, token, probe=lambda: warm_up(model))

    def on_run(seconds: float, pixels: int, tile: bool) -> None:
        telemetry.add_compute(seconds, tile)
        BOOK.record(model, seconds, pixels)
        if token is not None:
            token.model_seconds += seconds

    check = token.tile_check(model.name) if token is not None else None
    progress = getattr(token, "progress", None)
    return Hooks(admit=admit, check=check, progress=progress, on_run=on_run)


def generate_hooks(model: ServedModel) -> Hooks:
    token = deadline.current()
    check = (lambda done, total: token.check(model.name, done, total, "graph runs")) if token is not None else None
    return Hooks(check=check, on_run=lambda seconds, pixels, tile: telemetry.add_compute(seconds, tile))


def translate_image(model: ServedModel, image: DecodedImage, role: str) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        return pipelines.translate_image(model, image, role, image_hooks(model))
    except ModelRunError as exc:
        raise model_failed(exc) from None


def upscale_image(model: ServedModel, image: DecodedImage, scale: float) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        return pipelines.upscale_image(model, image, scale, image_hooks(model))
    except ModelRunError as exc:
        raise model_failed(exc) from None


def generate_images(model: ServedModel, z: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    try:
        return pipelines.generate_images(model, z, labels, generate_hooks(model))
    except ModelRunError as exc:
        raise model_failed(exc) from None


def warm_up(model: ServedModel) -> float:
    """The median of up to WARM_UP_RUNS runs of one tile (fewer once WARM_UP_BUDGET_S is spent) seeds, or
    refreshes, the model's speed estimate. Returns the seconds spent; 0.0 for a model that is not a ready
    image model."""
    if model.image_spec is None or not model.ready:
        return 0.0
    try:
        times, pixels = pipelines.time_one_tile(model, WARM_UP_RUNS, WARM_UP_BUDGET_S)
    except ModelRunError as exc:
        raise model_failed(exc) from None
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
