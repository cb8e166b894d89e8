"""deploy/ parses and fits the image and the service it deploys (no cluster needed): kubernetes.yaml, and the
monitoring beside it: the Prometheus scrape configs and alert rules (promtool, where installed), the Grafana
dashboard and the KEDA autoscaler, whose every query names series the service really exposes."""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import shutil
import subprocess
import sys
import tomllib

import pytest
import yaml

from service.config import VARIABLES, Settings, SettingsError
from service.logs import JsonFormatter
from service_fixtures import REPO, service_client, write_fixture_models

MANIFEST = REPO / "deploy" / "kubernetes.yaml"
IMAGE_PORT = 3000   # what BentoML's image serves on (EXPOSE 3000)
IMAGE_UID = 1034    # BentoML's image user `bentoml`


def _docs() -> dict[str, dict]:
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    kinds = [d["kind"] for d in docs]
    assert sorted(kinds) == ["Deployment", "PersistentVolumeClaim", "Service"], kinds
    return {d["kind"]: d for d in docs}


def _container() -> dict:
    (container,) = _docs()["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


def _port_number(container: dict, ref) -> int:
    ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
    return ports[ref] if isinstance(ref, str) else ref


def test_deployment_shape():
    deployment = _docs()["Deployment"]
    spec = deployment["spec"]
    assert spec["replicas"] >= 2
    pod = spec["template"]
    assert spec["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    container = _container()
    assert [_port_number(container, p["name"]) for p in container["ports"]] == [IMAGE_PORT]
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert int(resources["limits"]["nvidia.com/gpu"]) >= 1
    security = pod["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == IMAGE_UID
    assert pod["spec"]["terminationGracePeriodSeconds"] >= 10


def _container_module():
    spec = importlib.util.spec_from_file_location("deploy_container", REPO / "deploy" / "container.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_image_is_what_make_container_gpu_builds():
    module = _container_module()
    assert _container()["image"].split(":")[0] == module.IMAGE_NAMES["gpu"]


def test_image_requirements_are_pyprojects_pins():
    """pyproject.toml is the only place the serving versions are written: each bentofile names its generated
    requirements file, which must equal what pyproject.toml gives now (python deploy/container.py requirements)."""
    module = _container_module()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    onnxruntime = next(d for d in pyproject if d.startswith("onnxruntime-gpu=="))
    for variant, bentofile in module.BENTOFILES.items():
        python = yaml.safe_load((REPO / bentofile).read_text())["python"]
        assert python == {"requirements_txt": module.REQUIREMENTS[variant], "lock_packages": False}, bentofile
        committed = (REPO / module.REQUIREMENTS[variant]).read_text()
        assert committed == module.requirements_text(variant), \
            f"{module.REQUIREMENTS[variant]} is stale: run python deploy/container.py requirements"
        pins = [line for line in committed.splitlines() if line and not line.startswith("#")]
        assert [p for p in pins if not p.startswith("onnxruntime")] == [d for d in pyproject if d != onnxruntime]
        assert module.ONNXRUNTIME_BUILDS[variant] + onnxruntime.removeprefix("onnxruntime-gpu") in pins
        assert not any("torch" in p for p in pins)
    assert module.write_requirements(check=True) == 0


def test_image_requirements_follow_a_changed_pin(tmp_path):
    module = _container_module()
    pyproject = tmp_path / "pyproject.toml"
    text = (REPO / "pyproject.toml").read_text()
    bumped = re.sub(r'"(onnxruntime-gpu|bentoml)==[^"]+"', r'"\1==9.9.9"', text)
    pyproject.write_text(bumped)
    assert "onnxruntime-gpu[cuda,cudnn]==9.9.9" in module.requirements_text("gpu", pyproject).splitlines()
    cpu = module.requirements_text("cpu", pyproject)
    assert {"onnxruntime==9.9.9", "bentoml==9.9.9"} <= set(cpu.splitlines())
    assert cpu != (REPO / module.REQUIREMENTS["cpu"]).read_text()
    pyproject.write_text(text.replace('"onnxruntime-gpu==', '"onnxruntime-other=='))
    with pytest.raises(module.ContainerError, match="onnxruntime-gpu"):
        module.requirements_text("cpu", pyproject)


def test_staged_build_context_installs_pyprojects_pins(tmp_path):
    """`make container` builds from a staged context: its requirements are derived from pyproject.toml there."""
    module = _container_module()
    (tmp_path / "models").mkdir()
    bentofile = module.stage_context(tmp_path / "ctx", "gpu", tmp_path / "models", base=None)
    python = yaml.safe_load(bentofile.read_text())["python"]
    assert (bentofile.parent / python["requirements_txt"]).read_text() == module.requirements_text("gpu")


def test_replicas_share_the_job_store_and_one_volume():
    """>= 2 replicas on PostgreSQL (a secret's URL) and one ReadWriteMany volume for models and jobs,
    which the container seeds from the image's models before it runs the image's entrypoint
    (deploy/postgres.yaml: the database)."""
    docs = _docs()
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    assert docs["Deployment"]["spec"]["replicas"] >= 2
    claim = docs["PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    (volume,) = pod["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    env = {e["name"]: e for e in _container()["env"]}
    assert "secretKeyRef" in env["GANFORGE_JOBS_DB"]["valueFrom"]  # the URL holds a password
    mount = {m["name"]: m["mountPath"] for m in _container()["volumeMounts"]}[volume["name"]]
    for name in ("GANFORGE_MODELS_DIR", "GANFORGE_JOBS_DIR"):
        assert env[name]["value"].startswith(mount + "/"), (name, env[name])
    script = _container()["command"][-1]
    assert "/home/bentoml/bento/src/models" in script
    assert script.rstrip().endswith("exec /home/bentoml/bento/env/docker/entrypoint.sh")  # then the image's own
    assert pod["securityContext"]["fsGroup"] == IMAGE_UID
    postgres = [d for d in yaml.safe_load_all((REPO / "deploy" / "postgres.yaml").read_text()) if d]
    assert sorted(d["kind"] for d in postgres) == ["Service", "StatefulSet"]


def test_service_routes_to_the_container_port():
    docs = _docs()
    service = docs["Service"]
    pod_labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    for port in service["spec"]["ports"]:
        assert _port_number(_container(), port["targetPort"]) == IMAGE_PORT


def test_environment_is_settings_the_service_reads():
    env = _container()["env"]
    names = [e["name"] for e in env]
    declared = {v.name for v in VARIABLES}  # the one declaration (service/config.py) the docs are generated from
    assert all(name.startswith("GANFORGE_") and name in declared for name in names), names
    literal = {e["name"]: e["value"] for e in env if "value" in e}
    Settings.from_env(literal)  # raises SettingsError on a value the service refuses
    token = next(e for e in env if e["name"] == "GANFORGE_AUTH_TOKEN")
    assert "secretKeyRef" in token["valueFrom"]  # a token never sits in the manifest


@pytest.mark.parametrize("probe", ["startupProbe", "readinessProbe", "livenessProbe"])
def test_probes_answer_without_the_token(probe, tmp_path):
    """Each probe's path answers 200 from the service even with a token set, on the container's port."""
    container = _container()
    get = container[probe]["httpGet"]
    assert _port_number(container, get["port"]) == IMAGE_PORT
    write_fixture_models(tmp_path / "models")
    with service_client(tmp_path / "models", GANFORGE_AUTH_TOKEN="secret") as client:
        assert client.get("/models").status_code == 401
        assert client.get(get["path"]).status_code == 200
    assert {"livenessProbe": "/livez", "readinessProbe": "/readyz"}.get(probe, get["path"]) == get["path"]


def test_json_log_lines():
    """GANFORGE_LOG_FORMAT=json (the image's default): BentoML's records, trace fields included, as JSON."""
    assert Settings.from_env({"GANFORGE_LOG_FORMAT": "JSON"}).log_format == "json"
    assert Settings.from_env({}).log_format == "text"
    with pytest.raises(SettingsError, match="GANFORGE_LOG_FORMAT"):
        Settings.from_env({"GANFORGE_LOG_FORMAT": "xml"})
    record = logging.LogRecord("bentoml.access", logging.INFO, __file__, 1, "GET %s", ("/models",), None)
    record.component = "[entry_service:ganforge:1]"
    record.trace_msg = " (trace=abc123,span=def456,sampled=0,service.name=ganforge)"
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "GET /models" and entry["level"] == "INFO" and entry["logger"] == "bentoml.access"
    assert (entry["component"], entry["trace_id"], entry["span_id"], entry["service"]) == \
        ("entry_service:ganforge:1", "abc123", "def456", "ganforge")
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()
    line = JsonFormatter().format(record)
    assert "\n" not in line and "ValueError: boom" in json.loads(line)["exc_info"]


# ------------------------------------------------------------------ monitoring: scrape, alerts, dashboard, scaling

PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
DASHBOARD = REPO / "deploy" / "grafana" / "ganforge-dashboard.json"
AUTOSCALING = REPO / "deploy" / "autoscaling.yaml"
PROMTOOL = shutil.which("promtool")
NEEDS_PROMTOOL = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (make prometheus, as root)")
# labels a series gets from the scrape (Prometheus, deploy/prometheus/*.yml), beside the service's own
SCRAPE_LABELS = {"job", "instance", "namespace", "pod", "gpu"}
SELECTOR = re.compile(r"\b(ganforge_[a-z_]+)\s*(\{[^}]*\})?")


def exposed_metrics() -> dict[str, set[str]]:
    """Every series name service/telemetry.py exposes -> its label names (+ `le` for buckets)."""
    from service import telemetry

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    names: dict[str, set[str]] = {}
    for metric in vars(telemetry.metrics()).values():
        kind = getattr(metric, "_type", None)
        if kind not in suffixes:
            continue
        for suffix in suffixes[kind]:
            names[metric._name + suffix] = set(metric._labelnames) | ({"le"} if suffix == "_bucket" else set())
    return names


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
            for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p["targets"]]


def scaled_object() -> dict:
    (doc,) = [d for d in yaml.safe_load_all(AUTOSCALING.read_text()) if d]
    return doc


def all_queries() -> dict[str, str]:
    """Every PromQL expression deploy/ ships: alerts, dashboard panels, the autoscaler's trigger."""
    queries = {f"alert {r['alert']}": r["expr"] for r in alert_rules()}
    queries.update((f"dashboard {i}", e) for i, e in enumerate(dashboard_exprs()))
    queries["autoscaling"] = scaled_object()["spec"]["triggers"][0]["metadata"]["query"]
    return queries


def test_every_query_names_series_and_labels_the_service_exposes():
    exposed = exposed_metrics()
    assert {"ganforge_requests_total", "ganforge_request_duration_seconds_bucket",
            "ganforge_stage_duration_seconds_sum", "ganforge_requests_in_flight", "ganforge_model_info",
            "ganforge_model_unavailable", "ganforge_graph_run_rows_count"} <= set(exposed)
    used = set()
    for where, query in all_queries().items():
        found = SELECTOR.findall(query)
        assert found or query.startswith("up{"), where  # `up`: Prometheus's own, per scrape target
        for name, selector in found:
            assert name in exposed, (where, name)
            labels = set(re.findall(r"(\w+)\s*(?:=~|!=|!~|=)", selector))
            assert labels <= exposed[name] | SCRAPE_LABELS, (where, name, labels - exposed[name])
            used.add(name)
    # what an operator needs to see is on the dashboard or in an alert
    assert {"ganforge_requests_total", "ganforge_request_duration_seconds_bucket",
            "ganforge_stage_duration_seconds_sum", "ganforge_requests_in_flight", "ganforge_tiles_per_request_sum",
            "ganforge_graph_run_rows_count", "ganforge_output_megapixels_sum", "ganforge_model_info",
            "ganforge_model_unavailable", "ganforge_model_loads_total", "ganforge_reloads_total"} <= used


def test_alerts_cover_what_an_operator_is_paged_for():
    rules = {r["alert"]: r for r in alert_rules()}
    assert {"GanforgeHighErrorRate", "GanforgeHighLatencyP99", "GanforgeModelUnavailable",
            "GanforgeModelOnCpuFallback"} <= set(rules)
    assert 'outcome=~"server_error|timeout"' in rules["GanforgeHighErrorRate"]["expr"]
    assert "histogram_quantile(0.99" in rules["GanforgeHighLatencyP99"]["expr"]
    limit = Settings().timeout_s  # the p99 threshold is half the per-request limit
    assert re.search(rf"\)\s*>\s*{limit / 2:g}\s*$", rules["GanforgeHighLatencyP99"]["expr"].strip())
    assert 'gpu="required"' in rules["GanforgeModelOnCpuFallback"]["expr"]
    for rule in rules.values():
        assert rule["labels"]["severity"] in ("page", "warn") and rule["annotations"]["summary"]


@NEEDS_PROMTOOL
def test_promtool_checks_and_unit_tests_the_rules():
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"],
                 ["check", "config", "prometheus.yml"]):
        proc = subprocess.run([PROMTOOL, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    tested = set(re.findall(r"alertname: (\w+)", (PROMETHEUS_DIR / "alerts_test.yml").read_text()))
    assert tested == {r["alert"] for r in alert_rules()}  # every alert has its firing case


@NEEDS_PROMTOOL
def test_promtool_checks_the_kubernetes_config_where_it_can(tmp_path):
    """Debian's prometheus is built without Kubernetes discovery: there promtool cannot read this file,
    and the relabelling test below is what checks it."""
    probe = tmp_path / "k8s.yml"
    probe.write_text("scrape_configs:\n  - job_name: x\n    kubernetes_sd_configs: [{role: pod}]\n")
    if subprocess.run([PROMTOOL, "check", "config", str(probe)], capture_output=True).returncode != 0:
        pytest.skip("this promtool has no Kubernetes service discovery (Debian's build)")
    proc = subprocess.run([PROMTOOL, "check", "config", "kubernetes.yml"], cwd=PROMETHEUS_DIR,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def relabel(rules: list[dict], labels: dict[str, str]) -> dict[str, str] | None:
    """Prometheus's relabelling (keep, replace) on one target's labels; None when it is dropped."""
    labels = dict(labels)
    for rule in rules:
        value = rule.get("separator", ";").join(labels.get(s, "") for s in rule.get("source_labels", []))
        match = re.fullmatch(rule.get("regex", "(.*)"), value)
        action = rule.get("action", "replace")
        if action == "keep":
            if not match:
                return None
        elif action == "replace":
            if match:
                labels[rule["target_label"]] = match.expand(
                    re.sub(r"\$(\d+)", r"\\\1", rule.get("replacement", "$1")))
        else:
            raise AssertionError(f"relabel action {action} is not simulated here")
    return labels


def test_kubernetes_scrape_finds_the_manifests_pods():
    config = yaml.safe_load((PROMETHEUS_DIR / "kubernetes.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = config["scrape_configs"]
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
    pod = _docs()["Deployment"]["spec"]["template"]["metadata"]
    meta = {"__address__": "10.1.2.3", "__metrics_path__": job["metrics_path"],
            "__meta_kubernetes_namespace": "default", "__meta_kubernetes_pod_name": "ganforge-abc"}
    slug = lambda key: re.sub(r"[^a-zA-Z0-9_]", "_", key)  # noqa: E731 - how Kubernetes discovery names them
    meta.update((f"__meta_kubernetes_pod_label_{slug(k)}", str(v)) for k, v in pod["labels"].items())
    meta.update((f"__meta_kubernetes_pod_annotation_{slug(k)}", str(v)) for k, v in pod["annotations"].items())
    target = relabel(job["relabel_configs"], meta)
    assert target is not None
    assert target["__address__"] == f"10.1.2.3:{IMAGE_PORT}"
    assert target["__metrics_path__"] == "/metrics"
    assert (target["namespace"], target["pod"], target["gpu"]) == ("default", "ganforge-abc", "required")
    other = {k: v for k, v in meta.items() if k != "__meta_kubernetes_pod_label_app"}
    assert relabel(job["relabel_configs"], other) is None  # another app's pods are not scraped


def test_pods_are_annotated_for_scraping_an_open_path():
    from service.middleware import OPEN_PATHS

    annotations = _docs()["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == IMAGE_PORT
    assert annotations["prometheus.io/path"] in OPEN_PATHS  # no token needed, as a scraper has none
    assert int(_container()["resources"]["limits"]["nvidia.com/gpu"]) >= 1  # so the gpu label is true


def test_autoscaling_scales_the_deployment_on_requests_in_flight():
    scaled, deployment = scaled_object(), _docs()["Deployment"]
    assert scaled["kind"] == "ScaledObject" and scaled["apiVersion"].startswith("keda.sh/")
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert spec["minReplicaCount"] == deployment["spec"]["replicas"] <= spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metadata"]["query"].startswith("sum(ganforge_requests_in_flight")
    env = {e["name"]: e["value"] for e in _container()["env"] if "value" in e}
    per_pod = Settings.from_env(env)
    assert 0 < float(trigger["metadata"]["threshold"]) < per_pod.max_concurrency * per_pod.workers  # before 429


def test_dashboard_loads():
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels) >= 10
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "model"}
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
