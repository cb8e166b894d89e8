"""`python -m training quantize NAME`: modelops/quantize.py with training's dataset reader, so the int8
variant is calibrated on the card's training split and gated on its held-out split (synthetic inputs
where the data is not there; the card says which)."""
from __future__ import annotations

from typing import Any

from modelops import quantize as ops
from modelops.quantize import QuantizeOptions, build_parser  # noqa: F401 - the verb's parser

from .calibration import dataset_images


def quantize_model(opts: QuantizeOptions, log=print) -> dict[str, Any]:
    """modelops.quantize.quantize_model on the card's own data."""
    return ops.quantize_model(opts, log, dataset=dataset_images)


def main(argv: list[str] | None = None) -> int:
    return ops.main(argv, run=lambda opts: quantize_model(opts))
