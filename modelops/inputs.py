"""The feeds a variant is calibrated and checked on: a dataset's images when the caller can read them,
else smooth synthetic images (z ~ N(0, I) for a generator, which is its real input).

Reading a dataset is training's business (its readers need torch), so the reader comes in as a
`DatasetImages` callable (training/calibration.py passes the one that reads the card's dataset).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from contract import Card, ImageOutput

# (card, role, split, count, size or None, data_root, seed) -> (images N x C x H x W float32 or None, source)
DatasetImages = Callable[[Card, str, str, int, "int | None", "str | None", int], "tuple[np.ndarray | None, str]"]


def role_output(card: Card, role: str) -> ImageOutput:
    """The output block of one role (cyclegan roles may differ in channels)."""
    return card.roles[role].output if card.roles and role in card.roles else card.output


def _synthetic_images(n: int, c: int, h: int, w: int, lo: float, hi: float, seed: int) -> np.ndarray:
    """Smooth random images (a low-resolution random field, bicubic-upsampled, plus fine noise) in [lo, hi]."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = np.empty((n, c, h, w), np.float32)
    for i in range(n):
        for ch in range(c):
            coarse = rng.uniform(0, 255, (max(2, h // 8), max(2, w // 8))).astype(np.float32)
            field = np.asarray(Image.fromarray(coarse, mode="F").resize((w, h), Image.BICUBIC))
            out[i, ch] = np.clip(field + rng.normal(0, 6, (h, w)), 0, 255)
    return (lo + out / 255.0 * (hi - lo)).astype(np.float32)


def _latent_inputs(card: Card, count: int, batch: int, rng) -> tuple[list[dict[str, np.ndarray]], str]:
    latent = int(card.latent_dim or 0)
    k = max(1, len(card.classes or []))
    names = set(card.graph.input_names())
    feeds = []
    for start in range(0, count, batch):
        n = min(batch, count - start)
        f = {"z": rng.standard_normal((n, latent)).astype(np.float32)}
        if "label" in names:
            f["label"] = ((np.arange(n) + start) % k).astype(np.int64)
        feeds.append(f)
    return feeds, f"z ~ N(0, I), labels 0..{k - 1} in turn (a generator's real input; {count} samples)"


def role_inputs(card: Card, role: str, split: str, count: int, size: int, data_root: str | None,
                seed: int, batch: int, dataset: DatasetImages | None = None) -> tuple[list[dict[str, np.ndarray]], str]:
    """Feeds for one role: batches of `batch` from the split through `dataset` (or synthetic), and a description."""
    rng = np.random.default_rng(seed)
    if card.endpoint == "generate":
        return _latent_inputs(card, count, batch, rng)
    card_in = card.role_io(role).input
    name = card.graph.inputs[0].name
    native = card_in.native_size
    m = int(card_in.multiple_of or 1)
    size = max(int(card_in.min_size or 1), -(-size // m) * m)
    if dataset is None:
        images, source = None, "no dataset reader was given"
    else:
        images, source = dataset(card, role, split, count, None if native else size, data_root, seed)
    if images is not None and images.shape[1] != int(card_in.channels):
        images, source = None, f"the dataset field has {images.shape[1]} channels, the graph takes {card_in.channels}"
    if images is None:
        h, w = native or (size, size)
        lo, hi = card_in.range
        images = _synthetic_images(count, int(card_in.channels), h, w, lo, hi, seed)
        source = f"synthetic smooth random images {h}x{w} ({count}; no data: {source})"
    elif images.shape[2] % m or images.shape[3] % m:
        h, w = images.shape[2] // m * m, images.shape[3] // m * m
        images = images[:, :, :h, :w]
    return [{name: images[i:i + batch]} for i in range(0, len(images), batch)], source
