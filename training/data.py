"""Dataset readers for the standard image-translation layouts.

Every reader has ``__len__()`` and ``sample(index, rng) -> dict[str, Tensor]``.
All randomness (crop position, flips, the unpaired partner) comes from the
``rng`` argument, never from global state: the trainer derives ``rng`` from
(seed, step, index), so a run is exactly resumable and shards cleanly over
DDP ranks and DataLoader workers.

Images come out as float32 ``C x H x W`` tensors in [-1, 1]
(``pixel / 127.5 - 1``); labels as int64 0-d tensors.

Resizing: ``load_size`` resizes the *shorter side* to ``load_size`` (aspect
kept, PIL bicubic). For the square images of the standard pix2pix/CycleGAN
sets this is exactly their ``resize_and_crop`` (286 -> random 256 crop); for
non-square photos it does not distort the scene.

Decoding cost: every folder reader keeps its decoded (and deterministically
resized) images in a per-process LRU cache bounded by ``cache_bytes``. Each
DataLoader worker holds its own cache, so the total memory is
``workers x ranks x cache_bytes``; lower ``cache_mb`` in ``DataConfig`` when
that is too much. ``training.prepare photos`` also writes the training photos
as 512 px tiles, so even a cold cache decodes small files.
"""

from __future__ import annotations

import gzip
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from core.imaging import ImageError, read_image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]

IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dimension

DEFAULT_CACHE_BYTES = 1 << 30


class DataError(ValueError):
    """Bad or missing data; the message names the offending file or folder."""


# ---------------------------------------------------------------- helpers

def list_images(folder: str | Path) -> list[Path]:
    """All images under ``folder`` (recursive, sorted, hidden files skipped)."""
    folder = Path(folder)
    exts = " ".join(IMAGE_EXTENSIONS)
    if not folder.is_dir():
        raise DataError(f"no images found in {folder} (folder does not exist; looked for {exts})")
    paths = sorted(
        p for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    if not paths:
        raise DataError(f"no images found in {folder} (looked for {exts})")
    return paths


def load_image(path: str | Path, mode: str = "RGB") -> Image.Image:
    """Decode ``path`` with the service's own decoder (core.imaging.read_image: EXIF orientation, every
    mode, 16-bit as v * 255 / 65535, alpha set aside as the service sets it aside), as ``mode`` ("RGB" or
    "L"). So a file is the same pixels in training as in a request."""
    path = Path(path)
    try:
        decoded = read_image(path)
    except (ImageError, OSError) as e:
        raise DataError(f"cannot read image {path}: {e}") from e
    im = Image.fromarray(decoded.pixels[..., 0] if decoded.gray else decoded.pixels, "L" if decoded.gray else "RGB")
    return im.convert(mode) if im.mode != mode else im


def to_tensor(im: Image.Image | np.ndarray) -> torch.Tensor:
    """uint8 PIL image / array (H x W or H x W x C) -> float32 C x H x W in [-1, 1]."""
    arr = np.array(im, dtype=np.uint8)  # a writable copy
    if arr.ndim == 2:
        arr = arr[:, :, None]
    t = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))  # C x H x W
    return t.float().div_(127.5).sub_(1.0)


def resize_shorter(im: Image.Image, size: int | None) -> Image.Image:
    """Resize so the shorter side is ``size`` (aspect kept); ``None`` = unchanged."""
    if size is None:
        return im
    w, h = im.size
    if min(w, h) == size:
        return im
    scale = size / min(w, h)
    new = (size, max(1, round(h * scale))) if w <= h else (max(1, round(w * scale)), size)
    return im.resize(new, Image.BICUBIC)


def random_crop_box(size: tuple[int, int], crop: int | None, rng: np.random.Generator,
                    what: Path | str) -> tuple[int, int, int, int]:
    """A ``crop`` x ``crop`` box inside an image of ``size`` = (w, h); the whole image if None."""
    w, h = size
    if crop is None:
        return 0, 0, w, h
    if crop > w or crop > h:
        raise DataError(f"crop {crop}x{crop} is larger than image {what} ({w}x{h} after resize)")
    x = int(rng.integers(0, w - crop + 1))
    y = int(rng.integers(0, h - crop + 1))
    return x, y, x + crop, y + crop


def _image_bytes(value) -> int:
    ims = value if isinstance(value, tuple) else (value,)
    return sum(im.size[0] * im.size[1] * len(im.getbands()) for im in ims)


class ImageCache:
    """Least-recently-used cache of decoded images, bounded by a byte budget.

    One per reader instance (hence per DataLoader worker process).
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES):
        self.max_bytes = max_bytes
        self._items: OrderedDict = OrderedDict()
        self._bytes = 0

    def get(self, key, load: Callable[[], object]):
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = load()
        size = _image_bytes(value)
        if size <= self.max_bytes:
            self._items[key] = value
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self._bytes -= _image_bytes(old)
        return value

    def __len__(self) -> int:
        return len(self._items)

    def __getstate__(self):  # workers start with an empty cache, not a pickled copy
        return {"max_bytes": self.max_bytes, "_items": OrderedDict(), "_bytes": 0}


def _flip_lr(ims: list[Image.Image], flip: bool, rng: np.random.Generator) -> list[Image.Image]:
    if flip and rng.random() < 0.5:
        return [im.transpose(Image.FLIP_LEFT_RIGHT) for im in ims]
    return ims


def _mode(channels: int) -> str:
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    return "L" if channels == 1 else "RGB"


# ---------------------------------------------------------------- folder readers

class AlignedFolder:
    """pix2pix layout: each image is A | B side by side (left half A, right half B)."""

    def __init__(self, root, load_size: int | None = 286, crop_size: int | None = 256,
                 flip: bool = True, a_channels: int = 3, b_channels: int = 3,
                 direction: str = "a2b", cache_bytes: int = DEFAULT_CACHE_BYTES):
        if direction not in ("a2b", "b2a"):
            raise ValueError(f"direction must be 'a2b' or 'b2a', got {direction!r}")
        self.root = Path(root)
        self.paths = list_images(self.root)
        self.load_size, self.crop_size, self.flip = load_size, crop_size, flip
        self.a_mode, self.b_mode = _mode(a_channels), _mode(b_channels)
        self.direction = direction
        self._cache = ImageCache(cache_bytes)

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, path: Path) -> tuple[Image.Image, Image.Image]:
        ab = load_image(path, "RGB")
        w, h = ab.size
        if w % 2:
            raise DataError(f"aligned image {path} has odd width {w}; expected A|B side by side")
        a = ab.crop((0, 0, w // 2, h))
        b = ab.crop((w // 2, 0, w, h))
        a = resize_shorter(a.convert(self.a_mode), self.load_size)
        b = resize_shorter(b.convert(self.b_mode), self.load_size)
        return a, b

    def sample(self, index: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        path = self.paths[index % len(self.paths)]
        a, b = self._cache.get(path, lambda: self._load(path))
        box = random_crop_box(a.size, self.crop_size, rng, path)
        a, b = _flip_lr([a.crop(box), b.crop(box)], self.flip, rng)
        if self.direction == "b2a":
            a, b = b, a
        return {"A": to_tensor(a), "B": to_tensor(b)}  # C x crop x crop each


class UnalignedFolder:
    """CycleGAN layout: two unpaired folders. ``index`` walks A; B's index comes from rng."""

    def __init__(self, root_a, root_b, load_size: int | None = 286, crop_size: int | None = 256,
                 flip: bool = True, channels: int = 3, cache_bytes: int = DEFAULT_CACHE_BYTES):
        self.root_a, self.root_b = Path(root_a), Path(root_b)
        self.paths_a = list_images(self.root_a)
        self.paths_b = list_images(self.root_b)
        self.load_size, self.crop_size, self.flip = load_size, crop_size, flip
        self.mode = _mode(channels)
        self._cache = ImageCache(cache_bytes)

    def __len__(self) -> int:
        return max(len(self.paths_a), len(self.paths_b))

    def _view(self, path: Path, rng: np.random.Generator) -> torch.Tensor:
        im = self._cache.get(path, lambda: resize_shorter(load_image(path, self.mode), self.load_size))
        box = random_crop_box(im.size, self.crop_size, rng, path)
        (im,) = _flip_lr([im.crop(box)], self.flip, rng)
        return to_tensor(im)

    def sample(self, index: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        path_a = self.paths_a[index % len(self.paths_a)]
        path_b = self.paths_b[int(rng.integers(len(self.paths_b)))]
        a = self._view(path_a, rng)
        b = self._view(path_b, rng)
        return {"A": a, "B": b}


class HRFolder:
    """Folder of high-resolution images (DIV2K style) -> (LR, HR) pairs for x``scale`` SR.

    HR: random ``hr_size`` crop + random hflip/vflip/transpose (the 8 dihedral
    views). LR: ``hr.resize((w // scale, h // scale), Image.BICUBIC)`` on the
    uint8 HR crop. ``hr_size=None`` uses the whole image, cut at the bottom and
    right to a multiple of ``scale`` (for evaluation; no augmentation then).
    """

    def __init__(self, root, hr_size: int | None = 128, scale: int = 4, flip: bool = True,
                 cache_bytes: int = DEFAULT_CACHE_BYTES):
        if hr_size is not None and hr_size % scale:
            raise DataError(f"hr_size {hr_size} must be a multiple of scale {scale} (for {root})")
        self.root = Path(root)
        self.paths = list_images(self.root)
        self.hr_size, self.scale, self.flip = hr_size, scale, flip
        self._cache = ImageCache(cache_bytes)

    def __len__(self) -> int:
        return len(self.paths)

    def sample(self, index: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        path = self.paths[index % len(self.paths)]
        im = self._cache.get(path, lambda: load_image(path, "RGB"))
        s = self.scale
        if self.hr_size is None:
            w, h = im.size
            if w < s or h < s:
                raise DataError(f"image {path} ({w}x{h}) is smaller than scale {s}")
            hr = im.crop((0, 0, w - w % s, h - h % s))
        else:
            hr = im.crop(random_crop_box(im.size, self.hr_size, rng, path))
            if self.flip:
                hflip, vflip, transpose = rng.random(3) < 0.5
                if hflip:
                    hr = hr.transpose(Image.FLIP_LEFT_RIGHT)
                if vflip:
                    hr = hr.transpose(Image.FLIP_TOP_BOTTOM)
                if transpose:
                    hr = hr.transpose(Image.TRANSPOSE)
        w, h = hr.size
        lr = hr.resize((w // s, h // s), Image.BICUBIC)
        return {"lr": to_tensor(lr), "hr": to_tensor(hr)}  # 3 x h x w, 3 x h*s x w*s


class ColorizationFolder:
    """Folder of colour photos -> A = luma (1 channel, PIL "L", ITU-R 601), B = RGB; same crop."""

    def __init__(self, root, load_size: int | None = 286, crop_size: int | None = 256,
                 flip: bool = True, cache_bytes: int = DEFAULT_CACHE_BYTES):
        self.root = Path(root)
        self.paths = list_images(self.root)
        self.load_size, self.crop_size, self.flip = load_size, crop_size, flip
        self._cache = ImageCache(cache_bytes)

    def __len__(self) -> int:
        return len(self.paths)

    def sample(self, index: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        path = self.paths[index % len(self.paths)]
        im = self._cache.get(path, lambda: resize_shorter(load_image(path, "RGB"), self.load_size))
        (rgb,) = _flip_lr([im.crop(random_crop_box(im.size, self.crop_size, rng, path))], self.flip, rng)
        return {"A": to_tensor(rgb.convert("L")), "B": to_tensor(rgb)}  # 1 x H x W, 3 x H x W


# ---------------------------------------------------------------- Fashion-MNIST

def idx_file(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    raise DataError(f"missing {root / stem} (or {stem}.gz); run `python -m training prepare fashion-mnist`")


def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """Read an idx file (plain or .gz) whose header must carry ``magic``; returns uint8 array."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"cannot read idx file {path}: {e}") from e
    ndim = magic - 2048  # 2049 -> 1 dim (labels), 2051 -> 3 dims (images)
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"idx file {path} is truncated ({len(raw)} bytes)")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataError(f"idx file {path} has magic number {found}, expected {magic}")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    if len(raw) != header + int(np.prod(dims)):
        raise DataError(f"idx file {path} holds {len(raw) - header} data bytes, "
                        f"header says {' x '.join(map(str, dims))}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def fit_mnist(images: np.ndarray, size: int) -> np.ndarray:
    """N x 28 x 28 uint8 -> N x size x size uint8: zero-pad when size is 32, bicubic resize otherwise."""
    n, h, w = images.shape
    if size == h == w:
        return images
    if size == 32 and h == w == 28:
        return np.pad(images, ((0, 0), (2, 2), (2, 2)))  # pads pixel 0 -> -1 after normalisation
    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC)) for im in images])


class FashionMNIST:
    """Fashion-MNIST from its idx files (plain or .gz) -> {"image": 1 x S x S, "label": int64}.

    ``classes`` keeps only those class indices; labels stay the official
    0..9 indices (``FASHION_MNIST_CLASSES[label]`` is always the name).
    ``images`` (N x 28 x 28 uint8) and ``labels`` (N int64) hold the kept
    examples; ``arrays()`` returns them at ``image_size`` for evaluation.
    """

    class_names = FASHION_MNIST_CLASSES
    num_classes = len(FASHION_MNIST_CLASSES)

    def __init__(self, root, split: str = "train", classes: list[int] | None = None,
                 image_size: int = 32):
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.root, self.split, self.image_size = Path(root), split, image_size
        prefix = "train" if split == "train" else "t10k"
        images_path = idx_file(self.root, f"{prefix}-images-idx3-ubyte")
        labels_path = idx_file(self.root, f"{prefix}-labels-idx1-ubyte")
        images = read_idx(images_path, IDX_IMAGES_MAGIC)  # N x 28 x 28
        labels = read_idx(labels_path, IDX_LABELS_MAGIC).astype(np.int64)  # N
        if len(images) != len(labels):
            raise DataError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
        if labels.size and labels.max() >= self.num_classes:
            raise DataError(f"{labels_path} has label {labels.max()}, expected 0..{self.num_classes - 1}")
        if classes is not None:
            bad = [c for c in classes if not 0 <= c < self.num_classes]
            if bad:
                raise ValueError(f"unknown Fashion-MNIST classes {bad}; valid: 0..{self.num_classes - 1}")
            keep = np.isin(labels, classes)
            images, labels = images[keep], labels[keep]
            if not len(labels):
                raise DataError(f"no examples of classes {classes} in {labels_path}")
        self.classes = sorted(classes) if classes is not None else list(range(self.num_classes))
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(N x S x S uint8 images at ``image_size``, N int64 labels)."""
        return fit_mnist(self.images, self.image_size), self.labels

    def sample(self, index: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        i = index % len(self.labels)
        image = fit_mnist(self.images[i: i + 1], self.image_size)[0]
        return {"image": to_tensor(image), "label": torch.tensor(self.labels[i], dtype=torch.int64)}


class FashionMNISTDomains:
    """Unpaired two-domain Fashion-MNIST (default: Sneaker -> Ankle boot) for CycleGAN."""

    def __init__(self, root, split: str = "train", class_a: int = 7, class_b: int = 9,
                 image_size: int = 28):
        self.a = FashionMNIST(root, split, classes=[class_a], image_size=image_size)
        self.b = FashionMNIST(root, split, classes=[class_b], image_size=image_size)
        self.class_a, self.class_b = class_a, class_b

    def __len__(self) -> int:
        return max(len(self.a), len(self.b))

    def sample(self, index: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        a = self.a.sample(index % len(self.a), rng)["image"]
        b = self.b.sample(int(rng.integers(len(self.b))), rng)["image"]
        return {"A": a, "B": b}  # 1 x S x S each


# ---------------------------------------------------------------- config + factory

KINDS = ("aligned", "unaligned", "hr_folder", "colorization", "fashion_mnist", "fashion_mnist_domains")

# split -> the subfolder names tried in order (DIV2K names for hr_folder too).
_SPLIT_DIRS = {
    "train": ("train", "DIV2K_train_HR"),
    "test": ("test", "val", "valid", "DIV2K_valid_HR"),
    "val": ("val", "valid", "test", "DIV2K_valid_HR"),
}


@dataclass
class DataConfig:
    kind: str = "fashion_mnist"
    root: str = "data/fashion-mnist"
    split: str = "train"
    # folder readers
    load_size: int | None = 286
    crop_size: int | None = 256
    flip: bool = True
    a_channels: int = 3          # aligned
    b_channels: int = 3          # aligned
    direction: str = "a2b"       # aligned
    channels: int = 3            # unaligned
    hr_size: int | None = 128    # hr_folder
    scale: int = 4               # hr_folder
    cache_mb: int = 1024         # per-process decoded-image cache (folder readers)
    # Fashion-MNIST
    classes: list[int] | None = None
    image_size: int | None = None  # None: 32 for fashion_mnist, 28 for fashion_mnist_domains
    class_a: int = 7
    class_b: int = 9

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown data kind {self.kind!r}; choose from {', '.join(KINDS)}")


def _split_dir(root: Path, split: str, suffix: str = "") -> Path:
    tried = [root / f"{name}{suffix}" for name in _SPLIT_DIRS.get(split, (split,))]
    for path in tried:
        if path.is_dir():
            return path
    raise DataError(f"no {split!r} folder under {root} (tried {', '.join(str(p) for p in tried)})")


def build_dataset(cfg: DataConfig, split: str | None = None):
    """The reader for ``cfg`` on ``split`` (default ``cfg.split``).

    Non-train splits get no flips/dihedral augmentation; crops still come from
    the rng the caller passes (use a fixed one for repeatable evaluation).
    """
    split = split or cfg.split
    root = Path(cfg.root)
    flip = cfg.flip and split == "train"
    cache = cfg.cache_mb << 20
    if cfg.kind == "aligned":
        return AlignedFolder(_split_dir(root, split), cfg.load_size, cfg.crop_size, flip,
                             cfg.a_channels, cfg.b_channels, cfg.direction, cache)
    if cfg.kind == "unaligned":
        return UnalignedFolder(_split_dir(root, split, "A"), _split_dir(root, split, "B"),
                               cfg.load_size, cfg.crop_size, flip, cfg.channels, cache)
    if cfg.kind == "hr_folder":
        return HRFolder(_split_dir(root, split), cfg.hr_size, cfg.scale, flip, cache)
    if cfg.kind == "colorization":
        return ColorizationFolder(_split_dir(root, split), cfg.load_size, cfg.crop_size, flip, cache)
    fm_split = "train" if split == "train" else "test"  # official t10k is the held-out split
    if cfg.kind == "fashion_mnist":
        return FashionMNIST(root, fm_split, cfg.classes, cfg.image_size or 32)
    return FashionMNISTDomains(root, fm_split, cfg.class_a, cfg.class_b, cfg.image_size or 28)
