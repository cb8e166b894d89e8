"""Conditional DCGAN on class-labelled images (default: Fashion-MNIST 32x32, 10 classes)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..losses import GANLoss
from ..networks.dcgan import ConditionalGenerator, DCGANConfig, ProjectionDiscriminator
from ..networks.layers import init_weights
from .base import ExportSpec, Recipe, image_io


@dataclass
class DCGANLoss:
    real_label: float = 1.0  # < 1.0 = one-sided label smoothing (Salimans 2016)
    # Mode seeking (MSGAN, Mao et al. 2019): + weight / (|G(z1,y) - G(z2,y)| / |z1 - z2|) in G's loss, so
    # G cannot map every z of a class to one image. 0 = off.
    mode_seeking: float = 0.0


class DCGANRecipe(Recipe):
    ModelConfig = DCGANConfig
    LossConfig = DCGANLoss
    family = "dcgan"
    endpoint = "generate"

    def build(self) -> None:
        m: DCGANConfig = self.cfg.model
        self.nets["G"] = init_weights(ConditionalGenerator(m))
        self.nets["D"] = init_weights(ProjectionDiscriminator(m))
        self.gan = GANLoss("vanilla", real_label=self.cfg.loss.real_label)
        self.adam("G", [self.nets["G"]], self.cfg.train.lr_g)
        self.adam("D", [self.nets["D"]], self.cfg.train.lr_d)

    def train_step(self, batch, step):
        real, label = batch["image"], batch["label"]  # N x C x S x S, N
        z = torch.randn(real.shape[0], self.cfg.model.latent_dim, device=self.device)
        half = real.shape[0] // 2
        ms = self.cfg.loss.mode_seeking > 0 and half > 0
        # fake labels: the real batch's, with the second half repeating the first when mode seeking, so
        # that pairs (z_i, y_i), (z_i+half, y_i) share a class
        fake_label = torch.cat([label[:half], label[:half], label[2 * half:]]) if ms else label
        fake = self.ddp["G"](z, fake_label)
        # D: maximise log D(x|y) + log(1 - D(G(z|y)|y))
        d_real = self.ddp["D"](real, label)
        d_fake = self.ddp["D"](fake.detach(), fake_label)
        loss_d = self.gan(d_real, True) + self.gan(d_fake, False)
        self.optimize("D", loss_d)
        self.set_requires_grad([self.nets["D"]], False)  # D is not updated in the G step
        # G: the non-saturating loss, maximise log D(G(z|y)|y)
        loss_g = self.gan(self.nets["D"](fake, fake_label), True)
        logs = {}
        if ms:
            ratio = ((fake[:half] - fake[half:2 * half]).abs().mean()
                     / (z[:half] - z[half:2 * half]).abs().mean())
            loss_ms = 1.0 / (ratio + 1e-5)
            loss_g = loss_g + self.cfg.loss.mode_seeking * loss_ms
            logs["loss_ms"] = loss_ms
        self.optimize("G", loss_g)
        self.set_requires_grad([self.nets["D"]], True)
        return self.check_finite({"loss_G": loss_g, "loss_D": loss_d, **logs,
                                  "D_real": torch.sigmoid(d_real).mean(), "D_fake": torch.sigmoid(d_fake).mean()}, step)

    @torch.no_grad()
    def sample_grid(self, batch):
        """One row per class, the same 10 latent vectors in every row."""
        m: DCGANConfig = self.cfg.model
        cols = 10
        g = torch.Generator().manual_seed(1234)
        z = torch.randn(cols, m.latent_dim, generator=g).repeat(m.num_classes, 1).to(self.device)
        labels = torch.arange(m.num_classes).repeat_interleave(cols).to(self.device)
        G = self.nets["G"]
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
        return {"generator": ExportSpec(self.nets["G"], (z, label), ["z", "label"],
                                        {"z": {0: "N"}, "label": {0: "N"}, "output": {0: "N"}}, card)}

    def card_fields(self):
        """Class names: Fashion-MNIST's when the run's data is it with its 10 classes, else "0".."K-1"."""
        from ..data import FASHION_MNIST_CLASSES
        k = int(self.cfg.model.num_classes)
        if self.cfg.data.get("kind") == "fashion_mnist" and k == len(FASHION_MNIST_CLASSES):
            return {"classes": list(FASHION_MNIST_CLASSES)}
        return {"classes": [str(i) for i in range(k)]}

    @classmethod
    def tiny_config(cls, data):
        return {"family": "dcgan", "data": {"kind": "fashion_mnist", "root": str(data["fashion"]), "image_size": 32},
                "model": {"latent_dim": 8, "num_classes": 10, "channels": 1, "image_size": 32, "ngf": 8, "ndf": 8,
                          "embed_dim": 4, "minibatch_std": True},
                "loss": {"real_label": 0.9, "mode_seeking": 1.0}}
