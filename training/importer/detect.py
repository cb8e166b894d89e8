"""Which network a state dict is, from the weights alone, as a ready module plus its description.

In order: junyanz CycleGAN/pix2pix generators (mapped onto ganforge's "resnet" / "unet"), BasicSR's
MSRResNet and EDSR (training/networks/basicsr.py), then spandrel's main registry. `arch=` forces one
detector for weights that are truly ambiguous and fails clearly where they do not fit it.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import torch

from .basicsr_detect import detect_edsr, detect_msrresnet
from .detected import Detected
from .errors import ImportFailed, LayoutMismatch, NotACheckpoint, UnknownLayout
from .junyanz import detect_resnet, detect_unet, use_batch_statistics
from .spandrel_adapter import detect_spandrel, spandrel_ids

__all__ = ["KNOWN_ARCHS", "Detected", "detect"]

OWN_DETECTORS: dict[str, Callable[[dict[str, torch.Tensor]], Detected | None]] = {
    "junyanz-resnet": detect_resnet,
    "junyanz-unet": detect_unet,
    "msrresnet": detect_msrresnet,
    "edsr": detect_edsr,
}
KNOWN_ARCHS: list[str] = [*OWN_DETECTORS, *spandrel_ids()]
FAMILIES = ("junyanz-resnet (CycleGAN resnet_Nblocks), junyanz-unet (pix2pix unet_128/unet_256), "
            "msrresnet and edsr (BasicSR), and through spandrel: ")


def detect(state_dict: dict, arch: str | None = None, batch_stats: bool = False) -> Detected:
    """The network the weights describe; `arch` forces one of KNOWN_ARCHS; `batch_stats` (junyanz
    only) normalises batch-norm layers with each image's own statistics, as their test.py without --eval."""
    sd = {str(k): v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise NotACheckpoint("the state dict holds no tensors")
    if arch is not None:
        found = forced(sd, arch)
    else:
        found = None
        for fn in (*OWN_DETECTORS.values(), detect_spandrel):
            found = fn(sd)
            if found is not None:
                break
        if found is None:
            raise UnknownLayout(f"unknown layout: {describe_keys(sd)}. Known families: {FAMILIES}"
                                f"{', '.join(KNOWN_ARCHS[len(OWN_DETECTORS):])}")
    if batch_stats:
        if not found.arch.startswith("junyanz-"):
            raise ImportFailed(f"batch-statistics mode is junyanz's test.py without --eval; {found.arch} has "
                               "no such mode")
        use_batch_statistics(found)
    return found


def forced(sd: dict[str, torch.Tensor], arch: str) -> Detected:
    name = arch.strip().lower()
    if name not in KNOWN_ARCHS:
        raise ImportFailed(f"unknown --arch {arch!r}; known: {', '.join(KNOWN_ARCHS)}")
    fn = OWN_DETECTORS.get(name)
    found = fn(sd) if fn is not None else detect_spandrel(sd, forced=name)
    if found is None:
        raise LayoutMismatch(f"--arch {name}: the weights do not fit it ({describe_keys(sd)})")
    return found


def describe_keys(sd: dict[str, torch.Tensor]) -> str:
    """`N tensors, key prefixes a (12), b (3) ...; e.g. a.0.weight [64, 3, 3, 3]`."""
    prefixes = Counter(k.split(".")[0] for k in sd)
    top = ", ".join(f"{p} ({n})" for p, n in list(prefixes.items())[:6])
    more = f" and {len(prefixes) - 6} more" if len(prefixes) > 6 else ""
    first = next(iter(sd))
    return (f"{len(sd)} tensors, key prefixes {top}{more}; e.g. {first} "
            f"{list(sd[first].shape)}")
