"""Conditional DCGAN (Radford et al. 2016; Mirza & Osindero 2014; projection D of Miyato & Koyama 2018).

DCGAN rules: transposed convs in G, strided convs in D, batch norm, ReLU + Tanh in G,
LeakyReLU(0.2) in D. G is conditioned by concatenating a learned class embedding to z;
D by a projection term <embed(y), h>. Options the shipped `fashion` uses:
`spectral_norm` (Miyato 2018: every D layer, no batch norm in D) and `aux_classifier`
(a class head on D's features, as AC-GAN, Odena 2017), both off by default.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _sn


@dataclass
class DCGANConfig:
    latent_dim: int = 100
    num_classes: int = 10
    channels: int = 1
    image_size: int = 32
    ngf: int = 64
    ndf: int = 64
    embed_dim: int = 50
    minibatch_std: bool = False  # D sees the batch's feature spread (Karras 2018): counters mode collapse
    spectral_norm: bool = False  # spectral norm on every D layer (and no batch norm in D)
    aux_classifier: bool = False  # D also predicts the class (loss.aux_class weighs it)
    # > 0: keep an exponential moving average of G's weights with this decay (Karras 2018, Yazici 2019);
    # the average is what sample sheets show and what export writes
    ema_decay: float = 0.0


def _stages(image_size: int) -> tuple[int, int]:
    """Split image_size into base * 2**k with base in 3..7 (32 -> 4*2^3, 28 -> 7*2^2, 64 -> 4*2^4)."""
    k, size = 0, image_size
    while size % 2 == 0 and size > 7:
        size //= 2
        k += 1
    if not 3 <= size <= 7 or k < 1:
        raise ValueError(f"image_size {image_size} must be base * 2**k with base 3..7 and k >= 1")
    return size, k


class ConditionalGenerator(nn.Module):
    """G(z[N, latent_dim], label[N]) -> image[N, C, S, S] in [-1, 1]."""

    def __init__(self, cfg: DCGANConfig):
        super().__init__()
        self.cfg = cfg
        base, k = _stages(cfg.image_size)
        self.embed = nn.Embedding(cfg.num_classes, cfg.embed_dim)
        ch = cfg.ngf * 2 ** (k - 1)
        layers: list[nn.Module] = [
            # N x (latent+embed) x 1 x 1 -> N x ch x base x base
            nn.ConvTranspose2d(cfg.latent_dim + cfg.embed_dim, ch, base, 1, 0, bias=False),
            nn.BatchNorm2d(ch),
            nn.ReLU(True),
        ]
        for _ in range(k - 1):
            # N x ch x s x s -> N x ch/2 x 2s x 2s
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch // 2), nn.ReLU(True)]
            ch //= 2
        # N x ngf x S/2 x S/2 -> N x C x S x S
        layers += [nn.ConvTranspose2d(ch, cfg.channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        h = torch.cat([z, self.embed(label)], dim=1)  # N x (latent+embed)
        return self.net(h[:, :, None, None])


class ProjectionDiscriminator(nn.Module):
    """D(image, label) -> logit[N]; unconditional logit plus the projection <embed(y), h>.

    With `aux_classifier`, `forward(..., with_class=True)` also returns class logits[N, K].
    """

    def __init__(self, cfg: DCGANConfig):
        super().__init__()
        base, k = _stages(cfg.image_size)
        sn = _sn if cfg.spectral_norm else (lambda m: m)
        ch = cfg.ndf
        # N x C x S x S -> N x ndf x S/2 x S/2 (no batch norm on the input layer, as in DCGAN)
        layers: list[nn.Module] = [sn(nn.Conv2d(cfg.channels, ch, 4, 2, 1, bias=cfg.spectral_norm)),
                                   nn.LeakyReLU(0.2, True)]
        for _ in range(k - 1):
            if cfg.spectral_norm:
                layers += [sn(nn.Conv2d(ch, ch * 2, 4, 2, 1)), nn.LeakyReLU(0.2, True)]
            else:
                layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch * 2),
                           nn.LeakyReLU(0.2, True)]
            ch *= 2
        self.features = nn.Sequential(*layers)  # N x ch x base x base
        self.minibatch_std = cfg.minibatch_std
        self.head = sn(nn.Conv2d(ch + int(cfg.minibatch_std), 1, base, 1, 0))  # N x 1 x 1 x 1
        self.embed = nn.Embedding(cfg.num_classes, ch)
        nn.init.xavier_uniform_(self.embed.weight)  # N(0, 1) would swamp the unconditional logit
        self.embed = sn(self.embed)
        self.classify = sn(nn.Linear(ch, cfg.num_classes)) if cfg.aux_classifier else None

    def forward(self, image: torch.Tensor, label: torch.Tensor, with_class: bool = False):
        h = self.features(image)
        head_in = h
        if self.minibatch_std:
            # one extra channel: the mean over features of the per-feature std across the batch
            spread = h.std(dim=0, unbiased=False).mean().expand(h.shape[0], 1, *h.shape[2:])
            head_in = torch.cat([h, spread], dim=1)
        unconditional = self.head(head_in).flatten(1).squeeze(1)
        pooled = h.sum(dim=(2, 3))
        logit = unconditional + (self.embed(label) * pooled).sum(dim=1)
        if not with_class:
            return logit
        if self.classify is None:
            raise ValueError("with_class needs model.aux_classifier: true")
        return logit, self.classify(pooled)
