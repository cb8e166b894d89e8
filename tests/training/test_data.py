"""Readers for the standard layouts, on tiny fixture folders built in tmp_path."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.data import (
    FASHION_MNIST_CLASSES, AlignedFolder, ColorizationFolder, DataConfig, DataError,
    FashionMNIST, FashionMNISTDomains, HRFolder, ImageCache, UnalignedFolder,
    build_dataset, load_image, read_idx,
)

REPO = Path(__file__).resolve().parents[2]


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def noise_image(path: Path, w: int, h: int, seed: int, mode: str = "RGB") -> Path:
    bands = 1 if mode == "L" else 3
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, bands), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr[:, :, 0] if mode == "L" else arr, mode).save(path)
    return path


def aligned_image(path: Path, size: int, seed: int) -> Path:
    """A | B with A = noise and B = 255 - A, so pairing is checkable after any crop/flip."""
    a = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate([a, 255 - a], axis=1)).save(path)
    return path


def write_idx(path: Path, magic: int, array: np.ndarray) -> Path:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


@pytest.fixture
def fmnist(tmp_path) -> Path:
    root = tmp_path / "fashion-mnist"
    root.mkdir()
    g = np.random.default_rng(0)
    for prefix, n, gz in (("train", 50, True), ("t10k", 20, False)):
        ext = ".gz" if gz else ""
        labels = np.arange(n) % 10
        images = g.integers(1, 256, (n, 28, 28))
        write_idx(root / f"{prefix}-images-idx3-ubyte{ext}", 2051, images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{ext}", 2049, labels)
    return root


def check_image(t: torch.Tensor, shape: tuple[int, ...]) -> None:
    assert t.dtype == torch.float32
    assert tuple(t.shape) == shape
    assert t.min() >= -1.0 and t.max() <= 1.0


# ---------------------------------------------------------------- aligned

def test_aligned_shapes_pairing_and_determinism(tmp_path):
    for i in range(3):
        aligned_image(tmp_path / "train" / f"{i}.png", 40, seed=i)
    ds = AlignedFolder(tmp_path / "train", load_size=None, crop_size=24)
    assert len(ds) == 3
    s = ds.sample(1, rng(0))
    check_image(s["A"], (3, 24, 24))
    check_image(s["B"], (3, 24, 24))
    # same crop and flip on both halves: B is the negative of A everywhere
    assert torch.allclose(s["A"], -s["B"], atol=1e-6)
    again = ds.sample(1, rng(0))
    assert torch.equal(s["A"], again["A"]) and torch.equal(s["B"], again["B"])
    crops = {ds.sample(1, rng(seed))["A"].sum().item() for seed in range(8)}
    assert len(crops) > 1


def test_aligned_resize_direction_and_channels(tmp_path):
    aligned_image(tmp_path / "x.png", 32, seed=0)
    ds = AlignedFolder(tmp_path, load_size=48, crop_size=40, a_channels=1, b_channels=3)
    s = ds.sample(0, rng(1))
    check_image(s["A"], (1, 40, 40))
    check_image(s["B"], (3, 40, 40))
    swapped = AlignedFolder(tmp_path, load_size=48, crop_size=40, a_channels=1, direction="b2a")
    t = swapped.sample(0, rng(1))
    assert torch.equal(t["A"], s["B"]) and torch.equal(t["B"], s["A"])


def test_aligned_odd_width_names_file(tmp_path):
    noise_image(tmp_path / "odd_one.png", 41, 20, seed=0)
    ds = AlignedFolder(tmp_path, load_size=None, crop_size=16)
    with pytest.raises(DataError, match="odd_one.png"):
        ds.sample(0, rng())


def test_crop_too_big_names_file_and_sizes(tmp_path):
    aligned_image(tmp_path / "small.png", 20, seed=0)
    ds = AlignedFolder(tmp_path, load_size=None, crop_size=32)
    with pytest.raises(DataError, match=r"small\.png.*20x20"):
        ds.sample(0, rng())


# ---------------------------------------------------------------- unaligned

def test_unaligned_partner_from_rng(tmp_path):
    for i in range(2):
        noise_image(tmp_path / "trainA" / f"a{i}.png", 30, 30, seed=i)
    for i in range(5):
        noise_image(tmp_path / "trainB" / f"b{i}.jpg", 30, 34, seed=10 + i)
    ds = build_dataset(DataConfig(kind="unaligned", root=str(tmp_path), load_size=None, crop_size=16))
    assert isinstance(ds, UnalignedFolder)
    assert len(ds) == 5
    s = ds.sample(3, rng(5))
    check_image(s["A"], (3, 16, 16))
    check_image(s["B"], (3, 16, 16))
    assert torch.equal(s["B"], ds.sample(3, rng(5))["B"])
    partners = {ds.sample(0, rng(seed))["B"].sum().item() for seed in range(10)}
    assert len(partners) > 1
    gray = UnalignedFolder(tmp_path / "trainA", tmp_path / "trainB", None, 16, channels=1)
    check_image(gray.sample(0, rng())["B"], (1, 16, 16))


def test_test_split_is_not_flipped(tmp_path):
    noise_image(tmp_path / "testA" / "a.png", 16, 16, seed=0)
    noise_image(tmp_path / "testB" / "b.png", 16, 16, seed=1)
    ds = build_dataset(DataConfig(kind="unaligned", root=str(tmp_path), load_size=None, crop_size=None), "test")
    outs = {ds.sample(0, rng(seed))["A"][0, 0, 0].item() for seed in range(10)}
    assert len(outs) == 1


# ---------------------------------------------------------------- HR folder

def test_hr_folder_shapes_and_bicubic_lr(tmp_path):
    noise_image(tmp_path / "train" / "0001.png", 50, 44, seed=0)
    ds = build_dataset(DataConfig(kind="hr_folder", root=str(tmp_path), hr_size=32, scale=4))
    assert isinstance(ds, HRFolder)
    s = ds.sample(0, rng(3))
    check_image(s["hr"], (3, 32, 32))
    check_image(s["lr"], (3, 8, 8))
    hr = Image.fromarray(((s["hr"] + 1) * 127.5).round().byte().permute(1, 2, 0).numpy())
    expected = np.asarray(hr.resize((8, 8), Image.BICUBIC), dtype=np.float32) / 127.5 - 1
    assert np.allclose(s["lr"].permute(1, 2, 0).numpy(), expected, atol=1e-6)
    assert torch.equal(s["hr"], ds.sample(0, rng(3))["hr"])
    views = {ds.sample(0, rng(seed))["hr"].sum().item() for seed in range(8)}
    assert len(views) > 1


def test_hr_folder_whole_image_and_bad_size(tmp_path):
    noise_image(tmp_path / "a.png", 50, 43, seed=0, mode="L")  # greyscale input -> RGB
    s = HRFolder(tmp_path, hr_size=None, scale=4).sample(0, rng())
    assert tuple(s["hr"].shape) == (3, 40, 48) and tuple(s["lr"].shape) == (3, 10, 12)
    with pytest.raises(DataError, match="multiple of scale"):
        HRFolder(tmp_path, hr_size=30, scale=4)
    with pytest.raises(DataError, match=r"a\.png"):
        HRFolder(tmp_path, hr_size=64, scale=4).sample(0, rng())


def test_image_cache_is_bounded_and_not_pickled(tmp_path):
    for i in range(4):
        noise_image(tmp_path / f"{i}.png", 16, 16, seed=i)
    ds = HRFolder(tmp_path, hr_size=8, scale=4, cache_bytes=2 * 16 * 16 * 3)
    for i in range(4):
        ds.sample(i, rng())
    assert len(ds._cache) == 2
    assert len(pickle.loads(pickle.dumps(ds))._cache) == 0
    cache = ImageCache(max_bytes=10)
    cache.get("big", lambda: Image.new("RGB", (4, 4)))
    assert len(cache) == 0


# ---------------------------------------------------------------- colorization

def test_colorization_luma_matches_rgb(tmp_path):
    noise_image(tmp_path / "train" / "p.jpg", 40, 30, seed=0)
    ds = build_dataset(DataConfig(kind="colorization", root=str(tmp_path), load_size=24, crop_size=20))
    assert isinstance(ds, ColorizationFolder)
    s = ds.sample(0, rng(2))
    check_image(s["A"], (1, 20, 20))
    check_image(s["B"], (3, 20, 20))
    rgb = ((s["B"] + 1) * 127.5).round().permute(1, 2, 0).numpy().astype(np.uint8)
    luma = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float32) / 127.5 - 1
    assert np.allclose(s["A"][0].numpy(), luma, atol=1e-6)


# ---------------------------------------------------------------- image loading

def test_mode_conversion_and_exif(tmp_path):
    Image.new("RGBA", (6, 4), (255, 0, 0, 0)).save(tmp_path / "rgba.png")
    # alpha set aside, as the service sets it aside (the old reader composited over white: (255, 255, 255))
    assert load_image(tmp_path / "rgba.png").getpixel((0, 0)) == (255, 0, 0)
    Image.new("P", (6, 4), 3).save(tmp_path / "p.png")
    assert load_image(tmp_path / "p.png").mode == "RGB"
    Image.new("CMYK", (6, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    assert load_image(tmp_path / "cmyk.jpg").mode == "RGB"
    assert load_image(tmp_path / "cmyk.jpg", "L").mode == "L"
    Image.fromarray(np.full((4, 6), 65535, np.uint16)).save(tmp_path / "deep.png")
    assert load_image(tmp_path / "deep.png").getpixel((0, 0)) == (255, 255, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    Image.new("RGB", (6, 4)).save(tmp_path / "rot.jpg", exif=exif)
    assert load_image(tmp_path / "rot.jpg").size == (4, 6)


def test_empty_and_missing_folders_name_the_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"no images found in .*empty .*\.png .*\.webp"):
        ColorizationFolder(tmp_path / "empty")
    with pytest.raises(DataError, match="nowhere"):
        HRFolder(tmp_path / "nowhere")
    with pytest.raises(DataError, match="trainA"):
        build_dataset(DataConfig(kind="unaligned", root=str(tmp_path)))


def test_corrupt_image_names_file(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    good = noise_image(tmp_path / "cut.jpg", 64, 64, seed=0)
    good.write_bytes(good.read_bytes()[:200])  # truncated JPEG
    ds = ColorizationFolder(tmp_path, load_size=None, crop_size=8)
    for i, name in enumerate(p.name for p in ds.paths):
        with pytest.raises(DataError, match=name.replace(".", r"\.")):
            ds.sample(i, rng())


# ---------------------------------------------------------------- Fashion-MNIST

def test_fashion_mnist_pad_labels_and_filter(fmnist):
    ds = FashionMNIST(fmnist, "train")
    assert len(ds) == 50 and FASHION_MNIST_CLASSES[7] == "Sneaker" and len(FASHION_MNIST_CLASSES) == 10
    s = ds.sample(3, rng())
    check_image(s["image"], (1, 32, 32))
    assert s["label"].dtype == torch.int64 and s["label"].ndim == 0 and s["label"].item() == 3
    assert torch.all(s["image"][:, :2, :] == -1) and torch.all(s["image"][:, :, -2:] == -1)
    assert torch.allclose(s["image"][0, 2:30, 2:30], torch.from_numpy(ds.images[3] / 127.5 - 1).float(), atol=1e-6)
    images, labels = ds.arrays()
    assert images.dtype == np.uint8 and images.shape == (50, 32, 32) and labels.dtype == np.int64

    kept = FashionMNIST(fmnist, "test", classes=[1, 8], image_size=64)
    assert len(kept) == 4 and set(kept.labels.tolist()) == {1, 8}
    check_image(kept.sample(0, rng())["image"], (1, 64, 64))
    assert kept.arrays()[0].shape == (4, 64, 64)

    cfg = DataConfig(kind="fashion_mnist", root=str(fmnist), classes=[0])
    assert len(build_dataset(cfg)) == 5 and len(build_dataset(cfg, "test")) == 2


def test_fashion_mnist_domains(fmnist):
    ds = build_dataset(DataConfig(kind="fashion_mnist_domains", root=str(fmnist)))
    assert isinstance(ds, FashionMNISTDomains) and len(ds) == 5
    s = ds.sample(2, rng(0))
    check_image(s["A"], (1, 28, 28))
    check_image(s["B"], (1, 28, 28))
    a_imgs = {ds.a.images[i].tobytes() for i in range(len(ds.a))}
    b_imgs = {ds.b.images[i].tobytes() for i in range(len(ds.b))}
    to_u8 = lambda t: ((t[0] + 1) * 127.5).round().byte().numpy().tobytes()  # noqa: E731
    assert to_u8(s["A"]) in a_imgs and to_u8(s["B"]) in b_imgs
    partners = {to_u8(ds.sample(0, rng(seed))["B"]) for seed in range(10)}
    assert len(partners) > 1


def test_idx_errors_name_the_file(fmnist, tmp_path):
    write_idx(fmnist / "train-labels-idx1-ubyte.gz", 2051, np.zeros(50))  # images magic on labels
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz.*2051.*2049"):
        FashionMNIST(fmnist, "train")
    raw = (fmnist / "t10k-images-idx3-ubyte").read_bytes()
    (fmnist / "t10k-images-idx3-ubyte").write_bytes(raw[:-5])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        FashionMNIST(fmnist, "test")
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        FashionMNIST(tmp_path / "nothing-here", "train")
    write_idx(tmp_path / "ok", 2049, np.arange(3))
    assert read_idx(tmp_path / "ok", 2049).tolist() == [0, 1, 2]


@pytest.mark.skipif(not (REPO / "data/fashion-mnist/manifest.json").exists(),
                    reason="real Fashion-MNIST not prepared (python -m training prepare fashion-mnist)")
def test_real_fashion_mnist_if_prepared():
    train = FashionMNIST(REPO / "data/fashion-mnist", "train")
    test = FashionMNIST(REPO / "data/fashion-mnist", "test")
    assert len(train) == 60000 and len(test) == 10000
    assert np.bincount(test.labels).tolist() == [1000] * 10
