"""One Prometheus multiprocess folder per `bentoml serve` instance (issue 25).

BentoML 1.4 keeps the workers' prometheus_client files in `$BENTOML_HOME/prometheus_multiproc_dir` and
empties that folder every time a server starts (bentoml/serving.py `ensure_prometheus_dir`, called by
`_bentoml_impl/server/serving.py` before it spawns the workers with PROMETHEUS_MULTIPROC_DIR set to it).
Two instances on one host share BENTOML_HOME (~/bentoml by default): the second start wiped the first
one's series, and from then on each `/metrics` summed the other's files too.

`bentoml serve` imports this service (`load`) before it calls `ensure_prometheus_dir`, so at import the
serving process points BentoML's `prometheus_multiproc_dir` at a folder of its own:

    $BENTOML_HOME/prometheus_multiproc/<host>-<pid>-<process start ticks>

BentoML still creates and empties it (only ever this instance's own). Folders of this host's instances
that no longer run (pid gone, or reused by another process) are removed then; another host's (a shared
home) are left alone. A worker (BentoML gave it PROMETHEUS_MULTIPROC_DIR) or a process whose operator
set PROMETHEUS_MULTIPROC_DIR keeps that folder: it is used as it is. In a container or a Kubernetes pod
there is one instance per BENTOML_HOME, and nothing changes but the folder's name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
from pathlib import Path

logger = logging.getLogger("bentoml.ganforge")

FOLDER = "prometheus_multiproc"  # next to BentoML's own prometheus_multiproc_dir, which it wipes


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc), or None when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def instance_name(pid: int | None = None) -> str:
    """`<host>-<pid>-<start ticks>`: unique on this host even when a pid is reused."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}-{pid}-{process_start(pid) or 0}"


def metrics_root(bentoml_home: Path) -> Path:
    return bentoml_home / FOLDER


def instance_metrics_dir(bentoml_home: Path, pid: int) -> Path:
    """The multiprocess folder of the instance whose `bentoml serve` process is `pid` (while it runs)."""
    return metrics_root(bentoml_home) / instance_name(pid)


def remove_stale(root: Path) -> list[str]:
    """Remove the folders of this host's instances that no longer run; their names."""
    host = socket.gethostname()
    removed = []
    if not root.is_dir():
        return removed
    for folder in root.iterdir():
        parts = folder.name.rsplit("-", 2)
        if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
            continue
        _, pid_text, started = parts
        if process_start(int(pid_text)) != started:
            with contextlib.suppress(OSError):
                shutil.rmtree(folder)
                removed.append(folder.name)
    return removed


def use_own_metrics_dir() -> str:
    """Point BentoML's prometheus_multiproc_dir at this instance's folder (see the module docstring);
    the folder it will use."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:  # a worker (BentoML set it) or the operator's explicit choice
        BentoMLContainer.prometheus_multiproc_dir.set(given)
        return given
    root = metrics_root(Path(BentoMLContainer.bentoml_home.get()))
    removed = remove_stale(root)
    if removed:
        logger.info("metrics: removed the multiprocess folders of stopped instances: %s", ", ".join(removed))
    folder = str(root / instance_name())
    BentoMLContainer.prometheus_multiproc_dir.set(folder)
    return folder
