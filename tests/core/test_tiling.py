"""core/tiling.py and the pipeline's tile runner: coverage, exact blends, row-block finishing, the caller's
check (cancel within one tile) and progress hooks. (The seam bound of a real model tiled against one pass is
tests/service/test_service_units.py's test_upscale_tiled_matches_untiled.)"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from core import imaging
from core import pipelines
from core.loading import ImageSpec, ServedModel
from core.runtime import make_session
from core.tiling import tile_and_blend, tile_grid, tile_starts

def nearest_x2(path: Path) -> Path:
    """A pointwise x2 upscaler (nearest Resize): tiled output must equal the whole-image output."""
    scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2])
    node = helper.make_node("Resize", ["image", "", "scales"], ["output"], mode="nearest")
    graph = helper.make_graph([node], "x2", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3, "H2", "W2"])],
                              [scales])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), path)
    return path

def test_tiled_run_matches_whole_image(tmp_path):
    """The service's tiler (the one eval runs through): tiled output equals the whole-image output."""
    sess = make_session(nearest_x2(tmp_path / "x2.onnx"))
    spec = ImageSpec(input_name="image", output_name="output", in_channels=3, in_range=(-1.0, 1.0), multiple_of=1,
                     min_size=1, native_size=None, out_channels=3, out_range=(-1.0, 1.0), scale=2, tile=16, overlap=4)
    served = ServedModel("x2", status="ready", sessions={"generator": sess}, image_spec=spec)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 45, 37)).astype(np.float32)
    whole = sess.run(["output"], {"image": x})[0]
    tiled = tile_and_blend(pipelines.image_runner(served, "generator"), x[0], spec.tile, spec.overlap, spec.scale)
    assert tiled.shape == whole.shape[1:] == (3, 90, 74)
    assert np.abs(tiled - whole[0]).max() < 1e-6
    served.image_spec = dataclasses.replace(spec, multiple_of=8)  # reflect-padded to 48 x 40, cropped back
    assert pipelines.image_runner(served, "generator")(x).shape == (1, 3, 90, 74)

def test_tile_starts_cover_and_end_flush():
    for size in (1, 63, 64, 65, 150, 1000):
        starts = tile_starts(size, 64, 8)
        assert starts[0] == 0 and starts[-1] + min(64, size) == size
        assert all(b - a <= 56 for a, b in zip(starts, starts[1:]))

def test_tiling_is_exact_for_a_pointwise_model():
    """With no spatial context, blending must reproduce the untiled result to float precision."""
    rng = np.random.default_rng(0)
    image = rng.standard_normal((3, 150, 131)).astype(np.float32)

    def pointwise_x2(x):
        return np.repeat(np.repeat(np.tanh(x * 1.5), 2, axis=2), 2, axis=3)

    tiled = tile_and_blend(pointwise_x2, image, tile=32, overlap=6, scale=2)
    untiled = pointwise_x2(image[None])[0]
    assert tiled.shape == untiled.shape == (3, 300, 262)
    assert np.abs(tiled - untiled).max() < 1e-5

def reference_blend(run, image, tile, overlap, scale):
    """The plain weighted average over a whole float canvas, summed in tile order (tile rows top to bottom,
    left to right in a row), divided by the row sums then the column sums where they are not 1: what the
    tiler must give to the bit."""
    from core.tiling import edge_ramp

    _, h, w = image.shape
    ys, xs, th, tw = tile_grid(h, w, tile, overlap)
    overlap = max(0, min(overlap, tile // 2))
    ramp, margin = overlap * scale, (overlap // 4) * scale
    canvas, rows, cols = None, np.zeros(h * scale, np.float32), np.zeros(w * scale, np.float32)
    for y0 in ys:
        wy = edge_ramp(th * scale, ramp, margin, y0 > 0, y0 + th < h)
        rows[y0 * scale:(y0 + th) * scale] += wy
        for x0 in xs:
            wx = edge_ramp(tw * scale, ramp, margin, x0 > 0, x0 + tw < w)
            if y0 == ys[0]:
                cols[x0 * scale:(x0 + tw) * scale] += wx
            y = run(image[None, :, y0:y0 + th, x0:x0 + tw])[0] * (wy[:, None] * wx[None, :])
            canvas = np.zeros((y.shape[0], h * scale, w * scale), np.float32) if canvas is None else canvas
            canvas[:, y0 * scale:(y0 + th) * scale, x0 * scale:(x0 + tw) * scale] += y
    canvas[:, rows != 1] /= rows[rows != 1][:, None]
    canvas[:, :, cols != 1] /= cols[cols != 1]
    return canvas


@pytest.mark.parametrize("h, w, tile, overlap, scale", [(150, 131, 32, 6, 2), (97, 203, 40, 12, 4), (64, 65, 64, 16, 1),
                                                        (33, 200, 32, 16, 1), (70, 70, 32, 0, 2), (300, 17, 48, 4, 1)])
def test_tiling_is_the_plain_weighted_average_to_the_bit(h, w, tile, overlap, scale):
    """Float out and finished (uint8) out both equal the plain weighted average over a whole canvas, to the
    bit; `finish` sees float blocks no taller than one tile row, and finishes every output pixel once."""
    image = np.random.default_rng(h * w).uniform(-1.2, 1.2, (3, h, w)).astype(np.float32)

    def blurry(x):  # spatial context, so the blend weights matter
        y = np.repeat(np.repeat(np.tanh(x * 1.5), scale, axis=2), scale, axis=3)
        return ((y + np.roll(y, 1, axis=2) + np.roll(y, 1, axis=3)) / 3).astype(np.float32)

    blocks = []

    def finish(block):
        blocks.append(block.shape)
        return imaging.to_pixels(block, (-1, 1))

    want = reference_blend(blurry, image, tile, overlap, scale)
    got = tile_and_blend(blurry, image, tile, overlap, scale)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    pixels = tile_and_blend(blurry, image, tile, overlap, scale, finish=finish)
    assert pixels.dtype == np.uint8 and np.array_equal(pixels, imaging.to_pixels(want, (-1, 1)))
    assert max(b[1] for b in blocks) <= tile * scale and sum(b[1] * b[2] for b in blocks) == h * w * scale ** 2


def test_tiling_untiled_input_is_one_run_finished():
    image = np.random.default_rng(1).uniform(-1, 1, (3, 20, 30)).astype(np.float32)

    def blurry_x2(x):
        y = np.repeat(np.repeat(np.tanh(x * 1.5), 2, axis=2), 2, axis=3)
        return (y + np.roll(y, 1, axis=2) + np.roll(y, 1, axis=3)) / 3

    finish = lambda block: imaging.to_pixels(block, (-1, 1))  # noqa: E731
    one = tile_and_blend(blurry_x2, image, tile=32, overlap=6, scale=2, finish=finish)
    assert np.array_equal(one, imaging.to_pixels(blurry_x2(image[None])[0], (-1, 1)))


def test_tiler_stops_within_one_tile_when_the_check_raises():
    image = np.random.default_rng(0).uniform(-1, 1, (3, 100, 130)).astype(np.float32)
    ys, xs, _, _ = tile_grid(100, 130, 32, 8)
    total = len(ys) * len(xs)
    runs, seen = [], []

    def run(x):
        runs.append(x.shape)
        return np.repeat(np.repeat(x, 2, axis=2), 2, axis=3)

    def check(done, all_tiles):
        seen.append((done, all_tiles))
        if done == 5 + len(xs):  # in the second tile row
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        tile_and_blend(run, image, 32, 8, 2, check=check)
    assert len(runs) == 5 + len(xs) and seen == [(k, total) for k in range(6 + len(xs))]
    # untiled: one check before the one run; with a check that never raises the result is unchanged
    calls = []
    small = image[:, :20, :20]
    out = tile_and_blend(run, small, 32, 8, 2, check=lambda d, t: calls.append((d, t)))
    assert calls == [(0, 1)] and np.array_equal(out, run(small[None])[0])
    assert np.array_equal(tile_and_blend(run, image, 32, 8, 2, check=lambda d, t: None),
                          tile_and_blend(run, image, 32, 8, 2))

def test_tile_grid_is_the_plan_tile_and_blend_runs():
    for h, w, tile, overlap in ((100, 130, 32, 8), (20, 20, 32, 8), (64, 65, 64, 16), (300, 17, 48, 4)):
        ys, xs, th, tw = tile_grid(h, w, tile, overlap)
        runs = []
        tile_and_blend(lambda x: runs.append(x.shape) or x, np.zeros((1, h, w), np.float32), tile, overlap, 1)
        assert len(runs) == len(ys) * len(xs) and all(s[-2:] == (th, tw) for s in runs)


def test_progress_follows_every_tile_and_the_pipeline_passes_the_hooks(tmp_path):
    """`progress(done, total)` after each tile, ending at (total, total); check before, progress after; the
    pipeline's Hooks reach the tiler (admit once with the graph's input size, on_run per tile)."""
    image = np.zeros((3, 100, 130), np.float32)
    ys, xs, _, _ = tile_grid(100, 130, 32, 8)
    total, events = len(ys) * len(xs), []
    tile_and_blend(lambda x: x, image, 32, 8, 1, check=lambda d, t: events.append(("check", d, t)),
                   progress=lambda d, t: events.append(("progress", d, t)))
    assert [e for e in events if e[0] == "progress"] == [("progress", k, total) for k in range(1, total + 1)]
    assert events[0] == ("check", 0, total) and events[-1] == ("progress", total, total)
    sess = make_session(nearest_x2(tmp_path / "x2.onnx"))
    spec = ImageSpec(input_name="image", output_name="output", in_channels=3, in_range=(-1.0, 1.0), multiple_of=1,
                     min_size=1, native_size=None, out_channels=3, out_range=(-1.0, 1.0), scale=2, tile=16, overlap=4)
    served = ServedModel("x2", status="ready", sessions={"generator": sess}, image_spec=spec)
    seen = {"admit": [], "runs": 0, "progress": []}
    hooks = pipelines.Hooks(admit=lambda h, w: seen["admit"].append((h, w)),
                            progress=lambda d, t: seen["progress"].append((d, t)),
                            on_run=lambda s, px, tile: seen.__setitem__("runs", seen["runs"] + 1))
    pixels = np.random.default_rng(2).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    out = pipelines.run_image_model(served, "generator", pixels, hooks)
    ys, xs, _, _ = tile_grid(40, 30, 16, 4)
    assert out.shape == (80, 60, 3) and seen["admit"] == [(40, 30)]
    assert seen["runs"] == len(ys) * len(xs) and seen["progress"][-1] == (len(ys) * len(xs),) * 2
    assert np.array_equal(out, pipelines.run_image_model(served, "generator", pixels))  # hooks change nothing
