"""One served model: read its card (through `contract`), verify its files, open its sessions.

The card is read and validated by `contract.folder.read_card` and nothing else. A model
whose card is invalid or whose file is missing, corrupt or sha256-mismatched is still a
`ServedModel`, `unavailable` with a reason, so the others serve. Each ONNX file is read
once, its sha256 checked on those very bytes, and the same bytes handed to the backend
(onnxruntime's `runtime.make_session` or OpenVINO's `backends.make_openvino_session`), so
what runs is what was verified.

Which backend and precision run (`plan`): GANFORGE_BACKEND and GANFORGE_PRECISION, decided
per model by `service/backends.py` (bf16 only on OpenVINO, where the CPU has it and the card's
gate passed); `backend`, `device`, `precision` and `precision_reason` say what runs and why.
A graph OpenVINO cannot compile runs on onnxruntime instead (`precision_note` says so).

What a pipeline needs (`ImageSpec`, `GenerateSpec`) is derived here from the typed card
plus the settings' tile overrides; `ServedModel.provider` is what `session.get_providers()`
says actually runs. What only a server adds (batchers, per-model metrics) the service attaches
to the loaded model itself (service/loading.py).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from contract import Card, CardError, CardUnreadable
from contract.folder import read_card, sha256_bytes

from .backends import (ONNXRUNTIME, OPENVINO, OrtSession, choose_backend, choose_float_precision,
                       make_openvino_session, native_bf16, openvino_installed)
from .runtime import CPU, CUDA, make_session, session_options
from .settings import RuntimeConfig
from .tileplan import plan_tile

logger = logging.getLogger("bentoml.ganforge")

# the card's blocks GET /models shows as they are (after endpoint and default), in this order
PUBLIC_CARD_KEYS = ("family", "description", "version", "exported_at", "opset", "runtimes", "graph", "input",
                    "output", "tiling", "latent_dim", "classes", "domains", "metrics")
PUBLIC_VARIANT_KEYS = ("produced", "max_abs", "psnr_vs_fp32_db", "psnr_vs_fp32_db_min", "gate_db", "passed",
                       "speedup")
PUBLIC_TRAINING_KEYS = ("dataset", "steps", "git_commit")
# why a model is unavailable, as data (ServedModel.failure): the fallback decisions branch on these
CARD_FAILED, FILE_FAILED, RUNTIME_FAILED, IO_FAILED, DEVICE_FAILED = "card", "file", "runtime", "io", "device"
# what /upscale and /translate use when neither the card nor GANFORGE_TILE / _OVERLAP say
DEFAULT_TILE = 256
DEFAULT_OVERLAP = 16


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
    tile: int  # the square tile of a big image (measured where a curve is; else the card's / GANFORGE_TILE)
    overlap: int
    # (edge, seconds per padded input pixel) measured at load (core/tiletune.py): each image then runs in
    # the tile `tile_for` plans for its size; empty: always the square `tile`
    tile_curve: tuple[tuple[int, float], ...] = ()

    def tile_for(self, height: int, width: int) -> int:
        """The tile a height x width model input runs in (core/tileplan.py)."""
        if not self.tile_curve:
            return self.tile
        return plan_tile(height, width, self.tile_curve, self.overlap, self.multiple_of, self.min_size)


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
    card: Card | None = None  # None: card.json is missing, unreadable or invalid (see reason)
    status: str = "unavailable"  # ready | unavailable
    reason: str | None = None
    failure: str | None = None  # which step made it unavailable: CARD_FAILED, FILE_FAILED, RUNTIME_FAILED, ...
    provider: str | None = None
    backend: str | None = None  # onnxruntime | openvino: what runs the graphs
    device: str | None = None  # cpu | cuda (as /models' top-level device)
    sessions: dict[str, Any] = field(default_factory=dict, repr=False)  # OrtSession / OpenVinoSession
    runners: dict[str, Any] = field(default_factory=dict, repr=False)  # role -> a batcher (service/batching.py)
    image_spec: ImageSpec | None = None
    generate_spec: GenerateSpec | None = None
    fingerprint: tuple | None = field(default=None, repr=False)  # registry.folder_fingerprint() before the read
    loaded_at: str | None = None
    warning: str | None = None  # a newer copy on disk failed to load; this one still serves
    precision: str = "fp32"  # the variant whose files run (GANFORGE_PRECISION)
    precision_note: str | None = None  # why it is not the precision GANFORGE_PRECISION asked for
    precision_reason: str | None = None  # why this backend runs this precision (always set once planned)
    observe_run: Callable[[int], None] | None = field(default=None, repr=False)  # rows of each graph run (metrics)
    autotune: dict[str, Any] | None = None  # core/tuned.py: the measured table and choice, or why none
    tiles: dict[str, Any] | None = None  # core/tiletune.py: the measured tile curve and choice, or why none

    @property
    def endpoint(self) -> str | None:
        return self.card.endpoint if self.card is not None else None

    @property
    def version(self) -> str | None:
        return self.card.version if self.card is not None else None

    @property
    def is_default(self) -> bool:
        """The card says: serve me when a request to my endpoint names no model."""
        return self.card is not None and self.card.default

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    @property
    def directions(self) -> tuple[str, ...]:
        return self.card.directions if self.card is not None else ()

    def close(self) -> None:
        """Stop the batcher threads (requests still holding this model then run unbatched)."""
        for runner in self.runners.values():
            runner.close()

    def public(self) -> dict[str, Any]:
        """What GET /models shows: the card's public fields plus serving state."""
        out: dict[str, Any] = {
            "name": self.name,
            "status": self.status,
            "reason": self.reason,
            "provider": self.provider,
            "backend": self.backend,
            "device": self.device,
            "loaded_at": self.loaded_at,
        }
        if self.warning:
            out["warning"] = self.warning
        out["precision"] = self.precision
        out["precision_reason"] = self.precision_reason
        if self.sessions:
            out["runtime"] = {role: session.describe() for role, session in self.sessions.items()}
        if self.precision_note:
            out["precision_note"] = self.precision_note
        if self.autotune is not None:
            out["autotune"] = self.autotune
        if self.tiles is not None:
            out["tiles"] = self.tiles
        card = self.card.to_dict() if self.card is not None else {}
        if "variants" in card:
            out["variants"] = {name: {k: v[k] for k in PUBLIC_VARIANT_KEYS if k in v}
                               for name, v in card["variants"].items()}
        if "endpoint" in card:
            out["endpoint"] = card["endpoint"]
        out["default"] = self.is_default
        out.update((key, card[key]) for key in PUBLIC_CARD_KEYS if key in card)
        if self.directions:
            out["directions"] = list(self.directions)
        if self.runners:
            out["batching"] = {role: runner.describe() for role, runner in self.runners.items()}
        if "training" in card:
            out["training"] = {k: card["training"][k] for k in PUBLIC_TRAINING_KEYS if k in card["training"]}
        if self.card is not None:
            out["files"] = {role: {"sha256": f.sha256, "bytes": f.bytes} for role, f in self.card.files.items()}
        return out


# ------------------------------------------------------------------ specs from the typed card


def padded_min(min_size: int, multiple_of: int) -> int:
    return math.ceil(min_size / multiple_of) * multiple_of


def image_spec(card: Card, default_tile: int, default_overlap: int) -> ImageSpec:
    """An image model's spec; `default_tile` (0: the card's) and `default_overlap` (-1: the card's) are
    GANFORGE_TILE / GANFORGE_TILE_OVERLAP."""
    assert card.input is not None  # the contract: an image model has an input block
    multiple_of, min_size, native = card.input.multiple_of, card.input.min_size, card.input.native_size
    tile = default_tile or (card.tiling.tile if card.tiling is not None else DEFAULT_TILE)
    # whole multiples, so inner tiles need no padding; never below the graph's minimum
    tile = max(tile // multiple_of * multiple_of, padded_min(min_size, multiple_of))
    if native is not None:
        tile = max(tile, *native)  # a model trained at one size runs whole at that size, never tiled
    overlap = default_overlap if default_overlap >= 0 else (
        card.tiling.overlap if card.tiling is not None else DEFAULT_OVERLAP)
    return ImageSpec(
        input_name=card.graph.inputs[0].name,
        output_name=card.graph.output_name,
        in_channels=card.input.channels,
        in_range=card.input.range,
        multiple_of=multiple_of,
        min_size=min_size,
        native_size=native,
        out_channels=card.output.channels,
        out_range=card.output.range,
        scale=card.scale,
        tile=tile,
        overlap=min(overlap, tile // 2),
    )


def generate_spec(card: Card) -> GenerateSpec:
    inputs = card.graph.input_names()
    return GenerateSpec(
        z_name="z",
        label_name="label" if "label" in inputs else None,
        output_name=card.graph.output_name,
        latent_dim=card.latent_dim,
        classes=tuple(card.classes or ()),
        out_channels=card.output.channels,
        out_range=card.output.range,
        size=card.output.size,
    )


# ------------------------------------------------------------------ files and precision


# Which provider each reduced-precision variant is for: int8 QDQ graphs fuse into the CPU provider's
# VNNI kernels; fp16 graphs (float32 inputs/outputs, fp16 inside) are for the CUDA provider's tensor
# cores, and on the CPU provider they would only add casts.
VARIANT_PROVIDER = {"int8": CPU, "fp16": CUDA}


def variant_files(card: Card, roles: dict[str, str], wanted: str,
                  providers: list) -> tuple[dict[str, tuple[str, str]], str | None]:
    """role -> (file, sha256) of the `wanted` precision's files for `roles` (role -> the fp32 file);
    fp32's and the reason when the variant cannot be used."""
    fp32 = {role: (path, card.files[role].sha256) for role, path in roles.items()}
    if wanted == "fp32":
        return fp32, None
    first = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
    runs_on = VARIANT_PROVIDER[wanted]
    if first != runs_on:
        return fp32, f"{wanted} is a variant for {runs_on}; on {first} the fp32 graphs run"
    variant = card.variants.get(wanted)
    if variant is None or set(variant.files) != set(roles):
        maker = "python -m training quantize" if wanted == "int8" else "python -m training export (--fp16)"
        return fp32, f"the card has no {wanted} variant for every role ({maker} makes one)"
    return {role: (variant.files[role].path, variant.files[role].sha256) for role in roles}, None


@dataclass(frozen=True)
class Plan:
    """What one model runs: backend, precision, the files (role -> (file, sha256)), and why."""

    backend: str
    precision: str
    files: dict[str, tuple[str, str]]
    reason: str
    note: str | None = None  # why it is not what GANFORGE_PRECISION asked for (a warning)


def plan(card: Card, wanted: str, backend: str, providers: list) -> Plan:
    """The backend/precision/files for GANFORGE_PRECISION `wanted` on `backend` (backends.choose_backend)."""
    roles = {role: entry.path for role, entry in card.files.items()}
    if wanted in VARIANT_PROVIDER:
        files, note = variant_files(card, roles, wanted, providers)
        if note is None:
            return Plan(backend, wanted, files, f"GANFORGE_PRECISION={wanted}: the card's {wanted} variant")
        return Plan(backend, "fp32", files, f"GANFORGE_PRECISION={wanted}: fp32 because {note}", note)
    bf16_here = native_bf16() if backend == OPENVINO else (False, "")
    precision, reason, note = choose_float_precision(wanted, backend, bf16_here, card.variants.get("bf16"),
                                                     card.version)
    return Plan(backend, precision, variant_files(card, roles, "fp32", providers)[0], reason, note)


# ------------------------------------------------------------------ loading


def load_model(folder: Path, settings: RuntimeConfig, providers: list,
               on_wait: Callable[[float], None] | None = None) -> ServedModel:
    """Read, check and load one model folder on GANFORGE_BACKEND at GANFORGE_PRECISION; never raises for a bad model.

    A requested variant that is missing from the card, or whose files fail (missing, sha256, the runtime),
    falls back to fp32 with a warning; a graph OpenVINO cannot compile runs on onnxruntime. `backend`,
    `precision`, `precision_reason` and `precision_note` say what runs and why. `on_wait`: see
    backends.OpenVinoSession.
    """
    wanted = settings.precision_for(folder.name)
    backend, backend_reason = choose_backend(settings.backend, providers, openvino_installed())
    model = _load_model(folder, settings, providers, wanted, backend, on_wait)
    if backend == OPENVINO and not model.ready and model.failure == RUNTIME_FAILED:
        note = f"{model.reason}: onnxruntime runs it"
        model.close()
        model = _load_model(folder, settings, providers, wanted, ONNXRUNTIME, on_wait)
        model.precision_note = note if model.precision_note is None else f"{note}; {model.precision_note}"
        backend_reason = note
    if wanted not in ("auto", "fp32") and not model.ready and model.precision == wanted:  # the variant failed
        note = f"the {wanted} variant failed to load ({model.reason})"
        model.close()
        model = _load_model(folder, settings, providers, "fp32", model.backend or backend, on_wait)
        model.precision_note = note
    if model.precision_note and model.card is not None:
        logger.warning("model %s: %s requested, serving %s: %s", folder.name, wanted, model.precision,
                       model.precision_note)
    if model.ready:
        logger.info("model %s: backend %s (%s), device %s, precision %s (%s)", folder.name, model.backend,
                    backend_reason, model.device, model.precision, model.precision_reason)
    return model


def card_problem(exc: CardError) -> str:
    """The reason a model is unavailable when its card cannot be read."""
    if isinstance(exc, CardUnreadable):  # missing, not JSON, not an object: says so itself
        return str(exc)
    return f"invalid card: {exc}"


def _load_model(folder: Path, settings: RuntimeConfig, providers: list, wanted: str, backend: str,
                on_wait: Callable[[float], None] | None) -> ServedModel:
    model = ServedModel(name=folder.name, loaded_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    try:
        card = read_card(folder, check_folder_name=True)
    except OSError as exc:
        model.reason, model.failure = f"card.json is unreadable ({type(exc).__name__})", CARD_FAILED
        return model
    except CardError as exc:
        model.reason, model.failure = card_problem(exc), CARD_FAILED
        return model
    model.card = card
    if card.endpoint == "generate":
        model.generate_spec = generate_spec(card)
    else:
        model.image_spec = image_spec(card, settings.tile, settings.tile_overlap)
    chosen = plan(card, wanted, backend, providers)
    model.backend, model.precision = chosen.backend, chosen.precision
    model.precision_reason, model.precision_note = chosen.reason, chosen.note
    if not _open_sessions(model, folder, chosen, settings, providers, on_wait):
        return model
    if settings.device == "cuda" and model.provider != CUDA:
        model.reason = f"GANFORGE_DEVICE=cuda but onnxruntime placed it on {model.provider}"
        model.failure = DEVICE_FAILED
        model.sessions.clear()
        return model
    model.status = "ready"
    return model


def open_session(data: bytes, chosen: Plan, settings: RuntimeConfig, providers: list,
                 on_wait: Callable[[float], None] | None = None) -> Any:
    """One graph on the plan's backend, from the sha256-checked bytes."""
    if chosen.backend == OPENVINO:
        return make_openvino_session(data, chosen.precision, settings.ort_threads, on_wait=on_wait)
    return OrtSession(make_session(data, session_options(settings.ort_threads), providers=providers),
                      chosen.precision)


def _open_sessions(model: ServedModel, folder: Path, chosen: Plan, settings: RuntimeConfig, providers: list,
                   on_wait: Callable[[float], None] | None) -> bool:
    """One session per role on the sha256-checked bytes; False (and `model.reason`) at the first failure."""
    assert model.card is not None
    expected_inputs = set(model.card.graph.input_names())
    expected_output = model.card.graph.output_name
    runtime = "OpenVINO cannot compile" if chosen.backend == OPENVINO else "onnxruntime cannot load"
    for role, (filename, sha256) in chosen.files.items():
        try:
            data = (folder / filename).read_bytes()
        except OSError:
            model.reason, model.failure = f"file {filename} ({role}) is missing or unreadable", FILE_FAILED
            return False
        if sha256_bytes(data) != sha256:
            model.reason = f"sha256 mismatch for {filename} ({role}): the file is corrupt or was changed"
            model.failure = FILE_FAILED
            return False
        try:
            session = open_session(data, chosen, settings, providers, on_wait)
        except Exception as exc:  # noqa: BLE001 - onnxruntime and OpenVINO raise several types
            logger.error("model %s: %s %s: %s", folder.name, runtime, filename, exc)
            model.reason, model.failure = f"{runtime} {filename} ({role})", RUNTIME_FAILED
            return False
        inputs = {i.name for i in session.get_inputs()}
        outputs = {o.name for o in session.get_outputs()}
        if inputs != expected_inputs or expected_output not in outputs:
            model.reason = (f"{filename} has inputs {sorted(inputs)} and outputs {sorted(outputs)}, "
                            f"the card says {sorted(expected_inputs)} -> {expected_output}")
            model.failure = IO_FAILED
            return False
        model.sessions[role] = session
        model.provider = session.get_providers()[0]
        model.device = session.describe()["device"]
    return True
