"""What ganforge's own metrics and spans cost (service/telemetry.py), measured two ways in one run.

1. End to end, side by side: two real `bentoml serve` (serving.start_all), the same settings but
   GANFORGE_METRICS=1 (the default: metrics recorded, spans opened) and GANFORGE_METRICS=0; one client
   sends the same request to each in alternating rounds (common.interleaved), /translate 256x256 on
   pix2pix (the issue's case) and /generate n=1 (the smallest request: the worst case in relative terms).
   Two servers of each kind (on, off, on, off in the rounds, reversed every other round); the figure is the
   ratio of the medians of all "on" calls and all "off" calls, next to on / on 2 and off / off 2 (two
   identical servers: the figure's noise floor). It is what a client sees, but on a shared 2-core machine
   that floor can be as large as the cost measured.
2. The recording itself: a request's whole record (arrival, model picked, decode/compute/encode
   stages with their spans, sizes, the final counts and histograms) done N times in a loop, in a fresh
   process whose prometheus_client runs in multiprocess mode (PROMETHEUS_MULTIPROC_DIR set, so every
   write goes to the mmap'd files, as in a worker), tracing off as shipped. Microseconds per request,
   and their share of the 256x256 request's median time from (1): the precise figure.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .common import REPO, Profile, fmt_ms, fmt_x, interleaved, ratio, stats, table
from .models import BenchModels
from .serving import start_all, workloads

# two servers of each kind, in the order on, off, on, off (and reversed every other round), so neither kind
# holds one position in the rounds; each kind's twin measures the floor of the figure: what two identical
# server processes differ by on this machine, in the same rounds
SERVERS = {"on": {"GANFORGE_METRICS": "1"}, "off": {"GANFORGE_METRICS": "0"},
           "on 2": {"GANFORGE_METRICS": "1"}, "off 2": {"GANFORGE_METRICS": "0"}}
COMMON_ENV = {"GANFORGE_DEVICE": "cpu"}
RECORDS = {"full": 20000, "quick": 2000, "smoke": 200}


def record_cost(n: int) -> float:
    """Seconds to record one request's metrics and spans, the mean over `n` (call in a fresh process
    with PROMETHEUS_MULTIPROC_DIR set: the worker's mode)."""
    from service import telemetry

    observe_run = telemetry.graph_run_observer("colorize", "v1")  # what a plain session's run records

    def one() -> None:
        record = telemetry.RequestRecord("translate")
        with telemetry.bound(record), telemetry.handler():
            telemetry.picked("colorize", "v1")
            with telemetry.stage("decode"):
                telemetry.images(input_pixels=256 * 256)
            with telemetry.stage("compute"):
                telemetry.add_compute(0.01, tile=True)
                observe_run(1)
            with telemetry.stage("encode"):
                telemetry.images(output_pixels=256 * 256)
        record.finish(200)

    for _ in range(min(n, 100)):  # the label children are made once; what follows is every request's cost
        one()
    started = time.perf_counter()
    for _ in range(n):
        one()
    return (time.perf_counter() - started) / n


def record_cost_in_worker_mode(n: int) -> float:
    """`record_cost` in a subprocess with its own multiprocess dir (as a `bentoml serve` worker)."""
    with tempfile.TemporaryDirectory(prefix="ganforge-bench-prom-") as multiproc:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": multiproc}
        code = f"import json; from bench.telemetry import record_cost; print(json.dumps(record_cost({n})))"
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=600, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1]))


def run(models: BenchModels, profile: Profile, log=print) -> dict[str, Any]:
    from testkit.launcher import running_server

    with tempfile.TemporaryDirectory(prefix="ganforge-bench-telemetry-") as tmp_name, \
            contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        log("  starting " + "; ".join(f"{name} ({' '.join(f'{k}={v}' for k, v in env.items())})"
                                     for name, env in SERVERS.items()) + " ...")
        bases = start_all(stack, {name: running_server(models.models_dir, tmp, **COMMON_ENV, **env)
                                  for name, env in SERVERS.items()})
        loads = [w for w in workloads(models, profile.quick, tmp)
                 if w.name.startswith("generate") or "256x256" in w.name]
        rows = [_latency(w, bases, profile, log) for w in loads]
    n = RECORDS[profile.name]
    log(f"  the recording alone, {n} requests, multiprocess mode ...")
    per_request = record_cost_in_worker_mode(n)
    big = next((r for r in rows if "256x256" in r["workload"]), None)
    share = per_request * 1e3 / big["off"]["p50_ms"] if big else None
    return {"servers": SERVERS, "common_env": COMMON_ENV, "latency": rows, "record_us": per_request * 1e6,
            "records": n, "record_share_of_256": share}


def _latency(workload, bases: dict[str, str], profile: Profile, log) -> dict[str, Any]:
    import httpx

    log(f"  {workload.name}: metrics on vs off, one client, interleaved ...")
    clients = {name: httpx.Client(base_url=base, timeout=300) for name, base in bases.items()}
    try:
        def call(name: str):
            def send():
                r = workload.request(clients[name])
                if r.status_code != 200:
                    raise RuntimeError(f"{workload.path} answered {r.status_code}: {r.text[:300]}")
            return send

        samples = interleaved({name: call(name) for name in bases}, min_rounds=profile.latency_rounds[0],
                              max_rounds=profile.latency_rounds[1] * 2, budget_s=profile.latency_budget_s * 2,
                              warmup=3)
    finally:
        for client in clients.values():
            client.close()
    on, off = samples["on"] + samples["on 2"], samples["off"] + samples["off 2"]
    s = {name: stats(v) for name, v in samples.items()}
    s.update(all_on=stats(on), all_off=stats(off))
    # each round's calls ran back to back, under the same load: the median of the rounds' own ratios
    rounds = [(a + c) / (b + d) for a, b, c, d in zip(*(samples[k] for k in SERVERS))]
    return {"workload": workload.name, **s, "on_over_off": ratio(s["all_on"]["p50_ms"], s["all_off"]["p50_ms"]),
            "paired_median": float(np.median(rounds)),
            "on_over_on2": ratio(s["on"]["p50_ms"], s["on 2"]["p50_ms"]),
            "off_over_off2": ratio(s["off"]["p50_ms"], s["off 2"]["p50_ms"]), "samples_s": samples}


def report(result: dict[str, Any]) -> str:
    rows = [[r["workload"], fmt_ms(r["all_on"]["p50_ms"]), fmt_ms(r["all_off"]["p50_ms"]), fmt_x(r["on_over_off"]),
             fmt_x(r["paired_median"]), fmt_x(r["on_over_on2"]), fmt_x(r["off_over_off2"]), r["on"]["n"]]
            for r in result["latency"]]
    out = [table(["workload", "on p50", "off p50", "on/off", "on/off (rounds)", "on/on 2 (noise)",
                  "off/off 2 (noise)", "n per server"], rows)]
    share = result["record_share_of_256"]
    out.append(f"recording one request's metrics and spans (multiprocess mode, {result['records']} requests): "
               f"{result['record_us']:.1f} us" + (f" = {share:.2%} of the 256x256 request" if share else ""))
    return "\n".join(out)
