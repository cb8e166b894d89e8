"""Big images: wall time and peak memory of the service's own tiled pipeline, by tile size.

Each configuration runs in a fresh subprocess (`python -m bench.bigimage
--worker SPEC`) that loads the one model with the service's loader
(`core.loading.load_model`, CPU, GANFORGE_TILE overridden through
`Settings.tile`), builds the input pixels, resets the kernel's peak-RSS mark
(/proc/self/clear_refs) and calls `core.pipelines.upscale_image` or
`translate_image` once: no decode or encode, the model and tiling alone.
Reported: wall time, peak RSS, and the growth over the RSS just before the
call (the input pixels and the loaded model are in the baseline).

The untiled run (tile >= the image) is tried only where it is predicted to
fit: the measured growth of the tiled runs is fitted as a + b * tile^2 and
extrapolated to the whole image; above half of MemAvailable it is skipped and
the prediction reported instead.

Full run: upscale 2048x2048 -> 8192x8192 (srresnet-x4) and translate
4096x4096 (the pix2pix model); --quick uses much smaller images.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .common import (REPO, Profile, fmt_x, mem_available_bytes, peak_rss_bytes, photo_like, reset_peak_rss,
                     rss_bytes, table)
from .models import BenchModels

MIB = 2**20


def plans(models: BenchModels, quick: bool) -> list[dict[str, Any]]:
    """What to run: (model, op, input size, tile sizes) per big-image case."""
    out = []
    up = models.first("upscale", prefer="srresnet-x4")
    if up is not None:
        size, tiles = (128, [32, 64]) if quick else (2048, [128, 256])
        out.append({"model": up.name, "op": "upscale", "size": size, "tiles": tiles, "rounds": 1})
    p2p = next((m for m in models.of("translate") if not m.card["input"].get("native_size")), None)
    if p2p is not None:
        mult = int(p2p.card["input"].get("multiple_of") or 1)
        size, tiles, rounds = (512, [256], 1) if quick else (4096, [256, 512, 1024, 2048], 2)
        tiles = sorted({max(-(-t // mult) * mult, mult) for t in tiles if t < size})
        out.append({"model": p2p.name, "op": "translate", "size": -(-size // mult) * mult, "tiles": tiles,
                    "rounds": rounds})
    return out


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """In the subprocess: load the model, run the pipeline once, measure."""
    from core import pipelines as inference
    from core.imaging import DecodedImage
    from core.loading import load_model
    from core.runtime import CPU
    from core.tiling import tile_starts
    from service.config import Settings

    settings = dataclasses.replace(Settings.from_env(), device="cpu", tile=int(spec["tile"]), batch_max=1)
    if spec.get("backend"):  # a served model's choice (GET /models: backend, precision), forced
        settings = dataclasses.replace(settings, backend=spec["backend"], precision=spec["precision"],
                                       model_precision=())
    model = load_model(Path(spec["folder"]), settings, [CPU])
    if not model.ready:
        raise RuntimeError(f"model {spec['folder']} did not load: {model.reason}")
    image_spec = model.image_spec
    size = int(spec["size"])
    image = DecodedImage(photo_like(size, size, seed=1), None)
    gc.collect()
    base = rss_bytes()
    exact = reset_peak_rss()
    t0 = time.perf_counter()
    if spec["op"] == "upscale":
        out, _ = inference.upscale_image(model, image, float(image_spec.scale))
    else:
        role = "generator" if "generator" in model.sessions else "a2b"
        out, _ = inference.translate_image(model, image, role)
    wall = time.perf_counter() - t0
    peak = peak_rss_bytes()
    n = len(tile_starts(size, image_spec.tile, image_spec.overlap)) if size > image_spec.tile else 1
    return {"wall_s": wall, "peak_rss_mib": peak / MIB, "base_rss_mib": base / MIB,
            "growth_mib": (peak - base) / MIB, "peak_is_call_only": exact,
            "tile": image_spec.tile, "overlap": image_spec.overlap, "tiles": n * n,
            "output_shape": list(out.shape), "backend": model.backend, "precision": model.precision}


def spawn_worker(spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """`worker(spec)` in a fresh `python -m bench.bigimage --worker` process; {"error": ...} when it failed.
    spec: folder, op (upscale | translate), size, tile (0: the card's), optional backend and precision."""
    proc = subprocess.run([sys.executable, "-m", "bench.bigimage", "--worker", json.dumps(spec)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout_s, env={**os.environ})
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-800:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def predict_growth(points: list[tuple[int, float]], tile: int) -> float:
    """growth(tile) = a + b * tile^2 fitted on measured (tile, growth MiB) points; one point: b only."""
    if len(points) == 1:
        t, g = points[0]
        return g * tile**2 / t**2
    t = np.array([p[0] for p in points], dtype=np.float64) ** 2
    g = np.array([p[1] for p in points], dtype=np.float64)
    b, a = np.polyfit(t, g, 1)
    return float(max(a, 0.0) + max(b, 0.0) * tile**2)


def run(models: BenchModels, profile: Profile, log=print) -> dict[str, Any]:
    results = []
    for plan in plans(models, profile.quick):
        folder = models.models_dir / plan["model"]
        size = plan["size"]
        mult = int(models.models[plan["model"]].card["input"].get("multiple_of") or 1)
        untiled = -(-size // mult) * mult
        configs = [("tiled", t) for t in plan["tiles"]] + [("untiled", untiled)]
        measured: dict[int, list[dict]] = {t: [] for _, t in configs}
        skipped: dict[int, str] = {}
        for r in range(plan["rounds"]):
            order = configs if r % 2 == 0 else configs[-2::-1] + configs[-1:]  # untiled last: it is gated
            for kind, tile in order:
                if tile in skipped:
                    continue
                if kind == "untiled":
                    points = [(t, float(np.median([m["growth_mib"] for m in measured[t]])))
                              for t in plan["tiles"] if measured[t] and "error" not in measured[t][0]]
                    limit = 0.5 * mem_available_bytes() / MIB
                    guess = predict_growth(points, tile) if points else None
                    if guess is None or guess > limit:
                        skipped[tile] = (f"predicted growth {guess:.0f} MiB > half of MemAvailable ({limit:.0f} MiB)"
                                         if guess is not None else "no tiled run to predict from")
                        log(f"  {plan['op']} {size}x{size}: untiled skipped ({skipped[tile]})")
                        continue
                spec = {"folder": str(folder), "op": plan["op"], "size": size, "tile": tile}
                log(f"  {plan['op']} {size}x{size} ({plan['model']}), {kind} tile {tile} ...")
                res = spawn_worker(spec, timeout_s=1800)
                measured[tile].append(res)
                if "error" in res:
                    log(f"    failed: {res['error'][-300:]}")
                    skipped[tile] = res["error"]
        rows = []
        for kind, tile in configs:
            runs = [m for m in measured[tile] if "error" not in m]
            row: dict[str, Any] = {"kind": kind, "tile_requested": tile, "runs": measured[tile]}
            if runs:
                row.update({"wall_s": float(np.median([m["wall_s"] for m in runs])),
                            "peak_rss_mib": float(np.median([m["peak_rss_mib"] for m in runs])),
                            "growth_mib": float(np.median([m["growth_mib"] for m in runs])),
                            "tile": runs[0]["tile"], "overlap": runs[0]["overlap"], "tiles": runs[0]["tiles"]})
            if tile in skipped:
                row["skipped"] = skipped[tile]
            rows.append(row)
        ref = next((r for r in rows if r.get("wall_s") and r["tile_requested"] == plan["tiles"][0]), None)
        for row in rows:
            if ref and row.get("wall_s"):
                row["wall_over_first"] = row["wall_s"] / ref["wall_s"]
                row["growth_over_first"] = row["growth_mib"] / ref["growth_mib"] if ref["growth_mib"] > 0 else None
        scale = int(models.models[plan["model"]].card["output"].get("scale", 1))
        results.append({**plan, "output": size * scale, "rows": rows})
    return {"cases": results}


def report(result: dict[str, Any]) -> str:
    out = []
    for case in result["cases"]:
        out.append(f"{case['op']} {case['size']}x{case['size']} -> {case['output']}x{case['output']} "
                   f"({case['model']}; {case['rounds']} round(s); growth = peak RSS - RSS before the call)")
        rows = []
        for r in case["rows"]:
            if "wall_s" in r:
                rows.append([r["kind"], r["tile"], r["overlap"], r["tiles"], f"{r['wall_s']:.2f}",
                             f"{r['peak_rss_mib']:.0f}", f"{r['growth_mib']:.0f}", fmt_x(r.get("wall_over_first")),
                             fmt_x(r.get("growth_over_first")), ""])
            else:
                rows.append([r["kind"], r["tile_requested"], "-", "-", "-", "-", "-", "-", "-",
                             "skipped: " + r.get("skipped", "")[:90]])
        out.append(table(["run", "tile", "overlap", "tiles", "wall s", "peak RSS MiB", "growth MiB",
                          "time vs first", "growth vs first", "note"], rows))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", required=True, help="JSON spec (internal: one measured configuration)")
    args = parser.parse_args(argv)
    print(json.dumps(worker(json.loads(args.worker))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
