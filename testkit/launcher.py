"""Start a real `bentoml serve service.service:Ganforge` on a loopback port and wait for /readyz.

Shared by the tests, bench/ and soak/. No torch and no bentoml import here:
the server runs as a subprocess (the `bentoml` next to sys.executable, cwd =
the repository root); httpx is imported inside `running_server`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent  # the repository root (service/..)
BENTOML = Path(sys.executable).parent / "bentoml"
STARTUP_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process_group(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def process_parents() -> dict[int, int]:
    """pid -> parent pid of every process (Linux /proc)."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                found[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return found


def kill_server_tree(worker_pid: int, sig: int = signal.SIGKILL) -> int:
    """Send `sig` to a server this process started, all of it at once: from one of its workers up to
    the `bentoml serve` child of this process, then every descendant of that (the workers run in
    sessions of their own, so a process-group kill misses them). Returns how many were signalled."""
    parents = process_parents()
    root = worker_pid
    while parents.get(root) not in (os.getpid(), None, 0, 1):
        root = parents[root]
    if parents.get(root) != os.getpid():
        raise RuntimeError(f"process {worker_pid} is not under a server this process started")
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    for pid in tree:
        with contextlib.suppress(OSError):
            os.kill(pid, sig)
    return len(tree)


def live_metrics_dirs(bentoml_home: Path) -> list[Path]:
    """The Prometheus multiprocess folders of the instances running on `bentoml_home` (one per
    `bentoml serve`, named <host>-<pid>-<start>: service/instance.py), oldest pid first."""
    from service.instance import metrics_root, process_start

    found = []
    for folder in metrics_root(bentoml_home).glob("*-*-*"):
        _, pid, started = folder.name.rsplit("-", 2)
        if pid.isdigit() and process_start(int(pid)) == started:
            found.append(folder)
    return sorted(found, key=lambda f: int(f.name.rsplit("-", 2)[1]))


@contextlib.contextmanager
def running_server(models: Path, tmp: Path, *, port: int | None = None, prefix: tuple[str, ...] = (),
                   **env_overrides: str):
    """`bentoml serve service.service:Ganforge` on `port` (default: a free loopback port), ready; yields
    (base_url, log_path). `prefix`: a command the server runs under (e.g. `unshare --uts ...`), which
    must exec it (the pid stays the server's)."""
    import httpx

    port = port or free_port()
    log_path = tmp / f"server-{port}.log"
    env = {
        **os.environ,
        "GANFORGE_MODELS_DIR": str(models),
        "GANFORGE_DEVICE": "auto",
        "BENTOML_HOME": str(tmp / "bentoml_home"),
        "BENTOML_DO_NOT_TRACK": "True",
        "GANFORGE_JOBS_DIR": str(tmp / "jobs"),  # never the repository's jobs/ folder
        **env_overrides,
    }
    if "GANFORGE_AUTH_TOKEN" not in env_overrides:
        env.pop("GANFORGE_AUTH_TOKEN", None)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*prefix, str(BENTOML), "serve", "service.service:Ganforge", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"bentoml serve exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready after {STARTUP_TIMEOUT_S}s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.25)  # polling interval, not an assertion
        yield base, log_path
    finally:
        stop_process_group(proc)
