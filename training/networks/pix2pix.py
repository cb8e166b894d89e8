"""pix2pix networks (Isola et al. 2017): U-Net generator and PatchGAN discriminator.

Follows junyanz/pytorch-CycleGAN-and-pix2pix: the U-Net is built from the innermost
block outwards; dropout in the three innermost decoder blocks; no norm at the
outermost and innermost levels.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .layers import norm_layer


@dataclass
class UNetConfig:
    arch: str = "unet"
    in_channels: int = 3
    out_channels: int = 3
    num_downs: int = 8  # 8 -> inputs must be multiples of 256 (1x1 bottleneck at 256x256)
    ngf: int = 64
    norm: str = "batch"
    dropout: bool = True
    # True: conv biases only with instance norm, as junyanz's UnetGenerator decides (differs from the
    # default rule, bias unless batch norm, only for norm "none"); set by `import` for their --norm none
    junyanz_bias: bool = False
    # "rgb": the U-Net's output is the image. "chroma" (gray -> colour: in_channels 1, out_channels 3): the
    # U-Net predicts only the two chroma planes (Cb, Cr) and the graph rebuilds RGB from them and the input,
    # taken as the luma Y (ITU-R 601, as PIL's "L"): the output keeps the input's detail exactly, and the
    # network spends all of itself on colour (as colorization models predict ab given L, Zhang 2016)
    output: str = "rgb"

    def __post_init__(self):
        if self.output not in ("rgb", "chroma"):
            raise ValueError(f"unet output must be rgb or chroma, not {self.output!r}")
        if self.output == "chroma" and (self.in_channels, self.out_channels) != (1, 3):
            raise ValueError("unet output chroma takes 1 channel (luma) in and gives 3 (RGB) out")

    @property
    def multiple_of(self) -> int:
        return 2**self.num_downs


class UNetBlock(nn.Module):
    """One U-Net level: down -> submodule -> up, with the skip concatenation."""

    def __init__(self, outer: int, inner: int, in_ch: int | None = None, sub: nn.Module | None = None,
                 outermost: bool = False, innermost: bool = False, norm: str = "batch", dropout: bool = False,
                 use_bias: bool | None = None):
        super().__init__()
        self.outermost = outermost
        in_ch = outer if in_ch is None else in_ch
        norm_cls = norm_layer(norm)
        use_bias = norm != "batch" if use_bias is None else use_bias
        down = nn.Conv2d(in_ch, inner, 4, 2, 1, bias=use_bias)  # H -> H/2
        if outermost:
            up = nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1)
            layers = [down, sub, nn.ReLU(True), up, nn.Tanh()]
        elif innermost:
            up = nn.ConvTranspose2d(inner, outer, 4, 2, 1, bias=use_bias)
            layers = [nn.LeakyReLU(0.2, True), down, nn.ReLU(True), up, norm_cls(outer)]
        else:
            up = nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1, bias=use_bias)
            layers = [nn.LeakyReLU(0.2, True), down, norm_cls(inner), sub, nn.ReLU(True), up, norm_cls(outer)]
            if dropout:
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], dim=1)  # skip connection


class UNetGenerator(nn.Module):
    """image[N, in, H, W] -> image[N, out, H, W]; H and W multiples of 2**num_downs."""

    Config = UNetConfig

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        if cfg.num_downs < 5:
            raise ValueError("num_downs must be >= 5 (the outer four levels widen ngf -> 8*ngf)")
        self.cfg = cfg
        f = cfg.ngf
        kw = {"norm": cfg.norm, "use_bias": cfg.norm == "instance" if cfg.junyanz_bias else None}
        block = UNetBlock(f * 8, f * 8, innermost=True, **kw)  # 1/2^num_downs resolution
        for _ in range(cfg.num_downs - 5):
            block = UNetBlock(f * 8, f * 8, sub=block, dropout=cfg.dropout, **kw)
        block = UNetBlock(f * 4, f * 8, sub=block, **kw)
        block = UNetBlock(f * 2, f * 4, sub=block, **kw)
        block = UNetBlock(f, f * 2, sub=block, **kw)
        unet_out = 2 if cfg.output == "chroma" else cfg.out_channels
        self.model = UNetBlock(unet_out, f, in_ch=cfg.in_channels, sub=block, outermost=True, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.output == "chroma":
            return luma_chroma_to_rgb(x, self.model(x))
        return self.model(x)


def luma_chroma_to_rgb(luma: torch.Tensor, chroma: torch.Tensor) -> torch.Tensor:
    """luma[N, 1, H, W] in [-1, 1] and chroma[N, 2, H, W] in [-1, 1] (Cb, Cr scaled by 2) -> RGB in [-1, 1],
    by the full-range ITU-R 601 (JPEG) YCbCr -> RGB matrix; out-of-gamut values are clipped."""
    y = (luma + 1.0) * 0.5
    cb, cr = chroma[:, 0:1] * 0.5, chroma[:, 1:2] * 0.5
    rgb = torch.cat([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], dim=1)
    return rgb.clamp(0.0, 1.0) * 2.0 - 1.0


@dataclass
class PatchConfig:
    in_channels: int = 6  # pix2pix: input and output concatenated
    ndf: int = 64
    n_layers: int = 3  # 3 -> 70x70 receptive field
    norm: str = "batch"


class PatchDiscriminator(nn.Module):
    """PatchGAN: image[N, C, H, W] -> logits[N, 1, h, w], one per overlapping patch."""

    def __init__(self, cfg: PatchConfig):
        super().__init__()
        norm_cls = norm_layer(cfg.norm)
        use_bias = cfg.norm != "batch"
        ch = cfg.ndf
        layers: list[nn.Module] = [nn.Conv2d(cfg.in_channels, ch, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        for i in range(1, cfg.n_layers + 1):
            nxt = cfg.ndf * min(2**i, 8)
            stride = 2 if i < cfg.n_layers else 1
            layers += [nn.Conv2d(ch, nxt, 4, stride, 1, bias=use_bias), norm_cls(nxt), nn.LeakyReLU(0.2, True)]
            ch = nxt
        layers.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
