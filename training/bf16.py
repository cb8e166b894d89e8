"""`python -m training bf16 NAME...`: modelops/bf16.py with training's dataset reader, so the bf16 gate is
measured on the card's held-out images (synthetic inputs where the data is not there; the card says which)."""
from __future__ import annotations

from typing import Any, Callable

from modelops import bf16 as ops
from modelops.bf16 import Bf16Options, build_parser  # noqa: F401 - the verb's parser (python -m training bf16)

from .calibration import dataset_images


def record_bf16(opts: Bf16Options, log: Callable[[str], Any] = print) -> dict[str, dict[str, Any]]:
    """modelops.bf16.record_bf16 on the card's own data."""
    return ops.record_bf16(opts, log, dataset=dataset_images)


def main(argv: list[str] | None = None) -> int:
    return ops.main(argv, run=lambda opts: record_bf16(opts))
