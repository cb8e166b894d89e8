"""What this CPU is and can do, read once from /proc/cpuinfo: the one parser of the project.

The service (backend and precision choice, /models), the offline model operations (the bf16 and int8
cards' machine entries) and bench (the machine block of every result) all ask here.
"""

from __future__ import annotations

import functools
import os
import platform
import re
import time
from pathlib import Path
from typing import Iterable

CPUINFO = Path("/proc/cpuinfo")
# the CPU flags that mean native bf16 arithmetic (OpenVINO's bf16 kernels use AMX, else AVX512-BF16)
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
# the flags /models, the startup log, bench and the bf16 card entry report
REPORTED_FLAGS = ("amx_bf16", "amx_int8", "amx_tile", "avx512_bf16", "avx512_vnni", "avx512f", "avx_vnni", "avx2")


@functools.lru_cache(maxsize=1)
def cpuinfo_text() -> str:
    """/proc/cpuinfo as text ("" where it cannot be read)."""
    try:
        return CPUINFO.read_text()
    except OSError:
        return ""


def _field(name: str) -> str | None:
    """The first `name : value` line's value."""
    found = re.search(rf"^{re.escape(name)}\s*:\s*(.*)$", cpuinfo_text(), re.M)
    return found.group(1).strip() if found else None


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo cannot be read)."""
    return frozenset((_field("flags") or "").split())


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    return _field("model name") or platform.processor() or platform.machine()


def reported_flags(flags: Iterable[str] | None = None) -> list[str]:
    """The REPORTED_FLAGS this CPU has (or `flags` has), in REPORTED_FLAGS' order."""
    have = cpu_flags() if flags is None else set(flags)
    return [f for f in REPORTED_FLAGS if f in have]


def physical_core_ids() -> int | None:
    """Distinct (physical id, core id) pairs of /proc/cpuinfo; None where it does not list them."""
    pairs = {(m.group(1), m.group(2)) for m in re.finditer(r"physical id\s*:\s*(\d+).*?core id\s*:\s*(\d+)",
                                                           cpuinfo_text(), re.S)}
    return len(pairs) or None


def logical_cores() -> int:
    return os.cpu_count() or 1


PROC_STAT = Path("/proc/stat")


def busy_seconds() -> float | None:
    """CPU seconds this machine has spent busy since boot, all cores (user, nice, system, irq, softirq, steal:
    a hypervisor's neighbours count too); None where /proc/stat cannot be read."""
    try:
        fields = PROC_STAT.read_text().split("\n", 1)[0].split()
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    except (OSError, ValueError, IndexError):
        return None
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class OthersCpu:
    """How much of the machine other processes used between its start and `share()`: (busy CPU seconds of
    the whole machine - this process's own) / (wall seconds x cores). What a timing taken meanwhile is worth:
    0 on a quiet machine, 0.5 when another process held one of two cores all along."""

    def __init__(self, clock=None) -> None:
        self._clock = clock or time.monotonic
        self._start = (self._clock(), busy_seconds(), self._own())

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system

    def share(self) -> float | None:
        """None where /proc/stat cannot be read."""
        wall0, busy0, own0 = self._start
        busy1 = busy_seconds()
        wall = self._clock() - wall0
        if busy0 is None or busy1 is None or wall <= 0:
            return None
        others = (busy1 - busy0) - (self._own() - own0)
        return min(max(others / (wall * logical_cores()), 0.0), 1.0)
