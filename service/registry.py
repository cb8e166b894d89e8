"""The served models: scan the models folder, load each (service/loading.py), pick one per request.

Sessions are created once per worker process (in `ModelRegistry.load`), on CUDA when
onnxruntime can use it (`runtime.resolve_providers`), else on CPU.

`ModelRegistry.reload` re-scans the folder (POST /admin/reload, or every
GANFORGE_RELOAD_POLL_S seconds): a folder whose files changed (inode, size,
mtime) is loaded anew, the rest keep their sessions. The new set replaces the
old in one assignment, so a request that already picked a model finishes on
the sessions it started with. A new version that fails to load does not
displace a ready old one: the old keeps serving and `/models` carries a
`warning` with the reason.

A request that names no model gets its endpoint's only model, else the one whose
card says `default: true` (several: the first by name, and a warning in the log).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from contract.folder import NAME_RE
from core.loading import ServedModel
from core.runtime import CPU, resolve_providers

from . import telemetry
from .config import Settings
from .errors import ApiError, not_found, shown, unprocessable
from .loading import load_served

logger = logging.getLogger("bentoml.ganforge")


def model_folders(root: Path) -> list[Path]:
    """The model folders directly under `root` whose names are valid (dot folders are export staging)."""
    if not root.is_dir():
        return []
    folders = []
    for folder in sorted(root.iterdir()):
        if folder.name.startswith(".") or not folder.is_dir():
            continue
        if not NAME_RE.fullmatch(folder.name):
            logger.warning("skipping %r: not a valid model name (%s)", folder.name, NAME_RE.pattern)
            continue
        folders.append(folder)
    return folders


def folder_fingerprint(folder: Path) -> tuple:
    """(inode, size, mtime) of the folder and each file in it: changes with every export or card rewrite."""
    try:
        entries = [("", *_stat_key(folder))]
        for path in sorted(folder.iterdir()):
            entries.append((path.name, *_stat_key(path)))
    except OSError:
        return ("unreadable", time.monotonic_ns())  # never equal: the next scan tries again
    return tuple(entries)


def _stat_key(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


def _load(folder: Path, settings: Settings, providers: list, fingerprint: tuple | None = None) -> ServedModel:
    """load_model, with the folder's fingerprint from before the read: a change during the read shows next time."""
    fingerprint = folder_fingerprint(folder) if fingerprint is None else fingerprint
    model = load_served(folder, settings, providers)
    model.fingerprint = fingerprint
    if settings.metrics:
        telemetry.model_loaded(model.name, model.ready)
    return model


def _log_model(model: ServedModel) -> None:
    if model.ready:
        logger.info("model %s (%s, %s) ready on %s, %s", model.name, model.endpoint,
                    model.version, model.provider, model.precision)
    else:
        logger.error("model %s unavailable: %s", model.name, model.reason)


def several_defaults(models: dict[str, ServedModel]) -> dict[str, list[str]]:
    """endpoint -> the names (sorted) of its models whose cards say `default: true`, where more than one do."""
    found: dict[str, list[str]] = {}
    for model in models.values():
        if model.is_default and model.endpoint is not None:
            found.setdefault(model.endpoint, []).append(model.name)
    return {endpoint: sorted(names) for endpoint, names in found.items() if len(names) > 1}


def _warn_several_defaults(models: dict[str, ServedModel]) -> None:
    for endpoint, names in several_defaults(models).items():
        logger.warning("several %s models have default: true in their cards (%s); %s serves requests that "
                       "name no model", endpoint, ", ".join(names), names[0])


class ModelRegistry:
    """Every model folder under the models dir, loaded once per worker; `reload` swaps in changes."""

    def __init__(self, models: dict[str, ServedModel], device: str, settings: Settings | None = None,
                 providers: list | None = None) -> None:
        self.models = models
        self.device = device
        self.settings = settings
        self.providers = providers
        self.reloads = 0
        self._reload_lock = threading.Lock()

    @classmethod
    def load(cls, settings: Settings) -> "ModelRegistry":
        providers = resolve_providers(settings)
        device = "cuda" if providers[0] != CPU else "cpu"
        if not settings.models_dir.is_dir():
            logger.warning("models dir %s does not exist: serving no models", settings.models_dir)
        models: dict[str, ServedModel] = {}
        for folder in model_folders(settings.models_dir):
            models[folder.name] = model = _load(folder, settings, providers)
            _log_model(model)
        _warn_several_defaults(models)
        if settings.metrics:
            telemetry.models_served(models)
        return cls(models, device, settings, providers)

    def reload(self) -> dict[str, Any]:
        """Re-scan the models dir; load what changed; swap the set in one assignment.

        Returns what happened per model name: loaded (new or changed), unchanged,
        kept (a changed copy failed to load, the ready old one still serves),
        removed. One reload at a time per worker.
        """
        if self.settings is None or self.providers is None:
            raise RuntimeError("this registry was not made by ModelRegistry.load")
        with self._reload_lock:
            current = self.models
            fresh: dict[str, ServedModel] = {}
            report: dict[str, list] = {"loaded": [], "unchanged": [], "kept": [], "removed": []}
            for folder in model_folders(self.settings.models_dir):
                name = folder.name
                old = current.get(name)
                fingerprint = folder_fingerprint(folder)
                if old is not None and old.fingerprint == fingerprint:
                    fresh[name] = old
                    report["unchanged"].append(name)
                    continue
                model = _load(folder, self.settings, self.providers, fingerprint)
                if not model.ready and old is not None and old.ready:
                    model.close()
                    old.warning = (f"a changed copy on disk failed to load ({model.reason}); "
                                   f"still serving version {old.version}")
                    logger.error("model %s: %s", name, old.warning)
                    fresh[name] = old
                    report["kept"].append({"name": name, "reason": model.reason})
                    continue
                _log_model(model)
                fresh[name] = model
                report["loaded"].append({"name": name, "status": model.status, "version": model.version,
                                         "reason": model.reason})
            report["removed"] = sorted(set(current) - set(fresh))
            self.models = fresh  # the swap: requests that already hold a model keep its sessions
            kept = {id(m) for m in fresh.values()}
            for old in current.values():
                if id(old) not in kept:
                    old.close()
            self.reloads += 1
            if self.settings.metrics:
                telemetry.reloaded()
                telemetry.models_served(fresh)
            changed = len(report["loaded"]) + len(report["removed"]) + len(report["kept"])
            if changed:
                logger.info("reload: %d loaded, %d kept, %d removed, %d unchanged", len(report["loaded"]),
                            len(report["kept"]), len(report["removed"]), len(report["unchanged"]))
                _warn_several_defaults(fresh)
            return report

    def unavailable(self) -> list[str]:
        return [name for name, m in self.models.items() if not m.ready]

    def get(self, name: str) -> ServedModel | None:
        # A dict lookup only: a name from a request never reaches the filesystem.
        return self.models.get(name) if isinstance(name, str) else None

    def pick(self, endpoint: str, name: str | None) -> ServedModel:
        """The ready model a request asked for (or the endpoint's default), else ApiError."""
        models = self.models  # one snapshot: a concurrent reload swaps the dict, never edits it
        if name is None or name == "":
            model = _endpoint_default(models, endpoint)
        else:
            model = models.get(name) if isinstance(name, str) else None
            if model is None:
                raise not_found(f"unknown model {shown(name)}; GET /models lists them")
            if model.endpoint != endpoint and model.endpoint is not None:  # None: the card is unreadable
                raise unprocessable(f"model {shown(name)} is a {model.endpoint} model, not a {endpoint} model")
        telemetry.picked(model.name, model.version)  # the request's metrics and span are this model's now
        if not model.ready:
            raise ApiError(503, f"model {model.name!r} is unavailable: {model.reason}")
        return model

    def describe(self) -> dict[str, Any]:
        models = self.models
        return {"device": self.device, "unavailable": [n for n, m in models.items() if not m.ready],
                "reloads": self.reloads, "models": [m.public() for m in models.values()]}


def _endpoint_default(models: dict[str, ServedModel], endpoint: str) -> ServedModel:
    """The endpoint's only model, else the one whose card says `default: true` (the first by name)."""
    candidates = [m for m in models.values() if m.endpoint == endpoint]
    if not candidates:
        raise not_found(f"no {endpoint} model is served")
    if len(candidates) == 1:
        return candidates[0]
    defaults = [m for m in candidates if m.is_default]
    if defaults:
        return min(defaults, key=lambda m: m.name)
    names = ", ".join(m.name for m in candidates)
    raise ApiError(400, f"several {endpoint} models are served ({names}); name one in 'model'")
