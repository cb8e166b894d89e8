"""Conditional DCGAN on class-labelled images (default: Fashion-MNIST 32x32, 10 classes)."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..losses import GANLoss
from ..networks.dcgan import ConditionalGenerator, DCGANConfig, ProjectionDiscriminator
from ..networks.layers import init_weights
from .base import ExportSpec, Recipe, image_io

STANDING_STATS_BATCHES = 20  # x 100 latents: the EMA generator's batch-norm statistics for export


@dataclass
class DCGANLoss:
    gan_mode: str = "vanilla"  # vanilla | lsgan | hinge
    real_label: float = 1.0  # < 1.0 = one-sided label smoothing (Salimans 2016; vanilla and lsgan)
    # Mode seeking (MSGAN, Mao et al. 2019): + weight / (|G(z1,y) - G(z2,y)| / |z1 - z2|) in G's loss, so
    # G cannot map every z of a class to one image. 0 = off.
    mode_seeking: float = 0.0
    # > 0 (needs model.aux_classifier): D learns to classify real images (cross-entropy), G is pushed to make
    # images D's class head reads as the requested class (AC-GAN, Odena 2017; D's head sees real images only)
    aux_class: float = 0.0


class DCGANRecipe(Recipe):
    ModelConfig = DCGANConfig
    LossConfig = DCGANLoss
    family = "dcgan"
    endpoint = "generate"
    channels_last = False  # measured: NHWC makes its 32x32 spectral-norm networks 2x slower
    # measured (torch 2.14, AMX): the backward of its transposed convolutions is ~10x slower in bf16 than in
    # fp32 at these shapes; G in fp32 and D in bf16 train 1.4x faster than fp32, G in bf16 no faster at all
    fp32_nets = ("G", "G_ema")

    def build(self) -> None:
        m: DCGANConfig = self.cfg.model
        if self.cfg.loss.aux_class > 0 and not m.aux_classifier:
            raise ValueError("loss.aux_class > 0 needs model.aux_classifier: true")
        self.nets["G"] = init_weights(ConditionalGenerator(m))
        self.nets["D"] = init_weights(ProjectionDiscriminator(m))
        if m.ema_decay > 0:
            # the averaged generator: no optimizer, no gradients; its weights follow G's (update_ema)
            self.nets["G_ema"] = copy.deepcopy(self.nets["G"]).requires_grad_(False)
        self.gan = GANLoss(self.cfg.loss.gan_mode, real_label=self.cfg.loss.real_label)
        self.adam("G", [self.nets["G"]], self.cfg.train.lr_g)
        self.adam("D", [self.nets["D"]], self.cfg.train.lr_d)

    def train_step(self, batch, step):
        real, label = batch["image"], batch["label"]  # N x C x S x S, N
        z = torch.randn(real.shape[0], self.cfg.model.latent_dim, device=self.device)
        half = real.shape[0] // 2
        ms = self.cfg.loss.mode_seeking > 0 and half > 0
        aux = self.cfg.loss.aux_class
        # fake labels: the real batch's, with the second half repeating the first when mode seeking, so
        # that pairs (z_i, y_i), (z_i+half, y_i) share a class
        fake_label = torch.cat([label[:half], label[:half], label[2 * half:]]) if ms else label
        fake = self.ddp["G"](z, fake_label)
        # D: tell real (x, y) from generated (G(z, y), y); with aux, also classify the real x
        d_real, loss_cls_d = self._score(self.ddp["D"], real, label)
        logs = {"loss_D_cls": loss_cls_d} if aux > 0 else {}
        d_fake = self.ddp["D"](fake.detach(), fake_label)
        loss_d = self.gan(d_real, True) + self.gan(d_fake, False) + aux * loss_cls_d
        self.optimize("D", loss_d)
        self.set_requires_grad([self.nets["D"]], False)  # D is not updated in the G step
        # G: the non-saturating (or hinge) loss on D(G(z|y)|y), plus D's class head on the fake
        d_gen, loss_cls_g = self._score(self.bare["D"], fake, fake_label)
        if aux > 0:
            logs["loss_G_cls"] = loss_cls_g
        loss_g = self.gan(d_gen, True, generator=True) + aux * loss_cls_g
        if ms:
            ratio = ((fake[:half] - fake[half:2 * half]).abs().mean()
                     / (z[:half] - z[half:2 * half]).abs().mean())
            loss_ms = 1.0 / (ratio + 1e-5)
            loss_g = loss_g + self.cfg.loss.mode_seeking * loss_ms
            logs["loss_ms"] = loss_ms
        self.optimize("G", loss_g)
        self.set_requires_grad([self.nets["D"]], True)
        self.update_ema(step)
        return self.check_finite({"loss_G": loss_g, "loss_D": loss_d, **logs,
                                  **self._d_outputs(d_real, d_fake)}, step)

    def _d_outputs(self, d_real, d_fake) -> dict:
        """D's mean output on real and fake: probabilities for vanilla/lsgan, raw scores for hinge."""
        squash = (lambda t: t) if self.cfg.loss.gan_mode == "hinge" else torch.sigmoid
        return {"D_real": squash(d_real).mean(), "D_fake": squash(d_fake).mean()}

    def _score(self, D, image, label):
        """D's score of (image, label), and the cross-entropy of its class head against label (0.0 when the
        aux loss is off)."""
        if self.cfg.loss.aux_class > 0:
            score, classes = D(image, label, with_class=True)
            return score, F.cross_entropy(classes, label)
        return D(image, label), 0.0

    @torch.no_grad()
    def update_ema(self, step: int) -> None:
        """G_ema <- decay * G_ema + (1 - decay) * G; the decay ramps up over the first steps (an average
        over ~step steps early on, so that the first images do not linger); buffers are copied."""
        if "G_ema" not in self.nets:
            return
        decay = min(self.cfg.model.ema_decay, (1.0 + step) / (10.0 + step))
        ema, g = self.nets["G_ema"], self.nets["G"]
        for pe, p in zip(ema.parameters(), g.parameters()):
            pe.lerp_(p.detach(), 1.0 - decay)
        for be, b in zip(ema.buffers(), g.buffers()):
            be.copy_(b)

    def served_generator(self) -> torch.nn.Module:
        """The generator sheets show and export writes: with EMA, a copy of G_ema whose batch-norm
        statistics are re-measured on its own activations (G's running statistics are those of other
        weights); else G. Deterministic: fixed latents, every class in turn."""
        if "G_ema" not in self.nets:
            return self.nets["G"]
        m: DCGANConfig = self.cfg.model
        G = copy.deepcopy(self.nets["G_ema"]).to(self.device)
        bns = [b for b in G.modules() if isinstance(b, torch.nn.modules.batchnorm._BatchNorm)]
        for b in bns:
            b.reset_running_stats()
            b.momentum = None  # a plain average over the refresh batches
        gen = torch.Generator().manual_seed(4321)
        G.train()
        with torch.no_grad():
            for _ in range(STANDING_STATS_BATCHES):
                z = torch.randn(100, m.latent_dim, generator=gen).to(self.device)
                G(z, torch.arange(100, device=self.device) % m.num_classes)
        for b in bns:
            b.momentum = 0.1
        return G.eval()

    @torch.no_grad()
    def sample_grid(self, batch):
        """One row per class, the same 10 latent vectors in every row."""
        m: DCGANConfig = self.cfg.model
        cols = 10
        g = torch.Generator().manual_seed(1234)
        z = torch.randn(cols, m.latent_dim, generator=g).repeat(m.num_classes, 1).to(self.device)
        labels = torch.arange(m.num_classes).repeat_interleave(cols).to(self.device)
        G = self.served_generator()
        was_training = G.training
        G.eval()
        images = G(z, labels)
        G.train(was_training)
        return images, cols

    def export_specs(self):
        m: DCGANConfig = self.cfg.model
        z = torch.randn(2, m.latent_dim)
        label = torch.tensor([0, m.num_classes - 1])
        card = {
            "latent_dim": m.latent_dim,
            "output": image_io(m.channels, size=[m.image_size, m.image_size]),
        }
        return {"generator": ExportSpec(self.served_generator(), (z, label), ["z", "label"],
                                        {"z": {0: "N"}, "label": {0: "N"}, "output": {0: "N"}}, card)}

    def card_fields(self):
        """Class names: Fashion-MNIST's when the run's data is it with its 10 classes, else "0".."K-1"."""
        from ..data import FASHION_MNIST_CLASSES
        k = int(self.cfg.model.num_classes)
        if self.cfg.data.get("kind") == "fashion_mnist" and k == len(FASHION_MNIST_CLASSES):
            return {"classes": list(FASHION_MNIST_CLASSES)}
        return {"classes": [str(i) for i in range(k)]}
