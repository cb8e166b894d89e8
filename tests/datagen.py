"""Small generated datasets in the standard on-disk layouts, for tests.

Images are structured (gradients, discs, stripes), not noise, so that the
readers' crops and the networks see something image-like.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
from PIL import Image


def synthetic_photo(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A colour image with a smooth gradient, a disc and stripes."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    c = rng.uniform(0, 1, (3, 3))
    img = np.stack([c[i, 0] * x / w + c[i, 1] * y / h + c[i, 2] * 0.3 for i in range(3)], -1)
    cx, cy, r = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h, rng.uniform(0.1, 0.3) * min(w, h)
    img[(x - cx) ** 2 + (y - cy) ** 2 < r**2] = rng.uniform(0, 1, 3)
    img += 0.15 * np.sin(x * rng.uniform(0.2, 0.8))[..., None]
    return Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> Path:
    """An idx file as Fashion-MNIST ships them: magic 2051 (images, 3 dims) or 2049 (labels)."""
    magic = 2051 if array.ndim == 3 else 2049
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def make_fashion(root: Path, n_train: int = 64, n_test: int = 32, seed: int = 0) -> Path:
    """Fashion-MNIST-shaped idx files; each class is a distinct bar pattern."""
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = np.zeros((n, 28, 28), np.uint8)
        for i, c in enumerate(labels):
            images[i, 4 + 2 * c: 8 + 2 * c, 4:24] = 200 + rng.integers(0, 55)
            images[i] += rng.integers(0, 20, (28, 28), dtype=np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", labels)
    return root


def make_photo_folder(root: Path, n: int = 6, size: tuple[int, int] = (80, 64), seed: int = 0,
                      splits: tuple[str, ...] = ("train", "test")) -> Path:
    rng = np.random.default_rng(seed)
    for split in splits:
        (root / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            synthetic_photo(rng, *size).save(root / split / f"img{i:03d}.png")
    return root


def make_aligned_folder(root: Path, n: int = 6, size: int = 64, seed: int = 0) -> Path:
    """pix2pix layout: each file is A|B side by side (A = grayscale of B here)."""
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        (root / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            b = synthetic_photo(rng, size, size)
            a = b.convert("L").convert("RGB")
            ab = Image.new("RGB", (2 * size, size))
            ab.paste(a, (0, 0))
            ab.paste(b, (size, 0))
            ab.save(root / split / f"{i:03d}.jpg", quality=95)
    return root


def make_unaligned_folder(root: Path, n: int = 6, size: int = 32, seed: int = 0) -> Path:
    """CycleGAN layout: trainA/ trainB/ testA/ testB/ (A: photos, B: their colour-inverted versions)."""
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for dom in "AB":
            (root / f"{split}{dom}").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            im = synthetic_photo(rng, size, size)
            im.save(root / f"{split}A" / f"{i:03d}.png")
            Image.fromarray(255 - np.asarray(im)).save(root / f"{split}B" / f"{i:03d}.png")
    return root
