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


def weigh(y: np.ndarray, wy: np.ndarray, wx: np.ndarray, rows: list[tuple[int, int]],
          cols: list[tuple[int, int]]) -> None:
    """y [C, h, w] *= the outer product wy x wx, in place, touching only where that product is not 1: the
    same float32 products as the full multiply (1 * wx is wx exactly), without a pass over the inside.
    `rows` / `cols`: not_one(wy) / not_one(wx), made once per tile row / column by the caller."""
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


def coverage(starts: list[int], length: int, scale: int, size: int) -> np.ndarray:
    """Per output sample along one axis: how many tiles of `length` input samples starting at `starts` cover it."""
    count = np.zeros(size * scale, dtype=np.int8)
    for start in starts:
        count[start * scale:(start + length) * scale] += 1
    return count


def single_run(count: np.ndarray, weights: np.ndarray, sums: np.ndarray, start: int) -> tuple[int, int]:
    """[a, b), relative to `start`, of one tile's samples that no other tile covers, whose weight and weight sum
    are exactly 1: the tile's own output there is final. (0, 0) when it has none, or none in one run."""
    own = (count[start:start + len(weights)] == 1) & (weights == 1.0) & (sums[start:start + len(weights)] == 1.0)
    index = np.flatnonzero(own)
    if len(index) == 0 or index[-1] - index[0] + 1 != len(index):
        return 0, 0
    return int(index[0]), int(index[-1]) + 1


class BandBlend:
    """The output of a tiled image, assembled tile by tile (see tile_and_blend): each tile's own part
    finished at once, its overlap bands summed into a float strip and finished when complete."""

    def __init__(self, height: int, width: int, tile: int, overlap: int, scale: int,
                 finish: Callable[[np.ndarray], np.ndarray] | None) -> None:
        self.scale, self.finish = scale, finish
        self.ys, self.xs, self.th, self.tw = tile_grid(height, width, tile, overlap)
        overlap = max(0, min(overlap, tile // 2))
        ramp, margin = overlap * scale, (overlap // 4) * scale
        self.row_weights = [edge_ramp(self.th * scale, ramp, margin, y0 > 0, y0 + self.th < height) for y0 in self.ys]
        self.col_weights = [edge_ramp(self.tw * scale, ramp, margin, x0 > 0, x0 + self.tw < width) for x0 in self.xs]
        self.row_sum = np.zeros(height * scale, dtype=np.float32)
        self.col_sum = np.zeros(width * scale, dtype=np.float32)
        for y0, wy in zip(self.ys, self.row_weights):
            self.row_sum[y0 * scale:(y0 + self.th) * scale] += wy
        for x0, wx in zip(self.xs, self.col_weights):
            self.col_sum[x0 * scale:(x0 + self.tw) * scale] += wx
        self.col_runs = not_one(self.col_sum)
        self.col_ramps = [not_one(wx) for wx in self.col_weights]
        self.row_count = coverage(self.ys, self.th, scale, height)
        col_count = coverage(self.xs, self.tw, scale, width)
        self.col_own = [single_run(col_count, wx, self.col_sum, x0 * scale) for x0, wx in zip(self.xs, self.col_weights)]
        self.bands = between([(x0 * scale + a, x0 * scale + b) for x0, (a, b) in zip(self.xs, self.col_own) if b > a],
                             width * scale)
        self.height, self.width = height * scale, width * scale
        self.out: np.ndarray | None = None
        self.strip: np.ndarray | None = None  # float rows [base, base + th*scale): only its bands are written
        self.base = 0
        self.spare: list[np.ndarray] = []  # two strips, used in turn: pages faulted in once, not per tile row
        self.fresh = np.empty((0, 0, 0), dtype=np.float32)  # the current tile row's strip (start_row)
        self.ra = self.rb = 0  # its own rows, local: no other tile row covers them (start_row)
        self.row_ramps: list[tuple[int, int]] = []

    def store(self, rows: slice, cols: slice, block: np.ndarray) -> None:
        """Finish a float block [C', h, w] into the output at rows x cols."""
        done = block if self.finish is None else self.finish(block)
        if self.out is None:
            self.out = np.empty((done.shape[0], self.height, self.width) if self.finish is None
                                else (self.height, self.width) + done.shape[2:], dtype=done.dtype)
        if self.finish is None:
            self.out[:, rows, cols] = done
        else:
            self.out[rows, cols] = done

    def start_row(self, i: int, channels: int) -> None:
        """A new tile row: its strip holds the rows the row above left, and zeros where sums will be made."""
        top = self.ys[i] * self.scale
        self.ra, self.rb = single_run(self.row_count, self.row_weights[i], self.row_sum, top)  # own rows (local)
        self.row_ramps = not_one(self.row_weights[i])
        if len(self.spare) < 2:
            self.spare.append(np.empty((channels, self.th * self.scale, self.width), dtype=np.float32))
        fresh = self.spare[i % 2]
        keep = 0 if self.strip is None else self.base + self.strip.shape[1] - top  # rows the tile row above left
        if keep:
            fresh[:, :keep] = self.strip[:, top - self.base:]
        if self.rb > self.ra:  # zeros in the bands only
            fresh[:, keep:self.ra] = 0
            fresh[:, self.rb:] = 0
            for c, d in self.bands:
                fresh[:, self.ra:self.rb, c:d] = 0
        else:  # no rows of its own: everything is band
            fresh[:, keep:] = 0
        self.fresh = fresh

    def add(self, i: int, j: int, y: np.ndarray) -> None:
        """Tile (i, j)'s output [C', th*s, tw*s]: its own part finished, its bands weighed and summed."""
        top, left, tw = self.ys[i] * self.scale, self.xs[j] * self.scale, self.tw * self.scale
        ra, rb, (ca, cb), fresh = self.ra, self.rb, self.col_own[j], self.fresh
        own = rb > ra and cb > ca
        if own:  # final as it is: finished now, never summed
            self.store(slice(top + ra, top + rb), slice(left + ca, left + cb), y[:, ra:rb, ca:cb])
        weigh(y, self.row_weights[i], self.col_weights[j], self.row_ramps, self.col_ramps[j])
        span = slice(left, left + tw)
        if own:
            fresh[:, :ra, span] += y[:, :ra]
            fresh[:, rb:, span] += y[:, rb:]
            fresh[:, ra:rb, left:left + ca] += y[:, ra:rb, :ca]
            fresh[:, ra:rb, left + cb:left + tw] += y[:, ra:rb, cb:]
        else:
            fresh[:, :, span] += y

    def end_row(self, i: int) -> None:
        """Finish what is complete once tile row i has run: its band rows whole, its own rows' vertical bands."""
        top, ys, s = self.ys[i] * self.scale, self.ys, self.scale
        self.strip, self.base = self.fresh, top
        end = ys[i + 1] * s if i + 1 < len(ys) else (ys[i] + self.th) * s  # rows done after this tile row
        done, ra, rb = end - top, self.ra, self.rb
        own_end = min(rb, done) if rb > ra else ra
        for a, b in ((0, ra), (own_end, done)):  # band rows, whole width
            if b > a:
                block = self.strip[:, a:b]
                normalise(block, self.row_sum[top + a:top + b], self.col_runs, self.col_sum)
                self.store(slice(top + a, top + b), slice(0, self.width), block)
        if own_end > ra:  # own rows: only their vertical bands were summed
            for c, d in self.bands:
                block = self.strip[:, ra:own_end, c:d]
                runs = [(max(a, c) - c, min(b, d) - c) for a, b in self.col_runs if a < d and b > c]
                normalise(block, self.row_sum[top + ra:top + own_end], runs, self.col_sum[c:d])
                self.store(slice(top + ra, top + own_end), slice(c, d), block)


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

    `finish` (e.g. float -> uint8 pixels) maps a float block [C', h, w] of the
    output to an array with those rows on axis 0 ([h, w, C']); the result is
    then that array for the whole image.

    Float work only where tiles overlap (BandBlend): the part of a tile that
    no other tile covers (weight 1, weight sum 1) is finished straight from
    the tile's own output, while it is in cache. Only the overlap bands are
    weighed, summed into a float strip, normalised and finished: the
    horizontal band once the next tile row has run, the vertical bands when
    their rows are done. Two tile rows' float strips are allocated (used in
    turn), and only their bands are written (a 2048 -> 8192 upscale touches
    part of two ~40 MB strips, not 805 MB of float output). The sums are
    made in the same order as a plain weighted sum over the whole image, so
    the answer is the same to the bit.

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
    blend = BandBlend(height, width, tile, overlap, scale, finish)
    th, tw = blend.th, blend.tw
    total, ran = len(blend.ys) * len(blend.xs), 0
    for i, y0 in enumerate(blend.ys):
        for j, x0 in enumerate(blend.xs):
            if check is not None:
                check(ran, total)
            y = run(image[None, :, y0:y0 + th, x0:x0 + tw])[0]
            ran += 1
            if progress is not None:
                progress(ran, total)
            if j == 0:
                blend.start_row(i, y.shape[0])
            blend.add(i, j, y)
        blend.end_row(i)
    assert blend.out is not None
    return blend.out
