"""Small building blocks shared by several networks."""
from __future__ import annotations

import functools

from torch import nn


def norm_layer(kind: str):
    """Factory for a 2-d normalisation layer by name: batch | instance | none."""
    if kind == "batch":
        return functools.partial(nn.BatchNorm2d, affine=True, track_running_stats=True)
    if kind == "instance":
        # junyanz CycleGAN: no affine parameters, no running statistics.
        return functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
    if kind == "none":
        return lambda channels: nn.Identity()
    raise ValueError(f"unknown norm {kind!r} (batch | instance | none)")


def init_weights(net: nn.Module, gain: float = 0.02) -> nn.Module:
    """N(0, gain) conv/linear weights and N(1, gain) norm scales, as DCGAN and pix2pix do."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
    return net
