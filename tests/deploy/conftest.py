"""The service image, built once for every test that runs it (test_container.py, test_kube_play.py):
what `make container` builds, on models/ (the fixture models when it has none), under a throwaway name,
removed at the end. Those tests run only with GANFORGE_CONTAINER_TEST=1 (`make container-test`)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from service_fixtures import REPO, write_fixture_models


def load_container_module():
    spec = importlib.util.spec_from_file_location("ganforge_deploy_container", REPO / "deploy" / "container.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def served_models(tmp: Path) -> Path:
    """A copy of models/' model folders (exports may land while the test runs), else the fixture models."""
    published = sorted(card.parent for card in (REPO / "models").glob("[!.]*/card.json"))
    for folder in published:
        shutil.copytree(folder, tmp / "models" / folder.name)
    if not published:
        write_fixture_models(tmp / "models")
    return tmp / "models"


def ca_bundle() -> list[str]:
    """GANFORGE_CA_BUNDLE (a TLS-intercepting proxy's CA file) goes to the build as --ca-bundle."""
    bundle = os.environ.get("GANFORGE_CA_BUNDLE")
    return ["--ca-bundle", bundle] if bundle else []


def run(cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def engine() -> str:
    container = load_container_module()
    try:
        return container.preflight(os.environ.get("GANFORGE_CONTAINER_ENGINE") or None, None)
    except container.ContainerError as exc:
        pytest.skip(f"containers cannot run here: {exc}")


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> Path:
    return served_models(tmp_path_factory.mktemp("container-models"))


@pytest.fixture(scope="session")
def image(engine, models, tmp_path_factory):
    """What `make container` runs, on `models`, under a throwaway name; removed afterwards.
    GANFORGE_TEST_IMAGE names one already built instead (kept)."""
    if os.environ.get("GANFORGE_TEST_IMAGE"):
        yield os.environ["GANFORGE_TEST_IMAGE"]
        return
    name = f"localhost/ganforge-test-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "BENTOML_HOME": str(tmp_path_factory.mktemp("bentoml-home")), "BENTOML_DO_NOT_TRACK": "True"}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, str(REPO / "deploy" / "container.py"), "build", "--models", str(models),
                           "--image", name, "--engine", engine, *ca_bundle()],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    try:
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"\nimage {report['image']}: {report['size_mb']} MB, built in {time.monotonic() - started:.0f} s")
        yield report["image"]
    finally:
        # generous: on a loaded machine removing a 0.5 GB image took minutes
        listed = run([engine, "images", "--format", "{{.Repository}}:{{.Tag}}"], timeout=600).stdout.split()
        for tag in [t for t in listed if t.startswith(f"{name}:")]:
            run([engine, "rmi", "-f", tag], timeout=600)
