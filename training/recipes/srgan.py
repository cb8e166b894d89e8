"""SRGAN (Ledig et al. 2017) in two stages.

stage "pretrain": SRResNet with the pixel (MSE) loss only: the PSNR-oriented model.
stage "gan": initialised from a pretrained SRResNet, adversarial fine-tuning with a
content loss. content = "vgg19" is the paper's VGG5,4 feature loss (needs torchvision's
VGG19 weights file locally); "feature_matching" matches the discriminator's own
features and works offline; "auto" picks vgg19 when the file exists, else
feature_matching, and says so.

Fine-tuning imported weights: `init_from: RealESRGAN_x4plus.pth` (or `loss.init_from`, which also takes
the ganforge SRResNet checkpoint above) with `model.generator: {arch: rrdb, nf: 64, n_blocks: 23}` and
`model.value_range: [0, 1]` (ESRGAN-family weights compute on [0, 1]; the batches are mapped to it and the
exported card says so).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .. import checkpoint as ckpt
from ..config import coerce
from ..losses import GANLoss, VGGFeatureLoss, default_vgg19_path, feature_matching_loss
from modelops.metrics import psnr_from_mse
from ..networks.layers import init_weights
from ..networks.registry import arch_config, build_generator
from ..networks.srgan import SRDiscriminator, SRDiscriminatorConfig
from .base import IMAGE_AXES, ExportSpec, Recipe, image_io


@dataclass
class SRGANModel:
    generator: Any = None  # the arch's config (networks/registry.py): srresnet (default) or rrdb
    discriminator: SRDiscriminatorConfig = None
    value_range: tuple[float, float] = (-1.0, 1.0)  # what G computes on: [0, 1] for ESRGAN-family init_from

    def __post_init__(self):
        self.generator = arch_config(self.generator, "srresnet")
        self.discriminator = coerce(SRDiscriminatorConfig, self.discriminator, "discriminator")
        self.value_range = tuple(float(v) for v in self.value_range)
        if self.value_range not in ((-1.0, 1.0), (0.0, 1.0)):
            raise ValueError(f"model.value_range must be [-1, 1] or [0, 1], got {list(self.value_range)}")


@dataclass
class SRGANLoss:
    stage: str = "pretrain"  # pretrain | gan
    init_from: str | None = None  # stage gan: the SRResNet checkpoint to start from; any stage: imported weights
    pixel_weight: float = 1.0  # MSE on pixels (the whole loss in pretrain)
    content: str = "auto"  # auto | vgg19 | feature_matching | none
    content_weight: float = 0.006  # the paper's 1/12.75 rescaling of VGG features
    adv_weight: float = 1e-3
    vgg_weights: str | None = None  # default: torchvision's cache path ($TORCH_HOME/hub/checkpoints)
    vgg_layer: str = "relu5_4"


class SRGANRecipe(Recipe):
    ModelConfig = SRGANModel
    LossConfig = SRGANLoss
    family = "srgan"
    endpoint = "upscale"
    generator_nets = ("G",)  # init_from: an ESRGAN / Real-ESRGAN file for arch rrdb

    def build(self) -> None:
        L: SRGANLoss = self.cfg.loss
        if L.stage not in ("pretrain", "gan"):
            raise ValueError(f"loss.stage must be pretrain or gan, got {L.stage!r}")
        # PyTorch default init: the N(0, 0.02) GAN init makes a 16-block residual net train slowly
        self.nets["G"] = build_generator(self.cfg.model.generator)
        self.adam("G", [self.nets["G"]], self.cfg.train.lr_g)
        self.content_mode = "none"
        if L.stage == "gan":
            self.nets["D"] = init_weights(SRDiscriminator(self.cfg.model.discriminator))
            self.adam("D", [self.nets["D"]], self.cfg.train.lr_d)
            self.gan = GANLoss("vanilla")
            self.content_mode = self._pick_content(L)
        self.vgg = None  # built at the first step: exporting a checkpoint must not need the VGG file

    def _pick_content(self, L: SRGANLoss) -> str:
        if L.content != "auto":
            return L.content
        path = Path(L.vgg_weights) if L.vgg_weights else default_vgg19_path()
        if path.is_file():
            return "vgg19"
        print(f"srgan: VGG19 weights not found at {path}; content loss = feature_matching (offline fallback)")
        return "feature_matching"

    def _vgg(self) -> VGGFeatureLoss:
        if self.vgg is None:
            self.vgg = VGGFeatureLoss(self.cfg.loss.vgg_weights, self.cfg.loss.vgg_layer).to(self.device)
        return self.vgg

    def _content(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        """The VGG feature loss: the features under the run's autocast, the MSE between them in fp32."""
        features = self.precision.forward(self._vgg().features_of)
        return F.mse_loss(features(sr), features(hr).detach())

    def generator_range(self) -> tuple[float, float]:
        return self.cfg.model.value_range

    def generate(self, net, lr: torch.Tensor) -> torch.Tensor:
        """G on a [-1, 1] batch, in [-1, 1]: mapped to and from model.value_range around the network."""
        lo, hi = self.cfg.model.value_range
        if (lo, hi) == (-1.0, 1.0):
            return net(lr)
        return (net((lr + 1) * (0.5 * (hi - lo)) + lo) - lo) * (2 / (hi - lo)) - 1

    def on_fresh_start(self) -> None:
        """init_from (imported weights); or loss.init_from: imported weights, or at stage gan the pretrained
        SRResNet checkpoint it names."""
        init = self.cfg.loss.init_from
        if init and self.cfg.init_from:
            raise ValueError("set init_from or loss.init_from, not both")
        if init and Path(init).is_file() and not is_checkpoint(init):
            from .init_from import load_init
            return load_init(self, init, "loss.init_from")
        super().on_fresh_start()
        if not init or (self.cfg.loss.stage != "gan" and Path(init).is_file()):
            return  # a checkpoint is for stage gan; a missing file is an error below
        payload = ckpt.load(init)
        if payload.get("family") != "srgan":
            raise ValueError(f"{self.cfg.loss.init_from}: not an srgan checkpoint ({payload.get('family')})")
        model = (payload.get("config") or {}).get("model") or {}
        arch = model.get("generator", {}).get("arch", "srresnet")
        if arch != self.cfg.model.generator.arch:
            raise ValueError(f"{self.cfg.loss.init_from}: its generator is {arch!r}, this run's is "
                             f"{self.cfg.model.generator.arch!r} (model.generator.arch)")
        value_range = tuple(float(v) for v in model.get("value_range", (-1.0, 1.0)))
        if value_range != self.cfg.model.value_range:
            raise ValueError(f"{init}: its generator computes on {list(value_range)}, this run's on "
                             f"{list(self.cfg.model.value_range)} (model.value_range)")
        self.nets["G"].load_state_dict(payload["nets"]["G"])

    def train_step(self, batch, step):
        L: SRGANLoss = self.cfg.loss
        lr, hr = batch["lr"], batch["hr"]  # N x 3 x h x w, N x 3 x 4h x 4w
        sr = self.generate(self.ddp["G"], lr)
        pixel = F.mse_loss(sr, hr)
        if L.stage == "pretrain":
            self.optimize("G", pixel)
            return self.check_finite({"loss_G": pixel, "psnr": _psnr(sr.detach(), hr)}, step)

        D = self.nets["D"]
        d_real = self.ddp["D"](hr)
        d_fake = self.ddp["D"](sr.detach())
        loss_d = self.gan(d_real, True) + self.gan(d_fake, False)
        self.optimize("D", loss_d)

        self.set_requires_grad([D], False)
        if self.content_mode == "feature_matching":
            features = self.precision.forward(lambda x: _logits_and_features(D, x))
            logits, feats_fake = features(sr)
            _, feats_real = features(hr)
            content = feature_matching_loss(feats_fake, feats_real)
        else:
            logits = self.bare["D"](sr)
            content = self._content(sr, hr) if self.content_mode == "vgg19" else torch.zeros((), device=self.device)
        adv = self.gan(logits, True)
        loss_g = L.pixel_weight * pixel + L.content_weight * content + L.adv_weight * adv
        self.optimize("G", loss_g)
        self.set_requires_grad([D], True)
        return self.check_finite({"loss_G": loss_g, "pixel": pixel, "content": content, "adv": adv,
                                  "loss_D": loss_d, "psnr": _psnr(sr.detach(), hr)}, step)

    @torch.no_grad()
    def sample_grid(self, batch):
        """Rows of bicubic-upsampled LR | SR | HR."""
        lr, hr = batch["lr"][:4].to(self.device), batch["hr"][:4].to(self.device)
        G = self.nets["G"]
        G.eval()
        sr = self.generate(G, lr).clamp(-1, 1)
        G.train()
        up = F.interpolate(lr, size=hr.shape[-2:], mode="bicubic", align_corners=False).clamp(-1, 1)
        return torch.stack([up, sr, hr], 1).flatten(0, 1), 3

    def export_specs(self):
        g = self.cfg.model.generator
        rng = list(self.cfg.model.value_range)
        card = {"input": image_io(g.in_channels, multiple_of=g.multiple_of, min_size=max(4, g.multiple_of),
                                  native_size=None, range=rng),
                "output": image_io(g.out_channels, scale=g.scale, range=rng),
                "tiling": {"tile": 128, "overlap": 12}}
        return {"generator": ExportSpec(self.nets["G"], (torch.randn(1, g.in_channels, 24, 24),), ["image"],
                                        IMAGE_AXES, card)}

    def description_extra(self) -> str:
        return f" x{self.cfg.model.generator.scale}"


def is_checkpoint(path: str | Path) -> bool:
    """A ganforge checkpoint (loss.init_from's first meaning), not an imported weights file."""
    try:
        ckpt.load(path)
    except ckpt.CheckpointError:
        return False
    return True


def _psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of images in [-1, 1] (a training-progress figure, RGB, no border crop): modelops/metrics.py's."""
    return torch.tensor(psnr_from_mse(float(F.mse_loss(a.clamp(-1, 1), b)), peak=2.0))


def _logits_and_features(D: SRDiscriminator, x: torch.Tensor):
    feats = []
    h = x
    for layer in D.features:
        h = layer(h)
        if isinstance(layer, torch.nn.LeakyReLU):
            feats.append(h)
    return D.classifier(D.pool(h)).squeeze(1), feats
