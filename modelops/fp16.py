"""The fp16 variant written at export: fp16 weights and compute, float32 inputs and outputs.

Each `<role>.fp16.onnx` is checked against its fp32 graph on the CPU provider (the same parity
cases); over the tolerance, or when the converter is missing or fails, the card says so in a
`produced: load` entry without files instead (the service then runs fp32 where fp16 is asked for).

The variant is `built`: its files are a pure function of the fp32 graph and the converter, so git
does not keep them (models/ stays small); `python -m training fp16 [NAME ...]` (make fp16, run by
make container-gpu and make gpu-check) remakes them and installs each only when its sha256 is the
card's, byte for byte. Nothing is torch here: the command runs wherever onnx is installed.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from contract import Variant
from contract.folder import CardError, fsync_dir, file_entry, read_card, sha256_file, write_bytes_durably

from .cli import options_from_args
from .errors import ExportError
from .numerics import Case, cpu_session, measure_against, quiet_exporter


def toposort(graph) -> None:
    """Kahn order: the fp16 converter appends its Cast nodes at the end of the node list."""
    ready = {v.name for v in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ExportError("fp16 graph has a cycle or a dangling input")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def make_fp16(src: Path, dst: Path) -> None:
    """fp16 weights and compute, float32 inputs/outputs (keep_io_types): fed exactly like the fp32 graph."""
    import onnx
    from onnxruntime.transformers import float16

    model = onnx.load(str(src))
    with quiet_exporter():
        # Resize stays fp32: its roi/scales inputs must be float, and the converter would retype them
        blocked = list(float16.DEFAULT_OP_BLOCK_LIST) + ["Resize"]
        half = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=blocked)
    # the converter leaves fp16 value_info on the outputs of blocked (fp32) nodes; shapes are re-inferred anyway
    del half.graph.value_info[:]
    toposort(half.graph)
    write_bytes_durably(dst, half.SerializeToString())
    onnx.checker.check_model(str(dst), full_check=True)


def _unlink_fp16(staging: Path, specs) -> None:
    for role in specs:
        (staging / f"{role}.fp16.onnx").unlink(missing_ok=True)


def _check_role(src: Path, dst: Path, spec, cases: list[Case]) -> float | Exception:
    """Max abs of the fp16 graph vs the fp32 one, or why the CPU provider cannot run the fp16 graph."""
    fp32 = cpu_session(src)
    try:
        half = cpu_session(dst)
    except Exception as e:  # noqa: BLE001 - CPU lacks an fp16 kernel: publish unverified, say so
        return e

    def reference(feeds):
        return fp32.run(["output"], feeds)[0]

    return max(measure_against(half, cases, reference, "the fp32 graph").values())


def fp16_variant(staging: Path, specs, cases_by_role: dict[str, list[Case]], tolerance: float,
                 log) -> Variant:
    """fp16 files checked against the fp32 graphs on CPU; on failure, a `produced: load` entry saying why."""
    try:
        from onnxruntime.transformers import float16  # noqa: F401
    except ImportError as e:
        return Variant(produced="load", note=f"not converted at export: onnxruntime.transformers.float16 "
                                             f"is not importable ({e})")
    files, worst, notes = {}, 0.0, []
    for role, spec in specs.items():
        src, dst = staging / f"{role}.onnx", staging / f"{role}.fp16.onnx"
        try:
            make_fp16(src, dst)
        except Exception as e:  # noqa: BLE001
            _unlink_fp16(staging, specs)
            log(f"warning: no fp16 variant: conversion of {role} failed: {e}")
            return Variant(produced="load", note=f"fp16 conversion failed at export ({type(e).__name__}: {e})")
        err = _check_role(src, dst, spec, cases_by_role[role])
        if isinstance(err, Exception):
            notes.append(f"{role}: onnxruntime CPU cannot run the fp16 graph ({type(err).__name__}); "
                         f"checked by onnx.checker only")
        else:
            worst = max(worst, err)
        files[role] = file_entry(staging, dst.name)
    verified = not notes
    if verified and not worst <= tolerance:
        _unlink_fp16(staging, specs)
        log(f"warning: no fp16 variant: fp16 vs fp32 max abs {worst:.3e} exceeds {tolerance:g}")
        return Variant(produced="load", note=f"fp16 graph left out: max abs vs fp32 {worst:.3e} "
                                             f"exceeds the tolerance {tolerance:g}")
    log(f"fp16 variant: max abs vs fp32 {worst:.2e} (tolerance {tolerance:g})" if verified
        else "fp16 variant: not verifiable on CPU")
    return Variant(produced="export", files=files, note="; ".join(notes) or None, built=True,
                   extra={"tolerance_max_abs": tolerance, "max_abs": worst if verified else None,
                          "checked_on": "CPUExecutionProvider" if verified else None, "keep_io_types": True})


# ------------------------------------------------------------------ build time: remake the files git does not keep

def materialize(folder: Path, log=print) -> list[str]:
    """Make the missing files of folder's built fp16 variant from its fp32 graphs; returns the problems.

    A remade file is installed (atomic rename) only when its sha256 is the card's: a different onnx or
    onnxruntime converter gives other bytes, and the card's measured parity would not be about them."""
    card = read_card(folder)
    variant = card.variants.get("fp16")
    if variant is None or not variant.built:
        return []
    problems = []
    for role, entry in variant.files.items():
        dst = folder / entry.path
        if dst.is_file() and sha256_file(dst) == entry.sha256:
            continue
        tmp = folder / f".{entry.path}.tmp-{os.getpid()}"
        try:
            make_fp16(folder / card.files[role].path, tmp)
            got = sha256_file(tmp)
            if got != entry.sha256:
                problems.append(f"{folder.name}/{entry.path}: the converter made other bytes (sha256 {got[:12]}, the "
                                f"card says {entry.sha256[:12]}); card made with {card.runtimes}: install those "
                                f"onnx/onnxruntime versions, or re-export")
                continue
            os.replace(tmp, dst)
            fsync_dir(folder)
            log(f"{folder.name}: {entry.path} made ({entry.bytes} bytes, sha256 matches the card)")
        finally:
            tmp.unlink(missing_ok=True)
    return problems


@dataclass(frozen=True, kw_only=True)
class Fp16Options:
    """`python -m training fp16 [NAME...]` (its --help says what each does)."""
    names: Sequence[str] = ()  # model folders (default: every folder with a card)
    models: str | Path = "models"


def materialize_models(opts: Fp16Options, log=print) -> list[str]:
    """`materialize` every named folder (every one with a card when none is named); returns the problems."""
    root = Path(opts.models)
    names = opts.names or sorted(d.name for d in root.iterdir() if (d / "card.json").is_file())
    problems = []
    for name in names:
        try:
            problems += materialize(root / name, log)
        except (OSError, CardError) as e:
            problems.append(f"{name}: {e}")
    return problems


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training fp16",
                                description="Make the fp16 files that model cards list as built (not kept in git) "
                                            "from their fp32 graphs, byte-identical to the card's sha256.")
    p.add_argument("names", nargs="*", help="model folders (default: every folder with a card)")
    p.add_argument("--models", default="models", help="the models folder [models]")
    return p


def main(argv: list[str] | None = None) -> int:
    problems = materialize_models(options_from_args(Fp16Options, build_parser().parse_args(argv)))
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0
