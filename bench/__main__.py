"""python -m bench [--quick] [--tiny] [--only compute,tuning,precision,backends,serving,telemetry,bigimage,bigtile,coldstart,jobs,fastpath,training] [--name NAME]

Runs the sections, prints a plain-text table per section, and writes
bench/results/<name>.json (machine, versions, every figure and its samples)
and bench/results/<name>.png (throughput and latency vs concurrency).
See bench/README.md for what each figure means.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from . import (backends, bigimage, bigtile, coldstart, compute, fastpath, jobs, precision, serving, telemetry, training,
               tuning)
from .common import PROFILES, busy_warning, machine
from .models import REPO, prepare

SECTIONS = {
    "compute": (compute.run, compute.report, "model compute: onnxruntime session vs torch eager"),
    "tuning": (tuning.run, tuning.report, "onnxruntime session settings: the service's options vs one change each"),
    "precision": (precision.run, precision.report, "int8 variant vs fp32: throughput ratio and PSNR vs fp32"),
    "backends": (backends.run, backends.report, "onnxruntime vs OpenVINO, fp32 / bf16 / int8: ms, PSNR, GFLOP/s"),
    "serving": (serving.run, serving.report, "serving overhead: session vs pipeline vs HTTP; throughput vs clients"),
    "telemetry": (telemetry.run, telemetry.report, "ganforge's metrics and spans: on vs off, and the recording alone"),
    "bigimage": (bigimage.run, bigimage.report, "big images: tiled pipeline by tile size"),
    "bigtile": (bigtile.run, bigtile.report, "issue 28: a big /upscale and /translate over HTTP vs the bare "
                                             "graph's best tile time x area; peak memory of a x4 upscale"),
    "coldstart": (coldstart.run, coldstart.report, "cold start"),
    "jobs": (jobs.run, jobs.report, "jobs: the job path vs sync, cancel -> idle, restart -> running"),
    "training": (training.run, training.report, "training steps/s, train.precision fp32 vs auto (+ quality: full)"),
    "fastpath": (fastpath.run, fastpath.report, "issue 26: ganforge vs a minimal peer and the bare session; "
                                                "the default choice vs the forced ones"),
}
NEEDS_NO_MODELS = {"training"}  # sections that measure torch training, not the served models
OPT_IN = {"training"}  # minutes of training on the CPU: run with --only training


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description="ganforge benchmarks (ratios, side by side)")
    p.add_argument("--quick", action="store_true", help="small inputs, few rounds (a smoke run: ~1-2 min)")
    p.add_argument("--smoke", action="store_true",
                   help="--quick --tiny with the shortest windows: checks the plumbing, measures nothing")
    p.add_argument("--tiny", action="store_true",
                   help="narrow networks from the default configs (same layers, few channels); ignores models/")
    p.add_argument("--only", default=",".join(s for s in SECTIONS if s not in OPT_IN),
                   help=f"comma list of {', '.join(SECTIONS)} (default: all but {', '.join(sorted(OPT_IN))})")
    p.add_argument("--name", default=None, help="results file name (default: UTC time, + -quick / -tiny)")
    p.add_argument("--out", default=str(REPO / "bench" / "results"), help="results folder")
    p.add_argument("--models", default=str(REPO / "models"), help="the served models to measure (plus the zoo's "
                   "missing names, exported from the default configs)")
    p.add_argument("--exporter", default=None, help="exporter for the fallback models (default: auto; "
                   "torchscript with --tiny)")
    return p


def _json_default(obj):
    try:
        return float(obj)
    except (TypeError, ValueError):
        return str(obj)


def _models(args, work: Path, result: dict, log):
    """The served models the sections measure (models/ plus the zoo's missing names, exported)."""
    log("models ...")
    t0 = time.perf_counter()
    exporter = args.exporter or ("torchscript" if args.tiny else "auto")
    models = prepare(work, Path(args.models), tiny=args.tiny, exporter=exporter, log=log)
    result["elapsed_s"]["models"] = time.perf_counter() - t0
    result["models"] = [{"name": m.name, "endpoint": m.endpoint, "family": m.family, "source": m.source,
                         "version": m.card.get("version"), "exporter": m.card.get("exporter"),
                         "opset": m.card.get("opset")} for m in models.models.values()]
    for m in models.models.values():
        log(f"  {m.name:14s} {m.endpoint:9s} {m.family:8s} {m.source} ({m.card.get('exporter')})")
    return models


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.smoke:
        args.quick = args.tiny = True
    profile = PROFILES["smoke" if args.smoke else "quick" if args.quick else "full"]
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in SECTIONS]
    if unknown:
        print(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    name = args.name or stamp + ("" if profile.name == "full" else f"-{profile.name}") + ("-tiny" if args.tiny else "")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = lambda *a: print(*a, flush=True)  # noqa: E731

    info = machine()
    warnings = [w for w in [busy_warning(info["loadavg_start"])] if w]
    if args.quick:
        warnings.append(f"--{profile.name}: small inputs and few rounds; checks the path, measures nothing")
    if args.tiny:
        warnings.append("--tiny: narrowed networks, not the zoo's")
    for w in warnings:
        log(f"WARNING: {w}")
    cpu = info["cpu"]
    log(f"{cpu['model']}, {cpu['physical_cores']} cores / {cpu['logical_cores']} threads, "
        f"{', '.join(f for f, on in cpu['flags'].items() if on)}; onnxruntime {info['versions']['onnxruntime']}, "
        f"torch {info['versions']['torch']}; {info['git_commit']}")

    started = time.perf_counter()
    result: dict = {"name": name, "mode": {"profile": profile.name, "quick": args.quick, "tiny": args.tiny,
                                           "sections": only, "settings": dataclasses.asdict(profile)},
                    "machine": info, "warnings": warnings, "sections": {}, "elapsed_s": {}}
    with tempfile.TemporaryDirectory(prefix="ganforge-bench-") as work:
        models = None if set(only) <= NEEDS_NO_MODELS else _models(args, Path(work), result, log)
        texts = []
        for section in only:
            run, report, title = SECTIONS[section]
            log(f"\n== {section}: {title}")
            t0 = time.perf_counter()
            res = run(models, profile, log=log)
            result["elapsed_s"][section] = time.perf_counter() - t0
            result["sections"][section] = res
            text = report(res)
            texts.append((section, title, text))
            log(text)
            log(f"({section}: {result['elapsed_s'][section]:.0f} s)")
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    result["elapsed_s"]["total"] = time.perf_counter() - started

    json_path = out / f"{name}.json"
    json_path.write_text(json.dumps(result, indent=1, default=_json_default))
    png_path = None
    if "serving" in result["sections"] and result["sections"]["serving"]["throughput"]:
        png_path = out / f"{name}.png"
        serving.plot(result["sections"]["serving"], png_path)

    print("\n" + "=" * 100)
    print(f"ganforge bench '{name}': {cpu['model']}, {cpu['physical_cores']} cores, {info['date']}, "
          f"{info['git_commit']}, {result['elapsed_s']['total']:.0f} s")
    for w in warnings:
        print(f"WARNING: {w}")
    for section, title, text in texts:
        print(f"\n== {section}: {title}\n{text}")
    print(f"\nwrote {json_path}" + (f" and {png_path}" if png_path else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
