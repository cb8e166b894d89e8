"""Held-out evaluation of a published model, through the pipeline the service runs (never torch).

    python -m training eval NAME [--models models] [--data-root DIR] [--limit N]

Reads OUT/NAME/card.json (the training config in it names the dataset; override
the root with --data-root), loads the folder with the service's loader
(core/loading.py: sha256-checked bytes, the CPU provider, the fp32 graphs, the
card's tiling) and sends every held-out image through the service's pipeline
functions (core/pipelines.py: `upscale_image`, `translate_image`,
`generate_images`: the same padding, tiling, blending and pixel mapping as
/upscale, /translate and /generate). So every figure is computed on the 8-bit
images a client would get. The figures go into the card's `metrics.heldout`
(card.json rewritten atomically through `contract.folder`; its sha256s cover the
ONNX files only). Definitions are in docs/model-card.md ("Held-out metrics") and
modelops/metrics.py.

- upscale (srgan): PSNR / SSIM on the Y channel (ITU-R BT.601, MATLAB
  rgb2ycbcr), border of `scale` px cropped, vs PIL bicubic; FSRCNN / ESPCN /
  LapSRN peers via cv2.dnn_superres when opencv-contrib is installed.
- translate, pix2pix: L1 and PSNR vs ground truth next to the input-as-output
  baseline, and colourfulness (Hasler & Suesstrunk 2003).
- translate, cyclegan: cycle reconstruction L1 both ways; share of outputs the
  project's Fashion-MNIST classifier puts in the target domain.
- generate (dcgan): share of samples classified as the requested class; a
  Frechet distance on the classifier's penultimate features vs the held-out
  split, next to the same distance for real training images (the floor), and the
  classifier's accuracy on real held-out images of each class (the per-class bar).
Which evaluation a model gets comes from training/registry.py (its family's `evaluate` entry; an unknown
family gets that of a known family with the same endpoint and graph roles).

A card without a `training` block (`python -m training import`) names no dataset: eval reads the held-out
photos of `data/photos` (`python -m training prepare photos`; --data-root DIR overrides). upscale: as srgan,
at the card's native scale (2, 3, 4, 8; peers only where their files exist: x4); translate a2b + b2a: cycle
L1 both ways on the same photos (shorter side resized, centre square of a size the card allows), or on the
domains of a --data-root in the CycleGAN layout (testA/, testB/); one direction: output statistics vs the
inputs (colourfulness, change, spread). Such figures carry `measured` (what, on which data).
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from contract import Card
from contract.folder import ModelDirError, model_lock, verify_model_dir, write_card
from core import pipelines
from core.imaging import DecodedImage, to_channels
from core.loading import ServedModel, load_model
from core.runtime import CPU
from core.settings import RuntimeSettings

from modelops.metrics import colourfulness, frechet_distance, psnr_from_mse, y_scores
from .registry import FAMILIES, Family, get_family

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ANCHORS = REPO_ROOT.parent / "shared" / "anchors" / "sr"
ANCHORS = (("fsrcnn", "FSRCNN"), ("espcn", "ESPCN"), ("lapsrn", "LapSRN"))
PROVIDER = CPU
# The service on the CPU with no environment read: the reference fp32 graphs on onnxruntime (a backend or
# precision change is measured against it: variants.bf16 / int8), the card's tile and overlap, no batching.
SERVICE_SETTINGS = RuntimeSettings(device="cpu", backend="onnxruntime", precision="fp32", tile=0, tile_overlap=-1)
GENERATE_BATCH = 256
DEFAULT_PHOTOS = "data/photos"  # held-out photos for a model without a training config (`prepare photos`)
TRANSLATE_EDGE = 256  # the square an imported translate model is measured at (junyanz trains at 256)


class EvalError(RuntimeError):
    pass


# ------------------------------------------------------------------ the service's pipeline

def load_served(model_dir: str | Path) -> ServedModel:
    """The published folder as the service loads it (CPU provider, fp32, the card's tiling); EvalError if it cannot."""
    served = load_model(Path(model_dir), SERVICE_SETTINGS, [PROVIDER])
    if not served.ready:
        raise EvalError(f"the service cannot load {model_dir}: {served.reason}")
    return served


def super_resolve(served: ServedModel, lr: np.ndarray) -> np.ndarray:
    """uint8 H x W x C -> what /upscale answers at the model's native scale (uint8 H*s x W*s x C')."""
    return pipelines.upscale_image(served, DecodedImage(lr, None), served.image_spec.scale)[0]


def translate(served: ServedModel, role: str, pixels: np.ndarray) -> np.ndarray:
    """uint8 H x W x C -> what /translate answers for graph `role` (generator, a2b, b2a): uint8 H x W x C'."""
    return pipelines.translate_image(served, DecodedImage(pixels, None), role)[0]


def translate_batch(served: ServedModel, role: str, pixels: np.ndarray) -> np.ndarray:
    """uint8 N x C x H x W -> N x C' x H x W, one /translate request per image."""
    out = [translate(served, role, np.ascontiguousarray(p.transpose(1, 2, 0))) for p in pixels]
    return np.stack(out).transpose(0, 3, 1, 2) if out else pixels


def generate(served: ServedModel, z: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    """z [N, latent] (+ labels [N]) -> uint8 N x C x H x W, what /generate draws for those latents."""
    out = [pipelines.generate_images(served, z[i:i + GENERATE_BATCH], None if labels is None
                                     else labels[i:i + GENERATE_BATCH]) for i in range(0, len(z), GENERATE_BATCH)]
    return np.concatenate(out).transpose(0, 3, 1, 2)


def family_of(card: Card) -> Family:
    """The card's family in training/registry.py; for one it does not know (an imported model), a known
    family with the same endpoint and graph roles (upscale -> srgan, a2b + b2a -> cyclegan, ...)."""
    try:
        return get_family(card.family)
    except ValueError:
        pass
    for family in FAMILIES.values():
        if family.endpoint == card.endpoint and (not family.real_inputs or set(family.real_inputs) == set(card.files)):
            return family
    raise EvalError(f"no held-out evaluation for family {card.family!r} / endpoint {card.endpoint!r} "
                    f"with roles {sorted(card.files)}")


# ------------------------------------------------------------------ data

def data_config(card: Card, data_root: str | None) -> dict[str, Any]:
    """The dataset section eval reads: the card's training config's, or for a model without a training run
    (imported) the held-out photos (see imported_data)."""
    if card.training is None:
        return imported_data(card, data_root)
    data = dict((card.training.config or {}).get("data") or {})
    if not data:
        raise EvalError("the card's training.config has no data section: pass --data-root and a known model")
    if data_root:
        data["root"] = str(data_root)
    root = data.get("root")
    if not root or not Path(root).exists():
        raise EvalError(f"dataset root {root!r} does not exist (from the card's training config; "
                        f"use --data-root DIR)")
    return data


def reader(data: dict[str, Any], **override):
    from .data import DataConfig, build_dataset
    return build_dataset(DataConfig(**{**data, **override}), "test")


def tensor_pixels(t) -> np.ndarray:
    """A reader's C x H x W tensor in [-1, 1] back to its uint8 pixels, H x W x C."""
    return np.clip(np.rint((t.numpy() + 1.0) * 127.5), 0, 255).astype(np.uint8).transpose(1, 2, 0)


def domain_images(data: dict[str, Any], limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """uint8 N x C x H x W for domains A and B of the held-out split."""
    rd = reader(data)
    if data.get("kind") == "fashion_mnist_domains":
        a, b = rd.a.arrays()[0][:limit], rd.b.arrays()[0][:limit]
        return a[:, None], b[:, None]
    from .data import load_image, resize_shorter

    def load(paths) -> np.ndarray:
        out = []
        for p in paths[:limit]:
            im = resize_shorter(load_image(p, rd.mode), rd.load_size)
            if rd.crop_size:
                c = rd.crop_size
                x0, y0 = (im.width - c) // 2, (im.height - c) // 2
                im = im.crop((x0, y0, x0 + c, y0 + c))
            out.append(np.asarray(im))
        sizes = {o.shape for o in out}
        if len(sizes) > 1:
            raise EvalError(f"held-out images have different sizes {sorted(sizes)}; set data.crop_size")
        arr = np.stack([o if o.ndim == 3 else o[:, :, None] for o in out])
        return np.ascontiguousarray(arr.transpose(0, 3, 1, 2))

    return load(rd.paths_a), load(rd.paths_b)


def heldout_pairs(data: dict[str, Any], limit: int | None, crop: int,
                  scale: int) -> Iterator[tuple[Path, np.ndarray, np.ndarray]]:
    """(path, HR, LR) per held-out photo, uint8 H x W x 3: HR its centre `crop` (0: the whole photo) cut to a
    multiple of `scale`, LR = HR downscaled by PIL bicubic / scale."""
    from PIL import Image

    from .data import load_image

    for path in reader(data, hr_size=None).paths[:limit]:
        im = load_image(path, "RGB")
        w, h = im.size
        if crop:
            c = crop - crop % scale
            cw, ch = min(c, w - w % scale), min(c, h - h % scale)
            x0, y0 = (w - cw) // 2, (h - ch) // 2
            hr = im.crop((x0, y0, x0 + cw, y0 + ch))
        else:
            hr = im.crop((0, 0, w - w % scale, h - h % scale))
        lr = hr.resize((hr.width // scale, hr.height // scale), Image.BICUBIC)
        yield path, np.asarray(hr), np.asarray(lr)


def shown_path(path: str | Path) -> str:
    """A path as a card records it: never absolute (an absolute one becomes relative to the repository root)."""
    return os.path.relpath(path, REPO_ROOT) if Path(path).is_absolute() else str(path)


# ------------------------------------------------------------------ per family

@dataclass
class EvalJob:
    """What every evaluator reads: the loaded model, its dataset section and the CLI's options."""
    served: ServedModel
    data: dict[str, Any]
    limit: int | None = None
    crop: int = 512
    anchors_dir: Path | None = None
    samples_per_class: int = 100
    seed: int = 0
    classifier_cache: Path = Path("runs/classifier")
    classifier_steps: int | None = None
    log: Callable[[str], Any] = print

    @property
    def card(self) -> Card:
        return self.served.card

    def classifier(self):
        from .classifier import ClassifierConfig, ensure_classifier
        cfg = ClassifierConfig() if self.classifier_steps is None else ClassifierConfig(steps=self.classifier_steps)
        return ensure_classifier(self.data["root"], self.classifier_cache, cfg, self.log)


def eval_upscale(job: EvalJob) -> dict[str, Any]:
    from PIL import Image

    data = job.data
    if data.get("kind") != "hr_folder":
        raise EvalError(f"upscale eval reads an hr_folder dataset, the card's data kind is {data.get('kind')!r}")
    scale = job.served.image_spec.scale
    peers, anchors_note = anchor_models(job.anchors_dir, scale)
    sums: dict[str, list[float]] = {}

    def add(key: str, out: np.ndarray, hr: np.ndarray) -> None:
        p, s = y_scores(out, hr, scale)
        sums.setdefault(f"{key}psnr_y", []).append(p)
        sums.setdefault(f"{key}ssim_y", []).append(s)

    for path, hr, lr in heldout_pairs(data, job.limit, job.crop, scale):
        add("", super_resolve(job.served, lr), hr)
        add("bicubic_", np.asarray(Image.fromarray(lr).resize((hr.shape[1], hr.shape[0]), Image.BICUBIC)), hr)
        for key, model in peers.items():
            add(f"{key}_", model.upsample(np.ascontiguousarray(lr[:, :, ::-1]))[:, :, ::-1], hr)
        job.log(f"  {path.name}: HR {hr.shape[1]}x{hr.shape[0]}  model {sums['psnr_y'][-1]:.2f} dB / "
                f"bicubic {sums['bicubic_psnr_y'][-1]:.2f} dB")
    if not sums:
        raise EvalError("the held-out split has no images")
    mean = {k: float(np.mean(v)) for k, v in sums.items()}
    crop = job.crop
    result: dict[str, Any] = {k: mean[k] for k in ("psnr_y", "ssim_y", "bicubic_psnr_y", "bicubic_ssim_y")}
    result.update(images=len(sums["psnr_y"]), hr_crop=[crop - crop % scale] * 2 if crop else "full",
                  border=scale, y_channel="ITU-R BT.601 (MATLAB rgb2ycbcr)", degradation="PIL bicubic /%d" % scale)
    if peers:
        result["anchors"] = {key: {"psnr_y": mean[f"{key}_psnr_y"], "ssim_y": mean[f"{key}_ssim_y"]} for key in peers}
        result["anchors_source"] = shown_path(job.anchors_dir)
    if anchors_note:
        result["anchors_note"] = anchors_note
    return result


def anchor_models(anchors_dir: Path | None, scale: int) -> tuple[dict[str, Any], str | None]:
    """cv2.dnn_superres FSRCNN / ESPCN / LapSRN models from `anchors_dir`, and a note on what is missing."""
    shown = shown_path(anchors_dir) if anchors_dir is not None else None
    if anchors_dir is None or not anchors_dir.is_dir():
        return {}, f"anchors skipped: {shown} does not exist"
    files = {key: anchors_dir / f"{stem}_x{scale}.pb" for key, stem in ANCHORS}
    files = {k: p for k, p in files.items() if p.is_file()}
    if not files:
        return {}, f"anchors skipped: no *_x{scale}.pb files in {shown}"
    try:
        import cv2
        create = cv2.dnn_superres.DnnSuperResImpl_create
    except (ImportError, AttributeError):
        return {}, ("anchors skipped: cv2.dnn_superres is not importable "
                    "(pip install opencv-contrib-python-headless to compare with FSRCNN/ESPCN/LapSRN)")
    models, unreadable = {}, []
    for key, path in files.items():
        sr = create()
        try:
            sr.readModel(str(path))
        except cv2.error:  # e.g. an OpenCV whose dnn module no longer reads these TensorFlow graphs
            unreadable.append(key)
            continue
        sr.setModel(key, scale)
        models[key] = sr
    missing = [k for k, _ in ANCHORS if k not in files]
    notes = ([f"no file for {', '.join(missing)} in {shown}"] if missing else []) + (
        [f"cv2 {cv2.__version__} cannot read {', '.join(unreadable)} in {shown}"] if unreadable else [])
    return models, "; ".join(notes) or None


def eval_pix2pix(job: EvalJob) -> dict[str, Any]:
    data, kind = job.data, job.data.get("kind")
    if kind not in ("colorization", "aligned"):
        raise EvalError(f"pix2pix eval reads a colorization or aligned dataset, not {kind!r}")
    rd = reader(data)
    n_src = len(rd)
    per_image = min(8, max(1, math.ceil(32 / max(n_src, 1))))  # a few crops each when the split is small
    total = n_src * per_image if job.limit is None else min(job.limit, n_src * per_image)
    rows: dict[str, list[float]] = {}
    add = lambda key, value: append(rows, key, value)  # noqa: E731

    for j in range(total):
        i, k = j % n_src, j // n_src
        s = rd.sample(i, np.random.default_rng([job.seed, i, k]))
        a, b = tensor_pixels(s["A"]), tensor_pixels(s["B"])  # H x W x C uint8
        out = translate(job.served, "generator", a)
        base = np.repeat(a, 3, 2) if a.shape[2] == 1 and b.shape[2] == 3 else a
        for key, img in (("", out), ("input_", base)):
            diff = img.astype(np.float64) - b
            add(f"{key}l1", float(np.abs(diff).mean() / 255.0))
            add(f"{key}mse", float(np.mean(diff ** 2)))
            if img.shape[2] == 3:
                add(f"{key}colourfulness", colourfulness(img))
        if b.shape[2] == 3:
            add("target_colourfulness", colourfulness(b))
    if not total:
        raise EvalError("the held-out split has no images")
    mean = {k: float(np.mean(v)) for k, v in rows.items()}
    # PSNR from the mean MSE: a crop that is exactly right cannot dominate
    result = {"l1": mean["l1"], "psnr": psnr_from_mse(mean["mse"]),
              "input_l1": mean["input_l1"], "input_psnr": psnr_from_mse(mean["input_mse"])}
    for key in ("colourfulness", "target_colourfulness", "input_colourfulness"):
        if key in mean:
            result[key] = mean[key]
    result.update(images=min(n_src, total), crops=total, crop_size=data.get("crop_size"),
                  load_size=data.get("load_size"), baseline="input as output (grayscale replicated to RGB)")
    return result


def eval_cyclegan(job: EvalJob) -> dict[str, Any]:
    data, kind = job.data, job.data.get("kind")
    if kind not in ("fashion_mnist_domains", "unaligned"):
        raise EvalError(f"cyclegan eval reads fashion_mnist_domains or unaligned data, not {kind!r}")
    a, b = domain_images(data, job.limit)
    if not len(a) or not len(b):
        raise EvalError("the held-out split has no images in one of the domains")
    fake_b, fake_a = translate_batch(job.served, "a2b", a), translate_batch(job.served, "b2a", b)
    rec_a, rec_b = translate_batch(job.served, "b2a", fake_b), translate_batch(job.served, "a2b", fake_a)
    result: dict[str, Any] = {"cycle_l1_a": mean_l1(rec_a, a), "cycle_l1_b": mean_l1(rec_b, b),
                              "images_a": int(len(a)), "images_b": int(len(b))}
    if kind == "fashion_mnist_domains":
        from .data import FASHION_MNIST_CLASSES
        clf = job.classifier()
        ca, cb = int(data.get("class_a", 7)), int(data.get("class_b", 9))
        share = lambda px, c: float((clf.classify(px) == c).mean())  # noqa: E731
        result.update({
            "a2b_target_share": share(fake_b, cb), "b2a_target_share": share(fake_a, ca),
            "real_a_share": share(a, ca), "real_b_share": share(b, cb),
            "unchanged_a2b_share": share(a, cb), "unchanged_b2a_share": share(b, ca),
            "domains": {"a": FASHION_MNIST_CLASSES[ca], "b": FASHION_MNIST_CLASSES[cb]},
            "classifier": classifier_info(clf)})
    else:
        result["target_share_note"] = "no domain classifier for this dataset (only Fashion-MNIST has one)"
    return result


def classifier_info(clf) -> dict[str, Any]:
    info = dict(clf.info)
    if info.get("checkpoint"):
        info["checkpoint"] = shown_path(info["checkpoint"])
    return info


def eval_generate(job: EvalJob) -> dict[str, Any]:
    data, card = job.data, job.card
    if data.get("kind") != "fashion_mnist":
        raise EvalError(f"generate eval needs the Fashion-MNIST classifier; the data kind is {data.get('kind')!r}")
    clf = job.classifier()
    classes = card.classes or []
    wanted = data.get("classes") or list(range(len(classes)))
    rng = np.random.default_rng(job.seed)
    labels = np.repeat(np.asarray(wanted, np.int64), job.samples_per_class)
    z = rng.standard_normal((len(labels), int(card.latent_dim))).astype(np.float32)
    px = generate(job.served, z, labels if job.served.generate_spec.label_name else None)
    if px.shape[1] != 1:
        raise EvalError(f"the Fashion-MNIST classifier takes 1 channel, the generator makes {px.shape[1]}")
    logits, gen_feats = clf.predict(px)
    pred = logits.argmax(1)
    per_class = {classes[c] if c < len(classes) else str(c): float((pred[labels == c] == c).mean()) for c in wanted}

    from .data import DataConfig, build_dataset
    test = build_dataset(DataConfig(**data), "test")
    train = build_dataset(DataConfig(**data), "train")
    test_imgs = test.images[:job.limit]
    pick = np.random.default_rng([job.seed, 1]).choice(len(train), size=min(len(labels), len(train)), replace=False)
    test_logits, test_feats = clf.predict(test_imgs)
    _, train_feats = clf.predict(train.images[pick])
    test_pred, test_labels = test_logits.argmax(1), np.asarray(test.labels[:job.limit])
    # the bar for each class: the classifier's own accuracy on real held-out images of that class
    real_per_class = {name: float((test_pred[test_labels == c] == c).mean()) for c, name in enumerate(classes)
                      if c in wanted and (test_labels == c).any()}
    return {
        "class_match": float((pred == labels).mean()),
        "class_match_per_class": per_class,
        "classifier_real_per_class": real_per_class,
        "frechet_distance": frechet_distance(gen_feats, test_feats),
        "frechet_distance_real_train": frechet_distance(train_feats, test_feats),
        "samples": int(len(labels)), "samples_per_class": job.samples_per_class,
        "heldout_images": int(len(test_imgs)),
        "features": "classifier penultimate layer (128-d)",
        "classifier": classifier_info(clf),
    }


# ------------------------------------------------------------------ models without a training run (imported)

def imported_data(card: Card, data_root: str | None) -> dict[str, Any]:
    """Held-out photos for a card that names no dataset: DEFAULT_PHOTOS (or --data-root) as an hr_folder at the
    card's native scale; for a two-direction model, a root in the CycleGAN layout (testA/, testB/) as domains."""
    root = Path(data_root or DEFAULT_PHOTOS)
    if not root.is_dir():
        raise EvalError(f"dataset root {str(root)!r} does not exist ({card.name} has no training config, so it is "
                        f"measured on held-out photos: run `python -m training prepare photos` or use --data-root DIR)")
    if card.directions and (root / "testA").is_dir() and (root / "testB").is_dir():
        io = card.role_io("a2b").input
        edge = translate_edge(card, "a2b")
        return {"kind": "unaligned", "root": str(root), "load_size": edge, "crop_size": edge, "channels": io.channels}
    return {"kind": "hr_folder", "root": str(root), "scale": card.scale, "hr_size": None}


def evaluator_for(card: Card, data: dict[str, Any]) -> Callable[[EvalJob], dict[str, Any]]:
    """The family's evaluator; for a card without a training run, the one its endpoint and roles allow."""
    if card.training is not None:
        return family_of(card).evaluator()
    if card.endpoint == "upscale":
        return eval_upscale
    if card.endpoint == "translate":
        return eval_cyclegan if card.directions and data.get("kind") == "unaligned" else eval_translate_photos
    raise EvalError(f"no held-out evaluation without a training config for a {card.endpoint} model")


def measured_note(card: Card, data: dict[str, Any]) -> str | None:
    """What an imported model's figures are, on which data (None for a model with its own training data)."""
    if card.training is not None:
        return None
    root, s, edge = shown_path(data["root"]), card.scale, translate_edge(card, "a2b" if card.directions else "generator")
    if card.endpoint == "upscale":
        what = f"held-out photos of {root}; Y-PSNR/SSIM at the native x{s} (LR = PIL bicubic /{s} of each HR) vs bicubic"
    elif data["kind"] == "unaligned":
        what = f"the domain images of {root} (testA, testB); cycle L1 both ways"
    else:
        what = f"held-out photos of {root}, shorter side resized to {edge}, centre {edge}x{edge} crop; " + (
            "cycle L1 both ways on the same photos (no domain split)" if card.directions
            else "output statistics vs the inputs (no paired targets)")
    return f"no training config (imported): {what}"


def translate_edge(card: Card, role: str) -> int:
    """The square eval feeds a translate graph: TRANSLATE_EDGE (or min_size) rounded up to the card's multiple."""
    io = card.role_io(role).input
    m = max(1, io.multiple_of)
    return -(-max(TRANSLATE_EDGE, io.min_size) // m) * m


def photo_inputs(job: EvalJob, role: str) -> list[np.ndarray]:
    """The held-out photos as uint8 squares for graph `role` (its channels): shorter side resized, centre crop."""
    from .data import load_image, resize_shorter

    edge, channels = translate_edge(job.card, role), job.card.role_io(role).input.channels
    out = []
    for path in reader(job.data, hr_size=None).paths[:job.limit]:
        im = resize_shorter(load_image(path, "RGB"), edge)
        x0, y0 = (im.width - edge) // 2, (im.height - edge) // 2
        out.append(to_channels(np.asarray(im.crop((x0, y0, x0 + edge, y0 + edge))), channels))
    if not out:
        raise EvalError("the held-out split has no images")
    return out


def mean_l1(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.abs(x.astype(np.float64) - y).mean() / 255.0)


def append(rows: dict[str, list[float]], key: str, value: float) -> None:
    rows.setdefault(key, []).append(value)


def image_stats(rows: dict[str, list[float]], key: str, img: np.ndarray) -> None:
    """Append `key`colourfulness (RGB only) and `key`std (pixel spread, 0..1) of one image to rows."""
    if img.shape[2] == 3:
        append(rows, f"{key}colourfulness", colourfulness(img))
    append(rows, f"{key}std", float(img.std() / 255.0))


def eval_translate_photos(job: EvalJob) -> dict[str, Any]:
    """No targets. One direction: output statistics vs the inputs (colourfulness, change, spread);
    a2b + b2a: besides, the cycle L1 both ways (b2a(a2b(x)), a2b(b2a(x))) on the same photos."""
    rows: dict[str, list[float]] = {}
    roles = ("a2b", "b2a") if job.card.directions else ("generator",)
    inputs = {role: photo_inputs(job, role) for role in roles}
    for i, first in enumerate(inputs[roles[0]]):
        image_stats(rows, "input_", first)
        for role in roles:
            x = inputs[role][i]
            out, key = translate(job.served, role, x), "" if role == "generator" else f"{role}_"
            image_stats(rows, key, out)
            if out.shape[2] == x.shape[2]:
                append(rows, f"{key}change_l1", mean_l1(out, x))
            if role != "generator":  # a2b starts cycle a, b2a cycle b
                back = translate(job.served, "b2a" if role == "a2b" else "a2b", out)
                append(rows, f"cycle_l1_{role[0]}", mean_l1(back, x))
    result: dict[str, Any] = {k: float(np.mean(v)) for k, v in sorted(rows.items())}
    n, edge = len(inputs[roles[0]]), translate_edge(job.card, roles[0])
    result.update(size=[edge, edge], **({"images_a": n, "images_b": n, "target_share_note": "no domain classifier "
                 "and no domain split (the same photos both ways)"} if job.card.directions else {"images": n}))
    return result


# ------------------------------------------------------------------ driver

@dataclass(frozen=True, kw_only=True)
class EvalOptions:
    """`python -m training eval NAME ...` (its --help says what each does)."""
    name: str  # the model's folder under `models`
    models: str | Path = "models"
    data_root: str | None = None  # dataset root (default: the one in the card's training config)
    limit: int | None = None  # at most this many held-out images (per domain for cyclegan)
    crop: int = 512  # upscale: centre crop of each held-out photo, in HR pixels (0: the whole photo, tiled)
    samples_per_class: int = 100  # generate
    classifier_cache: str | Path = "runs/classifier"  # where the Fashion-MNIST classifier is cached
    classifier_steps: int | None = None  # its training steps (default: ClassifierConfig's)
    anchors_dir: str | Path | None = DEFAULT_ANCHORS  # FSRCNN/ESPCN/LapSRN .pb files (None: no peers)
    data_overrides: Sequence[tuple[str, Any]] = ()  # (key, value) of the dataset config to change, e.g. crop_size
    seed: int = 0
    dry_run: bool = False  # return the figures, leave the card as it is


def evaluate_model(opts: EvalOptions, log=print) -> dict[str, Any]:
    """Evaluate MODELS/NAME on its held-out split; returns (and unless `dry_run` writes) `metrics.heldout`.
    data_overrides: dataset config keys to change (e.g. crop_size, to measure the way an older card was)."""
    model_dir = Path(opts.models) / opts.name
    limit, seed, anchors_dir = opts.limit, opts.seed, opts.anchors_dir
    data_overrides = dict(opts.data_overrides)
    try:
        verify_model_dir(model_dir)
    except ModelDirError as e:
        raise EvalError(str(e)) from e
    if limit is not None and limit < 1:
        raise EvalError(f"--limit must be >= 1, got {limit}")
    served = load_served(model_dir)
    card = served.card
    data = {**data_config(card, opts.data_root), **data_overrides}
    evaluator = evaluator_for(card, data)
    log(f"evaluating {model_dir.name} ({card.family}, version {card.version}) on {data.get('root')} (test split)")
    job = EvalJob(served, data, limit=limit, crop=opts.crop, anchors_dir=Path(anchors_dir) if anchors_dir else None,
                  samples_per_class=opts.samples_per_class, seed=seed, classifier_cache=Path(opts.classifier_cache),
                  classifier_steps=opts.classifier_steps, log=log)
    result = evaluator(job)
    note = measured_note(card, data)
    if note:
        result["measured"] = note
    if data_overrides:
        result["data_overrides"] = data_overrides
    result.update(split="test", data_root=shown_path(data.get("root")),
                  runtime=f"onnxruntime {served.provider} {served.precision} (the service's pipeline)",
                  model_version=card.version, seed=seed,
                  evaluated_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    if not opts.dry_run:
        write_heldout(model_dir, card.version, result)
    return result


def write_heldout(model_dir: Path, version: str, result: dict[str, Any]) -> None:
    """Put `result` into the card's metrics.heldout, under the model's lock, if the folder is still `version`."""
    with model_lock(model_dir.parent, model_dir.name, wait=True):
        card = verify_model_dir(model_dir)
        if card.version != version:
            raise EvalError(f"{model_dir} changed during evaluation (version {version} -> {card.version}); "
                            f"run eval again")
        card.metrics.heldout = result
        write_card(model_dir, card)
