"""precision: the int8 variant (`python -m training quantize`) against the fp32 graph, side by side.

Per model and input (compute.py's cases, a twin architecture only its
first; photo-like images instead of uniform noise, so the PSNR means
something), two onnxruntime CPU sessions with the service's own options,
fp32 and int8, in alternating rounds:
`fp32/int8` is the ratio of their medians (above 1: int8 has that much more
throughput per core), `PSNR dB` is int8 against fp32 on that very input
(peak = the output range, outputs clipped to it).

The int8 graphs are the card's `variants.int8` files when the model folder has
them (what GANFORGE_PRECISION=int8 serves); otherwise they are made here by
`modelops.quantize.build_variant` with the tool's defaults (calibration on the
dataset the card names, or synthetic inputs) into bench/.cache/int8/ (never
into models/). When even the tool's last try stays under its 40 dB gate
(random-init weights can), the first try is measured anyway and the row says
`below gate`.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .common import Profile, fmt_ms, fmt_x, interleaved, median_ms, photo_like, ratio, table
from .compute import Case, architecture, cases_for
from .models import CACHE, BenchModel, BenchModels


def _key(model: BenchModel, quick: bool) -> str:
    import modelops.quantize as tq
    h = hashlib.sha256(json.dumps([model.name, model.card.get("version"), quick]).encode())
    h.update(Path(tq.__file__).read_bytes())
    return h.hexdigest()[:16]


def int8_variant(model: BenchModel, profile: Profile, log) -> tuple[dict[str, Path], dict[str, Any]]:
    """role -> int8 file, and what it is (the card's, or built here)."""
    from contract import Card
    from contract.typed import to_plain
    from modelops import quantize as tq
    from training.calibration import dataset_images

    variant = (model.card.get("variants") or {}).get("int8")
    if isinstance(variant, dict) and variant.get("files"):
        return ({role: model.folder / e["path"] for role, e in variant["files"].items()},
                {"source": "card variants.int8", "gate_ok": True, "psnr_vs_fp32_db": variant.get("psnr_vs_fp32_db")})
    folder = CACHE / "int8" / f"{model.name}-{_key(model, profile.quick)}"
    meta_path = folder / "variant.json"
    if not meta_path.is_file():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        sizes = dict(calibration=4, heldout=2, size=32) if profile.quick else dict(calibration=32, heldout=8, size=64)
        log(f"  {model.name}: quantizing (no variants.int8 in its card) ...")
        quiet = lambda *a: None  # noqa: E731
        card = Card.from_dict(model.card)
        opts = tq.QuantizeOptions(name=model.name, models=model.folder.parent, per_channel=True,
                                  min_psnr=tq.DEFAULT_MIN_PSNR, data_root=None, rounds=1, **sizes)
        try:
            variant = to_plain(tq.build_variant(model.folder, card, folder, opts, log=quiet, dataset=dataset_images))
            variant["gate_ok"] = True
        except tq.QuantizeError:
            variant = to_plain(tq.build_variant(model.folder, card, folder, replace(opts, min_psnr=0.0), log=quiet,
                                             dataset=dataset_images))
            variant["gate_ok"] = False
        meta_path.write_text(json.dumps(variant, default=str))
    variant = json.loads(meta_path.read_text())
    return ({role: folder / e["path"] for role, e in variant["files"].items()},
            {"source": "built here (tool defaults)" + ("" if variant["gate_ok"] else ", below gate"),
             "gate_ok": variant["gate_ok"], "psnr_vs_fp32_db": variant.get("psnr_vs_fp32_db")})


def photo_feeds(model: BenchModel, case: Case) -> dict[str, np.ndarray]:
    """The case's input with photo-like pixels in the graph's input range (generators keep their z)."""
    if model.endpoint == "generate":
        return case.feeds
    spec = (model.card.get("roles") or {}).get(case.role, {}).get("input") or model.card["input"]
    n, c, h, w = case.feeds["image"].shape
    lo, hi = spec.get("range", [-1.0, 1.0])
    images = []
    for i in range(n):
        px = photo_like(h, w, seed=i).astype(np.float32)
        px = px.mean(axis=2, keepdims=True) if c == 1 else px
        images.append(lo + px.transpose(2, 0, 1) / 255.0 * (hi - lo))
    return {"image": np.stack(images).astype(np.float32)}


def psnr_vs(fp32_out: np.ndarray, int8_out: np.ndarray, out_range) -> float:
    from modelops.metrics import psnr
    lo, hi = sorted(float(v) for v in out_range)
    a, b = np.clip(fp32_out.astype(np.float64), lo, hi), np.clip(int8_out.astype(np.float64), lo, hi)
    return psnr(a, b, hi - lo)


def session(path: Path):
    import onnxruntime as ort

    from service.config import Settings
    from core.runtime import session_options
    return ort.InferenceSession(path.read_bytes(), session_options(Settings.from_env().ort_threads),
                                providers=["CPUExecutionProvider"])


def run(models: BenchModels, profile: Profile, log=print) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    rows = []
    seen: dict[str, str] = {}  # architecture -> the model measured with it (as in compute)
    for model in models.models.values():
        files, info = int8_variant(model, profile, log)
        cases = cases_for(model, profile.quick, rng)
        if architecture(model) in seen and len(cases) > 1:
            log(f"  {model.name}: same architecture as {seen[architecture(model)]}: only {cases[0].label}")
            cases = cases[:1]  # same compute; its own weights still give its own PSNR
        seen.setdefault(architecture(model), model.name)
        for case in cases:
            feeds = photo_feeds(model, case)
            fp32, int8 = session(model.onnx_path(case.role)), session(files[case.role])
            out_range = ((model.card.get("roles") or {}).get(case.role, {}).get("output") or model.card["output"])["range"]
            psnr = psnr_vs(fp32.run(None, feeds)[0], int8.run(None, feeds)[0], out_range)
            samples = interleaved({"fp32": lambda: fp32.run(None, feeds), "int8": lambda: int8.run(None, feeds)},
                                  min_rounds=profile.case_rounds[0], max_rounds=profile.case_rounds[1],
                                  budget_s=profile.case_budget_s)
            fp32_ms, int8_ms = median_ms(samples["fp32"]), median_ms(samples["int8"])
            log(f"  {model.name:14s} {case.label:12s} fp32 {fmt_ms(fp32_ms):>7s} ms  int8 {fmt_ms(int8_ms):>7s} ms"
                f"  PSNR {psnr:.1f} dB")
            rows.append({"model": model.name, "case": case.label, "role": case.role,
                         "input_shapes": {k: list(v.shape) for k, v in feeds.items()},
                         "fp32_ms": fp32_ms, "int8_ms": int8_ms, "fp32_over_int8": ratio(fp32_ms, int8_ms),
                         "psnr_vs_fp32_db": psnr, "rounds": len(samples["fp32"]), "samples_s": samples,
                         "int8_source": info["source"], "gate_ok": info["gate_ok"],
                         "card_psnr_vs_fp32_db": info["psnr_vs_fp32_db"], "model_source": model.source})
    return {"rows": rows}


def report(result: dict[str, Any]) -> str:
    rows = [[r["model"], r["case"], fmt_ms(r["fp32_ms"]), fmt_ms(r["int8_ms"]), fmt_x(r["fp32_over_int8"]),
             f"{r['psnr_vs_fp32_db']:.1f}", r["int8_source"], r["rounds"]] for r in result["rows"]]
    return table(["model", "case", "fp32 ms", "int8 ms", "fp32/int8", "PSNR dB", "int8 graph", "rounds"], rows)
