"""CycleGAN ResNet generator (Zhu et al. 2017; Johnson et al. 2016): reflection padding, instance norm."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .layers import norm_layer


@dataclass
class ResnetConfig:
    arch: str = "resnet"
    in_channels: int = 3
    out_channels: int = 3
    ngf: int = 64
    n_blocks: int = 9  # 9 for 256x256, 6 for 128x128 and below
    n_downsampling: int = 2
    norm: str = "instance"
    dropout: bool = False

    @property
    def multiple_of(self) -> int:
        return 2**self.n_downsampling


class ResnetBlock(nn.Module):
    def __init__(self, ch: int, norm: str, dropout: bool):
        super().__init__()
        norm_cls = norm_layer(norm)
        use_bias = norm == "instance"
        layers: list[nn.Module] = [nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3, bias=use_bias), norm_cls(ch), nn.ReLU(True)]
        if dropout:
            layers.append(nn.Dropout(0.5))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3, bias=use_bias), norm_cls(ch)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class ResnetGenerator(nn.Module):
    """image[N, in, H, W] -> image[N, out, H, W]; H and W multiples of 2**n_downsampling."""

    Config = ResnetConfig

    def __init__(self, cfg: ResnetConfig):
        super().__init__()
        self.cfg = cfg
        norm_cls = norm_layer(cfg.norm)
        use_bias = cfg.norm == "instance"
        ch = cfg.ngf
        layers: list[nn.Module] = [  # N x in x H x W -> N x ngf x H x W
            nn.ReflectionPad2d(3), nn.Conv2d(cfg.in_channels, ch, 7, bias=use_bias), norm_cls(ch), nn.ReLU(True)]
        for _ in range(cfg.n_downsampling):  # -> N x ngf*2^d x H/2^d x W/2^d
            layers += [nn.Conv2d(ch, ch * 2, 3, 2, 1, bias=use_bias), norm_cls(ch * 2), nn.ReLU(True)]
            ch *= 2
        layers += [ResnetBlock(ch, cfg.norm, cfg.dropout) for _ in range(cfg.n_blocks)]
        for _ in range(cfg.n_downsampling):  # back to N x ngf x H x W
            layers += [nn.ConvTranspose2d(ch, ch // 2, 3, 2, 1, output_padding=1, bias=use_bias),
                       norm_cls(ch // 2), nn.ReLU(True)]
            ch //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ch, cfg.out_channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
