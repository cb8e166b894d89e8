"""What detection hands to export: a ready torch module and the facts its card needs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .errors import LayoutMismatch


@dataclass
class Detected:
    arch: str  # "junyanz-resnet" | "junyanz-unet" | "msrresnet" | "edsr" | spandrel's id lowercased
    params: dict[str, Any]  # hyper-parameters read from the weights, JSON-safe
    module: nn.Module  # weights loaded, eval mode, float32, CPU; [N,Cin,H,W] -> [N,Cout,H*scale,W*scale]
    scale: int  # 1: same size (translate); 2/3/4/8: upscale
    in_channels: int
    out_channels: int
    value_range: tuple[float, float]  # (-1, 1) junyanz (Tanh); (0, 1) SR models
    multiple_of: int  # H and W must be multiples of this
    min_size: int  # smallest H/W it takes
    tile: int  # tiling hint in input pixels
    supports_fp16: bool
    notes: list[str] = field(default_factory=list)


def load_exact(module: nn.Module, state_dict: dict[str, torch.Tensor], family: str) -> None:
    """Every key and shape must match: a clear LayoutMismatch naming the first differences otherwise."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} {list(state_dict[k].shape)} (expected {list(own[k].shape)})"
              for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{label}: {', '.join(items[:4])}{' ...' if len(items) > 4 else ''}"
                 for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)) if items]
        raise LayoutMismatch(f"the weights do not fit {family}: {'; '.join(parts)}")
    module.load_state_dict(state_dict, strict=True)


def ready(module: nn.Module) -> nn.Module:
    """float32, CPU, eval mode."""
    return module.float().cpu().eval()
