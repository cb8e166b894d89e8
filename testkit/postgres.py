"""A throwaway PostgreSQL cluster for the tests: Debian's `postgresql` binaries, a new cluster in a
temporary folder (initdb; as the `postgres` user when run as root, which PostgreSQL requires), on a free
loopback port; removed, folder and all, when the block ends.

    with throwaway_postgres() as url:      # postgresql://postgres@127.0.0.1:<port>/postgres
        ...

`missing()` says why there is none (the tests skip with that reason; `make test` installs it).
fsync is off: the cluster lives for one test, and what it tests is that the *service* loses nothing
when a replica is killed, not PostgreSQL's durability.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .launcher import free_port

BIN_GLOB = "/usr/lib/postgresql/*/bin"


def bin_dir() -> Path | None:
    found = sorted(glob.glob(BIN_GLOB), key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0)
    for folder in reversed(found):
        if os.access(Path(folder) / "initdb", os.X_OK) and os.access(Path(folder) / "pg_ctl", os.X_OK):
            return Path(folder)
    return None


def missing() -> str | None:
    """Why no throwaway cluster can be made here, or None."""
    if bin_dir() is None:
        return ("PostgreSQL is not installed (make test installs Debian's postgresql as root: "
                "apt-get install postgresql)")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: initdb cannot run as the postgres user"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres user to run initdb as"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e .: pyproject's dependencies)"
    return None


def as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextlib.contextmanager
def throwaway_postgres(max_connections: int = 200, trust_cidr: str | None = None):
    """A running cluster; yields its URL (trust auth on loopback only). `trust_cidr` (e.g. a container
    network's subnet): it also listens on every interface and trusts that subnet (pg_hba refuses the rest)."""
    reason = missing()
    if reason is not None:
        raise RuntimeError(reason)
    binaries = bin_dir()
    root = Path(tempfile.mkdtemp(prefix="ganforge-pg-"))
    data, port = root / "data", free_port()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    log = root / "postgres.log"
    try:
        subprocess.run(as_postgres([str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                                    "--no-sync", "-E", "UTF8"]), check=True, capture_output=True, timeout=120)
        listen = "127.0.0.1"
        if trust_cidr:
            listen = "*"
            with open(data / "pg_hba.conf", "a") as hba:
                hba.write(f"host all all {trust_cidr} trust\n")
        options = (f"-p {port} -k {root} -c listen_addresses='{listen}' -c fsync=off -c full_page_writes=off "
                   f"-c max_connections={max_connections}")
        subprocess.run(as_postgres([str(binaries / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options,
                                    "-w", "-t", "60", "start"]), check=True, capture_output=True, timeout=90)
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(as_postgres([str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w",
                                        "stop"]), capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)
