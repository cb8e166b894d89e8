"""issue 26: every model on its fastest path, and less time around the graph; side by side in one run.

Servers, all at once on the bench models (GANFORGE_DEVICE=cpu): `default` (nothing set: auto, so the
autotune choice, measured at its startup into a fresh table folder, after the others are up), and the choices forced by hand: `ort fp32`
(GANFORGE_BACKEND=onnxruntime), `ov fp32` (openvino + GANFORGE_PRECISION=fp32), `ov bf16` (openvino + bf16;
fp32 where a card's gate did not pass); plus `peer` (bench/peer.py: Starlette + python-multipart +
onnxruntime, PIL decode, PIL PNG level 1) for the translate model.

1. peer:    /translate 256x256 (pix2pix): ganforge default vs the peer vs the bare sessions (onnxruntime fp32
            with the service's options, OpenVINO bf16), interleaved. Goals: ganforge/peer <= 0.9,
            ganforge/session <= 2.5 (the faster bare session).
2. choice:  per model on its README input, the default server against each forced one, interleaved;
            default / the fastest forced. Goal: <= 1.05.
3. upscale: /upscale 128->512 over HTTP (default) vs the bare OpenVINO bf16 session on the same graph
            (goal <= 1.2), and the served answer's PSNR against the `ort fp32` server's answer.
"""
from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from service.config import Settings

from .common import Profile, fmt_ms, fmt_x, interleaved, photo_like, png_bytes, ratio, stats, table
from .models import BenchModel, BenchModels

COMMON_ENV = {"GANFORGE_DEVICE": "cpu"}
DEFAULT_BUDGET = str(Settings().autotune_budget_s)  # the shipped budget, whatever the caller's environment says
FORCED = {
    "ort fp32": {"GANFORGE_BACKEND": "onnxruntime"},
    "ov fp32": {"GANFORGE_BACKEND": "openvino", "GANFORGE_PRECISION": "fp32"},
    "ov bf16": {"GANFORGE_BACKEND": "openvino", "GANFORGE_PRECISION": "bf16"},
}


def request_for(model: BenchModel, quick: bool) -> tuple[str, str, dict[str, Any]]:
    """(label, path, httpx keyword arguments) of the model's README request."""
    card = model.card
    if model.endpoint == "generate":
        body = {"model": model.name, "n": 1, "seed": 7}
        if any(i["name"] == "label" for i in card["graph"]["inputs"]):
            body["label"] = 0
        return "generate n=1", "/generate", {"json": body}
    native = card["input"].get("native_size")
    size = int(native[0]) if native else (32 if quick and model.endpoint == "upscale" else
                                          128 if model.endpoint == "upscale" else 256)
    pixels = photo_like(size, size, seed=size)
    if card["input"]["channels"] == 1:
        pixels = pixels.mean(axis=2, keepdims=True).astype(np.uint8)
    data = {"model": model.name, **({"direction": "a2b"} if "a2b" in model.roles else {})}
    scale = int(card["output"].get("scale", 1))
    label = f"{model.endpoint} {size}" + (f"->{size * scale}" if model.endpoint == "upscale" else f"x{size}")
    return label, f"/{model.endpoint}", {"files": {"image": ("in.png", png_bytes(pixels), "image/png")},
                                         "data": data}


def poster(client, path: str, kwargs: dict[str, Any]) -> Callable[[], bytes]:
    def post() -> bytes:
        r = client.post(path, **kwargs)
        if r.status_code != 200:
            raise RuntimeError(f"{path} answered {r.status_code}: {r.text[:300]}")
        return r.content
    return post


def graph_feeds(model: BenchModel, kwargs: dict[str, Any]) -> dict[str, np.ndarray]:
    """What the pipeline feeds the graph for this request (pix2pix at 256: no padding)."""
    from core import imaging

    card = model.card
    decoded = imaging.decode_image(kwargs["files"]["image"][1], 1 << 30)
    px = imaging.to_channels(decoded.pixels, int(card["input"]["channels"]))
    return {card["graph"]["inputs"][0]["name"]: imaging.to_float(px, tuple(card["input"]["range"]))[None]}


def bare_sessions(model: BenchModel) -> dict[str, Any]:
    from core.backends import make_openvino_session, native_bf16
    from core.runtime import make_session, session_options

    data = model.onnx_path(model.roles[0]).read_bytes()
    sessions = {"session ort fp32": make_session(data, session_options(0))}
    if native_bf16()[0]:
        sessions["session ov bf16"] = make_openvino_session(data, "bf16")
    return sessions


def timed(contenders: dict[str, Callable[[], Any]], profile: Profile) -> dict[str, Any]:
    samples = interleaved(contenders, min_rounds=profile.latency_rounds[0], max_rounds=profile.latency_rounds[1],
                          budget_s=profile.latency_budget_s, warmup=2)
    return {"stats": {k: stats(v) for k, v in samples.items()}, "samples_s": samples}


def p50(result: dict[str, Any], name: str) -> float:
    return result["stats"][name]["p50_ms"]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 100.0 if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def decoded(body: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(body)))


def peer_part(models: BenchModels, clients: dict[str, Any], peer_client, profile: Profile) -> dict[str, Any] | None:
    p2p = next((m for m in models.of("translate") if not m.card["input"].get("native_size")), None)
    if p2p is None:
        return None
    label, path, kwargs = request_for(p2p, profile.quick)
    feeds = graph_feeds(p2p, kwargs)
    contenders = {"ganforge": poster(clients["default"], path, kwargs), "peer": poster(peer_client, path, kwargs)}
    for name, session in bare_sessions(p2p).items():
        contenders[name] = lambda s=session: s.run(None, feeds)
    result = timed(contenders, profile)
    bare = min(p50(result, n) for n in contenders if n.startswith("session"))
    return {"model": p2p.name, "request": label, **result,
            "ganforge_over_peer": ratio(p50(result, "ganforge"), p50(result, "peer")),
            "ganforge_over_session": ratio(p50(result, "ganforge"), bare)}


def choice_part(models: BenchModels, clients: dict[str, Any], profile: Profile) -> list[dict[str, Any]]:
    rows = []
    for model in models.models.values():
        label, path, kwargs = request_for(model, profile.quick)
        result = timed({name: poster(client, path, kwargs) for name, client in clients.items()}, profile)
        fastest = min(FORCED, key=lambda n: p50(result, n))
        rows.append({"model": model.name, "request": label, **result, "fastest_forced": fastest,
                     "default_over_fastest": ratio(p50(result, "default"), p50(result, fastest))})
    return rows


def upscale_part(models: BenchModels, clients: dict[str, Any], profile: Profile) -> dict[str, Any] | None:
    up = models.first("upscale", prefer="srresnet-x4")
    sessions = bare_sessions(up) if up is not None else {}
    if "session ov bf16" not in sessions:
        return None
    label, path, kwargs = request_for(up, profile.quick)
    feeds = graph_feeds(up, kwargs)
    bf16 = sessions["session ov bf16"]
    result = timed({"http": poster(clients["default"], path, kwargs), "session ov bf16": lambda: bf16.run(None, feeds)},
                   profile)
    served, static, reference = (decoded(poster(clients[n], path, kwargs)()) for n in ("default", "ov bf16", "ort fp32"))
    return {"model": up.name, "request": label, **result,
            "http_over_session": ratio(p50(result, "http"), p50(result, "session ov bf16")),
            "served_psnr_vs_ort_fp32_db": psnr(served, reference),
            # the static rule's answer (OpenVINO bf16, as served before autotune): the same PSNR = unchanged
            "static_rule_psnr_vs_ort_fp32_db": psnr(static, reference),
            "served_equals_static_rule": bool(np.array_equal(served, static))}


def run(models: BenchModels, profile: Profile, log=print) -> dict[str, Any]:
    import httpx

    from testkit.launcher import free_port, running_server

    from .peer import peer_server

    p2p = next((m for m in models.of("translate") if not m.card["input"].get("native_size")), None)
    with tempfile.TemporaryDirectory(prefix="ganforge-fastpath-") as tmp, contextlib.ExitStack() as stack:
        tmp_path = Path(tmp)
        bases = {}
        # the forced servers first: the default one measures its choices at startup (in a fresh table folder,
        # so every run measures), and the others' startup compiling beside it would skew that measurement
        default = {"GANFORGE_AUTOTUNE_DIR": str(tmp_path / "autotune"), "GANFORGE_AUTOTUNE_BUDGET_S": DEFAULT_BUDGET}
        for name, env in {**FORCED, "default": default}.items():
            log(f"  starting {name} ...")
            base, _ = stack.enter_context(running_server(models.models_dir, tmp_path, **COMMON_ENV, **env))
            bases[name] = base
        bases = {"default": bases.pop("default"), **bases}
        clients = {n: stack.enter_context(httpx.Client(base_url=b, timeout=300)) for n, b in bases.items()}
        choices = {m["name"]: {"backend": m.get("backend"), "precision": m.get("precision"),
                               "reason": m.get("precision_reason"),
                               "autotune_s": (m.get("autotune") or {}).get("seconds")}
                   for m in clients["default"].get("/models").json()["models"]}
        out: dict[str, Any] = {"choices": choices}
        if p2p is not None:
            peer_base = stack.enter_context(peer_server(p2p.folder, free_port(), tmp_path / "peer.log"))
            out["peer"] = peer_part(models, clients, stack.enter_context(httpx.Client(base_url=peer_base,
                                                                                       timeout=300)), profile)
        log("  peer done; per-model choice ...")
        out["choice"] = choice_part(models, clients, profile)
        out["upscale"] = upscale_part(models, clients, profile)
    return out


def report(res: dict[str, Any]) -> str:
    parts = []
    peer = res.get("peer")
    if peer:
        s = peer["stats"]
        names = [n for n in ("ganforge", "peer", "session ort fp32", "session ov bf16") if n in s]
        parts.append(f"{peer['request']} ({peer['model']}), p50 ms:\n" + table(
            names + ["ganforge/peer", "ganforge/session"],
            [[fmt_ms(s[n]["p50_ms"]) for n in names] + [fmt_x(peer["ganforge_over_peer"]),
                                                         fmt_x(peer["ganforge_over_session"])]]))
    rows = [[r["model"], r["request"], *(fmt_ms(r["stats"][n]["p50_ms"]) for n in ("default", *FORCED)),
             f"{res['choices'].get(r['model'], {}).get('backend')} {res['choices'].get(r['model'], {}).get('precision')}",
             fmt_x(r["default_over_fastest"])] for r in res["choice"]]
    parts.append("default vs forced choices, p50 ms:\n" + table(
        ["model", "request", "default", *FORCED, "default runs", "default/fastest forced"], rows))
    up = res.get("upscale")
    if up:
        s = up["stats"]
        parts.append(f"{up['request']} ({up['model']}): http {fmt_ms(s['http']['p50_ms'])} ms, bare OpenVINO bf16 "
                     f"{fmt_ms(s['session ov bf16']['p50_ms'])} ms, http/session {fmt_x(up['http_over_session'])}; "
                     f"served PSNR vs onnxruntime fp32 {up['served_psnr_vs_ort_fp32_db']:.1f} dB (OpenVINO bf16 forced, "
                     f"the static rule: {up['static_rule_psnr_vs_ort_fp32_db']:.1f} dB; same pixels: "
                     f"{up['served_equals_static_rule']})")
    return "\n\n".join(parts)
