"""CycleGAN: unpaired translation with two generators and two PatchGANs (Zhu et al. 2017).

LSGAN objective, cycle-consistency (lambda 10) and identity (0.5 * lambda) losses,
a pool of 50 generated images per discriminator, lr constant then linearly to zero.
Naming as in junyanz: G_A: A -> B, G_B: B -> A, D_A judges domain B, D_B judges domain A.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import coerce
from ..losses import GANLoss, ImagePool
from ..networks.cyclegan import ResnetConfig
from ..networks.registry import arch_config, build_generator
from ..networks.layers import init_weights
from ..networks.pix2pix import PatchConfig, PatchDiscriminator
from .base import IMAGE_AXES, ExportSpec, Recipe, image_io


@dataclass
class CycleGANModel:
    generator: ResnetConfig = None
    discriminator: PatchConfig = None
    native_size: list[int] | None = None  # [H, W] the model was trained at (the card tells the service)

    def __post_init__(self):
        self.generator = arch_config(self.generator, "resnet")
        self.discriminator = coerce(PatchConfig, self.discriminator or {"norm": "instance"}, "discriminator")
        self.discriminator.in_channels = self.generator.out_channels


@dataclass
class CycleGANLoss:
    gan_mode: str = "lsgan"
    lambda_a: float = 10.0  # cycle A -> B -> A
    lambda_b: float = 10.0  # cycle B -> A -> B
    lambda_identity: float = 0.5  # scales lambda_a/b; needs in_channels == out_channels
    pool_size: int = 50


class CycleGANRecipe(Recipe):
    ModelConfig = CycleGANModel
    LossConfig = CycleGANLoss
    family = "cyclegan"
    endpoint = "translate"
    generator_nets = ("G_A", "G_B")  # init_from: [G_A file, G_B file] (junyanz resnet)

    def build(self) -> None:
        g, d = self.cfg.model.generator, self.cfg.model.discriminator
        back = arch_config({**vars(g), "in_channels": g.out_channels, "out_channels": g.in_channels}, g.arch, "g")
        self.nets["G_A"] = init_weights(build_generator(g))
        self.nets["G_B"] = init_weights(build_generator(back))
        self.nets["D_A"] = init_weights(PatchDiscriminator(d))
        self.nets["D_B"] = init_weights(PatchDiscriminator(coerce(PatchConfig, {**vars(d), "in_channels": g.in_channels}, "d")))
        self.gan = GANLoss(self.cfg.loss.gan_mode)
        self.pool_a = ImagePool(self.cfg.loss.pool_size)  # generated B images, for D_A
        self.pool_b = ImagePool(self.cfg.loss.pool_size)  # generated A images, for D_B
        self.adam("G", [self.nets["G_A"], self.nets["G_B"]], self.cfg.train.lr_g)
        self.adam("D", [self.nets["D_A"], self.nets["D_B"]], self.cfg.train.lr_d)

    def train_step(self, batch, step):
        L = self.cfg.loss
        real_a, real_b = batch["A"], batch["B"]
        G_A, G_B = self.ddp["G_A"], self.ddp["G_B"]
        fake_b = G_A(real_a)
        rec_a = G_B(fake_b)
        fake_a = G_B(real_b)
        rec_b = G_A(fake_a)
        # G step: D is not updated here, so it runs as the bare module with frozen weights
        self.set_requires_grad([self.nets["D_A"], self.nets["D_B"]], False)
        losses = {}
        if L.lambda_identity > 0 and real_a.shape[1] == real_b.shape[1]:
            losses["idt_A"] = F.l1_loss(G_A(real_b), real_b) * L.lambda_b * L.lambda_identity
            losses["idt_B"] = F.l1_loss(G_B(real_a), real_a) * L.lambda_a * L.lambda_identity
        losses["G_A"] = self.gan(self.bare["D_A"](fake_b), True)
        losses["G_B"] = self.gan(self.bare["D_B"](fake_a), True)
        losses["cycle_A"] = F.l1_loss(rec_a, real_a) * L.lambda_a
        losses["cycle_B"] = F.l1_loss(rec_b, real_b) * L.lambda_b
        loss_g = sum(losses.values())
        self.optimize("G", loss_g)
        self.set_requires_grad([self.nets["D_A"], self.nets["D_B"]], True)
        # D step on pooled fakes; each D loss halved as in the reference implementation
        pooled_b = self.pool_a.query(fake_b)
        pooled_a = self.pool_b.query(fake_a)
        loss_d_a = 0.5 * (self.gan(self.ddp["D_A"](real_b), True) + self.gan(self.ddp["D_A"](pooled_b), False))
        loss_d_b = 0.5 * (self.gan(self.ddp["D_B"](real_a), True) + self.gan(self.ddp["D_B"](pooled_a), False))
        self.optimize("D", loss_d_a + loss_d_b)
        return self.check_finite({"loss_G": loss_g, "loss_D_A": loss_d_a, "loss_D_B": loss_d_b,
                                  "cycle_A": losses["cycle_A"], "cycle_B": losses["cycle_B"]}, step)

    @torch.no_grad()
    def sample_grid(self, batch):
        """Rows of real A | G_A(A) | G_B(G_A(A)) | real B | G_B(B) | G_A(G_B(B))."""
        a, b = batch["A"][:6].to(self.device), batch["B"][:6].to(self.device)
        G_A, G_B = self.nets["G_A"], self.nets["G_B"]
        fb, fa = G_A(a), G_B(b)
        cols = [a, fb, G_B(fb), b, fa, G_A(fa)]
        cols = [c.expand(-1, 3, -1, -1) if c.shape[1] == 1 else c for c in cols]
        return torch.stack(cols, 1).flatten(0, 1), len(cols)

    def export_specs(self):
        g: ResnetConfig = self.cfg.model.generator
        m = g.multiple_of
        native = self.cfg.model.native_size
        specs = {}
        for role, net, cin, cout in (("a2b", "G_A", g.in_channels, g.out_channels),
                                     ("b2a", "G_B", g.out_channels, g.in_channels)):
            card = {"input": image_io(cin, multiple_of=m, min_size=max(m, 8), native_size=native),
                    "output": image_io(cout, scale=1),
                    "tiling": {"tile": 512, "overlap": 32}}
            size = native or [4 * m, 4 * m]
            specs[role] = ExportSpec(self.nets[net], (torch.randn(1, cin, *size),), ["image"], IMAGE_AXES, card)
        return specs

    def card_fields(self):
        """What the domains are: Fashion-MNIST class names, "horse"/"zebra" from a "horse2zebra" root, else A/B."""
        from ..data import FASHION_MNIST_CLASSES
        data = self.cfg.data
        if data.get("kind") == "fashion_mnist_domains":
            return {"domains": {"a": FASHION_MNIST_CLASSES[int(data.get("class_a", 7))],
                                "b": FASHION_MNIST_CLASSES[int(data.get("class_b", 9))]}}
        stem = Path(str(data.get("root", ""))).name
        if re.fullmatch(r"[A-Za-z0-9_-]+2[A-Za-z0-9_-]+", stem or ""):
            a, b = stem.split("2", 1)
            return {"domains": {"a": a, "b": b}}
        return {"domains": {"a": "A", "b": "B"}}

    def extra_state(self):
        return {"pool_a": self.pool_a.state_dict(), "pool_b": self.pool_b.state_dict()}

    def load_extra_state(self, state):
        if state:
            self.pool_a.load_state_dict(state["pool_a"], self.device)
            self.pool_b.load_state_dict(state["pool_b"], self.device)
