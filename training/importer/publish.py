"""Publish imported weights as one model folder, through export's machinery (training/export/).

    import_weights(ImportOptions(file=FILE, file_b=G_B or None, name=NAME, out=OUT, ...)) -> ImportResult

The weights are loaded (load.py: weights only) and their network rebuilt (detect.py) before anything
is written; then, under NAME's lock, in a staging folder swapped in atomically as OUT/NAME (export's
`publish_folder`): each role is traced by the TorchScript exporter at a small size meeting the
graph's constraint, checked by onnx.checker and onnxruntime, rewritten for the CPU provider, run at
a second, non-square size (a graph frozen at its traced size is refused, not published), measured
against torch on random inputs in the value range (two sizes, batch 1 and 2: the parity gate), given
an fp16 variant, and described by a card with a `provenance` block instead of a `training` one.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from contract import Card, Provenance, SourceFile
from contract.folder import check_name, sha256_file, utc_now

from ..export.build import build_graphs
from ..export.card import eval_mode_notes, graph_fields, io_fields, publish_card
from modelops.numerics import Case, abs_diff, parity_sizes

from ..bf16 import with_bf16_gate
from ..export.options import DEFAULT_FP16_TOLERANCE, DEFAULT_TOLERANCE, BuildOptions, ExportError
from ..export.parity import random_cases
from ..export.publish import publish_folder
from .errors import ImportFailed

TRACE_EDGE = 32  # traced at the smallest square of at least this edge the graph takes
EXPORTER = "torchscript"  # handled more spandrel archs than dynamo (issue 15)
REAL_NOTE = "no real inputs: imported weights come without a dataset (random inputs in the value range only)"


class FrozenShape(ExportError):
    """The exported graph only runs (or only computes right) at the size it was traced at."""


class PairMismatch(ImportFailed):
    """FILE_B does not make a CycleGAN pair with FILE."""


class ExportFailed(ExportError):
    """The rebuilt network does not trace to ONNX."""


@dataclass(frozen=True, kw_only=True)
class ImportOptions:
    """`python -m training import FILE [FILE_B] --name NAME ...` (its --help says what each does)."""
    file: str | Path  # the weights (G_A of a CycleGAN pair)
    file_b: str | Path | None = None  # G_B of a CycleGAN pair
    name: str  # the model's folder under `out`
    out: str | Path = "models"
    arch: str | None = None  # force the architecture where the weights are ambiguous
    license: str | None = None  # the weights' licence as the user states it ("unknown" when not)
    batch_stats: bool = False  # junyanz: per-image batch statistics (their test.py without --eval)
    default: bool = False
    fp16: bool = True
    fp16_tolerance: float = DEFAULT_FP16_TOLERANCE
    tolerance: float = DEFAULT_TOLERANCE
    description: str | None = None
    optimize: bool = True

    @property
    def files(self) -> list[str | Path]:
        return [self.file] + ([self.file_b] if self.file_b else [])

    def build_options(self, fp16: bool) -> BuildOptions:
        options = BuildOptions(tolerance=self.tolerance, fp16=fp16, fp16_tolerance=self.fp16_tolerance,
                               description=self.description, exporter=EXPORTER, data_root=None,
                               optimize=self.optimize, default=self.default)
        options.check()
        return options


@dataclass
class Source:
    """One weights file: where it goes (role), what it held, what was detected in it."""
    path: Path
    role: str
    detected: Any  # detect.Detected
    info: dict[str, Any] = field(default_factory=dict)  # load.load_weights' account of the file
    sha256: str = ""
    bytes: int = 0

    def source_file(self) -> SourceFile:
        return SourceFile(file=self.path.name, sha256=self.sha256, bytes=self.bytes, role=self.role)


@dataclass
class ImportResult:
    path: Path
    card: Card
    parity_max_abs: float


# ------------------------------------------------------------------ reading the files


def assign_roles(files: list[Path]) -> list[tuple[Path, str]]:
    """One file: `generator`. Two: `a2b` (G_A) and `b2a` (G_B), by their junyanz names when both say
    (`latest_net_G_B.pth latest_net_G_A.pth` is the same pair), else in the order given."""
    if len(files) == 1:
        return [(files[0], "generator")]
    if len(files) != 2:
        raise ExportError(f"give one weights file, or the two of a CycleGAN pair (got {len(files)})")

    def side(p: Path) -> str | None:
        found = re.search(r"(?:^|[^A-Za-z0-9])G_?([AB])(?:$|[^A-Za-z0-9])", p.stem)
        return found.group(1) if found else None

    first, second = files
    if side(first) == "B" and side(second) == "A":
        first, second = second, first
    return [(first, "a2b"), (second, "b2a")]


def read_source(path: Path, role: str, options: ImportOptions) -> Source:
    """Load (weights only) and detect one file; ImportFailed (load/detect) says what is wrong."""
    from .detect import detect
    from .load import load_weights

    state_dict, info = load_weights(path)
    try:
        detected = detect(state_dict, arch=options.arch, batch_stats=options.batch_stats)
    except ImportFailed as e:  # say which file (load's errors already do)
        raise type(e)(f"{path.name}: {e}") from e
    return Source(path, role, detected, dict(info or {}), sha256_file(path), path.stat().st_size)


def check_pair(a: Source, b: Source) -> None:
    """Two files make one CycleGAN model only as two junyanz generators of one layout, channels mirrored."""
    da, db = a.detected, b.detected
    for src in (a, b):
        if not str(src.detected.arch).startswith("junyanz"):
            raise PairMismatch(f"two files make a CycleGAN pair (G_A, G_B) of junyanz generators; "
                               f"{src.path.name} is {src.detected.arch}")
    if da.arch != db.arch:
        raise PairMismatch(f"{a.path.name} is {da.arch} but {b.path.name} is {db.arch}: not one CycleGAN pair")
    if (da.in_channels, da.out_channels) != (db.out_channels, db.in_channels):
        raise PairMismatch(f"{a.path.name} maps {da.in_channels} -> {da.out_channels} channels but "
                           f"{b.path.name} maps {db.in_channels} -> {db.out_channels}: G_B must map back")
    if tuple(da.value_range) != tuple(db.value_range) or da.scale != db.scale:
        raise PairMismatch(f"{a.path.name} and {b.path.name} differ in value range or scale: not one pair")


def read_sources(files: list[str | Path], options: ImportOptions) -> list[Source]:
    """Every file read and detected (a missing one named before any is read); a pair checked."""
    paths = [Path(f) for f in files]
    for what, path in zip(("FILE", "FILE_B"), paths):
        if not path.is_file():
            raise FileNotFoundError(f"{what} {'is not a file' if path.exists() else 'not found'}: {path}")
    sources = [read_source(p, role, options) for p, role in assign_roles(paths)]
    if len(sources) == 2:
        check_pair(*sources)
    return sources


# ------------------------------------------------------------------ export specs and the shape probe


def trace_edge(multiple_of: int, min_size: int) -> int:
    m = max(1, int(multiple_of))
    return max(-(-max(TRACE_EDGE, int(min_size)) // m) * m, m)


def tiling_block(tile: int | None, multiple_of: int) -> dict[str, int] | None:
    """The card's tiling hint: the detected tile (whole multiples), overlap ~ tile / 8, at least 8."""
    if not tile:
        return None
    m = max(1, int(multiple_of))
    tile = max(int(tile) // m * m, m, 8)
    return {"tile": tile, "overlap": min(max(8, tile // 8), tile // 2)}


def export_spec(detected):
    """The ExportSpec of one detected network: traced at a small square meeting its constraint."""
    import torch

    from ..recipes.base import IMAGE_AXES, ExportSpec

    lo, hi = (float(v) for v in detected.value_range)
    io = {"range": [lo, hi]}
    card: dict[str, Any] = {
        "input": {"channels": int(detected.in_channels), **io, "multiple_of": int(detected.multiple_of),
                  "min_size": int(detected.min_size), "native_size": None},
        "output": {"channels": int(detected.out_channels), **io, "scale": int(detected.scale)}}
    tiling = tiling_block(detected.tile, detected.multiple_of)
    if tiling:
        card["tiling"] = tiling
    edge = trace_edge(detected.multiple_of, detected.min_size)
    noise = torch.rand(1, int(detected.in_channels), edge, edge, generator=torch.Generator().manual_seed(0))
    example = lo + noise * (hi - lo)
    detected.module.eval()
    return ExportSpec(detected.module, (example,), ["image"], IMAGE_AXES, card)


def first_line(e: BaseException) -> str:
    """`Type: message`, short; for onnxruntime's kernel failures, the op and what it says (not the source path)."""
    text = " ".join(str(e).split())
    op = re.search(r"while running (\w+) node", text)
    if op and "Status Message: " in text:
        said = text.split("Status Message: ", 1)[1]
        said = said.split("was false. ", 1)[1] if "was false. " in said else said
        return f"{op.group(1)} fails: {said}"[:300]
    return f"{type(e).__name__}: {text[:300]}"


def quiet_session(path: Path):
    """An onnxruntime CPU session that does not log the failures the probe provokes on purpose."""
    import onnxruntime as ort

    from core.runtime import make_session

    options = ort.SessionOptions()
    options.log_severity_level = 4  # fatal only: the probe reports what fails, in one line
    return make_session(path, options)


def torch_output(spec, x: np.ndarray) -> np.ndarray:
    import torch
    with torch.no_grad():
        return spec.module(torch.from_numpy(x.copy())).numpy()


class ShapeProbe:
    """Run each written graph at a second, non-square size meeting its `multiple_of`, then at batch 2.

    Where onnxruntime cannot, where the output size is not the input's times the scale, or where only the
    traced size matches torch, the network's internal padding (to its window size, ...) was fixed at trace
    time: the graph is tried at coarser multiples that divide the traced size (2, 4, ... up to it) and the
    first that works becomes the card's `multiple_of` (the service pads to it, as the network would have).
    None works, or batch 2 goes wrong where batch 1 is right (a batch size fixed at trace time): FrozenShape.
    """

    JUMP = 100  # "wrong" = over the tolerance and this many times the error at the traced size / batch 1

    def __init__(self, tolerance: float):
        self.tolerance = tolerance
        self.notes: list[str] = []

    def __call__(self, path: Path, role: str, spec) -> None:
        card_in = spec.card["input"]
        edge, m0 = int(spec.example_inputs[0].shape[-1]), int(card_in["multiple_of"])
        session = quiet_session(path)
        x0 = spec.example_inputs[0].numpy()
        reference = self.error(session, spec, x0)  # at the traced size and batch
        failures, first = [], None
        for m in [m0 * 2 ** k for k in range(8) if edge % (m0 * 2 ** k) == 0]:
            size = parity_sizes({**card_in, "multiple_of": m})[1]
            why, err = self.fails_at(session, spec, role, size, 1, reference)
            first = first or size
            if why is None:
                if m != m0:
                    self.coarser(spec, m0, m, first)
                why, _ = self.fails_at(session, spec, role, size, 2, max(err, reference))
                if why is not None:
                    raise FrozenShape(f"the exported graph is frozen at batch 1: {why}")
                return
            failures.append(why)
        tried = f" (and at the multiples of {m0 * 2} to {edge} as well)" if len(failures) > 1 else ""
        raise FrozenShape(f"the exported graph is frozen at {edge}x{edge}: {failures[0]}{tried}")

    @staticmethod
    def error(session, spec, x: np.ndarray) -> float:
        got, want = session.run(["output"], {"image": x})[0], torch_output(spec, x)
        return abs_diff(got, want) if got.shape == want.shape else float("inf")

    def fails_at(self, session, spec, role: str, size: list[int], batch: int,
                 reference: float) -> tuple[str | None, float]:
        """Why the graph does not do what torch does at `size` and `batch` (None: it does, or it is as far
        off as at the reference, a parity matter), and its max abs error there."""
        card_in = spec.card["input"]
        (h, w), (lo, hi) = size, card_in["range"]
        where = f"at {h}x{w}" + (f", batch {batch}," if batch > 1 else "")
        x = np.random.default_rng(1).uniform(lo, hi, (batch, int(card_in["channels"]), h, w)).astype(np.float32)
        try:
            got = session.run(["output"], {"image": x})[0]
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types
            return f"onnxruntime cannot run {role} {where} ({first_line(e)})", float("inf")
        want = torch_output(spec, x)
        if got.shape != want.shape:
            return f"{where} {role} returns {list(got.shape)}, torch {list(want.shape)}", float("inf")
        err = abs_diff(got, want)
        if err <= max(self.tolerance, 1e-6) or err <= self.JUMP * reference:
            return None, err
        base = "the traced size" if batch == 1 else "batch 1"
        return f"{role} {where} differs from torch by max abs {err:.2e} (at {base}: {reference:.1e})", err

    def coarser(self, spec, m0: int, m: int, failed: list[int]) -> None:
        card_in = spec.card["input"]
        card_in["multiple_of"] = m
        card_in["min_size"] = max(int(card_in["min_size"]), m)
        if "tiling" in spec.card:
            spec.card["tiling"] = tiling_block(spec.card["tiling"]["tile"], m)
        note = (f"the exported graph takes H and W in multiples of {m}, not {m0}: the network pads to its "
                f"multiple itself, and that padding is fixed when traced (at {failed[0]}x{failed[1]} the graph "
                f"fails); the service pads instead, as the network would")
        if note not in self.notes:
            self.notes.append(note)


def import_cases(role: str, spec) -> tuple[list[Case], dict[str, Any]]:
    cases, info = random_cases(spec.card["input"])
    return cases, {**info, "real_note": REAL_NOTE}


# ------------------------------------------------------------------ the card


def family_of(sources: list[Source]) -> str:
    """cyclegan for a junyanz pair, pix2pix for one junyanz U-Net; otherwise the detected arch (a family the
    training registry may not know: eval then goes by endpoint and roles)."""
    arch = str(sources[0].detected.arch)
    if len(sources) == 2:
        return "cyclegan"
    if arch.startswith("junyanz-unet"):
        return "pix2pix"
    return re.sub(r"[^a-z0-9_-]+", "-", arch.lower()).strip("-_") or "imported"


def plain(value: Any) -> Any:
    """JSON-safe copy of detected hyper-parameters (tuples -> lists, numpy scalars -> numbers)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def tool_versions() -> dict[str, str]:
    """ganforge (pyproject), torch, onnx, onnxruntime, spandrel."""
    import importlib.metadata as md
    import tomllib

    from ..export.graph import runtimes

    versions = {"ganforge": "unknown"}
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    try:
        versions["ganforge"] = tomllib.loads(pyproject.read_text())["project"]["version"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        try:
            versions["ganforge"] = md.version("ganforge")
        except md.PackageNotFoundError:
            pass
    versions.update(runtimes())
    try:
        versions["spandrel"] = md.version("spandrel")
    except md.PackageNotFoundError:
        pass
    return versions


def provenance(sources: list[Source], options: ImportOptions) -> Provenance:
    params = {s.role: plain(s.detected.params) for s in sources}
    same = len({repr(p) for p in params.values()}) == 1
    extra: dict[str, Any] = {"batch_stats": options.batch_stats}
    loaded = {s.role: plain(s.info) for s in sources if s.info}
    if loaded:
        extra["loaded"] = loaded
    return Provenance(sources=[s.source_file() for s in sources], arch=str(sources[0].detected.arch),
                      arch_params=next(iter(params.values())) if same else params,
                      license=options.license or "unknown", importer=tool_versions(), extra=extra)


def domains(name: str, sources: list[Source]) -> dict[str, Any]:
    """A CycleGAN pair's domains: from a NAME like horse2zebra, else A and B."""
    if len(sources) != 2:
        return {}
    found = re.fullmatch(r"([a-z0-9]+)2([a-z0-9]+)", name)
    return {"domains": {"a": found.group(1), "b": found.group(2)} if found else {"a": "A", "b": "B"}}


def description(sources: list[Source], options: ImportOptions) -> str:
    if options.description:
        return options.description
    det = sources[0].detected
    what = f"{det.arch} x{det.scale}" if det.scale > 1 else str(det.arch)
    return f"{what} imported from {' + '.join(s.path.name for s in sources)}"


def import_notes(sources: list[Source], specs: dict[str, Any], extra: list[str]) -> list[str]:
    """detect's notes, export's eval-mode notes on a topic detect did not cover, the probe's and fp16's."""
    notes: list[str] = []
    for s in sources:
        notes += [str(n) for n in (s.detected.notes or []) if str(n) not in notes]
    said = " ".join(notes).lower()
    eval_notes = [n for n in eval_mode_notes(specs) if n.split(" is ")[0] not in said]  # "batch norm", "dropout"
    return notes + [n for n in eval_notes + extra if n not in notes]


def import_card(staging: Path, name: str, sources: list[Source], specs: dict[str, Any], built,
                options: ImportOptions, extra_notes: list[str]) -> Card:
    """The folder's card: endpoint by scale, the graph's true constraint, provenance; no training block."""
    exported, variants = built
    scale = int(sources[0].detected.scale)
    notes = import_notes(sources, specs, extra_notes)
    return Card(name=name, endpoint="upscale" if scale > 1 else "translate", family=family_of(sources),
                default=options.default, description=description(sources, options),
                **graph_fields(staging, exported, variants, options.tolerance, utc_now()),
                **io_fields(specs, domains(name, sources)), notes=notes or None,
                provenance=provenance(sources, options))


# ------------------------------------------------------------------ the import


def fp16_plan(sources: list[Source], options: ImportOptions) -> tuple[bool, str | None]:
    """Whether to write the fp16 variant, and the card note when the arch rules it out."""
    unsafe = sorted({str(s.detected.arch) for s in sources if not s.detected.supports_fp16})
    if options.fp16 and unsafe:
        return False, f"no fp16 variant: {', '.join(unsafe)} is not safe in fp16 (overflows or loses accuracy)"
    return options.fp16, None


def build_import(staging: Path, name: str, sources: list[Source], options: ImportOptions, log) -> Card:
    """Every role's graph (probed at a second size, parity-gated), the fp16 variant and the card."""
    fp16, fp16_note = fp16_plan(sources, options)
    build_options = options.build_options(fp16)
    specs = {s.role: export_spec(s.detected) for s in sources}
    probe = ShapeProbe(options.tolerance)
    try:
        built = build_graphs(staging, name, specs, build_options, import_cases, log, probe)
    except ExportError:
        raise
    except Exception as e:  # noqa: BLE001 - the exporters raise many types; one line says which and why
        raise ExportFailed(f"refusing to publish {name!r}: {sources[0].detected.arch} does not export to ONNX "
                           f"({first_line(e)})") from e
    notes = probe.notes + ([fp16_note] if fp16_note else [])
    return publish_card(staging, name, lambda: with_bf16_gate(  # the bf16 gate, where this CPU has native bf16
        staging, import_card(staging, name, sources, specs, built, options, notes), log))


def import_weights(options: ImportOptions, log=print) -> ImportResult:
    """Load, detect, export, check and publish FILE [FILE_B] as OUT/NAME; nothing is written under OUT before the
    weights are read and their network rebuilt, and nothing but NAME's lock file when a later step fails."""
    name = options.name
    try:
        check_name(name)
    except ValueError as e:
        raise ExportError(str(e)) from None
    options.build_options(options.fp16)  # bad settings fail before any file is read
    sources = read_sources(options.files, options)
    for s in sources:
        det = s.detected
        log(f"{s.path.name}: {det.arch} x{det.scale}, {det.in_channels} -> {det.out_channels} channels, "
            f"range {list(det.value_range)} ({s.role})")
    out = Path(options.out)
    card = publish_folder(out, name, lambda staging: build_import(staging, name, sources, options, log))
    result = ImportResult(out / name, card, float(card.metrics.parity_max_abs or 0.0))
    log(f"published {result.path} (version {card.version}; parity max abs {result.parity_max_abs:.2e} "
        f"<= {options.tolerance:g})")
    return result
