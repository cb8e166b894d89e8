"""The model folder rules: names, sha256, durable writes, verify, lock, atomic install and rollback.

    OUT/NAME/                 card.json + the ONNX files it names (served)
    OUT/.NAME.prev/           the replaced version, for rollback (dot: never served)
    OUT/.NAME.lock            one writer of NAME at a time (flock)
    OUT/.NAME.tmp-XXXX/       a version being written (removed by the next writer after a crash)

Everything a writer publishes is written into a staging folder, fsynced and swapped
into place in one `renameat2(RENAME_EXCHANGE)` where Linux offers it (else two
renames), so a running service never sees a half-written model.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import hashlib
import os
import re
import secrets
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from .card import NAME_PATTERN, Card, FileEntry
from .typed import CardError, CardUnreadable

NAME_RE = re.compile(f"^{NAME_PATTERN}$")
CARD_FILE = "card.json"


class ModelDirError(ValueError):
    """A model folder does not match its card (missing, truncated or changed file, bad card)."""


class LockBusy(RuntimeError):
    """Another writer holds the model's lock."""


# ------------------------------------------------------------------ names and hashes

def check_name(name: Any) -> str:
    """A valid model name (the folder under models/), else ValueError saying the rule."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValueError(f"invalid model name {name!r}: use {NAME_RE.pattern} (lowercase, digits, . _ -)")
    return name


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_entry(folder: Path, filename: str) -> FileEntry:
    path = Path(folder) / filename
    return FileEntry(path=filename, sha256=sha256_file(path), bytes=path.stat().st_size)


def utc_now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def utc_stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def content_version(folder: Path, files: list[str], when: datetime) -> str:
    """sha256 (12 hex) over every ONNX file's name + sha256, + the export time: the card's `version`."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name} {sha256_file(Path(folder) / name)}\n".encode())
    return f"{h.hexdigest()[:12]}-{when.strftime('%Y%m%dT%H%M%SZ')}"


# ------------------------------------------------------------------ durable writes

def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_durably(path: Path, data: bytes) -> None:
    """Write and fsync a file (inside a staging folder that is swapped in as a whole)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write(path: Path, write: Callable[[Any], Any]) -> None:
    """Call write(file) on a temp file beside `path`, fsync it, rename it into place, fsync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # not mkstemp (always 0600): created as open() would, 0666 & ~umask, so that a card or model written
    # here stays readable by the service's own (non-root) user
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_staging(out: Path, prefix: str) -> Path:
    """A new dot folder under OUT (never served), with the umask's mode (mkdtemp makes 0700, and the
    service may run as another user)."""
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=out))
    os.chmod(staging, 0o777 & ~current_umask())
    return staging


# ------------------------------------------------------------------ cards

def read_card(folder: Path, check_folder_name: bool = False) -> Card:
    """The folder's card, validated (CardError names the field). `check_folder_name`: the card's
    name must be the folder's (a served folder; staging and .prev folders have other names)."""
    path = Path(folder) / CARD_FILE
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise CardUnreadable("card.json is missing") from None
    return Card.from_json(text, Path(folder).name if check_folder_name else None)


def write_card(folder: Path, card: Card) -> None:
    """Rewrite card.json atomically (temp file + rename in the same folder)."""
    data = card.to_json()
    atomic_write(Path(folder) / CARD_FILE, lambda f: f.write(data))


def write_card_durably(folder: Path, card: Card) -> None:
    """card.json inside a staging folder (published with the folder)."""
    write_bytes_durably(Path(folder) / CARD_FILE, card.to_json())


# ------------------------------------------------------------------ verify

def verify_model_dir(path: str | Path, deep: bool = False) -> Card:
    """Re-check a model folder against its card; returns the card.

    The card must validate, and every file it names (roles and variants) must exist with
    the card's byte count and sha256; the files of a `built` variant may be absent (not built yet). `deep=True` also runs the ONNX checker and opens an
    onnxruntime CPU session on each file. Raises ModelDirError naming the file and the fault.
    """
    folder = Path(path)
    card_path = folder / CARD_FILE
    if not card_path.is_file():
        raise ModelDirError(f"{card_path} is missing")
    try:
        card = read_card(folder)
    except (OSError, CardError) as e:
        raise ModelDirError(f"{card_path} is invalid: {e}") from e
    required = {what for what, _ in card.file_names(built=False)}
    for what, entry in card.file_names():
        file = folder / entry.path
        if not file.is_file():
            if what not in required:
                continue  # a build-time variant not built here (python -m training fp16)
            raise ModelDirError(f"{file} ({what}) is missing")
        size = file.stat().st_size
        if entry.bytes is not None and size != entry.bytes:
            kind = "truncated" if size < entry.bytes else "longer than the card says"
            raise ModelDirError(f"{file} ({what}) is {kind}: {size} bytes, the card says {entry.bytes}")
        digest = sha256_file(file)
        if digest != entry.sha256:
            raise ModelDirError(f"sha256 mismatch for {file} ({what}): file has {digest}, "
                                f"the card says {entry.sha256}; the file is corrupt or was changed")
        if deep:
            _deep_check(file, what)
    return card


def _deep_check(file: Path, what: str) -> None:
    import onnx
    import onnxruntime as ort

    try:
        onnx.checker.check_model(str(file), full_check=True)
        ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnx and onnxruntime raise several types
        raise ModelDirError(f"{file} ({what}) is not a loadable ONNX model: {type(e).__name__}: {e}") from e


# ------------------------------------------------------------------ lock, install, rollback

RENAME_EXCHANGE = 2
AT_FDCWD = -100


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE). False when the OS/filesystem cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"renameat2({a}, {b}, RENAME_EXCHANGE): {os.strerror(err)}")


def rename(src: Path, dst: Path) -> None:
    os.rename(src, dst)


@contextlib.contextmanager
def model_lock(out: Path, name: str, wait: bool = False) -> Iterator[None]:
    """One export/rollback/eval-write of NAME at a time (flock on OUT/.NAME.lock); LockBusy when taken."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / f".{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise LockBusy(f"another export or rollback of {name!r} is running in {out}") from None
        yield
    finally:
        os.close(fd)


def install(staging: Path, out: Path, name: str, log: Callable[[str], Any] = print) -> None:
    """Move a fully written, fsynced `staging` folder into OUT/NAME; the old one becomes OUT/.NAME.prev.

    With RENAME_EXCHANGE there is no instant without OUT/NAME. Without it, OUT/NAME is
    renamed to .prev and staging into place; if the second rename fails, .prev is moved
    back. Once the new version is live, a failure to keep the old one as .prev is only
    a warning (the old version is then left in `staging`).
    """
    target, prev = out / name, out / f".{name}.prev"
    if target.exists():
        if exchange(staging, target):  # published; staging now holds the old version
            fsync_dir(out)
            try:
                if prev.exists():
                    shutil.rmtree(prev)
                rename(staging, prev)
            except OSError as e:  # the new model is live: do not fail the export over the rollback copy
                log(f"warning: published, but could not keep the old version as {prev} ({e}); "
                    f"it is left in {staging}")
        else:
            if prev.exists():
                shutil.rmtree(prev)
            replace_by_renames(staging, target, prev)
    else:
        rename(staging, target)
    fsync_dir(out)


def replace_by_renames(new: Path, target: Path, aside: Path) -> None:
    """Where RENAME_EXCHANGE is missing: target -> aside, then new -> target; if that second rename
    fails, aside goes back to target (an instant without target, never a lost version)."""
    rename(target, aside)
    try:
        rename(new, target)
    except BaseException:
        with contextlib.suppress(OSError):
            rename(aside, target)
        raise


@contextlib.contextmanager
def staged_version(out: Path, name: str, log: Callable[[str], Any] = print) -> Iterator[Path]:
    """Under NAME's lock, a fresh staging folder to write a new version into; on a normal exit of the
    block it is fsynced and installed as OUT/NAME, on an exception (or `raise NotPublished`) removed.
    Stale staging folders of NAME (a crashed writer's) are removed first."""
    out = Path(out)
    with model_lock(out, name):
        for stale in out.glob(f".{name}.tmp-*"):  # we hold the lock: nobody is writing them
            shutil.rmtree(stale, ignore_errors=True)
        staging = make_staging(out, f".{name}.tmp-")
        try:
            yield staging
        except NotPublished:
            shutil.rmtree(staging, ignore_errors=True)
            return
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        fsync_dir(staging)
        try:
            install(staging, out, name, log)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


class NotPublished(Exception):
    """Raised inside `staged_version` to drop the staged version on purpose (dry run, nothing to do)."""


def rollback(out: Path, name: str) -> Card:
    """Swap OUT/.NAME.prev back into OUT/NAME (verified first); the replaced version becomes .NAME.prev,
    so rolling back twice rolls forward. Returns the card now served."""
    out = Path(out)
    check_name(name)
    target, prev = out / name, out / f".{name}.prev"
    with model_lock(out, name):
        if not prev.is_dir():
            raise ModelDirError(f"nothing to roll back to: {prev} does not exist")
        try:
            card = verify_model_dir(prev)
        except ModelDirError as e:
            raise ModelDirError(f"refusing to roll back to a damaged version: {e}") from e
        if target.exists():
            if not exchange(prev, target):
                hold = out / f".{name}.rollback-tmp"
                if hold.exists():
                    shutil.rmtree(hold)
                replace_by_renames(prev, target, hold)
                rename(hold, prev)
        else:
            rename(prev, target)
        fsync_dir(out)
    return card
