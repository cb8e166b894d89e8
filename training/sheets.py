"""Sample sheets of published models on held-out data (PNG, for the README and docs/).

    python -m training sheets [NAME ...] [--models models] [--out docs/samples] [--data-root DIR]

Loads each folder with the service's loader and runs every image through the
service's own pipeline (core/pipelines.py), exactly as `eval` does
(training/evaluate.py), on the held-out split of each model's dataset: what a
sheet shows is what /generate, /translate and /upscale answer.

- generate: one row per class, `--per-class` samples each (fixed seeds).
- translate, CycleGAN: real A | A -> B, and real B | B -> A.
- translate, pix2pix (colorize): grayscale input | output | the original photo.
- upscale: bicubic | model | original on centre crops of held-out photos; with
  two or more upscale models, `upscale-compare.png` puts them side by side.

Which sheet a model gets comes from training/registry.py (its family's `sheet`
entry, a function of the list of models that share it). With no NAME, every
model in --models gets a sheet. Also prints a Markdown table of each card's
held-out metrics (`--table` prints only the table).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contract import Card, CardError
from contract.folder import ModelDirError, verify_model_dir
from core.loading import ServedModel

from modelops.cli import options_from_args
from .evaluate import (EvalError, data_config, domain_images, family_of, generate, load_served, reader,
                       super_resolve, translate, translate_batch)

PHOTOS_MAX = 4  # photo sheets (colorize, upscale) show at most this many held-out photos
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

@dataclass
class SheetJob:
    """One model to draw, loaded as the service loads it, with the CLI's options."""
    served: ServedModel
    n: int = 8  # held-out images (photo sheets: at most PHOTOS_MAX)
    crop: int = 192  # photo sheets: crop edge in output pixels
    seed: int = 0
    data_root: str | None = None

    @property
    def card(self) -> Card:
        return self.served.card

    @property
    def name(self) -> str:
        return self.served.name

    def data(self) -> dict[str, Any]:
        return data_config(self.card, self.data_root)


# A sheet maker takes every model that shares it (one call) and returns {file stem: image}.

def sheet_generate(jobs: list[SheetJob]) -> dict[str, Any]:
    return {job.name: generate_sheet(job) for job in jobs}


def sheet_cyclegan(jobs: list[SheetJob]) -> dict[str, Any]:
    return {job.name: cyclegan_sheet(job) for job in jobs}


def sheet_pix2pix(jobs: list[SheetJob]) -> dict[str, Any]:
    return {job.name: pix2pix_sheet(job) for job in jobs}


def sheet_upscale(jobs: list[SheetJob]) -> dict[str, Any]:
    """Every upscale model runs once on the same crops: its own sheet is bicubic | it | original, and with two
    or more models `upscale-compare` shows them all side by side."""
    rows, labels = upscale_rows(jobs)
    sheets = {job.name: columns(rows, labels, [0, i + 1, len(labels) - 1]) for i, job in enumerate(jobs)}
    if len(jobs) > 1:
        sheets["upscale-compare"] = columns(rows, labels, list(range(len(labels))))
    return sheets


def generate_sheet(job: SheetJob):
    card, per_class = job.card, job.n
    classes = list(card.classes or ["sample"])
    rng = np.random.default_rng(job.seed)
    labels = np.repeat(np.arange(len(classes), dtype=np.int64), per_class)
    z = rng.standard_normal((len(labels), int(card.latent_dim))).astype(np.float32)
    px = generate(job.served, z, labels if job.served.generate_spec.label_name else None)
    rows = [[_hwc(px[c * per_class + k]) for k in range(per_class)] for c in range(len(classes))]
    return grid(rows, row_labels=classes, zoom=2, label_w=90)


def cyclegan_sheet(job: SheetJob):
    a, b = domain_images(job.data(), job.n)
    fake_b, fake_a = translate_batch(job.served, "a2b", a), translate_batch(job.served, "b2a", b)
    dom = job.card.domains or {"a": "A", "b": "B"}
    rows = [[_hwc(x) for x in a], [_hwc(x) for x in fake_b], [_hwc(x) for x in b], [_hwc(x) for x in fake_a]]
    labels = [f"{dom['a']}", f"-> {dom['b']}", f"{dom['b']}", f"-> {dom['a']}"]
    return grid(rows, row_labels=labels, zoom=3, label_w=90)


def photo_crops(data: dict[str, Any], n: int, size: int, shorter: int | None) -> list[np.ndarray]:
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


def pix2pix_sheet(job: SheetJob):
    from PIL import Image
    rows = []
    for rgb in photo_crops(job.data(), min(job.n, PHOTOS_MAX), job.crop, job.crop):
        gray = np.asarray(Image.fromarray(rgb).convert("L"))
        rows.append([gray, translate(job.served, "generator", gray[:, :, None]), rgb])
    return grid(rows, col_labels=["grayscale input", job.name, "original"])


def upscale_rows(jobs: list[SheetJob]) -> tuple[list[list[np.ndarray]], list[str]]:
    """Per held-out photo: bicubic, each model, the original (HR centre crop of the first job's `crop` px);
    and the column labels."""
    from PIL import Image
    first = jobs[0]
    scale, crop = first.served.image_spec.scale, first.crop
    rows = []
    for hr in photo_crops({**first.data(), "hr_size": None}, min(first.n, PHOTOS_MAX), crop, None):
        lr = Image.fromarray(hr).resize((crop // scale, crop // scale), Image.BICUBIC)
        row = [np.asarray(lr.resize((crop, crop), Image.BICUBIC))]
        row += [super_resolve(job.served, np.asarray(lr)) for job in jobs]
        rows.append(row + [hr])
    return rows, ["bicubic"] + [job.name for job in jobs] + ["original"]


def columns(rows: list[list[np.ndarray]], labels: list[str], keep: list[int]):
    return grid([[row[j] for j in keep] for row in rows], col_labels=[labels[j] for j in keep])


# ------------------------------------------------------------------ metrics table

def _fmt(v: Any, spec: str = ".2f") -> str:
    return "n/a" if v is None else format(v, spec)


def upscale_figures(h: dict[str, Any]) -> str:
    peers = ", ".join(f"{k.upper()} {_fmt(v.get('psnr_y'))}" for k, v in (h.get("anchors") or {}).items())
    return (f"Y-PSNR {_fmt(h.get('psnr_y'))} dB vs bicubic {_fmt(h.get('bicubic_psnr_y'))} dB "
            f"(+{_fmt((h.get('psnr_y') or 0) - (h.get('bicubic_psnr_y') or 0))}); SSIM {_fmt(h.get('ssim_y'), '.3f')}"
            + (f"; {peers}" if peers else ""))


def paired_figures(h: dict[str, Any]) -> str:
    return (f"PSNR {_fmt(h.get('psnr'))} dB vs grayscale input {_fmt(h.get('input_psnr'))} dB; colourfulness "
            f"{_fmt(h.get('colourfulness'), '.1f')} (photos {_fmt(h.get('target_colourfulness'), '.1f')})")


def cycle_figures(h: dict[str, Any]) -> str:
    dom = h.get("domains") or {"a": "A", "b": "B"}
    return (f"{dom['a']}->{dom['b']} {_fmt(100 * h.get('a2b_target_share', 0), '.1f')}% / "
            f"{dom['b']}->{dom['a']} {_fmt(100 * h.get('b2a_target_share', 0), '.1f')}% classified as target; "
            f"cycle L1 {_fmt(h.get('cycle_l1_a'), '.3f')} / {_fmt(h.get('cycle_l1_b'), '.3f')}")


def generate_figures(h: dict[str, Any]) -> str:
    text = (f"{_fmt(100 * h.get('class_match', 0), '.1f')}% class match; Frechet distance "
            f"{_fmt(h.get('frechet_distance'), '.1f')} (real-data floor "
            f"{_fmt(h.get('frechet_distance_real_train'), '.1f')})")
    real, made = h.get("classifier_real_per_class") or {}, h.get("class_match_per_class") or {}
    gaps = {name: real[name] - share for name, share in made.items() if name in real}
    if gaps:  # the class furthest below the classifier's own accuracy on real images of it
        worst = max(gaps, key=gaps.get)
        text += f"; furthest class: {worst} {100 * made[worst]:.0f}% (real images {100 * real[worst]:.0f}%)"
    return text


# which headline figures a held-out block has -> how they read (the evaluators write these keys)
FIGURES: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = (
    ("psnr_y", upscale_figures), ("cycle_l1_a", cycle_figures), ("class_match", generate_figures),
    ("psnr", paired_figures))


def metrics_row(card: Card | dict[str, Any]) -> str:
    """One Markdown table row: the model's held-out headline figures (docs/model-card.md)."""
    doc = card.to_dict() if isinstance(card, Card) else card
    h = (doc.get("metrics") or {}).get("heldout") or {}
    if not h:
        figures = "not evaluated (`python -m training eval NAME`)"
    else:
        figures = next((show(h) for key, show in FIGURES if key in h), "n/a")
    size = sum(int(f.get("bytes") or 0) for f in (doc.get("files") or {}).values()) / 1e6
    return f"| `{doc['name']}` | {doc.get('endpoint')} | {doc.get('family')} | {figures} | {size:.1f} MB |"


def metrics_table(cards: list[Card | dict[str, Any]]) -> str:
    head = "| model | endpoint | family | held-out metrics | ONNX |\n|---|---|---|---|---|"
    return "\n".join([head] + [metrics_row(c) for c in cards])


# ------------------------------------------------------------------ driver

@dataclass(frozen=True, kw_only=True)
class SheetsOptions:
    """`python -m training sheets [NAME...]` (its --help says what each does)."""
    names: Sequence[str] = ()  # the models to draw (default: every folder in `models`)
    models: str | Path = "models"
    out: str | Path = "docs/samples"  # folder for NAME.png
    data_root: str | None = None  # dataset root (default: the one in each card's training config)
    n: int = 8  # held-out images per sheet
    crop: int = 192  # upscale/colorize: crop edge in output pixels
    seed: int = 0
    table: bool = False  # only print the metrics table


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training sheets", description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", metavar="NAME", help="models to draw (default: all in --models)")
    p.add_argument("--models", default="models")
    p.add_argument("--out", default="docs/samples", help="folder for NAME.png (default docs/samples)")
    p.add_argument("--data-root", help="dataset root (default: the one in each card's training config)")
    p.add_argument("--n", type=int, default=8, help=f"held-out images per sheet (default 8; photos: {PHOTOS_MAX})")
    p.add_argument("--crop", type=int, default=192, help="upscale/colorize: crop edge in output pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--table", action="store_true", help="only print the metrics table")
    return p


def draw_sheets(opts: SheetsOptions, log=print) -> dict[str, Path]:
    """Log the metrics table of the named models (all in `models` when none is named), then, unless `table`,
    draw every one's sheet (each family's sheet maker called once, with all its models); {stem: png}."""
    models = Path(opts.models)
    names = opts.names or sorted(p.name for p in models.iterdir() if p.is_dir() and not p.name.startswith("."))
    log(metrics_table([verify_model_dir(models / name) for name in names]))
    if opts.table:
        return {}
    groups: dict[Callable[..., Any], list[SheetJob]] = {}
    for name in names:
        served = load_served(models / name)
        maker = family_of(served.card).sheet_maker()
        groups.setdefault(maker, []).append(SheetJob(served, n=opts.n, crop=opts.crop, seed=opts.seed,
                                                     data_root=opts.data_root))
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for maker, jobs in groups.items():
        for stem, img in maker(jobs).items():
            written[stem] = path = out / f"{stem}.png"
            img.save(path, optimize=True)
            log(f"wrote {path} ({img.width}x{img.height})")
    return written


def main(argv: list[str] | None = None) -> int:
    opts = options_from_args(SheetsOptions, build_parser().parse_args(argv))
    try:
        draw_sheets(opts)
    except (EvalError, ModelDirError, CardError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
