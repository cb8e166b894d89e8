"""`python -m soak`: bounded load and fault runs against a real `bentoml serve` on 127.0.0.1.

    python -m soak                          # the models in $GANFORGE_MODELS_DIR (default models/)
    python -m soak --fixtures               # the tiny fixture models of the tests (needs onnx)
    python -m soak --clients 16 --duration 60 --out soak/results

Every fault is injected into a *copy* of the models folder in a temporary
directory; the folder itself is only read. Phases, each bounded in time:

1. startup fault: one model's ONNX file corrupted before a server starts:
   it must start, list that model `unavailable` with the reason in /models,
   and serve the others;
2. load: CLIENTS concurrent clients for DURATION seconds on every ready model
   and endpoint with the images in samples/; RSS of the server's process tree
   after warm-up, every second, and at the end: its second half must be flat
   (warm-up grows early, a leak goes on); a quarter in, one model is re-published
   (atomic folder swap, as `training export` does) and reloaded
   (POST /admin/reload + GANFORGE_RELOAD_POLL_S in every worker);
3. worker kill: one of the two workers gets SIGKILL under load; the requests
   that failed are counted, and the time until everything answers 200 again;
4. overload: a burst of BURST simultaneous requests beyond the in-flight
   limit must get 429 (JSON, fast), never 5xx, and the service answers 200
   once the burst is gone.

The result is one JSON file in --out and a summary on stdout; the exit code
is 1 when a check failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from service.config import settings

from .run import SoakConfig, run_soak


def main(argv: list[str] | None = None) -> int:
    repo = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(prog="python -m soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=None,
                        help="models folder (default: $GANFORGE_MODELS_DIR, else models/)")
    parser.add_argument("--fixtures", action="store_true", help="serve the tests' tiny fixture models instead")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of the load phase")
    parser.add_argument("--kill-duration", type=float, default=30.0, help="seconds of the worker-kill phase")
    parser.add_argument("--burst", type=int, default=200, help="simultaneous requests of the overload phase")
    parser.add_argument("--max-concurrency", type=int, default=24, help="GANFORGE_MAX_CONCURRENCY of the server")
    parser.add_argument("--rss-flat", type=float, default=0.03,
                        help="allowed RSS growth over the load phase's second half (median of its last 10%% "
                             "against the median around its middle)")
    parser.add_argument("--out", type=Path, default=repo / "soak" / "results")
    args = parser.parse_args(argv)
    models = args.models or settings().models_dir  # GANFORGE_MODELS_DIR as the service reads it
    cfg = SoakConfig(models=models.resolve(), fixtures=args.fixtures, clients=args.clients, duration_s=args.duration,
                     kill_duration_s=args.kill_duration, burst=args.burst, max_concurrency=args.max_concurrency,
                     rss_flat=args.rss_flat, samples=repo / "samples", repo=repo)
    result = run_soak(cfg)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"soak-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))
    print(f"written {path}")
    failed = [c for c, ok in result["checks"].items() if not ok]
    if failed:
        print("FAILED checks: " + ", ".join(failed), file=sys.stderr)
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
