"""What to send and where its result goes: the walk, mirrored output names, idempotency keys, atomic writes.

Resuming rests on two rules. An output file exists only once complete (it is written to a temp name beside
it and renamed), so "it exists" means "it is done" and a rerun skips it. And a file's Idempotency-Key is the
sha256 of its bytes, the endpoint and the parameters, so a rerun that submits it again gets the job the
server already has (running or finished) instead of starting the work over.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
VIDEO_EXTENSIONS = {".mp4", ".m4v", ".mov", ".mkv", ".webm"}
ARCHIVE_EXTENSIONS = {".zip"}  # a zip of images: one batch job, a zip of results (+ manifest.json) back
OUTPUT_EXTENSIONS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp", "mp4": ".mp4", "webm": ".webm"}
MEDIA_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
               ".gif": "image/gif", ".bmp": "image/bmp", ".tif": "image/tiff", ".tiff": "image/tiff",
               ".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/quicktime",
               ".mkv": "video/x-matroska", ".webm": "video/webm", ".zip": "application/zip"}
PART_SUFFIX = ".part"


@dataclass(frozen=True)
class Task:
    """One file to send (or none, for /generate) and where its result goes."""

    source: Path | None
    target: Path
    label: str  # what the progress bars and the failure list call it (the relative path)
    field: str | None  # multipart field: "image", "video" or "archive"; None for /generate (JSON)
    params: dict

    @property
    def is_video(self) -> bool:
        return self.field == "video"


def kind(path: Path) -> str | None:
    ext = path.suffix.lower()
    if ext in ARCHIVE_EXTENSIONS:
        return "archive"
    return "image" if ext in IMAGE_EXTENSIONS else "video" if ext in VIDEO_EXTENSIONS else None


def walk(root: Path) -> Iterator[Path]:
    """Image, video and zip files under `root`, recursively, sorted; hidden files and folders are skipped."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(folder) / name
            if not name.startswith(".") and kind(path):
                yield path


def plan(source: Path, output: Path, params: dict, image_format: str, video_format: str,
         into_folder: bool = False) -> list[Task]:
    """A task per input: a folder maps onto a folder (the tree kept), a file onto a file or into a folder."""
    def task(path: Path, target: Path, label: str) -> Task:
        field = kind(path)
        fmt = video_format if field == "video" else image_format
        suffix = ".zip" if field == "archive" else OUTPUT_EXTENSIONS[fmt]
        return Task(path, target.with_suffix(suffix), label, field, {**params, "format": fmt})

    if source.is_dir():
        return distinct([task(p, output / p.relative_to(source), str(p.relative_to(source))) for p in walk(source)])
    if not kind(source):
        raise ValueError(f"{source}: not an image or video this client knows ({', '.join(sorted(MEDIA_TYPES))})")
    target = output / source.name if into_folder or output.is_dir() else output
    return [task(source, target, source.name)]


def distinct(tasks: list[Task]) -> list[Task]:
    """photo.jpg and photo.png both become photo.png: the later one (in walk order, so the same on every run)
    keeps its own extension before the new one, photo.png.png."""
    seen: set[str] = set()
    out = []
    for task in tasks:
        key = str(task.target).casefold()
        if key in seen:
            task = dataclasses.replace(task, target=task.target.with_name(task.source.name + task.target.suffix))
            key = str(task.target).casefold()
        seen.add(key)
        out.append(task)
    return out


def idempotency_key(task: Task, endpoint: str) -> str:
    """sha256 of the file's bytes, the endpoint and the parameters (hex)."""
    digest = hashlib.sha256()
    if task.source is not None:
        with open(task.source, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    digest.update(b"\0" + endpoint.encode() + b"\0" + json.dumps(task.params, sort_keys=True).encode())
    return digest.hexdigest()


def part_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.{os.getpid()}{PART_SUFFIX}")


def clear_stale_parts(target: Path) -> None:
    """Temp files a killed run left for this output (any process id)."""
    if target.parent.is_dir():
        for stale in target.parent.glob(f".{glob_escape(target.name)}.*{PART_SUFFIX}"):
            stale.unlink(missing_ok=True)


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def publish(part: Path, target: Path) -> None:
    """The finished temp file becomes the output, in one rename."""
    with open(part, "rb") as file:
        os.fsync(file.fileno())
    os.replace(part, target)
