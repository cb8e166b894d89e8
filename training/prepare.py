"""Build the default datasets from Debian packages (no internet needed beyond the apt mirror).

    python -m training prepare fashion-mnist [--out data]
    python -m training prepare photos [--out data]

Each package is fetched with ``apt-get download`` into ``<out>/.debs/`` (kept
as a cache: a .deb already there is not downloaded again) and unpacked with
``dpkg-deb -x`` into a temporary folder; neither needs root. Outputs are
built in a temporary folder next to the target and renamed into place, so a
reader never sees a half-written dataset. ``<out>/<name>/manifest.json``
records the packages (name, version, .deb sha256) and every output file
(path, split, sha256, bytes, source). Re-running with a complete manifest is
a no-op; ``--force`` rebuilds.

fashion-mnist -> ``<out>/fashion-mnist/``: the four official idx .gz files,
byte-identical to the package. ``train-*`` (60k) is the training split,
``t10k-*`` (10k) the held-out split.

photos -> ``<out>/photos/{train,test}/``: the real photographs of
``mate-backgrounds`` (everything in ``nature/``) and of
``plasma-workspace-wallpapers`` (the explicit list ``PLASMA_PHOTOS``; the
rest of that package is digital art). Each photo is assigned to a split by
the sha256 of its file content (``split_by_hash``), so the split never
depends on file names or order. Held-out photos are copied byte-identical
(full resolution, original format); training photos are cut into 512 x 512
PNG tiles (lossless, no resampling, tiles cover the whole photo with the
last row/column aligned to the edge), which makes random crops cheap to load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from PIL import Image, ImageOps

from contract.folder import sha256_file

from modelops.cli import options_from_args

NAMES = ("fashion-mnist", "photos")

FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
FASHION_MNIST_DIR = "usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "train",
    "train-labels-idx1-ubyte.gz": "train",
    "t10k-images-idx3-ubyte.gz": "test",
    "t10k-labels-idx1-ubyte.gz": "test",
}

MATE_PACKAGE = "mate-backgrounds"
MATE_PHOTO_DIR = "usr/share/backgrounds/mate/nature"  # all 12 are photographs
PLASMA_PACKAGE = "plasma-workspace-wallpapers"
PLASMA_DIR = "usr/share/wallpapers"
# Chosen by looking at every wallpaper of plasma-workspace-wallpapers 4:5.27.5-2;
# all but Grey, EveningGlow and summer_1am also carry camera EXIF (Olympus
# E-M1, Canon EOS 70D, Sony NEX-3N, Nokia N9). Grey is a monochrome (mode L)
# architecture photo; it is written as 3 equal RGB channels.
PLASMA_PHOTOS = (
    "BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow",
    "FallenLeaf", "Grey", "Kite", "OneStandsOut", "Path", "summer_1am",
)
# The rest is digital art / illustration (low-poly, vector, painted), excluded:
# Altai, Autumn (painting), Canopee, Cascade, Cluster, Elarun, Flow,
# FlyingKonqui, Honeywave, IceCold, Kay, Kokkini, MilkyWay, Opal, PastelHills,
# Patak, SafeLanding, Shell, Volna.

HOLDOUT_FRACTION = 0.18
MIN_HOLDOUT = 4
TILE = 512


class PrepareError(RuntimeError):
    """A prepare step failed; the message says which and what to do."""


@dataclass
class Package:
    """One fetched and unpacked Debian package."""

    name: str
    version: str
    deb: str       # .deb file name in the cache
    sha256: str    # of the .deb
    root: Path     # where it was unpacked

    def record(self) -> dict:
        return {"package": self.name, "version": self.version, "deb": self.deb, "sha256": self.sha256}


Fetch = Callable[[str, Path, Path], Package]  # (package, deb cache dir, unpack dir) -> Package


# ---------------------------------------------------------------- small pure helpers

def split_by_hash(hashes: dict[str, str], fraction: float = HOLDOUT_FRACTION,
                  min_holdout: int = MIN_HOLDOUT) -> dict[str, str]:
    """Assign each key "train" or "test" from its content sha256 (hex).

    A key is held out when its hash, read as a number in [0, 1), is below
    ``fraction``; if that holds out fewer than ``min_holdout``, the smallest
    hashes fill up the rest. Depends on content only, never on names or order.
    """
    order = sorted(hashes, key=lambda k: (hashes[k], k))
    test = {k for k in order if int(hashes[k], 16) / 16 ** len(hashes[k]) < fraction}
    test |= set(order[:min(min_holdout, len(order))])
    return {k: "test" if k in test else "train" for k in hashes}


def tile_boxes(width: int, height: int, tile: int = TILE) -> list[tuple[int, int, int, int]]:
    """Boxes of ``tile`` x ``tile`` covering the image; the last row/column is aligned to the edge.

    An image smaller than ``tile`` on a side gives a single box of the whole image.
    """
    def starts(n: int) -> list[int]:
        if n <= tile:
            return [0]
        s = list(range(0, n - tile + 1, tile))
        return s if s[-1] == n - tile else s + [n - tile]
    return [(x, y, min(x + tile, width), min(y + tile, height))
            for y in starts(height) for x in starts(width)]


def manifest_complete(folder: Path) -> bool:
    """True if ``folder/manifest.json`` exists and every file it lists is there with its size."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return bool(files) and all(
        (folder / f["path"]).is_file() and (folder / f["path"]).stat().st_size == f["bytes"] for f in files
    )


def _file_entry(staging: Path, path: Path, split: str, source: str, **extra) -> dict:
    return {"path": path.relative_to(staging).as_posix(), "split": split, "sha256": sha256_file(path),
            "bytes": path.stat().st_size, "source": source, **extra}


# ---------------------------------------------------------------- apt

def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise PrepareError(f"`{cmd[0]}` not found: prepare needs a Debian/Ubuntu system with apt and dpkg") from e


def _cached_deb(package: str, cache: Path) -> Path | None:
    debs = sorted(cache.glob(f"{package}_*.deb"), key=lambda p: p.stat().st_mtime)
    return debs[-1] if debs else None


def download_deb(package: str, cache: Path) -> Path:
    """``apt-get download`` into ``cache`` unless a .deb of ``package`` is already there."""
    cache.mkdir(parents=True, exist_ok=True)
    if (deb := _cached_deb(package, cache)) is not None:
        print(f"  using cached {deb}", file=sys.stderr)
        return deb
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        print(f"  apt-get download {package}", file=sys.stderr)
        result = _run(["apt-get", "download", package], cwd=Path(tmp))
        if result.returncode != 0 and "Unable to locate package" in result.stderr:
            print(f"  apt does not know {package} yet; running apt-get update", file=sys.stderr)
            update = _run(["apt-get", "update"])
            if update.returncode != 0:
                raise PrepareError(f"apt-get update failed (run it as root, then retry):\n{update.stderr.strip()}")
            result = _run(["apt-get", "download", package], cwd=Path(tmp))
        debs = list(Path(tmp).glob(f"{package}_*.deb"))
        if result.returncode != 0 or not debs:
            raise PrepareError(f"apt-get download {package} failed:\n{result.stderr.strip()}\n"
                               f"(is the package in your apt sources? try `apt-get update`)")
        deb = cache / debs[0].name
        os.replace(debs[0], deb)
    return deb


def fetch_package(package: str, cache: Path, unpack_to: Path) -> Package:
    """Download (or reuse) the .deb and unpack it with ``dpkg-deb -x``."""
    deb = download_deb(package, cache)
    version = _run(["dpkg-deb", "-f", str(deb), "Version"])
    if version.returncode != 0:
        raise PrepareError(f"cannot read {deb} (delete it and retry): {version.stderr.strip()}")
    unpack_to.mkdir(parents=True, exist_ok=True)
    unpacked = _run(["dpkg-deb", "-x", str(deb), str(unpack_to)])
    if unpacked.returncode != 0:
        raise PrepareError(f"dpkg-deb -x {deb} failed (delete it and retry): {unpacked.stderr.strip()}")
    return Package(package, version.stdout.strip(), deb.name, sha256_file(deb), unpack_to)


# ---------------------------------------------------------------- the datasets

def _build_fashion_mnist(fetch: Fetch, cache: Path, work: Path, staging: Path) -> tuple[list, list, dict]:
    pkg = fetch(FASHION_MNIST_PACKAGE, cache, work / FASHION_MNIST_PACKAGE)
    files = []
    for name, split in FASHION_MNIST_FILES.items():
        src = pkg.root / FASHION_MNIST_DIR / name
        if not src.is_file():
            raise PrepareError(f"{pkg.name} {pkg.version} has no {FASHION_MNIST_DIR}/{name}")
        shutil.copyfile(src, staging / name)
        files.append(_file_entry(staging, staging / name, split, f"{pkg.name}:{FASHION_MNIST_DIR}/{name}"))
    notes = {"processing": "official idx .gz files copied byte-identical; "
                           "train-* (60000) = train, t10k-* (10000) = held-out test"}
    return [pkg], files, notes


def _largest_image(folder: Path) -> Path | None:
    def pixels(p: Path) -> int:
        with Image.open(p) as im:
            return im.size[0] * im.size[1]
    # Plasma ships one real file per wallpaper; the other sizes are symlinks to it.
    images = sorted(p for p in folder.glob("*")
                    if p.suffix.lower() in (".jpg", ".jpeg", ".png") and not p.is_symlink())
    return max(images, key=pixels) if images else None


def select_photos(mate: Package, plasma: Package) -> dict[str, tuple[Path, str]]:
    """{output stem: (file, source id)} for every photograph in the two packages."""
    photos: dict[str, tuple[Path, str]] = {}
    nature = mate.root / MATE_PHOTO_DIR
    for path in sorted(nature.glob("*")):
        if path.suffix.lower() in (".jpg", ".jpeg", ".png") and not path.is_symlink():
            photos[f"mate-{path.stem}"] = (path, f"{mate.name}:{MATE_PHOTO_DIR}/{path.name}")
    for name in PLASMA_PHOTOS:
        path = _largest_image(plasma.root / PLASMA_DIR / name / "contents" / "images")
        if path is None:
            print(f"  warning: {plasma.name} {plasma.version} has no wallpaper {name}; skipped", file=sys.stderr)
            continue
        rel = path.relative_to(plasma.root).as_posix()
        photos[f"plasma-{name}"] = (path, f"{plasma.name}:{rel}")
    if not photos:
        raise PrepareError(f"no photographs found in {mate.name} ({MATE_PHOTO_DIR}) or {plasma.name}")
    return photos


def write_photo_outputs(photos: dict[str, tuple[Path, str]], staging: Path) -> list[dict]:
    """Split by content hash; copy held-out photos, tile training photos. Returns manifest entries."""
    hashes = {stem: sha256_file(path) for stem, (path, _) in photos.items()}
    # The same photo shipped twice (e.g. in both packages) must not land in both splits.
    unique: dict[str, str] = {}
    for stem in sorted(photos):
        unique.setdefault(hashes[stem], stem)
    splits = split_by_hash({stem: h for h, stem in unique.items()})
    files = []
    for stem, split in sorted(splits.items()):
        path, source = photos[stem]
        extra = {"source_sha256": hashes[stem]}
        (staging / split).mkdir(exist_ok=True)
        if split == "test":
            out = staging / "test" / f"{stem}{path.suffix.lower()}"
            shutil.copyfile(path, out)
            with Image.open(out) as im:
                extra["size"] = list(im.size)
            files.append(_file_entry(staging, out, split, source, **extra))
            continue
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
        for box in tile_boxes(*im.size):
            out = staging / "train" / f"{stem}_y{box[1]:04d}_x{box[0]:04d}.png"
            im.crop(box).save(out, compress_level=6)
            files.append(_file_entry(staging, out, split, source, box=list(box), **extra))
    return files


def _build_photos(fetch: Fetch, cache: Path, work: Path, staging: Path) -> tuple[list, list, dict]:
    mate = fetch(MATE_PACKAGE, cache, work / MATE_PACKAGE)
    plasma = fetch(PLASMA_PACKAGE, cache, work / PLASMA_PACKAGE)
    photos = select_photos(mate, plasma)
    files = write_photo_outputs(photos, staging)
    held_out = sorted({f["source"] for f in files if f["split"] == "test"})
    trained = sorted({f["source"] for f in files if f["split"] == "train"})
    notes = {
        "processing": (f"held-out (test) photos copied byte-identical at full resolution; training "
                       f"photos cut into {TILE}x{TILE} PNG tiles (RGB, EXIF-orientation applied, no "
                       f"resampling; last row/column aligned to the image edge, so edge tiles overlap)"),
        "split_rule": (f"per source photo by sha256 of its file content: held out when "
                       f"int(sha256)/2^256 < {HOLDOUT_FRACTION}, topped up with the smallest hashes "
                       f"to at least {MIN_HOLDOUT}"),
        "selection": (f"{MATE_PACKAGE}: all of {MATE_PHOTO_DIR}/; {PLASMA_PACKAGE}: the largest image of "
                      f"{', '.join(PLASMA_PHOTOS)} (the photographic wallpapers; the rest is digital art)"),
        "photos": {"train": trained, "test": held_out},
    }
    return [mate, plasma], files, notes


BUILDERS = {"fashion-mnist": _build_fashion_mnist, "photos": _build_photos}


@dataclass(frozen=True, kw_only=True)
class PrepareOptions:
    """`python -m training prepare NAME ...` (its --help says what each does)."""
    name: str  # the dataset: one of NAMES
    out: str | Path = "data"  # the data root: the dataset goes to OUT/NAME
    force: bool = False  # rebuild even if the manifest is complete


def prepare(opts: PrepareOptions, *, fetch: Fetch = fetch_package) -> Path:
    """Build dataset ``name`` into ``out/name`` (atomically) and return that folder.

    A no-op when ``out/name/manifest.json`` is complete, unless ``force``.
    ``fetch`` is the package source (tests pass a fake one).
    """
    name = opts.name
    if name not in BUILDERS:
        raise PrepareError(f"unknown dataset {name!r}; choose from {', '.join(NAMES)}")
    out = Path(opts.out)
    target = out / name
    if not opts.force and manifest_complete(target):
        print(f"{target} is already prepared (manifest complete); nothing to do", file=sys.stderr)
        return target
    out.mkdir(parents=True, exist_ok=True)
    cache = out / ".debs"
    with tempfile.TemporaryDirectory(dir=out, prefix=f".prepare-{name}-") as tmp:
        work, staging = Path(tmp) / "unpacked", Path(tmp) / name
        staging.mkdir()
        print(f"preparing {name} -> {target}", file=sys.stderr)
        packages, files, notes = BUILDERS[name](fetch, cache, work, staging)
        counts = {split: sum(f["split"] == split for f in files) for split in ("train", "test")}
        manifest = {
            "name": name,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "packages": [p.record() for p in packages],
            **notes,
            "counts": counts,
            "files": sorted(files, key=lambda f: f["path"]),
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        if target.exists():  # replace: move the old one aside, then swap in
            old = Path(tmp) / "old"
            os.replace(target, old)
        os.replace(staging, target)
    print(f"{target}: {counts['train']} train + {counts['test']} test files", file=sys.stderr)
    return target


# ---------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training prepare",
                                     description="Build a default dataset (fashion-mnist, photos) from Debian "
                                                 "packages, with a held-out split and a manifest.")
    parser.add_argument("name", choices=NAMES, help="dataset to build")
    parser.add_argument("--out", type=Path, default=Path("data"), help="data root (default: data)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the manifest is complete")
    return parser


def main(argv: list[str] | None = None) -> int:
    opts = options_from_args(PrepareOptions, build_parser().parse_args(argv))
    try:
        path = prepare(opts)
    except PrepareError as e:
        print(f"prepare {opts.name}: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
