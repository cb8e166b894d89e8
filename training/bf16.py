"""bf16 on OpenVINO for a published model: measure it against fp32 and record the gate in its card.

    python -m training bf16 NAME [--models models] [--count 8] [--rounds 7] [--dry-run]

OpenVINO converts the fp32 ONNX graph to bf16 when it compiles it (INFERENCE_PRECISION_HINT bf16), so a
bf16 "variant" has no files of its own: what the card records is the measurement the service gates on
(`service/backends.py`, `gate_result`). Both precisions are compiled from the very same sha256-checked
bytes with the service's own factory (`service.backends.make_openvino_session`), and run on held-out-like
inputs: the test split of the card's dataset where it can be read (data/), else smooth synthetic images,
at the card's parity sizes plus the size a request runs (a tile; the native size where the graph has one);
generators get z ~ N(0, I) at the parity batches. The card gets

    variants.bf16 = Variant(produced="measure", extra={
        psnr_vs_fp32_db (pooled), psnr_vs_fp32_db_min (worst input), gate_db (45), passed,
        speedup (fp32 ms / bf16 ms, interleaved medians), measured_on {cpu, flags, openvino, native}, ...})

written under the model's lock (`contract.folder`): only card.json changes, the ONNX files are untouched.
The measurement needs a CPU with native bf16 (AMX or AVX512-BF16): elsewhere OpenVINO would not run bf16 at
all, and the command refuses. Export can record the same entry by calling `bf16_variant(folder, card)` on
the folder it is about to publish (see `bf16_variant`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from contract import Card, Variant
from contract.folder import (LockBusy, ModelDirError, check_name, model_lock, sha256_bytes, utc_now, utc_stamp,
                             verify_model_dir, write_card)
from contract.typed import to_plain

from .quantize import compare, role_inputs, role_output, time_pair

GATE_DB = 45.0


class Bf16Error(RuntimeError):
    """bf16 cannot be measured here (no native bf16, no OpenVINO, the folder changed)."""


def measured_on() -> dict[str, Any]:
    from core.backends import native_bf16, openvino_version
    from core.cpu import cpu_model, reported_flags

    return {"cpu": cpu_model(), "flags": reported_flags(), "openvino": openvino_version(),
            "native": native_bf16()[1]}


def timing_edge(card: Card) -> int:
    """The input edge a request's graph run has: the tile, at most 512 output pixels wide, on the card's grid."""
    assert card.input is not None
    m, lo = int(card.input.multiple_of or 1), int(card.input.min_size or 1)
    tile = card.tiling.tile if card.tiling is not None else 256
    edge = min(tile, 512 // max(1, card.scale or 1))
    return max(lo, -(-edge // m) * m)


def input_sizes(card: Card) -> list[tuple[int, int]]:
    """[H, W] sizes to measure: the native size alone, else the parity sizes plus the request size."""
    card_in = card.input
    assert card_in is not None
    if card_in.native_size is not None:
        return [tuple(card_in.native_size)]
    parity = (card.metrics.parity or {}) if card.metrics is not None else {}
    sizes = [tuple(int(v) for v in s) for s in parity.get("sizes") or [[64, 64]]]
    edge = timing_edge(card)
    return sorted(set(sizes) | {(edge, edge)})


def image_feeds(card: Card, role: str, count: int, data_root: str | None,
                seed: int) -> tuple[list[dict[str, np.ndarray]], dict[str, np.ndarray], str]:
    """Batch-1 feeds at every size of `input_sizes`, the feed to time (the request size), and their source."""
    sizes = input_sizes(card)
    edge = max(max(h, w) for h, w in sizes)
    batches, source = role_inputs(card, role, "test", count, edge, data_root, seed, batch=count)
    images = next(iter(batches[0].values()))
    name = card.graph.inputs[0].name
    feeds = [{name: np.ascontiguousarray(images[i:i + 1, :, :h, :w])} for h, w in sizes for i in range(len(images))]
    timed = max(sizes, key=lambda s: s[0] * s[1]) if card.input.native_size else (timing_edge(card),) * 2
    return feeds, {name: np.ascontiguousarray(images[:1, :, :timed[0], :timed[1]])}, source


def generator_feeds(card: Card, count: int, seed: int) -> tuple[list[dict[str, np.ndarray]], dict[str, np.ndarray], str]:
    parity = (card.metrics.parity or {}) if card.metrics is not None else {}
    feeds: list[dict[str, np.ndarray]] = []
    source = ""
    for batch in parity.get("batches") or [1, 16]:
        more, source = role_inputs(card, "generator", "test", count * int(batch), 1, None, seed, int(batch))
        feeds += more
    return feeds, max(feeds, key=lambda f: len(f["z"])), source


def measure_role(folder: Path, card: Card, role: str, count: int, rounds: int, data_root: str | None,
                 log: Callable[[str], Any]) -> dict[str, Any]:
    """PSNR of OpenVINO bf16 against OpenVINO fp32 on one role's graph, and the two timings."""
    from core.backends import make_openvino_session

    entry = card.files[role]
    data = (folder / entry.path).read_bytes()
    if sha256_bytes(data) != entry.sha256:
        raise Bf16Error(f"{entry.path}: sha256 does not match the card")
    sessions = {"fp32": make_openvino_session(data, "fp32"), "bf16": make_openvino_session(data, "bf16")}
    if card.endpoint == "generate":
        feeds, timed, source = generator_feeds(card, count, seed=0)
    else:
        feeds, timed, source = image_feeds(card, role, count, data_root, seed=0)
    quality = compare(sessions["fp32"], sessions["bf16"], feeds, role_output(card, role).range)
    ms = time_pair(sessions, timed, rounds)
    shape = [list(a.shape) for a in timed.values()]
    log(f"  {role}: bf16 vs fp32 {quality['psnr_db']:.2f} dB (worst input {quality['psnr_db_min']:.2f}) over "
        f"{quality['inputs']} inputs; {ms['fp32']:.1f} ms -> {ms['bf16']:.1f} ms at {shape}")
    return {"psnr_db": quality["psnr_db"], "psnr_db_min": quality["psnr_db_min"], "inputs": quality["inputs"],
            "source": source, "fp32_ms": ms["fp32"], "bf16_ms": ms["bf16"], "input_shape": shape}


def bf16_variant(folder: Path, card: Card, count: int = 8, rounds: int = 7, data_root: str | None = None,
                 gate_db: float = GATE_DB, log: Callable[[str], Any] = print) -> Variant:
    """The `variants.bf16` entry for the graphs in `folder` (its card `card`); writes nothing.

    Export's hook: call it on the staging folder before the card is written, where `native_bf16()` holds,
    and set `card.variants["bf16"]` to the result. Bf16Error where this CPU cannot run bf16.
    """
    from core.backends import native_bf16, openvino_installed

    if not openvino_installed():
        raise Bf16Error("the openvino package is not installed (it is a serving dependency: pip install -e .)")
    native, why = native_bf16()
    if not native:
        raise Bf16Error(f"cannot measure bf16 here: {why}; run this on a CPU with AMX or AVX512-BF16")
    roles = {role: measure_role(folder, card, role, count, rounds, data_root, log) for role in card.files}
    worst = min(r["psnr_db_min"] for r in roles.values())
    pooled = min(r["psnr_db"] for r in roles.values())
    fp32_ms, bf16_ms = sum(r["fp32_ms"] for r in roles.values()), sum(r["bf16_ms"] for r in roles.values())
    extra = {"psnr_vs_fp32_db": pooled, "psnr_vs_fp32_db_min": worst, "gate_db": gate_db,
             "passed": bool(worst >= gate_db), "speedup": fp32_ms / bf16_ms if bf16_ms > 0 else None,
             "runtime": "OpenVINO CPU, INFERENCE_PRECISION_HINT bf16 vs f32 (the service's make_openvino_session)",
             "measured_on": measured_on(), "roles": roles, "rounds": rounds,
             "of_version": card.version, "measured_at": utc_stamp(utc_now())}
    note = ("bf16 is converted by OpenVINO at load: no files; the service runs it where the CPU has native bf16 "
            "and passed is true")
    return Variant(produced="measure", note=note, extra=extra)


def with_bf16_gate(folder: Path, card: Card, log: Callable[[str], Any] = print) -> Card:
    """Import's hook (training/importer/publish.py): `card` with `variants.bf16` measured on the graphs in
    `folder` by `bf16_variant` (what `python -m training bf16 NAME` records), where this CPU has native bf16;
    elsewhere, or when it cannot be measured, the card unchanged and one line saying why."""
    from core.backends import native_bf16, openvino_installed

    native, why = native_bf16() if openvino_installed() else (False, "the openvino package is not installed")
    if not native:
        log(f"no bf16 gate measured ({why}): the model serves fp32 until `python -m training bf16 {card.name}` "
            "runs on a CPU with native bf16")
        return card
    try:
        variant = bf16_variant(folder, card, log=log)
    except (Bf16Error, RuntimeError, ValueError, OSError) as e:
        log(f"no bf16 gate measured: {e}")
        return card
    extra = variant.extra
    log(f"bf16 gate: worst input {extra['psnr_vs_fp32_db_min']:.2f} dB against fp32, "
        f"{'passed' if extra['passed'] else 'FAILED (fp32 serves)'} at {extra['gate_db']:g} dB")
    card.variants = {**card.variants, "bf16": variant}
    return card


def record_bf16(name: str, models: str | Path = "models", count: int = 8, rounds: int = 7,
                data_root: str | None = None, gate_db: float = GATE_DB, dry_run: bool = False,
                log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Measure models/NAME and write `variants.bf16` into its card (under its lock); returns the entry (JSON)."""
    models = Path(models)
    folder = models / check_name(name)
    card = verify_model_dir(folder, deep=False)
    log(f"{name}: OpenVINO bf16 against fp32 ({card.version})")
    variant = bf16_variant(folder, card, count, rounds, data_root, gate_db, log)
    extra = variant.extra
    verdict = "passed" if extra["passed"] else "FAILED (the service keeps fp32)"
    log(f"{name}: {extra['psnr_vs_fp32_db']:.2f} dB pooled, worst input {extra['psnr_vs_fp32_db_min']:.2f} dB: "
        f"gate {gate_db:g} dB {verdict}; x{extra['speedup']:.2f} faster than fp32 on OpenVINO here")
    if dry_run:
        log("dry run: nothing written")
        return to_plain(variant)
    with model_lock(models, name, wait=True):
        current = verify_model_dir(folder)
        if current.version != card.version:
            raise Bf16Error(f"{folder} changed while measuring (version {card.version} -> {current.version}); "
                            "nothing written")
        current.variants = {**current.variants, "bf16": variant}
        write_card(folder, current)
        verify_model_dir(folder)
    log(f"wrote {folder / 'card.json'} variants.bf16")
    return to_plain(variant)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training bf16",
                                description="Measure OpenVINO bf16 against fp32 on a published model and record "
                                            "the gate in its card (variants.bf16; only card.json changes).")
    p.add_argument("name", nargs="+", help="model name(s) (folders under --models)")
    p.add_argument("--models", default="models", help="the models folder (default: models)")
    p.add_argument("--count", type=int, default=8, help="inputs per size (default 8; generators: per batch)")
    p.add_argument("--rounds", type=int, default=7, help="timed rounds per precision (default 7)")
    p.add_argument("--gate", type=float, default=GATE_DB,
                   help=f"PSNR (dB) of bf16 vs fp32 on the worst input for bf16 to serve (default {GATE_DB:g}; "
                        "the service never accepts less than 45)")
    p.add_argument("--data-root", help="dataset root (default: the card's training config)")
    p.add_argument("--dry-run", action="store_true", help="measure, write nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if min(args.count, args.rounds) < 1:
        print("error: --count and --rounds must be >= 1", file=sys.stderr)
        return 2
    try:
        for name in args.name:
            record_bf16(name, args.models, args.count, args.rounds, args.data_root, args.gate, args.dry_run)
    except (Bf16Error, ModelDirError, LockBusy, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
