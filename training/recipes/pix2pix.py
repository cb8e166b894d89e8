"""pix2pix: paired image-to-image translation, cGAN loss + lambda * L1 (Isola et al. 2017)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import coerce
from ..losses import GANLoss
from ..networks.layers import init_weights
from ..networks.pix2pix import PatchConfig, PatchDiscriminator, UNetConfig
from ..networks.registry import arch_config, build_generator
from .base import IMAGE_AXES, ExportSpec, Recipe, image_io


@dataclass
class Pix2PixModel:
    generator: UNetConfig = None
    discriminator: PatchConfig = None

    def __post_init__(self):
        self.generator = arch_config(self.generator, "unet")
        self.discriminator = _as(PatchConfig, self.discriminator)
        # the conditional D sees input and output stacked
        self.discriminator.in_channels = self.generator.in_channels + self.generator.out_channels


def _as(cls, value):
    return coerce(cls, value, cls.__name__)


@dataclass
class Pix2PixLoss:
    gan_mode: str = "vanilla"
    lambda_l1: float = 100.0


class Pix2PixRecipe(Recipe):
    ModelConfig = Pix2PixModel
    LossConfig = Pix2PixLoss
    family = "pix2pix"
    endpoint = "translate"
    generator_nets = ("G",)  # init_from: a junyanz unet

    def build(self) -> None:
        self.nets["G"] = init_weights(build_generator(self.cfg.model.generator))
        self.nets["D"] = init_weights(PatchDiscriminator(self.cfg.model.discriminator))
        self.gan = GANLoss(self.cfg.loss.gan_mode)
        self.adam("G", [self.nets["G"]], self.cfg.train.lr_g)
        self.adam("D", [self.nets["D"]], self.cfg.train.lr_d)

    def train_step(self, batch, step):
        real_a, real_b = batch["A"], batch["B"]  # N x Cin x H x W, N x Cout x H x W
        fake_b = self.ddp["G"](real_a)
        # D: real pairs vs generated pairs; halved as in the paper to slow D relative to G
        d_real = self.ddp["D"](torch.cat([real_a, real_b], 1))
        d_fake = self.ddp["D"](torch.cat([real_a, fake_b.detach()], 1))
        loss_d = 0.5 * (self.gan(d_real, True) + self.gan(d_fake, False))
        self.optimize("D", loss_d)
        self.set_requires_grad([self.nets["D"]], False)  # D is not updated in the G step
        # G: fool D, and stay close to the target in L1
        loss_gan = self.gan(self.bare["D"](torch.cat([real_a, fake_b], 1)), True)
        loss_l1 = F.l1_loss(fake_b, real_b)
        loss_g = loss_gan + self.cfg.loss.lambda_l1 * loss_l1
        self.optimize("G", loss_g)
        self.set_requires_grad([self.nets["D"]], True)
        return self.check_finite({"loss_G": loss_g, "loss_G_gan": loss_gan, "loss_G_L1": loss_l1,
                                  "loss_D": loss_d}, step)

    @torch.no_grad()
    def sample_grid(self, batch):
        """Rows of input | output | target."""
        a, b = batch["A"][:6].to(self.device), batch["B"][:6].to(self.device)
        G = self.nets["G"]
        G.eval()
        fake = G(a)
        G.train()
        a3 = a.expand(-1, 3, -1, -1) if a.shape[1] == 1 else a
        b3, f3 = (b.expand(-1, 3, -1, -1), fake.expand(-1, 3, -1, -1)) if b.shape[1] == 1 else (b, fake)
        return torch.stack([a3, f3, b3], 1).flatten(0, 1), 3

    def export_specs(self):
        g: UNetConfig = self.cfg.model.generator
        m = g.multiple_of
        card = {
            "input": image_io(g.in_channels, multiple_of=m, min_size=m, native_size=None),
            "output": image_io(g.out_channels, scale=1),
            "tiling": {"tile": max(512, m), "overlap": 32},
        }
        return {"generator": ExportSpec(self.nets["G"], (torch.randn(1, g.in_channels, m, m),), ["image"],
                                        IMAGE_AXES, card)}

    # the reference code runs batch norm on batch statistics at test time; the exported graph does not
    batch_norm_note = (" (the pix2pix reference runs batch norm on batch statistics at test time; here outputs"
                       " do not depend on the batch, and onnxruntime was checked against torch eval mode)")
