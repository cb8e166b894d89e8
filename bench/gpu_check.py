"""The CUDA path end to end, in one call (`make gpu-check`): where an NVIDIA GPU is usable, a real
`bentoml serve` with GANFORGE_DEVICE=cuda (the CUDA provider or nothing), the fp16 variants
(GANFORGE_PRECISION=fp16) and batching on (auto: 16 rows on CUDA), then /upscale and /translate
images/s at 1 and 16 clients, written as JSON to bench/results/gpu-check-<time>.json. Elsewhere it says
there is no GPU and exits 0.

    python -m bench.gpu_check [--models models] [--seconds 20]
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples"
WORKLOADS = [("upscale", "srresnet-x4", "wood-128.png", {}), ("translate", "colorize", "flower-gray-256.png", {})]


def _rate(base: str, endpoint: str, model: str, image: bytes, fields: dict, clients: int, seconds: float) -> dict:
    """Requests answered 200 per second with `clients` concurrent clients for `seconds`."""
    import httpx

    deadline = time.perf_counter() + seconds

    def client_loop() -> tuple[int, int]:
        ok = bad = 0
        with httpx.Client(base_url=base, timeout=120) as c:
            while time.perf_counter() < deadline:
                r = c.post(f"/{endpoint}", files={"image": ("in.png", image)}, data={"model": model, **fields})
                ok, bad = (ok + 1, bad) if r.status_code == 200 else (ok, bad + 1)
        return ok, bad

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda _: client_loop(), range(clients)))
    elapsed = time.perf_counter() - start
    ok = sum(r[0] for r in results)
    return {"clients": clients, "images_per_s": round(ok / elapsed, 2), "ok": ok,
            "errors": sum(r[1] for r in results)}


def _check(base: str, seconds: float) -> dict:
    import httpx

    models = {m["name"]: m for m in httpx.get(f"{base}/models", timeout=30).json()["models"]}
    result: dict = {"models": {n: {k: m.get(k) for k in ("status", "provider", "backend", "device", "precision",
                                                          "precision_reason", "batching")}
                               for n, m in models.items()}}
    result["cuda_used"] = all(m.get("provider") == "CUDAExecutionProvider" for m in models.values()
                              if m.get("status") == "ready")
    result["workloads"] = []
    for endpoint, model, sample, fields in WORKLOADS:
        if model not in models:
            continue
        image = (SAMPLES / sample).read_bytes()
        rows = [_rate(base, endpoint, model, image, fields, n, seconds) for n in (1, 16)]
        result["workloads"].append({"endpoint": endpoint, "model": model, "input": sample, "rates": rows})
    return result


def main(argv: list[str] | None = None) -> int:
    from core.runtime import nvidia_gpu

    p = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=Path, default=REPO / "models")
    p.add_argument("--seconds", type=float, default=20.0, help="load per workload and client count (20)")
    args = p.parse_args(argv)
    usable, why = nvidia_gpu()
    if not usable:
        print(f"gpu-check: no GPU here ({why}); nothing to check")
        return 0
    from testkit.launcher import running_server

    env = {"GANFORGE_DEVICE": "cuda", "GANFORGE_PRECISION": "fp16", "GANFORGE_THREADS": "16"}
    with tempfile.TemporaryDirectory() as tmp, running_server(args.models, Path(tmp), **env) as (base, log):
        result = {"gpu": why, "env": env, **_check(base, args.seconds)}
        result["log_tail"] = log.read_text()[-2000:]
    out = REPO / "bench" / "results" / f"gpu-check-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    json.dump(result, buf, indent=2)
    out.write_text(buf.getvalue() + "\n")
    print(buf.getvalue())
    print(f"gpu-check: wrote {out.relative_to(REPO)}; CUDA provider used by every model: {result['cuda_used']}")
    return 0 if result["cuda_used"] and all(r["errors"] == 0 for w in result["workloads"] for r in w["rates"]) else 1


if __name__ == "__main__":
    sys.exit(main())
