"""The served models: scan the models folder, check each card, verify, load.

Reads the folder contract of docs/model-card.md and nothing else. A model
whose card is invalid or whose file is missing, corrupt or sha256-mismatched
is kept in the registry as `unavailable` with a reason, and the others serve.
Each ONNX file is read once, its sha256 checked on those very bytes, and the
same bytes handed to onnxruntime, so what runs is what was verified.

Sessions are created once per worker process (in `ModelRegistry.load`), on
CUDA when onnxruntime can use it (see `resolve_providers`), else on CPU;
`ServedModel.provider` is what `session.get_providers()` says actually runs.

`ModelRegistry.reload` re-scans the folder (POST /admin/reload, or every
GANFORGE_RELOAD_POLL_S seconds): a folder whose files changed (inode, size,
mtime) is loaded anew, the rest keep their sessions. The new set replaces the
old in one assignment, so a request that already picked a model finishes on
the sessions it started with. A new version that fails to load does not
displace a ready old one: the old keeps serving and `/models` carries a
`warning` with the reason.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnxruntime as ort

from .batching import SessionBatcher
from .config import Settings
from .errors import ApiError, not_found, shown, unprocessable

logger = logging.getLogger("bentoml.ganforge")

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
ENDPOINTS = ("generate", "translate", "upscale")
DIRECTIONS = ("a2b", "b2a")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

# A 65-byte ONNX model (one Identity node, opset 18) used only to ask
# onnxruntime whether the CUDA provider really initialises on this machine:
# `get_available_providers()` lists CUDA whenever the GPU build is installed.
_PROBE_MODEL = base64.b64decode(
    "CAk6NwoQCgF4EgF5IghJZGVudGl0eRIBcFoPCgF4EgoKCAgBEgQKAggBYg8KAXkSCgoICAESBAoCCAFCBAoAEBI="
)


class CardError(ValueError):
    """card.json does not follow docs/model-card.md."""


@dataclass(frozen=True)
class ImageSpec:
    """How to feed an image model (translate, upscale), all from its card."""

    input_name: str
    output_name: str
    in_channels: int
    in_range: tuple[float, float]
    multiple_of: int
    min_size: int
    native_size: tuple[int, int] | None  # (H, W)
    out_channels: int
    out_range: tuple[float, float]
    scale: int
    tile: int
    overlap: int


@dataclass(frozen=True)
class GenerateSpec:
    """How to feed a generator graph: z [N, latent_dim] (+ label [N]) -> [N, C, H, W]."""

    z_name: str
    label_name: str | None
    output_name: str
    latent_dim: int
    classes: tuple[str, ...]
    out_channels: int
    out_range: tuple[float, float]
    size: tuple[int, int] | None  # (H, W)


@dataclass
class ServedModel:
    name: str
    card: dict[str, Any]
    status: str = "unavailable"  # ready | unavailable
    reason: str | None = None
    provider: str | None = None
    sessions: dict[str, ort.InferenceSession] = field(default_factory=dict, repr=False)
    runners: dict[str, SessionBatcher] = field(default_factory=dict, repr=False)
    image_spec: ImageSpec | None = None
    generate_spec: GenerateSpec | None = None
    fingerprint: tuple | None = field(default=None, repr=False)  # folder_fingerprint() when it was read
    loaded_at: str | None = None
    warning: str | None = None  # a newer copy on disk failed to load; this one still serves
    precision: str = "fp32"  # the variant whose files run (GANFORGE_PRECISION)
    precision_note: str | None = None  # why it is not the precision GANFORGE_PRECISION asked for

    @property
    def endpoint(self) -> str | None:
        value = self.card.get("endpoint")
        return value if value in ENDPOINTS else None

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    @property
    def directions(self) -> tuple[str, ...]:
        files = self.card.get("files") or {}
        return DIRECTIONS if isinstance(files, dict) and "a2b" in files and "b2a" in files else ()

    def close(self) -> None:
        """Stop the batcher threads (requests still holding this model then run unbatched)."""
        for runner in self.runners.values():
            runner.close()

    def public(self) -> dict[str, Any]:
        """What GET /models shows: the card's public fields plus serving state."""
        card = self.card
        out: dict[str, Any] = {
            "name": self.name,
            "status": self.status,
            "reason": self.reason,
            "provider": self.provider,
            "loaded_at": self.loaded_at,
        }
        if self.warning:
            out["warning"] = self.warning
        out["precision"] = self.precision
        if self.precision_note:
            out["precision_note"] = self.precision_note
        variants = card.get("variants")
        if isinstance(variants, dict):
            out["variants"] = {name: {k: v[k] for k in ("produced", "max_abs", "psnr_vs_fp32_db", "speedup") if k in v}
                               for name, v in variants.items() if isinstance(v, dict)}
        for key in ("endpoint", "family", "description", "version", "exported_at", "opset", "runtimes",
                    "graph", "input", "output", "tiling", "latent_dim", "classes", "domains", "metrics"):
            if key in card:
                out[key] = card[key]
        if self.directions:
            out["directions"] = list(self.directions)
        if self.runners:
            out["batching"] = {role: runner.describe() for role, runner in self.runners.items()}
        training = card.get("training")
        if isinstance(training, dict):
            out["training"] = {k: training[k] for k in ("dataset", "steps", "git_commit") if k in training}
        files = card.get("files")
        if isinstance(files, dict):
            out["files"] = {
                role: {k: f.get(k) for k in ("sha256", "bytes")} for role, f in files.items() if isinstance(f, dict)
            }
        return out


# ------------------------------------------------------------------ card parsing


def _get(card: dict, *keys: str, default: Any = ...) -> Any:
    node: Any = card
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            if default is not ...:
                return default
            raise CardError(f"card has no {'.'.join(keys)}")
        node = node[key]
    return node


def _int_field(value: Any, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise CardError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def _range(value: Any, what: str) -> tuple[float, float]:
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
            or value[0] == value[1]):
        raise CardError(f"{what} must be [lo, hi] with lo != hi, got {value!r}")
    return float(value[0]), float(value[1])


def _channels(value: Any, what: str) -> int:
    if value not in (1, 3) or isinstance(value, bool):
        raise CardError(f"{what} must be 1 or 3, got {value!r}")
    return int(value)


def _io_names(card: dict, which: str) -> list[str]:
    entries = _get(card, "graph", which)
    if not isinstance(entries, list) or not entries:
        raise CardError(f"graph.{which} must be a non-empty list")
    names = []
    for entry in entries:
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name:
            raise CardError(f"graph.{which} entries need a name")
        names.append(name)
    return names


def file_roles(card: dict) -> dict[str, str]:
    """role -> file name, checked to be a plain file name inside the model folder."""
    files = _get(card, "files")
    if not isinstance(files, dict) or not files:
        raise CardError("files must map roles to files")
    roles = set(files)
    if roles not in ({"generator"}, {"a2b", "b2a"}):
        raise CardError(f"files must have role 'generator' or roles 'a2b' and 'b2a', got {sorted(roles)}")
    out = {}
    for role, entry in files.items():
        path = entry.get("path") if isinstance(entry, dict) else None
        sha = entry.get("sha256") if isinstance(entry, dict) else None
        if (not isinstance(path, str) or not path or path.startswith(".") or "/" in path or "\\" in path
                or "\x00" in path):
            raise CardError(f"files.{role}.path must be a plain file name in the model folder")
        if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise CardError(f"files.{role}.sha256 must be 64 lowercase hex digits")
        out[role] = path
    return out


def parse_image_spec(card: dict, default_tile: int, default_overlap: int) -> ImageSpec:
    (input_name,) = _single(_io_names(card, "inputs"), "graph.inputs")
    output_name = _io_names(card, "outputs")[0]
    endpoint = card["endpoint"]
    scale = _int_field(_get(card, "output", "scale", default=1), "output.scale", 1)
    if endpoint == "translate" and scale != 1:
        raise CardError("a translate model must have output.scale 1")
    native = _get(card, "input", "native_size", default=None)
    if native is not None:
        if not (isinstance(native, (list, tuple)) and len(native) == 2):
            raise CardError("input.native_size must be null or [H, W]")
        native = (_int_field(native[0], "input.native_size[0]", 1), _int_field(native[1], "input.native_size[1]", 1))
    multiple_of = _int_field(_get(card, "input", "multiple_of", default=1), "input.multiple_of", 1)
    min_size = _int_field(_get(card, "input", "min_size", default=1), "input.min_size", 1)
    tiling = card.get("tiling") or {}
    tile = default_tile or _int_field(tiling.get("tile", 256), "tiling.tile", 8)
    # whole multiples, so inner tiles need no padding; never below the graph's minimum
    tile = max(tile // multiple_of * multiple_of, padded_min(min_size, multiple_of))
    if native is not None:
        tile = max(tile, *native)  # a model trained at one size runs whole at that size, never tiled
    overlap = default_overlap if default_overlap >= 0 else _int_field(tiling.get("overlap", 16), "tiling.overlap", 0)
    return ImageSpec(
        input_name=input_name,
        output_name=output_name,
        in_channels=_channels(_get(card, "input", "channels"), "input.channels"),
        in_range=_range(_get(card, "input", "range"), "input.range"),
        multiple_of=multiple_of,
        min_size=min_size,
        native_size=native,
        out_channels=_channels(_get(card, "output", "channels"), "output.channels"),
        out_range=_range(_get(card, "output", "range"), "output.range"),
        scale=scale,
        tile=tile,
        overlap=min(overlap, tile // 2),
    )


def padded_min(min_size: int, multiple_of: int) -> int:
    return math.ceil(min_size / multiple_of) * multiple_of


def _single(names: list[str], what: str) -> tuple[str]:
    if len(names) != 1:
        raise CardError(f"{what} must have exactly one entry for an image model")
    return (names[0],)


def parse_generate_spec(card: dict) -> GenerateSpec:
    inputs = _io_names(card, "inputs")
    if "z" not in inputs or not set(inputs) <= {"z", "label"}:
        raise CardError("a generate graph takes inputs 'z' and (optionally) 'label'")
    classes = card.get("classes") or []
    if not isinstance(classes, list) or not all(isinstance(c, str) and c for c in classes):
        raise CardError("classes must be a list of names")
    if "label" in inputs and not classes:
        raise CardError("a graph with a 'label' input needs classes")
    size = _get(card, "output", "size", default=None)
    if size is not None:
        if not (isinstance(size, (list, tuple)) and len(size) == 2):
            raise CardError("output.size must be [H, W]")
        size = (_int_field(size[0], "output.size[0]", 1), _int_field(size[1], "output.size[1]", 1))
    return GenerateSpec(
        z_name="z",
        label_name="label" if "label" in inputs else None,
        output_name=_io_names(card, "outputs")[0],
        latent_dim=_int_field(_get(card, "latent_dim"), "latent_dim", 1),
        classes=tuple(classes),
        out_channels=_channels(_get(card, "output", "channels"), "output.channels"),
        out_range=_range(_get(card, "output", "range"), "output.range"),
        size=size,
    )


# ------------------------------------------------------------------ providers


def cuda_options(settings: Settings) -> dict[str, str]:
    # HEURISTIC: the graphs take dynamic H, W, and EXHAUSTIVE would re-benchmark
    # every new input shape. kSameAsRequested: the arena does not double past need.
    return {
        "device_id": str(settings.cuda_device_id),
        "arena_extend_strategy": "kSameAsRequested",
        "cudnn_conv_algo_search": "HEURISTIC",
    }


def preload_cuda_libraries() -> None:
    """Load CUDA/cuDNN from the nvidia-* pip wheels when they are installed.

    The GPU Bento installs `onnxruntime-gpu[cuda,cudnn]`, whose CUDA 13 runtime
    lives in site-packages, not on the loader path; `preload_dlls` finds it.
    Harmless where the libraries are on the system path or absent.
    """
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    try:
        preload()
    except Exception:  # noqa: BLE001 - a failed preload only means the probe decides
        logger.info("onnxruntime.preload_dlls() could not load the CUDA libraries", exc_info=True)


def resolve_providers(settings: Settings) -> list:
    """The provider list every session gets, after checking CUDA really works here.

    Raises RuntimeError for GANFORGE_DEVICE=cuda when CUDA cannot be used.
    """
    if settings.device == "cpu":
        return [CPU]
    cuda_entry = (CUDA, cuda_options(settings))
    works = False
    if CUDA in ort.get_available_providers():
        preload_cuda_libraries()
        try:
            probe = ort.InferenceSession(_PROBE_MODEL, providers=[cuda_entry, CPU])
            works = CUDA in probe.get_providers()
        except Exception:  # noqa: BLE001 - any failure means: no CUDA
            logger.exception("onnxruntime CUDA probe failed")
    if works:
        logger.info("onnxruntime: CUDA provider works (device %d)", settings.cuda_device_id)
        return [cuda_entry, CPU]
    if settings.device == "cuda":
        raise RuntimeError(
            "GANFORGE_DEVICE=cuda but onnxruntime cannot use the CUDA provider here "
            "(no GPU, or CUDA/cuDNN libraries missing); use GANFORGE_DEVICE=auto or cpu"
        )
    logger.info("onnxruntime: CUDA provider not usable here, running on CPU")
    return [CPU]


def session_options(settings: Settings) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = settings.ort_threads
    options.inter_op_num_threads = 1
    return options


# ------------------------------------------------------------------ registry


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


def _log_model(model: ServedModel) -> None:
    if model.ready:
        logger.info("model %s (%s, %s) ready on %s, %s", model.name, model.endpoint,
                    model.card.get("version"), model.provider, model.precision)
    else:
        logger.error("model %s unavailable: %s", model.name, model.reason)


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
            models[folder.name] = model = load_model(folder, settings, providers)
            _log_model(model)
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
                model = load_model(folder, self.settings, self.providers)
                model.fingerprint = fingerprint  # what was on disk before reading: a change during the read shows next time
                if not model.ready and old is not None and old.ready:
                    model.close()
                    old.warning = (f"a changed copy on disk failed to load ({model.reason}); "
                                   f"still serving version {old.card.get('version')}")
                    logger.error("model %s: %s", name, old.warning)
                    fresh[name] = old
                    report["kept"].append({"name": name, "reason": model.reason})
                    continue
                _log_model(model)
                fresh[name] = model
                report["loaded"].append({"name": name, "status": model.status, "version": model.card.get("version"),
                                         "reason": model.reason})
            report["removed"] = sorted(set(current) - set(fresh))
            self.models = fresh  # the swap: requests that already hold a model keep its sessions
            kept = {id(m) for m in fresh.values()}
            for old in current.values():
                if id(old) not in kept:
                    old.close()
            self.reloads += 1
            changed = len(report["loaded"]) + len(report["removed"]) + len(report["kept"])
            if changed:
                logger.info("reload: %d loaded, %d kept, %d removed, %d unchanged", len(report["loaded"]),
                            len(report["kept"]), len(report["removed"]), len(report["unchanged"]))
            return report

    def unavailable(self) -> list[str]:
        return [name for name, m in self.models.items() if not m.ready]

    def get(self, name: str) -> ServedModel | None:
        # A dict lookup only: a name from a request never reaches the filesystem.
        return self.models.get(name) if isinstance(name, str) else None

    def of_endpoint(self, endpoint: str) -> list[ServedModel]:
        return [m for m in self.models.values() if m.endpoint == endpoint]

    def pick(self, endpoint: str, name: str | None, default: str | None = None) -> ServedModel:
        """The ready model a request asked for (or the endpoint's default), else ApiError."""
        models = self.models  # one snapshot: a concurrent reload swaps the dict, never edits it
        if name is None or name == "":
            candidates = [m for m in models.values() if m.endpoint == endpoint]
            if not candidates:
                raise not_found(f"no {endpoint} model is served")
            if default is not None and models.get(default) in candidates:
                model = models[default]
            elif len(candidates) == 1 or default is not None:
                model = candidates[0]
            else:
                names = ", ".join(m.name for m in candidates)
                raise ApiError(400, f"several {endpoint} models are served ({names}); name one in 'model'")
        else:
            model = models.get(name) if isinstance(name, str) else None
            if model is None:
                raise not_found(f"unknown model {shown(name)}; GET /models lists them")
            if model.endpoint != endpoint and model.endpoint is not None:  # None: the card is unreadable
                raise unprocessable(f"model {shown(name)} is a {model.endpoint} model, not a {endpoint} model")
        if not model.ready:
            raise ApiError(503, f"model {model.name!r} is unavailable: {model.reason}")
        return model

    def describe(self) -> dict[str, Any]:
        models = self.models
        return {"device": self.device, "unavailable": [n for n, m in models.items() if not m.ready],
                "reloads": self.reloads, "models": [m.public() for m in models.values()]}


# Which provider each reduced-precision variant is for: int8 QDQ graphs fuse into the CPU provider's
# VNNI kernels; fp16 graphs (float32 inputs/outputs, fp16 inside) are for the CUDA provider's tensor
# cores, and on the CPU provider they would only add casts.
VARIANT_PROVIDER = {"int8": CPU, "fp16": CUDA}
# GANFORGE_BATCH_MAX=0 (auto): batch up to this many rows on CUDA, where a merged run fills the GPU;
# on the CPU provider a merged run was no faster per row and served 16 clients 0-10% slower (make bench,
# serving), so auto is off there.
AUTO_BATCH_MAX = 16


def variant_files(card: dict, roles: dict[str, str], wanted: str,
                  providers: list) -> tuple[dict[str, tuple[str, str]], str | None]:
    """role -> (file, sha256) of the `wanted` precision's files; fp32's and the reason when it cannot be used."""
    fp32 = {role: (path, card["files"][role]["sha256"]) for role, path in roles.items()}
    if wanted == "fp32":
        return fp32, None
    first = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
    runs_on = VARIANT_PROVIDER[wanted]
    if first != runs_on:
        return fp32, f"{wanted} is a variant for {runs_on}; on {first} the fp32 graphs run"
    entry = (card.get("variants") or {}).get(wanted)
    files = entry.get("files") if isinstance(entry, dict) else None
    if not isinstance(files, dict) or set(files) != set(roles):
        maker = "python -m training quantize" if wanted == "int8" else "python -m training export (--fp16)"
        return fp32, f"the card has no {wanted} variant for every role ({maker} makes one)"
    try:
        paths = file_roles({"files": files})
    except CardError as exc:
        return fp32, f"variants.{wanted} is invalid: {exc}"
    return {role: (paths[role], files[role]["sha256"]) for role in roles}, None


def load_model(folder: Path, settings: Settings, providers: list) -> ServedModel:
    """Read, check and load one model folder at GANFORGE_PRECISION's precision; never raises for a bad model.

    A requested variant that is missing from the card, or whose files fail (missing, sha256, onnxruntime),
    falls back to the fp32 files with a warning; `precision` / `precision_note` say what runs and why.
    """
    wanted = settings.precision_for(folder.name)
    model = _load_model(folder, settings, providers, wanted)
    if wanted != "fp32" and not model.ready and model.precision == wanted:  # the variant's own files failed
        note = f"the {wanted} variant failed to load ({model.reason})"
        model.close()
        model = _load_model(folder, settings, providers, "fp32")
        model.precision_note = note
    if model.precision_note and model.card:
        logger.warning("model %s: %s requested, serving %s: %s", folder.name, wanted, model.precision,
                       model.precision_note)
    return model


def _load_model(folder: Path, settings: Settings, providers: list, wanted: str) -> ServedModel:
    model = ServedModel(name=folder.name, card={}, fingerprint=folder_fingerprint(folder),
                        loaded_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    try:
        card = json.loads((folder / "card.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        model.reason = "card.json is missing"
        return model
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        model.reason = f"card.json is unreadable ({type(exc).__name__})"
        return model
    if not isinstance(card, dict):
        model.reason = "card.json is not a JSON object"
        return model
    model.card = card
    try:
        if card.get("schema") != 1:
            raise CardError(f"unsupported card schema {card.get('schema')!r} (this service reads schema 1)")
        if card.get("name") != folder.name:
            raise CardError(f"card name {shown(card.get('name'))} differs from the folder name")
        endpoint = card.get("endpoint")
        if endpoint not in ENDPOINTS:
            raise CardError(f"endpoint must be one of {', '.join(ENDPOINTS)}, got {shown(endpoint)}")
        roles = file_roles(card)
        if endpoint != "translate" and set(roles) != {"generator"}:
            raise CardError(f"a {endpoint} model has one 'generator' file")
        if endpoint == "generate":
            model.generate_spec = parse_generate_spec(card)
        else:
            model.image_spec = parse_image_spec(card, settings.tile, settings.tile_overlap)
    except CardError as exc:
        model.reason = f"invalid card: {exc}"
        return model

    files, model.precision_note = variant_files(card, roles, wanted, providers)
    if model.precision_note is None:
        model.precision = wanted
    expected_inputs = set(_io_names(card, "inputs"))
    expected_output = _io_names(card, "outputs")[0]
    options = session_options(settings)
    for role, (filename, sha256) in files.items():
        path = folder / filename
        try:
            data = path.read_bytes()
        except OSError:
            model.reason = f"file {filename} ({role}) is missing or unreadable"
            return model
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256:
            model.reason = f"sha256 mismatch for {filename} ({role}): the file is corrupt or was changed"
            return model
        try:
            session = ort.InferenceSession(data, options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises several types
            logger.error("model %s: onnxruntime cannot load %s: %s", folder.name, filename, exc)
            model.reason = f"onnxruntime cannot load {filename} ({role})"
            return model
        inputs = {i.name for i in session.get_inputs()}
        outputs = {o.name for o in session.get_outputs()}
        if inputs != expected_inputs or expected_output not in outputs:
            model.reason = (f"{filename} has inputs {sorted(inputs)} and outputs {sorted(outputs)}, "
                            f"the card says {sorted(expected_inputs)} -> {expected_output}")
            return model
        model.sessions[role] = session
        model.provider = session.get_providers()[0]
    if settings.device == "cuda" and model.provider != CUDA:
        model.reason = f"GANFORGE_DEVICE=cuda but onnxruntime placed it on {model.provider}"
        model.sessions.clear()
        return model
    batch_max = settings.batch_max or (AUTO_BATCH_MAX if model.provider == CUDA else 1)
    if batch_max > 1:
        model.runners = {role: SessionBatcher(session.run, batch_max, f"{model.name}-{role}")
                         for role, session in model.sessions.items()}
    model.status = "ready"
    return model
