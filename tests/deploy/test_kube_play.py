"""deploy/kubernetes.yaml played for real with `podman kube play` on the image `make container` builds
(`make container-test`; GANFORGE_CONTAINER_TEST=1): the init container seeds the shared volume with the
image's models, the pod starts on a throwaway PostgreSQL job store (testkit/postgres.py), its probes
answer, and the README's curl lines (the API and the jobs blocks) answer through it.

What the test changes in the manifest, and why: the image (the one just built, for the init container
too), the CPU instead of a GPU, GANFORGE_JOBS_DB as a value (podman has no Kubernetes secrets), no token,
`hostNetwork` (the pod reaches the host's loopback PostgreSQL; the test reaches port 3000), and unique
names. podman plays a Deployment as one pod whatever `replicas` says; two replicas sharing the store are
tests/service/test_replicas.py. The Service is left out (podman has none). Skipped, saying why, where
podman, PostgreSQL or port 3000 is not there.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
import uuid

import httpx
import pytest
import yaml

from service_fixtures import REPO
from testkit import postgres

pytestmark = pytest.mark.slow

if os.environ.get("GANFORGE_CONTAINER_TEST") != "1":
    pytest.skip("builds and runs the service image (minutes): `make container-test` runs it",
                allow_module_level=True)

PORT = 3000  # the image's port; hostNetwork puts it on the host
READY_TIMEOUT_S = 240
BASE = f"http://127.0.0.1:{PORT}"


def run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def port_busy(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def manifest_for_podman(image: str, db_url: str, suffix: str) -> tuple[list[dict], str, str]:
    """(the documents to play, the pod's name, the volume's name): see the module docstring."""
    docs = [d for d in yaml.safe_load_all((REPO / "deploy" / "kubernetes.yaml").read_text()) if d]
    claim = next(d for d in docs if d["kind"] == "PersistentVolumeClaim")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    claim["metadata"]["name"] = volume = f"ganforge-shared-{suffix}"
    deployment["metadata"]["name"] = name = f"ganforge-{suffix}"
    pod = deployment["spec"]["template"]["spec"]
    pod["hostNetwork"] = True
    pod["volumes"][0]["persistentVolumeClaim"]["claimName"] = volume
    for container in pod["initContainers"] + pod["containers"]:
        container["image"] = image
    (main,) = pod["containers"]
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


def shell(command: str, cwd) -> subprocess.CompletedProcess:
    local = command.replace("localhost:3000", f"127.0.0.1:{PORT}")
    return subprocess.run(["bash", "-o", "pipefail", "-ec", local], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def played(engine, image, tmp_path_factory):
    """The manifest played and ready; yields (pod name, database URL)."""
    if engine != "podman":
        pytest.skip(f"podman kube play plays the manifest; the engine here is {engine}")
    reason = postgres.missing()
    if reason:
        pytest.skip(reason)
    if port_busy(PORT):
        pytest.skip(f"port {PORT} is taken on this host (the pod runs on the host network)")
    tmp = tmp_path_factory.mktemp("kube")
    suffix = uuid.uuid4().hex[:6]
    with postgres.throwaway_postgres() as db_url:
        docs, name, volume = manifest_for_podman(image, db_url, suffix)
        path = tmp / "kube.yaml"
        path.write_text(yaml.safe_dump_all(docs))
        # what fsGroup does on a cluster: the volume is writable by the image's user (podman ignores fsGroup)
        assert run(["podman", "volume", "create", volume]).returncode == 0
        mountpoint = run(["podman", "volume", "inspect", "--format", "{{.Mountpoint}}", volume]).stdout.strip()
        os.chown(mountpoint, 1034, 1034)
        try:
            played = run(["podman", "kube", "play", str(path)], timeout=600)
            assert played.returncode == 0, played.stdout + played.stderr
            wait_ready(name)
            yield name, db_url
        finally:
            logs = run(["podman", "pod", "logs", f"{name}-pod"]).stdout
            (tmp / "pod.log").write_text(logs)
            run(["podman", "kube", "down", str(path)], timeout=300)
            run(["podman", "volume", "rm", "-f", volume])


def wait_ready(name: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            if httpx.get(f"{BASE}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        states = run(["podman", "pod", "ps", "--filter", f"name={name}", "--format", "{{.Status}}"]).stdout
        if time.monotonic() > deadline or "Exited" in states or "Error" in states:
            logs = run(["podman", "pod", "logs", f"{name}-pod"]).stdout[-4000:]
            raise AssertionError(f"the pod never got ready ({states.strip()}):\n{logs}")
        time.sleep(1)  # polling interval


def test_pod_starts_and_its_probes_answer(played):
    name, _ = played
    deployment = yaml.safe_load_all((REPO / "deploy" / "kubernetes.yaml").read_text())
    (container,) = next(d for d in deployment if d and d["kind"] == "Deployment")["spec"]["template"]["spec"][
        "containers"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert httpx.get(f"{BASE}{container[probe]['httpGet']['path']}", timeout=10).status_code == 200, probe
    status = run(["podman", "pod", "inspect", f"{name}-pod", "--format", "{{.State}}"]).stdout.strip()
    assert status == "Running", status
    jobs = httpx.get(f"{BASE}/models", timeout=30).json()["jobs"]
    assert jobs["store"] == "postgresql" and jobs["dir"] == "/shared/jobs", jobs


def test_readme_curl_lines_answer_through_the_pod(played, tmp_path):
    _, db_url = played
    (tmp_path / "samples").symlink_to(REPO / "samples")
    for command in readme_commands("## The API"):
        done = shell(command.replace("curl -s ", "curl -sf "), tmp_path)
        assert done.returncode == 0, (command, done.stdout[-500:], done.stderr[-500:])
    jobs = readme_commands("### Jobs: work that outlasts a request")
    script = "\n".join(c if "/cancel" in c else c.replace("curl -s", "curl -sf", 1) for c in jobs)
    done = shell(script, tmp_path)
    assert done.returncode == 0, (done.stdout[-1000:], done.stderr[-1000:])
    assert (tmp_path / "raindrops-512.png").stat().st_size > 0
    job_id = re.search(r'"id":\s*"([^"]+)"', (tmp_path / "job.json").read_text()).group(1)
    import psycopg

    with psycopg.connect(db_url) as conn:  # the job lives in the shared store
        events = [r[0] for r in conn.execute("SELECT event FROM events WHERE job_id = %s ORDER BY seq",
                                             (job_id,)).fetchall()]
    assert events[0] == "queued" and events[-1] == "succeeded", events
