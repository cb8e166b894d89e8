"""The job folder's files: uploads under `inputs/<id>/`, results as `results/<id>`, both written atomically.

A file is written to a temporary name in its final folder, flushed and fsynced, then renamed into
place (and the folder fsynced): a reader, a restarted server or a crash sees the whole file or none.
A write that runs out of space (ENOSPC, EDQUOT) removes its temporary file and raises `StorageFull`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import time
from pathlib import Path

from ..errors import ApiError

FULL = (errno.ENOSPC, errno.EDQUOT)


class StorageFull(ApiError):
    """The jobs folder has no room left: 507 (Insufficient Storage)."""

    def __init__(self, what: str) -> None:
        super().__init__(507, f"the server's job storage (GANFORGE_JOBS_DIR) is full: could not write {what}; "
                              "nothing was kept. Retry later, or send a smaller request")


def write_atomic(path: Path, data: bytes, what: str) -> None:
    """`data` at `path`, all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in FULL:
            raise StorageFull(what) from None
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class JobFiles:
    """Paths under GANFORGE_JOBS_DIR."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.inputs = root / "inputs"
        self.results = root / "results"

    def make(self) -> None:
        for folder in (self.root, self.inputs, self.results):
            folder.mkdir(parents=True, exist_ok=True)

    def input_path(self, job_id: str, name: str) -> Path:
        return self.inputs / job_id / name

    def result_path(self, job_id: str) -> Path:
        return self.results / job_id

    def save_input(self, job_id: str, name: str, data: bytes) -> None:
        try:
            write_atomic(self.input_path(job_id, name), data, "the upload")
        except BaseException:
            self.drop_inputs(job_id)
            raise

    def save_result(self, job_id: str, data: bytes) -> None:
        write_atomic(self.result_path(job_id), data, "the result")

    def drop_inputs(self, job_id: str) -> None:
        shutil.rmtree(self.inputs / job_id, ignore_errors=True)

    def drop(self, job_id: str) -> None:
        """Everything of one job: its inputs and its result."""
        self.drop_inputs(job_id)
        self.result_path(job_id).unlink(missing_ok=True)

    def sweep_temporaries(self, older_than_s: float = 600.0) -> None:
        """Temporary files a killed process left behind (not one another worker is writing now)."""
        cutoff = time.time() - older_than_s
        for folder in (self.results, *self.inputs.glob("*")):
            for tmp in folder.glob(".*.tmp"):
                with contextlib.suppress(OSError):
                    if tmp.stat().st_mtime < cutoff:
                        tmp.unlink()
