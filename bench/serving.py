"""Serving overhead: a real `bentoml serve` against the bare onnxruntime session, side by side.

Three servers run at once on the bench models (testkit/launcher.running_server,
GANFORGE_DEVICE=cpu), each configured one way:

  default   (nothing set)            the shipped settings: GANFORGE_THREADS=4 (concurrent requests
                                     overlap), batching auto = off on the CPU provider
  serial    GANFORGE_THREADS=1       one request at a time (the default before this bench chose 4)
  batching  GANFORGE_BATCH_MAX=16    concurrent same-shaped requests share graph runs (the CUDA default)

Latency, one client (default server): per workload, in alternating rounds,
  session   the bare `InferenceSession.run` on the graph input the pipeline would build
  pipeline  the service's own handler in-process (decode, pre-processing, session, post-processing,
            encode; bytes in, bytes out), on a registry loaded with the default server's settings
  http      the same request over HTTP to the default server
p50 and p99 of each (p99 from n samples: read it as the tail only when n >= 100).

Throughput: /generate n=1, /translate on the 28x28 CycleGAN and /translate
256x256 on pix2pix (the issue's goal case), at 1, 4 and 16 concurrent clients (closed loop: a client sends its next request when the
previous answer arrives), every server in every round, alternating the server
order. Against the bare session in the same rounds: batch 1 run back to back
(what one request at a time can reach) and batch 16 (rows/s: what perfect
batching could reach). The clients run in this process (asyncio, httpx) and
share the machine's cores with the server, as a sidecar or load balancer would.
"""
from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .common import SETTLE_S, Profile, fmt_ms, fmt_x, interleaved, photo_like, png_bytes, ratio, stats, table
from .models import BenchModels

SERVERS = {
    "default": {},
    "serial": {"GANFORGE_THREADS": "1"},
    "batching": {"GANFORGE_BATCH_MAX": "16"},
}
COMMON_ENV = {"GANFORGE_DEVICE": "cpu"}
CONCURRENCY = (1, 4, 16)


@dataclass
class Workload:
    name: str
    model: str
    role: str
    path: str  # HTTP route
    json: dict | None  # /generate body
    files: dict | None  # multipart
    data: dict | None
    handler: Callable[[Any, Any], Any]  # (registry, settings) -> ImageResult
    feeds: Callable[[int], dict[str, np.ndarray]]  # rows -> the bare session's feeds
    throughput: bool = False

    def request(self, client):
        if self.json is not None:
            return client.post(self.path, json=self.json)
        return client.post(self.path, files=self.files, data=self.data)


def _image_feeds(card: dict, pixels: np.ndarray) -> Callable[[int], dict[str, np.ndarray]]:
    """The graph input the pipeline builds from these pixels (channels, range, native size, padding)."""
    from contract import Card
    from core import imaging
    from core.loading import image_spec

    spec = image_spec(Card.from_dict(card), 0, -1)
    px = imaging.to_channels(pixels, spec.in_channels)
    if spec.native_size is not None:
        px = imaging.resize(px, spec.native_size[1], spec.native_size[0])
    x = imaging.pad_to(imaging.to_float(px, spec.in_range)[None], spec.multiple_of, spec.min_size)
    return lambda rows: {spec.input_name: np.ascontiguousarray(np.repeat(x, rows, axis=0))}


def workloads(models: BenchModels, quick: bool, tmp: Path) -> list[Workload]:
    from service import handlers

    out: list[Workload] = []
    gen = models.first("generate", prefer="fashion")
    if gen is not None:
        card = gen.card
        rng = np.random.default_rng(7)
        z = rng.standard_normal((1, int(card["latent_dim"])), dtype=np.float32)
        has_label = any(i["name"] == "label" for i in card["graph"]["inputs"])

        def gen_feeds(rows, z=z, has_label=has_label):
            feeds = {"z": np.repeat(z, rows, axis=0)}
            if has_label:
                feeds["label"] = np.zeros(rows, dtype=np.int64)
            return feeds

        body = {"model": gen.name, "n": 1, "seed": 7, **({"label": 0} if has_label else {})}
        out.append(Workload("generate n=1", gen.name, "generator", "/generate", body, None, None,
                            lambda reg, st, b=body: handlers.generate(reg, st, **b), gen_feeds, throughput=True))

    def image_workload(model, label: str, size: int, path: str, throughput: bool, extra: dict):
        pixels = photo_like(size, size, seed=size)
        if model.card["input"]["channels"] == 1:
            from core import imaging
            pixels = imaging.luminance(pixels)
        data = png_bytes(pixels)
        file = tmp / f"{model.name}-{size}.png"
        file.write_bytes(data)
        fn = handlers.translate if path == "/translate" else handlers.upscale
        role = extra.get("direction", "generator") if model.roles != ["generator"] else "generator"
        return Workload(label, model.name, role, path, None, {"image": ("in.png", data, "image/png")},
                        {"model": model.name, **extra},
                        lambda reg, st, f=file, m=model.name, e=extra: fn(reg, st, image=f, model=m, **e),
                        _image_feeds(model.card, pixels), throughput=throughput)

    cyc = next((m for m in models.of("translate") if m.card["input"].get("native_size")), None)
    if cyc is not None:
        h = int(cyc.card["input"]["native_size"][0])
        out.append(image_workload(cyc, f"translate {h}x{h} ({cyc.name})", h, "/translate", True,
                                  {"direction": "a2b"} if "a2b" in cyc.roles else {}))
    p2p = next((m for m in models.of("translate") if not m.card["input"].get("native_size")), None)
    if p2p is not None:
        m = int(p2p.card["input"].get("multiple_of") or 1)
        s = max(-(-256 // m) * m, 256)
        out.append(image_workload(p2p, f"translate {s}x{s} ({p2p.name})", s, "/translate", True, {}))
    up = models.first("upscale", prefer="srresnet-x4")
    if up is not None:
        s = 32 if quick else 128
        scale = int(up.card["output"].get("scale", 4))
        out.append(image_workload(up, f"upscale {s}->{s * scale} ({up.name})", s, "/upscale", False, {}))
    return out


# ------------------------------------------------------------------ latency


def latency(workload: Workload, registry, settings, base: str, profile: Profile) -> dict[str, Any]:
    import httpx

    model = registry.get(workload.model)
    session = model.sessions[workload.role]
    output = session.get_outputs()[0].name
    feeds = workload.feeds(1)
    with httpx.Client(base_url=base, timeout=300) as client:
        def http():
            r = workload.request(client)
            if r.status_code != 200:
                raise RuntimeError(f"{workload.path} answered {r.status_code}: {r.text[:300]}")

        samples = interleaved(
            {"session": lambda: session.run([output], feeds),
             "pipeline": lambda: workload.handler(registry, settings),
             "http": http},
            min_rounds=profile.latency_rounds[0], max_rounds=profile.latency_rounds[1],
            budget_s=profile.latency_budget_s, warmup=2)
    s = {k: stats(v) for k, v in samples.items()}
    return {"workload": workload.name, **{k: v for k, v in s.items()},
            "pipeline_over_session": ratio(s["pipeline"]["p50_ms"], s["session"]["p50_ms"]),
            "http_over_session": ratio(s["http"]["p50_ms"], s["session"]["p50_ms"]),
            "http_over_pipeline": ratio(s["http"]["p50_ms"], s["pipeline"]["p50_ms"])}


# ------------------------------------------------------------------ throughput


async def _closed_loop(base: str, workload: Workload, clients: int, window_s: float) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    errors: dict[int, int] = {}
    limits = httpx.Limits(max_connections=clients + 2, max_keepalive_connections=clients + 2)
    async with httpx.AsyncClient(base_url=base, timeout=300, limits=limits) as client:
        start = time.perf_counter()
        stop = start + window_s

        async def one_client():
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                if workload.json is not None:
                    r = await client.post(workload.path, json=workload.json)
                else:
                    r = await client.post(workload.path, files=workload.files, data=workload.data)
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors[r.status_code] = errors.get(r.status_code, 0) + 1

        await asyncio.gather(*(one_client() for _ in range(clients)))
        elapsed = time.perf_counter() - start
    return {"rps": len(latencies) / elapsed, "requests": len(latencies), "errors": errors,
            "elapsed_s": elapsed, **stats(latencies)}


def closed_loop(base: str, workload: Workload, clients: int, window_s: float) -> dict[str, Any]:
    time.sleep(SETTLE_S)  # the previous window's server threads go idle first
    return asyncio.run(_closed_loop(base, workload, clients, window_s))


def bare_rate(session, output: str, feeds: dict[str, np.ndarray], window_s: float) -> float:
    """Rows per second of back-to-back runs on these feeds for window_s."""
    rows = next(iter(feeds.values())).shape[0]
    time.sleep(SETTLE_S)
    done, start = 0, time.perf_counter()
    while True:
        session.run([output], feeds)
        done += rows
        if time.perf_counter() - start >= window_s:
            return done / (time.perf_counter() - start)


def throughput(workload: Workload, registry, bases: dict[str, str], profile: Profile) -> dict[str, Any]:
    model = registry.get(workload.model)
    session = model.sessions[workload.role]
    output = session.get_outputs()[0].name
    window, rounds = profile.window_s, profile.throughput_rounds
    one, sixteen = workload.feeds(1), workload.feeds(16)
    for base in bases.values():  # warm every server at every concurrency's batch shapes
        closed_loop(base, workload, 4, profile.warm_s)
    runs: dict[str, dict[int, list[dict]]] = {s: {c: [] for c in CONCURRENCY} for s in bases}
    bare: dict[str, list[float]] = {"batch1_rps": [], "batch16_rows_per_s": []}
    names = list(bases)
    for r in range(rounds):
        bare["batch1_rps"].append(bare_rate(session, output, one, window))
        bare["batch16_rows_per_s"].append(bare_rate(session, output, sixteen, window))
        for c in CONCURRENCY:
            for name in (names if r % 2 == 0 else names[::-1]):
                runs[name][c].append(closed_loop(bases[name], workload, c, window))
    bare1 = float(np.median(bare["batch1_rps"]))
    bare16 = float(np.median(bare["batch16_rows_per_s"]))
    table_rows = []
    for name in names:
        for c in CONCURRENCY:
            rs = runs[name][c]
            rps = float(np.median([x["rps"] for x in rs]))
            table_rows.append({
                "server": name, "clients": c, "rps": rps,
                "p50_ms": float(np.median([x["p50_ms"] for x in rs if x.get("n")] or [np.nan])),
                "p99_ms": float(np.median([x["p99_ms"] for x in rs if x.get("n")] or [np.nan])),
                "requests": sum(x["requests"] for x in rs),
                "errors": {k: sum(x["errors"].get(k, 0) for x in rs) for k in {k for x in rs for k in x["errors"]}},
                "over_bare_batch1": ratio(rps, bare1), "over_bare_batch16": ratio(rps, bare16),
                "rounds": rs,
            })
    return {"workload": workload.name, "model": workload.model, "window_s": window, "rounds": rounds,
            "bare_batch1_rps": bare1, "bare_batch16_rows_per_s": bare16, "bare_samples": bare, "rows": table_rows}


def batching_stats(base: str) -> dict[str, Any]:
    import httpx

    body = httpx.get(f"{base}/models", timeout=30).json()
    return {m["name"]: m["batching"] for m in body["models"] if m.get("batching")}


# ------------------------------------------------------------------ section


def start_all(stack: contextlib.ExitStack, servers: dict[str, Any]) -> dict[str, str]:
    """Enter every server's context manager at once (they start in parallel); name -> base URL.
    Each one that started is stopped by `stack`, also when another failed."""
    with ThreadPoolExecutor(len(servers)) as pool:
        futures = {name: pool.submit(cm.__enter__) for name, cm in servers.items()}
        bases, failure = {}, None
        for name, future in futures.items():
            try:
                bases[name] = future.result()[0]
                stack.push(servers[name])
            except Exception as exc:  # noqa: BLE001 - re-raised below, after the others are registered
                failure = failure or exc
    if failure is not None:
        raise failure
    return bases


def run(models: BenchModels, profile: Profile, log=print) -> dict[str, Any]:
    from service.config import Settings
    from testkit.launcher import running_server
    from service.registry import ModelRegistry

    with tempfile.TemporaryDirectory(prefix="ganforge-bench-serving-") as tmp_name, contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        log("  starting " + "; ".join(f"{name} ({' '.join(f'{k}={v}' for k, v in env.items())})"
                                     for name, env in SERVERS.items()) + " ...")
        bases = start_all(stack, {name: running_server(models.models_dir, tmp, **COMMON_ENV, **env)
                                  for name, env in SERVERS.items()})
        env = {"GANFORGE_MODELS_DIR": str(models.models_dir), **COMMON_ENV, **SERVERS["default"]}
        settings = Settings.from_env(env)
        registry = ModelRegistry.load(settings)
        loads = workloads(models, profile.quick, tmp)
        lat = []
        for w in loads:
            log(f"  latency, one client: {w.name} ...")
            lat.append(latency(w, registry, settings, bases["default"], profile))
        thr = []
        for w in loads:
            if w.throughput:
                log(f"  throughput at {', '.join(map(str, CONCURRENCY))} clients: {w.name} ...")
                before = batching_stats(bases["batching"]).get(w.model, {}).get(w.role, {})
                t = throughput(w, registry, bases, profile)
                after = batching_stats(bases["batching"]).get(w.model, {}).get(w.role, {})
                t["batching_server"] = {k: after.get(k, 0) - before.get(k, 0) for k in ("runs", "requests")}
                t["batching_server"]["max_rows"] = after.get("max_rows")
                thr.append(t)
        for model in registry.models.values():
            for runner in model.runners.values():
                runner.close()
    return {"servers": SERVERS, "common_env": COMMON_ENV, "latency": lat, "throughput": thr}


def report(result: dict[str, Any]) -> str:
    out = ["latency, one client (ms; p99 over n samples)"]
    rows = []
    for r in result["latency"]:
        rows.append([r["workload"], fmt_ms(r["session"]["p50_ms"]), fmt_ms(r["pipeline"]["p50_ms"]),
                     fmt_ms(r["http"]["p50_ms"]), fmt_ms(r["session"]["p99_ms"]), fmt_ms(r["pipeline"]["p99_ms"]),
                     fmt_ms(r["http"]["p99_ms"]), fmt_x(r["pipeline_over_session"]), fmt_x(r["http_over_session"]),
                     r["http"]["n"]])
    out.append(table(["workload", "session p50", "pipeline p50", "http p50", "session p99", "pipeline p99",
                      "http p99", "pipeline/session", "http/session", "n"], rows))
    for t in result["throughput"]:
        out.append("")
        out.append(f"throughput: {t['workload']} (bare session: batch 1 {t['bare_batch1_rps']:.0f}/s, "
                   f"batch 16 {t['bare_batch16_rows_per_s']:.0f} rows/s; {t['rounds']} round(s) of {t['window_s']}s)")
        rows = [[r["server"], r["clients"], f"{r['rps']:.1f}", fmt_ms(r["p50_ms"]), fmt_ms(r["p99_ms"]),
                 fmt_x(r["over_bare_batch1"]), fmt_x(r["over_bare_batch16"]),
                 ",".join(f"{k}:{v}" for k, v in r["errors"].items()) or "0"] for r in t["rows"]]
        out.append(table(["server", "clients", "req/s", "p50 ms", "p99 ms", "vs bare b1", "vs bare b16", "errors"],
                         rows))
        b = t.get("batching_server") or {}
        if b.get("runs"):
            out.append(f"batching server over these rounds (warm-up included): {b['requests']} requests in "
                       f"{b['runs']} graph runs = {b['requests'] / b['runs']:.2f} requests/run "
                       f"(largest run so far {b['max_rows']} rows)")
    return "\n".join(out)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loads = result["throughput"]
    if not loads:
        return
    fig, axes = plt.subplots(2, len(loads), figsize=(5.5 * len(loads), 8), squeeze=False)
    for col, t in enumerate(loads):
        top, bottom = axes[0][col], axes[1][col]
        for k, server in enumerate(result["servers"]):
            rows = [r for r in t["rows"] if r["server"] == server]
            xs = [r["clients"] for r in rows]
            colour = f"C{k}"
            top.plot(xs, [r["rps"] for r in rows], marker="o", color=colour, label=server)
            bottom.plot(xs, [r["p50_ms"] for r in rows], marker="o", color=colour, label=f"{server} p50")
            bottom.plot(xs, [r["p99_ms"] for r in rows], marker="x", color=colour, linestyle=":",
                        label=f"{server} p99")
        top.axhline(t["bare_batch1_rps"], color="grey", linestyle="--", label="bare session, batch 1")
        top.axhline(t["bare_batch16_rows_per_s"], color="black", linestyle="--",
                    label="bare session, batch 16 (rows/s)")
        top.set_title(f"{t['workload']}: throughput")
        top.set_ylabel("requests / s (log)")
        top.set_yscale("log")
        bottom.set_title(f"{t['workload']}: latency")
        bottom.set_ylabel("ms (log)")
        for ax in (top, bottom):
            ax.set_xscale("log", base=2)
            ax.set_xticks(list(CONCURRENCY))
            ax.set_xticklabels([str(c) for c in CONCURRENCY])
            ax.set_xlabel("concurrent clients")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
        bottom.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
