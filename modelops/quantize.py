"""int8 variant of a published model, for the onnxruntime CPU provider.

    python -m training quantize NAME [--models models] [--calibration 32] [--heldout 8]
                                [--per-channel/--no-per-channel] [--min-psnr 40] [--data-root DIR]
                                [--rounds 5] [--dry-run]

Reads `models/NAME` (verified against its card), and for every role writes
`<role>.int8.onnx`: onnxruntime's static quantization in QDQ format
(`quantize_static`: uint8 activations, int8 weights, per output channel by
default, MinMax calibration), which the CPU provider fuses into QLinearConv
and friends (VNNI kernels where the CPU has them).

Before quantizing, exact rewrites of the fp32 graph (modelops/rewrites.py,
checked against it):

- a ConvTranspose (stride s, group 1) becomes a Conv producing s*s phases
  + DepthToSpace(s): onnxruntime's CPU provider has no int8 ConvTranspose, so
  without this a DCGAN / U-Net decoder would stay fp32 with extra (de)quantize
  steps around it;
- an integer-factor bicubic Resize (SRResNet's skip) becomes Pad(edge) + a
  grouped Conv (one separable kernel per output phase) + DepthToSpace: the
  Resize kernel costs as much as several convs here, and this runs int8 too;
- a Conv with fewer than 16 output channels (e.g. SRResNet's last 9x9 conv to
  RGB) gets zero output channels up to 16 and a Slice back: the int8 conv
  kernels work in blocks of 16 output channels and are 2-4x slower than fp32
  on 3 (measured here).

Calibration uses the training split of the dataset the card's training config
names (`--data-root` overrides the root); the PSNR against fp32 is measured on
the held-out (test) split; without the data, both use synthetic inputs
(smooth random images; z ~ N(0, I) for generators, which is their real input)
and the card says so. PSNR is on the graph's output range (peak = hi - lo),
pooled over the held-out inputs, and per input (the worst one is the gate):
below `--min-psnr` it is tried again with the output path in fp32 (every node
after the last conv, and Resize: SRResNet's bicubic skip), then also with the
first and last conv in fp32; if that is still below, nothing is written
(exit code 3). The card records which try was published (`roles.*.quantized`).

The fp32 and int8 sessions are timed side by side (interleaved, a 50 ms pause
before each call) on the held-out batch; the ratio goes into the card with the
machine it was measured on. Publishing: the files are written and fsynced
under a dot name, moved into the folder, and then card.json is rewritten
atomically under the model's lock (`variants.int8`, a contract `Variant`), so
a reader sees either the old card or the new card with its files in place;
`version` does not change (it names the fp32 export; `variants.int8.of_version`
repeats it).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from contract import Card, Variant
from contract.folder import (LockBusy, ModelDirError, check_name, file_entry, fsync_dir, model_lock, utc_now,
                             utc_stamp, verify_model_dir, write_card)
from contract.typed import to_plain

from .cli import options_from_args
from .errors import ExportError
from .inputs import DatasetImages, role_inputs, role_output
from .numerics import max_abs_diff
from .metrics import psnr_from_mse
from .rewrites import convtranspose_as_conv, end_nodes, pad_narrow_convs, resize_as_conv

DEFAULT_MIN_PSNR = 40.0
SETTLE_S = 0.05  # as bench/common.SETTLE_S: worker threads idle before each timed call


class QuantizeError(ExportError):
    """The int8 graph is not close enough to fp32: nothing was written."""


# ------------------------------------------------------------------ inputs

# ------------------------------------------------------------------ quantize, compare, time

def session(path_or_bytes):
    """A CPU session with every graph optimization, as the service runs the int8 graph."""
    import onnxruntime as ort

    from core.runtime import make_session
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return make_session(path_or_bytes, options)


def prepared_fp32(src: Path, dst: Path, check_feeds: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """The fp32 graph with the exact rewrites applied, written to `dst`; checked against `src`."""
    import onnx

    model = onnx.load(str(src))
    deconvs = convtranspose_as_conv(model)
    resizes = resize_as_conv(model)
    padded = pad_narrow_convs(model)
    onnx.save(model, str(dst))
    onnx.checker.check_model(str(dst), full_check=True)
    worst = max_abs_diff(session(src), session(dst), check_feeds)
    if not worst <= 1e-3:  # fp32 reassociation only; anything larger is a wrong rewrite
        raise ExportError(f"rewritten fp32 graph differs from {src.name} by {worst:.3e}: not quantizing")
    return {"convtranspose_as_conv": deconvs, "resize_as_conv": resizes, "padded_convs": padded,
            "rewrite_max_abs": worst}


def quantize_graph(src: Path, dst: Path, calibration: list[dict[str, np.ndarray]], per_channel: bool,
                   exclude: list[str]) -> None:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter(calibration)

        def get_next(self):
            return next(self.feeds, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=exclude or None)


def compare(fp32, int8, feeds: list[dict[str, np.ndarray]], out_range) -> dict[str, Any]:
    """PSNR of int8 against fp32 outputs (clipped to the output range, peak = hi - lo): pooled and worst input."""
    lo, hi = float(out_range[0]), float(out_range[1])
    a_lo, a_hi = min(lo, hi), max(lo, hi)
    errors = []
    for f in feeds:
        x = np.clip(fp32.run(None, f)[0].astype(np.float64), a_lo, a_hi)
        y = np.clip(int8.run(None, f)[0].astype(np.float64), a_lo, a_hi)
        errors += list(((x - y) ** 2).reshape(len(x), -1).mean(axis=1))
    peak = abs(hi - lo)
    per = [psnr_from_mse(e, peak) for e in errors]
    return {"psnr_db": psnr_from_mse(float(np.mean(errors)), peak), "psnr_db_min": min(per), "inputs": len(errors)}


def time_pair(sessions: dict[str, Any], feeds: dict[str, np.ndarray], rounds: int) -> dict[str, Any]:
    """Median ms per contender, interleaved (A B, B A, ...) with a pause before each call."""
    names = list(sessions)
    for s in sessions.values():  # first run of a shape: untimed
        s.run(None, feeds)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            time.sleep(SETTLE_S)
            t0 = time.perf_counter()
            sessions[n].run(None, feeds)
            samples[n].append(time.perf_counter() - t0)
    return {n: float(np.median(v)) * 1e3 for n, v in samples.items()}


def machine() -> dict[str, Any]:
    import onnxruntime as ort

    from core.cpu import cpu_flags, cpu_model, cpuinfo_text
    info: dict[str, Any] = {"cpu": cpu_model(), "logical_cores": os.cpu_count(), "onnxruntime": ort.__version__}
    if cpuinfo_text():
        info["flags"] = sorted(f for f in cpu_flags() if f.startswith(("avx512_vnni", "avx_vnni", "amx", "avx512_bf16")))
    with_load = getattr(os, "getloadavg", None)
    if with_load:
        info["loadavg"] = [round(v, 2) for v in with_load()]
    return info


# ------------------------------------------------------------------ the command

@dataclass(frozen=True, kw_only=True)
class QuantizeOptions:
    """`python -m training quantize NAME ...` (its --help says what each does)."""
    name: str  # the model's folder under `models`
    models: str | Path = "models"
    calibration: int = 32  # calibration inputs from the training split
    heldout: int = 8  # held-out inputs for PSNR vs fp32 and timing
    size: int = 64  # input edge for models without a native size / synthetic inputs
    per_channel: bool = True
    min_psnr: float = DEFAULT_MIN_PSNR
    data_root: str | None = None
    rounds: int = 5  # timed rounds per contender
    dry_run: bool = False  # measure, write nothing

    def check(self) -> None:
        if min(self.calibration, self.heldout, self.rounds, self.size) < 1:
            raise ValueError("--calibration, --heldout, --rounds and --size must be >= 1")


def quantize_attempts(rewritten: Path, dst: Path, fp32, calib, test, out_range, opts: QuantizeOptions, role: str,
                      log) -> tuple[dict[str, Any], Any]:
    """Quantize with every node int8, then with the output path fp32, then the ends too, until the gate holds."""
    import onnx

    graph = onnx.load(str(rewritten))
    result, int8 = None, None
    for attempt, exclude in (("all", []), ("output path fp32", end_nodes(graph, False)),
                             ("ends fp32", end_nodes(graph, True))):
        quantize_graph(rewritten, dst, calib, opts.per_channel, exclude)
        int8 = session(dst)
        score = compare(fp32, int8, test, out_range)
        log(f"{role}: int8 ({attempt}) PSNR vs fp32 {score['psnr_db']:.2f} dB pooled, "
            f"{score['psnr_db_min']:.2f} dB worst input (gate {opts.min_psnr:g})")
        result = {**score, "quantized": attempt, "excluded_nodes": exclude}
        if score["psnr_db_min"] >= opts.min_psnr:
            break
    assert result is not None
    if not result["psnr_db_min"] >= opts.min_psnr:
        raise QuantizeError(f"int8 {role} is {result['psnr_db_min']:.2f} dB from fp32 on its worst held-out "
                            f"input, below --min-psnr {opts.min_psnr:g} even with the end nodes in fp32; "
                            f"nothing written")
    return result, int8


def quantize_role(folder: Path, card: Card, role: str, staging: Path, opts: QuantizeOptions,
                  log, dataset: DatasetImages | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """Write `<role>.int8.onnx` into `staging`: (its `roles.<role>` figures, where its inputs came from)."""
    src = folder / card.files[role].path
    calib, calib_src = role_inputs(card, role, "train", opts.calibration, opts.size, opts.data_root, seed=1, batch=8,
                                   dataset=dataset)
    test, test_src = role_inputs(card, role, "test", opts.heldout, opts.size, opts.data_root, seed=2,
                                 batch=opts.heldout, dataset=dataset)
    rewritten = staging / f".{role}.fp32-rewritten.onnx"
    rewrite = prepared_fp32(src, rewritten, test)
    fp32 = session(src)
    result, int8 = quantize_attempts(rewritten, staging / f"{role}.int8.onnx", fp32, calib, test,
                                     role_output(card, role).range, opts, role, log)
    rewritten.unlink()
    ms = time_pair({"fp32": fp32, "int8": int8}, test[0], opts.rounds)
    shape = [list(v.shape) for v in test[0].values()]
    log(f"{role}: fp32 {ms['fp32']:.1f} ms, int8 {ms['int8']:.1f} ms on {shape} -> x{ms['fp32'] / ms['int8']:.2f}")
    figures = {**result, **rewrite, "fp32_ms": ms["fp32"], "int8_ms": ms["int8"], "input_shape": shape}
    return figures, {"calibration": calib_src, "heldout": test_src}


def variant_entry(roles_out: dict[str, dict[str, Any]], sources: dict[str, dict[str, str]], files,
                  opts: QuantizeOptions) -> Variant:
    """The card's `variants.int8`: the settings, the worst role's PSNR, the summed timings, per role figures."""
    worst = min(roles_out.values(), key=lambda r: r["psnr_db_min"])
    fp32_ms = sum(r["fp32_ms"] for r in roles_out.values())
    int8_ms = sum(r["int8_ms"] for r in roles_out.values())
    first = next(iter(roles_out.values()))
    return Variant(produced="quantize", files=files, extra={
        "format": "qdq",
        "activations": "uint8", "weights": "int8", "per_channel": opts.per_channel, "calibrate_method": "minmax",
        "provider": "CPUExecutionProvider",
        "min_psnr_db": opts.min_psnr,
        "psnr_vs_fp32_db": min(r["psnr_db"] for r in roles_out.values()),
        "psnr_vs_fp32_db_min": worst["psnr_db_min"],
        "speedup": fp32_ms / int8_ms,
        "timing": {"fp32_ms": fp32_ms, "int8_ms": int8_ms, "rounds": opts.rounds,
                   "input_shape": first["input_shape"], "machine": machine()},
        "calibration": {"inputs": opts.calibration, **{k: v["calibration"] for k, v in sources.items()}},
        "heldout": {"inputs": opts.heldout, **{k: v["heldout"] for k, v in sources.items()}},
        "roles": roles_out,
    })


def build_variant(folder: Path, card: Card, staging: Path, opts: QuantizeOptions, log,
                  dataset: DatasetImages | None = None) -> Variant:
    """Write `<role>.int8.onnx` for every role into `staging`; return the card's `variants.int8` entry.
    `dataset`: reads the card's data for calibration and the gate (modelops/inputs.py); None: synthetic."""
    roles_out, sources, files = {}, {}, {}
    for role in card.files:
        roles_out[role], sources[role] = quantize_role(folder, card, role, staging, opts, log, dataset)
        files[role] = file_entry(staging, f"{role}.int8.onnx")
    return variant_entry(roles_out, sources, files, opts)


def publish_variant(folder: Path, name: str, version: str, staging: Path, variant: Variant) -> None:
    """Move the int8 files into the folder and name them in its card, under the model's lock."""
    for entry in variant.files.values():
        with open(staging / entry.path, "rb") as f:
            os.fsync(f.fileno())
    with model_lock(folder.parent, name, wait=True):
        current = verify_model_dir(folder)
        if current.version != version:
            raise ExportError(f"{folder} changed while quantizing (version {version} -> "
                              f"{current.version}); nothing written")
        variants = dict(current.variants)
        if "int8" in variants:  # its files are about to be replaced: first a card that does not name them
            del variants["int8"]
            current.variants = variants
            write_card(folder, current)
        for entry in variant.files.values():
            os.replace(staging / entry.path, folder / entry.path)
        fsync_dir(folder)
        current.variants = {**variants, "int8": variant}
        write_card(folder, current)
        fsync_dir(folder)
        verify_model_dir(folder)


def quantize_model(opts: QuantizeOptions, log=print, dataset: DatasetImages | None = None) -> dict[str, Any]:
    """Build, check and publish `variants.int8` of models/NAME; returns the entry as the card holds it (JSON)."""
    opts.check()
    name, models = opts.name, Path(opts.models)
    folder = models / check_name(name)
    card = verify_model_dir(folder)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.int8-", dir=models))  # dot: never served
    try:
        variant = build_variant(folder, card, staging, opts, log, dataset)
        variant.extra["of_version"] = card.version
        variant.extra["quantized_at"] = utc_stamp(utc_now())
        if opts.dry_run:
            log("dry run: nothing written")
            return to_plain(variant)
        publish_variant(folder, name, card.version, staging, variant)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"published {folder} variants.int8: PSNR vs fp32 {variant.extra['psnr_vs_fp32_db']:.2f} dB "
        f"(worst input {variant.extra['psnr_vs_fp32_db_min']:.2f}), x{variant.extra['speedup']:.2f} vs fp32 "
        f"on this machine")
    return to_plain(variant)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training quantize",
                                description="Write an int8 (QDQ) variant of a published model for the onnxruntime "
                                            "CPU provider, checked against fp32 (docs/model-card.md).")
    p.add_argument("name", help="model name (folder under --models)")
    p.add_argument("--models", default="models", help="the models folder (default: models)")
    p.add_argument("--calibration", type=int, default=32, help="calibration inputs from the training split (32)")
    p.add_argument("--heldout", type=int, default=8, help="held-out inputs for PSNR vs fp32 and timing (8)")
    p.add_argument("--size", type=int, default=64,
                   help="input edge for models without a native size when the data gives whole images, and for "
                        "synthetic inputs (64)")
    p.add_argument("--per-channel", action=argparse.BooleanOptionalAction, default=True,
                   help="one weight scale per output channel (default: on)")
    p.add_argument("--min-psnr", type=float, default=DEFAULT_MIN_PSNR,
                   help="refuse below this PSNR (dB) of int8 vs fp32 on the worst held-out input (40)")
    p.add_argument("--data-root", help="dataset root (default: the card's training config)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per contender (5)")
    p.add_argument("--dry-run", action="store_true", help="measure, write nothing")
    return p


def main(argv: list[str] | None = None, run: Callable[[QuantizeOptions], Any] | None = None) -> int:
    """The CLI: the parsed options to `run` (default: quantize_model on synthetic inputs; training's CLI passes
    one that reads the card's data)."""
    opts = options_from_args(QuantizeOptions, build_parser().parse_args(argv))
    try:
        (run or quantize_model)(opts)
    except QuantizeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except (ExportError, ModelDirError, LockBusy, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
