"""Self-describing checkpoints, written atomically and loaded without unpickling objects.

A checkpoint is a dict of tensors and plain values (loaded with
`torch.load(weights_only=True)`): the format tag, family, the resolved run
config (which holds the network args, so loading never guesses the
architecture), step, and the state of every network, optimizer and scheduler.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from contract.folder import atomic_write  # the project's one durable write

FORMAT = "ganforge-checkpoint/1"
_NAME = re.compile(r"^ckpt-(\d{8})\.pt$")


class CheckpointError(RuntimeError):
    pass


def save(path: Path, payload: dict[str, Any]) -> None:
    payload = {"format": FORMAT, **payload}
    atomic_write(path, lambda f: torch.save(payload, f))


def load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, not a checkpoint, or a pickle with objects
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a ganforge checkpoint (format tag {FORMAT!r} missing)")
    return payload


def step_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"ckpt-{step:08d}.pt"


def list_checkpoints(run_dir: Path) -> list[Path]:
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _NAME.match(p.name))


def latest_valid(run_dir: Path, log=print) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads; a corrupt newer one is reported and skipped."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return path, load(path)
        except CheckpointError as e:
            log(f"warning: skipping unreadable checkpoint: {e}")
    return None


def prune(run_dir: Path, keep: int) -> None:
    ckpts = list_checkpoints(run_dir)
    for old in ckpts[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
