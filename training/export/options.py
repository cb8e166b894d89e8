"""What an export is asked to do (`ExportOptions`, `ExportJob`), what building a model folder needs
(`BuildOptions`: export and import alike), what its role phase found (`Exported`), its defaults and its errors."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from contract import FileEntry
from modelops.errors import ExportError

DEFAULT_TOLERANCE = 1e-4
# fp16 vs fp32 on outputs in [-1, 1]: 0.02 is 2.5 grey levels of 255, below what a viewer sees
DEFAULT_FP16_TOLERANCE = 0.02
EXPORTERS = ("auto", "dynamo", "torchscript")


class ParityError(ExportError):
    """onnxruntime and torch disagree by more than the tolerance: nothing was published."""


@dataclass(frozen=True, kw_only=True)
class BuildOptions:
    """How a model folder is built from its networks: the gates, the variants, the card's flags (export and import)."""
    tolerance: float = DEFAULT_TOLERANCE  # max abs torch-vs-onnxruntime error
    fp16: bool = True  # also write <role>.fp16.onnx
    fp16_tolerance: float = DEFAULT_FP16_TOLERANCE  # max abs fp16-vs-fp32 error of that variant
    description: str | None = None  # the card's one line (default: from the config)
    exporter: str = "auto"  # auto | dynamo | torchscript
    data_root: str | None = None  # dataset root for the real parity inputs (default: the run config's)
    optimize: bool = True  # the exact rewrites for onnxruntime CPU (modelops/optimize.py)
    default: bool = False  # the card's `default`: served when a request to the endpoint names no model

    def check(self) -> None:
        if not (self.tolerance >= 0):
            raise ExportError(f"tolerance must be >= 0, got {self.tolerance}")
        if self.exporter not in EXPORTERS:
            raise ExportError(f"unknown exporter {self.exporter!r} ({', '.join(EXPORTERS)})")


@dataclass(frozen=True, kw_only=True)
class ExportOptions(BuildOptions):
    """`python -m training export CHECKPOINT --name NAME ...` (its --help says what each does)."""
    checkpoint: str | Path  # a checkpoint file, or a run folder (its newest valid checkpoint)
    name: str  # the model's folder under `out`
    out: str | Path = "models"


@dataclass
class ExportJob:
    """One export: the checkpoint, its recipe (networks in eval mode) and export specs, and the options."""
    name: str
    checkpoint: str | Path  # as given (the card records it)
    payload: dict[str, Any]  # the loaded checkpoint
    recipe: Any  # training.recipes.base.Recipe
    specs: dict[str, Any]  # role -> ExportSpec
    options: BuildOptions
    log: Callable[[str], Any] = print


@dataclass
class Exported:
    """What the role phase wrote and measured: one ONNX file per role, its graph I/O and parity."""
    files: dict[str, FileEntry] = field(default_factory=dict)
    graph: dict[str, Any] | None = None  # the card's `graph` block (the same for every role)
    used: set[str] = field(default_factory=set)  # exporters used
    parity: dict[str, dict[str, Any]] = field(default_factory=dict)  # role -> errors per case kind + inputs
    cases: dict[str, list[Any]] = field(default_factory=dict)  # role -> parity cases (the fp16 check reuses them)
    worst: dict[str, float] = field(default_factory=lambda: {"random": 0.0})  # case kind -> worst error
    rewrites: dict[str, dict[str, int]] = field(default_factory=dict)  # role -> optimize's rewrite counts
    max_abs: float = 0.0

    @property
    def exporter(self) -> str:
        return "+".join(sorted(self.used))

    def per_role(self) -> dict[str, dict[str, float | None]]:
        return {r: {k: v for k, v in p.items() if k in ("random", "real")} for r, p in self.parity.items()}
