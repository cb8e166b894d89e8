"""SRResNet generator and SRGAN discriminator (Ledig et al. 2017)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import norm_layer


@dataclass
class SRResNetConfig:
    arch: str = "srresnet"
    in_channels: int = 3
    out_channels: int = 3
    nf: int = 64
    n_blocks: int = 16
    scale: int = 4  # a power of two: one PixelShuffle(2) stage per factor 2
    norm: str = "batch"  # the paper's; "none" drops it (EDSR-style)
    # "bicubic": the network learns a residual over bicubic upsampling of its input, and its last
    # conv starts at zero, so training starts from bicubic quality (VDSR's global skip). "none": the paper's.
    skip: str = "none"

    @property
    def multiple_of(self) -> int:
        return 1


class SRResidualBlock(nn.Module):
    def __init__(self, nf: int, norm: str):
        super().__init__()
        norm_cls = norm_layer(norm)
        self.block = nn.Sequential(
            nn.Conv2d(nf, nf, 3, 1, 1), norm_cls(nf), nn.PReLU(nf),
            nn.Conv2d(nf, nf, 3, 1, 1), norm_cls(nf))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class SRResNet(nn.Module):
    """lr[N, C, h, w] in [-1, 1] -> sr[N, C, h*scale, w*scale] (linear output, nominally [-1, 1])."""

    Config = SRResNetConfig

    def __init__(self, cfg: SRResNetConfig):
        super().__init__()
        stages = int(math.log2(cfg.scale))
        if 2**stages != cfg.scale or stages < 1:
            raise ValueError(f"scale must be a power of two >= 2, got {cfg.scale}")
        self.cfg = cfg
        nf = cfg.nf
        self.head = nn.Sequential(nn.Conv2d(cfg.in_channels, nf, 9, 1, 4), nn.PReLU(nf))  # N x nf x h x w
        self.body = nn.Sequential(*[SRResidualBlock(nf, cfg.norm) for _ in range(cfg.n_blocks)],
                                  nn.Conv2d(nf, nf, 3, 1, 1), norm_layer(cfg.norm)(nf))
        up: list[nn.Module] = []
        for _ in range(stages):  # N x nf x h x w -> N x nf x 2h x 2w
            up += [nn.Conv2d(nf, nf * 4, 3, 1, 1), nn.PixelShuffle(2), nn.PReLU(nf)]
        self.upsample = nn.Sequential(*up)
        self.tail = nn.Conv2d(nf, cfg.out_channels, 9, 1, 4)
        if cfg.skip not in ("none", "bicubic"):
            raise ValueError(f"skip must be none or bicubic, got {cfg.skip!r}")
        if cfg.skip == "bicubic":
            if cfg.in_channels != cfg.out_channels:
                raise ValueError("skip=bicubic needs in_channels == out_channels")
            nn.init.zeros_(self.tail.weight)
            nn.init.zeros_(self.tail.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(x)
        h = h + self.body(h)  # global skip
        out = self.tail(self.upsample(h))
        if self.cfg.skip == "bicubic":
            out = out + F.interpolate(x, scale_factor=self.cfg.scale, mode="bicubic", align_corners=False)
        return out


@dataclass
class SRDiscriminatorConfig:
    in_channels: int = 3
    ndf: int = 64
    pool: int = 6  # features are pooled to pool x pool, so any input size >= 16 works


class SRDiscriminator(nn.Module):
    """VGG-style discriminator: 8 conv layers (64 -> 512, stride 2 every other), dense 1024, logit."""

    def __init__(self, cfg: SRDiscriminatorConfig):
        super().__init__()
        f = cfg.ndf
        layers: list[nn.Module] = [nn.Conv2d(cfg.in_channels, f, 3, 1, 1), nn.LeakyReLU(0.2, True)]
        ch = f
        for out, stride in [(f, 2), (f * 2, 1), (f * 2, 2), (f * 4, 1), (f * 4, 2), (f * 8, 1), (f * 8, 2)]:
            layers += [nn.Conv2d(ch, out, 3, stride, 1, bias=False), nn.BatchNorm2d(out), nn.LeakyReLU(0.2, True)]
            ch = out
        self.features = nn.Sequential(*layers)  # N x 8ndf x H/16 x W/16
        self.pool = nn.AdaptiveAvgPool2d(cfg.pool)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(ch * cfg.pool * cfg.pool, 1024), nn.LeakyReLU(0.2, True), nn.Linear(1024, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x))).squeeze(1)
