"""The training loop: data, steps, logging, sample grids, checkpoints, resume and DDP.

Determinism: the batch at step s and every random draw inside it are functions of
(seed, s, rank) alone, not of the process history. So resuming needs only the
checkpointed step and state, and `N steps + resume + N steps` equals `2N steps`.
Multi-process: launch with `torchrun --nproc_per_node=K -m training train ...`;
`train.batch_size` is the global batch, split evenly across processes.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from . import checkpoint as ckpt
from modelops.cli import options_from_args
from .config import RunConfig, load_config
from .precision import Precision, TrainingDiverged, resolve
from .registry import get_recipe_class


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_pref: str) -> tuple[DistInfo, torch.device]:
    info = DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                    int(os.environ.get("LOCAL_RANK", 0)))
    device = pick_device(device_pref, info.local_rank)
    if info.world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return info, device


def pick_device(pref: str, local_rank: int = 0) -> torch.device:
    if pref == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if pref == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("train.device=cuda but no CUDA device is available")
        return torch.device(f"cuda:{local_rank}")
    return torch.device(pref)


def _mix(*ints: int) -> int:
    """A 63-bit seed from several integers (stable across processes and platforms)."""
    return int(np.random.SeedSequence(list(ints)).generate_state(2, dtype=np.uint32).view(np.uint64)[0] >> 1)


def init_seed(seed: int) -> int:
    """The torch seed networks are initialised with."""
    return _mix(seed, 0)


class StepBatches(torch.utils.data.Dataset):
    """Item i = this process's share of the global batch of step `start + i`.

    Samples are drawn epoch by epoch from a seeded permutation; each sample's own
    augmentation rng is seeded by (seed, step, slot), so a batch never depends on
    what came before it, on the number of loader workers, or on a restart.
    """

    def __init__(self, reader, seed: int, batch_size: int, start: int, steps: int, rank: int = 0, world: int = 1):
        if batch_size % world:
            raise ValueError(f"train.batch_size {batch_size} must be divisible by the {world} processes")
        if len(reader) == 0:
            raise ValueError("the training dataset is empty")
        self.reader, self.seed, self.batch = reader, seed, batch_size
        self.start, self.steps, self.rank, self.world = start, steps, rank, world
        self._perm: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def _index(self, position: int) -> int:
        n = len(self.reader)
        epoch = position // n
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, 7919, epoch]).permutation(n))
        return int(self._perm[1][position % n])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        step = self.start + i
        samples = []
        for slot in range(self.rank, self.batch, self.world):
            index = self._index(step * self.batch + slot)
            samples.append(self.reader.sample(index, np.random.default_rng([self.seed, step, slot])))
        return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}


def git_commit() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def dataset_manifest(root: str | None) -> dict:
    """Name and sha256 of the dataset's manifest.json (written by `prepare`), when there is one."""
    import hashlib
    import json
    if not root:
        return {}
    for candidate in (Path(root) / "manifest.json", Path(root).parent / "manifest.json"):
        if candidate.is_file():
            data = candidate.read_bytes()
            info = {"manifest": str(candidate), "manifest_sha256": hashlib.sha256(data).hexdigest()}
            try:
                m = json.loads(data)
                info["source"] = m.get("packages") or m.get("source")
                info["name"] = m.get("name")
            except ValueError:
                pass
            return info
    return {"root": str(root)}


class MetricsLog:
    """metrics.csv: one row per logged step; on resume, rows past the resumed step are dropped."""

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        self.fields: list[str] | None = None
        if path.exists():
            with path.open() as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
            if rows:
                self.fields = list(rows[0].keys())
            with path.open("w", newline="") as f:
                if self.fields:
                    w = csv.DictWriter(f, self.fields)
                    w.writeheader()
                    w.writerows(rows)

    def write(self, row: dict) -> None:
        if self.fields is None:
            self.fields = list(row.keys())
            with self.path.open("w", newline="") as f:
                csv.DictWriter(f, self.fields).writeheader()
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, self.fields, extrasaction="ignore").writerow(row)


def plot_losses(csv_path: Path, png_path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    skip = {"step", "elapsed_s", "it_s", "lr"}
    keys = [k for k in rows[0] if k not in skip]
    steps = [int(r["step"]) for r in rows]
    fig, axes = plt.subplots(len(keys), 1, figsize=(8, 2.2 * len(keys)), sharex=True, squeeze=False)
    for ax, k in zip(axes[:, 0], keys):
        ax.plot(steps, [float(r[k]) for r in rows], lw=1)
        ax.set_ylabel(k)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    ckpt.atomic_write(png_path, lambda f: f.write(buf.getvalue()))


def save_grid(images: torch.Tensor, nrow: int, path: Path) -> None:
    from torchvision.utils import make_grid
    from PIL import Image

    grid = make_grid(images.detach().float().cpu().clamp(-1, 1), nrow=nrow, normalize=True, value_range=(-1, 1),
                     padding=2, pad_value=1.0)
    array = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    image = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    ckpt.atomic_write(path, lambda f: f.write(buf.getvalue()))


class _Stop(Exception):
    pass


def build_reader(cfg: RunConfig, split: str = "train"):
    from .data import DataConfig, build_dataset
    return build_dataset(DataConfig(**cfg.data), split=split)


def train(cfg: RunConfig, *, resume: bool = False, out_dir: str | None = None, log=print) -> Path:
    """Run (or continue) a training run; returns the run folder."""
    run = _setup(cfg, resume, out_dir, log)
    _run_steps(run, log)
    _finish(run, log)
    return run.run_dir


@dataclass(frozen=True, kw_only=True)
class TrainOptions:
    """`python -m training train CONFIG [key=value ...]` (its --help says what each does)."""
    config: str | Path  # the YAML config
    overrides: Sequence[str] = ()  # dotted key=value pairs, e.g. train.steps=200
    resume: bool = False  # continue from the newest valid checkpoint in the run folder
    out: str | None = None  # the run folder (default: train.out_dir of the config)


def train_from_options(opts: TrainOptions, log=print) -> Path:
    """The config read and overridden, then `train`; returns the run folder."""
    return train(load_config(opts.config, opts.overrides), resume=opts.resume, out_dir=opts.out, log=log)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training train",
                                description="Train (or resume) a run. Overrides are dotted key=value pairs, "
                                            "e.g. train.steps=200 train.device=cpu data.root=data/photos.")
    p.add_argument("config", help="YAML config, e.g. training/configs/fashion.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--resume", action="store_true", help="continue from the newest valid checkpoint in the run dir")
    p.add_argument("--out", help="run folder (default: train.out_dir of the config)")
    return p


def main(argv: list[str] | None = None) -> int:
    train_from_options(options_from_args(TrainOptions, build_parser().parse_args(argv)))
    return 0


@dataclass
class _Run:
    """What the phases of `train` share."""
    cfg: RunConfig
    info: DistInfo
    device: torch.device
    run_dir: Path
    recipe: Any
    loader: torch.utils.data.DataLoader
    fixed: dict[str, torch.Tensor]
    metrics: MetricsLog | None
    meta: dict
    start_step: int
    step: int  # the step reached so far: the loop advances it, an interruption checkpoints it


@dataclass
class _Window:
    """Steps since the last metrics row, for its it/s."""
    t: float
    steps: int = 0


def _resume_point(cfg: RunConfig, run_dir: Path, resume: bool, info: DistInfo, log) -> tuple[int, dict | None]:
    """(step, checkpoint payload) to start from: the newest valid checkpoint when resuming, else (0, None)."""
    start_step, payload = 0, None
    if resume:
        found = ckpt.latest_valid(run_dir, log=log)
        if found:
            path, payload = found
            saved = load_config(None, raw=payload["config"])
            if saved.family != cfg.family:
                raise ValueError(f"{path} is a {saved.family} checkpoint, the config says {cfg.family}")
            start_step = int(payload["step"])
            if info.main:
                log(f"resuming from {path} (step {start_step})")
        elif info.main:
            log(f"no checkpoint in {run_dir / 'checkpoints'}; starting from scratch")
    return start_step, payload


def _setup(cfg: RunConfig, resume: bool, out_dir: str | None, log) -> _Run:
    """Processes and device, resume point, recipe, data loader, run folder and metadata."""
    info, device = init_distributed(cfg.train.device)
    run_dir = Path(out_dir or cfg.train.out_dir)
    t = cfg.train
    if t.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False

    start_step, payload = _resume_point(cfg, run_dir, resume, info, log)

    precision = Precision(resolve(t.precision, device, log=log if info.main else None), device.type)
    torch.manual_seed(init_seed(cfg.seed))  # network init: identical on every rank
    recipe = get_recipe_class(cfg.family)(cfg, device, distributed=info.world > 1, precision=precision)
    if payload is not None:
        recipe.load_state_dict(payload)
    else:
        recipe.on_fresh_start()

    reader = build_reader(cfg, "train")
    batches = StepBatches(reader, cfg.seed, t.batch_size, start_step, t.steps, info.rank, info.world)
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False, num_workers=t.num_workers,
                                         persistent_workers=False, pin_memory=device.type == "cuda")
    fixed = StepBatches(reader, cfg.seed + 1, min(8, t.batch_size), 0, 1)[0]

    metrics = None
    if info.main:
        (run_dir / "samples").mkdir(parents=True, exist_ok=True)
        metrics = MetricsLog(run_dir / "metrics.csv", start_step)
        ckpt.atomic_write(run_dir / "config.yaml", lambda f: f.write(_yaml(cfg).encode()))
        log(f"{cfg.family} '{cfg.name}': steps {start_step}->{t.steps}, batch {t.batch_size}, device {device}, "
            f"precision {precision.name} (train.precision={t.precision}"
            f"{', channels_last' if precision.channels_last else ''}), "
            f"processes {info.world}, {len(reader)} training samples, run dir {run_dir}")

    meta = {"git_commit": git_commit(), "torch": str(torch.__version__),
            "dataset": dataset_manifest(cfg.data.get("root")), "precision": precision.name}
    return _Run(cfg, info, device, run_dir, recipe, loader, fixed, metrics, meta, start_step, step=start_step)


def _save(run: _Run, step: int) -> None:
    """Checkpoint `step` (rank 0 only) and prune to train.keep_ckpts."""
    if not run.info.main:
        return
    cfg = run.cfg
    bad = run.recipe.non_finite_weights()
    if bad:
        more = " ..." if len(bad) > 3 else ""
        raise TrainingDiverged(f"non-finite weights after step {step} ({', '.join(bad[:3])}{more}); stopping "
                               f"without writing a checkpoint of them")
    state = run.recipe.state_dict()
    ckpt.save(ckpt.step_path(run.run_dir, step), {"family": cfg.family, "config": cfg.to_dict(), "step": step,
                                                   "meta": run.meta, **state})
    ckpt.prune(run.run_dir, cfg.train.keep_ckpts)


def _last_good(run: _Run) -> str:
    """Where the run can be resumed from after it diverged."""
    found = ckpt.list_checkpoints(run.run_dir)
    if not found:
        return "No checkpoint was written before it"
    return (f"The last good checkpoint is {found[-1]}: resume from it with a lower learning rate, "
            f"max_grad_norm or train.precision=fp32")


def _on_signal(signum, frame):
    raise _Stop(signal.Signals(signum).name)


def _run_steps(run: _Run, log) -> None:
    """The step loop with SIGTERM/SIGINT turned into a checkpoint and exit 130; DDP torn down after it."""
    info = run.info
    old_term = signal.signal(signal.SIGTERM, _on_signal) if info.main else None
    progress = _progress(run.start_step, run.cfg.train.steps, info.main)
    window = _Window(time.perf_counter())
    started = time.perf_counter()
    try:
        for batch in run.loader:
            _one_step(run, batch, window, started, progress)
    except TrainingDiverged as e:
        raise TrainingDiverged(f"{e}. {_last_good(run)}") from None
    except (KeyboardInterrupt, _Stop) as e:
        if info.main:
            log(f"\ninterrupted ({e or 'SIGINT'}) at step {run.step}: saving a checkpoint")
        _save(run, run.step)
        raise SystemExit(130)
    finally:
        progress.close()
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        if info.world > 1 and dist.is_initialized():
            if sys.exc_info()[0] is None:
                dist.barrier()  # rank 0 may still be writing the last checkpoint
            dist.destroy_process_group()


def _one_step(run: _Run, batch: dict[str, torch.Tensor], window: _Window, started: float, progress) -> None:
    """One training step, then its metrics row, sample grid and checkpoint when they are due."""
    cfg, t, info, recipe = run.cfg, run.cfg.train, run.info, run.recipe
    torch.manual_seed(_mix(cfg.seed, run.step + 1, info.rank))
    losses = recipe.train_step(recipe.to_device(batch), run.step)
    recipe.end_step()
    run.step += 1
    step = run.step
    window.steps += 1
    if info.main:
        progress.update(1)
        if step % t.log_every == 0 or step == t.steps:
            now = time.perf_counter()
            rate = window.steps / max(now - window.t, 1e-9)
            window.t, window.steps = now, 0
            progress.set_postfix({k: f"{v:.3g}" for k, v in losses.items()}, refresh=False)
            run.metrics.write({"step": step, "elapsed_s": round(now - started, 2), "it_s": round(rate, 3),
                               "lr": recipe.lr(), **{k: round(v, 6) for k, v in losses.items()}})
        if step % t.sample_every == 0 or step == t.steps:
            images, nrow = recipe.sample_grid(run.fixed)
            save_grid(images, nrow, run.run_dir / "samples" / f"step_{step:08d}.png")
    if step % t.ckpt_every == 0 or step == t.steps:
        _save(run, step)


def _finish(run: _Run, log) -> None:
    """Rank 0: the loss plot and the closing line."""
    run_dir = run.run_dir
    if run.info.main and (run_dir / "metrics.csv").exists():
        plot_losses(run_dir / "metrics.csv", run_dir / "losses.png")
        log(f"done: {run.step} steps; checkpoints in {run_dir / 'checkpoints'}, samples in {run_dir / 'samples'}")


def _progress(start: int, total: int, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, initial=start, disable=not enabled, dynamic_ncols=True, unit="it", mininterval=1.0)


def _yaml(cfg: RunConfig) -> str:
    import yaml
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
