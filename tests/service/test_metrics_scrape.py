"""A real scrape: Debian's `prometheus` scrapes a real `bentoml serve` (two workers) with the shipped
deploy/prometheus/prometheus.yml (its target pointed at the server, a 1 s interval) and alert rules; after
known requests, Prometheus's HTTP API must show exactly those counts per model and outcome, stage times
that add up to the request times, the rules loaded and evaluating, and every dashboard and autoscaler
query answering. Skipped, saying why, where prometheus is not installed (`make prometheus` installs it)."""

from __future__ import annotations

import collections
import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from metrics_workload import BROKEN, dumps, models_with_a_broken_one, send_known_requests
from service_fixtures import REPO, free_port, running_server, stop_process_group

pytestmark = pytest.mark.slow

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
DEPLOY = REPO / "deploy"
WAIT_S = 60


def _config(tmp: Path, target: str) -> Path:
    """deploy/prometheus/prometheus.yml, scraping `target` every second, rules by absolute path."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(DEPLOY / "prometheus" / name) for name in config["rule_files"]]
    (job,) = config["scrape_configs"]
    (static,) = job["static_configs"]
    static["targets"] = [target]
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def scraped(tmp_path_factory):
    """(ganforge base URL, Prometheus base URL)."""
    if PROMETHEUS is None or PROMTOOL is None:
        pytest.skip("prometheus/promtool are not installed (make prometheus: apt-get install prometheus, as root)")
    tmp = tmp_path_factory.mktemp("scrape")
    models = models_with_a_broken_one(tmp / "models")
    with running_server(models, tmp, GANFORGE_WORKERS="2", GANFORGE_DEVICE="cpu") as (base, _):
        port = free_port()
        log = open(tmp / "prometheus.log", "wb")
        proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={_config(tmp, base.removeprefix('http://'))}",
             f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        prom = f"http://127.0.0.1:{port}"
        try:
            _until(lambda: httpx.get(f"{prom}/-/ready", timeout=2).status_code == 200, "prometheus ready",
                   tmp / "prometheus.log")
            _until(lambda: _query(prom, 'up{job="ganforge"}') == {(): 1.0}, "the server scraped",
                   tmp / "prometheus.log")
            yield base, prom
        finally:
            stop_process_group(proc)
            log.close()


def _until(check, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log else ""
            raise AssertionError(f"{what}: not within {WAIT_S} s\n{tail}")
        time.sleep(0.25)  # polling interval, not an assertion


def _query(prom: str, query: str, by: tuple[str, ...] = ()) -> dict[tuple, float]:
    """An instant query -> {(values of `by` labels): value}."""
    r = httpx.get(f"{prom}/api/v1/query", params={"query": query}, timeout=10)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", (query, body)
    return {tuple(s["metric"].get(k, "") for k in by): float(s["value"][1]) for s in body["data"]["result"]}


def test_promtool_loads_the_rules():
    if PROMTOOL is None:
        pytest.skip("promtool is not installed (make prometheus)")
    proc = subprocess.run([PROMTOOL, "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "SUCCESS" in proc.stdout, proc.stdout + proc.stderr


def test_prometheus_sees_exactly_the_requests_sent(scraped):
    base, prom = scraped
    with httpx.Client(base_url=base, timeout=120, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        tally = send_known_requests(client)
        models = {m["name"]: m for m in client.get("/models").json()["models"]}
    expected = float(sum(tally.values()))
    with_model = float(sum(n for k, n in tally.items() if k[0] != "-"))  # all of these reached their handler
    _until(lambda: _query(prom, "sum(ganforge_requests_total)") == {(): expected}
           and _query(prom, 'sum(ganforge_stage_duration_seconds_count{stage="respond", model!="-"})')
           == {(): with_model}, "the requests scraped")
    seen = _query(prom, "sum by (model, endpoint, outcome, status) (ganforge_requests_total)",
                  ("model", "endpoint", "outcome", "status"))
    got = collections.Counter({k: int(v) for k, v in seen.items() if v})
    assert got == tally, dumps(got)
    print("per model and outcome:", dumps(got))

    requests = _query(prom, 'sum by (model) (ganforge_request_duration_seconds_sum{model!="-"})', ("model",))
    counts = _query(prom, 'sum by (model) (ganforge_request_duration_seconds_count{model!="-"})', ("model",))
    stages = _query(prom, 'sum by (model) (ganforge_stage_duration_seconds_sum{model!="-"})', ("model",))
    queued = _query(prom, 'sum by (model) (ganforge_stage_duration_seconds_count{stage="queue"})', ("model",))
    for (model,), seconds in requests.items():
        assert 0.98 * seconds <= stages[(model,)] <= 1.0001 * seconds, (model, stages[(model,)], seconds)
        assert queued[(model,)] == counts[(model,)] == sum(n for k, n in tally.items() if k[0] == model)
    shares = _query(prom, 'sum by (stage) (ganforge_stage_duration_seconds_sum) / ignoring(stage) group_left '
                          'sum(ganforge_stage_duration_seconds_sum)', ("stage",))
    assert sum(shares.values()) == pytest.approx(1.0) and shares[("compute",)] > 0
    print("share of time by stage:", json.dumps({k[0]: round(v, 3) for k, v in shares.items()}))

    served = _query(prom, "ganforge_model_info == 1", ("model", "device", "gpu", "version"))
    assert {(m, models[m]["device"], "required", models[m]["version"]) for m in models if m != BROKEN} == set(served)
    assert _query(prom, 'ganforge_model_unavailable == 1', ("model",)) == {(BROKEN,): 1.0}


def _rules(prom: str) -> dict[str, dict]:
    groups = httpx.get(f"{prom}/api/v1/rules", timeout=10).json()["data"]["groups"]
    return {r["name"]: r for g in groups for r in g["rules"]}


def test_the_alert_rules_load_and_evaluate(scraped):
    _, prom = scraped
    shipped = {r["alert"] for g in yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
               for r in g["rules"]}
    _until(lambda: all(r["health"] == "ok" for r in _rules(prom).values()), "every rule evaluated")
    assert set(_rules(prom)) == shipped
    # this server runs every model on the CPU, and its scrape says gpu="required": the fallback alert is on its
    # way (pending for its `for: 1m`), and so is the broken model's
    _until(lambda: {a["labels"]["model"] for a in _rules(prom)["GanforgeModelOnCpuFallback"]["alerts"]}
           == {"edges2color", "fashion-dcgan", "shoe2boot", "srresnet-x4"}, "the CPU-fallback alert")
    assert {a["labels"]["model"] for a in _rules(prom)["GanforgeModelUnavailable"]["alerts"]} == {BROKEN}
    assert not _rules(prom)["GanforgeTargetDown"]["alerts"]


def test_every_dashboard_and_autoscaler_query_answers(scraped):
    base, prom = scraped
    with httpx.Client(base_url=base, timeout=120) as client:
        send_known_requests(client)
    time.sleep(2.5)  # two scrapes after the requests, so rates have two points
    dashboard = json.loads((DEPLOY / "grafana" / "ganforge-dashboard.json").read_text())
    scaled = yaml.safe_load((DEPLOY / "autoscaling.yaml").read_text())
    queries = {p["title"] + f" [{t['refId']}]": t["expr"] for p in dashboard["panels"] for t in p["targets"]}
    keda = scaled["spec"]["triggers"][0]["metadata"]["query"].replace(', namespace="default"', "")
    queries["autoscaling"] = keda
    empty = []
    for title, expr in queries.items():
        result = _query(prom, expr.replace("$model", ".+").replace("$__rate_interval", "1m"))
        if not result:
            empty.append(title)
    # panels of what this run does not have (batching is off: rows/run is 1, but it answers) may be empty
    assert not [t for t in empty if not t.startswith(("Model loads", "Models unavailable"))], empty
    assert _query(prom, keda) == {(): 0.0}  # nothing in flight now, per the autoscaler's own query
