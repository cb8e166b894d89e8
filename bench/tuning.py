"""onnxruntime session settings, measured: the service's own options against one change at a time.

The service builds every CPU session with `core.runtime.session_options`:
graph optimisation ORT_ENABLE_ALL (which on x86 includes the NCHWc layout
transform), one intra-op thread per physical core, one inter-op thread,
spinning worker threads, the CPU memory arena and memory patterns on. This
section keeps that as the baseline and flips one setting per contender:

  1 thread        intra_op_num_threads = 1
  no spinning     session.intra_op.allow_spinning = 0 (pool threads sleep between parallel sections)
  opt extended    ORT_ENABLE_EXTENDED (fusions, but no NCHWc layout transform)
  opt basic       ORT_ENABLE_BASIC (constant folding and redundant-node removal only)
  no arena        enable_cpu_mem_arena = False, enable_mem_pattern = False

Every contender is a separate session on the same graph, fed the same input,
timed interleaved with the others (`common.interleaved`, each call after a
settle pause). `service/x` = the baseline's median over the contender's:
above 1, the change would be faster. The cases are compute's, without the
512->2048 upscale (~1 TFLOP a call: the 128->512 case has the same layers).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .common import Profile, fmt_ms, fmt_x, interleaved, median_ms, ratio, table
from .compute import architecture, cases_for
from .models import BenchModels


def _threads_1(o, ort):
    o.intra_op_num_threads = 1


def _no_spin(o, ort):
    o.add_session_config_entry("session.intra_op.allow_spinning", "0")


def _extended(o, ort):
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED


def _basic(o, ort):
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC


def _no_arena(o, ort):
    o.enable_cpu_mem_arena = False
    o.enable_mem_pattern = False


VARIANTS: dict[str, Callable | None] = {
    "service": None,
    "1 thread": _threads_1,
    "no spinning": _no_spin,
    "opt extended": _extended,
    "opt basic": _basic,
    "no arena": _no_arena,
}
MAX_OUTPUT_PIXELS = 1024 * 1024  # skips the 512->2048 upscale


def session(path, variant: str):
    import onnxruntime as ort

    from service.config import Settings
    from core.runtime import session_options

    options = session_options(Settings.from_env().ort_threads)
    change = VARIANTS[variant]
    if change is not None:
        change(options, ort)
    return ort.InferenceSession(path.read_bytes(), options, providers=["CPUExecutionProvider"])


def _out_pixels(model, case) -> int:
    x = next(iter(case.feeds.values()))
    if model.endpoint == "generate":
        return 0
    return int(x.shape[-1] * x.shape[-2] * int(model.card["output"].get("scale", 1)) ** 2)


def run(models: BenchModels, profile: Profile, log=print) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    rows = []
    seen: set[str] = set()
    for model in models.models.values():
        arch = architecture(model)
        if arch in seen:  # srgan-x4 is srresnet-x4's network: same graph, same answer
            continue
        seen.add(arch)
        cases = [c for c in cases_for(model, profile.quick, rng) if _out_pixels(model, c) <= MAX_OUTPUT_PIXELS]
        for case in cases:
            path = model.onnx_path(case.role)
            sessions = {v: session(path, v) for v in VARIANTS}
            output = sessions["service"].get_outputs()[0].name
            contenders = {v: (lambda s=s: s.run([output], case.feeds)) for v, s in sessions.items()}
            reference = sessions["service"].run([output], case.feeds)[0]
            worst = max(float(np.max(np.abs(s.run([output], case.feeds)[0] - reference)))
                        for s in sessions.values())
            samples = interleaved(contenders, min_rounds=profile.case_rounds[0], max_rounds=profile.case_rounds[1],
                                  budget_s=profile.case_budget_s, warmup=1)
            ms = {v: median_ms(s) for v, s in samples.items()}
            best = min(ms, key=ms.get)
            log(f"  {model.name:14s} {case.label:12s} " + "  ".join(f"{v} {fmt_ms(m)}" for v, m in ms.items()))
            rows.append({"model": model.name, "case": case.label, "ms": ms,
                         "service_over": {v: ratio(ms["service"], m) for v, m in ms.items() if v != "service"},
                         "best": best, "max_abs_diff_vs_service": worst,
                         "rounds": len(samples["service"]), "samples_s": samples})
    return {"variants": list(VARIANTS), "rows": rows}


def report(result: dict[str, Any]) -> str:
    others = [v for v in result["variants"] if v != "service"]
    rows = [[r["model"], r["case"], fmt_ms(r["ms"]["service"]), *(fmt_x(r["service_over"][v]) for v in others),
             r["best"], f"{r['max_abs_diff_vs_service']:.1e}", r["rounds"]] for r in result["rows"]]
    return ("service ms = the shipped session options; the other columns: service ms / that variant's ms "
            "(above 1: the change is faster)\n"
            + table(["model", "case", "service ms", *others, "fastest", "max |diff|", "rounds"], rows))
