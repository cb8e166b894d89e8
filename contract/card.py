"""The model card (`models/<name>/card.json`) as typed dataclasses: the one contract between
training (which writes it) and the service (which reads it). docs/model-card.md explains each
field; docs/card.schema.json is generated from these classes (`python -m contract.schema`).

    card = Card.from_json(text)        # validated; CardError names the field
    text = card.to_json()              # what export, eval, quantize, optimize write

Schema 2 adds `default` (the model an endpoint serves when a request names none) and `provenance`
(imported weights: source files, detected arch, licence); schema 1 cards are still read (as
`default: false`) and are written back as schema 2.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from .typed import CardError, CardUnreadable, from_plain, to_plain

SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
NAME_PATTERN = r"[a-z0-9][a-z0-9._-]{0,63}"
# a file the card names: a plain name inside the model folder (no dot file, no separator)
FILE_NAME_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}"
SHA256_PATTERN = r"[0-9a-f]{64}"
ENDPOINTS = ("generate", "translate", "upscale")
Endpoint = Literal["generate", "translate", "upscale"]
GENERATOR_ROLES = ("generator",)
DIRECTION_ROLES = ("a2b", "b2a")  # cyclegan: one graph per direction
Channels = Literal[1, 3]


def _meta(doc: str, **rules: Any) -> dict[str, Any]:
    return {"doc": doc, **rules}


@dataclass
class FileEntry:
    path: str = field(metadata=_meta("file name inside the model folder", pattern=FILE_NAME_PATTERN,
                                     rule="be a plain file name in the model folder"))
    sha256: str = field(metadata=_meta("sha256 of the file's bytes", pattern=SHA256_PATTERN,
                                       rule="be 64 lowercase hex digits"))
    bytes: int | None = field(default=None, metadata=_meta("size in bytes", minimum=0))


@dataclass
class TensorSpec:
    name: str = field(metadata=_meta("graph input/output name", pattern=r".+"))
    dtype: str
    shape: list[int | str] = field(metadata=_meta("dims; strings are symbolic (N, H, W, H*4)"))


@dataclass
class GraphIO:
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def check(self, where: str) -> None:
        for what in ("inputs", "outputs"):
            if not getattr(self, what):
                raise CardError(f"{where}.{what} must be a non-empty list")

    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_name(self) -> str:
        return self.outputs[0].name


Range = tuple[float, float]


def _check_range(value: Range, where: str) -> None:
    if value[0] == value[1]:
        raise CardError(f"{where} must be [lo, hi] with lo != hi, got {list(value)}")


@dataclass
class ImageInput:
    """How to feed an image graph: pixel p -> lo + p / 255 * (hi - lo)."""
    channels: Channels = field(metadata=_meta("1 = grayscale, 3 = RGB"))
    range: Range = field(metadata=_meta("float value of pixel 0 and of pixel 255"))
    multiple_of: int = field(default=1, metadata=_meta("H and W must be multiples (reflect-pad, crop back)",
                                                       minimum=1))
    min_size: int = field(default=1, metadata=_meta("smallest H or W the graph takes", minimum=1))
    native_size: tuple[int, int] | None = field(
        default=None, metadata=_meta("[H, W] of a graph fixed at one size; null = any", minimum=1, keep_null=True))

    def check(self, where: str) -> None:
        _check_range(self.range, f"{where}.range")


@dataclass
class ImageOutput:
    channels: Channels
    range: Range
    scale: int | None = field(default=None, metadata=_meta("output size = input size * scale (image models)",
                                                           minimum=1))
    size: tuple[int, int] | None = field(default=None, metadata=_meta("[H, W] of a generator's output",
                                                                      minimum=1))

    def check(self, where: str) -> None:
        _check_range(self.range, f"{where}.range")


@dataclass
class RoleIO:
    input: ImageInput
    output: ImageOutput


@dataclass
class Tiling:
    tile: int = field(metadata=_meta("tile edge in input pixels", minimum=8))
    overlap: int = field(metadata=_meta("overlap of neighbouring tiles in input pixels", minimum=0))


@dataclass
class Variant:
    """A reduced-precision way to run the graphs: fp16 files at export, int8 files by quantize, or a
    precision the runtime converts to at load ("measure": no files, its quality gate measured, e.g. bf16
    on OpenVINO); measured figures in extra."""
    OPEN = True
    produced: Literal["export", "load", "quantize", "measure"]
    files: dict[str, FileEntry] = field(default_factory=dict)
    note: str | None = None
    # True: the files are remade from the fp32 graphs, byte for byte, by `python -m training fp16` (make fp16,
    # the GPU image's build) and are not kept in git; a missing file means "not built here", not a broken folder
    built: bool = field(default=False, metadata=_meta("files made at build time from the fp32 graphs",
                                                                  omit_default=True))
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Training:
    """Where the weights came from: the run's dataset, config, steps, commit and checkpoint."""
    OPEN = True
    dataset: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] | None = field(default=None, metadata=_meta("the resolved training config",
                                                                        keep_null=True))
    steps: int = field(default=0, metadata=_meta("optimizer steps", minimum=0))
    git_commit: str = "unknown"
    torch: str | None = None
    checkpoint: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class SourceFile:
    """One file an imported model was made from."""
    file: str = field(metadata=_meta("the file's name (no folder)"))
    sha256: str = field(metadata=_meta("sha256 of the file", pattern=SHA256_PATTERN,
                                       rule="be 64 lowercase hex digits"))
    bytes: int = field(metadata=_meta("size in bytes", minimum=0))
    role: str | None = field(default=None, metadata=_meta("the role its weights became (a2b, b2a, generator)"))


@dataclass
class Provenance:
    """Where imported weights came from (`python -m training import`): files, detected arch, licence."""
    OPEN = True
    sources: list[SourceFile]
    arch: str = field(metadata=_meta("the detected architecture (junyanz-resnet, esrgan, swinir, ...)"))
    arch_params: dict[str, Any] = field(default_factory=dict,
                                        metadata=_meta("the hyper-parameters read from the weights"))
    license: str = field(default="unknown", metadata=_meta("the weights' licence, as the user stated it"))
    importer: dict[str, str] = field(default_factory=dict, metadata=_meta("versions of the importing tools"))
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Metrics:
    """parity at export (torch vs onnxruntime), held-out figures from `python -m training eval`."""
    OPEN = True
    parity_max_abs: float | None = field(default=None, metadata=_meta("worst torch-vs-onnxruntime max abs",
                                                                      minimum=0.0))
    parity: dict[str, Any] | None = None
    heldout: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class Card:
    schema: int = field(metadata=_meta("card schema version", enum=READABLE_SCHEMAS))
    name: str = field(metadata=_meta("the model's name = its folder's name", pattern=NAME_PATTERN,
                                     rule=f"match ^{NAME_PATTERN}$ (lowercase, digits, . _ -)"))
    endpoint: Endpoint
    family: str = field(metadata=_meta("training family (dcgan, pix2pix, cyclegan, srgan, ...)",
                                       pattern=r"[a-z0-9][a-z0-9_-]*"))
    default: bool = field(default=False, metadata=_meta(
        "serve this model when a request to its endpoint names none (schema 2)"))
    description: str
    version: str = field(metadata=_meta("content hash of the ONNX files + export time", pattern=r".+"))
    exported_at: str
    opset: int = field(metadata=_meta("ai.onnx opset of the graphs", minimum=1))
    exporter: str | None = None
    runtimes: dict[str, str]
    files: dict[str, FileEntry] = field(metadata=_meta("ONNX file per role: generator, or a2b + b2a"))
    variants: dict[str, Variant] = field(default_factory=dict)
    optimized: dict[str, Any] | None = None
    graph: GraphIO
    input: ImageInput | None = field(default=None, metadata=_meta("image models (translate, upscale)"))
    output: ImageOutput
    tiling: Tiling | None = None
    latent_dim: int | None = field(default=None, metadata=_meta("generate: z is [N, latent_dim]", minimum=1))
    classes: list[str] | None = field(default=None, metadata=_meta("generate: label index -> class name",
                                                                   pattern=r".+"))
    domains: dict[str, str] | None = None
    roles: dict[str, RoleIO] | None = None
    notes: list[str] | None = None
    training: Training | None = field(default=None, metadata=_meta("a model ganforge trained: its run"))
    provenance: Provenance | None = field(default=None, metadata=_meta(
        "a model imported from someone else's weights (schema 2)"))
    metrics: Metrics = field(default_factory=Metrics)

    # ------------------------------------------------------------------ reading and writing

    @classmethod
    def from_dict(cls, data: Any, folder_name: str | None = None) -> "Card":
        """Validate a parsed card.json (schema 1 or 2); CardError names the first bad field."""
        if not isinstance(data, dict):
            raise CardUnreadable("card.json is not a JSON object")
        if data.get("schema") not in READABLE_SCHEMAS:
            raise CardError(f"schema: unsupported card schema {data.get('schema')!r} "
                            f"(this version reads {', '.join(map(str, READABLE_SCHEMAS))})")
        card = from_plain(cls, data, "")
        if folder_name is not None and card.name != folder_name:
            raise CardError(f"name: the card says {card.name!r}, the folder is {folder_name!r}")
        return card

    @classmethod
    def from_json(cls, text: str | bytes, folder_name: str | None = None) -> "Card":
        try:
            data = json.loads(text.decode("utf-8") if isinstance(text, bytes) else text)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CardUnreadable(f"card.json is unreadable ({type(e).__name__})") from e
        return cls.from_dict(data, folder_name)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document, always at the current schema."""
        out = to_plain(self)
        out["schema"] = SCHEMA_VERSION
        return out

    def to_json(self) -> bytes:
        """Validated, then serialised as export writes it (2-space indent, no NaN)."""
        data = self.to_dict()
        Card.from_dict(data)
        return (json.dumps(data, indent=2, allow_nan=False) + "\n").encode()

    # ------------------------------------------------------------------ meaning

    def check(self, where: str) -> None:
        """Rules between fields, which the per-field types cannot say."""
        roles = set(self.files)
        if roles not in (set(GENERATOR_ROLES), set(DIRECTION_ROLES)):
            raise CardError(f"files must have role 'generator' or roles 'a2b' and 'b2a', got {sorted(roles)}")
        if self.endpoint != "translate" and roles != set(GENERATOR_ROLES):
            raise CardError(f"files: a {self.endpoint} model has one 'generator' file")
        for name, variant in self.variants.items():
            if variant.files and set(variant.files) != roles:
                raise CardError(f"variants.{name}.files must cover the roles {sorted(roles)}")
        if self.endpoint == "generate":
            self._check_generate()
        else:
            self._check_image()

    def _check_generate(self) -> None:
        inputs = self.graph.input_names()
        if "z" not in inputs or not set(inputs) <= {"z", "label"}:
            raise CardError("graph.inputs: a generate graph takes inputs 'z' and (optionally) 'label'")
        if self.latent_dim is None:
            raise CardError("latent_dim is missing (a generate model needs it)")
        if "label" in inputs and not self.classes:
            raise CardError("classes: a graph with a 'label' input needs classes")

    def _check_image(self) -> None:
        if self.input is None:
            raise CardError(f"input is missing (a {self.endpoint} model needs it)")
        if len(self.graph.inputs) != 1:
            raise CardError("graph.inputs must have exactly one entry for an image model")
        if self.output.scale is None:
            raise CardError("output.scale is missing (an image model needs it)")
        if self.endpoint == "translate" and self.output.scale != 1:
            raise CardError("output.scale: a translate model must have output.scale 1")

    @property
    def scale(self) -> int:
        return self.output.scale or 1

    @property
    def directions(self) -> tuple[str, ...]:
        return DIRECTION_ROLES if set(self.files) == set(DIRECTION_ROLES) else ()

    def file_names(self, built: bool = True) -> list[tuple[str, FileEntry]]:
        """(what, entry) for every file the card names: roles, then variants' files (built=False: without
        the files of `built` variants, which a folder may lack until `python -m training fp16` runs)."""
        out = [(f"files.{role}", entry) for role, entry in self.files.items()]
        for name, variant in self.variants.items():
            if built or not variant.built:
                out += [(f"variants.{name}.files.{role}", entry) for role, entry in variant.files.items()]
        return out

    def role_io(self, role: str) -> RoleIO:
        """The input/output blocks of one role (cyclegan roles may differ in channels)."""
        if self.roles and role in self.roles:
            return self.roles[role]
        assert self.input is not None
        return RoleIO(self.input, self.output)
