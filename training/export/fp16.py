"""The fp16 variant written at export: fp16 weights and compute, float32 inputs and outputs.

Each `<role>.fp16.onnx` is checked against its fp32 graph on the CPU provider (the same parity
cases); over the tolerance, or when the converter is missing or fails, the card says so in a
`produced: load` entry instead (the service converts at load time then).
"""
from __future__ import annotations

from pathlib import Path

from contract import Variant
from contract.folder import file_entry, write_bytes_durably

from .parity import Case, cpu_session, measure
from .graph import quiet_exporter
from .options import ExportError


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

    return max(measure(half, spec, cases, reference).values())


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
    return Variant(produced="export", files=files, note="; ".join(notes) or None,
                   extra={"tolerance_max_abs": tolerance, "max_abs": worst if verified else None,
                          "checked_on": "CPUExecutionProvider" if verified else None, "keep_io_types": True})
