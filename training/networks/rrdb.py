"""ESRGAN's RRDBNet (Wang et al. 2018), as BasicSR / Real-ESRGAN define it: the `arch: rrdb` generator.

Parameter names follow BasicSR's `RRDBNet` (conv_first, body.N.rdbK.convM, conv_body, conv_up1,
conv_up2, conv_hr, conv_last), so Real-ESRGAN weights load into it as they are. Scale 4 uses two
nearest x2 + conv stages; scale 2 and 1 first fold the input with pixel-unshuffle (x2plus, x1),
so H and W must then be multiples of 2 (x2) or 4 (x1).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class RRDBConfig:
    arch: str = "rrdb"
    in_channels: int = 3
    out_channels: int = 3
    nf: int = 64  # BasicSR num_feat
    n_blocks: int = 23  # BasicSR num_block (6 for x4plus_anime_6B)
    gc: int = 32  # growth channels of each dense block
    scale: int = 4  # 1, 2 or 4

    @property
    def multiple_of(self) -> int:
        return {4: 1, 2: 2, 1: 4}[self.scale]


class ResidualDenseBlock(nn.Module):
    def __init__(self, nf: int, gc: int):
        super().__init__()
        self.conv1 = nn.Conv2d(nf, gc, 3, 1, 1)
        self.conv2 = nn.Conv2d(nf + gc, gc, 3, 1, 1)
        self.conv3 = nn.Conv2d(nf + 2 * gc, gc, 3, 1, 1)
        self.conv4 = nn.Conv2d(nf + 3 * gc, gc, 3, 1, 1)
        self.conv5 = nn.Conv2d(nf + 4 * gc, nf, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(0.2, True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x  # residual scaling


class RRDB(nn.Module):
    def __init__(self, nf: int, gc: int):
        super().__init__()
        self.rdb1, self.rdb2, self.rdb3 = ResidualDenseBlock(nf, gc), ResidualDenseBlock(nf, gc), \
            ResidualDenseBlock(nf, gc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """lr[N, C, h, w] -> sr[N, C, h*scale, w*scale]."""

    Config = RRDBConfig

    def __init__(self, cfg: RRDBConfig):
        super().__init__()
        if cfg.scale not in (1, 2, 4):
            raise ValueError(f"rrdb scale must be 1, 2 or 4, got {cfg.scale}")
        self.cfg = cfg
        nf, fold = cfg.nf, cfg.multiple_of
        self.conv_first = nn.Conv2d(cfg.in_channels * fold * fold, nf, 3, 1, 1)  # N x nf x h/fold x w/fold
        self.body = nn.Sequential(*[RRDB(nf, cfg.gc) for _ in range(cfg.n_blocks)])
        self.conv_body = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(nf, nf, 3, 1, 1)  # x2 each, after a nearest upsample
        self.conv_up2 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_hr = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf, cfg.out_channels, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(0.2, True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fold = self.cfg.multiple_of
        feat = self.conv_first(F.pixel_unshuffle(x, fold) if fold > 1 else x)
        feat = feat + self.conv_body(self.body(feat))
        feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
        feat = self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(feat)))
