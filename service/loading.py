"""A served model: core's loaded model plus what only a server adds to it.

`core.loading.load_model` reads the card, verifies the files and opens the sessions; here the
worker's per-model graph-run metrics and, where GANFORGE_BATCH_MAX asks, a batcher per role
(service/batching.py) are attached to it.
"""

from __future__ import annotations

from pathlib import Path

from core.loading import ServedModel
from core.runtime import CUDA
from core.tuned import load_tuned

from . import telemetry
from .batching import SessionBatcher
from .config import Settings

# GANFORGE_BATCH_MAX=0 (auto): batch up to this many rows on CUDA, where a merged run fills the GPU;
# on the CPU provider a merged run was no faster per row and served 16 clients 0-10% slower (make bench,
# serving), so auto is off there.
AUTO_BATCH_MAX = 16


def load_served(folder: Path, settings: Settings, providers: list) -> ServedModel:
    """`core.tuned.load_tuned` (load_model and the autotune step; never raises for a bad model), then metrics
    and batchers when it is ready."""
    model = load_tuned(folder, settings, providers, on_wait=telemetry.add_wait)
    if not model.ready:
        return model
    batch_max = settings.batch_max or (AUTO_BATCH_MAX if model.provider == CUDA else 1)
    if settings.metrics:
        model.observe_run = telemetry.graph_run_observer(model.name, model.version)
    if batch_max > 1:
        model.runners = {role: SessionBatcher(session.run, batch_max, f"{model.name}-{role}", model.observe_run)
                         for role, session in model.sessions.items()}
    return model
