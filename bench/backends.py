"""backends: onnxruntime against OpenVINO, fp32 / bf16 / int8, on every model, side by side in one run.

Per model and input (compute.py's cases, a twin architecture only its first; photo-like images as in
precision.py so the PSNR means something), up to five contenders built as the service builds them, in
alternating rounds:

  ort fp32   onnxruntime CPU, the service's session options (GANFORGE_BACKEND=onnxruntime)
  ort int8   the card's variants.int8 graph on onnxruntime (where the card has one)
  ov fp32    OpenVINO CPU, INFERENCE_PRECISION_HINT f32 (`core.backends.make_openvino_session`)
  ov bf16    OpenVINO CPU, bf16 (with `bf16_tail`: what GANFORGE_PRECISION=auto serves where the gate passed)
  ov int8    the same int8 QDQ graph compiled by OpenVINO (what GANFORGE_PRECISION=int8 serves on OpenVINO)

Reported: each median (ms), `ort/ov bf16` (above 1: bf16 on OpenVINO is that much faster than the
onnxruntime fp32 session), PSNR of each against ort fp32 on that very input (outputs clipped to the
card's range, peak = its width), and GFLOP/s (compute.py's FLOP count) against this machine's measured
matmul peaks: fp32 (the best of numpy's sgemm and an onnxruntime and an OpenVINO f32 MatMul) for the fp32
contenders, bf16 (an OpenVINO bf16 MatMul) for ov bf16.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .common import Profile, fmt_ms, fmt_x, interleaved, median_ms, ratio, table
from .compute import architecture, cases_for, count_flops
from .models import BenchModel, BenchModels, torch_generators
from .precision import photo_feeds, psnr_vs

CONTENDERS = ("ort fp32", "ort int8", "ov fp32", "ov bf16", "ov int8")


def matmul_graph(n: int) -> bytes:
    """ONNX: y = x @ W, x [n, n] fed, W [n, n] constant (what a runtime's GEMM kernels reach)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(1).standard_normal((n, n), dtype=np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "matmul",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model.SerializeToString()


def matmul_peaks(n: int, rounds: int) -> dict[str, Any]:
    """GFLOP/s of an n^3 matmul: numpy sgemm, onnxruntime f32, OpenVINO f32 and bf16, interleaved."""
    from core.backends import make_openvino_session
    from service.config import Settings
    from core.runtime import make_session, session_options

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    graph = matmul_graph(n)
    ort = make_session(graph, session_options(Settings.from_env().ort_threads))
    ov32, ov16 = make_openvino_session(graph, "fp32"), make_openvino_session(graph, "bf16")
    feeds = {"x": a}
    samples = interleaved({"numpy fp32": lambda: a @ b, "ort fp32": lambda: ort.run(None, feeds),
                           "ov fp32": lambda: ov32.run(None, feeds), "ov bf16": lambda: ov16.run(None, feeds)},
                          min_rounds=rounds, max_rounds=rounds, budget_s=0)
    gflops = {k: 2.0 * n**3 / np.median(v) / 1e9 for k, v in samples.items()}
    return {"n": n, "gflops": gflops, "fp32_peak": max(gflops["numpy fp32"], gflops["ort fp32"], gflops["ov fp32"]),
            "bf16_peak": gflops["ov bf16"]}


def int8_path(model: BenchModel, role: str):
    variant = (model.card.get("variants") or {}).get("int8")
    if isinstance(variant, dict) and role in (variant.get("files") or {}):
        return model.folder / variant["files"][role]["path"]
    return None


def contenders_for(model: BenchModel, role: str) -> dict[str, Any]:
    """The sessions of one graph: the service's factories, every contender the card allows."""
    from core.backends import make_openvino_session
    from service.config import Settings
    from core.runtime import make_session, session_options

    options = session_options(Settings.from_env().ort_threads)
    data = model.onnx_path(role).read_bytes()
    out = {"ort fp32": make_session(data, options), "ov fp32": make_openvino_session(data, "fp32"),
           "ov bf16": make_openvino_session(data, "bf16")}
    int8 = int8_path(model, role)
    if int8 is not None:
        out["ort int8"] = make_session(int8.read_bytes(), options)
        out["ov int8"] = make_openvino_session(int8.read_bytes(), "int8")
    return {k: out[k] for k in CONTENDERS if k in out}


def flops_of(net, feeds: dict[str, np.ndarray], names: list[str]) -> float | None:
    if net is None:
        return None
    import torch
    return count_flops(net, tuple(torch.from_numpy(feeds[n]) for n in names)) or None


def measure(model: BenchModel, case, net, profile: Profile, log: Callable) -> dict[str, Any]:
    sessions = contenders_for(model, case.role)
    feeds = photo_feeds(model, case)
    reference = sessions["ort fp32"]
    output = reference.get_outputs()[0].name
    out_range = ((model.card.get("roles") or {}).get(case.role, {}).get("output") or model.card["output"])["range"]
    want = reference.run([output], feeds)[0]
    psnr = {k: psnr_vs(want, s.run([output], feeds)[0], out_range) for k, s in sessions.items() if k != "ort fp32"}
    runs = {k: (lambda s=s: s.run([output], feeds)) for k, s in sessions.items()}
    samples = interleaved(runs, min_rounds=profile.case_rounds[0], max_rounds=profile.case_rounds[1],
                          budget_s=profile.case_budget_s * len(runs) / 2)
    ms = {k: median_ms(v) for k, v in samples.items()}
    flops = flops_of(net, feeds, [i.name for i in reference.get_inputs()])
    log(f"  {model.name:14s} {case.label:12s} " + "  ".join(f"{k} {fmt_ms(v)}" for k, v in ms.items())
        + "  | PSNR " + " ".join(f"{k} {v:.1f}" for k, v in psnr.items()))
    return {"model": model.name, "family": model.family, "case": case.label, "role": case.role,
            "input_shapes": {k: list(v.shape) for k, v in feeds.items()}, "ms": ms, "psnr_vs_ort_fp32_db": psnr,
            "ort_fp32_over_ov_bf16": ratio(ms["ort fp32"], ms["ov bf16"]),
            "ov_fp32_over_ov_bf16": ratio(ms["ov fp32"], ms["ov bf16"]),
            "gflop": flops / 1e9 if flops else None,
            "gflops": {k: flops / v / 1e6 for k, v in ms.items()} if flops else {},
            "rounds": len(samples["ort fp32"]), "samples_s": samples, "model_source": model.source}


def run(models: BenchModels, profile: Profile, log=print) -> dict[str, Any]:
    from core.backends import native_bf16, openvino_version
    from core.cpu import reported_flags

    n = max(256, profile.peak_n // 2)
    log(f"  matmul peaks ({n}^3: numpy, onnxruntime, OpenVINO f32 / bf16) ...")
    peaks = [matmul_peaks(n, profile.peak_rounds)]
    rng = np.random.default_rng(0)
    rows, seen = [], {}
    for model in models.models.values():
        try:
            nets = torch_generators(model)
        except Exception as exc:  # noqa: BLE001 - no run config: no FLOP count, the timings still stand
            log(f"  {model.name}: no torch network ({exc}); no GFLOP figure")
            nets = {}
        cases = cases_for(model, profile.quick, rng)
        if architecture(model) in seen and len(cases) > 1:
            log(f"  {model.name}: same architecture as {seen[architecture(model)]}: only {cases[0].label}")
            cases = cases[:1]
        seen.setdefault(architecture(model), model.name)
        for case in cases:
            rows.append(measure(model, case, nets.get(case.role), profile, log))
    log("  matmul peaks again (drift check) ...")
    peaks.append(matmul_peaks(n, profile.peak_rounds))
    fp32_peak = max(p["fp32_peak"] for p in peaks)
    bf16_peak = max(p["bf16_peak"] for p in peaks)
    for row in rows:
        row["peak_fraction"] = {k: v / (bf16_peak if k == "ov bf16" else fp32_peak)
                                for k, v in row["gflops"].items() if "int8" not in k}
    return {"openvino": openvino_version(), "native_bf16": native_bf16()[1], "flags": reported_flags(),
            "matmul_peaks": peaks, "fp32_peak_gflops": fp32_peak, "bf16_peak_gflops": bf16_peak, "rows": rows}


def report(result: dict[str, Any]) -> str:
    p0 = result["matmul_peaks"][0]
    head = (f"OpenVINO {result['openvino']}, {result['native_bf16']}; matmul peaks (n={p0['n']}, best of start/end): "
            f"fp32 {result['fp32_peak_gflops']:.0f} GFLOP/s (" + ", ".join(
                f"{k} {v:.0f}" for k, v in p0["gflops"].items() if "fp32" in k)
            + f" at the start), bf16 {result['bf16_peak_gflops']:.0f} GFLOP/s (OpenVINO MatMul)")
    dash = (lambda v, f: "-" if v is None else f.format(v))
    times = [[r["model"], r["case"]] + [fmt_ms(r["ms"].get(k)) for k in CONTENDERS]
             + [fmt_x(r["ort_fp32_over_ov_bf16"]), fmt_x(r["ov_fp32_over_ov_bf16"]), r["rounds"]]
             for r in result["rows"]]
    quality = [[r["model"], r["case"], dash(r["gflop"], "{:.3g}")]
               + [dash(r["psnr_vs_ort_fp32_db"].get(k), "{:.1f}") for k in CONTENDERS[1:]]
               + [dash(r["gflops"].get("ort fp32"), "{:.0f}"),
                  dash(r["peak_fraction"].get("ort fp32") and 100 * r["peak_fraction"]["ort fp32"], "{:.0f}%"),
                  dash(r["gflops"].get("ov bf16"), "{:.0f}"),
                  dash(r["peak_fraction"].get("ov bf16") and 100 * r["peak_fraction"]["ov bf16"], "{:.0f}%")]
               for r in result["rows"]]
    return "\n".join([
        head,
        table(["model", "case"] + [f"{k} ms" for k in CONTENDERS] + ["ort/ov bf16", "ov fp32/bf16", "rounds"], times),
        table(["model", "case", "GFLOP"] + [f"{k} dB" for k in CONTENDERS[1:]]
              + ["ort fp32 GFLOP/s", "%fp32 peak", "ov bf16 GFLOP/s", "%bf16 peak"], quality),
    ])
