"""GANFORGE_BACKEND=auto with GANFORGE_PRECISION=auto on the CPU: each model on its fastest measured candidate.

The static rule (OpenVINO, bf16 where the card's gate passed) was not the fastest everywhere (issue 26:
OpenVINO bf16 was 0.90x onnxruntime fp32 on colorize 256x256 and 0.75x on fashion n=1; without native bf16
OpenVINO fp32 was 0.5-0.7x onnxruntime on the small graphs). So at load, per model:

- the candidates (`candidates`): onnxruntime fp32; OpenVINO fp32; OpenVINO bf16 only where the CPU has
  native bf16 and the card's bf16 gate passed (`backends.gate_result`); onnxruntime int8 and OpenVINO int8
  where the card has an int8 variant for every role whose gate did not fail. Every candidate passes the
  model's quality gate, so the choice is speed alone;
- the size classes (`size_classes`): the input shapes a request's graph run has: an image model's native
  size, else 256x256 and its tile (one class when they are the same); a generator's n=1 and n=64;
- per class, each candidate runs its shape once untimed (the first run of a shape compiles), then once timed
  (a candidate WARM_PRUNE x slower than the fastest there is out at once: the 128->512 upscale's fp32 runs
  are 6x its bf16 one), then timed rounds interleaved (order reversed every
  other round, a short settle before each call so one runtime's spinning threads do not tax the next),
  from the third round a candidate whose median is over PRUNE x the best median dropped, until the per-model budget
  (GANFORGE_AUTOTUNE_BUDGET_S) or MAX_ROUNDS; the fastest median wins. Where the classes pick different
  candidates, `RoutedSession` runs each graph run on its class's pick (the nearest class by input elements,
  on a log scale).

The table is cached as JSON in GANFORGE_AUTOTUNE_DIR (default: `<models dir>/.autotune`), one file per model,
written atomically (not when it was measured with the load average above the core count: the next start
measures again), keyed by the model's version and files, the CPU model and flags, the onnxruntime and
OpenVINO versions, the thread setting, the size classes and AUTOTUNE_VERSION: a restart reads it and measures
nothing; any change (or an unreadable file) measures again. Nothing here reads the environment.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from contract import Card

from .backends import ONNXRUNTIME, OPENVINO, gate_result, openvino_version
from .cpu import OthersCpu, cpu_flags, cpu_model, logical_cores

logger = logging.getLogger("bentoml.ganforge")

AUTOTUNE_VERSION = 3  # bump when the measurement or the file's layout changes: old caches are remeasured
MAX_ROUNDS = 31  # small graphs get many rounds within the budget: their candidates differ by a millisecond
PRUNE = 2.0  # from the third round on, a candidate whose median is this times the best median is dropped
WARM_PRUNE = 4.0  # a candidate whose first (untimed) call took this times the fastest first call is dropped
SETTLE_S = 0.01  # before each timed call: the previous runtime's worker threads stop spinning
SMALL_EDGE = 256  # the size class of a typical request, beside the tile
GENERATE_BATCHES = (1, 64)


@dataclass(frozen=True)
class Candidate:
    backend: str
    precision: str

    @property
    def label(self) -> str:
        return f"{self.backend} {self.precision}"

    @classmethod
    def parse(cls, label: str) -> "Candidate":
        backend, precision = label.split(" ")
        return cls(backend, precision)


@dataclass(frozen=True)
class SizeClass:
    label: str  # "256x256", "n=64"
    shape: tuple[int, ...]  # the first input's shape
    elements: int  # product of `shape`: what a run's feeds are matched on


def int8_usable(card: Card) -> tuple[bool, str]:
    variant = card.variants.get("int8")
    if variant is None or set(variant.files) != set(card.files):
        return False, "the card has no int8 variant for every role"
    if (variant.extra or {}).get("passed") is False:
        return False, "the card's int8 variant failed its gate"
    return True, "the card's int8 variant"


def candidates(card: Card, openvino_ok: bool, bf16_here: tuple[bool, str]) -> tuple[list[Candidate], dict[str, str]]:
    """The candidates that pass the model's quality gate here, and why each other one is out."""
    found, out = [Candidate(ONNXRUNTIME, "fp32")], {}
    if openvino_ok:
        found.append(Candidate(OPENVINO, "fp32"))
        passed, why = gate_result(card.variants.get("bf16"), card.version)
        if not bf16_here[0]:
            out[f"{OPENVINO} bf16"] = bf16_here[1]
        elif not passed:
            out[f"{OPENVINO} bf16"] = why
        else:
            found.append(Candidate(OPENVINO, "bf16"))
    else:
        out[f"{OPENVINO} *"] = "the openvino package is not installed"
    usable, why = int8_usable(card)
    backends = (ONNXRUNTIME, OPENVINO) if openvino_ok else (ONNXRUNTIME,)
    for backend in backends:
        if usable:
            found.append(Candidate(backend, "int8"))
        else:
            out[f"{backend} int8"] = why
    return found, out


def size_classes(card: Card, tile: int) -> list[SizeClass]:
    """The first input's shapes a request's graph runs have (`tile`: the model's ImageSpec.tile)."""
    if card.endpoint == "generate":
        return [SizeClass(f"n={n}", (n, int(card.latent_dim or 0)), n * int(card.latent_dim or 0))
                for n in GENERATE_BATCHES]
    assert card.input is not None
    channels = card.input.channels
    if card.input.native_size is not None:
        sizes = [tuple(card.input.native_size)]
    else:
        m, lo = card.input.multiple_of or 1, card.input.min_size or 1
        edges = sorted({max(lo, -(-min(SMALL_EDGE, tile) // m) * m), tile})
        sizes = [(e, e) for e in edges]
    return [SizeClass(f"{h}x{w}", (1, channels, h, w), channels * h * w) for h, w in sizes]


def class_feeds(card: Card, size: SizeClass, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of `size`'s shape: uniform pixels in the input range; a generator's z ~ N(0, I) and labels."""
    rng = np.random.default_rng(seed)
    if card.endpoint == "generate":
        n = size.shape[0]
        feeds = {"z": rng.standard_normal(size.shape, dtype=np.float32)}
        if "label" in card.graph.input_names():
            feeds["label"] = rng.integers(0, max(1, len(card.classes or ())), n).astype(np.int64)
        return feeds
    lo, hi = card.input.range
    return {card.graph.inputs[0].name: rng.uniform(lo, hi, size.shape).astype(np.float32)}


# ------------------------------------------------------------------ the measurement


def time_call(session: Any, feeds: dict[str, np.ndarray], settle_s: float) -> float:
    time.sleep(settle_s)
    started = time.perf_counter()
    session.run(None, feeds)
    return (time.perf_counter() - started) * 1e3


def measure_class(sessions: dict[str, Any], feeds: dict[str, np.ndarray], deadline: float,
                  settle_s: float = SETTLE_S) -> dict[str, Any]:
    """label -> median ms on one size class, interleaved rounds; `pruned_ms`: the candidates dropped early
    (their median so far; the warm-up call's time for those dropped right after it)."""
    for session in sessions.values():  # a shape's first run compiles and allocates (OpenVINO: 10x): untimed
        session.run(None, feeds)
    warm = {label: time_call(session, feeds, settle_s) for label, session in sessions.items()}
    pruned = {label: ms for label, ms in warm.items() if ms > WARM_PRUNE * min(warm.values())}
    dropped_at = {label: "its first timed call" for label in pruned}
    alive = [label for label in sessions if label not in pruned]
    samples: dict[str, list[float]] = {label: [] for label in alive}
    rounds = 0
    while rounds < MAX_ROUNDS and len(alive) > 1 and (rounds == 0 or time.monotonic() < deadline):
        for label in (alive if rounds % 2 == 0 else alive[::-1]):
            samples[label].append(time_call(sessions[label], feeds, settle_s))
        rounds += 1
        if rounds >= 3:  # fewer calls are too noisy to drop anything on
            medians = {label: float(np.median(samples[label])) for label in alive}
            best = min(medians.values())
            dropped = [label for label in alive if medians[label] > PRUNE * best]
            pruned.update((label, medians[label]) for label in dropped)
            dropped_at.update((label, f"the median of {rounds} rounds") for label in dropped)
            alive = [label for label in alive if label not in dropped]
    if len(alive) == 1 and not samples[alive[0]]:  # the others were far slower: one timed call for the table
        samples[alive[0]].append(time_call(sessions[alive[0]], feeds, settle_s))
    medians = {label: (float(np.median(samples[label])) if label in alive else None) for label in sessions}
    return {"ms": medians, "pruned_ms": pruned, "pruned_at": dropped_at, "rounds": rounds}


def machine_load() -> float:
    """The 1-minute load average (what a measurement records, and what decides whether it is cached)."""
    return os.getloadavg()[0]


def busy(rows: list[dict[str, Any]]) -> bool:
    """Measured while more was runnable than this machine has cores: the choice serves, but is not cached."""
    return any(row.get("loadavg", 0.0) > logical_cores() for row in rows)


# A measurement is cached only when other processes used at most this share of the machine meanwhile
# (core/cpu.py OthersCpu; the load average, `busy`, where /proc/stat is missing). The load average alone let
# tables and tile curves in that were measured beside a test suite (1.2-1.35 on 2 cores, partly the
# measurement's own threads): one made a 64 tile the "best" of srresnet-x4 (1.51x the graph work in
# overlaps, against 1.31x at 96).
OTHERS_MAX = 0.1


def too_noisy(others_share: float | None, rows: list[dict[str, Any]]) -> bool:
    """Whether a measurement is served but not cached (see OTHERS_MAX)."""
    return others_share > OTHERS_MAX if others_share is not None else busy(rows)


def noise(watch: OthersCpu, rows: list[dict[str, Any]]) -> tuple[float | None, str | None]:
    """After a measurement that `watch` watched, whose rows carry the load average: (other processes' share of
    the CPU meanwhile, rounded, for the cache entry; why the measurement is not to be cached, or None)."""
    share = watch.share()
    rounded = None if share is None else round(share, 3)
    if not too_noisy(share, rows):
        return rounded, None
    shown = "?" if share is None else f"{share:.0%}"
    return rounded, f"other processes used {shown} of the CPU (load average {rows[0].get('loadavg', 0.0):.1f} on " \
                    f"{logical_cores()} cores)"


def choose(row: dict[str, Any]) -> tuple[str, str]:
    """(the fastest candidate's label, why) of one measured class."""
    timed = sorted((ms, label) for label, ms in row["ms"].items() if ms is not None)
    best_ms, best = timed[0]
    if len(timed) == 1 and not row["pruned_ms"]:
        return best, f"the only candidate: {best_ms:.2f} ms"
    others = sorted([(ms, label) for ms, label in timed[1:]] + [(ms, l) for l, ms in row["pruned_ms"].items()])
    ms, label = others[0]
    return best, f"fastest measured: {best_ms:.2f} ms against {label} {ms:.2f} ms ({ms / best_ms:.2f}x)"


def measure(card: Card, classes: list[SizeClass], open_candidate: Callable[[Candidate], Any],
            found: list[Candidate], budget_s: float) -> list[dict[str, Any]]:
    """Every class's row {input, shape, ms, pruned_ms, rounds, choice, reason}; `open_candidate(c)`: one
    session of candidate `c` (the first role's graph: a CycleGAN's two directions are the same network)."""
    sessions: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for candidate in found:
        try:
            sessions[candidate.label] = open_candidate(candidate)
        except Exception as exc:  # noqa: BLE001 - a candidate that cannot load is out, the others compete
            failed[candidate.label] = f"does not load here ({type(exc).__name__}: {str(exc)[:120]})"
    if not sessions:
        raise RuntimeError(f"no candidate loads: {failed}")
    rows, started, load = [], time.monotonic(), machine_load()
    for i, size in enumerate(classes):
        deadline = started + budget_s * (i + 1) / len(classes)
        row = {"input": size.label, "shape": list(size.shape),
               **measure_class(sessions, class_feeds(card, size), deadline)}
        row["choice"], row["reason"] = choose(row)
        row["failed"] = failed
        row["loadavg"] = round(load, 2)  # a busy machine skews the choice: delete the table to measure again
        rows.append(row)
    return rows


# ------------------------------------------------------------------ the cache


def library_versions() -> dict[str, str]:
    import onnxruntime

    versions = {"onnxruntime": onnxruntime.__version__}
    try:
        versions["openvino"] = openvino_version()
    except ImportError:
        versions["openvino"] = "none"
    return versions


def cache_key(card: Card, classes: list[SizeClass], found: list[Candidate], threads: int) -> dict[str, Any]:
    """Everything the measurement depends on: a change in any of it measures again."""
    files = {role: entry.sha256 for role, entry in card.files.items()}
    for name, variant in sorted(card.variants.items()):
        files.update({f"{name}:{role}": entry.sha256 for role, entry in variant.files.items()})
    flags = hashlib.sha256(" ".join(sorted(cpu_flags())).encode()).hexdigest()[:16]
    key = {"autotune": AUTOTUNE_VERSION, "model": card.name, "version": card.version, "files": files,
           "cpu": cpu_model(), "cpu_flags_sha256": flags, **library_versions(), "threads": threads,
           "classes": [asdict(c) for c in classes], "candidates": [c.label for c in found]}
    return json.loads(json.dumps(key))  # as it reads back from the file (tuples become lists)


def read_keyed(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The cached entry (a JSON object with `rows`, a list) when `path` holds one for exactly `key`; None
    (and why, logged) otherwise."""
    try:
        saved = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("autotune cache %s is unreadable (%s): measuring again", path, type(exc).__name__)
        return None
    if not isinstance(saved, dict) or not isinstance(saved.get("rows"), list) or saved.get("key") != key:
        stale = saved.get("key") if isinstance(saved, dict) else None
        changed = sorted(k for k in key if not isinstance(stale, dict) or stale.get(k) != key[k])
        logger.info("autotune cache %s is for another setup (%s): measuring again", path, ", ".join(changed))
        return None
    return saved


def read_cache(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The cached table when `path` holds one for exactly `key`; None (and why, logged) otherwise."""
    saved = read_keyed(path, key)
    if saved is None:
        return None
    try:
        for row in saved["rows"]:
            Candidate.parse(row["choice"])
    except (KeyError, TypeError, ValueError):
        logger.warning("autotune cache %s is malformed: measuring again", path)
        return None
    return saved


def write_cache(path: Path, entry: dict[str, Any]) -> bool:
    """Write `entry` to `path` atomically (a temporary file in the same folder, then a rename)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w") as file:
            json.dump(entry, file, indent=1)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
        return True
    except OSError as exc:
        logger.warning("autotune: cannot write %s (%s); the next start measures again", path, exc)
        return False


# ------------------------------------------------------------------ serving the choice


class RoutedSession:
    """Several sessions of one graph behind one `run`: each run goes to the size class nearest its input
    (the first input's element count, on a log scale), as the autotune table chose per class."""

    def __init__(self, routes: list[tuple[int, Any]], input_name: str) -> None:
        self.routes = sorted(routes, key=lambda r: r[0])
        self.input_name = input_name
        logs = [math.log(max(1, e)) for e, _ in self.routes]
        self.bounds = [math.exp((a + b) / 2) for a, b in zip(logs, logs[1:])]
        largest = self.routes[-1][1]
        self.get_inputs, self.get_outputs, self.get_providers = (largest.get_inputs, largest.get_outputs,
                                                                 largest.get_providers)

    def session_for(self, elements: int) -> Any:
        return self.routes[bisect.bisect_left(self.bounds, elements)][1]

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session_for(int(np.asarray(feeds[self.input_name]).size)).run(output_names, feeds)

    def describe(self) -> dict[str, Any]:
        largest = self.routes[-1][1].describe()
        return {**largest, "routes": [{"elements": e, **s.describe()} for e, s in self.routes]}
