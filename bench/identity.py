"""Hash the answers of a fixed set of requests to a running service: a refactor must not change them.

    python -m bench.identity http://127.0.0.1:3000 > before.json   # on the old commit
    python -m bench.identity http://127.0.0.1:3000 > after.json    # on the new one
    diff before.json after.json                                    # empty: byte-identical

The requests cover the three endpoints on the shipped models (models/): every family, the
tiled path (an input larger than the card's tile), alpha, grayscale, scale < native, and
the three output formats. Each line is the request, its status, the sha256 of the body, and the sha256
of its decoded pixels (mode, size, then the pixels): a change of encoder (PNG through fpng) keeps `pixels`
and changes `sha256`.
"""
from __future__ import annotations

import hashlib
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def _inputs() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    wood = np.asarray(Image.open(SAMPLES / "wood-128.png").convert("RGB"))
    big = np.concatenate([np.concatenate([wood, wood[:, ::-1]], 1)] * 2, 0)[:200, :230]  # 200x230: tiled at 128
    rgba = np.dstack([wood[:64, :48], rng.integers(0, 256, (64, 48, 1), dtype=np.uint8)])
    return {
        "flower-gray-256": (SAMPLES / "flower-gray-256.png").read_bytes(),
        "flower-256": (SAMPLES / "flower-256.jpg").read_bytes(),
        "sneaker-28": (SAMPLES / "sneaker-28.png").read_bytes(),
        "boot-28": (SAMPLES / "boot-28.png").read_bytes(),
        "wood-128": (SAMPLES / "wood-128.png").read_bytes(),
        "raindrops-128": (SAMPLES / "raindrops-128.png").read_bytes(),
        "wood-200x230": _png(np.ascontiguousarray(big)),
        "wood-rgba-64x48": _png(rgba),
        "wood-gray-64": _png(np.asarray(Image.fromarray(wood[:64, :64]).convert("L"))),
        "colorize-300x260": _png(np.asarray(Image.open(SAMPLES / "flower-gray-256.png").convert("L").resize((300, 260)))),
    }


GENERATE = [
    {"model": "fashion", "label": "Sneaker", "n": 1, "seed": 7},
    {"model": "fashion", "label": "Sneaker", "n": 16, "seed": 7},
    {"label": "Bag", "interpolate": {"seeds": [1, 2], "steps": 8}},
    {"model": "fashion", "label": 3, "n": 4, "seed": 11, "format": "jpeg"},
    {"model": "fashion", "label": "Dress", "n": 2, "seed": 5, "format": "webp"},
]
TRANSLATE = [
    ("flower-gray-256", {"model": "colorize"}),
    ("flower-gray-256", {"model": "colorize", "format": "jpeg"}),
    ("flower-256", {"model": "colorize", "format": "webp"}),
    ("colorize-300x260", {"model": "colorize"}),
    ("sneaker-28", {"model": "sneaker2boot", "direction": "a2b"}),
    ("boot-28", {"model": "sneaker2boot", "direction": "b2a"}),
    ("wood-128", {"model": "sneaker2boot", "direction": "a2b"}),
]
UPSCALE = [
    ("raindrops-128", {}),
    ("wood-128", {"model": "srgan-x4", "scale": "2"}),
    ("wood-200x230", {}),
    ("wood-200x230", {"model": "srgan-x4"}),
    ("wood-rgba-64x48", {"model": "srresnet-x4"}),
    ("wood-gray-64", {"model": "srgan-x4", "format": "jpeg"}),
]


def pixels_sha256(body: bytes) -> str | None:
    """sha256 of the decoded image (mode, size, pixels); None when the body is not an image."""
    try:
        with Image.open(io.BytesIO(body)) as image:
            image.load()
            head = f"{image.mode} {image.size}".encode()
            return hashlib.sha256(head + image.tobytes()).hexdigest()
    except Exception:  # noqa: BLE001 - an error answer
        return None


def main(argv: list[str]) -> int:
    import httpx

    base = argv[0] if argv else "http://127.0.0.1:3000"
    images = _inputs()
    rows = []
    with httpx.Client(base_url=base, timeout=600) as client:
        def record(what: str, r: httpx.Response) -> None:
            rows.append({"request": what, "status": r.status_code, "bytes": len(r.content),
                         "sha256": hashlib.sha256(r.content).hexdigest(), "pixels": pixels_sha256(r.content),
                         "seed": r.headers.get("x-seed")})

        for body in GENERATE:
            record(f"generate {json.dumps(body, sort_keys=True)}", client.post("/generate", json=body))
        for endpoint, cases in (("translate", TRANSLATE), ("upscale", UPSCALE)):
            for image, fields in cases:
                r = client.post(f"/{endpoint}", files={"image": (image, images[image])}, data=fields)
                record(f"{endpoint} {image} {json.dumps(fields, sort_keys=True)}", r)
    json.dump(rows, sys.stdout, indent=1)
    print()
    return 0 if all(row["status"] == 200 for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
