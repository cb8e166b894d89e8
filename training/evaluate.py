"""Held-out evaluation of a published model: its ONNX graph on onnxruntime, never torch.

    python -m training eval NAME [--models models] [--data-root DIR] [--limit N]

Reads OUT/NAME/card.json (the training config in it names the dataset; override
the root with --data-root), runs the model on the held-out (test) split and
writes the figures into the card's `metrics.heldout` (card.json is rewritten
atomically; its sha256s cover the ONNX files only). Every figure is computed
on 8-bit images, i.e. on what the service would return. Definitions are in
docs/model-card.md ("Held-out metrics").

- upscale (srgan): PSNR / SSIM on the Y channel (ITU-R BT.601, MATLAB
  rgb2ycbcr), border of `scale` px cropped, vs PIL bicubic; FSRCNN / ESPCN /
  LapSRN peers via cv2.dnn_superres when opencv-contrib is installed.
- translate, pix2pix: L1 and PSNR vs ground truth next to the input-as-output
  baseline, and colourfulness (Hasler & Suesstrunk 2003).
- translate, cyclegan: cycle reconstruction L1 both ways; share of outputs the
  project's Fashion-MNIST classifier puts in the target domain.
- generate (dcgan): share of samples classified as the requested class; a
  Frechet distance on the classifier's penultimate features vs the held-out
  split, next to the same distance for real training images (the floor).
"""
from __future__ import annotations

import argparse
import math
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .export import ExportError, ModelDirError, model_lock, verify_model_dir, write_card

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ANCHORS = REPO_ROOT.parent / "shared" / "anchors" / "sr"
ANCHORS = (("fsrcnn", "FSRCNN"), ("espcn", "ESPCN"), ("lapsrn", "LapSRN"))
PROVIDER = "CPUExecutionProvider"


class EvalError(RuntimeError):
    pass


# ------------------------------------------------------------------ pixels <-> graph values

def to_graph(pixels: np.ndarray, value_range) -> np.ndarray:
    """uint8 N x C x H x W -> float32 graph input: lo + p / 255 * (hi - lo)."""
    lo, hi = value_range
    return (lo + pixels.astype(np.float32) / 255.0 * (hi - lo)).astype(np.float32)


def to_pixels(values: np.ndarray, value_range) -> np.ndarray:
    """Graph output -> uint8: round((y - lo) / (hi - lo) * 255), clipped (the service's mapping)."""
    lo, hi = value_range
    return np.clip(np.rint((values - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)


def hwc_to_nchw(images: list[np.ndarray]) -> np.ndarray:
    arr = np.stack([im if im.ndim == 3 else im[:, :, None] for im in images])
    return np.ascontiguousarray(arr.transpose(0, 3, 1, 2))


def tensor_pixels(t) -> np.ndarray:
    """A reader's C x H x W tensor in [-1, 1] back to its uint8 pixels."""
    return np.clip(np.rint((t.numpy() + 1.0) * 127.5), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------ running image graphs

def session(path: Path):
    import onnxruntime as ort
    return ort.InferenceSession(str(path), providers=[PROVIDER])


def run_padded(sess, x: np.ndarray, multiple_of: int, min_size: int, scale: int) -> np.ndarray:
    """Reflect-pad H and W up to the graph's multiple / minimum, run, crop the output back."""
    n, c, h, w = x.shape
    ph = max(min_size, -(-h // multiple_of) * multiple_of) - h
    pw = max(min_size, -(-w // multiple_of) * multiple_of) - w
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "edge"
        x = np.pad(x, ((0, 0), (0, 0), (0, ph), (0, pw)), mode=mode)
    y = sess.run(["output"], {"image": x})[0]
    return y[:, :, :h * scale, :w * scale]


def _ramp(length: int, taper: int) -> np.ndarray:
    i = np.arange(length, dtype=np.float64)
    return np.minimum(1.0, np.minimum(i + 1, length - i) / (taper + 1))


def run_tiled(sess, x: np.ndarray, card: dict[str, Any]) -> np.ndarray:
    """N x C x h x w through the graph in overlapping tiles (card `tiling`), feather-blended."""
    spec_in, scale = card["input"], int(card["output"].get("scale", 1))
    m, lo = int(spec_in.get("multiple_of") or 1), int(spec_in.get("min_size") or 1)
    tiling = card.get("tiling") or {}
    tile = max(int(tiling.get("tile", 256)), m, lo)
    overlap = min(int(tiling.get("overlap", 16)), tile // 4)
    n, c, h, w = x.shape
    if h <= tile and w <= tile:
        return run_padded(sess, x, m, lo, scale)

    def starts(size: int) -> list[int]:
        if size <= tile:
            return [0]
        step = tile - 2 * overlap
        out = list(range(0, size - tile, step))
        return out + [size - tile]

    out_c = int(card["output"]["channels"])
    acc = np.zeros((n, out_c, h * scale, w * scale), np.float64)
    weight = np.zeros((h * scale, w * scale), np.float64)
    for y0 in starts(h):
        for x0 in starts(w):
            th, tw = min(tile, h - y0), min(tile, w - x0)
            y = run_padded(sess, np.ascontiguousarray(x[:, :, y0:y0 + th, x0:x0 + tw]), m, lo, scale)
            wt = np.outer(_ramp(th * scale, overlap * scale), _ramp(tw * scale, overlap * scale))
            acc[:, :, y0 * scale:(y0 + th) * scale, x0 * scale:(x0 + tw) * scale] += y * wt
            weight[y0 * scale:(y0 + th) * scale, x0 * scale:(x0 + tw) * scale] += wt
    return (acc / weight).astype(np.float32)


def run_batches(sess, x: np.ndarray, card: dict[str, Any], batch: int = 64) -> np.ndarray:
    spec_in = card["input"]
    m, lo = int(spec_in.get("multiple_of") or 1), int(spec_in.get("min_size") or 1)
    scale = int(card["output"].get("scale", 1))
    return np.concatenate([run_padded(sess, x[i:i + batch], m, lo, scale) for i in range(0, len(x), batch)])


# ------------------------------------------------------------------ image quality

def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8 -> Y in [16, 235] (ITU-R BT.601, as MATLAB rgb2ycbcr), float64."""
    x = rgb.astype(np.float64) / 255.0
    return 16.0 + 65.481 * x[..., 0] + 128.553 * x[..., 1] + 24.966 * x[..., 2]


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 100.0 if mse <= 1e-10 else 10.0 * math.log10(data_range ** 2 / mse)


def _gauss(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    k = np.exp(-((np.arange(size) - size // 2) ** 2) / (2 * sigma ** 2))
    return k / k.sum()


def _filter_valid(img: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation (MATLAB filter2(..., 'valid'))."""
    n = len(k)
    h, w = img.shape
    rows = sum(k[i] * img[i:h - n + 1 + i] for i in range(n))
    return sum(k[i] * rows[:, i:w - n + 1 + i] for i in range(n))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """SSIM (Wang et al. 2004): 11x11 Gaussian window, sigma 1.5, K = (0.01, 0.03), valid region."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    k = _gauss()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = _filter_valid(a, k), _filter_valid(b, k)
    saa = _filter_valid(a * a, k) - mu_a ** 2
    sbb = _filter_valid(b * b, k) - mu_b ** 2
    sab = _filter_valid(a * b, k) - mu_a * mu_b
    m = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (saa + sbb + c2))
    return float(m.mean())


def y_scores(out: np.ndarray, hr: np.ndarray, border: int) -> tuple[float, float]:
    ya, yb = rgb_to_y(out), rgb_to_y(hr)
    if border:
        ya, yb = ya[border:-border, border:-border], yb[border:-border, border:-border]
    return psnr(ya, yb), ssim(ya, yb)


def colourfulness(rgb: np.ndarray) -> float:
    """Hasler & Suesstrunk (2003) M: sigma_rgyb + 0.3 * mu_rgyb, on 0..255 RGB."""
    x = rgb.astype(np.float64)
    rg = x[..., 0] - x[..., 1]
    yb = 0.5 * (x[..., 0] + x[..., 1]) - x[..., 2]
    return float(math.hypot(rg.std(), yb.std()) + 0.3 * math.hypot(rg.mean(), yb.mean()))


def frechet_distance(f1: np.ndarray, f2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2) of Gaussians fitted to two feature sets."""
    f1, f2 = f1.astype(np.float64), f2.astype(np.float64)
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.atleast_2d(np.cov(f1, rowvar=False)), np.atleast_2d(np.cov(f2, rowvar=False))
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # S1^1/2
    m = r1 @ s2 @ r1  # Tr((S1 S2)^1/2) = Tr((S1^1/2 S2 S1^1/2)^1/2), a symmetric PSD matrix
    tr = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr)


# ------------------------------------------------------------------ data

def data_config(card: dict[str, Any], data_root: str | None) -> dict[str, Any]:
    config = (card.get("training") or {}).get("config") or {}
    data = dict(config.get("data") or {})
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


# ------------------------------------------------------------------ per endpoint

def eval_upscale(card, sessions, data, limit, crop: int, anchors_dir: Path | None, log) -> dict[str, Any]:
    from PIL import Image

    from .data import load_image

    if data.get("kind") != "hr_folder":
        raise EvalError(f"upscale eval reads an hr_folder dataset, the card's data kind is {data.get('kind')!r}")
    scale = int(card["output"]["scale"])
    paths = reader(data, hr_size=None).paths[:limit]
    sess = sessions["generator"]
    peers, anchors_note = _anchor_models(anchors_dir, scale)
    sums: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        sums.setdefault(key, []).append(value)

    for path in paths:
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
        hr_px, lr_px = np.asarray(hr), np.asarray(lr)
        x = to_graph(hwc_to_nchw([lr_px]), card["input"]["range"])
        sr = to_pixels(run_tiled(sess, x, card), card["output"]["range"])[0].transpose(1, 2, 0)
        bicubic = np.asarray(lr.resize(hr.size, Image.BICUBIC))
        p, s = y_scores(sr, hr_px, scale)
        add("psnr_y", p)
        add("ssim_y", s)
        p, s = y_scores(bicubic, hr_px, scale)
        add("bicubic_psnr_y", p)
        add("bicubic_ssim_y", s)
        for key, model in peers.items():
            out = model.upsample(np.ascontiguousarray(lr_px[:, :, ::-1]))[:, :, ::-1]
            p, s = y_scores(out, hr_px, scale)
            add(f"{key}_psnr_y", p)
            add(f"{key}_ssim_y", s)
        log(f"  {path.name}: HR {hr.width}x{hr.height}  model {sums['psnr_y'][-1]:.2f} dB / "
            f"bicubic {sums['bicubic_psnr_y'][-1]:.2f} dB")
    if not paths:
        raise EvalError("the held-out split has no images")
    mean = {k: float(np.mean(v)) for k, v in sums.items()}
    result: dict[str, Any] = {k: mean[k] for k in ("psnr_y", "ssim_y", "bicubic_psnr_y", "bicubic_ssim_y")}
    result.update(images=len(paths), hr_crop=[crop - crop % scale] * 2 if crop else "full",
                  border=scale, y_channel="ITU-R BT.601 (MATLAB rgb2ycbcr)", degradation="PIL bicubic /%d" % scale)
    if peers:
        result["anchors"] = {key: {"psnr_y": mean[f"{key}_psnr_y"], "ssim_y": mean[f"{key}_ssim_y"]} for key in peers}
        result["anchors_source"] = str(anchors_dir)
    if anchors_note:
        result["anchors_note"] = anchors_note
    return result


def _anchor_models(anchors_dir: Path | None, scale: int) -> tuple[dict[str, Any], str | None]:
    if anchors_dir is None or not anchors_dir.is_dir():
        return {}, f"anchors skipped: {anchors_dir} does not exist"
    files = {key: anchors_dir / f"{stem}_x{scale}.pb" for key, stem in ANCHORS}
    files = {k: p for k, p in files.items() if p.is_file()}
    if not files:
        return {}, f"anchors skipped: no *_x{scale}.pb files in {anchors_dir}"
    try:
        import cv2
        create = cv2.dnn_superres.DnnSuperResImpl_create
    except (ImportError, AttributeError):
        return {}, ("anchors skipped: cv2.dnn_superres is not importable "
                    "(pip install opencv-contrib-python-headless to compare with FSRCNN/ESPCN/LapSRN)")
    models, missing = {}, []
    for key, path in files.items():
        sr = create()
        sr.readModel(str(path))
        sr.setModel(key, scale)
        models[key] = sr
    missing = [k for k, _ in ANCHORS if k not in files]
    return models, (f"no file for {', '.join(missing)} in {anchors_dir}" if missing else None)


def eval_pix2pix(card, sessions, data, limit, seed: int, log) -> dict[str, Any]:
    kind = data.get("kind")
    if kind not in ("colorization", "aligned"):
        raise EvalError(f"pix2pix eval reads a colorization or aligned dataset, not {kind!r}")
    rd = reader(data)
    n_src = len(rd)
    per_image = min(8, max(1, math.ceil(32 / max(n_src, 1))))  # a few crops each when the split is small
    total = n_src * per_image if limit is None else min(limit, n_src * per_image)
    sess = sessions["generator"]
    rows: dict[str, list[float]] = {}
    for j in range(total):
        i, k = j % n_src, j // n_src
        s = rd.sample(i, np.random.default_rng([seed, i, k]))
        a, b = tensor_pixels(s["A"]), tensor_pixels(s["B"])  # C x H x W uint8
        y = run_batches(sess, to_graph(a[None], card["input"]["range"]), card)
        out = to_pixels(y, card["output"]["range"])[0]
        base = np.repeat(a, 3, 0) if a.shape[0] == 1 and b.shape[0] == 3 else a
        hwc = lambda t: t.transpose(1, 2, 0)  # noqa: E731
        for key, img in (("", out), ("input_", base)):
            rows.setdefault(f"{key}l1", []).append(float(np.abs(img.astype(np.float64) - b).mean() / 255.0))
            rows.setdefault(f"{key}mse", []).append(float(np.mean((img.astype(np.float64) - b) ** 2)))
            if img.shape[0] == 3:
                rows.setdefault(f"{key}colourfulness", []).append(colourfulness(hwc(img)))
        if b.shape[0] == 3:
            rows.setdefault("target_colourfulness", []).append(colourfulness(hwc(b)))
    if not total:
        raise EvalError("the held-out split has no images")
    mean = {k: float(np.mean(v)) for k, v in rows.items()}

    def pooled_psnr(mse: float) -> float:  # from the mean MSE: a crop that is exactly right cannot dominate
        return 100.0 if mse <= 1e-10 else 10.0 * math.log10(255.0 ** 2 / mse)

    result = {"l1": mean["l1"], "psnr": pooled_psnr(mean["mse"]),
              "input_l1": mean["input_l1"], "input_psnr": pooled_psnr(mean["input_mse"])}
    for key in ("colourfulness", "target_colourfulness", "input_colourfulness"):
        if key in mean:
            result[key] = mean[key]
    result.update(images=min(n_src, total), crops=total, crop_size=data.get("crop_size"),
                  load_size=data.get("load_size"), baseline="input as output (grayscale replicated to RGB)")
    return result


def _classifier(data: dict[str, Any], cache: Path, steps: int | None, log):
    from .classifier import ClassifierConfig, ensure_classifier
    cfg = ClassifierConfig() if steps is None else ClassifierConfig(steps=steps)
    return ensure_classifier(data["root"], cache, cfg, log)


def _domain_images(data: dict[str, Any], limit: int | None) -> tuple[np.ndarray, np.ndarray]:
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
        return hwc_to_nchw(out)

    return load(rd.paths_a), load(rd.paths_b)


def eval_cyclegan(card, sessions, data, limit, classifier_cache: Path, classifier_steps, log) -> dict[str, Any]:
    kind = data.get("kind")
    if kind not in ("fashion_mnist_domains", "unaligned"):
        raise EvalError(f"cyclegan eval reads fashion_mnist_domains or unaligned data, not {kind!r}")
    a, b = _domain_images(data, limit)
    if not len(a) or not len(b):
        raise EvalError("the held-out split has no images in one of the domains")

    def translate(role: str, px: np.ndarray) -> np.ndarray:
        y = run_batches(sessions[role], to_graph(px, card["input"]["range"]), card)
        return to_pixels(y, card["output"]["range"])

    fake_b, fake_a = translate("a2b", a), translate("b2a", b)
    rec_a, rec_b = translate("b2a", fake_b), translate("a2b", fake_a)
    l1 = lambda x, y: float(np.abs(x.astype(np.float64) - y).mean() / 255.0)  # noqa: E731
    result: dict[str, Any] = {"cycle_l1_a": l1(rec_a, a), "cycle_l1_b": l1(rec_b, b),
                              "images_a": int(len(a)), "images_b": int(len(b))}
    if kind == "fashion_mnist_domains":
        from .data import FASHION_MNIST_CLASSES
        clf = _classifier(data, classifier_cache, classifier_steps, log)
        ca, cb = int(data.get("class_a", 7)), int(data.get("class_b", 9))
        share = lambda px, c: float((clf.classify(px) == c).mean())  # noqa: E731
        result.update({
            "a2b_target_share": share(fake_b, cb), "b2a_target_share": share(fake_a, ca),
            "real_a_share": share(a, ca), "real_b_share": share(b, cb),
            "unchanged_a2b_share": share(a, cb), "unchanged_b2a_share": share(b, ca),
            "domains": {"a": FASHION_MNIST_CLASSES[ca], "b": FASHION_MNIST_CLASSES[cb]},
            "classifier": clf.info})
    else:
        result["target_share_note"] = "no domain classifier for this dataset (only Fashion-MNIST has one)"
    return result


def eval_generate(card, sessions, data, limit, samples_per_class: int, seed: int, classifier_cache: Path,
                  classifier_steps, log) -> dict[str, Any]:
    if data.get("kind") != "fashion_mnist":
        raise EvalError(f"generate eval needs the Fashion-MNIST classifier; the data kind is {data.get('kind')!r}")
    clf = _classifier(data, classifier_cache, classifier_steps, log)
    classes = card.get("classes") or []
    wanted = data.get("classes") or list(range(len(classes)))
    rng = np.random.default_rng(seed)
    latent = int(card["latent_dim"])
    labels = np.repeat(np.asarray(wanted, np.int64), samples_per_class)
    z = rng.standard_normal((len(labels), latent)).astype(np.float32)
    sess = sessions["generator"]
    out = np.concatenate([sess.run(["output"], {"z": z[i:i + 256], "label": labels[i:i + 256]})[0]
                          for i in range(0, len(labels), 256)])
    px = to_pixels(out, card["output"]["range"])
    if px.shape[1] != 1:
        raise EvalError(f"the Fashion-MNIST classifier takes 1 channel, the generator makes {px.shape[1]}")
    logits, gen_feats = clf.predict(px)
    pred = logits.argmax(1)
    per_class = {classes[c] if c < len(classes) else str(c): float((pred[labels == c] == c).mean()) for c in wanted}

    from .data import DataConfig, build_dataset
    test = build_dataset(DataConfig(**data), "test")
    train = build_dataset(DataConfig(**data), "train")
    test_imgs = test.images[:limit]
    pick = np.random.default_rng([seed, 1]).choice(len(train), size=min(len(labels), len(train)), replace=False)
    _, test_feats = clf.predict(test_imgs)
    _, train_feats = clf.predict(train.images[pick])
    return {
        "class_match": float((pred == labels).mean()),
        "class_match_per_class": per_class,
        "frechet_distance": frechet_distance(gen_feats, test_feats),
        "frechet_distance_real_train": frechet_distance(train_feats, test_feats),
        "samples": int(len(labels)), "samples_per_class": samples_per_class, "heldout_images": int(len(test_imgs)),
        "features": "classifier penultimate layer (128-d)",
        "classifier": clf.info,
    }


# ------------------------------------------------------------------ driver

def evaluate_model(model_dir: str | Path, data_root: str | None = None, limit: int | None = None,
                   classifier_cache: str | Path = "runs/classifier", classifier_steps: int | None = None,
                   crop: int = 512, samples_per_class: int = 100, anchors_dir: str | Path | None = DEFAULT_ANCHORS,
                   seed: int = 0, write: bool = True, log=print) -> dict[str, Any]:
    """Evaluate OUT/NAME on its held-out split; returns (and by default writes) `metrics.heldout`."""
    model_dir = Path(model_dir)
    try:
        card = verify_model_dir(model_dir)
    except ModelDirError as e:
        raise EvalError(str(e)) from e
    if limit is not None and limit < 1:
        raise EvalError(f"--limit must be >= 1, got {limit}")
    data = data_config(card, data_root)
    sessions = {role: session(model_dir / entry["path"]) for role, entry in card["files"].items()}
    family, endpoint = card.get("family"), card.get("endpoint")
    log(f"evaluating {model_dir.name} ({family}, version {card.get('version')}) on {data.get('root')} (test split)")
    cache = Path(classifier_cache)
    if endpoint == "upscale":
        result = eval_upscale(card, sessions, data, limit, crop, Path(anchors_dir) if anchors_dir else None, log)
    elif family == "pix2pix":
        result = eval_pix2pix(card, sessions, data, limit, seed, log)
    elif family == "cyclegan":
        result = eval_cyclegan(card, sessions, data, limit, cache, classifier_steps, log)
    elif endpoint == "generate":
        result = eval_generate(card, sessions, data, limit, samples_per_class, seed, cache, classifier_steps, log)
    else:
        raise EvalError(f"no held-out evaluation for family {family!r} / endpoint {endpoint!r}")
    result.update(split="test", data_root=str(data.get("root")), runtime=f"onnxruntime {PROVIDER}",
                  model_version=card.get("version"), seed=seed,
                  evaluated_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    if write:
        _write_heldout(model_dir, card.get("version"), result)
    return result


def _write_heldout(model_dir: Path, version: str | None, result: dict[str, Any]) -> None:
    with model_lock(model_dir.parent, model_dir.name, wait=True):
        card = verify_model_dir(model_dir)
        if card.get("version") != version:
            raise EvalError(f"{model_dir} changed during evaluation (version {version} -> {card.get('version')}); "
                            f"run eval again")
        card.setdefault("metrics", {})["heldout"] = result
        write_card(model_dir, card)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training eval",
                                description="Measure a published model on its held-out split through onnxruntime "
                                            "and write the figures into its card (metrics.heldout).")
    p.add_argument("name", help="model name (folder under --models)")
    p.add_argument("--models", default="models", help="the models folder (default: models)")
    p.add_argument("--data-root", help="dataset root (default: the one in the card's training config)")
    p.add_argument("--limit", type=int, help="use at most N held-out images (per domain for cyclegan)")
    p.add_argument("--crop", type=int, default=512,
                   help="upscale: centre crop of each held-out photo, in HR pixels (0 = whole photo, tiled)")
    p.add_argument("--samples-per-class", type=int, default=100, help="generate: samples per class (default 100)")
    p.add_argument("--classifier-cache", default="runs/classifier",
                   help="where the Fashion-MNIST classifier is cached (default: runs/classifier)")
    p.add_argument("--classifier-steps", type=int, help="classifier training steps (default: 1000)")
    p.add_argument("--anchors", default=str(DEFAULT_ANCHORS), help="folder of FSRCNN/ESPCN/LapSRN .pb files")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dry-run", action="store_true", help="print the figures, leave the card as it is")
    return p


def main(argv: list[str] | None = None) -> int:
    import json

    args = build_parser().parse_args(argv)
    try:
        result = evaluate_model(Path(args.models) / args.name, args.data_root, args.limit, args.classifier_cache,
                                args.classifier_steps, args.crop, args.samples_per_class, args.anchors,
                                args.seed, write=not args.dry_run)
    except (EvalError, ExportError, ModelDirError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    if not args.dry_run:
        print(f"wrote metrics.heldout into {Path(args.models) / args.name / 'card.json'}")
    return 0
