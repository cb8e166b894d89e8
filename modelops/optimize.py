"""Exact graph rewrites that make a published fp32 graph faster on onnxruntime's CPU provider.

    python -m training optimize NAME [--models models] [--dry-run]

`export` applies them to every graph it writes (before its torch parity
check); this command applies them to a folder that was published before they
existed, and is a no-op on one that has them. Only rewrites that measured
faster on the served fp32 graph are here (side by side, 2-core AMD EPYC,
onnxruntime 1.31.1, 2 intra-op threads, interleaved medians):

- `resize_as_conv` (modelops/rewrites.py): an integer-factor bicubic Resize,
  SRResNet's skip, becomes Pad(edge) + a grouped Conv + DepthToSpace.
  onnxruntime's cubic Resize kernel took 58 ms of a 600 ms srresnet-x4
  128->512 run (its profiler); rewritten: 1.12x the whole graph at 128->512,
  1.10x at 64->256, output within 5e-7.

Measured and left out: ConvTranspose -> Conv + DepthToSpace (the int8 path
needs it; in fp32 it runs 2.25x the multiply-adds: 0.45x on fashion n=64,
0.63x on colorize 256x256) and DepthToSpace CRD -> DCR with the producing
conv's channels permuted (0.99-1.02x).

Publishing is export's (`contract.folder.staged_version`): the whole folder is
copied to a staging folder, the graphs rewritten there, checked against the
published ones (max abs difference on random inputs at the card's parity sizes,
at most `TOLERANCE`), the card updated (`files`, `version`, `optimized`) and
the folder swapped in atomically (the old one stays as `.NAME.prev` for
`rollback`). Variant files (fp16, int8) are kept as they are: each was
checked against the fp32 function, which the rewrites do not change.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contract import Card
from contract.folder import (LockBusy, ModelDirError, NotPublished, check_name, content_version, file_entry,
                             staged_version, utc_now, utc_stamp, verify_model_dir, write_bytes_durably,
                             write_card_durably)

from .cli import options_from_args
from .errors import ExportError
from .numerics import cpu_session, max_abs_diff, parity_sizes
from .rewrites import resize_as_conv

TOLERANCE = 1e-4  # fp32 reassociation only (measured 5e-7); anything larger is a wrong rewrite
REWRITES = {"resize_as_conv": resize_as_conv}


@dataclass(frozen=True, kw_only=True)
class OptimizeOptions:
    """`python -m training optimize NAME ...` (its --help says what each does)."""
    name: str  # the model's folder under `models`
    models: str | Path = "models"
    dry_run: bool = False  # rewrite and check, publish nothing


def optimize_graph(path: Path) -> dict[str, int]:
    """Apply every rewrite to the ONNX file at `path` in place; returns {rewrite: nodes replaced} (rewritten only).
    The caller checks the result (export: check_graph + torch parity; optimize_model: verify_model_dir deep)."""
    import onnx

    model = onnx.load(str(path))
    counts = {name: fn(model) for name, fn in REWRITES.items()}
    counts = {k: v for k, v in counts.items() if v}
    if counts:
        used = {name for node in model.graph.node for name in node.input}
        keep = [init for init in model.graph.initializer if init.name in used]  # e.g. the Resize's scales
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
        write_bytes_durably(path, model.SerializeToString())
    return counts


def _feeds(card: Card) -> list[dict[str, np.ndarray]]:
    """Random inputs for an image graph at the card's parity sizes (the graphs these rewrites touch)."""
    rng = np.random.default_rng(0)
    spec = card.input
    lo, hi = spec.range if spec else (0.0, 1.0)
    sizes = parity_sizes({"multiple_of": spec.multiple_of, "min_size": spec.min_size,
                          "native_size": spec.native_size} if spec else {})
    out = []
    for h, w in sizes:
        feeds = {}
        for i in card.graph.inputs:
            c = i.shape[1] if isinstance(i.shape[1], int) else int(spec.channels if spec else 3)
            feeds[i.name] = rng.uniform(lo, hi, (1, c, h, w)).astype(np.float32)
        out.append(feeds)
    return out


def rewrite_folder(folder: Path, staging: Path, card: Card) -> tuple[dict[str, Any], float]:
    """Copy the folder into `staging` and rewrite its fp32 graphs there; ({role: counts}, max abs vs before)."""
    for item in folder.iterdir():
        if item.is_file():
            shutil.copy2(item, staging / item.name)
    done: dict[str, Any] = {}
    worst = 0.0
    for role, entry in card.files.items():
        counts = optimize_graph(staging / entry.path)
        if not counts:
            continue
        before, after = folder / entry.path, staging / entry.path
        worst = max(worst, max_abs_diff(cpu_session(before), cpu_session(after), _feeds(card)))
        done[role] = counts
    return done, worst


def restamp(staging: Path, card: Card, done: dict[str, Any], worst: float) -> None:
    """The card of the rewritten folder: new file entries, a new version, `optimized`; written and verified."""
    when = utc_now()
    previous = card.version
    for role in done:
        card.files[role] = file_entry(staging, card.files[role].path)
    for variant in card.variants.values():
        if variant.built:  # build-time files follow their fp32 graphs: remade from the rewritten ones
            from .fp16 import make_fp16
            for role, entry in variant.files.items():
                make_fp16(staging / card.files[role].path, staging / entry.path)
                variant.files[role] = file_entry(staging, entry.path)
    onnx_files = [e.path for _, e in card.file_names() if e.path.endswith(".onnx")]
    card.version = content_version(staging, onnx_files, when)
    card.optimized = {"rewrites": done, "max_abs_vs_previous": worst, "previous_version": previous,
                      "at": utc_stamp(when)}
    write_card_durably(staging, card)
    verify_model_dir(staging, deep=True)


def optimize_model(opts: OptimizeOptions, log=print) -> dict[str, Any]:
    """Rewrite models/NAME's fp32 graphs, check and publish; returns {role: counts} (empty: nothing to do)."""
    name, models, dry_run = opts.name, Path(opts.models), opts.dry_run
    folder = models / check_name(name)
    done: dict[str, Any] = {}
    with staged_version(models, name, log=lambda m: print(m, file=sys.stderr)) as staging:
        card = verify_model_dir(folder)
        done, worst = rewrite_folder(folder, staging, card)
        if not done:
            log(f"{folder}: nothing to rewrite (already optimized, or no graph these rewrites apply to)")
            raise NotPublished()
        if not worst <= TOLERANCE:
            raise ExportError(f"rewritten graphs of {name!r} differ from the published ones by {worst:.3e} "
                              f"(> {TOLERANCE:g}): nothing published")
        log(f"{name}: rewrote {done}; max abs difference to the published graphs {worst:.2e}")
        if dry_run:
            log("dry run: nothing published")
            raise NotPublished()
        restamp(staging, card, done, worst)
    if done and not dry_run:
        log(f"published {folder} (version {card.version}; the previous one is kept as "
            f"{models / ('.' + name + '.prev')})")
    return done


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training optimize", description=__doc__.split("\n\n")[0])
    p.add_argument("name", help="the model folder's name under --models")
    p.add_argument("--models", default="models")
    p.add_argument("--dry-run", action="store_true", help="rewrite and check, publish nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    opts = options_from_args(OptimizeOptions, build_parser().parse_args(argv))
    try:
        optimize_model(opts)
    except (ExportError, ModelDirError, LockBusy, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
