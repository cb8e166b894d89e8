"""junyanz/pytorch-CycleGAN-and-pix2pix generators -> ganforge's own "resnet" / "unet" networks.

Their `ResnetGenerator` and `UnetGenerator` (models/networks.py) are layer for layer ours: the same
Sequential indices, reflection padding, bias rule (bias only with instance norm), InstanceNorm without
affine parameters or running statistics, dropout between the two convs of a ResNet block (it shifts the
second conv from index 5 to 6) or after the up-norm of the inner U-Net levels (no parameters, no index
shift: invisible in the weights), ConvTranspose output_padding=1, final Tanh. Only names differ: their
ResNet block's Sequential is `conv_block`, ours `block`. What detection reads:

- resnet: `model.<i>.conv_block.<j>.*` keys. ngf and input channels from `model.1.weight`; n_blocks from
  the distinct block indices; downsamplings from the first block's index (4 + 3 * n); dropout from the
  second conv's index; norm: `model.2.weight` -> batch, else `model.1.bias` -> instance, else none;
  output channels from the last conv.
- unet: every key under `model.model.`; num_downs from the nesting depth (level k sits under k+1
  `model` components); ngf and input channels from the outermost down conv `model.model.0.weight`,
  output channels from its up conv `model.model.3.weight`; norm from the second level
  (`model.model.1.model.2.weight` -> batch, a down-conv bias -> instance, neither -> none).

Their published CycleGAN files carry InstanceNorm `running_mean` / `running_var` / `num_batches_tracked`
that their own loader drops (their issues #262, #461): dropped here too.
"""
from __future__ import annotations

import dataclasses
import re

import torch
from torch import nn

from ..networks.cyclegan import ResnetConfig, ResnetGenerator
from ..networks.pix2pix import UNetConfig, UNetGenerator
from .detected import Detected, load_exact, ready
from .errors import LayoutMismatch

_RESNET_KEY = re.compile(r"^model\.(\d+)\.conv_block\.(\d+)\.(\w+)$")
_STAT_SUFFIXES = (".running_mean", ".running_var", ".num_batches_tracked")


def detect_resnet(sd: dict[str, torch.Tensor]) -> Detected | None:
    """A junyanz ResnetGenerator, or None where the keys are not theirs."""
    hits = [m for k in sd if (m := _RESNET_KEY.match(k))]
    if not hits or not all(k.startswith("model.") for k in sd):
        return None
    cfg = resnet_config(sd, hits)
    mapped = {re.sub(r"^model\.(\d+)\.conv_block\.", r"model.\1.block.", k): v for k, v in sd.items()}
    net = ResnetGenerator(cfg)
    dropped = fit_norm_stats(net, mapped)
    load_exact(net, mapped, f"junyanz resnet_{cfg.n_blocks}blocks ({cfg.norm} norm)")
    notes = [(f"junyanz ResnetGenerator resnet_{cfg.n_blocks}blocks, ngf {cfg.ngf}, {cfg.norm} norm, "
              f"{'with' if cfg.dropout else 'no'} dropout: loaded as ganforge arch 'resnet' "
              "(their conv_block is our block; every other layer identical)")]
    return finish(net, "junyanz-resnet", {"netG": f"resnet_{cfg.n_blocks}blocks", **dataclasses.asdict(cfg)},
                  min_size=2 * cfg.multiple_of, notes=notes + dropped)


def resnet_config(sd: dict[str, torch.Tensor], hits: list[re.Match]) -> ResnetConfig:
    first = sd.get("model.1.weight")
    if first is None or first.ndim != 4 or first.shape[-1] != 7:
        raise LayoutMismatch("the weights look like a junyanz ResnetGenerator (conv_block keys) but "
                             "model.1.weight is not its 7x7 input conv")
    blocks = sorted({int(m[1]) for m in hits})
    first_block = blocks[0]
    convs = sorted({int(m[2]) for m in hits if m[1] == str(first_block) and m[3] == "weight"
                    and sd[m[0]].ndim == 4})
    if (first_block - 4) % 3 or len(convs) != 2 or convs[1] not in (5, 6):
        raise LayoutMismatch(f"the weights look like a junyanz ResnetGenerator but its blocks do not fit "
                             f"(first block at model.{first_block}, block convs at {convs})")
    norm = "batch" if "model.2.weight" in sd else "instance" if "model.1.bias" in sd else "none"
    last = max(int(k.split(".")[1]) for k in sd if re.fullmatch(r"model\.\d+\.weight", k) and sd[k].ndim == 4)
    return ResnetConfig(in_channels=int(first.shape[1]), out_channels=int(sd[f"model.{last}.weight"].shape[0]),
                        ngf=int(first.shape[0]), n_blocks=len(blocks), n_downsampling=(first_block - 4) // 3,
                        norm=norm, dropout=convs[1] == 6)


def detect_unet(sd: dict[str, torch.Tensor]) -> Detected | None:
    """A junyanz UnetGenerator, or None where the keys are not theirs."""
    if "model.model.0.weight" not in sd or not all(k.startswith("model.model.") for k in sd):
        return None
    num_downs = max(k.split(".").count("model") for k in sd) - 1
    down, up = sd["model.model.0.weight"], sd.get("model.model.3.weight")
    if up is None or down.ndim != 4 or up.ndim != 4 or num_downs < 5:
        raise LayoutMismatch(f"the weights look like a junyanz UnetGenerator but do not fit it "
                             f"({num_downs} levels; it needs at least 5 and an outer up conv model.model.3)")
    norm = ("batch" if "model.model.1.model.2.weight" in sd
            else "instance" if "model.model.1.model.1.bias" in sd else "none")
    cfg = UNetConfig(in_channels=int(down.shape[1]), out_channels=int(up.shape[1]), num_downs=num_downs,
                     ngf=int(down.shape[0]), norm=norm, dropout=True, junyanz_bias=norm == "none")
    net = UNetGenerator(cfg)
    mapped = dict(sd)
    dropped = fit_norm_stats(net, mapped)
    netg = f"unet_{2 ** num_downs}"
    load_exact(net, mapped, f"junyanz {netg} ({norm} norm)")
    notes = [(f"junyanz UnetGenerator {netg} ({num_downs} downsamplings), ngf {cfg.ngf}, {norm} norm: loaded "
              "as ganforge arch 'unet' (same modules, same names)"),
             ("dropout leaves no trace in the weights (no parameters, no index shift); the config says "
              "dropout: true as pix2pix trains it; inference runs without dropout")]
    return finish(net, "junyanz-unet", {"netG": netg, **dataclasses.asdict(cfg)}, min_size=cfg.multiple_of,
                  notes=notes + dropped)


def fit_norm_stats(net: nn.Module, sd: dict[str, torch.Tensor]) -> list[str]:
    """Drop running statistics of InstanceNorm layers (their loader does too); give a BatchNorm without
    `num_batches_tracked` (files saved by PyTorch < 0.4) a zero count. Edits `sd`; notes what it did."""
    modules = dict(net.named_modules())
    stray = [k for k in sd if k.endswith(_STAT_SUFFIXES)
             and isinstance(modules.get(k.rsplit(".", 1)[0]), nn.InstanceNorm2d)]
    for k in stray:
        del sd[k]
    for k in net.state_dict():
        if k.endswith(".num_batches_tracked") and k not in sd:
            sd[k] = torch.tensor(0, dtype=torch.long)
    if not stray:
        return []
    return [(f"dropped {len(stray)} InstanceNorm running-statistics keys (running_mean/running_var/"
             "num_batches_tracked) that InstanceNorm without tracking never uses, as junyanz's loader does "
             "(their issues #262, #461)")]


def finish(net: nn.Module, arch: str, params: dict, min_size: int, notes: list[str]) -> Detected:
    cfg = net.cfg
    if cfg.norm == "batch":
        notes.append("batch norm runs in eval mode (running statistics), as junyanz's test.py with --eval; "
                     "their test.py without --eval normalises with each image's own statistics: import "
                     "with batch statistics for that mode")
    elif cfg.norm == "instance":
        notes.append("instance norm normalises with statistics of the whole image: tiled output can differ "
                     "from whole-image output")
    return Detected(arch=arch, params=params, module=ready(net), scale=1, in_channels=cfg.in_channels,
                    out_channels=cfg.out_channels, value_range=(-1.0, 1.0), multiple_of=cfg.multiple_of,
                    min_size=min_size, tile=512, supports_fp16=True, notes=notes)


def use_batch_statistics(det: Detected) -> None:
    """junyanz's test.py without --eval, at its batch size 1: every BatchNorm normalises each image with
    that image's own statistics (and its learned scale and shift); dropout stays off. Each BatchNorm2d
    becomes an affine InstanceNorm2d with the same weight, bias and eps: identical for one image, and
    images served in one batch stay independent of each other."""
    swapped = swap_batch_norm(det.module)
    if swapped:
        det.notes.append(f"batch-statistics mode: {swapped} BatchNorm layers normalise each image with its own "
                         "statistics (junyanz test.py without --eval, batch size 1; running statistics unused), "
                         "dropout off")
    else:
        det.notes.append("batch-statistics mode asked for, but the network has no batch norm (instance norm "
                         "already uses per-image statistics): nothing changes")
    det.params["batch_stats"] = True


def swap_batch_norm(module: nn.Module) -> int:
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            inorm = nn.InstanceNorm2d(child.num_features, eps=child.eps, affine=True, track_running_stats=False)
            with torch.no_grad():
                inorm.weight.copy_(child.weight)
                inorm.bias.copy_(child.bias)
            setattr(module, name, inorm)
            count += 1
        else:
            count += swap_batch_norm(child)
    return count
