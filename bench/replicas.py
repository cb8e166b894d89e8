"""Jobs per second through a load balancer to 1 replica, then 2 (issue 25), all real: a throwaway
PostgreSQL cluster (GANFORGE_JOBS_DB), `bentoml serve` replicas on one GANFORGE_JOBS_DIR, haproxy in front.

    python -m bench.replicas [--jobs 40] [--side 256] [--workers 1]

Each round: a fresh database, the replicas started, then `--jobs` upscale jobs (the fixture srresnet-x4,
`--side` px squares, 64 px tiles) submitted at once through the balancer; jobs/s = jobs / (first
submission -> last job finished). On a machine with fewer free cores than replicas x workers the second
replica only adds contention: the figure says how the work is shared, not a scaling law.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

from testkit import haproxy, postgres
from testkit.fixtures import write_fixture_models
from testkit.replicas import Replica


def png(side: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def fresh_database(url: str) -> str:
    import psycopg

    name = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return url.rsplit("/", 1)[0] + "/" + name


def one_round(url: str, tmp: Path, models: Path, replicas: int, args) -> float:
    """Jobs per second through `replicas` replicas."""
    import httpx

    env = {"GANFORGE_JOBS_DB": fresh_database(url), "GANFORGE_JOBS_DIR": str(tmp / f"jobs-{replicas}"),
           "GANFORGE_WORKERS": str(args.workers), "GANFORGE_DEVICE": "cpu", "GANFORGE_JOBS_MAX_QUEUED": "10000"}
    started = [Replica(f"r{replicas}-{k}", tmp, models, env) for k in range(replicas)]
    threads = [threading.Thread(target=r.start) for r in started]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        with haproxy.load_balancer(tmp / f"lb-{replicas}", [r.port for r in started]) as base, \
                httpx.Client(base_url=base, timeout=120) as http:
            images = [png(args.side, k) for k in range(args.jobs)]
            began = time.monotonic()
            ids = [http.post("/upscale", headers={"Prefer": "respond-async"}, files={"image": ("a.png", data)},
                             data={"model": "srresnet-x4"}).json()["id"] for data in images]
            for job_id in ids:
                while http.get(f"/jobs/{job_id}", headers={"Prefer": "wait=30"}).json()["status"] != "succeeded":
                    pass
            return args.jobs / (time.monotonic() - began)
    finally:
        for replica in started:
            with contextlib.suppress(Exception):
                replica.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.replicas", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--workers", type=int, default=1, help="GANFORGE_WORKERS of each replica")
    args = parser.parse_args()
    for reason in (postgres.missing(), haproxy.missing()):
        if reason:
            raise SystemExit(reason)
    with tempfile.TemporaryDirectory(prefix="bench-replicas-") as folder, postgres.throwaway_postgres() as url:
        tmp = Path(folder)
        models = tmp / "models"
        write_fixture_models(models)
        for replicas in (1, 2):
            (tmp / f"lb-{replicas}").mkdir()
            rate = one_round(url, tmp, models, replicas, args)
            print(f"{replicas} replica(s): {rate:.2f} jobs/s ({args.jobs} upscale jobs of {args.side} px)", flush=True)


if __name__ == "__main__":
    main()
