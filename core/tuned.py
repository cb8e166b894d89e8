"""Loading with the autotune step: `load_tuned` = `loading.load_model`, then, where GANFORGE_BACKEND and
GANFORGE_PRECISION are both `auto` on the CPU, each model's sessions replaced by its measured fastest
candidates (core/autotune.py; the table cached on disk, so a restart measures nothing), then each image
model's tile curve measured on what serves it (core/tiletune.py, cached the same way).

A setting given by hand (GANFORGE_BACKEND=onnxruntime|openvino, GANFORGE_PRECISION=fp32|bf16|int8 or a
per-model entry) forces that choice and nothing is measured; GANFORGE_AUTOTUNE_BUDGET_S=0 keeps the static
rule (OpenVINO, bf16 where the gate passed). When the step fails the model serves as loaded, with a warning.
`/models` shows the table (`autotune`), the choice (`backend`, `precision`) and its reason (`precision_reason`).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Callable

from contract.folder import sha256_bytes

from .autotune import (Candidate, RoutedSession, SizeClass, cache_key, candidates, class_feeds, measure, read_cache,
                       size_classes, noise, write_cache)
from .backends import OPENVINO, native_bf16
from .cpu import OthersCpu
from .loading import Plan, ServedModel, load_model, open_session
from .settings import RuntimeConfig
from .tiletune import tune_tiles

logger = logging.getLogger("bentoml.ganforge")

CACHE_FOLDER = ".autotune"  # under the models dir by default: dot folders are not models (registry)


def autotune_skipped(settings: RuntimeConfig, name: str, backend: str | None) -> str | None:
    """Why this model is not autotuned (None: it is)."""
    wanted = settings.precision_for(name)
    if settings.backend != "auto":
        return f"GANFORGE_BACKEND={settings.backend} set by hand"
    if wanted != "auto":
        return f"GANFORGE_PRECISION={wanted} set by hand for {name}"
    if settings.autotune_budget_s <= 0:
        return "GANFORGE_AUTOTUNE_BUDGET_S=0: the static rule"
    if backend != OPENVINO:
        return f"auto chose {backend} (CUDA, or no openvino package): nothing to compare"
    return None


def cache_path(settings: RuntimeConfig, folder: Path) -> Path:
    root = settings.autotune_dir or folder.parent / CACHE_FOLDER
    return Path(root) / f"{folder.name}.json"


def load_tuned(folder: Path, settings: RuntimeConfig, providers: list,
               on_wait: Callable[[float], None] | None = None) -> ServedModel:
    """`load_model`, then the autotune step where it applies (see the module's notes); never raises."""
    model = load_model(folder, settings, providers, on_wait)
    if not model.ready or model.card is None:
        return model
    skipped = autotune_skipped(settings, folder.name, model.backend)
    if skipped is not None:
        model.autotune = {"skipped": skipped}
    else:
        try:
            apply_table(model, folder, settings, providers, on_wait)
        except Exception as exc:  # noqa: BLE001 - the static choice still serves
            logger.warning("model %s: autotune failed (%s: %s); serving %s %s", model.name, type(exc).__name__,
                           exc, model.backend, model.precision)
            model.autotune = {"failed": f"{type(exc).__name__}: {exc}"}
    path = cache_path(settings, folder)
    tune_tiles(model, path.with_name(f"{folder.name}.tiles.json"), settings)  # on what now serves
    return model


def open_candidate(model: ServedModel, folder: Path, candidate: Candidate, role: str, settings: RuntimeConfig,
                   providers: list, on_wait: Callable[[float], None] | None) -> Any:
    """One role's graph on `candidate`, from its sha256-checked bytes (the loaded sessions where they match)."""
    if candidate == Candidate(model.backend, model.precision):
        return model.sessions[role]
    card = model.card
    entry = card.variants["int8"].files[role] if candidate.precision == "int8" else card.files[role]
    data = (folder / entry.path).read_bytes()
    if sha256_bytes(data) != entry.sha256:
        raise RuntimeError(f"sha256 mismatch for {entry.path}")
    return open_session(data, Plan(candidate.backend, candidate.precision, {}, "autotune"), settings, providers,
                        on_wait)


def table_for(model: ServedModel, folder: Path, settings: RuntimeConfig, opener) -> dict[str, Any]:
    """The model's autotune table: from the cache when it matches, else measured (and cached)."""
    card = model.card
    classes = size_classes(card, model.image_spec.tile if model.image_spec is not None else 0)
    found, excluded = candidates(card, True, native_bf16())
    key = cache_key(card, classes, found, settings.ort_threads)
    path = cache_path(settings, folder)
    cached = read_cache(path, key)
    if cached is not None:
        logger.info("model %s: autotune table from cache %s (nothing measured)", model.name, path)
        return {**cached, "source": "cache", "file": str(path)}
    started, others = time.monotonic(), OthersCpu()
    first_role = next(iter(card.files))
    rows = measure(card, classes, lambda c: opener(c, first_role), found, settings.autotune_budget_s)
    seconds, (share, noisy) = round(time.monotonic() - started, 3), noise(others, rows)
    entry = {"key": key, "rows": rows, "excluded": excluded, "seconds": seconds, "others_cpu": share,
             "budget_s": settings.autotune_budget_s, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if noisy is not None:
        logger.warning("model %s: autotune measured while %s: serving its choice, not caching it (the next start "
                       "measures again)", model.name, noisy)
    written = noisy is None and write_cache(path, entry)
    logger.info("model %s: autotune measured %d candidate(s) x %d size class(es) in %.1f s: %s%s", model.name,
                len(found), len(classes), seconds, ", ".join(f"{r['input']} -> {r['choice']}" for r in rows),
                f" (cached in {path})" if written else "")
    return {**entry, "source": "measured", "file": str(path) if written else None}


def apply_table(model: ServedModel, folder: Path, settings: RuntimeConfig, providers: list,
                on_wait: Callable[[float], None] | None) -> None:
    """Replace `model`'s sessions by the table's choice per role (a RoutedSession where classes differ)."""
    opened: dict[tuple[Candidate, str], Any] = {}

    def opener(candidate: Candidate, role: str) -> Any:
        if (candidate, role) not in opened:
            opened[(candidate, role)] = open_candidate(model, folder, candidate, role, settings, providers, on_wait)
        return opened[(candidate, role)]

    table = table_for(model, folder, settings, opener)
    rows = table["rows"]
    picks = [(Candidate.parse(row["choice"]), math.prod(int(v) for v in row["shape"])) for row in rows]
    sessions = {}
    for role in model.card.files:
        if len({c for c, _ in picks}) == 1:
            sessions[role] = opener(picks[0][0], role)
        else:
            sessions[role] = RoutedSession([(e, opener(c, role)) for c, e in picks], model.card.graph.inputs[0].name)
    if table["source"] == "cache":  # measured runs warmed each class's shape; a cached table's did not run yet
        for row, (candidate, _) in zip(rows, picks):
            feeds = class_feeds(model.card, SizeClass(row["input"], tuple(row["shape"]), 0))
            for role in model.card.files:
                opener(candidate, role).run(None, feeds)
    largest = max(picks, key=lambda p: p[1])
    model.sessions = sessions
    model.backend, model.precision = largest[0].backend, largest[0].precision
    model.provider = sessions[next(iter(sessions))].get_providers()[0]
    model.precision_note = None
    routes = "; ".join(f"{r['input']}: {r['choice']} ({r['reason']})" for r in rows)
    model.precision_reason = f"auto, measured here ({table['source']}): {routes}"
    model.autotune = {k: table[k] for k in ("source", "file", "rows", "excluded", "seconds", "budget_s",
                                            "measured_at", "others_cpu") if k in table}
    logger.info("model %s: autotune serves %s", model.name, routes)

