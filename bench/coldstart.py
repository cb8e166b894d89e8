"""Cold start: `bentoml serve` to ready, and a fresh server's first request against its second.

Two arms in alternating rounds: the server on the bench models ("models")
and on an empty models folder ("empty": BentoML and the service alone), so
the ratio is what loading the models (sha256, onnxruntime sessions) adds to
a start. Ready = the first 200 from /readyz, polled every 20 ms from the
moment `bentoml serve` is spawned (a fresh BENTOML_HOME each time; the OS
file cache is warm after the first start, as on a restarted pod).

On every "models" start, each serving workload (see serving.py) is sent
twice in a row: the first request pays for onnxruntime's first run of a
shape (allocations, kernel selection) and anything else lazily done.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .common import REPO, Profile, fmt_ms, fmt_x, ratio, table
from .models import BenchModels
from .serving import COMMON_ENV, workloads

POLL_S = 0.02
STARTUP_TIMEOUT_S = 180


@contextlib.contextmanager
def timed_server(models_dir: Path, tmp: Path, **env_overrides: str):
    """`bentoml serve` on a free port; yields (base_url, seconds from spawn to /readyz 200)."""
    import httpx

    from testkit.launcher import BENTOML, free_port, stop_process_group

    port = free_port()
    env = {**os.environ, "GANFORGE_MODELS_DIR": str(models_dir), "BENTOML_HOME": str(tmp / f"home-{port}"),
           "BENTOML_DO_NOT_TRACK": "True", "GANFORGE_JOBS_DIR": str(tmp / f"jobs-{port}"), **COMMON_ENV,
           **env_overrides}
    env.pop("GANFORGE_AUTH_TOKEN", None)
    log_path = tmp / f"server-{port}.log"
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen([str(BENTOML), "serve", "service.service:Ganforge", "--host", "127.0.0.1",
                                 "--port", str(port)], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        with httpx.Client(timeout=2) as client:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"bentoml serve exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
                try:
                    if client.get(f"{base}/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.perf_counter() - t0 > STARTUP_TIMEOUT_S:
                    raise RuntimeError(f"not ready after {STARTUP_TIMEOUT_S}s: {log_path.read_text()[-2000:]}")
                time.sleep(POLL_S)
        seconds = time.perf_counter() - t0
        # the port was free when picked; make sure the server that answered is this one
        names = sorted(p.name for p in Path(models_dir).iterdir() if not p.name.startswith("."))
        served = sorted(m["name"] for m in httpx.get(f"{base}/models", timeout=30).json()["models"])
        if proc.poll() is not None or served != names:
            raise RuntimeError(f"the server on port {port} is not the one started (it serves {served}, "
                               f"expected {names}; exit code {proc.poll()}): {log_path.read_text()[-2000:]}")
        yield base, seconds
    finally:
        stop_process_group(proc)


def first_and_second(base: str, loads) -> list[dict[str, Any]]:
    import httpx

    out = []
    with httpx.Client(base_url=base, timeout=300) as client:
        for w in loads:
            times = []
            for _ in range(2):
                t0 = time.perf_counter()
                r = w.request(client)
                times.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    raise RuntimeError(f"{w.path} answered {r.status_code}: {r.text[:300]}")
            out.append({"workload": w.name, "first_ms": times[0] * 1e3, "second_ms": times[1] * 1e3})
    return out


def run(models: BenchModels, profile: Profile, log=print) -> dict[str, Any]:
    rounds = profile.cold_rounds
    with tempfile.TemporaryDirectory(prefix="ganforge-bench-coldstart-") as tmp_name:
        tmp = Path(tmp_name)
        empty = tmp / "empty-models"
        empty.mkdir()
        loads = workloads(models, profile.quick, tmp)
        arms = {"models": models.models_dir, "empty": empty}
        ready: dict[str, list[float]] = {a: [] for a in arms}
        requests: list[list[dict[str, Any]]] = []
        names = list(arms)
        for r in range(rounds):
            for arm in (names if r % 2 == 0 else names[::-1]):
                log(f"  start {r + 1}/{rounds}: {arm} ...")
                with timed_server(arms[arm], tmp) as (base, seconds):
                    ready[arm].append(seconds)
                    if arm == "models":
                        requests.append(first_and_second(base, loads))
    med = {a: float(np.median(v)) for a, v in ready.items()}
    per_load = []
    for i, w in enumerate(loads):
        first = float(np.median([rs[i]["first_ms"] for rs in requests]))
        second = float(np.median([rs[i]["second_ms"] for rs in requests]))
        per_load.append({"workload": w.name, "first_ms": first, "second_ms": second,
                         "first_over_second": ratio(first, second)})
    return {"rounds": rounds, "poll_s": POLL_S, "ready_s": ready, "ready_median_s": med,
            "models_over_empty": ratio(med["models"], med["empty"]), "models": sorted(models.models),
            "first_request": per_load, "first_request_samples": requests}


def report(result: dict[str, Any]) -> str:
    med = result["ready_median_s"]
    head = (f"bentoml serve -> /readyz 200: {med['models']:.2f} s with {len(result['models'])} models, "
            f"{med['empty']:.2f} s with none ({fmt_x(result['models_over_empty'])}; median of {result['rounds']}, "
            f"polled every {result['poll_s'] * 1e3:.0f} ms)")
    rows = [[r["workload"], fmt_ms(r["first_ms"]), fmt_ms(r["second_ms"]), fmt_x(r["first_over_second"])]
            for r in result["first_request"]]
    return head + "\n" + table(["first request after start", "first ms", "second ms", "first/second"], rows)
