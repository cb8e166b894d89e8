"""Community checkpoints -> a ready torch module and its description, for `python -m training import`.

`load_weights(path)` reads a weights file without running code from it; `detect(state_dict)` finds
the network (junyanz CycleGAN/pix2pix, BasicSR MSRResNet/EDSR, spandrel's main registry).
"""
from .detect import KNOWN_ARCHS, Detected, detect
from .errors import ImportFailed, LayoutMismatch, NotACheckpoint, Refused, UnknownLayout, UnsafeCheckpoint
from .load import load_weights

__all__ = ["KNOWN_ARCHS", "Detected", "ImportFailed", "LayoutMismatch", "NotACheckpoint", "Refused",
           "UnknownLayout", "UnsafeCheckpoint", "detect", "load_weights"]
