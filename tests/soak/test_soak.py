"""`python -m soak` end to end, shortened: a real server, every phase, a JSON result whose checks pass."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from service_fixtures import REPO

pytestmark = pytest.mark.slow


def test_soak_runner_short(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "soak", "--fixtures", "--clients", "8", "--duration", "8",
                           "--kill-duration", "10", "--burst", "80", "--max-concurrency", "8", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=400, env={**os.environ})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (path,) = out.glob("soak-*.json")
    result = json.loads(path.read_text())
    assert result["checks"] and all(result["checks"].values()), result["checks"]
    load = result["load"]
    assert load["requests"] > 20 and load["statuses"] == {"200": load["requests"]} and load["p99_ms"] > 0
    assert load["rss_timeline"] and load["rss_second_half_growth"] <= load["rss_flat"]
    assert result["reload_under_load"]["versions_served_after"] == [result["reload_under_load"]["new_version"]]
    kill = result["worker_kill"]
    assert kill["killed_pid"] not in kill["workers_after"] and len(kill["workers_after"]) == 2
    assert result["overload"]["statuses"].get("429", 0) > 0 and result["overload"]["server_errors_5xx"] == 0
    assert result["startup_fault"]["status"] == "unavailable"


def test_rss_halves_tells_warm_up_from_a_leak():
    """Growth that stops early (arenas, caches) passes; growth that goes on in the second half is a leak."""
    from soak.run import rss_halves

    ts = [float(t) for t in range(0, 121, 2)]
    warm = [(t, 1000 + 200 * min(t, 30) / 30) for t in ts]  # +20%, all in the first quarter
    leak = [(t, 1000 + 1.0 * t) for t in ts]  # 1 MiB/s for ever
    assert rss_halves(warm, 0, 120)["rss_second_half_growth"] == 0
    grown = rss_halves(leak, 0, 120)
    assert 0.03 < grown["rss_second_half_growth"] < 0.06 and grown["rss_mid_mb"] == 1060
    short = rss_halves([(0.0, 500.0), (7.2, 505.0)], 0, 8)  # fewer samples than windows: the nearest ones
    assert short["rss_mid_mb"] in (500.0, 505.0) and short["rss_last_mb"] == 505.0
