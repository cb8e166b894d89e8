"""Zip archives of images for batch jobs: read untrusted ones safely, write the result one atomically.

Reading (`open_archive`, `list_members`): nothing is ever extracted to disk. The whole archive is refused, before any
member is decompressed, when:
- it is not a zip (`ArchiveError`, 400), or a member is encrypted or uses a compression zipfile lacks;
- a name could escape a folder when extracted: `..` or `.` parts, an absolute name, a drive letter, a
  backslash, an empty part, a NUL (`ArchiveError`);
- a member is a symlink (its Unix mode in the external attributes) (`ArchiveError`);
- two members have the same name, ignoring case (they would overwrite each other on a Mac or Windows);
- it has more than `max_entries` members, or declares more than `max_total_bytes` uncompressed, or a member
  over `max_member_bytes` (the per-file upload limit), or a member over 1 MiB compressed more than
  `max_ratio` times (a zip bomb) (`ArchiveTooLarge`, 413). The declared sizes are what bound the work: a
  member is never read past its declared size, and overlapping members still each count in the total.
Folders inside are fine (their entries are skipped), as are macOS's `__MACOSX/` resource forks (skipped).
`Archive.read(member)` then decompresses one member into memory, never more than its declared size (which
was checked); a damaged member raises `MemberError`, for that file alone: one bad file does not fail a batch.

Writing (`ZipWriter`): one output per input under the same relative name with the output format's
extension (`output_name`), plus `manifest.json` with each input's outcome (`ok`, or the sync API's
`{"error", "status"}`); written to a temp file beside the destination and renamed at `close()`, removed
on an error.
"""

from __future__ import annotations

import json
import os
import re
import stat
import uuid
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .imaging import ImageError, ImageTooLarge

MANIFEST = "manifest.json"
SKIPPED_PREFIXES = ("__MACOSX/",)
DRIVE = re.compile(r"^[A-Za-z]:")
RATIO_FREE_BYTES = 1 << 20  # a member this small cannot be a bomb: the entry count bounds the total
EXTENSIONS = {"png": ".png", "jpeg": ".jpg", "jpg": ".jpg", "webp": ".webp"}


class ArchiveError(ImageError):
    """An archive refused as a whole (400)."""

    status = 400


class ArchiveTooLarge(ArchiveError, ImageTooLarge):
    """Too many entries, too many bytes, or a zip bomb (413)."""

    status = 413


class MemberError(ArchiveError):
    """One member that cannot be read (damaged data, a bad CRC): that file fails, the batch goes on."""


@dataclass(frozen=True)
class ArchiveLimits:
    max_entries: int = 1000
    max_total_bytes: int = 2 * 1024**3  # declared uncompressed, all members
    max_member_bytes: int = 20 * 1024**2  # the service: GANFORGE_MAX_UPLOAD_BYTES
    max_ratio: float = 100.0  # uncompressed / compressed, per member over RATIO_FREE_BYTES (PNG, JPEG and
    # WebP barely compress; deflate tops out near 1032x, so a bomb of few entries sits far above this)


@dataclass(frozen=True)
class Member:
    name: str  # as in the archive, checked safe: "holiday/beach.png"
    size: int  # declared uncompressed bytes
    compressed: int
    info: zipfile.ZipInfo


def safe_name_problem(name: str) -> str | None:
    """Why a member name could escape the folder it is extracted into, or None."""
    if "\\" in name or "\x00" in name:
        return "a backslash or NUL in the name"
    if name.startswith("/") or DRIVE.match(name):
        return "an absolute name"
    parts = name.rstrip("/").split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "an empty, '.' or '..' part"
    return None


def is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def check_member(info: zipfile.ZipInfo, limits: ArchiveLimits) -> None:
    shown = repr(info.filename[:120])
    problem = safe_name_problem(info.filename)
    if problem:
        raise ArchiveError(f"the archive member {shown} is refused: {problem}")
    if is_symlink(info):
        raise ArchiveError(f"the archive member {shown} is a symbolic link; links are refused")
    if info.flag_bits & 0x1:
        raise ArchiveError(f"the archive member {shown} is encrypted")
    if info.file_size > limits.max_member_bytes:
        raise ArchiveTooLarge(f"the archive member {shown} is {info.file_size} bytes; the limit is "
                              f"{limits.max_member_bytes} bytes")
    if info.file_size > RATIO_FREE_BYTES and info.file_size > limits.max_ratio * max(info.compress_size, 1):
        raise ArchiveTooLarge(f"the archive member {shown} expands {info.file_size / max(info.compress_size, 1):.0f}"
                              f" times; the limit is {limits.max_ratio:g} (a zip bomb?)")


def list_members(path: str | Path, limits: ArchiveLimits = ArchiveLimits()) -> list[Member]:
    """The checked members of the archive at `path` (see `checked_members`)."""
    with open_archive(path, limits) as archive:
        return archive.members


def checked_members(zf: zipfile.ZipFile, limits: ArchiveLimits) -> list[Member]:
    """The archive's files (not its folders), in archive order, after every check above."""
    infos = zf.infolist()
    if len(infos) > limits.max_entries:
        raise ArchiveTooLarge(f"the archive has {len(infos)} entries; the limit is {limits.max_entries}")
    members, seen, total = [], set(), 0
    for info in infos:
        check_member(info, limits)
        if info.is_dir() or info.filename.startswith(SKIPPED_PREFIXES):
            continue
        key = info.filename.casefold()
        if key in seen:
            raise ArchiveError(f"the archive holds {info.filename[:120]!r} twice (names are compared ignoring case)")
        seen.add(key)
        total += info.file_size
        if total > limits.max_total_bytes:
            raise ArchiveTooLarge(f"the archive expands to more than {limits.max_total_bytes} bytes")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2,
                                      zipfile.ZIP_LZMA):
            raise ArchiveError(f"the archive member {info.filename[:120]!r} uses an unsupported compression")
        members.append(Member(info.filename, info.file_size, info.compress_size, info))
    if not members:
        raise ArchiveError("the archive holds no files")
    return members


class Archive:
    """An open, checked archive: `members`, and `read(member)` for one member's bytes."""

    def __init__(self, path: str | Path, limits: ArchiveLimits = ArchiveLimits()) -> None:
        try:
            self.zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError):
            raise ArchiveError("not a valid zip archive") from None
        try:
            self.members = checked_members(self.zip, limits)
        except BaseException:
            self.zip.close()
            raise
        self.limits = limits

    def read(self, member: Member, chunk: int = 1 << 20) -> bytes:
        """The member's bytes (at most its declared size, which was checked), or MemberError."""
        parts, left = [], member.size
        try:
            with self.zip.open(member.info) as file:
                while left > 0:
                    data = file.read(min(chunk, left))
                    if not data:
                        break
                    parts.append(data)
                    left -= len(data)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, ValueError) as exc:
            raise MemberError(f"{member.name[:120]!r} could not be read from the archive: "
                              f"{type(exc).__name__}") from None
        if left:
            raise MemberError(f"{member.name[:120]!r} is shorter than the archive says: the archive is damaged")
        return b"".join(parts)

    def close(self) -> None:
        self.zip.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_archive(path: str | Path, limits: ArchiveLimits = ArchiveLimits()) -> Archive:
    return Archive(path, limits)


def output_name(name: str, fmt: str, taken: set[str] | None = None) -> str:
    """`a/b.jpeg` -> `a/b.png` for png; when that is taken (a/b.jpg and a/b.png in one archive), the input's
    extension is kept before the new one: `a/b.jpg.png`."""
    ext = EXTENSIONS[fmt]
    path = PurePosixPath(name)
    out = str(path.with_suffix(ext)) if path.suffix else name + ext
    if taken is not None and (out.casefold() in taken or out == MANIFEST):
        out = name + ext
    return out


class ZipWriter:
    """The result archive, written to a temp file and renamed into place at `close()`.

    `add(name, data)` stores one output (images are already compressed: stored, not deflated) and records
    `ok`; `fail(name, error, status)` records the sync API's error for an input with no output.
    """

    def __init__(self, dst: str | Path, fmt: str, extra: dict | None = None) -> None:
        self.dst, self.fmt, self.extra = Path(dst), fmt, extra or {}
        self.tmp = self.dst.with_name(f".{self.dst.name}.{uuid.uuid4().hex}.tmp")
        self.zip = zipfile.ZipFile(self.tmp, "w", zipfile.ZIP_STORED)
        self.files: list[dict] = []
        self.taken: set[str] = set()

    def add(self, name: str, data: bytes) -> str:
        """Store the output for input `name`; returns its name in the archive."""
        out = output_name(name, self.fmt, self.taken)
        self.taken.add(out.casefold())
        self.zip.writestr(zipfile.ZipInfo(out, date_time=(1980, 1, 1, 0, 0, 0)), data)
        self.files.append({"name": name, "output": out, "status": "ok"})
        return out

    def fail(self, name: str, error: str, status: int) -> None:
        self.files.append({"name": name, "output": None, "status": "failed",
                           "error": {"error": error, "status": status}})

    def manifest(self) -> dict:
        ok = sum(1 for f in self.files if f["status"] == "ok")
        return {**self.extra, "format": self.fmt, "ok": ok, "failed": len(self.files) - ok, "files": self.files}

    def close(self) -> Path:
        """Write manifest.json, finish the zip and rename it over `dst`."""
        try:
            self.zip.writestr(zipfile.ZipInfo(MANIFEST, date_time=(1980, 1, 1, 0, 0, 0)),
                              json.dumps(self.manifest(), indent=1), compress_type=zipfile.ZIP_DEFLATED)
            self.zip.close()
            os.replace(self.tmp, self.dst)
        finally:
            self.abort()
        return self.dst

    def abort(self) -> None:
        """Drop the temp file (a no-op after a successful close)."""
        try:
            self.zip.close()
        except Exception:  # noqa: BLE001 - closing after a failed write; the file goes anyway
            pass
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> ZipWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
