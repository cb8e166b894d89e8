"""training, quality: each family's committed architecture trained fp32 and auto for the same steps, held-out
figures side by side.

Short runs (a few minutes per family on 2 cores) of the committed configs, identical but for
train.precision, on data generated here (varied synthetic photos; Fashion-MNIST-shaped idx files with one
pattern per class), or on data/ when `make data` has built it. Each run is exported (the parity gate as
always) and measured by `python -m training eval`'s code on the held-out split, through the service's
pipeline. The targets of issue 27: within 0.05 dB (SR PSNR-Y), 0.1 dB (colorize PSNR), 1 point (fashion
class match). Short runs on generated data say whether bf16 changes what training reaches, not what
the shipped models reach.
"""
from __future__ import annotations

import gzip
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .common import REPO, table


@dataclass(frozen=True)
class QualityCase:
    config: str
    data: str  # photos | fashion
    steps: int
    figure: str  # the held-out figure compared
    tolerance: float
    unit: str
    scale: float = 1.0  # figure -> unit (class match 0..1 -> points)


CASES = (QualityCase("srresnet-x4", "photos", 100, "psnr_y", 0.05, "dB"),
         QualityCase("colorize", "photos", 40, "psnr", 0.1, "dB"),
         QualityCase("fashion", "fashion", 100, "class_match", 1.0, "points", 100.0))


def synthetic_photo(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """uint8 H x W x 3: a gradient, discs, stripes and texture, colours drawn per image."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    c = rng.uniform(0, 1, (3, 3))
    img = np.stack([c[i, 0] * x / w + c[i, 1] * y / h + 0.3 * c[i, 2] for i in range(3)], -1)
    for _ in range(int(rng.integers(2, 6))):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.05, 0.3) * min(w, h)
        img[(x - cx) ** 2 + (y - cy) ** 2 < r ** 2] = rng.uniform(0, 1, 3)
    angle, freq = rng.uniform(0, np.pi), rng.uniform(0.05, 0.6)
    img += 0.12 * np.sin(freq * (x * np.cos(angle) + y * np.sin(angle)))[..., None]
    img += rng.normal(0, 0.03, img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def make_photos(root: Path, n_train: int = 24, n_test: int = 6, size: tuple[int, int] = (288, 320)) -> Path:
    from PIL import Image

    rng = np.random.default_rng(27)
    for split, n in (("train", n_train), ("test", n_test)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(synthetic_photo(rng, *size)).save(root / split / f"{i:03d}.png")
    return root


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">I", 2051 if array.ndim == 3 else 2049) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.with_name(path.name + ".gz").write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def make_fashion(root: Path, n_train: int = 3000, n_test: int = 500) -> Path:
    """Fashion-MNIST-shaped idx files: class c is a bar at a class-dependent place and angle, with jitter."""
    rng = np.random.default_rng(27)
    root.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:28, 0:28].astype(np.float32)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = np.zeros((n, 28, 28), np.float32)
        for i, c in enumerate(labels):
            a = c * np.pi / 10 + rng.normal(0, 0.08)
            d = (x - 14 + rng.normal(0, 1)) * np.cos(a) + (y - 14 + rng.normal(0, 1)) * np.sin(a)
            images[i] = (np.abs(d) < 2.0 + (c % 3)) * rng.uniform(150, 255) + rng.uniform(0, 30, (28, 28))
        write_idx(root / f"{prefix}-images-idx3-ubyte", np.clip(images, 0, 255))
        write_idx(root / f"{prefix}-labels-idx1-ubyte", labels)
    return root


def data_roots(work: Path, log) -> dict[str, tuple[Path, str]]:
    """photos / fashion -> (root, what it is): data/ where `make data` built it, else generated here."""
    out = {}
    for key, real, make in (("photos", REPO / "data" / "photos", make_photos),
                            ("fashion", REPO / "data" / "fashion-mnist", make_fashion)):
        if (real / "manifest.json").is_file() or (key == "fashion" and any(real.glob("t10k-*"))):
            out[key] = (real, f"real data ({real.relative_to(REPO)})")
        else:
            out[key] = (make(work / key), "generated (data/ absent: `make data` not run)")
        log(f"  quality data {key}: {out[key][1]}")
    return out


def train_and_measure(case: QualityCase, precision: str, root: Path, work: Path) -> dict[str, Any]:
    """Train the committed config `case.steps` steps in `precision`, export, and measure its held-out figures."""
    import time

    from training import checkpoint as ckpt
    from training import export as ex
    from training.config import load_config
    from training.evaluate import EvalOptions, evaluate_model
    from training.train import train

    quiet = lambda *a: None  # noqa: E731
    s = case.steps
    cfg = load_config(REPO / "training" / "configs" / f"{case.config}.yaml",
                      [f"data.root={root}", f"train.steps={s}", f"train.precision={precision}", "train.device=cpu",
                       "train.num_workers=0", f"train.log_every={s}", f"train.sample_every={s}",
                       f"train.ckpt_every={s}", "train.keep_ckpts=1"])
    t0 = time.perf_counter()
    run = train(cfg, out_dir=work / f"{case.config}-{precision}", log=quiet)
    seconds = time.perf_counter() - t0
    path = ckpt.list_checkpoints(run)[-1]
    name = f"{case.config}-{precision}"
    result = ex.export_checkpoint(ex.ExportOptions(checkpoint=path, name=name, out=work / "models",
                                                   exporter="torchscript", fp16=False, optimize=False), log=quiet)
    heldout = evaluate_model(EvalOptions(name=result.path.name, models=result.path.parent,
                                         limit=6 if case.data == "photos" else 500,
                                         classifier_cache=work / "classifier", classifier_steps=300, crop=192,
                                         samples_per_class=200, anchors_dir=None, dry_run=True), log=quiet)
    return {"precision": ckpt.load(path)["meta"]["precision"], "train_s": seconds,
            "figure": float(heldout[case.figure]) * case.scale, "parity_max_abs": result.parity_max_abs}


def compare_all(log=print) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="ganforge-bench-quality-") as tmp:
        work = Path(tmp)
        roots = data_roots(work, log)
        for case in CASES:
            root, what = roots[case.data]
            arms = {p: train_and_measure(case, p, root, work) for p in ("fp32", "auto")}
            delta = arms["auto"]["figure"] - arms["fp32"]["figure"]
            row = {"config": case.config, "steps": case.steps, "figure": case.figure, "unit": case.unit,
                   "tolerance": case.tolerance, "data": what, "fp32": arms["fp32"], "auto": arms["auto"],
                   "delta": delta, "within": abs(delta) <= case.tolerance}
            log(f"  {case.config}: {case.figure} fp32 {arms['fp32']['figure']:.3f} / auto "
                f"({arms['auto']['precision']}) {arms['auto']['figure']:.3f} {case.unit}: delta {delta:+.3f} "
                f"(target +-{case.tolerance}); train {arms['fp32']['train_s']:.0f} s / {arms['auto']['train_s']:.0f} s")
            rows.append(row)
    return rows


def quality_table(rows: list[dict[str, Any]]) -> str:
    body = [[r["config"], r["steps"], f"{r['figure']} ({r['unit']})", f"{r['fp32']['figure']:.3f}",
             f"{r['auto']['figure']:.3f} ({r['auto']['precision']})", f"{r['delta']:+.3f}", f"+-{r['tolerance']}",
             "yes" if r["within"] else "NO", f"{r['fp32']['train_s'] / max(r['auto']['train_s'], 1e-9):.2f}",
             r["data"]] for r in rows]
    return "quality (same steps, held-out split):\n" + table(
        ["config", "steps", "figure", "fp32", "auto", "delta", "target", "within", "train time fp32/auto", "data"],
        body)
