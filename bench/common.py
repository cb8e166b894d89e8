"""What every bench section shares: interleaved timing, summaries, the machine, memory readings.

Machines are noisy, so no figure is one contender timed on its own: the
contenders of a comparison run in alternating rounds (A B, B A, A B, ...)
inside one process and one run, and a figure is the ratio of their medians.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CPU_FLAGS = ("fma", "avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")


@dataclass(frozen=True)
class Profile:
    """How long each section measures. `quick`: small inputs (sizes are in the sections)."""

    name: str
    quick: bool
    peak_n: int  # compute: the n x n x n sgemm for the fp32 peak
    peak_rounds: int
    case_budget_s: float  # compute: seconds per (model, size), both contenders together
    case_rounds: tuple[int, int]  # compute: min, max rounds
    latency_budget_s: float  # serving: seconds per workload, three contenders together
    latency_rounds: tuple[int, int]
    window_s: float  # serving: one closed-loop throughput window
    warm_s: float  # serving: warm-up window per server and workload
    throughput_rounds: int
    cold_rounds: int  # coldstart: starts per arm


PROFILES = {
    # make bench: bounded to ~15-20 min on a quiet 2-core machine
    "full": Profile("full", False, 4096, 5, 15.0, (3, 15), 15.0, (20, 300), 2.0, 0.5, 3, 3),
    # make bench-quick: small inputs, few rounds: checks the whole path in ~1-2 min
    "quick": Profile("quick", True, 2048, 3, 1.0, (3, 5), 1.5, (5, 30), 0.75, 0.3, 1, 1),
    # the smoke test (with --tiny models): the shortest windows that still exercise everything
    "smoke": Profile("smoke", True, 512, 2, 0.2, (2, 3), 0.3, (3, 10), 0.25, 0.1, 1, 1),
}


# onnxruntime's and OpenMP's worker threads spin for a while after a call returns; on a
# small machine a contender timed right after another pays for the other's spinning
# (measured here: 2-3x on a 28x28 CycleGAN). A pause before each timed call lets them sleep.
SETTLE_S = 0.05


def interleaved(contenders: dict[str, Callable[[], object]], min_rounds: int = 3, max_rounds: int = 20,
                budget_s: float = 10.0, warmup: int = 1, settle_s: float = SETTLE_S) -> dict[str, list[float]]:
    """Seconds per call of each contender, measured in alternating rounds.

    Round r runs the contenders in order (r even) or reversed (r odd), one call
    each, `settle_s` of idle before each call. Rounds go on until `min_rounds`
    are done and `budget_s` is spent (not counting the pauses), or `max_rounds`.
    `warmup` untimed calls of each come first.
    """
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(max_rounds):
        if r >= min_rounds and sum(map(sum, samples.values())) > budget_s:
            break
        for name in (names if r % 2 == 0 else names[::-1]):
            if settle_s:
                time.sleep(settle_s)
            t0 = time.perf_counter()
            contenders[name]()
            samples[name].append(time.perf_counter() - t0)
    return samples


def stats(seconds: list[float]) -> dict[str, float]:
    """Milliseconds: median (= p50), p99, min, max, and the sample count."""
    a = np.asarray(seconds, dtype=np.float64) * 1e3
    if a.size == 0:
        return {"n": 0}
    return {"n": int(a.size), "p50_ms": float(np.median(a)), "p99_ms": float(np.percentile(a, 99)),
            "min_ms": float(a.min()), "max_ms": float(a.max())}


def median_ms(seconds: list[float]) -> float:
    return float(np.median(seconds) * 1e3)


def ratio(a: float, b: float) -> float | None:
    return float(a / b) if b else None


# ------------------------------------------------------------------ machine


def cpu_info() -> dict:
    from core.cpu import cpu_flags, cpu_model, physical_core_ids

    flags = cpu_flags()
    return {
        "model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": physical_cores(),
        "physical_cores_cpuinfo": physical_core_ids(),
        "flags": {f: f in flags for f in CPU_FLAGS},
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }


def physical_cores() -> int:
    try:
        import psutil
        n = psutil.cpu_count(logical=False)
        if n:
            return int(n)
    except ImportError:
        pass
    return os.cpu_count() or 1


def mem_available_bytes() -> int:
    m = re.search(r"MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text())
    return int(m.group(1)) * 1024 if m else 0


def mem_total_bytes() -> int:
    m = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
    return int(m.group(1)) * 1024 if m else 0


def git_commit() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("-dirty" if dirty else "") if rev else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for mod in ("onnxruntime", "torch", "numpy", "bentoml", "PIL"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing package is reported, not fatal
            out[mod] = "not installed"
    return out


def machine() -> dict:
    return {
        "cpu": cpu_info(),
        "mem_total_gib": round(mem_total_bytes() / 2**30, 1),
        "platform": platform.platform(),
        "versions": versions(),
        "git_commit": git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "loadavg_start": list(os.getloadavg()),
    }


def busy_warning(load: list[float] | tuple[float, ...]) -> str | None:
    """A warning when the machine was already busy: the numbers then measure the contention."""
    cores = os.cpu_count() or 1
    if load[0] > 0.5 * cores:
        return (f"the 1-minute load average was {load[0]:.2f} on {cores} logical cores when the bench started: "
                f"other processes compete for the CPU, the numbers are NOT meaningful")
    return None


# ------------------------------------------------------------------ memory (Linux /proc)


def _status_kb(key: str) -> int | None:
    m = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(m.group(1)) if m else None


def rss_bytes() -> int:
    kb = _status_kb("VmRSS")
    if kb is not None:
        return kb * 1024
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where not supported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    kb = _status_kb("VmHWM")
    if kb is not None:
        return kb * 1024
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ------------------------------------------------------------------ inputs


def photo_like(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth RGB uint8 'photo' (gradients, waves, noise): compresses like a photo, not like noise."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    img = np.empty((height, width, 3), np.uint8)
    for c, (fy, fx) in enumerate(((3.0, 5.0), (7.0, 2.0), (4.0, 9.0))):
        plane = 128 + 60 * np.sin(fy * np.pi * y + c) * np.cos(fx * np.pi * x) + 40 * (x - y)
        plane += rng.normal(0, 6, (height, width)).astype(np.float32)
        img[..., c] = np.clip(plane, 0, 255).astype(np.uint8)
    return img


def png_bytes(pixels: np.ndarray) -> bytes:
    import io

    from PIL import Image
    buf = io.BytesIO()
    plane = pixels[..., 0] if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels
    Image.fromarray(plane).save(buf, format="PNG")
    return buf.getvalue()


def fmt_ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def fmt_x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def table(headers: list[str], rows: list[list[object]]) -> str:
    cells = [[str(c) for c in headers]] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for k, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
