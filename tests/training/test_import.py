"""`python -m training import`: community checkpoints (random weights, their real key layouts and
wrappers) become served, parity-checked model folders; and the refusals leave nothing behind."""
from __future__ import annotations

import importlib
import io
import math
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from contract.folder import sha256_file, verify_model_dir
from core.imaging import to_float, to_pixels
from core.backends import native_bf16
from service_fixtures import running_server, service_client
from testkit.tiny import drift_onnxruntime
from training.__main__ import main as cli

REPO = Path(__file__).resolve().parents[2]
PHOTO = REPO / "samples" / "wood-128.png"  # a real photo
PHOTO_256 = REPO / "samples" / "flower-256.jpg"  # a real photo of the U-Net's 256 px


# ------------------------------------------------------------------ checkpoints in their real layouts


def junyanz_resnet(cin: int, cout: int, seed: int) -> tuple[nn.Module, dict]:
    """junyanz ResnetGenerator (resnet_6blocks layout, 2 blocks, ngf 4, instance norm), as their
    `latest_net_G_*.pth`: their `conv_block` names, and the stray InstanceNorm statistics their old
    published files carry."""
    from training.networks.cyclegan import ResnetConfig, ResnetGenerator

    torch.manual_seed(seed)
    net = ResnetGenerator(ResnetConfig(in_channels=cin, out_channels=cout, ngf=4, n_blocks=2)).eval()
    sd = {k.replace(".block.", ".conv_block."): v for k, v in net.state_dict().items()}
    sd.update({"model.2.running_mean": torch.zeros(4), "model.2.running_var": torch.ones(4),
               "model.2.num_batches_tracked": torch.tensor(0)})
    return net, sd


def junyanz_unet(seed: int) -> tuple[nn.Module, dict]:
    """junyanz UnetGenerator unet_256 (ngf 2, batch norm as pix2pix trains it), running statistics set."""
    from training.networks.pix2pix import UNetConfig, UNetGenerator

    torch.manual_seed(seed)
    net = UNetGenerator(UNetConfig(ngf=2, num_downs=8, norm="batch"))
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval(), net.state_dict()


def esrgan_x4(seed: int) -> tuple[nn.Module, dict]:
    """An ESRGAN x4 in the old-arch layout the community upscalers use (spandrel's RRDBNet, small)."""
    from spandrel.architectures.ESRGAN import ESRGAN as RRDBNet

    torch.manual_seed(seed)
    net = RRDBNet(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=4).eval()
    return net, net.state_dict()


def compact_x2(seed: int) -> tuple[nn.Module, dict]:
    """realesr-general / animevideo v3 layout (SRVGGNetCompact), x2, in BasicSR's `params` wrapper."""
    from spandrel.architectures.Compact import Compact as SRVGGNetCompact

    torch.manual_seed(seed)
    net = SRVGGNetCompact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2).eval()
    return net, {"params": net.state_dict()}


def rrdb_x1(seed: int) -> tuple[nn.Module, dict]:
    """A same-size restorer: Real-ESRGAN's RRDBNet x1 (pixel-unshuffle by 4), BasicSR names, `params_ema`."""
    from training.networks.rrdb import RRDBConfig, RRDBNet

    torch.manual_seed(seed)
    net = RRDBNet(RRDBConfig(nf=8, n_blocks=1, scale=1)).eval()
    return net, {"params_ema": net.state_dict(), "params": net.state_dict()}


# name -> (what it is, endpoint, scale, card family)
CASES = {
    "horse2zebra": ("cyclegan pair", "translate", 1, "cyclegan"),
    "facades": ("pix2pix unet_256", "translate", 1, "pix2pix"),
    "esrgan-x4": ("esrgan", "upscale", 4, "esrgan"),
    "compact-x2": ("compact", "upscale", 2, "compact"),
    "restore-x1": ("esrgan x1", "translate", 1, "esrgan"),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, tuple[list[Path], dict[str, nn.Module]]]:
    """name -> (the files to import, role -> the torch network they were saved from)."""
    root = tmp_path_factory.mktemp("checkpoints")
    g_a, sd_a = junyanz_resnet(3, 3, seed=1)
    g_b, sd_b = junyanz_resnet(3, 3, seed=2)
    torch.save(sd_a, root / "latest_net_G_A.pth")
    torch.save(sd_b, root / "latest_net_G_B.pth")
    out = {"horse2zebra": ([root / "latest_net_G_A.pth", root / "latest_net_G_B.pth"], {"a2b": g_a, "b2a": g_b})}
    for name, make, file in (("facades", junyanz_unet, "facades_label2photo.pth"),
                             ("esrgan-x4", esrgan_x4, "4x_esrgan_small.pth"),
                             ("compact-x2", compact_x2, "realesr-general-x2-small.pth"),
                             ("restore-x1", rrdb_x1, "RealESRGAN_x1-small.pth")):
        net, payload = make(seed=3)
        torch.save(payload, root / file)
        out[name] = ([root / file], {"generator": net})
    return out


@pytest.fixture(scope="module")
def imported(checkpoints, tmp_path_factory) -> Path:
    """Every checkpoint imported through `python -m training import` into one models folder."""
    models = tmp_path_factory.mktemp("imported") / "models"
    for name, (files, _) in checkpoints.items():
        extra = ["--license", "CC-BY-NC-4.0"] if name == "esrgan-x4" else []
        assert cli(["import", *map(str, files), "--name", name, "--out", str(models), *extra]) == 0, name
    return models


def card_of(models: Path, name: str) -> dict:
    return verify_model_dir(models / name, deep=True).to_dict()


@pytest.mark.parametrize("name", list(CASES))
def test_import_card(name, imported, checkpoints):
    _, endpoint, scale, family = CASES[name]
    files, nets = checkpoints[name]
    card = card_of(imported, name)
    assert card["endpoint"] == endpoint and card["output"]["scale"] == scale and card["family"] == family
    assert set(card["files"]) == set(nets) and "training" not in card
    prov = card["provenance"]
    assert [s["file"] for s in prov["sources"]] == [f.name for f in files]  # the name, not the path
    assert [s["sha256"] for s in prov["sources"]] == [sha256_file(f) for f in files]
    assert [s["bytes"] for s in prov["sources"]] == [f.stat().st_size for f in files]
    assert [s["role"] for s in prov["sources"]] == list(nets)
    assert prov["license"] == ("CC-BY-NC-4.0" if name == "esrgan-x4" else "unknown")
    assert {"ganforge", "torch", "onnx", "onnxruntime", "spandrel"} <= set(prov["importer"])
    assert prov["arch"] and isinstance(prov["arch_params"], dict)
    assert card["metrics"]["parity_max_abs"] <= 1e-4
    parity = card["metrics"]["parity"]
    assert parity["exporter"] == "torchscript" and "no real inputs" in parity["real_note"]
    assert len(parity["sizes"]) == 2 and parity["sizes"][1][0] != parity["sizes"][1][1] and parity["batches"] == [1, 2]
    assert card["input"]["native_size"] is None and card["tiling"]["overlap"] >= 8
    assert card["graph"]["inputs"][0]["shape"] == ["N", card["input"]["channels"], "H", "W"]
    rng = card["input"]["range"]
    assert rng == ([-1.0, 1.0] if family in ("cyclegan", "pix2pix") else [0.0, 1.0])
    if name == "horse2zebra":
        assert card["domains"] == {"a": "horse", "b": "zebra"}
        assert any("InstanceNorm running-statistics" in n for n in card["notes"])
    if name == "facades":
        assert card["input"]["multiple_of"] == 256 and card["input"]["min_size"] == 256
    if name == "restore-x1":
        assert card["input"]["multiple_of"] == 4
    bf16 = card.get("variants", {}).get("bf16")  # measured at import where this CPU has native bf16 (issue 26)
    if native_bf16()[0]:
        assert bf16["produced"] == "measure" and bf16["of_version"] == card["version"]
        assert bf16["passed"] is (bf16["psnr_vs_fp32_db_min"] >= 45.0)
    else:
        assert bf16 is None


def test_batch_statistics_mode(checkpoints, tmp_path):
    """junyanz's test.py without --eval: each image normalised by its own statistics; the card says so."""
    files, nets = checkpoints["facades"]
    out = tmp_path / "models"
    assert cli(["import", str(files[0]), "--name", "facades-bs", "--out", str(out), "--batch-stats", "--no-fp16"]) == 0
    card = card_of(out, "facades-bs")
    assert card["provenance"]["batch_stats"] is True and card["metrics"]["parity_max_abs"] <= 1e-4
    assert any("batch-statistics mode" in n for n in card["notes"])
    import onnxruntime as ort

    x = to_float(photo("facades"), (-1.0, 1.0))[None]
    got = ort.InferenceSession(str(out / "facades-bs" / "generator.onnx")).run(None, {"image": x})[0]
    with torch.no_grad():
        eval_mode = nets["generator"](torch.from_numpy(x)).numpy()
    assert np.abs(got - eval_mode).max() > 1e-3  # not the running statistics


# ------------------------------------------------------------------ served output vs torch


def photo(name: str) -> np.ndarray:
    if name == "facades":
        return np.asarray(Image.open(PHOTO_256).convert("RGB"))
    pixels = np.asarray(Image.open(PHOTO).convert("RGB"))
    return pixels if name == "horse2zebra" else pixels[:48, :64]  # below every tile: one whole run


def torch_pixels(net: nn.Module, pixels: np.ndarray, value_range) -> np.ndarray:
    """The service's pixel mapping around the torch network (imaging.to_float / to_pixels)."""
    x = torch.from_numpy(to_float(pixels, value_range))[None]
    with torch.no_grad():
        y = net(x)[0].numpy()
    return to_pixels(y, value_range)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def requests_for(checkpoints, models: Path):
    """(name, route, form fields, photo, expected uint8 output) for every imported role."""
    for name, (_, nets) in checkpoints.items():
        card = card_of(models, name)
        route = "/" + card["endpoint"]
        for role, net in nets.items():
            pixels = photo(name)
            fields = {"model": name} | ({"direction": role} if role in ("a2b", "b2a") else {})
            yield name, route, fields, pixels, torch_pixels(net, pixels, tuple(card["input"]["range"]))


def post(client, route: str, fields: dict, pixels: np.ndarray) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    resp = client.post(route, files={"image": ("photo.png", buf.getvalue(), "image/png")}, data=fields)
    assert resp.status_code == 200, resp.text
    return np.asarray(Image.open(io.BytesIO(resp.content)).convert("RGB"))


def test_served_in_process_matches_torch(imported, checkpoints):
    with service_client(imported) as client:
        models = {m["name"]: m for m in client.get("/models").json()["models"]}
        assert all(models[name]["status"] == "ready" for name in CASES), models
        for name, route, fields, pixels, want in requests_for(checkpoints, imported):
            got = post(client, route, fields, pixels)
            assert got.shape == want.shape, (name, fields)
            assert psnr(got, want) >= 45, (name, fields, psnr(got, want))


@pytest.mark.slow
def test_served_by_bentoml_serve_matches_torch(imported, checkpoints, tmp_path):
    with running_server(imported, tmp_path, GANFORGE_DEVICE="cpu") as (base, _log):
        with httpx.Client(base_url=base, timeout=120) as client:
            for name, route, fields, pixels, want in requests_for(checkpoints, imported):
                got = post(client, route, fields, pixels)
                assert got.shape == want.shape and psnr(got, want) >= 45, (name, fields, psnr(got, want))


# ------------------------------------------------------------------ refusals: exit code, one line, nothing left


def left_behind(out: Path, name: str) -> list[str]:
    """What a refused import left under OUT, beyond the lock file `export` leaves too."""
    return sorted(p.name for p in out.iterdir() if p.name != f".{name}.lock") if out.exists() else []


def refused(capsys, argv: list[str], out: Path, name: str = "x") -> tuple[int, str]:
    rc = cli(["import", *argv, "--name", name, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert left_behind(out, name) == [], left_behind(out, name)
    return rc, err


def test_missing_second_file(checkpoints, tmp_path, capsys):
    files, _ = checkpoints["horse2zebra"]
    out = tmp_path / "models"
    rc, err = refused(capsys, [str(files[0]), str(tmp_path / "latest_net_G_B.pth")], out)
    assert rc == 2 and "FILE_B not found" in err and "latest_net_G_B.pth" in err
    assert not out.exists()  # nothing read: nothing written


def test_second_file_must_make_a_cyclegan_pair(checkpoints, tmp_path, capsys):
    junyanz, _ = checkpoints["horse2zebra"]
    esrgan, _ = checkpoints["esrgan-x4"]
    rc, err = refused(capsys, [str(junyanz[0]), str(esrgan[0])], tmp_path / "models")
    assert rc == 2 and "CycleGAN pair" in err and "4x_esrgan_small.pth" in err
    _, sd = junyanz_resnet(3, 1, seed=5)  # G_B mapping 3 -> 1 channels: not the way back
    torch.save(sd, tmp_path / "latest_net_G_B.pth")
    rc, err = refused(capsys, [str(junyanz[0]), str(tmp_path / "latest_net_G_B.pth")], tmp_path / "models")
    assert rc == 2 and "G_B must map back" in err


def test_pair_given_in_reverse_keeps_the_roles(checkpoints, tmp_path):
    files, _ = checkpoints["horse2zebra"]
    out = tmp_path / "models"
    assert cli(["import", str(files[1]), str(files[0]), "--name", "pair", "--out", str(out), "--no-fp16"]) == 0
    sources = card_of(out, "pair")["provenance"]["sources"]
    assert [(s["file"], s["role"]) for s in sources] == [("latest_net_G_A.pth", "a2b"), ("latest_net_G_B.pth", "b2a")]


def test_unknown_layout(tmp_path, capsys):
    path = tmp_path / "mystery.pth"
    torch.save({"encoder.layer0.weight": torch.randn(8, 3, 3, 3), "head.bias": torch.randn(8)}, path)
    out = tmp_path / "models"
    rc, err = refused(capsys, [str(path)], out)
    assert rc == 2 and "mystery.pth" in err and "junyanz" in err, err  # names the file and the families known
    assert not out.exists()


class Baked(nn.Module):
    """A forward that freezes its input's size into the trace (int() of a traced dim is a constant)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        y = self.conv(x).reshape(n, c, int(h) * int(w))
        return y.reshape(n, c, int(h), int(w))


class PadsToEight(Baked):
    """Window models (SwinIR, OmniSR, ...): pad to their window multiple themselves, the pad frozen when traced."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        ph, pw = (8 - int(h) % 8) % 8, (8 - int(w) % 8) % 8
        y = self.conv(nn.functional.pad(x, (0, pw, 0, ph), mode="reflect"))
        hh, ww = y.shape[2], y.shape[3]
        y = y.reshape(n, c, hh // 8, 8, ww // 8, 8).reshape(n, c, hh, ww)
        return y[:, :, :h, :w]


class BatchBaked(Baked):
    """The batch size frozen as DAT's windows2img does (`int(...)` of a traced batch): batch 2 scrambled."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).reshape(int(x.shape[0]), x.shape[1], -1).transpose(1, 2).reshape(x.shape)


def imports_as(monkeypatch, module: nn.Module) -> None:
    """detect() answers with `module` (x1 RGB in [0, 1]) whatever the weights."""
    from training.importer.detected import Detected

    found = Detected(arch="probe", params={}, module=module.eval(), scale=1, in_channels=3, out_channels=3,
                     value_range=(0.0, 1.0), multiple_of=1, min_size=1, tile=64, supports_fp16=True)
    detect_module = importlib.import_module("training.importer.detect")  # the package re-exports the function
    monkeypatch.setattr(detect_module, "detect", lambda sd, arch=None, batch_stats=False: found)


def test_frozen_shape_is_refused(checkpoints, tmp_path, capsys, monkeypatch):
    imports_as(monkeypatch, Baked())
    files, _ = checkpoints["compact-x2"]
    rc, err = refused(capsys, [str(files[0])], tmp_path / "models")
    assert rc == 2 and "the exported graph is frozen at 32x32: onnxruntime cannot run generator at 60x100" in err
    assert "Reshape fails" in err and "(and at the multiples of 2 to 32 as well)" in err


def test_frozen_batch_is_refused(checkpoints, tmp_path, capsys, monkeypatch):
    imports_as(monkeypatch, BatchBaked())
    files, _ = checkpoints["compact-x2"]
    rc, err = refused(capsys, [str(files[0])], tmp_path / "models")
    assert rc == 2 and "the exported graph is frozen at batch 1: generator at 60x100, batch 2, differs" in err


def test_padding_frozen_at_trace_gives_the_true_multiple(checkpoints, tmp_path, monkeypatch):
    """A graph that only runs at multiples of 8 is published with multiple_of 8 (the service pads to it)."""
    imports_as(monkeypatch, PadsToEight())
    files, _ = checkpoints["compact-x2"]
    out = tmp_path / "models"
    assert cli(["import", str(files[0]), "--name", "pads", "--out", str(out), "--no-fp16"]) == 0
    card = card_of(out, "pads")
    assert card["input"]["multiple_of"] == 8 and card["input"]["min_size"] >= 8
    assert card["metrics"]["parity"]["sizes"] == [[64, 64], [64, 104]]
    assert any("multiples of 8, not 1" in n for n in card["notes"])


def test_parity_over_tolerance_is_refused(checkpoints, tmp_path, capsys, monkeypatch):
    drift_onnxruntime(monkeypatch, 1e-3)  # over the default 1e-4 tolerance
    files, _ = checkpoints["compact-x2"]
    rc, err = refused(capsys, [str(files[0])], tmp_path / "models")
    assert rc == 3 and "refusing to publish 'x': torch vs onnxruntime max abs error 1.0" in err
    assert "exceeds the tolerance 1.0e-04" in err


def test_a_card_that_breaks_the_contract_is_refused(checkpoints, tmp_path, capsys, monkeypatch):
    from training.importer import publish

    monkeypatch.setattr(publish, "family_of", lambda sources: "Not A Family")
    files, _ = checkpoints["compact-x2"]
    rc, err = refused(capsys, [str(files[0]), "--no-fp16"], tmp_path / "models")
    assert rc == 2 and "the card breaks the contract" in err and "family" in err


def test_help_documents_the_command(capsys):
    with pytest.raises(SystemExit) as e:
        cli(["import", "--help"])
    text = capsys.readouterr().out
    assert e.value.code == 0
    for words in ("FILE_B", "--name", "--arch", "--license", "--batch-stats", "--no-fp16", "--tolerance",
                  "latest_net_G_A.pth", "frozen"):
        assert words in text, words


# ------------------------------------------------------------------ window models: the batch stays symbolic


def swinir_x2(seed: int) -> nn.Module:
    from spandrel.architectures.SwinIR import SwinIR

    torch.manual_seed(seed)
    return SwinIR(upscale=2, img_size=16, window_size=4, embed_dim=12, depths=[1], num_heads=[2], mlp_ratio=2,
                  upsampler="pixelshuffledirect").eval()


def dat_x2(seed: int) -> nn.Module:
    from spandrel.architectures.DAT import DAT

    torch.manual_seed(seed)
    return DAT(upscale=2, img_size=16, embed_dim=32, depth=[1], num_heads=[2], split_size=[2, 4],
               expansion_factor=2, upsampler="pixelshuffledirect").eval()


def test_window_helpers_match_spandrel():
    """Each replacement gives spandrel's helper's exact output, and is swapped in only within the block."""
    from spandrel.architectures.DAT.__arch import DAT as dat_mod
    from spandrel.architectures.GRL.__arch import ops as grl_ops
    from spandrel.architectures.SwinIR.__arch import SwinIR as swinir_mod

    from training.importer import spandrel_adapter as sa

    w = torch.randn(2 * 3 * 5, 4, 4, 7)
    for key, new in sa.WINDOW_HELPERS.items():
        old = getattr(importlib.import_module(key[0]), key[1])
        if new is sa._window_reverse_grl:
            assert torch.equal(old(w, (4, 4), (12, 20)), new(w, (4, 4), (12, 20))), key
        elif new is sa._windows2img:
            s = w.reshape(30, 16, 7)
            assert torch.equal(old(s, 4, 4, 12, 20), new(s, 4, 4, 12, 20)), key
        else:
            assert torch.equal(old(w, 4, 12, 20), new(w, 4, 12, 20)), key
    before = swinir_mod.window_reverse, dat_mod.windows2img, grl_ops.window_reverse
    net = swinir_x2(seed=0)
    with sa.exportable_windows(net) as swapped:
        assert swapped == 1 and swinir_mod.window_reverse is sa._window_reverse
    assert (swinir_mod.window_reverse, dat_mod.windows2img, grl_ops.window_reverse) == before


@pytest.mark.parametrize("make", [swinir_x2, dat_x2])
def test_window_model_imports_and_runs_at_batch_two(make, tmp_path):
    """SwinIR / DAT: spandrel's int() batch would freeze the graph at batch 1; the import publishes a graph
    that matches torch at batch 2 on a non-square size, with no coarser multiple forced."""
    import onnxruntime as ort

    net = make(seed=4)
    path = tmp_path / f"{make.__name__}.pth"
    torch.save(net.state_dict(), path)
    out = tmp_path / "models"
    assert cli(["import", str(path), "--name", "win", "--out", str(out), "--no-fp16"]) == 0
    card = card_of(out, "win")
    assert card["output"]["scale"] == 2 and card["input"]["multiple_of"] == 1
    assert card["metrics"]["parity"]["batches"] == [1, 2] and card["metrics"]["parity_max_abs"] <= 1e-4
    x = np.random.default_rng(0).uniform(0, 1, (2, 3, 20, 36)).astype(np.float32)
    got = ort.InferenceSession(str(out / "win" / "generator.onnx")).run(None, {"image": x})[0]
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    assert got.shape == want.shape == (2, 3, 40, 72) and np.abs(got - want).max() <= 1e-4
