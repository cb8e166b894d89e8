"""`python -m training bf16 NAME...`: modelops/bf16.py with training's dataset reader, so the bf16 gate is
measured on the card's held-out images (synthetic inputs where the data is not there; the card says which).
`with_bf16_gate` is import's hook: an imported model gets its gate with no extra command."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from contract import Card
from modelops import bf16 as ops
from modelops.bf16 import Bf16Error, Bf16Options, build_parser  # noqa: F401 - the verb's parser (python -m training bf16)

from .calibration import dataset_images


def record_bf16(opts: Bf16Options, log: Callable[[str], Any] = print) -> dict[str, dict[str, Any]]:
    """modelops.bf16.record_bf16 on the card's own data."""
    return ops.record_bf16(opts, log, dataset=dataset_images)


def with_bf16_gate(folder: Path, card: Card, log: Callable[[str], Any] = print) -> Card:
    """Import's hook (training/importer/publish.py): `card` with `variants.bf16` measured on the graphs in
    `folder` by `bf16_variant` (what `python -m training bf16 NAME` records), where this CPU has native bf16;
    elsewhere, or when it cannot be measured, the card unchanged and one line saying why."""
    from core.backends import native_bf16, openvino_installed

    native, why = native_bf16() if openvino_installed() else (False, "the openvino package is not installed")
    if not native:
        log(f"no bf16 gate measured ({why}): the model serves fp32 until `python -m training bf16 {card.name}` "
            "runs on a CPU with native bf16")
        return card
    try:
        variant = ops.bf16_variant(folder, card, log=log, dataset=dataset_images)
    except (Bf16Error, RuntimeError, ValueError, OSError) as e:
        log(f"no bf16 gate measured: {e}")
        return card
    extra = variant.extra
    log(f"bf16 gate: worst input {extra['psnr_vs_fp32_db_min']:.2f} dB against fp32, "
        f"{'passed' if extra['passed'] else 'FAILED (fp32 serves)'} at {extra['gate_db']:g} dB")
    card.variants = {**card.variants, "bf16": variant}
    return card


def main(argv: list[str] | None = None) -> int:
    return ops.main(argv, run=lambda opts: record_bf16(opts))
