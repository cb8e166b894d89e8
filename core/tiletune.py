"""Each image model's tile, measured at load on the backend and precision that serve it (issue 28).

A big image runs tile by tile, and the graph's cost per pixel depends on the tile: smaller tiles waste
more on their overlaps, larger ones can be slower per pixel (caches). So at load, where no tile is forced
(GANFORGE_TILE=0) and GANFORGE_AUTOTUNE_BUDGET_S > 0, the served session is timed at square tiles around
the card's (`candidate_edges`): each edge runs once untimed (a new shape compiles), then up to TIMED_RUNS
times; the probe walks up from the card's tile, then down, and stops in a direction once WORSE_STOP edges in
a row cost more per covered pixel than the best (the curve's minimum is behind) or the budget is spent.

The curve (edge, seconds per padded input pixel) goes into the model's ImageSpec: each request then runs in
the tile `core/tileplan.py` plans for its size from that curve, and admission estimates the same plan.
`ImageSpec.tile` becomes the edge with the least cost per covered pixel of a big image (overlaps counted).
The curve is cached beside the autotune table (`<name>.tiles.json`), keyed like it plus the served backend
and precision, the edges and the overlap: a restart measures nothing. `/models` shows it as `tiles`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .autotune import cache_key, machine_load, noise, read_keyed, write_cache
from .cpu import OthersCpu
from .loading import ImageSpec, ServedModel, padded_min
from .pipelines import image_runner
from .settings import RuntimeConfig

logger = logging.getLogger("bentoml.ganforge")

TILETUNE_VERSION = 1  # bump when the measurement or the file's layout changes
EDGES = (64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512, 640, 768, 896, 1024)
MAX_INPUT_EDGE = 1024  # a tile's input side at most
MAX_OUTPUT_EDGE = 2048  # and its output side (x4: 512 in): one run's memory stays bounded
TIMED_RUNS = 3
WORSE_STOP = 2  # this many edges in a row costlier than the best: the minimum is behind, stop that way


def tiles_skipped(settings: RuntimeConfig, spec: ImageSpec | None) -> str | None:
    """Why this model's tile is not measured (None: it is)."""
    if spec is None:
        return "not an image model"
    if spec.native_size is not None:
        return "runs whole at its native size"
    if settings.tile > 0:
        return f"GANFORGE_TILE={settings.tile} set by hand"
    if settings.autotune_budget_s <= 0:
        return "GANFORGE_AUTOTUNE_BUDGET_S=0: the card's tile"
    return None


def candidate_edges(spec: ImageSpec) -> list[int]:
    """The square tiles worth timing: whole multiples of the graph's, from its minimum up to the bounds, with
    room beyond the overlap; the card's own tile always among them."""
    lowest = max(padded_min(spec.min_size, spec.multiple_of), 2 * spec.overlap + 1)
    highest = min(MAX_INPUT_EDGE, MAX_OUTPUT_EDGE // spec.scale)
    edges = {e for e in EDGES if e % spec.multiple_of == 0 and lowest <= e <= highest}
    return sorted(edges | {spec.tile})


def covered_cost(edge: int, s_per_px: float, overlap: int) -> float:
    """Seconds per input pixel of a big image tiled at `edge`: a run covers (edge - overlap)^2 new pixels."""
    return s_per_px * edge * edge / max(edge - overlap, 1) ** 2


def measure_curve(seconds_at: Callable[[int], float], edges: list[int], start: int, overlap: int,
                  budget_s: float, clock: Callable[[], float] = time.monotonic) -> dict[int, float]:
    """edge -> the least seconds per padded input pixel of one run (see the module's notes)."""
    deadline = clock() + budget_s
    per_px: dict[int, float] = {}

    def probe(edge: int) -> None:
        began = clock()
        seconds_at(edge)  # compiles and allocates the shape: untimed
        times = []
        while len(times) < TIMED_RUNS and (not times or clock() - began < budget_s / 4):
            times.append(seconds_at(edge))
        per_px[edge] = min(times) / (edge * edge)  # another process only ever adds time: the least is the truest

    probe(start)
    for way in ([e for e in edges if e > start], [e for e in edges if e < start][::-1]):
        worse = 0
        for edge in way:
            if clock() >= deadline:
                break
            probe(edge)
            best = min(covered_cost(e, s, overlap) for e, s in per_px.items())
            worse = worse + 1 if covered_cost(edge, per_px[edge], overlap) > best else 0
            if worse >= WORSE_STOP:
                break
    for edge in sorted(per_px):  # one more run each, spread over the walk's time: a burst of load that hit one
        if clock() >= deadline:  # edge's runs does not decide the curve
            break
        per_px[edge] = min(per_px[edge], seconds_at(edge) / (edge * edge))
    return per_px


def curve_rows(per_px: dict[int, float], overlap: int, scale: int) -> list[dict[str, Any]]:
    return [{"edge": e, "ms": round(s * e * e * 1e3, 3), "s_per_output_mpx": round(s / scale ** 2 * 1e6, 4),
             "s_per_covered_mpx": round(covered_cost(e, s, overlap) / scale ** 2 * 1e6, 4)}
            for e, s in sorted(per_px.items())]


def seconds_at(model: ServedModel) -> Callable[[int], float]:
    """One served graph run (the pipeline's runner: padding and cropping included) on an edge x edge tile of
    uniform pixels in the input range."""
    spec = model.image_spec
    run = image_runner(model, model.directions[0] if model.directions else "generator")
    rng = np.random.default_rng(0)
    lo, hi = spec.in_range

    def timed(edge: int) -> float:
        x = rng.uniform(lo, hi, (1, spec.in_channels, edge, edge)).astype(np.float32)
        started = time.perf_counter()
        run(x)
        return time.perf_counter() - started

    return timed


def tile_key(model: ServedModel, edges: list[int], settings: RuntimeConfig) -> dict[str, Any]:
    routes = [row.get("choice") for row in (model.autotune or {}).get("rows", [])]
    return {**cache_key(model.card, [], [], settings.ort_threads), "tiletune": TILETUNE_VERSION,
            "served": [model.backend, model.precision], "routes": routes, "edges": edges,
            "overlap": model.image_spec.overlap}


def curve_for(model: ServedModel, path: Path, settings: RuntimeConfig) -> dict[str, Any]:
    """The model's tile entry: from the cache when it matches, else measured (and cached when quiet)."""
    spec = model.image_spec
    edges = candidate_edges(spec)
    key = tile_key(model, edges, settings)
    cached = read_keyed(path, key)
    if cached is not None:
        logger.info("model %s: tile curve from cache %s (nothing measured)", model.name, path)
        return {**cached, "source": "cache", "file": str(path)}
    started, load, others = time.monotonic(), machine_load(), OthersCpu()
    per_px = measure_curve(seconds_at(model), edges, spec.tile, spec.overlap, settings.autotune_budget_s)
    share, noisy = noise(others, [{"loadavg": round(load, 2)}])
    entry = {"key": key, "rows": curve_rows(per_px, spec.overlap, spec.scale), "loadavg": round(load, 2),
             "others_cpu": share, "seconds": round(time.monotonic() - started, 3),
             "budget_s": settings.autotune_budget_s, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    written = noisy is None and write_cache(path, entry)
    if noisy is not None:
        logger.warning("model %s: tile curve measured while %s: serving it, not caching it", model.name, noisy)
    return {**entry, "source": "measured", "file": str(path) if written else None}


def apply_tiles(model: ServedModel, path: Path, settings: RuntimeConfig) -> None:
    """Measure (or read) the curve and put it in the model's ImageSpec; `model.tiles` says what was done."""
    spec = model.image_spec
    entry = curve_for(model, path, settings)
    curve = tuple((int(r["edge"]), r["ms"] / 1e3 / (int(r["edge"]) ** 2)) for r in entry["rows"])
    best = min(curve, key=lambda c: covered_cost(c[0], c[1], spec.overlap))[0]
    model.image_spec = dataclasses.replace(spec, tile=best, tile_curve=curve)
    model.tiles = {"tile": best, "card_tile": spec.tile, "overlap": spec.overlap,
                   **{k: entry[k] for k in ("source", "file", "rows", "seconds", "budget_s", "measured_at",
                                            "loadavg", "others_cpu") if k in entry}}
    logger.info("model %s: tile %d for big images (card: %d; %s: %s)", model.name, best, spec.tile, entry["source"],
                ", ".join(f"{r['edge']}: {r['s_per_covered_mpx']:.3f} s/MPx" for r in entry["rows"]))


def tune_tiles(model: ServedModel, path: Path, settings: RuntimeConfig) -> None:
    """`apply_tiles` where it applies; never raises (the card's tile still serves)."""
    skipped = tiles_skipped(settings, model.image_spec)
    if skipped is not None:
        if model.image_spec is not None:
            model.tiles = {"tile": model.image_spec.tile, "overlap": model.image_spec.overlap, "skipped": skipped}
        return
    try:
        apply_tiles(model, path, settings)
    except Exception as exc:  # noqa: BLE001 - the card's tile still serves
        logger.warning("model %s: tile measurement failed (%s: %s); serving tile %d", model.name,
                       type(exc).__name__, exc, model.image_spec.tile)
        model.tiles = {"tile": model.image_spec.tile, "overlap": model.image_spec.overlap,
                       "failed": f"{type(exc).__name__}: {exc}"}
