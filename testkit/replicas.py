"""Replicas of ganforge for the tests and benchmarks: one `bentoml serve` per replica on a fixed port
(testkit/launcher.py), started, stopped (SIGTERM) and killed (SIGKILL) when the caller says, and which
jobs each one ran (its log). `other_host_prefix()` runs one as if on another machine: a UTS namespace of
its own with another host name (root), so pid-based takeover (same host only) does not apply to it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from pathlib import Path

from .launcher import free_port, kill_server_tree, running_server

OTHER_HOST = "ganforge-replica-b"
RUNNING_LINE = re.compile(r"job (\S+) \(\S+ \S+\) running, attempt \d+")


def other_host_prefix() -> tuple[str, ...]:
    """Run a replica as if on another machine: a UTS namespace with its own host name (root, where the
    kernel lets it make one), else none (both replicas on this host: a dead one's pid shows at once)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return ()
    prefix = ("unshare", "--uts", "sh", "-c", f'hostname {OTHER_HOST} && exec "$@"', "sh")
    try:
        works = subprocess.run([*prefix, "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        works = False
    return prefix if works else ()


class Replica:
    """One `bentoml serve` on a fixed port, started and stopped as the test says."""

    def __init__(self, name: str, tmp: Path, models: Path, env: dict[str, str], prefix: tuple[str, ...] = ()):
        self.name, self.tmp, self.models, self.env, self.prefix = name, tmp, models, env, prefix
        self.port, self.starts, self.stack = free_port(), 0, None
        self.logs: list[Path] = []

    def start(self) -> None:
        self.starts += 1
        folder = self.tmp / f"{self.name}-{self.starts}"
        folder.mkdir()
        self.stack = contextlib.ExitStack()
        _, log = self.stack.enter_context(running_server(self.models, folder, port=self.port, prefix=self.prefix,
                                                         **self.env))
        self.logs.append(log)

    def stop(self) -> None:
        """SIGTERM, as Kubernetes stops a pod: a running job goes back to the queue."""
        self.stack.close()
        self.stack = None

    def worker_pid(self) -> int:
        import httpx

        return httpx.get(f"http://127.0.0.1:{self.port}/models", timeout=10).json()["admission"]["worker_pid"]

    def owns(self, owner: str) -> bool:
        """Whether a job store's `owner` (host:pid:start, service/jobs/runner.py) is this replica's worker."""
        return owner.split(":")[1:2] == [str(self.worker_pid())]

    def kill(self) -> None:
        kill_server_tree(self.worker_pid())
        self.stack.close()
        self.stack = None

    def ran(self) -> list[str]:
        """Ids of the jobs this replica started (its logs)."""
        return [m.group(1) for log in self.logs for m in RUNNING_LINE.finditer(log.read_text(errors="replace"))]
