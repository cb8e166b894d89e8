"""Sample sheets of published models on held-out data (PNG, for the README and docs/).

    python -m training sheets [NAME ...] [--models models] [--out docs/samples] [--data-root DIR]

Runs the exported ONNX graphs on onnxruntime (never torch), exactly as `eval`
does, on the held-out split of each model's dataset:

- generate: one row per class, `--per-class` samples each (fixed seeds).
- translate, CycleGAN: real A | A -> B, and real B | B -> A.
- translate, pix2pix (colorize): grayscale input | output | the original photo.
- upscale: bicubic | model | original on centre crops of held-out photos; with
  two or more upscale models, `upscale-compare.png` puts them side by side.

With no NAME, every model in --models gets a sheet. Also prints a Markdown
table of each card's held-out metrics (`--table` prints only the table).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .evaluate import (EvalError, data_config, hwc_to_nchw, reader, run_batches, run_tiled, session, to_graph,
                       to_pixels)
from .export import ExportError, ModelDirError, verify_model_dir

LABEL_H = 16
PAD = 4


# ------------------------------------------------------------------ drawing

def _text(draw, xy, text: str) -> None:
    draw.text(xy, text, fill=(20, 20, 20))


def _to_rgb(px: np.ndarray):
    """H x W (x C) uint8 -> PIL RGB."""
    from PIL import Image
    if px.ndim == 3 and px.shape[2] == 1:
        px = px[:, :, 0]
    return Image.fromarray(px).convert("RGB")


def grid(rows: list[list[np.ndarray]], row_labels: list[str] | None = None, col_labels: list[str] | None = None,
         zoom: int = 1, label_w: int = 0):
    """A sheet of HWC/HW uint8 tiles: rows x columns, optional labels, nearest-neighbour `zoom`."""
    from PIL import Image, ImageDraw
    tiles = [[_to_rgb(t) for t in row] for row in rows]
    cell_w = max(t.width for row in tiles for t in row) * zoom
    cell_h = max(t.height for row in tiles for t in row) * zoom
    top = LABEL_H if col_labels else 0
    ncols = max(len(r) for r in tiles)
    sheet = Image.new("RGB", (label_w + ncols * (cell_w + PAD) + PAD, top + len(tiles) * (cell_h + PAD) + PAD),
                      (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for j, text in enumerate(col_labels or []):
        _text(draw, (label_w + PAD + j * (cell_w + PAD), 2), text)
    for i, row in enumerate(tiles):
        y = top + PAD + i * (cell_h + PAD)
        if row_labels:
            _text(draw, (PAD, y + cell_h // 2 - 6), row_labels[i])
        for j, t in enumerate(row):
            if zoom != 1:
                t = t.resize((t.width * zoom, t.height * zoom), Image.NEAREST)
            sheet.paste(t, (label_w + PAD + j * (cell_w + PAD), y))
    return sheet


def _hwc(px: np.ndarray) -> np.ndarray:
    """C x H x W -> H x W x C."""
    return np.ascontiguousarray(px.transpose(1, 2, 0))


# ------------------------------------------------------------------ per family

def sheet_generate(card: dict[str, Any], sessions, per_class: int, seed: int):
    classes = card.get("classes") or [str(i) for i in range(int(card.get("num_classes", 1)))]
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(classes), dtype=np.int64), per_class)
    z = rng.standard_normal((len(labels), int(card["latent_dim"]))).astype(np.float32)
    out = sessions["generator"].run(["output"], {"z": z, "label": labels})[0]
    px = to_pixels(out, card["output"]["range"])
    rows = [[_hwc(px[c * per_class + k]) for k in range(per_class)] for c in range(len(classes))]
    return grid(rows, row_labels=list(classes), zoom=2, label_w=90)


def sheet_cyclegan(card: dict[str, Any], sessions, data: dict[str, Any], n: int):
    from .evaluate import _domain_images
    a, b = _domain_images(data, n)
    rng = card["input"]["range"], card["output"]["range"]
    fake_b = to_pixels(run_batches(sessions["a2b"], to_graph(a, rng[0]), card), rng[1])
    fake_a = to_pixels(run_batches(sessions["b2a"], to_graph(b, rng[0]), card), rng[1])
    dom = card.get("domains") or {"a": "A", "b": "B"}
    rows = [[_hwc(x) for x in a], [_hwc(x) for x in fake_b], [_hwc(x) for x in b], [_hwc(x) for x in fake_a]]
    labels = [f"{dom['a']}", f"-> {dom['b']}", f"{dom['b']}", f"-> {dom['a']}"]
    return grid(rows, row_labels=labels, zoom=3, label_w=90)


def _photo_crops(data: dict[str, Any], n: int, size: int, shorter: int | None) -> list[np.ndarray]:
    """Centre crops (size x size) of held-out photos, each first resized to `shorter` px on its shorter side."""
    from .data import load_image, resize_shorter
    out = []
    for path in reader(data).paths[:n]:
        im = load_image(path, "RGB")
        if shorter:
            im = resize_shorter(im, shorter)
        x0, y0 = (im.width - size) // 2, (im.height - size) // 2
        out.append(np.asarray(im.crop((x0, y0, x0 + size, y0 + size))))
    return out


def sheet_pix2pix(card: dict[str, Any], sessions, data: dict[str, Any], n: int, size: int):
    from PIL import Image
    rows = []
    in_ch = int(card["input"]["channels"])
    for rgb in _photo_crops(data, n, size, size):
        gray = np.asarray(Image.fromarray(rgb).convert("L"))
        x = hwc_to_nchw([gray if in_ch == 1 else np.repeat(gray[:, :, None], 3, 2)])
        out = to_pixels(run_tiled(sessions["generator"], to_graph(x, card["input"]["range"]), card),
                        card["output"]["range"])[0]
        rows.append([gray, _hwc(out), rgb])
    return grid(rows, col_labels=["grayscale input", card["name"], "original"])


def upscale_rows(cards: list[dict[str, Any]], sessions: list[dict], data: dict[str, Any], n: int, crop: int):
    """Per held-out photo: bicubic, each model, the original (HR centre crop of `crop` px); and the labels."""
    from PIL import Image
    scale = int(cards[0]["output"]["scale"])
    rows = []
    for hr in _photo_crops({**data, "hr_size": None}, n, crop, None):
        lr = Image.fromarray(hr).resize((crop // scale, crop // scale), Image.BICUBIC)
        row = [np.asarray(lr.resize((crop, crop), Image.BICUBIC))]
        x = hwc_to_nchw([np.asarray(lr)])
        for card, sess in zip(cards, sessions):
            y = run_tiled(sess["generator"], to_graph(x, card["input"]["range"]), card)
            row.append(_hwc(to_pixels(y, card["output"]["range"])[0]))
        rows.append(row + [hr])
    return rows, ["bicubic"] + [c["name"] for c in cards] + ["original"]


def _columns(rows: list[list[np.ndarray]], labels: list[str], keep: list[int]):
    return grid([[row[j] for j in keep] for row in rows], col_labels=[labels[j] for j in keep])


# ------------------------------------------------------------------ metrics table

def _fmt(v: Any, spec: str = ".2f") -> str:
    return "n/a" if v is None else format(v, spec)


def metrics_row(card: dict[str, Any]) -> str:
    """One Markdown table row: the model's held-out headline figures (docs/model-card.md)."""
    h = (card.get("metrics") or {}).get("heldout") or {}
    family, endpoint = card.get("family"), card.get("endpoint")
    if not h:
        figures = "not evaluated (`python -m training eval NAME`)"
    elif endpoint == "upscale":
        peers = ", ".join(f"{k.upper()} {_fmt(v.get('psnr_y'))}" for k, v in (h.get("anchors") or {}).items())
        figures = (f"Y-PSNR {_fmt(h.get('psnr_y'))} dB vs bicubic {_fmt(h.get('bicubic_psnr_y'))} dB "
                   f"(+{_fmt((h.get('psnr_y') or 0) - (h.get('bicubic_psnr_y') or 0))}); SSIM {_fmt(h.get('ssim_y'), '.3f')}"
                   + (f"; {peers}" if peers else ""))
    elif family == "pix2pix":
        figures = (f"PSNR {_fmt(h.get('psnr'))} dB vs grayscale input {_fmt(h.get('input_psnr'))} dB; "
                   f"colourfulness {_fmt(h.get('colourfulness'), '.1f')} (photos {_fmt(h.get('target_colourfulness'), '.1f')})")
    elif family == "cyclegan":
        dom = h.get("domains") or {"a": "A", "b": "B"}
        figures = (f"{dom['a']}->{dom['b']} {_fmt(100 * h.get('a2b_target_share', 0), '.1f')}% / "
                   f"{dom['b']}->{dom['a']} {_fmt(100 * h.get('b2a_target_share', 0), '.1f')}% classified as target; "
                   f"cycle L1 {_fmt(h.get('cycle_l1_a'), '.3f')} / {_fmt(h.get('cycle_l1_b'), '.3f')}")
    elif endpoint == "generate":
        figures = (f"{_fmt(100 * h.get('class_match', 0), '.1f')}% class match; Frechet distance "
                   f"{_fmt(h.get('frechet_distance'), '.1f')} (real-data floor {_fmt(h.get('frechet_distance_real_train'), '.1f')})")
    else:
        figures = "n/a"
    size = sum(int(f.get("bytes") or 0) for f in (card.get("files") or {}).values()) / 1e6
    return f"| `{card['name']}` | {endpoint} | {family} | {figures} | {size:.1f} MB |"


def metrics_table(cards: list[dict[str, Any]]) -> str:
    head = "| model | endpoint | family | held-out metrics | ONNX |\n|---|---|---|---|---|"
    return "\n".join([head] + [metrics_row(c) for c in cards])


# ------------------------------------------------------------------ driver

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training sheets", description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", metavar="NAME", help="models to draw (default: all in --models)")
    p.add_argument("--models", default="models")
    p.add_argument("--out", default="docs/samples", help="folder for NAME.png (default docs/samples)")
    p.add_argument("--data-root", help="dataset root (default: the one in each card's training config)")
    p.add_argument("--n", type=int, default=8, help="held-out images per sheet (default 8; photos: 4)")
    p.add_argument("--crop", type=int, default=192, help="upscale/colorize: crop edge in output pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--table", action="store_true", help="only print the metrics table")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    models = Path(args.models)
    names = args.names or sorted(p.name for p in models.iterdir() if p.is_dir() and not p.name.startswith("."))
    try:
        cards = {name: verify_model_dir(models / name) for name in names}
        print(metrics_table(list(cards.values())))
        if args.table:
            return 0
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        photos = min(args.n, 4)
        ups = []
        for name, card in cards.items():
            sessions = {role: session(models / name / e["path"]) for role, e in card["files"].items()}
            family, endpoint = card.get("family"), card.get("endpoint")
            if endpoint == "generate":
                img = sheet_generate(card, sessions, args.n, args.seed)
            else:
                data = data_config(card, args.data_root)
                if endpoint == "upscale":  # drawn below, every upscale model run once on the same crops
                    ups.append((card, sessions, data))
                    continue
                if family == "pix2pix":
                    img = sheet_pix2pix(card, sessions, data, photos, args.crop)
                elif family == "cyclegan":
                    img = sheet_cyclegan(card, sessions, data, args.n)
                else:
                    raise EvalError(f"no sample sheet for family {family!r} / endpoint {endpoint!r}")
            img.save(out / f"{name}.png", optimize=True)
            print(f"wrote {out / f'{name}.png'} ({img.width}x{img.height})")
        if ups:
            rows, labels = upscale_rows([u[0] for u in ups], [u[1] for u in ups], ups[0][2], photos, args.crop)
            sheets = {card["name"]: [0, i + 1, len(labels) - 1] for i, (card, _, _) in enumerate(ups)}
            if len(ups) > 1:
                sheets["upscale-compare"] = list(range(len(labels)))
            for stem, keep in sheets.items():
                img = _columns(rows, labels, keep)
                img.save(out / f"{stem}.png", optimize=True)
                print(f"wrote {out / f'{stem}.png'} ({img.width}x{img.height})")
    except (EvalError, ExportError, ModelDirError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
