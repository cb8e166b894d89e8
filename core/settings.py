"""What the core needs to know of a deployment: device, backend, threads, tiles, precision.

`RuntimeSettings` carries those fields under the names the service's `Settings` uses, so a caller passes
either: the service its environment-read `Settings`, offline code (evaluation, bench) a `RuntimeSettings`
with the defaults it wants. Nothing here reads the environment.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


class RuntimeConfig(Protocol):
    """The fields core/runtime.py and core/loading.py read (the service's Settings has them all)."""

    device: str  # auto | cpu | cuda
    cuda_device_id: int
    backend: str  # auto | onnxruntime | openvino
    ort_threads: int  # 0: the runtime's default
    tile: int  # 0: the card's
    tile_overlap: int  # -1: the card's
    autotune_budget_s: float  # 0: no autotune (core/tuned.py)
    autotune_dir: Path | None  # None: <models dir>/.autotune

    def precision_for(self, name: str) -> str: ...


@dataclass(frozen=True, kw_only=True)
class RuntimeSettings:
    device: str = "auto"
    cuda_device_id: int = 0
    backend: str = "auto"
    ort_threads: int = 0
    tile: int = 0
    tile_overlap: int = -1
    precision: str = "auto"
    model_precision: tuple[tuple[str, str], ...] = ()
    autotune_budget_s: float = 0.0  # offline code keeps the static rule unless it asks
    autotune_dir: Path | None = None

    def precision_for(self, name: str) -> str:
        return dict(self.model_precision).get(name, self.precision)
