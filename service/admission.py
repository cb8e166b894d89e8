"""Admission by measured speed: refuse at once what cannot finish inside GANFORGE_TIMEOUT_S.

Per model (name, version, and what serves it: backend/provider and precision) this worker keeps
a running estimate of graph seconds per output pixel, from every graph run of /upscale and
/translate (each tile): a pixel-weighted average whose older samples fade with a half-life of
`HALF_LIFE_S` seconds of compute, so it follows the machine's current load. It is seeded at
startup by `inference.warm_up`: the median of up to three runs of each image model on one full
tile, no more runs once 0.3 s is spent (on this loaded 2-core machine, onnxruntime fp32: one run
of 0.4-0.9 s per shipped x4 upscaler, ~0.1-0.3 s for colorize and sneaker2boot, about 2 s in all),
and measured again the same way when a large request finds it older than `STALE_S`. A second
estimate, shared by all models, covers the rest of a request (decode, blending, resize, encode)
per output pixel.

An image request is estimated from its tile plan (`tiling.tile_grid`: the tiles and their padding
are what runs, overlap included). It is admitted when the estimate fits `ADMIT_SHARE` of the time
it has left; the rest is the estimate's margin of error. Otherwise:
- 413 when it would not fit even a whole GANFORGE_TIMEOUT_S, naming the largest input of the same
  aspect ratio that fits;
- 503 with Retry-After when it would fit the limit but not the time it has left (it waited).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from core.imaging import padded_size
from core.loading import ImageSpec, ServedModel
from core.tiling import tile_grid

from .deadline import CANCELLED, RequestToken
from .errors import ApiError, too_large

logger = logging.getLogger("bentoml.ganforge")

HALF_LIFE_S = 4.0  # samples fade by half per this many seconds of later compute on the model
STALE_S = 30.0  # an estimate older than this is measured again (one tile) before a large request
LARGE_S = 5.0  # ... a request is large when its estimate is at least this
ADMIT_SHARE = 0.85  # admit when the estimate fits this share of the time left
# a 413 names the largest input whose estimate fits this share of the limit: the size it names must still
# be admitted when it comes back, after the estimate moved with the machine's load (measured: +20-40%)
ADVISE_SHARE = 0.6
PIPELINE_SEED_S_PER_MPX = 0.15  # decode + blend + PNG encode per output megapixel, measured here (PNG 0.1)
MPX = 1e6


@dataclass
class Rate:
    """Seconds per pixel as decayed sums of seconds and pixels."""

    seconds: float = 0.0
    pixels: float = 0.0
    samples: int = 0
    updated: float = 0.0  # time.monotonic() of the last sample
    source: str = "seed"

    def add(self, seconds: float, pixels: float, source: str = "measured") -> None:
        fade = 0.5 ** (seconds / HALF_LIFE_S)
        self.seconds = self.seconds * fade + seconds
        self.pixels = self.pixels * fade + pixels
        self.samples += 1
        self.updated = time.monotonic()
        self.source = source

    @property
    def per_pixel(self) -> float:
        return self.seconds / self.pixels if self.pixels > 0 else 0.0

    def public(self) -> dict[str, Any]:
        return {"s_per_output_mpx": round(self.per_pixel * MPX, 4), "samples": self.samples,
                "source": self.source, "age_s": round(time.monotonic() - self.updated, 1)}


def speed_key(model: ServedModel) -> tuple:
    """The estimate is per model version and per what runs it (backend/provider, precision)."""
    return (model.name, model.version, getattr(model, "backend", None), model.provider, model.precision)


def processed_pixels(spec: ImageSpec, height: int, width: int) -> int:
    """Output pixels the graph computes for a height x width model input: every tile, padded."""
    ys, xs, th, tw = tile_grid(height, width, spec.tile_for(height, width), spec.overlap)
    ph, pw = padded_size(th, spec.multiple_of, spec.min_size), padded_size(tw, spec.multiple_of, spec.min_size)
    return len(ys) * len(xs) * ph * pw * spec.scale ** 2


class SpeedBook:
    """This worker's speed estimates and admission counts (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rates: dict[tuple, Rate] = {}
        self.pipeline = Rate(seconds=PIPELINE_SEED_S_PER_MPX, pixels=MPX, updated=time.monotonic())
        self.graph_runs = 0
        self.refused = {"413": 0, "503": 0}

    def record(self, model: ServedModel, seconds: float, pixels: int, source: str = "measured") -> None:
        """One graph run of `model`: `seconds` for `pixels` output pixels (padding included)."""
        with self._lock:
            self._rates.setdefault(speed_key(model), Rate()).add(seconds, pixels, source)
            self.graph_runs += 1

    def record_pipeline(self, seconds: float, pixels: int) -> None:
        """A finished request's time outside the graph, for its `pixels` output pixels."""
        if pixels > 0 and seconds > 0:
            with self._lock:
                self.pipeline.add(seconds, pixels)

    def rate(self, model: ServedModel) -> Rate | None:
        with self._lock:
            rate = self._rates.get(speed_key(model))
            return None if rate is None else Rate(**vars(rate))

    def estimate(self, model: ServedModel, rate: Rate, height: int, width: int) -> float:
        """Seconds a height x width input of `model` takes here: graph plus the rest."""
        spec = model.image_spec
        out = height * width * spec.scale ** 2
        return rate.per_pixel * processed_pixels(spec, height, width) + self.pipeline.per_pixel * out

    def largest_fitting(self, model: ServedModel, rate: Rate, height: int, width: int,
                        budget: float) -> tuple[int, int] | None:
        """The largest input of the same aspect ratio whose estimate fits `budget`, or None."""
        low, high = 0.0, 1.0
        for _ in range(30):
            mid = (low + high) / 2
            h, w = max(1, math.floor(height * mid)), max(1, math.floor(width * mid))
            low, high = (mid, high) if self.estimate(model, rate, h, w) <= budget else (low, mid)
        h, w = math.floor(height * low), math.floor(width * low)
        return (h, w) if h >= 1 and w >= 1 and self.estimate(model, rate, h, w) <= budget else None

    def admit(self, model: ServedModel, height: int, width: int, token: RequestToken | None,
              probe: Callable[[], None]) -> None:
        """Raise 413/503 when this height x width model input cannot finish in time; `probe` runs
        the model once on one tile (it records its own sample) when there is no fresh estimate."""
        if token is None:
            return
        token.check(model.name)
        rate = self.rate(model)
        if rate is None:
            probe()
            rate = self.rate(model)
        if rate is None:
            return
        estimate = self.estimate(model, rate, height, width)
        if estimate >= LARGE_S and time.monotonic() - rate.updated > STALE_S:
            probe()  # the load may have changed since the last sample; one tile tells
            rate = self.rate(model) or rate
            estimate = self.estimate(model, rate, height, width)
        if estimate <= ADMIT_SHARE * token.remaining():
            return
        self.refuse(model, rate, height, width, estimate, token)

    def refuse(self, model: ServedModel, rate: Rate, height: int, width: int, estimate: float,
               token: RequestToken) -> None:
        per_mpx = rate.per_pixel * MPX
        where = f"{model.name} here ({per_mpx:.3g} s per output megapixel of the graph, measured on " \
                f"{getattr(model, 'backend', None) or model.provider} {model.precision})"
        limit = token.timeout_s
        if estimate > ADMIT_SHARE * limit:
            with self._lock:
                self.refused["413"] += 1
            fits = self.largest_fitting(model, rate, height, width, ADVISE_SHARE * limit)
            advice = f"send at most {fits[1]}x{fits[0]}" if fits else "no input size fits"
            raise too_large(f"this {width}x{height} input needs ~{estimate:.0f} s on {where}; the limit "
                            f"(GANFORGE_TIMEOUT_S) is {limit:g} s: {advice}, or use a faster model")
        with self._lock:
            self.refused["503"] += 1
        waited = token.elapsed()
        raise ApiError(503, f"this {width}x{height} input needs ~{estimate:.0f} s on {where}, but only "
                            f"{max(token.remaining(), 0):.0f} s of the {limit:g} s limit are left after "
                            f"{waited:.0f} s waiting; retry when the server is less busy",
                       {"Retry-After": str(max(1, math.ceil(estimate)))}, outcome="overload")

    def describe(self, timeout_s: float) -> dict[str, Any]:
        """What GET /models shows under `admission`."""
        with self._lock:
            speeds = {f"{k[0]}@{k[1]}": {"backend": k[2] or k[3], "precision": k[4], **r.public()}
                      for k, r in self._rates.items()}
            return {"timeout_s": timeout_s, "admit_share": ADMIT_SHARE, "worker_pid": os.getpid(),
                    "graph_runs": self.graph_runs, "refused": dict(self.refused),
                    "cancelled": CANCELLED.describe(), "pipeline": self.pipeline.public(), "speeds": speeds}


BOOK = SpeedBook()  # one per worker process
