"""Many files at once: `--concurrency` job slots (threads), progress bars, the failure list.

Files whose output exists are skipped before anything is sent (see files.py: an output exists only once
complete). Ctrl-C sets the stop event: every slot leaves its job on the server (a rerun finds it again by its
Idempotency-Key), drops its temp file and returns; the run then exits 130.
"""

from __future__ import annotations

import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from tqdm import tqdm

from .api import JobClient, JobFailed, Stopped
from .files import Task, idempotency_key


@dataclass
class Outcome:
    done: list[Task] = field(default_factory=list)
    skipped: list[Task] = field(default_factory=list)
    failed: list[tuple[Task, str]] = field(default_factory=list)
    stopped: bool = False


class Bars:
    """A total bar (files) and one bar per running file (its job's done / total); quiet when not a terminal
    unless forced."""

    def __init__(self, total: int, slots: int, enabled: bool | None) -> None:
        self.enabled, self.lock = enabled, threading.Lock()
        self.total = tqdm(total=total, desc="files", unit="file", position=0, disable=self.disabled(),
                          file=sys.stderr)
        self.free = list(range(1, slots + 1))

    def disabled(self) -> bool | None:
        return None if self.enabled is None else not self.enabled

    def file_bar(self, label: str) -> tqdm:
        with self.lock:
            position = self.free.pop(0) if self.free else 1
        return tqdm(total=1, desc=label[-40:], position=position, leave=False, disable=self.disabled(),
                    file=sys.stderr, bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt}{postfix}")

    def release(self, bar: tqdm) -> None:
        with self.lock:
            self.free.append(bar.pos if isinstance(bar.pos, int) else 1)
        bar.close()

    def close(self) -> None:
        self.total.close()


def show(bar: tqdm, job: dict) -> None:
    total, done = job.get("total") or 0, job.get("done") or 0
    if total and bar.total != total:
        bar.reset(total=total)
    if total:
        bar.n = min(done, total)
    bar.set_postfix_str(job.get("status", ""), refresh=False)
    bar.refresh()


def run_all(client: JobClient, tasks: list[Task], endpoint: str, concurrency: int,
            progress: bool | None = None, overwrite: bool = False) -> Outcome:
    outcome = Outcome()
    todo = []
    for task in tasks:
        (todo if overwrite or not task.target.exists() else outcome.skipped).append(task)
    bars = Bars(len(tasks), concurrency, progress)
    bars.total.update(len(outcome.skipped))
    lock = threading.Lock()

    def one(task: Task) -> None:
        bar = bars.file_bar(task.label)
        try:
            client.run(task, endpoint, idempotency_key(task, endpoint), lambda job: show(bar, job))
            with lock:
                outcome.done.append(task)
        except Stopped:
            return
        except (JobFailed, OSError) as exc:
            with lock:
                outcome.failed.append((task, str(exc)))
        finally:
            bars.release(bar)
        bars.total.update(1)

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        futures = [pool.submit(one, task) for task in todo]
        try:
            for future in futures:
                future.result()
        except KeyboardInterrupt:
            client.stop.set()
            outcome.stopped = True
            for future in futures:
                future.cancel()
    bars.close()
    return outcome
