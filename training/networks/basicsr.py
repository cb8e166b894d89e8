"""BasicSR's MSRResNet and EDSR (XPixelGroup/BasicSR, `basicsr/archs/srresnet_arch.py`, `edsr_arch.py`).

Written from BasicSR's definitions so that their published weights load under the same parameter names
(conv_first, body.N.conv1/conv2, upconv1/upconv2, conv_hr, conv_last; conv_after_body, upsample.K).
spandrel does not carry these two families; `python -m training import` detects them from their keys.

Both take and return images in [0, 1]:
- MSRResNet: conv trunk of residual blocks without batch norm, pixel-shuffle upsampling (x2/x3 in one
  stage, x4 in two x2 stages), LeakyReLU(0.1); the output adds the bilinearly upsampled input.
- EDSR: (x - rgb_mean) * img_range, conv trunk with a long skip, `Upsample` (x2^n stages or one x3),
  then / img_range + rgb_mean. res_scale scales each block's residual (1 for EDSR-M, 0.1 for EDSR-L).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# DIV2K RGB mean, as BasicSR's EDSR defaults
DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)


@dataclass
class MSRResNetConfig:
    arch: str = "msrresnet"
    in_channels: int = 3  # BasicSR num_in_ch
    out_channels: int = 3  # num_out_ch (must equal in_channels: the bilinear skip adds the input)
    num_feat: int = 64
    num_block: int = 16
    scale: int = 4  # 2, 3 or 4

    @property
    def multiple_of(self) -> int:
        return 1


@dataclass
class EDSRConfig:
    arch: str = "edsr"
    in_channels: int = 3
    out_channels: int = 3
    num_feat: int = 64
    num_block: int = 16
    scale: int = 4  # 2^n or 3
    res_scale: float = 1.0
    img_range: float = 255.0
    rgb_mean: tuple[float, ...] = DIV2K_RGB_MEAN

    @property
    def multiple_of(self) -> int:
        return 1


class ResidualBlockNoBN(nn.Module):
    """x + res_scale * conv2(relu(conv1(x))), 3x3 convs with bias, no normalisation."""

    def __init__(self, num_feat: int, res_scale: float = 1.0):
        super().__init__()
        self.res_scale = res_scale
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.relu(self.conv1(x))) * self.res_scale


class MSRResNet(nn.Module):
    """image[N, C, H, W] in [0, 1] -> image[N, C, H*scale, W*scale]."""

    Config = MSRResNetConfig

    def __init__(self, cfg: MSRResNetConfig):
        super().__init__()
        if cfg.scale not in (2, 3, 4):
            raise ValueError(f"MSRResNet supports scale 2, 3 or 4, not {cfg.scale}")
        if cfg.in_channels != cfg.out_channels:
            raise ValueError("MSRResNet adds its upsampled input to the output: in and out channels must match")
        self.cfg = cfg
        f = cfg.num_feat
        self.conv_first = nn.Conv2d(cfg.in_channels, f, 3, 1, 1)
        self.body = nn.Sequential(*[ResidualBlockNoBN(f) for _ in range(cfg.num_block)])
        if cfg.scale == 4:  # two x2 pixel-shuffle stages sharing one PixelShuffle(2)
            self.upconv1 = nn.Conv2d(f, f * 4, 3, 1, 1)
            self.upconv2 = nn.Conv2d(f, f * 4, 3, 1, 1)
            self.pixel_shuffle = nn.PixelShuffle(2)
        else:
            self.upconv1 = nn.Conv2d(f, f * cfg.scale * cfg.scale, 3, 1, 1)
            self.pixel_shuffle = nn.PixelShuffle(cfg.scale)
        self.conv_hr = nn.Conv2d(f, f, 3, 1, 1)
        self.conv_last = nn.Conv2d(f, cfg.out_channels, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(0.1, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(self.lrelu(self.conv_first(x)))
        out = self.lrelu(self.pixel_shuffle(self.upconv1(out)))
        if self.cfg.scale == 4:
            out = self.lrelu(self.pixel_shuffle(self.upconv2(out)))
        out = self.conv_last(self.lrelu(self.conv_hr(out)))
        base = F.interpolate(x, scale_factor=self.cfg.scale, mode="bilinear", align_corners=False)
        return out + base


def upsample_stages(scale: int, num_feat: int) -> nn.Sequential:
    """BasicSR's `Upsample`: log2(scale) x (conv f->4f, PixelShuffle(2)), or one conv f->9f + PixelShuffle(3)."""
    layers: list[nn.Module] = []
    if scale >= 1 and scale & (scale - 1) == 0:
        for _ in range(int(math.log2(scale))):
            layers += [nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1), nn.PixelShuffle(2)]
    elif scale == 3:
        layers += [nn.Conv2d(num_feat, 9 * num_feat, 3, 1, 1), nn.PixelShuffle(3)]
    else:
        raise ValueError(f"EDSR supports scale 2^n or 3, not {scale}")
    return nn.Sequential(*layers)


class EDSR(nn.Module):
    """image[N, C, H, W] in [0, 1] -> image[N, C_out, H*scale, W*scale]."""

    Config = EDSRConfig

    def __init__(self, cfg: EDSRConfig):
        super().__init__()
        if len(cfg.rgb_mean) != cfg.in_channels or cfg.in_channels != cfg.out_channels:
            raise ValueError("EDSR subtracts and adds back one mean per channel: rgb_mean, in and out "
                             "channels must have the same length")
        self.cfg = cfg
        f = cfg.num_feat
        # a constant (BasicSR keeps it outside the state dict too)
        self.register_buffer("mean", torch.tensor(cfg.rgb_mean, dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)
        self.conv_first = nn.Conv2d(cfg.in_channels, f, 3, 1, 1)
        self.body = nn.Sequential(*[ResidualBlockNoBN(f, cfg.res_scale) for _ in range(cfg.num_block)])
        self.conv_after_body = nn.Conv2d(f, f, 3, 1, 1)
        self.upsample = upsample_stages(cfg.scale, f)
        self.conv_last = nn.Conv2d(f, cfg.out_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.mean.to(x.dtype)
        feat = self.conv_first((x - mean) * self.cfg.img_range)
        feat = feat + self.conv_after_body(self.body(feat))
        return self.conv_last(self.upsample(feat)) / self.cfg.img_range + mean
