"""Training's dataset reader for the model operations' feeds (modelops/inputs.py `DatasetImages`): the
role's input field from the split of the dataset the card's training config names, as the network saw it."""
from __future__ import annotations

import numpy as np

from contract import Card

from .export.parity import fit_image


def input_field(card: Card, role: str) -> str | None:
    """The dataset field feeding `role` (training/registry.py); None for a family the registry does not know."""
    from .registry import get_family

    try:
        return get_family(card.family).real_inputs.get(role)
    except ValueError:
        return None


def dataset_images(card: Card, role: str, split: str, count: int, size: int | None, data_root: str | None,
                    seed: int) -> tuple[np.ndarray | None, str]:
    """`count` samples of the role's input field from the card's dataset split (N, C, H, W), or None and why."""
    key = input_field(card, role)
    config = (card.training.config if card.training else None) or {}
    data = dict(config.get("data") or {})
    if key is None or not data:
        return None, "the card names no dataset field for this graph"
    from .data import DataConfig, DataError, build_dataset

    if data_root:
        data["root"] = data_root
    if size and data.get("kind") == "hr_folder":
        data["hr_size"] = size * int(data.get("scale", 4))
    try:
        reader = build_dataset(DataConfig(**data), split)
        samples = [reader.sample(i % len(reader), np.random.default_rng([seed, i]))[key] for i in range(count)]
    except (DataError, OSError, ValueError, KeyError, ZeroDivisionError) as e:
        return None, f"the {split} split under {data.get('root')!r} cannot be read ({e})"
    shapes = {tuple(s.shape) for s in samples}
    if len(shapes) != 1:
        h = min(s.shape[1] for s in samples)
        w = min(s.shape[2] for s in samples)
        samples = [fit_image(s, h, w) for s in samples]
    return np.stack([s.numpy() for s in samples]).astype(np.float32), f"{data.get('kind')} {data.get('root')} ({split} split, {count} samples)"
