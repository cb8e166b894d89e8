"""Parity numerics between ONNX graphs: the cases, the one CPU session, max abs differences.

No torch here: training/export/parity.py measures against torch through `measure_against` with a
reference that runs the torch module.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import ExportError


@dataclass
class Case:
    kind: str  # random | real
    feeds: dict[str, np.ndarray]


def cpu_session(path: Path):
    """The onnxruntime CPU session parity runs on (the project's one session factory)."""
    from core.runtime import make_session
    return make_session(path)


def parity_sizes(card_input: dict[str, Any]) -> list[list[int]]:
    """Two [H, W] sizes meeting multiple_of/min_size: square (or native) and non-square."""
    m = int(card_input.get("multiple_of") or 1)
    lo = int(card_input.get("min_size") or 1)

    def up(v: int) -> int:
        return max(lo, -(-v // m) * m)

    native = card_input.get("native_size")
    first = [int(native[0]), int(native[1])] if native else [up(64), up(64)]
    second = [up(60), up(100)]
    if second[0] == second[1]:
        second[1] += m
    if second == first:
        second[1] += m
    return [first, second]


def abs_diff(got: np.ndarray, want: np.ndarray) -> float:
    """Max abs difference of two outputs in float64 (0 for empty ones, inf for NaN)."""
    err = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))) if got.size else 0.0
    return err if np.isfinite(err) else float("inf")


def max_abs_diff(a, b, feeds: list[dict[str, np.ndarray]]) -> float:
    """Worst max abs difference between the first outputs of sessions `a` and `b` over `feeds`."""
    worst = 0.0
    for f in feeds:
        worst = max(worst, abs_diff(a.run(None, f)[0], b.run(None, f)[0]))
    return worst


def measure_against(session, cases: list[Case], reference: Callable[[dict[str, np.ndarray]], np.ndarray],
                    what: str = "the reference") -> dict[str, float]:
    """Max abs difference of `session` vs `reference(feeds)`, per case kind."""
    worst: dict[str, float] = {}
    for case in cases:
        got = session.run(["output"], case.feeds)[0]
        want = reference(case.feeds)
        if got.shape != want.shape:
            raise ExportError(f"onnxruntime output shape {got.shape} differs from {what} {want.shape} "
                              f"for inputs {[v.shape for v in case.feeds.values()]}")
        worst[case.kind] = max(worst.get(case.kind, 0.0), abs_diff(got, want))
    return worst


def quiet_exporter():
    """Silence the exporters' and converters' progress prints and deprecation chatter."""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    return stack
