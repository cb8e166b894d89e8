"""BasicSR's MSRResNet and EDSR, which spandrel does not know, read from their keys.

- MSRResNet: conv_first, body.N.conv1/conv2, upconv1 (+ upconv2 for x4), conv_hr, conv_last. num_feat
  and input channels from conv_first, output channels from conv_last, num_block from the body indices,
  scale 4 when upconv2 exists, else sqrt(upconv1 outputs / num_feat) (2 or 3).
- EDSR: conv_first, body.N.conv1/conv2, conv_after_body, upsample.K, conv_last, optionally a stored
  `mean`. Scale from the upsample convs: one conv to 9*num_feat -> 3, else 2 per conv to 4*num_feat.
  res_scale is not in the weights: 0.1 for num_feat >= 256 (BasicSR's EDSR-L configs), else 1 (EDSR-M);
  img_range 255 and the DIV2K rgb_mean as BasicSR defines them, unless the file stores a mean.
"""
from __future__ import annotations

import dataclasses
import math
import re

import torch

from ..networks.basicsr import EDSR, EDSRConfig, MSRResNet, MSRResNetConfig
from .detected import Detected, load_exact, ready
from .errors import LayoutMismatch

_MSR_KEYS = re.compile(r"^(conv_first|upconv1|upconv2|conv_hr|conv_last|body\.\d+\.conv[12])\.(weight|bias)$")
_EDSR_KEYS = re.compile(r"^(conv_first|conv_after_body|conv_last|body\.\d+\.conv[12]|upsample\.\d+)\.(weight|bias)$")


def body_blocks(sd: dict[str, torch.Tensor]) -> int:
    return len({k.split(".")[1] for k in sd if re.match(r"^body\.\d+\.conv1\.weight$", k)})


def detect_msrresnet(sd: dict[str, torch.Tensor]) -> Detected | None:
    need = ("conv_first.weight", "upconv1.weight", "conv_hr.weight", "conv_last.weight")
    if not all(k in sd for k in need) or not all(_MSR_KEYS.match(k) for k in sd):
        return None
    f = int(sd["conv_first.weight"].shape[0])
    if "upconv2.weight" in sd:
        scale = 4
    else:
        ratio = int(sd["upconv1.weight"].shape[0]) // max(f, 1)
        scale = math.isqrt(ratio)
        if scale * scale != ratio or scale not in (2, 3):
            raise LayoutMismatch(f"MSRResNet upconv1 has {ratio}x num_feat outputs: not x2 (4) or x3 (9)")
    cfg = MSRResNetConfig(in_channels=int(sd["conv_first.weight"].shape[1]),
                          out_channels=int(sd["conv_last.weight"].shape[0]), num_feat=f,
                          num_block=body_blocks(sd), scale=scale)
    try:
        net = MSRResNet(cfg)
    except ValueError as e:
        raise LayoutMismatch(f"the weights look like BasicSR MSRResNet but: {e}") from None
    load_exact(net, sd, f"BasicSR MSRResNet x{scale}")
    notes = [(f"BasicSR MSRResNet x{scale}, num_feat {f}, num_block {cfg.num_block}: output = network + "
              "bilinearly upsampled input, on [0, 1]")]
    return Detected(arch="msrresnet", params=dataclasses.asdict(cfg), module=ready(net), scale=scale,
                    in_channels=cfg.in_channels, out_channels=cfg.out_channels, value_range=(0.0, 1.0),
                    multiple_of=1, min_size=1, tile=512, supports_fp16=True, notes=notes)


def edsr_scale(sd: dict[str, torch.Tensor], f: int) -> int:
    convs = sorted(int(k.split(".")[1]) for k in sd if re.match(r"^upsample\.\d+\.weight$", k))
    outs = [int(sd[f"upsample.{i}.weight"].shape[0]) for i in convs]
    if outs == [9 * f] and convs == [0]:
        return 3
    if outs and all(o == 4 * f for o in outs) and convs == list(range(0, 2 * len(convs), 2)):
        return 2 ** len(convs)
    raise LayoutMismatch(f"EDSR upsample convs at {convs} with {outs} outputs fit neither x2^n nor x3 "
                         f"(num_feat {f})")


def detect_edsr(sd: dict[str, torch.Tensor]) -> Detected | None:
    need = ("conv_first.weight", "conv_after_body.weight", "upsample.0.weight", "conv_last.weight")
    weights = {k: v for k, v in sd.items() if k != "mean"}
    if not all(k in sd for k in need) or not all(_EDSR_KEYS.match(k) for k in weights):
        return None
    f = int(sd["conv_first.weight"].shape[0])
    scale = edsr_scale(sd, f)
    in_ch = int(sd["conv_first.weight"].shape[1])
    mean = tuple(float(x) for x in sd["mean"].flatten()) if "mean" in sd else EDSRConfig.rgb_mean
    res_scale = 0.1 if f >= 256 else 1.0
    cfg = EDSRConfig(in_channels=in_ch, out_channels=int(sd["conv_last.weight"].shape[0]), num_feat=f,
                     num_block=body_blocks(sd), scale=scale, res_scale=res_scale, rgb_mean=mean)
    try:
        net = EDSR(cfg)
    except ValueError as e:
        raise LayoutMismatch(f"the weights look like BasicSR EDSR but: {e}") from None
    load_exact(net, weights, f"BasicSR EDSR x{scale}")
    why = "0.1 as BasicSR's EDSR-L (num_feat 256)" if f >= 256 else "1 as BasicSR's EDSR-M"
    notes = [(f"BasicSR EDSR x{scale}, num_feat {f}, num_block {cfg.num_block}, img_range 255, "
              f"rgb_mean {'stored in the file' if 'mean' in sd else 'DIV2K (BasicSR default)'}"),
             f"res_scale {res_scale} is not in the weights: {why}"]
    params = dataclasses.asdict(cfg)
    params["rgb_mean"] = list(cfg.rgb_mean)
    return Detected(arch="edsr", params=params, module=ready(net), scale=scale, in_channels=in_ch,
                    out_channels=cfg.out_channels, value_range=(0.0, 1.0), multiple_of=1, min_size=1,
                    tile=512, supports_fp16=True, notes=notes)
