"""A batch job's loop: every image of a checked zip through one function, into a result zip with a manifest.

`transform_archive` opens the archive (core/archive.py refuses a hostile one as a whole, before any work),
then for each member, in archive order: `check(done, total)` (raise to stop), read it, `fn(name, data)` ->
the output's bytes, `progress(done, total)`. A member that fails with what `client_error` recognises as the
client's fault (an undecodable image, one over the pixel limit, a damaged member: the sync API's 4xx) is
recorded in manifest.json with that error and the batch goes on; anything else (a cancel, a model failure,
a full disk) propagates and leaves nothing behind (the result zip is written atomically).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .archive import ArchiveLimits, ZipWriter, open_archive
from .imaging import ImageError, ImageTooLarge

Hook = Callable[[int, int], None]


@dataclass(frozen=True)
class BatchReport:
    total: int
    ok: int
    failed: int


FILE_STATUSES = (400, 413, 415, 422)  # what the sync API answers for a bad file (not 429/5xx: not the file's)


def image_error(exc: BaseException) -> tuple[str, int] | None:
    """A bad file's error -> (message, HTTP status) as the sync API answers it; None for anything else.

    core's ImageError family (its `status`, else 413 / 400), and any exception carrying a `status` among
    FILE_STATUSES and a `message` (the service's ApiError, without importing it). A cancel or a deadline must
    not raise one of those, or it would be recorded as the file's error instead of stopping the batch."""
    if isinstance(exc, ImageError):
        return str(exc), getattr(exc, "status", 413 if isinstance(exc, ImageTooLarge) else 400)
    status = getattr(exc, "status", None)
    if isinstance(status, int) and status in FILE_STATUSES:
        return str(getattr(exc, "message", exc)), status
    return None


def transform_archive(src: str | Path, dst: str | Path, fn: Callable[[str, bytes], bytes], *, fmt: str,
                      limits: ArchiveLimits = ArchiveLimits(),
                      client_error: Callable[[BaseException], tuple[str, int] | None] = image_error,
                      check: Hook | None = None, progress: Hook | None = None,
                      extra: dict | None = None) -> BatchReport:
    """See the module's notes. `fmt` names the outputs' extension (png, jpeg, webp); `extra` goes into
    manifest.json as it is (the model, the endpoint, the parameters)."""
    with open_archive(src, limits) as archive, ZipWriter(dst, fmt, extra) as writer:
        total = len(archive.members)
        for done, member in enumerate(archive.members):
            if check is not None:
                check(done, total)
            try:
                output = fn(member.name, archive.read(member))
            except Exception as exc:  # noqa: BLE001 - sorted by client_error: the client's, or re-raised
                error = client_error(exc)
                if error is None:
                    raise
                writer.fail(member.name, *error)
            else:
                writer.add(member.name, output)
            if progress is not None:
                progress(done + 1, total)
        manifest = writer.manifest()
    return BatchReport(total, manifest["ok"], manifest["failed"])
