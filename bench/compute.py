"""Model compute: the onnxruntime CPU session (as the service configures it) vs torch eager.

Per model and input size, both run the same weights on the same input with
the same number of threads (onnxruntime's intra-op pool as the service sets
it; `torch.set_num_threads` to match), in alternating rounds. Reported: the
median of each, the ratio torch / onnxruntime (> 1: onnxruntime is faster),
the FLOPs of one forward pass (Conv, ConvTranspose, Linear/Gemm/MatMul
multiply-adds x 2, counted over the torch modules at that input shape), the
achieved GFLOP/s and their fraction of this machine's fp32 matmul peak
(the best of numpy's and torch's large sgemm, measured in the same run).

The graphs run untiled here (pure model compute); what tiling adds is in
bigimage.py, and what the service adds around the session in serving.py.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .common import SETTLE_S, Profile, fmt_ms, fmt_x, interleaved, median_ms, physical_cores, ratio, table
from .models import BenchModel, BenchModels, torch_generators


@dataclass
class Case:
    label: str  # what a reader sees: "512x512", "128->512", "n=64"
    role: str
    feeds: dict[str, np.ndarray]


# ------------------------------------------------------------------ FLOPs


def count_flops(module, inputs: tuple) -> int:
    """FLOPs of one forward pass: 2 x the multiply-adds of every Conv/ConvTranspose/Linear (hooks)."""
    import torch
    from torch import nn

    total = [0]

    def conv(m: nn.Conv2d, inp, out):
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        total[0] += 2 * out.numel() * k

    def deconv(m: nn.ConvTranspose2d, inp, out):
        x = inp[0]  # every input element scatters into kernel x out_channels/groups outputs
        total[0] += 2 * x.numel() * m.kernel_size[0] * m.kernel_size[1] * (m.out_channels // m.groups)

    def linear(m: nn.Linear, inp, out):
        total[0] += 2 * out.numel() * m.in_features

    hooks = []
    for m in module.modules():
        if isinstance(m, nn.ConvTranspose2d):
            hooks.append(m.register_forward_hook(deconv))
        elif isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear))
    try:
        with torch.inference_mode():
            module(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return total[0]


# ------------------------------------------------------------------ peak


def matmul_peak(n: int, rounds: int, threads: int) -> dict[str, Any]:
    """fp32 GFLOP/s of an n x n x n matmul, numpy vs torch interleaved; `peak` is the better median."""
    import torch

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    samples = interleaved({"numpy": lambda: a @ b, "torch": lambda: torch.mm(ta, tb)},
                          min_rounds=rounds, max_rounds=rounds, budget_s=0)
    flops = 2.0 * n**3
    out = {k: flops / np.median(v) / 1e9 for k, v in samples.items()}
    return {"n": n, "threads": threads, "numpy_gflops": out["numpy"], "torch_gflops": out["torch"],
            "peak_gflops": max(out.values())}


# ------------------------------------------------------------------ cases


def cases_for(model: BenchModel, quick: bool, rng: np.random.Generator) -> list[Case]:
    card = model.card
    if model.endpoint == "generate":
        latent = int(card["latent_dim"])
        k = max(len(card.get("classes") or []), 1)
        out = []
        for n in ((1, 8) if quick else (1, 64)):
            feeds = {"z": rng.standard_normal((n, latent), dtype=np.float32)}
            if any(i["name"] == "label" for i in card["graph"]["inputs"]):
                feeds["label"] = (np.arange(n) % k).astype(np.int64)
            out.append(Case(f"n={n}", "generator", feeds))
        return out
    spec = card["input"]
    channels = int(spec["channels"])
    role = model.roles[0]
    native = spec.get("native_size")
    if native:  # e.g. the 28x28 CycleGAN: its native size, at batch 1 and a full batch
        h, w = int(native[0]), int(native[1])
        return [Case(f"{h}x{w} n={n}", role, {"image": rng.uniform(-1, 1, (n, channels, h, w)).astype(np.float32)})
                for n in ((1, 8) if quick else (1, 64))]
    m = int(spec.get("multiple_of") or 1)
    scale = int(card["output"].get("scale", 1))
    if model.endpoint == "upscale":
        sizes = (32, 64) if quick else (128, 512)
    else:
        sizes = (256,) if quick else (256, 512)
    out = []
    for s in sizes:
        s = max(-(-s // m) * m, int(spec.get("min_size") or 1))
        label = f"{s}x{s}" if scale == 1 else f"{s}->{s * scale}"
        out.append(Case(label, role, {"image": rng.uniform(-1, 1, (1, channels, s, s)).astype(np.float32)}))
    return out


def ort_session(model: BenchModel, role: str, threads: int):
    """A CPU session with the service's own options (core.runtime.session_options)."""
    import onnxruntime as ort

    from service.config import Settings
    from core.runtime import session_options

    settings = Settings.from_env()
    options = session_options(settings.ort_threads)
    return ort.InferenceSession(model.onnx_path(role).read_bytes(), options, providers=["CPUExecutionProvider"])


def ort_threads() -> int:
    """The intra-op threads the service's sessions get: GANFORGE_ORT_THREADS, 0 = one per physical core."""
    from service.config import Settings
    return Settings.from_env().ort_threads or physical_cores()


def architecture(model: BenchModel) -> str:
    import json
    net = ((model.card.get("training") or {}).get("config") or {}).get("model") or {}
    net = net.get("generator", net)  # the served network's config; a discriminator's does not count
    return json.dumps([model.family, net, model.card.get("graph")], sort_keys=True, default=str)


def measure_case(model: BenchModel, case: Case, net, threads: int, profile: Profile, log) -> dict[str, Any]:
    """One (model, input) comparison: onnxruntime vs torch, interleaved."""
    import torch

    session = ort_session(model, case.role, threads)
    output = session.get_outputs()[0].name
    names = [i.name for i in session.get_inputs()]
    tensors = tuple(torch.from_numpy(case.feeds[name]) for name in names)
    flops = count_flops(net, tensors) if net is not None else None  # also torch's first call at this shape

    def run_ort():
        return session.run([output], case.feeds)

    def run_torch():
        with torch.inference_mode():
            return net(*tensors)

    contenders = {"onnxruntime": run_ort}
    if net is not None:
        contenders["torch"] = run_torch
    t0 = time.perf_counter()
    # one timed warm-up call each; a second one where calls are cheap (torch/oneDNN settles a
    # shape's primitives over its first calls), none where one call already takes seconds
    slowest = 0.0
    for fn in contenders.values():
        time.sleep(SETTLE_S)
        w0 = time.perf_counter()
        fn()
        slowest = max(slowest, time.perf_counter() - w0)
    samples = interleaved(contenders, min_rounds=profile.case_rounds[0], max_rounds=profile.case_rounds[1],
                          budget_s=profile.case_budget_s, warmup=1 if slowest < 1.0 else 0)
    ort_ms = median_ms(samples["onnxruntime"])
    torch_ms = median_ms(samples["torch"]) if "torch" in samples else None
    gflops = (lambda ms: flops / ms / 1e6 if flops and ms else None)
    log(f"  {model.name:14s} {case.label:12s} ort {fmt_ms(ort_ms):>7s} ms  torch {fmt_ms(torch_ms):>7s} ms"
        f"  ({len(samples['onnxruntime'])} rounds, {time.perf_counter() - t0:.1f}s)")
    return {
        "model": model.name, "family": model.family, "endpoint": model.endpoint, "role": case.role,
        "case": case.label, "input_shapes": {k: list(v.shape) for k, v in case.feeds.items()},
        "gflop": flops / 1e9 if flops else None, "onnxruntime_ms": ort_ms, "torch_ms": torch_ms,
        "torch_over_onnxruntime": ratio(torch_ms, ort_ms) if torch_ms else None,
        "onnxruntime_gflops": gflops(ort_ms), "torch_gflops": gflops(torch_ms),
        "rounds": len(samples["onnxruntime"]), "samples_s": samples,
        "model_source": model.source, "torch_weights": model.torch_weights,
    }


def run(models: BenchModels, profile: Profile, log=print) -> dict[str, Any]:
    import torch

    threads = ort_threads()
    torch.set_num_threads(threads)
    peak_n, peak_rounds = profile.peak_n, profile.peak_rounds
    log(f"  fp32 matmul peak ({peak_n}^3, {threads} threads) ...")
    peaks = [matmul_peak(peak_n, peak_rounds, threads)]
    rng = np.random.default_rng(0)
    rows = []
    seen: dict[str, str] = {}  # architecture -> the model measured with it
    for model in models.models.values():
        try:
            nets = torch_generators(model)
        except Exception as exc:  # noqa: BLE001 - a card without its run config: onnxruntime alone
            log(f"  {model.name}: no torch network ({exc}); onnxruntime only")
            nets = {}
        cases = cases_for(model, profile.quick, rng)
        twin = seen.get(architecture(model))
        if twin is not None and len(cases) > 1:
            # same family and network config: same graph, same compute; the small case checks it
            log(f"  {model.name}: same architecture as {twin}: only {cases[0].label} (a cross-check)")
            cases = cases[:1]
        seen.setdefault(architecture(model), model.name)
        for case in cases:
            rows.append(measure_case(model, case, nets.get(case.role), threads, profile, log))
    log("  fp32 matmul peak again (drift check) ...")
    peaks.append(matmul_peak(peak_n, peak_rounds, threads))
    peak = max(p["peak_gflops"] for p in peaks)
    for row in rows:
        for who in ("onnxruntime", "torch"):
            row[f"{who}_peak_fraction"] = row[f"{who}_gflops"] / peak if row[f"{who}_gflops"] else None
    return {"threads": threads, "matmul_peak": peaks, "peak_gflops": peak, "rows": rows}


def report(result: dict[str, Any]) -> str:
    peak = result["peak_gflops"]
    p0, p1 = result["matmul_peak"][0], result["matmul_peak"][-1]
    head = (f"threads {result['threads']}; fp32 matmul peak {peak:.0f} GFLOP/s "
            f"(n={p0['n']}: numpy {p0['numpy_gflops']:.0f} / torch {p0['torch_gflops']:.0f} at the start, "
            f"numpy {p1['numpy_gflops']:.0f} / torch {p1['torch_gflops']:.0f} at the end)")
    num = (lambda v, f: "-" if v is None else f.format(v))
    rows = [[r["model"], r["case"], num(r["gflop"], "{:.3g}"), fmt_ms(r["onnxruntime_ms"]), fmt_ms(r["torch_ms"]),
             fmt_x(r["torch_over_onnxruntime"]), num(r["onnxruntime_gflops"], "{:.1f}"),
             num(r["torch_gflops"], "{:.1f}"), num(r["onnxruntime_peak_fraction"] and
                                                    100 * r["onnxruntime_peak_fraction"], "{:.0f}%"),
             num(r["torch_peak_fraction"] and 100 * r["torch_peak_fraction"], "{:.0f}%"), r["rounds"]]
            for r in result["rows"]]
    return head + "\n" + table(
        ["model", "case", "GFLOP", "ort ms", "torch ms", "torch/ort", "ort GFLOP/s", "torch GFLOP/s",
         "ort %peak", "torch %peak", "rounds"], rows)
