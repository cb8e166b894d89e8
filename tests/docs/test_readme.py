"""The README's API examples, run as printed against `bentoml serve` on the shipped models/.

Every `curl` line of the README's "The API" block and its Python client example
are executed (only the host:port is swapped for the test server's), from a
folder that holds `samples/` like the repository root does. Each output file must
be an image of the size the README says, made by a model (not the input echoed).
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service_fixtures import running_server

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
MODELS = REPO / "models"

pytestmark = pytest.mark.slow


def _api_section() -> str:
    text = README.read_text()
    start = text.index("## The API")
    return text[start:text.index("\n## ", start + 1)]


def curl_commands() -> list[str]:
    """The curl commands of the first bash block of "The API", continuation lines joined."""
    block = re.search(r"```bash\n(.*?)```", _api_section(), re.S).group(1)
    joined = re.sub(r"\\\n\s*", "", block)
    return [re.sub(r"\s+#.*$", "", line).strip() for line in joined.splitlines() if line.startswith("curl")]


def python_example() -> str:
    return re.search(r"```python\n(.*?)```", _api_section(), re.S).group(1)


def shipped() -> list[str]:
    # dot folders (.NAME.prev rollback copies, staging) are never served
    return sorted(p.name for p in MODELS.iterdir()
                  if not p.name.startswith(".") and (p / "card.json").is_file()) if MODELS.is_dir() else []


@pytest.fixture(scope="module")
def readme_server(tmp_path_factory):
    if not shipped():
        pytest.fail("models/ ships no model: the README examples cannot work (python -m training export ...)")
    tmp = tmp_path_factory.mktemp("readme")
    with running_server(MODELS, tmp, GANFORGE_DEVICE="cpu") as (base, _log):
        yield base


@pytest.fixture()
def workdir(tmp_path) -> Path:
    shutil.copytree(REPO / "samples", tmp_path / "samples")
    return tmp_path


def _run(cmd: str, cwd: Path, base: str) -> None:
    cmd = cmd.replace("localhost:3000", base.removeprefix("http://"))
    done = subprocess.run(["bash", "-c", f"set -o pipefail; {cmd}"], cwd=cwd, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"


def test_readme_names_only_shipped_models() -> None:
    names = set(shipped())
    used = set(re.findall(r'"model": "([^"]+)"|model=([\w.-]+)', _api_section()))
    used = {a or b for a, b in used}
    assert used and used <= names, f"the README uses models that are not shipped: {sorted(used - names)}"


def test_readme_curl_examples_work_as_printed(readme_server, workdir) -> None:
    commands = curl_commands()
    assert len(commands) >= 6, commands
    outputs = {}
    for cmd in commands:
        _run(cmd, workdir, readme_server)
        m = re.search(r"-o (\S+)", cmd)
        if m:
            outputs[m.group(1)] = cmd
    assert {"sneakers.png", "walk.png", "boot.png", "flower-colour.jpg", "raindrops-512.png",
            "wood-256.png"} <= set(outputs), sorted(outputs)
    sizes = {}
    for name in outputs:
        with Image.open(workdir / name) as im:  # the body is an image, not a JSON error
            im.load()
            sizes[name] = im.size
    assert sizes["raindrops-512.png"] == (512, 512)
    assert sizes["wood-256.png"] == (256, 256)
    assert sizes["boot.png"] == (28, 28)
    with Image.open(REPO / "samples" / "flower-gray-256.png") as gray:
        assert sizes["flower-colour.jpg"] == gray.size
        colour = np.asarray(Image.open(workdir / "flower-colour.jpg").convert("RGB"), np.float64)
        # colorize made colour: the channels differ (a grey image would have r == g == b)
        assert np.abs(colour[..., 0] - colour[..., 2]).mean() > 2.0
    sneaker = np.asarray(Image.open(REPO / "samples" / "sneaker-28.png").convert("L"), np.float64)
    boot = np.asarray(Image.open(workdir / "boot.png").convert("L"), np.float64)
    assert np.abs(boot - sneaker).mean() > 5.0  # translated, not echoed
    w, h = sizes["sneakers.png"]
    assert w == h and w >= 4 * 28  # a 4x4 grid of 16 samples
    models = json.loads(subprocess.run(["curl", "-s", f"{readme_server}/models"], capture_output=True,
                                       text=True, timeout=60).stdout)
    assert {m["name"] for m in models["models"]} == set(shipped())
    assert all(m["status"] == "ready" for m in models["models"])


def test_readme_python_client_example(readme_server, workdir) -> None:
    code = python_example().replace("http://localhost:3000", readme_server)
    done = subprocess.run([sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    with Image.open(workdir / "raindrops-512.png") as im:
        assert im.size == (512, 512)


def _jobs_section() -> str:
    text = README.read_text()
    start = text.index("### Jobs")
    return text[start:text.index("\n### ", start + 1)]


def test_readme_jobs_examples(readme_server, workdir) -> None:
    """The Jobs section's curl block (submit, poll, events, result, cancel, list) and its httpx loop."""
    section = _jobs_section()
    script = re.search(r"```bash\n(.*?)```", section, re.S).group(1).replace("localhost:3000", readme_server)
    done = subprocess.run(["bash", "-c", "set -euo pipefail\n" + script], cwd=workdir, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    job = json.loads((workdir / "job.json").read_text())
    assert job["status"] == "queued" and job["endpoint"] == "upscale"
    assert "event: succeeded" in done.stdout and '"status":"canceled"' not in done.stdout
    with Image.open(workdir / "raindrops-512.png") as im:
        assert im.size == (512, 512)
    (workdir / "raindrops-512.png").unlink()
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1).replace("http://localhost:3000", readme_server)
    done = subprocess.run([sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    with Image.open(workdir / "raindrops-512.png") as im:
        assert im.size == (512, 512)
