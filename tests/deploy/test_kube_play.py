"""deploy/kubernetes.yaml played for real with `podman kube play` on the image `make container` builds
(`make container-test`; GANFORGE_CONTAINER_TEST=1): the container seeds the shared volume with the
image's models, the pod starts on a throwaway PostgreSQL job store (testkit/postgres.py), its probes
answer, and the README's curl lines (the API and the jobs blocks) answer through it.

podman plays the Deployment's 2 replicas as 2 pods on its kube network, sharing the volume and the
database; haproxy (testkit/haproxy.py) stands in for the Service in front of the two pod addresses.
What the test changes in the manifest, and why: the image (the one just built), the CPU instead of a
GPU, GANFORGE_JOBS_DB as a value (podman has no Kubernetes secrets; the database listens on the kube
network's gateway, trusting only that subnet), no token, no declared port (podman would publish it on the host,
where two pods collide; the probes name it by number), unique names. Skipped, saying why, where podman,
PostgreSQL or haproxy is not there.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import uuid

import httpx
import pytest
import yaml

from service_fixtures import REPO
from testkit import haproxy, postgres

pytestmark = pytest.mark.slow

if os.environ.get("GANFORGE_CONTAINER_TEST") != "1":
    pytest.skip("builds and runs the service image (minutes): `make container-test` runs it",
                allow_module_level=True)

PORT = 3000  # the image's port, on each pod's own address
READY_TIMEOUT_S = 180


def run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


KUBE_NETWORK = "podman-default-kube-network"  # where podman kube play puts pods (made on first use)


def bridge() -> tuple[str, str]:
    """(subnet, gateway) of the network podman kube play uses: the pods reach the host at the gateway."""
    if run(["podman", "network", "exists", KUBE_NETWORK]).returncode != 0:
        run(["podman", "network", "create", KUBE_NETWORK])
    out = run(["podman", "network", "inspect", KUBE_NETWORK, "--format",
               "{{range .Subnets}}{{.Subnet}} {{.Gateway}}{{end}}"]).stdout.split()
    return out[0], out[1]


def pod_addresses(name: str, replicas: int) -> list[str]:
    found = []
    for k in range(replicas):
        infra = run(["podman", "pod", "inspect", f"{name}-pod-{k}", "--format", "{{.InfraContainerID}}"]).stdout.strip()
        found.append(run(["podman", "inspect", infra, "--format",
                          "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"]).stdout.strip())
    return found


def manifest_for_podman(image: str, db_url: str, suffix: str) -> tuple[list[dict], str, str]:
    """(the documents to play, the pod's name, the volume's name): see the module docstring."""
    docs = [d for d in yaml.safe_load_all((REPO / "deploy" / "kubernetes.yaml").read_text()) if d]
    claim = next(d for d in docs if d["kind"] == "PersistentVolumeClaim")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    claim["metadata"]["name"] = volume = f"ganforge-shared-{suffix}"
    deployment["metadata"]["name"] = name = f"ganforge-{suffix}"
    pod = deployment["spec"]["template"]["spec"]
    pod["volumes"][0]["persistentVolumeClaim"]["claimName"] = volume
    (main,) = pod["containers"]
    main["image"] = image
    main.pop("ports")  # podman publishes a declared port on the host (3000 for both pods); the pods' own
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):  # addresses serve it, probes by number
        main[probe]["httpGet"]["port"] = PORT
    main["resources"]["limits"].pop("nvidia.com/gpu")
    main["resources"]["requests"] = {"cpu": "1", "memory": "1Gi"}
    env = [e for e in main["env"] if e["name"] not in ("GANFORGE_AUTH_TOKEN", "GANFORGE_JOBS_DB")]
    main["env"] = [{**e, "value": "cpu"} if e["name"] == "GANFORGE_DEVICE" else e for e in env]
    main["env"].append({"name": "GANFORGE_JOBS_DB", "value": db_url})
    return [claim, deployment], name, volume


def readme_commands(heading: str) -> list[str]:
    """The curl commands of the first bash block after `heading` in README.md, continuation lines joined."""
    text = (REPO / "README.md").read_text()
    block = text[text.index(heading):]
    block = block[block.index("```bash\n") + 8:]
    block = block[:block.index("```")].replace("\\\n", " ")
    return [line.split("   #")[0].strip() for line in block.splitlines() if line.strip() and not line.startswith("#")]


def shell(command: str, base: str, cwd) -> subprocess.CompletedProcess:
    local = command.replace("localhost:3000", base.removeprefix("http://"))
    return subprocess.run(["bash", "-o", "pipefail", "-ec", local], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def played(engine, image, tmp_path_factory):
    """The manifest played, both pods ready, haproxy in front; yields (pod name, pod addresses, balancer URL,
    database URL)."""
    if engine != "podman":
        pytest.skip(f"podman kube play plays the manifest; the engine here is {engine}")
    for reason in (postgres.missing(), haproxy.missing()):
        if reason:
            pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("kube")
    suffix = uuid.uuid4().hex[:6]
    subnet, gateway = bridge()
    with postgres.throwaway_postgres(trust_cidr=subnet) as db_url:
        pod_url = db_url.replace("@127.0.0.1:", f"@{gateway}:")
        docs, name, volume = manifest_for_podman(image, pod_url, suffix)
        replicas = docs[1]["spec"]["replicas"]
        path = tmp / "kube.yaml"
        path.write_text(yaml.safe_dump_all(docs))
        try:
            played = run(["podman", "kube", "play", str(path)], timeout=600)
            assert played.returncode == 0, played.stdout + played.stderr
            addresses = [f"{ip}:{PORT}" for ip in pod_addresses(name, replicas)]
            for address in addresses:
                wait_ready(name, f"http://{address}")
            with haproxy.load_balancer(tmp, addresses) as base:
                yield name, addresses, base, db_url
        finally:
            for k in range(replicas):
                (tmp / f"pod-{k}.log").write_text(run(["podman", "pod", "logs", f"{name}-pod-{k}"]).stdout)
            run(["podman", "kube", "down", str(path)], timeout=300)
            run(["podman", "volume", "rm", "-f", volume])


def wait_ready(name: str, base: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            logs = run(["podman", "pod", "logs", f"{name}-pod-0"]).stdout[-4000:]
            raise AssertionError(f"{base} never got ready:\n{logs}")
        time.sleep(1)  # polling interval


def test_both_pods_start_and_their_probes_answer(played):
    name, addresses, _, _ = played
    deployment = yaml.safe_load_all((REPO / "deploy" / "kubernetes.yaml").read_text())
    (container,) = next(d for d in deployment if d and d["kind"] == "Deployment")["spec"]["template"]["spec"][
        "containers"]
    assert len(addresses) >= 2
    for k, address in enumerate(addresses):
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            answer = httpx.get(f"http://{address}{container[probe]['httpGet']['path']}", timeout=10)
            assert answer.status_code == 200, (address, probe)
        status = run(["podman", "pod", "inspect", f"{name}-pod-{k}", "--format", "{{.State}}"])
        assert status.stdout.strip() == "Running", (status.stdout, status.stderr)
        described = httpx.get(f"http://{address}/models", timeout=30).json()
        served = {m["name"] for m in described["models"]}
        assert served and all(not m.startswith(".seed-") for m in served), served  # seeded onto the volume
        jobs = described["jobs"]
        assert jobs["store"] == "postgresql" and jobs["dir"] == "/shared/jobs", jobs


def test_readme_curl_lines_answer_through_the_pods(played, tmp_path):
    _, addresses, base, db_url = played
    (tmp_path / "samples").symlink_to(REPO / "samples")
    for command in readme_commands("## The API"):
        done = shell(command.replace("curl -s ", "curl -sf "), base, tmp_path)
        assert done.returncode == 0, (command, done.stdout[-500:], done.stderr[-500:])
    jobs = readme_commands("### Jobs: work that outlasts a request")
    script = "\n".join(c if "/cancel" in c else c.replace("curl -s", "curl -sf", 1) for c in jobs)
    done = shell(script, base, tmp_path)
    assert done.returncode == 0, (done.stdout[-1000:], done.stderr[-1000:])
    assert (tmp_path / "raindrops-512.png").stat().st_size > 0
    job_id = re.search(r'"id":\s*"([^"]+)"', (tmp_path / "job.json").read_text()).group(1)
    import psycopg

    with psycopg.connect(db_url) as conn:  # the job lives in the shared store
        events = [r[0] for r in conn.execute("SELECT event FROM events WHERE job_id = %s ORDER BY seq",
                                             (job_id,)).fetchall()]
    assert events[0] == "queued" and events[-1] == "succeeded", events
