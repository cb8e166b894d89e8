"""Run an image model over overlapping tiles and blend them without seams.

Peak model memory follows the tile, not the image: each call to `run` sees
one tile. Neighbouring tiles overlap by `overlap` input pixels. Inside the
overlap each tile's weight is ~0 over its outermost `overlap // 4` pixels
(they were computed from padding instead of real context: the dead margin),
then ramps linearly to 1; the output is the weighted average. So a tile's
contaminated border counts for (almost) nothing where its neighbour has real
context, and the ramp hides what difference remains: no seam shows.

The weights are separable (a row ramp times a column ramp) and the tiles lie
on a grid, so the sum of weights is the outer product of two 1-D sums and is
never stored per tile.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

RAMP_FLOOR = 1e-4  # weight of the dead margin: ~0, but keeps every weight sum positive
# called before each graph run with (tiles done, tiles in all); it raises to stop the image
TileCheck = Callable[[int, int], None]
# called after each graph run with (tiles done, tiles in all)
TileProgress = Callable[[int, int], None]


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length `tile` covering 0..size, the last flush with the end."""
    if size <= tile:
        return [0]
    step = max(tile - overlap, 1)
    starts = list(range(0, size - tile, step))
    starts.append(size - tile)
    return starts


def tile_grid(height: int, width: int, tile: int, overlap: int) -> tuple[list[int], list[int], int, int]:
    """(row starts, column starts, tile height, tile width) of the tiles `tile_and_blend` runs;
    one tile (the whole image) when it fits in one."""
    if height <= tile and width <= tile:
        return [0], [0], height, width
    overlap = max(0, min(overlap, tile // 2))
    return tile_starts(height, tile, overlap), tile_starts(width, tile, overlap), min(tile, height), min(tile, width)


def edge_ramp(length: int, ramp: int, margin: int, left: bool, right: bool) -> np.ndarray:
    """1-D weights: 1 inside; at an edge with a neighbour, ~0 over `margin` samples then linear up to 1
    over the rest of `ramp`. Never exactly 0, so a lone tile still normalises."""
    w = np.ones(length, dtype=np.float32)
    ramp = min(ramp, length)
    margin = min(margin, max(ramp - 1, 0))
    if ramp > 0:
        k = np.arange(ramp, dtype=np.float32) + 0.5
        up = np.clip((k - margin) / (ramp - margin), RAMP_FLOOR, 1.0).astype(np.float32)
        if left:
            w[:ramp] = np.minimum(w[:ramp], up)
        if right:
            w[length - ramp:] = np.minimum(w[length - ramp:], up[::-1])
    return w


def not_one(w: np.ndarray) -> list[tuple[int, int]]:
    """The [start, stop) runs of `w` whose values are not exactly 1."""
    edges = np.diff(np.concatenate(([0], (w != 1.0).astype(np.int8), [0])))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def between(runs: list[tuple[int, int]], length: int) -> list[tuple[int, int]]:
    """The [start, stop) runs of 0..length outside `runs` (sorted, disjoint)."""
    out, at = [], 0
    for a, b in runs:
        if a > at:
            out.append((at, a))
        at = b
    if at < length:
        out.append((at, length))
    return out


def weigh(y: np.ndarray, wy: np.ndarray, wx: np.ndarray) -> None:
    """y [C, h, w] *= the outer product wy x wx, in place, touching only where that product is not 1: the
    same float32 products as the full multiply (1 * wx is wx exactly), without a pass over the inside."""
    rows, cols = not_one(wy), not_one(wx)
    for a, b in rows:
        y[:, a:b] *= wy[a:b, None] * wx[None, :]
    for a, b in between(rows, len(wy)):
        for c, d in cols:
            y[:, a:b, c:d] *= wx[None, c:d]


def normalise(block: np.ndarray, row_sum: np.ndarray, col_runs: list[tuple[int, int]], col_sum: np.ndarray) -> None:
    """block [C, h, W] /= its rows' and columns' weight sums, in place, only where a sum is not 1 (x / 1 is x)."""
    for a, b in not_one(row_sum):
        block[:, a:b] /= row_sum[a:b, None]
    for c, d in col_runs:
        block[:, :, c:d] /= col_sum[None, c:d]


def tile_and_blend(
    run: Callable[[np.ndarray], np.ndarray],
    image: np.ndarray,
    tile: int,
    overlap: int,
    scale: int,
    finish: Callable[[np.ndarray], np.ndarray] | None = None,
    check: TileCheck | None = None,
    progress: TileProgress | None = None,
) -> np.ndarray:
    """image [C, H, W] -> [C', H*scale, W*scale], computed tile by tile.

    `tile`: the square tile's edge (core/tileplan.py picks one per image).
    `run` maps [1, C, h, w] -> [1, C', h*scale, w*scale] for any h, w <= tile
    (it pads to the graph's constraints itself). Inputs no larger than one
    tile go through `run` once, untiled.

    `finish` (e.g. float -> uint8 pixels) maps a float block of output rows
    [C', h, W*scale] to an array with those rows on axis 0 ([h, W*scale, C']);
    the result is then that array for the whole image. Tiles run one tile row
    at a time, and output rows that no later tile touches are normalised and
    finished at once: only one tile row's float strip is ever held, not the
    float image (a 2048 -> 8192 upscale holds ~50 MB of strip, not 805 MB of
    float output and its temporaries).

    `check(done, total)` runs before each tile (a cancelled or late request raises there), so a
    request stops within one tile of being cancelled; `progress(done, total)` after each tile.
    """
    _, height, width = image.shape
    if height <= tile and width <= tile:
        if check is not None:
            check(0, 1)
        y = run(image[None])[0]
        if progress is not None:
            progress(1, 1)
        return y if finish is None else finish(y)
    overlap = max(0, min(overlap, tile // 2))
    ys, xs, th, tw = tile_grid(height, width, tile, overlap)
    total, ran = len(ys) * len(xs), 0
    ramp, margin = overlap * scale, (overlap // 4) * scale
    row_weights = [edge_ramp(th * scale, ramp, margin, y0 > 0, y0 + th < height) for y0 in ys]
    col_weights = [edge_ramp(tw * scale, ramp, margin, x0 > 0, x0 + tw < width) for x0 in xs]
    row_sum = np.zeros(height * scale, dtype=np.float32)
    col_sum = np.zeros(width * scale, dtype=np.float32)
    for y0, wy in zip(ys, row_weights):
        row_sum[y0 * scale:(y0 + th) * scale] += wy
    for x0, wx in zip(xs, col_weights):
        col_sum[x0 * scale:(x0 + tw) * scale] += wx
    col_runs = not_one(col_sum)

    out: np.ndarray | None = None
    strip: np.ndarray | None = None  # float rows [base, base + th*scale) of the output
    base = 0
    for i, (y0, wy) in enumerate(zip(ys, row_weights)):
        top = y0 * scale
        fresh = None
        for x0, wx in zip(xs, col_weights):
            if check is not None:
                check(ran, total)
            y = run(image[None, :, y0:y0 + th, x0:x0 + tw])[0]
            ran += 1
            if progress is not None:
                progress(ran, total)
            if fresh is None:
                fresh = np.zeros((y.shape[0], th * scale, width * scale), dtype=np.float32)
                if strip is not None:  # rows the previous tile row left unfinished
                    keep = base + strip.shape[1] - top
                    fresh[:, :keep] = strip[:, top - base:]
            weigh(y, wy, wx)
            fresh[:, :, x0 * scale:(x0 + tw) * scale] += y
        strip, base = fresh, top
        end = ys[i + 1] * scale if i + 1 < len(ys) else (y0 + th) * scale  # rows done after this tile row
        block = strip[:, : end - base]
        normalise(block, row_sum[base:end], col_runs, col_sum)
        done = block if finish is None else finish(block)
        if out is None:
            shape = (block.shape[0], height * scale, width * scale) if finish is None \
                else (height * scale,) + done.shape[1:]
            out = np.empty(shape, dtype=done.dtype)
        if finish is None:
            out[:, base:end] = done
        else:
            out[base:end] = done
    assert out is not None
    return out
