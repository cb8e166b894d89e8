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
    assert result["reload_under_load"]["versions_served_after"] == [result["reload_under_load"]["new_version"]]
    kill = result["worker_kill"]
    assert kill["killed_pid"] not in kill["workers_after"] and len(kill["workers_after"]) == 2
    assert result["overload"]["statuses"].get("429", 0) > 0 and result["overload"]["server_errors_5xx"] == 0
    assert result["startup_fault"]["status"] == "unavailable"
