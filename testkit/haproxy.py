"""A real load balancer in front of replicas for the tests: Debian's `haproxy`, round robin, health
checks on /readyz, and the retries a rolling restart needs (a replica that stopped listening, or closed
a connection without an answer, is retried on the other; requests carry an Idempotency-Key, so a
retried job submission never makes a second job).

    with load_balancer(tmp, [port_a, port_b]) as base:    # http://127.0.0.1:<port>
        ...
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from pathlib import Path

from .launcher import free_port, stop_process_group

CONFIG = """\
global
    maxconn 512
defaults
    mode http
    timeout connect 2s
    timeout client 120s
    timeout server 120s
    timeout http-request 30s
    option http-buffer-request
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response response-timeout 502 503 504
frontend ganforge
    bind 127.0.0.1:{port}
    default_backend replicas
backend replicas
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 300ms fall 1 rise 1
{servers}
"""


def missing() -> str | None:
    if shutil.which("haproxy") is None:
        return "haproxy is not installed (make test installs Debian's haproxy as root; apt-get install haproxy)"
    return None


@contextlib.contextmanager
def load_balancer(tmp: Path, ports: list[int | str]):
    """haproxy on a free loopback port in front of `ports` (a port on 127.0.0.1, or "host:port"); yields
    its base URL once it answers."""
    import httpx

    port = free_port()
    servers = "\n".join(f"    server r{i} {p if isinstance(p, str) else f'127.0.0.1:{p}'} check"
                         for i, p in enumerate(ports))
    config = tmp / "haproxy.cfg"
    config.write_text(CONFIG.format(port=port, servers=servers))
    subprocess.run(["haproxy", "-c", "-q", "-f", str(config)], check=True, capture_output=True, timeout=30)
    with open(tmp / "haproxy.log", "wb") as log:
        proc = subprocess.Popen(["haproxy", "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"haproxy did not answer:\n{(tmp / 'haproxy.log').read_text()[-2000:]}")
            time.sleep(0.1)  # polling interval
        yield base
    finally:
        stop_process_group(proc)
