"""Which tile a big image runs in: chosen per request from the model's measured speed curve (issue 28).

The graph's cost per pixel depends on the tile (srresnet-x4 on OpenVINO bf16 here: 0.43 s per output MPx at
128, 0.41 at 160, 0.52 at 256, 0.61 at 384), and a tiling wastes work twice: the overlaps (every tile
recomputes `overlap` pixels of its neighbour) and the last tile of a row or column, which is flush with the
edge and overlaps its neighbour by whatever is left. So for an H x W input `plan_tile` tries every tile count
per axis, makes the tiles of that count just large enough to cover the axis (rounded up to `quantum`, so
requests of nearby sizes reuse a compiled shape), and keeps the plan whose predicted time (runs x padded
pixels x the curve's seconds per pixel at that tile's area) is the least. A 1024x1024 translate with a 512
tile and 32 of overlap was 9 runs of 512x512 (2.25x the image); a measured curve makes it one run, or four.

`curve`: (tile edge, seconds per padded input pixel of one graph run at edge x edge), as measured at load
(core/tiletune.py). Without a curve (GANFORGE_TILE set by hand, GANFORGE_AUTOTUNE_BUDGET_S=0) the square
`tile` is kept, as before. Tiles never exceed the curve's largest edge's area, so peak memory stays bounded
by the tile.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

from .imaging import padded_size
from .tiling import tile_starts

Curve = Sequence[tuple[int, float]]
QUANTUM = 16  # tile sides are multiples of this (and of the graph's multiple): few distinct shapes to compile


def rate_at(curve: Curve, pixels: int) -> float:
    """Seconds per input pixel of a run of `pixels` padded pixels: the curve interpolated on a log scale of
    the tile area, flat beyond its ends."""
    points = sorted((edge * edge, s) for edge, s in curve)
    if pixels <= points[0][0]:
        return points[0][1]
    for (a, sa), (b, sb) in zip(points, points[1:]):
        if pixels <= b:
            t = (math.log(pixels) - math.log(a)) / (math.log(b) - math.log(a))
            return sa + t * (sb - sa)
    return points[-1][1]


def axis_tiles(size: int, overlap: int, lowest: int, highest: int, quantum: int) -> list[int]:
    """The tile lengths worth trying on one axis: the whole axis where it fits in `highest`, and for each
    count n >= 2, the shortest multiple of `quantum` whose n tiles (overlapping by `overlap`) cover it."""
    found = {size} if size <= highest else set()
    for n in range(2, size + 1):
        length = math.ceil(math.ceil((size + (n - 1) * overlap) / n) / quantum) * quantum
        if length < max(lowest, 2 * overlap + 1):
            break
        if length < size and length <= highest:
            found.add(length)
    return sorted(found)


@functools.lru_cache(maxsize=4096)  # admission asks again for every size it tries (a 413's advice: ~30)
def plan_tile(height: int, width: int, curve: tuple[tuple[int, float], ...], overlap: int, multiple_of: int,
              min_size: int) -> tuple[int, int]:
    """(tile height, tile width) with the least predicted time for a height x width input (see the module's
    notes); the graph runs each tile padded to the card's `multiple_of` and `min_size`."""
    quantum = math.lcm(max(1, multiple_of), QUANTUM) if multiple_of < QUANTUM else multiple_of
    edges = [edge for edge, _ in curve]
    lowest, highest = min(edges), max(edges)
    most = highest * highest
    rows = {t: len(tile_starts(height, t, overlap)) for t in axis_tiles(height, overlap, lowest, highest, quantum)}
    cols = {t: len(tile_starts(width, t, overlap)) for t in axis_tiles(width, overlap, lowest, highest, quantum)}
    best: tuple[float, int, int] | None = None
    for th, n_rows in rows.items():
        ph = padded_size(th, multiple_of, min_size)
        for tw, n_cols in cols.items():
            pw = padded_size(tw, multiple_of, min_size)
            if ph * pw > most:
                continue
            cost = n_rows * n_cols * ph * pw * rate_at(curve, ph * pw)
            if best is None or cost < best[0]:
                best = (cost, th, tw)
    if best is None:  # nothing fits the largest tile's area: the square largest tile
        return highest, highest
    return best[1], best[2]
