"""deploy/kubernetes.yaml parses and fits the image and the service it deploys (no cluster needed)."""

from __future__ import annotations

import importlib.util
import json
import logging
import sys

import pytest
import yaml

from service.config import Settings, SettingsError
from service.logs import JsonFormatter
from service_fixtures import REPO, service_client, write_fixture_models

MANIFEST = REPO / "deploy" / "kubernetes.yaml"
IMAGE_PORT = 3000   # what BentoML's image serves on (EXPOSE 3000)
IMAGE_UID = 1034    # BentoML's image user `bentoml`


def _docs() -> dict[str, dict]:
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    kinds = [d["kind"] for d in docs]
    assert sorted(kinds) == ["Deployment", "Service"], kinds
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


def test_image_is_what_make_container_gpu_builds():
    spec = importlib.util.spec_from_file_location("deploy_container", REPO / "deploy" / "container.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert _container()["image"].split(":")[0] == module.IMAGE_NAMES["gpu"]


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
    config_doc = (REPO / "service" / "config.py").read_text()
    assert all(name.startswith("GANFORGE_") and f"| {name} " in config_doc for name in names), names
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
