"""GAN objectives, the CycleGAN image pool, and the SRGAN content losses."""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class GANLoss(nn.Module):
    """vanilla: the minimax game with BCE on logits (Goodfellow 2014); lsgan: least squares (Mao 2017);
    hinge: max(0, 1 -+ D) for D and -D for G (Lim & Ye 2017; Miyato 2018), so `generator=True` matters."""

    def __init__(self, mode: str = "vanilla", real_label: float = 1.0, fake_label: float = 0.0):
        super().__init__()
        if mode not in ("vanilla", "lsgan", "hinge"):
            raise ValueError(f"unknown gan mode {mode!r} (vanilla | lsgan | hinge)")
        self.mode, self.real_label, self.fake_label = mode, real_label, fake_label

    def forward(self, logits: torch.Tensor, real: bool, generator: bool = False) -> torch.Tensor:
        if self.mode == "hinge":
            if generator:
                return -logits.mean()
            return F.relu(1.0 - logits).mean() if real else F.relu(1.0 + logits).mean()
        target = torch.full_like(logits, self.real_label if real else self.fake_label)
        if self.mode == "lsgan":
            return F.mse_loss(logits, target)
        return F.binary_cross_entropy_with_logits(logits, target)


class ImagePool:
    """Buffer of previously generated images (Shrivastava 2017), as CycleGAN uses to update D.

    With probability 1/2 a generated image is swapped for a stored one. Its contents are
    part of the checkpoint so that a resumed run continues exactly.
    """

    def __init__(self, size: int = 50):
        self.size = size
        self.images: list[torch.Tensor] = []

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images.detach()
        out = []
        for image in images.detach():
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif torch.rand(1).item() > 0.5:
                i = int(torch.randint(0, self.size, (1,)).item())
                out.append(self.images[i].clone())
                self.images[i] = image.clone()
            else:
                out.append(image)
        return torch.cat(out, 0)

    def state_dict(self) -> dict:
        return {"size": self.size, "images": torch.cat(self.images, 0).cpu() if self.images else torch.empty(0)}

    def load_state_dict(self, state: dict, device) -> None:
        self.size = int(state["size"])
        images = state["images"]
        self.images = [im.unsqueeze(0).to(device) for im in images] if images.numel() else []


VGG19_FILE = "vgg19-dcbb9e9d.pth"  # torchvision's IMAGENET1K_V1 weights file name
_VGG_LAYERS = {"relu2_2": 9, "relu3_4": 18, "relu4_4": 27, "relu5_4": 36}


def default_vgg19_path() -> Path:
    """Where torchvision would cache the VGG19 weights: $TORCH_HOME/hub/checkpoints/vgg19-dcbb9e9d.pth."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG19_FILE


class MissingWeightsError(FileNotFoundError):
    pass


class VGGFeatureLoss(nn.Module):
    """MSE between VGG19 features (SRGAN's VGG5,4 by default) of two images in [-1, 1].

    The weights are read from a local file only (never downloaded): `weights` or
    torchvision's cache path. A missing file raises MissingWeightsError naming the path.
    """

    def __init__(self, weights: str | os.PathLike | None = None, layer: str = "relu5_4"):
        super().__init__()
        from torchvision.models import vgg19

        path = Path(weights) if weights else default_vgg19_path()
        if not path.is_file():
            raise MissingWeightsError(
                f"VGG19 weights not found: {path} (torchvision file {VGG19_FILE}; this machine cannot download it. "
                f"Copy it there, pass loss.vgg_weights=PATH, or use loss.content=feature_matching)")
        if layer not in _VGG_LAYERS:
            raise ValueError(f"unknown VGG layer {layer!r} (known: {', '.join(_VGG_LAYERS)})")
        state = torch.load(path, map_location="cpu", weights_only=True)
        # only the convolutional part is used: a file with or without the classifier works
        features = vgg19(weights=None).features
        features.load_state_dict({k[len("features."):]: v for k, v in state.items() if k.startswith("features.")})
        self.features = features[: _VGG_LAYERS[layer]].eval()
        for p in self.features.parameters():
            p.requires_grad_(False)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def features_of(self, x: torch.Tensor) -> torch.Tensor:
        """The VGG features of an image batch in [-1, 1]."""
        return self.features(((x + 1) / 2 - self.mean) / self.std)

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(self.features_of(fake), self.features_of(real).detach())


def feature_matching_loss(feats_fake: list[torch.Tensor], feats_real: list[torch.Tensor]) -> torch.Tensor:
    """L1 between the discriminator's intermediate features (pix2pixHD): a content loss needing no download."""
    return sum(F.l1_loss(f, r.detach()) for f, r in zip(feats_fake, feats_real)) / len(feats_fake)
