"""Training precision: `train.precision` (auto | fp32 | bf16 | fp16) -> autocast around the network passes.

auto is bf16 where it is native: a CPU with amx_bf16 or avx512_bf16 (core.cpu), a CUDA GPU that supports
bf16; everywhere else fp32 (without native bf16, autocast is slower than fp32: pytorch #86550).
fp16 runs on CUDA only, with one GradScaler per optimizer.

Only the network forward passes run under autocast (`Precision.forward` wraps a network); their outputs
come back as float32, so losses, discriminator logits, gradient penalties and every metric are fp32. The
parameters, their gradients, the optimizer state, the EMA weights and the batch-norm running statistics
are never cast: checkpoints are fp32 whatever the precision, and load in either.

Measured on a 2-core AMX Xeon, torch 2.14 (`python -m bench --only training`, bench/README.md):
- channels_last only with bf16 / fp16, and only where the recipe says it pays (Recipe.channels_last): it
  doubles srresnet's bf16 gain and adds to pix2pix's, but slows fp32 and DCGAN's 32x32 networks.
- A recipe can keep nets in fp32 (Recipe.fp32_nets): DCGAN's generator, whose transposed convolutions'
  backward runs ~10x slower in bf16 than in fp32 at its shapes.
- torch.compile is off: on srresnet-x4 under bf16 + channels_last it took 122 s to compile and then ran
  0.83x as fast as eager, so it never pays here.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch

from .config import PRECISIONS
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class TrainingDiverged(RuntimeError):
    """A non-finite loss or weight: the run stops, naming the step, and writes no checkpoint of it."""


class PrecisionError(ValueError):
    """A precision this device cannot train in; the message says what to set instead."""


def native_bf16(device: torch.device, flags: Iterable[str] | None = None) -> bool:
    """Whether `device` computes bf16 natively: CPU flags amx_bf16 / avx512_bf16, or a CUDA GPU with bf16."""
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    from core.cpu import BF16_FLAGS, cpu_flags
    have = cpu_flags() if flags is None else set(flags)
    return any(f in have for f in BF16_FLAGS)


def resolve(requested: str, device: torch.device, flags: Iterable[str] | None = None, log=None) -> str:
    """The precision a run uses: fp32 | bf16 | fp16 (PrecisionError for one this device cannot train in).
    `log`: where to say that an explicit bf16 is emulated on this CPU (slower than fp32)."""
    if requested not in PRECISIONS:
        raise PrecisionError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested == "auto":
        return "bf16" if native_bf16(device, flags) else "fp32"
    if requested == "bf16" and device.type == "cuda" and not native_bf16(device):
        raise PrecisionError("train.precision=bf16: this CUDA GPU has no bf16; use fp16, auto or fp32")
    if requested == "bf16" and device.type == "cpu" and log and not native_bf16(device, flags):
        log("warning: train.precision=bf16 on a CPU without amx_bf16 / avx512_bf16: emulated, slower than fp32 "
            "(auto would pick fp32 here)")
    if requested == "fp16" and device.type != "cuda":
        raise PrecisionError(f"train.precision=fp16 needs a CUDA device (with a GradScaler); this run is on "
                             f"{device.type}. Use train.precision=bf16 (native on CPUs with amx_bf16 or "
                             f"avx512_bf16), auto or fp32")
    return requested


@dataclass
class Precision:
    """How one run computes: `name` fp32 | bf16 | fp16 on `device_type`."""
    name: str = "fp32"
    device_type: str = "cpu"
    channels_last: bool | None = None  # networks and image batches in NHWC; None: as the recipe says
    scalers: dict[str, Any] = field(default_factory=dict)  # fp16: optimizer name -> GradScaler

    @property
    def low(self) -> bool:
        return self.name in DTYPES

    def autocast(self):
        if not self.low:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=DTYPES[self.name])

    def forward(self, net: Callable) -> Callable:
        """`net` as called in a training step: under autocast, floating outputs back in float32."""
        return net if not self.low else AutocastForward(net, self)

    def scaler(self, name: str):
        """fp16: the GradScaler of optimizer `name` (made on first use); None otherwise."""
        if self.name != "fp16":
            return None
        if name not in self.scalers:
            self.scalers[name] = torch.amp.GradScaler(self.device_type)
        return self.scalers[name]

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "scalers": {k: s.state_dict() for k, s in self.scalers.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """GradScaler state of an fp16 run resumed in fp16; nothing to restore otherwise."""
        for k, s in (state.get("scalers") or {}).items():
            if self.name == "fp16":
                self.scaler(k).load_state_dict(s)

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """An image batch in the networks' memory format."""
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x


class AutocastForward:
    """A network called under its run's autocast; outputs (tensors, tuples, lists of them) as float32."""

    def __init__(self, net: Callable, precision: Precision):
        self.net, self.precision = net, precision

    def __call__(self, *args, **kwargs):
        with self.precision.autocast():
            out = self.net(*args, **kwargs)
        return to_float(out)

    def __getattr__(self, name: str):
        return getattr(self.net, name)


def to_float(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, (tuple, list)):
        return type(out)(to_float(o) for o in out)
    return out


def non_finite(tensors: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of the floating tensors that hold a NaN or an infinity."""
    return [name for name, t in tensors if t.is_floating_point() and not bool(torch.isfinite(t).all())]
