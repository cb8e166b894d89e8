"""Everything else through spandrel's main registry (MIT; its architectures are permissively licensed,
AuraSR excepted, which is refused).

Detection walks `MAIN_REGISTRY` in its detection order and takes the first architecture whose `detect`
accepts the keys; AuraSR is refused before anything is built. From the `ImageModelDescriptor`: scale,
input/output channels, size requirements (minimum, multiple_of; square-only models are refused),
tiling, supports_half, purpose (SR -> upscale; Restoration, scale 1 -> same-size translate; FaceSR and
masked/inpainting models are refused), the model's stored hyper-parameters, and its `call_fn`, which the
returned module applies. The module clones its input first: some spandrel models (RCAN) edit it in place.

Window models: spandrel 0.4.2's window helpers (`window_reverse` in SwinIR, Swin2SR, HAT, ATD, GRL, DRCT,
DCTLSA, Uformer; `windows2img` in DAT, RGT, CRAFT) take the batch as `int(windows.shape[0] / (H * W / ...))`,
which the TorchScript ONNX exporter freezes at the traced batch (batch 2 then comes out scrambled). While the
module is being traced (and only then), `SpandrelModule.forward` swaps those helpers, in the python modules of
the model's own layers, for equivalents that take the batch by integer floor division on the shapes, which the
trace keeps symbolic; they are put back when the forward returns (`exportable_windows`). Eager calls run
spandrel's own code untouched. Where spandrel's descriptor asks for no multiple but the network pads to its
window itself, detect reports the window size as `multiple_of` (the service pads instead; the pad the network
computes is then 0, nothing to freeze).
"""
from __future__ import annotations

import contextlib
import inspect
import math
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from .detected import Detected, ready
from .errors import LayoutMismatch, Refused

REFUSED_IDS = {"aurasr": "AuraSR is refused: its weights are not under a licence that lets them be served "
                         "here (spandrel lists it as the exception to its permissively licensed registry)"}
# tiling hints in input pixels for the heavy attention models; the others take 512
_TILE_128 = {"hat", "drct", "grl", "atd", "ipt"}
_TILE_256 = {"swinir", "swin2sr", "dat", "rgt", "craft", "scunet", "uformer", "fftformer", "fdat", "omnisr",
             "dctlsa", "ditn", "kbnet", "retinexformer", "hvicidnet", "restoreformer"}


# ------------------------------------------------------------------ window helpers the trace keeps symbolic


def _window_reverse(windows, window_size, H, W):
    """SwinIR's window_reverse (Swin2SR, HAT, ATD, DRCT, DCTLSA alike), the batch by floor division."""
    B = windows.shape[0] // ((H // window_size) * (W // window_size))
    x = windows.view(B, H // window_size, W // window_size, window_size, window_size, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(B, H, W, -1)


def _window_reverse_uformer(windows, win_size, H, W, dilation_rate=1):
    B = windows.shape[0] // ((H // win_size) * (W // win_size))
    x = windows.view(B, H // win_size, W // win_size, win_size, win_size, -1)
    if dilation_rate != 1:  # as spandrel's (which folds `windows`, not x)
        x = windows.permute(0, 5, 3, 4, 1, 2).contiguous()
        return nn.functional.fold(x, (H, W), kernel_size=win_size, dilation=dilation_rate,
                                  padding=4 * (dilation_rate - 1), stride=win_size)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(B, H, W, -1)


def _window_reverse_grl(windows, window_size, img_size):
    H, W = img_size
    B = windows.shape[0] // ((H // window_size[0]) * (W // window_size[1]))
    x = windows.view(B, H // window_size[0], W // window_size[1], window_size[0], window_size[1], -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(B, H, W, -1)


def _windows2img(img_splits_hw, H_sp, W_sp, H, W):
    """DAT's windows2img (RGT, CRAFT alike), the batch by floor division."""
    B = img_splits_hw.shape[0] // ((H // H_sp) * (W // W_sp))
    img = img_splits_hw.view(B, H // H_sp, W // W_sp, H_sp, W_sp, -1)
    return img.permute(0, 1, 3, 2, 4, 5).contiguous().view(B, H, W, -1)


_ARCH = "spandrel.architectures."
# (module defining the helper, its name) -> the replacement; its parameters must match spandrel's, or it is left be
WINDOW_HELPERS: dict[tuple[str, str], Callable[..., torch.Tensor]] = {
    **{(_ARCH + m, "window_reverse"): _window_reverse
       for m in ("SwinIR.__arch.SwinIR", "Swin2SR.__arch.Swin2SR", "HAT.__arch.HAT", "ATD.__arch.atd_arch",
                 "DRCT.__arch.drct_arch", "DCTLSA.__arch.dctlsa")},
    (_ARCH + "Uformer.__arch.Uformer", "window_reverse"): _window_reverse_uformer,
    (_ARCH + "GRL.__arch.ops", "window_reverse"): _window_reverse_grl,
    **{(_ARCH + m, "windows2img"): _windows2img
       for m in ("DAT.__arch.DAT", "RGT.__arch.rgt", "CRAFT.__arch.CRAFT")},
}
_PATCH_LOCK = threading.RLock()


def window_patches(model: nn.Module) -> list[tuple[Any, str, Callable, Callable]]:
    """(python module, attribute, spandrel's helper, replacement) for each frozen-batch window helper that the
    python modules of `model`'s layers call by name (GRL's blocks import ops.window_reverse: patched there)."""
    found = []
    names = {type(m).__module__ for m in model.modules()}
    for mod in (sys.modules.get(n) for n in sorted(names)):
        for attr in ("window_reverse", "windows2img"):
            original = getattr(mod, attr, None) if mod is not None else None
            replacement = WINDOW_HELPERS.get((getattr(original, "__module__", ""), attr))
            if replacement is None or original is replacement:
                continue
            if list(inspect.signature(original).parameters) != list(inspect.signature(replacement).parameters):
                continue  # a spandrel whose helper changed shape: leave it (the publish probe still checks batch 2)
            found.append((mod, attr, original, replacement))
    return found


@contextlib.contextmanager
def exportable_windows(model: nn.Module) -> Iterator[int]:
    """Within the block, `model`'s window helpers compute the batch by floor division (a traced shape stays
    symbolic) instead of spandrel's `int(... / ...)` (a constant in the trace); restored on exit. Yields how many
    were swapped. Held under a lock: python module attributes are process-wide."""
    with _PATCH_LOCK:
        patches = window_patches(model)
        try:
            for mod, attr, _, replacement in patches:
                setattr(mod, attr, replacement)
            yield len(patches)
        finally:
            for mod, attr, original, _ in patches:
                setattr(mod, attr, original)


class SpandrelModule(nn.Module):
    """A spandrel model as a plain module: clone the input, then the descriptor's call function."""

    def __init__(self, model: nn.Module, call_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None):
        super().__init__()
        self.model = model
        self.call_fn = call_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()  # never hand the caller's tensor to a model that may write into it
        if torch.jit.is_tracing():  # the ONNX export: window helpers that keep the batch symbolic
            with exportable_windows(self.model):
                return self.run(x)
        return self.run(x)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return self.call_fn(self.model, x) if self.call_fn is not None else self.model(x)


def spandrel_ids() -> list[str]:
    """Lowercased ids of spandrel's main registry, in its detection order, refused ones left out."""
    from spandrel import MAIN_REGISTRY

    ids = [str(s.architecture.id).lower() for s in MAIN_REGISTRY.architectures("detection")]
    return [i for i in ids if i not in REFUSED_IDS]


def find_support(sd: dict[str, torch.Tensor], forced: str | None):
    from spandrel import MAIN_REGISTRY

    for support in MAIN_REGISTRY.architectures("detection"):
        arch_id = str(support.architecture.id).lower()
        if forced is not None and arch_id != forced:
            continue
        try:
            hit = support.detect(sd)
        except Exception:  # noqa: BLE001 - a detector tripping over foreign keys means "not mine"
            hit = False
        if hit:
            return support
    return None


def detect_spandrel(sd: dict[str, torch.Tensor], forced: str | None = None) -> Detected | None:
    """A spandrel architecture, or None where no detector in the main registry accepts the keys."""
    from spandrel import ImageModelDescriptor

    support = find_support(sd, forced)
    if support is None:
        return None
    arch = str(support.architecture.id).lower()
    if arch in REFUSED_IDS:
        raise Refused(REFUSED_IDS[arch])
    try:
        desc = support.architecture.load(dict(sd))  # a copy: some loaders edit the dict they are given
    except Exception as e:  # noqa: BLE001 - spandrel raises whatever its builders raise
        raise LayoutMismatch(f"spandrel detected {support.architecture.id} but could not load the weights: "
                             f"{type(e).__name__}: {e}") from None
    if not isinstance(desc, ImageModelDescriptor):
        raise Refused(f"{support.architecture.id} is a {type(desc).__name__} (purpose {desc.purpose}): it needs "
                      "a mask input beside the image, which the image endpoints do not take")
    if desc.purpose == "FaceSR":
        raise Refused(f"{support.architecture.id} is a face restoration model (aligned face crops of a fixed "
                      "size), not a general image model")
    req = desc.size_requirements
    if req.square:
        raise Refused(f"{support.architecture.id} takes square inputs only (size requirements "
                      f"minimum {req.minimum}, multiple of {req.multiple_of}, square): the endpoints serve any "
                      "aspect ratio")
    return describe(desc, arch)


def describe(desc: Any, arch: str) -> Detected:
    from spandrel import ModelTiling

    req = desc.size_requirements
    multiple = req.multiple_of
    notes = [f"spandrel {desc.architecture.name} ({desc.purpose}, x{desc.scale}"
             + (f", {', '.join(desc.tags)}" if desc.tags else "") + ")"]
    shuffle = getattr(desc.model, "shuffle_factor", None) if arch == "esrgan" else None
    if shuffle:  # spandrel says 4 for both; the pixel-unshuffle itself needs only its own factor
        multiple = int(shuffle)
        notes.append(f"pixel-unshuffle by {shuffle} before the trunk: H and W multiples of {shuffle}")
    if desc.tiling == ModelTiling.DISCOURAGED:
        notes.append("spandrel discourages tiling for this model (it relies on global image context)")
    elif desc.tiling == ModelTiling.INTERNAL:
        notes.append("the model tiles internally: do not tile before it")
    tile = 128 if arch in _TILE_128 else 256 if arch in _TILE_256 else 512
    if desc.tiling == ModelTiling.INTERNAL:
        tile = 1024
    params = {str(k): jsonable(v) for k, v in (getattr(desc.model, "hyperparameters", None) or {}).items()}
    params.update(scale=int(desc.scale), in_channels=int(desc.input_channels),
                  out_channels=int(desc.output_channels), tags=list(desc.tags), purpose=str(desc.purpose),
                  size_requirements={"minimum": int(req.minimum), "multiple_of": int(multiple)},
                  tiling=desc.tiling.name.lower())
    call_fn = getattr(desc, "_call_fn", None)  # the descriptor keeps it without a public accessor
    module = ready(SpandrelModule(desc.model, call_fn))
    return Detected(arch=arch, params=params, module=module, scale=int(desc.scale),
                    in_channels=int(desc.input_channels), out_channels=int(desc.output_channels),
                    value_range=(0.0, 1.0), multiple_of=max(1, int(multiple)),
                    min_size=max(1, int(req.minimum), int(multiple)), tile=tile,
                    supports_fp16=bool(desc.supports_half), notes=notes)


def jsonable(value: Any) -> Any:
    """Hyper-parameters as JSON values: classes and functions by name, tuples as lists."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor) and value.numel() <= 16:
        return jsonable(value.tolist())
    name = getattr(value, "__name__", None)
    return name if isinstance(name, str) else type(value).__name__
