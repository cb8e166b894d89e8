"""issue 28: big images at the speed of the graph; a served big request against the bare graph's best tile.

Two requests (full run; --quick: 480x300 and 512x512): `POST /upscale` of a 1920x1200 photo-like PNG on
srresnet-x4 with `format=jpeg`, and `POST /translate` of a 1024x1024 photo-like image on colorize (PNG out).

1. curve:   the model's ONNX graph opened bare, on the backend and precision GET /models says the server
            runs it with, timed on square inputs at several edges (one untimed warm-up call per shape, then
            a few timed calls; the median): seconds per input pixel at each edge. The best edge's s/px times
            the request's input pixels is what the request would cost at the speed of the graph.
2. http:    the request to one `bentoml serve` (GANFORGE_DEVICE=cpu; the shipped autotune budget into a
            fresh table folder; GANFORGE_TIMEOUT_S=600 so that the big request is admitted), interleaved
            with the bare graph at the best edge so that drift cancels. Reference = median bare s/px at the
            best edge x the input pixels; `http/reference` = the HTTP median over it. Goal: <= 1.15 for
            both. Beside it: the server's own stage seconds per request (/metrics,
            ganforge_stage_duration_seconds over the timed calls) and the `tiling` GET /models shows.
3. memory:  a 2048->8192 x4 upscale of srresnet-x4 in a fresh process (bench/bigimage.py's worker: the
            service's own tiled pipeline, no decode or encode) at the served default tile, backend and
            precision: wall time, peak RSS and its growth over the RSS before the call (--quick: 256).
"""
from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .bigimage import spawn_worker
from .common import Profile, fmt_ms, fmt_x, interleaved, median_ms, photo_like, png_bytes, ratio, table
from .fastpath import DEFAULT_BUDGET, poster
from .models import BenchModel, BenchModels

GOAL = 1.15  # issue 28: a big request within 15% of the bare graph's best tile time x area
# (height, width) of each request by profile
SIZES = {"full": {"upscale": (1200, 1920), "translate": (1024, 1024)},
         "quick": {"upscale": (300, 480), "translate": (512, 512)},
         "smoke": {"upscale": (48, 80), "translate": (256, 256)}}
UPSCALE_EDGES = {"full": [96, 128, 160, 192, 256, 320, 384], "quick": [96, 128, 192, 256], "smoke": [32, 64]}
TRANSLATE_EDGES = {"full": range(256, 1025, 128), "quick": [256, 384, 512], "smoke": [128, 256]}
MEMORY_SIZE = {"full": 2048, "quick": 256, "smoke": 64}
CURVE_CALLS = {"full": 3, "quick": 2, "smoke": 1}  # timed calls per edge, after the warm-up
HTTP_ROUNDS = {"full": 3, "quick": 2, "smoke": 2}


@dataclass
class Case:
    """One request and its bare-graph reference."""

    model: BenchModel
    op: str  # upscale | translate
    height: int
    width: int
    edges: list[int]
    kwargs: dict[str, Any] = field(default_factory=dict)  # httpx arguments of the request

    @property
    def label(self) -> str:
        scale = self.scale
        out = f"->{self.width * scale}x{self.height * scale}" if scale > 1 else ""
        return f"{self.op} {self.width}x{self.height}{out}"

    @property
    def scale(self) -> int:
        return int(self.model.card["output"].get("scale", 1))

    @property
    def area(self) -> int:
        return self.height * self.width


def snap(edge: int, card_input: dict[str, Any]) -> int:
    """`edge` rounded up to the card's multiple_of, never below its min_size."""
    mult = int(card_input.get("multiple_of") or 1)
    low = -(-int(card_input.get("min_size") or 1) // mult) * mult
    return max(-(-edge // mult) * mult, low)


def cases(models: BenchModels, profile: Profile, log=print) -> list[Case]:
    """The two requests, on srresnet-x4 and colorize (or the first upscaler / the first translate model
    without a native size); a missing one is left out with a message."""
    found = {"upscale": models.first("upscale", prefer="srresnet-x4"),
             "translate": models.models.get("colorize") or next(
                 (m for m in models.of("translate") if not m.card["input"].get("native_size")), None)}
    out = []
    for op, model in found.items():
        if model is None or model.card["input"].get("native_size"):
            log(f"  bigtile: no {op} model to measure (srresnet-x4 / colorize): skipped")
            continue
        height, width = SIZES[profile.name][op]
        edges = UPSCALE_EDGES[profile.name] if op == "upscale" else TRANSLATE_EDGES[profile.name]
        edges = sorted({snap(e, model.card["input"]) for e in edges})
        pixels = photo_like(height, width, seed=28)
        if int(model.card["input"]["channels"]) == 1:  # a grayscale photo for a colorizer
            pixels = pixels.mean(axis=2, keepdims=True).astype(np.uint8)
        data = {"model": model.name, **({"format": "jpeg"} if op == "upscale" else {}),
                **({"direction": "a2b"} if "a2b" in model.roles else {})}
        out.append(Case(model, op, height, width, edges,
                        {"files": {"image": ("in.png", png_bytes(pixels), "image/png")}, "data": data}))
    return out


def bare_session(model: BenchModel, backend: str, precision: str) -> Any:
    """The model's graph as the server runs it: OpenVINO at `precision`, or onnxruntime with the service's
    options (the card's int8 variant file when the precision is int8)."""
    from core.backends import make_openvino_session
    from core.runtime import make_session, session_options

    role = model.roles[0]
    path = model.onnx_path(role)
    if precision == "int8":
        path = model.folder / model.card["variants"]["int8"]["files"][role]["path"]
    data = path.read_bytes()
    if backend == "openvino":
        return make_openvino_session(data, precision)
    return make_session(data, session_options(0))


def square_feeds(model: BenchModel, edge: int, seed: int = 0) -> dict[str, np.ndarray]:
    """One [1, C, edge, edge] input: uniform pixels in the card's input range."""
    card = model.card
    low, high = card["input"]["range"]
    shape = (1, int(card["input"]["channels"]), edge, edge)
    return {card["graph"]["inputs"][0]["name"]: np.random.default_rng(seed).uniform(low, high, shape)
            .astype(np.float32)}


def curve(session: Any, case: Case, calls: int) -> list[dict[str, Any]]:
    """Per edge: a warm-up call, then `calls` timed ones (interleaved's pauses); median ms, s per input
    pixel, s per output megapixel."""
    rows = []
    for edge in case.edges:
        feeds = square_feeds(case.model, edge)
        samples = interleaved({"bare": lambda f=feeds: session.run(None, f)}, min_rounds=calls,
                              max_rounds=calls, budget_s=0.0, warmup=1)["bare"]
        ms = median_ms(samples)
        rows.append({"edge": edge, "ms": ms, "s_per_px": ms / 1e3 / edge**2,
                     "s_per_out_mpx": ms / 1e3 / (edge * case.scale) ** 2 * 1e6, "samples_s": samples})
    return rows


def stage_totals(text: str, model: str) -> dict[str, list[float]]:
    """/metrics text -> {stage or "tiles": [sum, count]} of the model's ganforge_stage_duration_seconds
    and ganforge_tiles_per_request histograms (summed over their other labels)."""
    from prometheus_client.parser import text_string_to_metric_families

    totals: dict[str, list[float]] = {}
    wanted = {"ganforge_stage_duration_seconds": None, "ganforge_tiles_per_request": "tiles"}
    for family in text_string_to_metric_families(text):
        if family.name not in wanted:
            continue
        for s in family.samples:
            part = s.name[len(family.name):]
            if s.labels.get("model") != model or part not in ("_sum", "_count"):
                continue
            key = wanted[family.name] or s.labels.get("stage", "?")
            totals.setdefault(key, [0.0, 0.0])[part == "_count"] += s.value
    return totals


def per_request(before: dict[str, list[float]], after: dict[str, list[float]]) -> dict[str, float]:
    """The mean of each histogram over the requests between two scrapes."""
    out = {}
    for key, (total, count) in after.items():
        old_total, old_count = before.get(key, [0.0, 0.0])
        if count > old_count:
            out[key] = (total - old_total) / (count - old_count)
    return out


def measure_case(case: Case, client, served: dict[str, Any], profile: Profile, log=print) -> dict[str, Any]:
    """The curve, then the request interleaved with the bare graph at the best edge."""
    backend, precision = served.get("backend") or "onnxruntime", served.get("precision") or "fp32"
    log(f"  {case.label} ({case.model.name}): bare {backend} {precision} curve at {case.edges} ...")
    session = bare_session(case.model, backend, precision)
    rows = curve(session, case, CURVE_CALLS[profile.name])
    best = min(rows, key=lambda r: r["s_per_px"])
    feeds = square_feeds(case.model, best["edge"], seed=1)
    post = poster(client, f"/{case.op}", case.kwargs)
    warm = min(case.height, case.width, 2 * int(served_tile(served).get("tile") or 128))
    small = png_bytes(photo_like(warm, warm, seed=3)[..., :int(case.model.card["input"]["channels"])])
    poster(client, f"/{case.op}", {**case.kwargs, "files": {"image": ("w.png", small, "image/png")}})()
    log(f"  {case.label}: http vs bare at edge {best['edge']}, {HTTP_ROUNDS[profile.name]} rounds ...")
    try:
        before = stage_totals(client.get("/metrics").text, case.model.name)
    except Exception as exc:  # noqa: BLE001 - the stage figures are optional
        before = {"error": [0.0, 0.0]}
        log(f"    /metrics unreadable ({type(exc).__name__}): no stage figures")
    samples = interleaved({"http": post, "bare": lambda: session.run(None, feeds)}, warmup=0,
                          min_rounds=HTTP_ROUNDS[profile.name], max_rounds=HTTP_ROUNDS[profile.name], budget_s=0.0)
    stages = {} if "error" in before else per_request(before, stage_totals(client.get("/metrics").text,
                                                                           case.model.name))
    http_s = float(np.median(samples["http"]))
    bare_s_per_px = float(np.median(samples["bare"])) / best["edge"] ** 2
    reference_s = bare_s_per_px * case.area
    return {"request": case.label, "model": case.model.name, "op": case.op, "input": [case.width, case.height],
            "input_pixels": case.area, "scale": case.scale, "backend": backend, "precision": precision,
            "tiling": served_tile(served), "tiles": served.get("tiles"), "runtime": served.get("runtime"),
            "curve": rows,
            "best_edge": best["edge"], "curve_reference_s": best["s_per_px"] * case.area,
            "bare_s_per_px": bare_s_per_px, "reference_s": reference_s, "http_s": http_s,
            "http_over_reference": ratio(http_s, reference_s), "goal": GOAL, "stages_s": stages,
            "samples_s": samples}


def served_tile(served: dict[str, Any]) -> dict[str, Any]:
    """The big-image tile /models shows: the measured one (`tiles`, issue 28) where there is one, else the card's."""
    return served.get("tiles") or served.get("tiling") or {}


def memory_row(models: BenchModels, served: dict[str, dict[str, Any]], profile: Profile, log=print) -> dict | None:
    """A 2048->8192 x4 upscale (--quick: smaller) at the served default tile, backend and precision."""
    up = models.first("upscale", prefer="srresnet-x4")
    if up is None:
        return None
    size = MEMORY_SIZE[profile.name]
    choice = served.get(up.name, {})
    spec = {"folder": str(models.models_dir / up.name), "op": "upscale", "size": size,
            "tile": int(served_tile(choice).get("tile") or 0),
            "backend": choice.get("backend"), "precision": choice.get("precision")}
    log(f"  memory: upscale {size}x{size} ({up.name}) at the served tile, fresh process ...")
    res = spawn_worker(spec, timeout_s=1800)
    if "error" in res:
        log(f"    failed: {res['error'][-300:]}")
    return {"model": up.name, "size": size, "output": size * int(up.card["output"].get("scale", 1)), **res}


def run(models: BenchModels, profile: Profile, log=print) -> dict[str, Any]:
    import httpx

    from testkit.launcher import running_server

    todo = cases(models, profile, log)
    if not todo:
        return {"cases": [], "memory": None, "skipped": "no srresnet-x4 / colorize (or alike) model"}
    with tempfile.TemporaryDirectory(prefix="ganforge-bigtile-") as tmp, contextlib.ExitStack() as stack:
        tmp_path = Path(tmp)
        served_dir = tmp_path / "models"  # only the measured models: the others' autotune would only add startup
        served_dir.mkdir()
        for case in todo:
            (served_dir / case.model.name).symlink_to(case.model.folder, target_is_directory=True)
        log(f"  starting the server ({', '.join(c.model.name for c in todo)}) ...")
        base, _ = stack.enter_context(running_server(
            served_dir, tmp_path, GANFORGE_DEVICE="cpu", GANFORGE_AUTOTUNE_BUDGET_S=DEFAULT_BUDGET,
            GANFORGE_AUTOTUNE_DIR=str(tmp_path / "autotune"), GANFORGE_TIMEOUT_S="600"))
        client = stack.enter_context(httpx.Client(base_url=base, timeout=900))
        served = {m["name"]: m for m in client.get("/models").json()["models"]}
        results = [measure_case(case, client, served[case.model.name], profile, log) for case in todo]
    return {"cases": results, "memory": memory_row(models, served, profile, log)}


def curve_table(case: dict[str, Any]) -> str:
    rows = [[r["edge"], fmt_ms(r["ms"]), f"{r['s_per_px'] * 1e6:.3g}", f"{r['s_per_out_mpx']:.3g}",
             "best" if r["edge"] == case["best_edge"] else ""] for r in case["curve"]]
    return (f"{case['model']} bare {case['backend']} {case['precision']}, square inputs x{case['scale']}:\n"
            + table(["edge", "ms", "us/input px", "s/output MPx", ""], rows))


def report(res: dict[str, Any]) -> str:
    if not res["cases"]:
        return f"skipped: {res.get('skipped')}"
    rows = []
    for c in res["cases"]:
        tiling = c.get("tiling") or {}
        rows.append([c["request"], c["model"], f"{c['backend']} {c['precision']}",
                     f"{tiling.get('tile', '-')}/{tiling.get('overlap', '-')}", c["best_edge"],
                     f"{c['reference_s']:.2f}", f"{c['http_s']:.2f}", fmt_x(c["http_over_reference"]),
                     f"<= {c['goal']:.2f}"])
    parts = ["http = median of the request; reference = bare graph s/px at its best edge x input pixels "
             "(interleaved):\n" + table(["request", "model", "runs", "tile/overlap", "best edge", "reference s",
                                         "http s", "http/reference", "goal"], rows)]
    stage_rows = [[c["request"], *(f"{c['stages_s'][k]:.2f}" if k in c["stages_s"] else "-"
                                   for k in ("queue", "decode", "compute", "process", "encode", "respond")),
                   f"{c['stages_s']['tiles']:.0f}" if "tiles" in c["stages_s"] else "-", f"{c['http_s']:.2f}"]
                  for c in res["cases"]]
    parts.append("server stages, s per request (/metrics over the timed calls):\n" + table(
        ["request", "queue", "decode", "compute", "process", "encode", "respond", "tiles", "http s"], stage_rows))
    parts.extend(curve_table(c) for c in res["cases"])
    mem = res.get("memory")
    if mem and "error" not in mem:
        parts.append(f"memory: upscale {mem['size']}x{mem['size']} -> {mem['output']}x{mem['output']} "
                     f"({mem['model']}, {mem['backend']} {mem['precision']}, served tile {mem['tile']} overlap "
                     f"{mem['overlap']}, {mem['tiles']} tiles, fresh process): {mem['wall_s']:.1f} s, peak RSS "
                     f"{mem['peak_rss_mib']:.0f} MiB, growth {mem['growth_mib']:.0f} MiB")
    elif mem:
        parts.append(f"memory: failed: {mem['error'][-200:]}")
    return "\n\n".join(parts)
