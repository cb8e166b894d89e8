"""Which tile a big image runs in: chosen per request from the model's measured speed curve (issue 28).

The graph's cost per pixel depends on the tile (srresnet-x4 on OpenVINO bf16 on this project's AMX Xeon:
2.5 us per input pixel up to 112x112, 2.8-2.95 from 128 to 192, 3.3 at 256: the activations of bigger tiles
no longer fit a core's L2), and a tiling wastes work twice: the overlaps (every tile recomputes `overlap`
pixels of its neighbour) and the last tile of a row or column, flush with the edge, which overlaps its
neighbour by whatever is left. So for an H x W input `plan_tile` predicts, for every measured edge, its tile
count x its measured run time, and for a whole-image run where the image fits in the largest measured edge,
the curve's rate at the image's area; the cheapest wins. Only measured square shapes are tiled with: the
probe compiled them (OpenVINO compiles each new shape on its first run) and their speed is known, not
guessed (odd shapes planned from an interpolated curve were no faster in a side-by-side run). A 1024x1024
translate with the card's 512 tile and 32 of overlap was 9 runs of 512x512 (2.25x the image's pixels); its
measured curve makes it one run.

`curve`: (tile edge, seconds per padded input pixel of one graph run at edge x edge), as measured at load
(core/tiletune.py). Without a curve (GANFORGE_TILE set by hand, GANFORGE_AUTOTUNE_BUDGET_S=0) the square
`tile` is kept, as before. Tiles never exceed the largest measured edge, so peak memory stays bounded by it.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

from .imaging import padded_size
from .tiling import tile_grid

Curve = Sequence[tuple[int, float]]


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


@functools.lru_cache(maxsize=4096)  # admission asks again for every size it tries (a 413's advice: ~30)
def plan_tile(height: int, width: int, curve: tuple[tuple[int, float], ...], overlap: int, multiple_of: int,
              min_size: int) -> int:
    """The square tile edge with the least predicted time for a height x width input (see the module's notes):
    each measured edge's tile count x its measured run time (padded), or one run of the whole image where it
    fits in the largest measured edge."""
    best: tuple[float, int] | None = None
    for edge, s_per_px in sorted(curve):
        ys, xs, th, tw = tile_grid(height, width, edge, overlap)
        ph, pw = padded_size(th, multiple_of, min_size), padded_size(tw, multiple_of, min_size)
        per_run = s_per_px if len(ys) * len(xs) > 1 or th * tw == edge * edge else rate_at(curve, ph * pw)
        cost = len(ys) * len(xs) * ph * pw * per_run
        if best is None or cost < best[0]:
            best = (cost, edge)
    assert best is not None, "an empty curve"
    return best[1]
