"""python -m bench.imports [--only esrgan,span] [--runs 3] [--size 256] [--json PATH] [--no-fp16]

One row per architecture `python -m training import` serves: a checkpoint with random weights in the
real key layout and wrapper (junyanz `latest_net_G.pth`, Real-ESRGAN `params_ema`, BasicSR `params`,
spandrel's own layouts), imported through `training.importer.publish.import_weights` into a scratch
models folder, then timed on onnxruntime CPU. Per row:

- import_s: the whole import (load, detect, trace, checks, rewrites, second-size probe, parity, fp16
  variant, card, atomic publish); export_s: the role's trace + checks + rewrites + probe + parity;
- parity: the card's torch-vs-onnxruntime max abs (random inputs, two sizes, batch 1 and 2);
- onnx_mb: generator.onnx (fp32) and generator.fp16.onnx;
- ms_256 (ms_256_min): median (min) wall time of one 1x3xSxS input (S = --size, 256) through an
  onnxruntime CPU session with the service's options (all cores, ORT_ENABLE_ALL), each run after a short
  pause (common.SETTLE_S); the load average at start and end is in the JSON's machine block;
- http_psnr_db (unless --no-http): once every row is imported, ONE real server (`bentoml serve`, default
  env, testkit.launcher.running_server) serves the whole models folder; each model gets a real photo crop
  (samples/wood-128.png through /upscale, whole when it fits the card's tile; samples/flower-256.jpg,
  sized as the card allows, through /translate direction a2b), sent as PNG; the PNG answer is compared
  with the torch module's output on the same pixels mapped as the service maps them (imaging.to_float /
  pad_to / to_pixels with the card's ranges): PSNR of served uint8 vs torch uint8, 100 when identical.
  served_backend / served_precision: what GET /models reports for the model.

Prints the table as JSON, then as markdown. Sizes are the published models' unless the row says
"small" (the lightweight variant its authors publish).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .common import SETTLE_S, machine


# ------------------------------------------------------------------ networks in their real layouts


def junyanz_resnet():
    from training.networks.cyclegan import ResnetConfig, ResnetGenerator
    net = ResnetGenerator(ResnetConfig(ngf=64, n_blocks=9))
    return {k.replace(".block.", ".conv_block."): v for k, v in net.state_dict().items()}, net


def junyanz_unet():
    from training.networks.pix2pix import UNetConfig, UNetGenerator
    net = UNetGenerator(UNetConfig(ngf=64, num_downs=8, norm="batch"))
    return net.state_dict(), net


def esrgan():
    from training.networks.rrdb import RRDBConfig, RRDBNet
    net = RRDBNet(RRDBConfig(nf=64, n_blocks=23, gc=32, scale=4))
    return {"params_ema": net.state_dict()}, net


def compact():
    from spandrel.architectures.Compact import Compact
    net = Compact(num_in_ch=3, num_out_ch=3, num_feat=64, num_conv=32, upscale=4)
    return {"params": net.state_dict()}, net


def span():
    from spandrel.architectures.SPAN import SPAN
    net = SPAN(num_in_ch=3, num_out_ch=3, feature_channels=48, upscale=4)
    return {"params_ema": net.state_dict()}, net


def swinir():
    from spandrel.architectures.SwinIR import SwinIR
    net = SwinIR(img_size=64, in_chans=3, embed_dim=60, depths=[6, 6, 6, 6], num_heads=[6, 6, 6, 6], window_size=8,
                 mlp_ratio=2.0, upscale=4, img_range=1.0, upsampler="pixelshuffledirect", resi_connection="1conv")
    return {"params": net.state_dict()}, net


def dat():
    from spandrel.architectures.DAT import DAT
    net = DAT(img_size=64, in_chans=3, embed_dim=60, split_size=[8, 32], depth=[18], num_heads=[6],
              expansion_factor=2.0, upscale=4, img_range=1.0, resi_connection="3conv",
              upsampler="pixelshuffledirect")
    return {"params": net.state_dict()}, net


def omnisr():
    from spandrel.architectures.OmniSR import OmniSR
    net = OmniSR(num_in_ch=3, num_out_ch=3, num_feat=64, block_num=1, window_size=8, res_num=5, up_scale=4)
    return {"params": net.state_dict()}, net


def plksr():
    from spandrel.architectures.PLKSR import PLKSR
    net = PLKSR(dim=64, n_blocks=28, upscaling_factor=4)
    return {"params_ema": net.state_dict()}, net


def realcugan():
    from spandrel.architectures.RealCUGAN import UpCunet2x
    net = UpCunet2x(in_channels=3, out_channels=3)
    return net.state_dict(), net


def msrresnet():
    from training.networks.basicsr import MSRResNet, MSRResNetConfig
    net = MSRResNet(MSRResNetConfig(num_feat=64, num_block=16, scale=4))
    return {"params": net.state_dict()}, net


def edsr():
    from training.networks.basicsr import EDSR, EDSRConfig
    net = EDSR(EDSRConfig(num_feat=64, num_block=16, scale=4))
    return {"params": net.state_dict()}, net


# key -> (row label, file name, builder: () -> (what torch.save writes, the network), size note)
ARCHS: dict[str, tuple[str, str, Callable[[], Any], str]] = {
    "junyanz-resnet": ("junyanz resnet_9blocks ngf 64", "latest_net_G.pth", junyanz_resnet, "real"),
    "junyanz-unet": ("junyanz unet_256 ngf 64", "facades_label2photo.pth", junyanz_unet, "real"),
    "esrgan": ("ESRGAN RRDBNet x4 (23 blocks)", "RealESRGAN_x4plus.pth", esrgan, "real"),
    "compact": ("Compact x4 (64 feat, 32 conv)", "realesr-general-x4v3.pth", compact, "real"),
    "span": ("SPAN x4 (48 ch)", "4x-SPAN.pth", span, "real"),
    "swinir": ("SwinIR x4 (lightweight: 60 dim, 4x6)", "SwinIR-light_x4.pth", swinir, "small"),
    "dat": ("DAT x4 (light: 60 dim, 18 blocks)", "DAT_light_x4.pth", dat, "small"),
    "omnisr": ("OmniSR x4 (64 feat)", "OmniSR_x4.pth", omnisr, "real"),
    "plksr": ("PLKSR x4 (64 dim, 28 blocks)", "4x-PLKSR.pth", plksr, "real"),
    "realcugan": ("RealCUGAN x2 (UpCunet2x)", "up2x-latest-no-denoise.pth", realcugan, "real"),
    "msrresnet": ("MSRResNet x4 (64 feat, 16 blocks)", "MSRResNet_x4.pth", msrresnet, "real"),
    "edsr": ("EDSR-M x4 (64 feat, 16 blocks)", "EDSR_Mx4.pth", edsr, "real"),
}


# ------------------------------------------------------------------ one row



def time_session(path: Path, size: int, runs: int) -> tuple[float, float]:
    """Median and min ms of one 1x3xSxS input through an onnxruntime CPU session with the service's options
    (the min: the figure least disturbed by other processes on a shared machine)."""
    from core.runtime import make_session, session_options

    session = make_session(path, session_options())
    x = np.random.default_rng(0).uniform(0, 1, (1, 3, size, size)).astype(np.float32)
    name = session.get_inputs()[0].name
    session.run(None, {name: x})  # warm-up: allocations, kernel choice
    seconds = []
    for _ in range(runs):
        time.sleep(SETTLE_S)
        t0 = time.perf_counter()
        session.run(None, {name: x})
        seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds) * 1000, min(seconds) * 1000


def bench_one(key: str, root: Path, size: int, runs: int, fp16: bool,
              keep: dict[str, Any] | None = None) -> dict[str, Any]:
    import torch

    from training.importer.publish import ImportOptions, import_weights

    label, file, build, note = ARCHS[key]
    row: dict[str, Any] = {"arch": key, "row": label, "size": note, "file": file}
    torch.manual_seed(0)
    path = root / "weights" / file
    path.parent.mkdir(parents=True, exist_ok=True)
    payload, net = build()
    torch.save(payload, path)
    row["params_m"] = round(sum(p.numel() for p in net.parameters()) / 1e6, 2)
    lines: list[str] = []
    t0 = time.perf_counter()
    try:
        result = import_weights(ImportOptions(file=path, name=key, out=root / "models", fp16=fp16),
                                log=lines.append)
    except Exception as e:  # noqa: BLE001 - a refusal is a row too
        row.update(import_s=round(time.perf_counter() - t0, 1), error=f"{type(e).__name__}: {e}"[:400])
        return row
    card = result.card
    exported = next((float(m.group(1)) for line in lines
                     if (m := re.search(r"exported \(\w+\) in ([\d.]+)s", line))), None)
    fp16_entry = card.variants.get("fp16")
    fp16_file = fp16_entry.files.get("generator") if fp16_entry is not None else None
    row.update(import_s=round(time.perf_counter() - t0, 1), export_s=exported,
               parity=card.metrics.parity_max_abs, detected=card.provenance.arch,
               scale=card.scale, multiple_of=card.input.multiple_of, min_size=card.input.min_size,
               onnx_mb=round(card.files["generator"].bytes / 1e6, 2),
               fp16_mb=round(fp16_file.bytes / 1e6, 2) if fp16_file is not None else None)
    if keep is not None:  # the torch module and card, for the HTTP check once every row is imported
        keep[key] = (net.eval(), card)
    median, fastest = time_session(result.path / "generator.onnx", size, runs)
    row.update(ms_256=round(median, 1), ms_256_min=round(fastest, 1))
    return row


# ------------------------------------------------------------------ served through HTTP vs torch

UPSCALE_PHOTO = "samples/wood-128.png"
TRANSLATE_PHOTO = "samples/flower-256.jpg"


def psnr_u8(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of two uint8 images in dB; 100 when identical."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 100.0 if mse == 0 else round(10 * np.log10(255.0 ** 2 / mse), 2)


def photo_for(card: Any) -> tuple[str, np.ndarray]:
    """(endpoint, uint8 [H, W, 3]) the request sends: the upscale crop no larger than the card's tile;
    the translate photo at a size the card allows (its native size, else 256 to its multiple/min size)."""
    from PIL import Image

    from core.imaging import padded_size

    repo = Path(__file__).resolve().parent.parent
    endpoint = card.endpoint
    if endpoint == "upscale":
        pixels = np.asarray(Image.open(repo / UPSCALE_PHOTO).convert("RGB"))
        tile = card.tiling.tile if card.tiling is not None else pixels.shape[0]
        return endpoint, pixels[: min(tile, pixels.shape[0]), : min(tile, pixels.shape[1])].copy()
    image = Image.open(repo / TRANSLATE_PHOTO).convert("RGB")
    if card.input.native_size is not None:
        h, w = card.input.native_size
    else:
        h = w = padded_size(256 // card.input.multiple_of * card.input.multiple_of or card.input.multiple_of,
                            card.input.multiple_of, card.input.min_size)
    if image.size != (w, h):
        image = image.resize((w, h), Image.Resampling.LANCZOS)
    return endpoint, np.asarray(image).copy()


def torch_pixels(net: Any, card: Any, pixels: np.ndarray) -> np.ndarray:
    """The torch module on the pixels as the service maps them: to_float, reflect-pad to the card's
    multiple/min size, run, crop to H*s x W*s, to_pixels."""
    import torch

    from core.imaging import pad_to, to_float, to_pixels

    scale = card.output.scale or 1
    x = pad_to(to_float(pixels, tuple(card.input.range))[None], card.input.multiple_of, card.input.min_size)
    with torch.no_grad():
        y = net(torch.from_numpy(np.ascontiguousarray(x))).float().numpy()
    h, w = pixels.shape[:2]
    return to_pixels(y[0, :, : h * scale, : w * scale], tuple(card.output.range))


def http_check(models: Path, tmp: Path, kept: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One real server over the models folder; per kept row: served vs torch PSNR, backend, precision."""
    import io

    import httpx
    from PIL import Image

    from testkit.launcher import running_server

    by_key = {r["arch"]: r for r in rows}
    t0 = time.perf_counter()
    with running_server(models, tmp) as (base, _log):
        started = round(time.perf_counter() - t0, 1)
        with httpx.Client(base_url=base, timeout=600) as http:
            listed = {m["name"]: m for m in http.get("/models").json()["models"]}
            for key, (net, card) in kept.items():
                row = by_key[key]
                info = listed.get(card.name, {})
                row.update(served_backend=info.get("backend"), served_precision=info.get("precision"),
                           served_status=info.get("status"))
                try:
                    endpoint, pixels = photo_for(card)
                    buf = io.BytesIO()
                    Image.fromarray(pixels).save(buf, format="PNG")
                    data = {"model": card.name, "format": "png"}
                    if endpoint == "translate":
                        data["direction"] = "a2b"
                    t1 = time.perf_counter()
                    resp = http.post(f"/{endpoint}", files={"image": ("photo.png", buf.getvalue(), "image/png")},
                                     data=data)
                    served_s = time.perf_counter() - t1
                    if resp.status_code != 200:
                        raise RuntimeError(f"HTTP {resp.status_code}: {resp.text[:300]}")
                    served = np.asarray(Image.open(io.BytesIO(resp.content)).convert("RGB"))
                    want = torch_pixels(net, card, pixels)
                    if served.shape != want.shape:
                        raise RuntimeError(f"served {served.shape} vs torch {want.shape}")
                    diff = np.abs(served.astype(np.int16) - want.astype(np.int16))
                    row.update(http_endpoint=endpoint, http_input=f"{pixels.shape[1]}x{pixels.shape[0]}",
                               http_psnr_db=psnr_u8(served, want), http_max_abs_u8=int(diff.max()),
                               http_s=round(served_s, 2))
                except Exception as e:  # noqa: BLE001 - a failed check is a row figure too
                    row.update(http_error=f"{type(e).__name__}: {e}"[:400])
                print(json.dumps({k: row.get(k) for k in ("arch", "served_backend", "served_precision",
                                                           "http_psnr_db", "http_max_abs_u8", "http_error")}),
                      file=sys.stderr, flush=True)
    return {"server_start_s": started, "upscale_photo": UPSCALE_PHOTO, "translate_photo": TRANSLATE_PHOTO}


def markdown(rows: list[dict[str, Any]], size: int) -> str:
    head = (f"| architecture | size | params M | import s | export s | parity max abs | ONNX MB (fp16) | "
            f"ms per {size}x{size}, median (min) | HTTP PSNR dB | served as |"
            f"\n|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    out = [head]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['row']} | {r['size']} | {r['params_m']} | {r['import_s']} | refused | {r['error']} "
                       f"| | | | |")
            continue
        fp16 = f" ({r['fp16_mb']})" if r.get("fp16_mb") is not None else ""
        out.append(f"| {r['row']} | {r['size']} | {r['params_m']} | {r['import_s']} | {r['export_s']} | "
                   f"{r['parity']:.1e} | "
                   f"{r['onnx_mb']}{fp16} | {r['ms_256']:,.0f} ({r['ms_256_min']:,.0f}) | "
                   f"{r.get('http_psnr_db', r.get('http_error', ''))} | "
                   f"{r.get('served_backend') or ''} {r.get('served_precision') or ''} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.imports", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", help=f"comma-separated subset of: {', '.join(ARCHS)}")
    p.add_argument("--runs", type=int, default=3, help="timed runs per model after one warm-up (default 3)")
    p.add_argument("--size", type=int, default=256, help="edge of the timed input (default 256)")
    p.add_argument("--no-fp16", dest="fp16", action="store_false", help="import without the fp16 variant")
    p.add_argument("--no-http", dest="http", action="store_false",
                   help="skip the served-through-HTTP vs torch PSNR check")
    p.add_argument("--json", help="also write the JSON here")
    args = p.parse_args(argv)
    keys = args.only.split(",") if args.only else list(ARCHS)
    unknown = [k for k in keys if k not in ARCHS]
    if unknown:
        p.error(f"unknown arch(s) {unknown}; known: {', '.join(ARCHS)}")
    start = machine()
    rows = []
    kept: dict[str, Any] = {}
    http: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="bench-imports-") as tmp:
        for key in keys:
            row = bench_one(key, Path(tmp), args.size, args.runs, args.fp16, kept if args.http else None)
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
        if args.http and kept:
            http = http_check(Path(tmp) / "models", Path(tmp), kept, rows)
    report = {"machine": {**start, "loadavg_end": list(os.getloadavg())}, "size": args.size,
              "runs": args.runs, "fp16": args.fp16, "http": http, "rows": rows}
    text = json.dumps(report, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)
    print()
    print(markdown(rows, args.size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
