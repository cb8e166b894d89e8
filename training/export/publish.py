"""Export a checkpoint and publish it atomically as OUT/NAME (contract.folder.staged_version); rollback."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from contract import Card
from contract.folder import LockBusy, check_name, staged_version
from contract.folder import rollback as rollback_folder

from .build import build
from .options import ExportError, ExportJob, ExportOptions


@dataclass
class ExportResult:
    path: Path
    card: Card
    parity_max_abs: float


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


def load_job(options: ExportOptions, log) -> ExportJob:
    """The checkpoint (a run folder: its newest valid one), its recipe and export specs (eval mode)."""
    from .. import checkpoint as ckpt
    from ..recipes.base import Recipe

    checkpoint = options.checkpoint
    if Path(checkpoint).is_dir():  # a run folder: its newest valid checkpoint
        found = ckpt.latest_valid(checkpoint, log=log)
        if found is None:
            raise ExportError(f"no readable checkpoint in {Path(checkpoint) / 'checkpoints'}")
        checkpoint, payload = found
    else:
        payload = ckpt.load(checkpoint)
    recipe = Recipe.from_checkpoint(payload, "cpu")
    specs = recipe.export_specs()
    for spec in specs.values():
        spec.module.eval()
    return ExportJob(name=options.name, checkpoint=checkpoint, payload=payload, recipe=recipe, specs=specs,
                     options=options, log=log)


def publish_folder(out: Path, name: str, write: Callable[[Path], Card]) -> Card:
    """`write(staging)` under NAME's lock, then installed atomically as OUT/NAME (the old version kept as
    OUT/.NAME.prev); on any exception the staging folder is removed and nothing is published."""
    try:
        with staged_version(Path(out), name, log=_warn) as staging:
            return write(staging)
    except LockBusy as e:
        raise ExportError(str(e)) from None


def export_checkpoint(options: ExportOptions, log=print) -> ExportResult:
    """Export, check and publish `options.checkpoint` as OUT/NAME (see training/export/__init__.py)."""
    name = options.name
    try:
        check_name(name)
    except ValueError as e:
        raise ExportError(str(e)) from None
    options.check()
    job = load_job(options, log)
    out = Path(options.out)
    card = publish_folder(out, name, lambda staging: build(staging, job))
    result = ExportResult(out / name, card, card.metrics.parity_max_abs)
    log(f"published {result.path} (version {card.version}; parity max abs "
        f"{result.parity_max_abs:.2e} <= {options.tolerance:g})")
    return result


def rollback(name: str, out: str | Path = "models", log=print) -> Path:
    """Swap OUT/.NAME.prev back into OUT/NAME; the replaced version becomes .NAME.prev (so twice = forward)."""
    out = Path(out)
    try:
        card = rollback_folder(out, name)
    except (ValueError, LockBusy) as e:  # a bad name, nothing to roll back to, a damaged .prev, a busy lock
        raise ExportError(str(e)) from e
    target, prev = out / name, out / f".{name}.prev"
    log(f"rolled back {target} to version {card.version}"
        + (f"; the replaced version is kept as {prev}" if prev.exists() else ""))
    return target
