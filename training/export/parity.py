"""Parity inputs and measurements: onnxruntime against torch (eval mode), or one graph against another.

Image graphs get random inputs at two sizes (square or native, and non-square) and two batch
sizes, plus real held-out images when the family's registry entry names the dataset field that
feeds the role (`Family.real_inputs`); generators get z ~ N(0, I) at several batch sizes,
every label included.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from modelops.numerics import Case, measure_against, parity_sizes


def fit_image(image, h: int, w: int):
    """C x h0 x w0 tensor -> C x h x w: upscale (bilinear) when too small, then centre crop."""
    import torch.nn.functional as F
    _, h0, w0 = image.shape
    if h0 < h or w0 < w:
        s = max(h / h0, w / w0)
        nh, nw = max(h, round(h0 * s + 0.5)), max(w, round(w0 * s + 0.5))
        image = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False)[0].clamp(-1, 1)
        _, h0, w0 = image.shape
    y, x = (h0 - h) // 2, (w0 - w) // 2
    return image[:, y:y + h, x:x + w]


def real_images(cfg, data_root: str | None, key: str, count: int) -> tuple[list[Any], str]:
    """Up to `count` held-out samples' `key` tensors and a description (or [] and why not)."""
    from ..data import DataConfig, DataError, build_dataset

    data = dict(cfg.data)
    if data_root:
        data["root"] = data_root
    if data.get("kind") == "hr_folder":
        data["hr_size"] = None  # whole held-out images (cut to a multiple of scale), not training crops
    root = data.get("root")
    try:
        reader = build_dataset(DataConfig(**data), "test")
        n = min(count, len(reader))
        samples = [reader.sample(i, np.random.default_rng([0, i]))[key] for i in range(n)]
    except (DataError, OSError, ValueError, KeyError) as e:
        return [], f"no real inputs: the held-out split under {root!r} cannot be read ({e})"
    if not samples:
        return [], f"no real inputs: the held-out split under {root!r} is empty"
    return samples, f"{data.get('kind')} {root} (test split, {n} samples)"


def generator_cases(spec, cfg, rng) -> tuple[list[Case], dict[str, Any]]:
    """z [N, latent] (+ label [N]) at batch 1, 3 and twice the class count (every label)."""
    latent = int(spec.card["latent_dim"])
    k = int(getattr(cfg.model, "num_classes", 1))
    batches = [1, 3, 2 * k]
    cases = []
    for n in batches:
        feeds = {"z": rng.standard_normal((n, latent)).astype(np.float32)}
        if "label" in spec.input_names:
            feeds["label"] = (np.arange(n) % k).astype(np.int64) if n >= k else rng.integers(0, k, n).astype(np.int64)
        cases.append(Case("random", feeds))
    info = {"batches": batches, "labels": k, "real": None,
            "real_note": "a generator has no data input: z ~ N(0, I) at every batch size, every label"}
    return cases, info


def real_cases(family: str, role: str, cfg, data_root: str | None, card_in: dict[str, Any],
               sizes: list[list[int]], batches: list[int], info: dict[str, Any]) -> list[Case]:
    """Held-out images of the field feeding `role`, fitted to each size; says in `info` where they came from."""
    from ..registry import get_family

    key = get_family(family).real_inputs.get(role)
    if key is None:
        info["real_note"] = f"no real inputs: no dataset field is known to feed {family}/{role}"
        return []
    images, source = real_images(cfg, data_root, key, max(batches))
    if not images:
        info["real_note"] = source
        return []
    import torch
    c = int(card_in["channels"])
    cases = []
    for h, w in sizes:
        for n in batches:
            batch = torch.stack([fit_image(images[i % len(images)], h, w) for i in range(n)])
            if batch.shape[1] != c:
                info["real_note"] = f"no real inputs: dataset field {key!r} has {batch.shape[1]} channels, graph takes {c}"
                return []
            cases.append(Case("real", {"image": batch.numpy().astype(np.float32)}))
    info["real_source"] = source
    return cases


def random_cases(card_in: dict[str, Any], seed: int = 0) -> tuple[list[Case], dict[str, Any]]:
    """Uniform random images in the input's value range at the two `parity_sizes`, batch 1 and 2."""
    rng = np.random.default_rng(seed)
    c = int(card_in["channels"])
    lo, hi = card_in.get("range", [-1.0, 1.0])
    sizes = parity_sizes(card_in)
    batches = [1, 2]
    cases = [Case("random", {"image": rng.uniform(lo, hi, (n, c, h, w)).astype(np.float32)})
             for h, w in sizes for n in batches]
    return cases, {"sizes": sizes, "batches": batches}


def parity_cases(family: str, role: str, spec, cfg, data_root: str | None,
                 seed: int = 0) -> tuple[list[Case], dict[str, Any]]:
    """The inputs one role is checked on, and what the card says about them."""
    if "input" not in spec.card:  # generator: z [N, latent] (+ label [N])
        return generator_cases(spec, cfg, np.random.default_rng(seed))
    card_in = spec.card["input"]
    cases, info = random_cases(card_in, seed)
    sizes, batches = info["sizes"], info["batches"]
    return cases + real_cases(family, role, cfg, data_root, card_in, sizes, batches, info), info


def measure(session, spec, cases: list[Case], reference: Callable | None = None) -> dict[str, float]:
    """Max abs difference of `session` vs torch (or vs `reference(feeds)`), per case kind."""
    if reference is not None:
        return measure_against(session, cases, reference, "torch")
    import torch

    def torch_reference(feeds: dict[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            # a copy: a network may change its input in place (spandrel's RCAN does); the case is reused
            return spec.module(*[torch.from_numpy(feeds[n].copy()) for n in spec.input_names]).numpy()

    return measure_against(session, cases, torch_reference, "torch")
