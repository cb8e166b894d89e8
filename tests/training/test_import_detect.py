"""`training.importer`: weights files -> state dict (weights-only) -> detected network, against references.

Checkpoints are made here from networks with random weights in each real key layout: junyanz's
CycleGAN/pix2pix generators (reference modules below, written after their models/networks.py, not
ganforge's), BasicSR's MSRResNet / EDSR (functional references over the raw state dict), Real-ESRGAN's
RRDBNet layout (ganforge's rrdb network uses BasicSR's names) and spandrel's own architecture classes.
Each detected module must match its reference within 1e-5 at a non-square size.
"""
from __future__ import annotations

import functools
import json
import math
import os
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from training.importer import (
    KNOWN_ARCHS,
    ImportFailed,
    LayoutMismatch,
    NotACheckpoint,
    Refused,
    UnknownLayout,
    UnsafeCheckpoint,
    detect,
    load_weights,
)

TOL = 1e-5


# --- junyanz/pytorch-CycleGAN-and-pix2pix generators, as their models/networks.py builds them ---------------

def j_norm_layer(norm_type):
    if norm_type == "batch":
        return functools.partial(nn.BatchNorm2d, affine=True, track_running_stats=True)
    if norm_type == "instance":
        return functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
    return lambda x: nn.Identity()


class JResnetBlock(nn.Module):
    def __init__(self, dim, norm_layer, use_dropout, use_bias):
        super().__init__()
        block = [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, kernel_size=3, padding=0, bias=use_bias), norm_layer(dim),
                 nn.ReLU(True)]
        if use_dropout:
            block += [nn.Dropout(0.5)]
        block += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, kernel_size=3, padding=0, bias=use_bias), norm_layer(dim)]
        self.conv_block = nn.Sequential(*block)

    def forward(self, x):
        return x + self.conv_block(x)


class JResnetGenerator(nn.Module):
    def __init__(self, input_nc, output_nc, ngf, norm, use_dropout, n_blocks):
        super().__init__()
        norm_layer = j_norm_layer(norm)
        use_bias = isinstance(norm_layer, functools.partial) and norm_layer.func == nn.InstanceNorm2d
        model = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, kernel_size=7, padding=0, bias=use_bias),
                 norm_layer(ngf), nn.ReLU(True)]
        for i in range(2):
            mult = 2 ** i
            model += [nn.Conv2d(ngf * mult, ngf * mult * 2, kernel_size=3, stride=2, padding=1, bias=use_bias),
                      norm_layer(ngf * mult * 2), nn.ReLU(True)]
        model += [JResnetBlock(ngf * 4, norm_layer, use_dropout, use_bias) for _ in range(n_blocks)]
        for i in range(2):
            mult = 2 ** (2 - i)
            model += [nn.ConvTranspose2d(ngf * mult, int(ngf * mult / 2), kernel_size=3, stride=2, padding=1,
                                         output_padding=1, bias=use_bias),
                      norm_layer(int(ngf * mult / 2)), nn.ReLU(True)]
        model += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, kernel_size=7, padding=0), nn.Tanh()]
        self.model = nn.Sequential(*model)

    def forward(self, x):
        return self.model(x)


class JUnetSkipConnectionBlock(nn.Module):
    def __init__(self, outer_nc, inner_nc, input_nc=None, submodule=None, outermost=False, innermost=False,
                 norm_layer=nn.BatchNorm2d, use_dropout=False):
        super().__init__()
        self.outermost = outermost
        use_bias = isinstance(norm_layer, functools.partial) and norm_layer.func == nn.InstanceNorm2d
        input_nc = outer_nc if input_nc is None else input_nc
        downconv = nn.Conv2d(input_nc, inner_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
        downrelu, downnorm = nn.LeakyReLU(0.2, True), norm_layer(inner_nc)
        uprelu, upnorm = nn.ReLU(True), norm_layer(outer_nc)
        if outermost:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1)
            model = [downconv, submodule, uprelu, upconv, nn.Tanh()]
        elif innermost:
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
            model = [downrelu, downconv, uprelu, upconv, upnorm]
        else:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
            model = [downrelu, downconv, downnorm, submodule, uprelu, upconv, upnorm]
            if use_dropout:
                model += [nn.Dropout(0.5)]
        self.model = nn.Sequential(*model)

    def forward(self, x):
        return self.model(x) if self.outermost else torch.cat([x, self.model(x)], 1)


class JUnetGenerator(nn.Module):
    def __init__(self, input_nc, output_nc, num_downs, ngf, norm, use_dropout):
        super().__init__()
        nl = j_norm_layer(norm)
        block = JUnetSkipConnectionBlock(ngf * 8, ngf * 8, norm_layer=nl, innermost=True)
        for _ in range(num_downs - 5):
            block = JUnetSkipConnectionBlock(ngf * 8, ngf * 8, submodule=block, norm_layer=nl, use_dropout=use_dropout)
        block = JUnetSkipConnectionBlock(ngf * 4, ngf * 8, submodule=block, norm_layer=nl)
        block = JUnetSkipConnectionBlock(ngf * 2, ngf * 4, submodule=block, norm_layer=nl)
        block = JUnetSkipConnectionBlock(ngf, ngf * 2, submodule=block, norm_layer=nl)
        self.model = JUnetSkipConnectionBlock(output_nc, ngf, input_nc=input_nc, submodule=block, outermost=True,
                                              norm_layer=nl)

    def forward(self, x):
        return self.model(x)


def randomize(net: nn.Module, seed: int) -> nn.Module:
    """Weights that make every layer matter: random norm scales/shifts and running statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith(("running_mean", "bias")):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif t.ndim == 1:  # norm scales
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                fan_in = t[0].numel() if t.ndim > 1 else 1
                t.copy_(torch.randn(t.shape, generator=g) / math.sqrt(fan_in))
    return net.eval()


def image(c: int, h: int, w: int, lo: float = 0.0, hi: float = 1.0, seed: int = 1, n: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(n, c, h, w, generator=g)


def check_module(det, ref, x: torch.Tensor) -> torch.Tensor:
    """Detected module == reference, shape [N, Cout, H*s, W*s], input untouched, params JSON-safe."""
    json.dumps(det.params)
    assert not det.module.training
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in det.module.parameters())
    keep = x.clone()
    with torch.no_grad():
        got, want = det.module(x), ref(x.clone())
    assert torch.equal(x, keep), "the module modified its input in place"
    n, _, h, w = x.shape
    assert got.shape == (n, det.out_channels, h * det.scale, w * det.scale)
    assert want.abs().max() > 1e-3 and torch.isfinite(got).all()
    assert (got - want).abs().max().item() <= TOL
    return got


def sized(det, base: int = 16) -> tuple[int, int]:
    """A non-square size the network takes."""
    m = det.multiple_of
    h = max(det.min_size, base)
    h = -(-h // m) * m
    return h, h + 2 * m if m > 1 else h + 6


def save(tmp_path, obj, name: str):
    path = tmp_path / name
    if name.endswith(".safetensors"):
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in obj.items()}, str(path))
    else:
        torch.save(obj, path)
    return path


# --- junyanz ---------------------------------------------------------------------------------------------

def test_junyanz_resnet_9blocks_instance_with_stray_running_stats(tmp_path):
    ref = randomize(JResnetGenerator(3, 3, ngf=4, norm="instance", use_dropout=False, n_blocks=9), 1)
    sd = dict(ref.state_dict())
    stray = 0
    for name, m in ref.named_modules():  # as their PyTorch 0.3-era CycleGAN files carry them (#262, #461)
        if isinstance(m, nn.InstanceNorm2d):
            sd[f"{name}.running_mean"] = torch.zeros(m.num_features)
            sd[f"{name}.running_var"] = torch.ones(m.num_features)
            sd[f"{name}.num_batches_tracked"] = torch.tensor(0)
            stray += 3
    sd_loaded, info = load_weights(save(tmp_path, sd, "latest_net_G_A.pth"))
    assert info == {"wrapper": None, "prefix_stripped": None}
    det = detect(sd_loaded)
    assert det.arch == "junyanz-resnet" and det.scale == 1 and det.value_range == (-1.0, 1.0)
    assert (det.in_channels, det.out_channels, det.multiple_of) == (3, 3, 4)
    p = det.params
    assert (p["arch"], p["netG"], p["n_blocks"], p["ngf"], p["norm"], p["dropout"]) == \
        ("resnet", "resnet_9blocks", 9, 4, "instance", False)
    assert any(f"dropped {stray} InstanceNorm" in n for n in det.notes)
    check_module(det, ref, image(3, 20, 28, -1, 1))
    with torch.no_grad():  # the smallest input it claims to take
        assert det.module(image(3, det.min_size, det.min_size + 4)).shape[-2:] == (det.min_size, det.min_size + 4)
    assert type(det.module).__name__ == "ResnetGenerator"  # ganforge's own network: recipes can fine-tune it


def test_junyanz_resnet_6blocks_batch_dropout_and_batch_stats(tmp_path):
    ref = randomize(JResnetGenerator(1, 3, ngf=3, norm="batch", use_dropout=True, n_blocks=6), 2)
    path = save(tmp_path, {"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, "g.pth")
    sd, info = load_weights(path)
    assert info == {"wrapper": "state_dict", "prefix_stripped": "module."}
    det = detect(sd)
    assert det.arch == "junyanz-resnet" and (det.in_channels, det.out_channels) == (1, 3)
    assert (det.params["n_blocks"], det.params["norm"], det.params["dropout"]) == (6, "batch", True)
    assert any("eval mode" in n for n in det.notes)
    check_module(det, ref, image(1, 24, 36, -1, 1, n=2))
    ref2 = randomize(JResnetGenerator(3, 2, ngf=2, norm="none", use_dropout=False, n_blocks=2), 4)
    det2 = detect(ref2.state_dict())
    assert (det2.params["norm"], det2.params["n_blocks"], det2.out_channels) == ("none", 2, 2)
    check_module(det2, ref2, image(3, 12, 16, -1, 1))
    # their test.py without --eval: each image normalised by its own statistics, dropout off here
    bs = detect(sd, batch_stats=True)
    assert any("batch-statistics mode" in n for n in bs.notes) and bs.params["batch_stats"] is True
    ref.train()
    for m in ref.modules():
        if isinstance(m, nn.Dropout):
            m.eval()
    x = image(1, 24, 36, -1, 1, n=2, seed=3)
    with torch.no_grad():
        got = bs.module(x)
        want = torch.cat([ref(x[i:i + 1]) for i in range(2)])
    assert (got - want).abs().max().item() <= TOL


@pytest.mark.parametrize("num_downs,norm,ngf,cin,cout", [(8, "batch", 2, 3, 3), (7, "instance", 2, 3, 1),
                                                       (6, "none", 2, 3, 3)])
def test_junyanz_unet(tmp_path, num_downs, norm, ngf, cin, cout):
    ref = randomize(JUnetGenerator(cin, cout, num_downs, ngf=ngf, norm=norm, use_dropout=True), 3)
    sd, _ = load_weights(save(tmp_path, ref.state_dict(), "latest_net_G.pth"))
    det = detect(sd)
    size = 2 ** num_downs
    assert det.arch == "junyanz-unet" and det.multiple_of == size and det.min_size == size
    assert (det.params["netG"], det.params["arch"], det.params["norm"], det.params["ngf"]) == \
        (f"unet_{size}", "unet", norm, ngf)
    assert (det.in_channels, det.out_channels) == (cin, cout)
    check_module(det, ref, image(cin, size, 2 * size, -1, 1))
    if norm == "batch":
        bs = detect(sd, batch_stats=True)
        ref.train()
        for m in ref.modules():
            if isinstance(m, nn.Dropout):
                m.eval()
        x = image(cin, size, 2 * size, -1, 1, seed=5)
        with torch.no_grad():
            assert (bs.module(x) - ref(x)).abs().max().item() <= TOL


# --- BasicSR MSRResNet / EDSR against functional references over the raw weights ---------------------------

def conv(sd, name, x):
    return F.conv2d(x, sd[f"{name}.weight"], sd[f"{name}.bias"], padding=1)


def msrresnet_ref(sd, scale):
    def run(x):
        feat = F.leaky_relu(conv(sd, "conv_first", x), 0.1)
        i = 0
        while f"body.{i}.conv1.weight" in sd:
            feat = feat + conv(sd, f"body.{i}.conv2", F.relu(conv(sd, f"body.{i}.conv1", feat)))
            i += 1
        stages = ["upconv1", "upconv2"] if scale == 4 else ["upconv1"]
        for s in stages:
            feat = F.leaky_relu(F.pixel_shuffle(conv(sd, s, feat), 2 if scale == 4 else scale), 0.1)
        out = conv(sd, "conv_last", F.leaky_relu(conv(sd, "conv_hr", feat), 0.1))
        return out + F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
    return run


def basicsr_weights(names_shapes, seed):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, (cout, cin) in names_shapes.items():
        sd[f"{name}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) / math.sqrt(cin * 9)
        sd[f"{name}.bias"] = torch.randn(cout, generator=g) * 0.05
    return sd


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_msrresnet(tmp_path, scale):
    f, blocks = 8, 2
    shapes = {"conv_first": (f, 3), "conv_hr": (f, f), "conv_last": (3, f)}
    shapes.update({f"body.{i}.conv{j}": (f, f) for i in range(blocks) for j in (1, 2)})
    shapes["upconv1"] = (f * 4 if scale == 4 else f * scale * scale, f)
    if scale == 4:
        shapes["upconv2"] = (f * 4, f)
    sd = basicsr_weights(shapes, scale)
    path = save(tmp_path, {"params": basicsr_weights(shapes, 99), "params_ema": sd, "iter": 5}, "msrresnet.pth")
    loaded, info = load_weights(path)
    assert info["wrapper"] == "params_ema"  # preferred over params, as BasicSR/Real-ESRGAN release it
    det = detect(loaded)
    assert (det.arch, det.scale, det.multiple_of, det.value_range) == ("msrresnet", scale, 1, (0.0, 1.0))
    assert (det.params["num_feat"], det.params["num_block"]) == (f, blocks)
    check_module(det, msrresnet_ref(sd, scale), image(3, 12, 17))


def edsr_ref(sd, scale, res_scale=1.0):
    mean = torch.tensor([0.4488, 0.4371, 0.4040]).view(1, 3, 1, 1)

    def run(x):
        feat = conv(sd, "conv_first", (x - mean) * 255.0)
        body, i = feat, 0
        while f"body.{i}.conv1.weight" in sd:
            body = body + res_scale * conv(sd, f"body.{i}.conv2", F.relu(conv(sd, f"body.{i}.conv1", body)))
            i += 1
        feat = feat + conv(sd, "conv_after_body", body)
        k = 0
        while f"upsample.{k}.weight" in sd:
            feat = F.pixel_shuffle(conv(sd, f"upsample.{k}", feat), 3 if scale == 3 else 2)
            k += 2
        return conv(sd, "conv_last", feat) / 255.0 + mean
    return run


@pytest.mark.parametrize("scale,f", [(2, 8), (3, 8), (2, 256)])
def test_edsr(tmp_path, scale, f):
    blocks = 2 if f < 256 else 1
    shapes = {"conv_first": (f, 3), "conv_after_body": (f, f), "conv_last": (3, f)}
    shapes.update({f"body.{i}.conv{j}": (f, f) for i in range(blocks) for j in (1, 2)})
    if scale == 3:
        shapes["upsample.0"] = (9 * f, f)
    else:
        shapes.update({f"upsample.{2 * i}": (4 * f, f) for i in range(int(math.log2(scale)))})
    sd = basicsr_weights(shapes, 10 + scale)
    det = detect(load_weights(save(tmp_path, sd, "edsr.safetensors"))[0])
    assert (det.arch, det.scale, det.multiple_of) == ("edsr", scale, 1)
    res_scale = 0.1 if f == 256 else 1.0  # not in the weights: BasicSR's EDSR-L configs use 0.1
    assert det.params["res_scale"] == res_scale and det.params["img_range"] == 255.0
    check_module(det, edsr_ref(sd, scale, res_scale), image(3, 11, 15))


# --- spandrel families, and Real-ESRGAN's RRDBNet layout ----------------------------------------------------

def spandrel_cases():
    from spandrel.architectures.Compact import Compact
    from spandrel.architectures.DAT import DAT
    from spandrel.architectures.ESRGAN import ESRGAN
    from spandrel.architectures.OmniSR import OmniSR
    from spandrel.architectures.PLKSR import PLKSR
    from spandrel.architectures.RCAN import RCAN
    from spandrel.architectures.RealCUGAN import UpCunet2x
    from spandrel.architectures.SPAN import SPAN
    from spandrel.architectures.SwinIR import SwinIR

    return {
        "esrgan": (lambda: ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=4), 4),
        "compact": (lambda: Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=4), 4),
        "span": (lambda: SPAN(num_in_ch=3, num_out_ch=3, feature_channels=8, upscale=2), 2),
        "swinir": (lambda: SwinIR(img_size=16, in_chans=3, embed_dim=12, depths=[1], num_heads=[2], window_size=4,
                                  mlp_ratio=2.0, upscale=2, upsampler="pixelshuffle", img_range=1.0), 2),
        "dat": (lambda: DAT(img_size=16, in_chans=3, embed_dim=16, split_size=[2, 4], depth=[1], num_heads=[2],
                            expansion_factor=2.0, upscale=2), 2),
        "omnisr": (lambda: OmniSR(num_in_ch=3, num_out_ch=3, num_feat=8, block_num=1, window_size=8, res_num=1,
                                  up_scale=2), 2),
        "plksr": (lambda: PLKSR(dim=8, n_blocks=2, upscaling_factor=2, kernel_size=9), 2),
        "realcugan": (lambda: UpCunet2x(in_channels=3, out_channels=3), 2),
        "rcan": (lambda: RCAN(scale=2, n_resgroups=1, n_resblocks=1, n_feats=8, reduction=4), 2),
    }


@pytest.mark.parametrize("arch", ["esrgan", "compact", "span", "swinir", "dat", "omnisr", "plksr", "realcugan",
                                  "rcan"])
def test_spandrel_families(tmp_path, arch):
    build, scale = spandrel_cases()[arch]
    torch.manual_seed(7)
    ref = build().eval()
    det = detect(load_weights(save(tmp_path, ref.state_dict(), f"{arch}.pth"))[0])
    assert (det.arch, det.scale, det.in_channels, det.out_channels) == (arch, scale, 3, 3)
    assert det.value_range == (0.0, 1.0) and det.params["scale"] == scale
    check_module(det, ref, image(3, *sized(det)))
    h, w = det.min_size, det.min_size + det.multiple_of  # the smallest input it claims to take
    with torch.no_grad():
        assert det.module(image(3, h, w)).shape == (1, 3, h * scale, w * scale)


@pytest.mark.parametrize("scale,multiple", [(4, 1), (2, 2), (1, 4)])
def test_realesrgan_rrdbnet_layout(tmp_path, scale, multiple):
    """Real-ESRGAN's key layout (conv_first, body.N.rdbK, conv_up1 ...), pixel-unshuffle for x2 and x1."""
    from training.networks.rrdb import RRDBConfig, RRDBNet

    ref = randomize(RRDBNet(RRDBConfig(nf=8, n_blocks=1, gc=32, scale=scale)), 20 + scale)
    if scale == 2:  # safetensors holds a flat dict
        path = save(tmp_path, ref.state_dict(), "RealESRGAN_x2plus.safetensors")
    else:
        path = save(tmp_path, {"params_ema": ref.state_dict()}, f"RealESRGAN_x{scale}.pth")
    det = detect(load_weights(path)[0])
    assert (det.arch, det.scale, det.multiple_of) == ("esrgan", scale, multiple)
    check_module(det, ref, image(3, *sized(det, 12)))


def test_spandrel_wrappers_and_forced_arch(tmp_path):
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(8)
    ref = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2).eval()
    other = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2)
    path = save(tmp_path, {"params": other.state_dict(), "params_ema": ref.state_dict()}, "x2.pth")
    sd, info = load_weights(path)
    assert info["wrapper"] == "params_ema"
    det = detect(sd, arch="Compact")
    check_module(det, ref, image(3, 10, 14))
    with pytest.raises(LayoutMismatch, match="junyanz-unet"):
        detect(sd, arch="junyanz-unet")
    with pytest.raises(ImportFailed, match="unknown --arch"):
        detect(sd, arch="nosuchnet")
    with pytest.raises(ImportFailed, match="junyanz"):
        detect(sd, batch_stats=True)


# --- refusals -----------------------------------------------------------------------------------------------

class Payload:
    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_malicious_pickle_refused_and_not_run(tmp_path, how):
    marker = tmp_path / "PWNED"
    Payload.marker = str(marker)
    path = tmp_path / "evil.pth"
    obj = {"conv.weight": torch.zeros(1), "x": Payload()}
    if how == "pickle":
        path.write_bytes(pickle.dumps(obj))
    else:
        torch.save(obj, path)
    with pytest.raises(UnsafeCheckpoint, match="refused: the file carries Python objects/code") as err:
        load_weights(path)
    assert "system" in str(err.value)
    assert not marker.exists(), "the payload ran"


def test_not_checkpoints(tmp_path):
    good = save(tmp_path, {"a.weight": torch.randn(64, 64)}, "good.pth")
    cases = {"random.pth": os.urandom(4096), "notes.pt": b"just some text\n" * 20,
             "truncated.pth": good.read_bytes()[: good.stat().st_size // 2], "empty.ckpt": b""}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(NotACheckpoint):
            load_weights(tmp_path / name)
    legacy = tmp_path / "legacy.pth"
    torch.save({"a.weight": torch.randn(64, 64)}, legacy, _use_new_zipfile_serialization=False)
    (tmp_path / "legacy_cut.pth").write_bytes(legacy.read_bytes()[:300])
    st = save(tmp_path, {"a.weight": torch.randn(64, 64)}, "w.safetensors")
    (tmp_path / "cut.safetensors").write_bytes(st.read_bytes()[:200])
    for name in ("legacy_cut.pth", "cut.safetensors", "missing.pth"):
        with pytest.raises(NotACheckpoint):
            load_weights(tmp_path / name)
    empty = save(tmp_path, {"params": {}, "meta": "x"}, "nothing.pth")
    with pytest.raises(NotACheckpoint, match="no tensors"):
        load_weights(empty)
    assert issubclass(NotACheckpoint, ImportFailed) and issubclass(ImportFailed, ValueError)


def test_unknown_layout_names_what_it_found():
    sd = {"encoder.conv.weight": torch.randn(4, 3, 3, 3), "encoder.conv.bias": torch.randn(4),
          "head.weight": torch.randn(10, 4)}
    with pytest.raises(UnknownLayout) as err:
        detect(sd)
    msg = str(err.value)
    assert "3 tensors" in msg and "encoder" in msg and "head" in msg
    for family in ("junyanz-resnet", "junyanz-unet", "msrresnet", "edsr", "esrgan", "swinir"):
        assert family in msg
    assert "aurasr" not in KNOWN_ARCHS


def test_aurasr_refused():
    keys = ("mid_attn.layers.0.0.to_out.weight", "mid_block2.block1.proj.weights",
            "final_res_block.block1.proj.weights")
    with pytest.raises(Refused, match="AuraSR"):
        detect({k: torch.zeros(1) for k in keys})
