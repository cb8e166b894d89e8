"""torch -> ONNX: one self-contained file per role, with the card's symbolic dims; and reading it back.

The torch.export-based exporter (`dynamo`) is tried first; when it cannot trace a network
the TorchScript exporter (`torchscript`) is the fallback (or either is forced). The dims
torch names (`s0`, `batch`, ...) are renamed to the card's ("N", "H", "W", "H*4").
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from contract.folder import write_bytes_durably
from modelops.numerics import quiet_exporter

from .options import EXPORTERS, ExportError

TORCHSCRIPT_OPSET = 18


def output_shape(spec, out) -> list[Any]:
    """Card/graph shape of `output`: symbolic for image models, concrete C/H/W for generators."""
    card = spec.card
    shape: list[Any] = ["N", int(out.shape[1])]
    if "input" in card:  # image -> image
        scale = int(card["output"].get("scale", 1))
        shape += ["H", "W"] if scale == 1 else [f"H*{scale}", f"W*{scale}"]
    else:
        shape += [int(d) for d in out.shape[2:]]
    return shape


def _export_dynamo(spec, path: Path) -> None:
    import torch
    dyn = torch.export.Dim.DYNAMIC
    # batch 2: torch.export specialises a dimension traced at size 1
    example = tuple(torch.cat([t, t]) if 0 in spec.dynamic_axes.get(n, {}) else t
                    for t, n in zip(spec.example_inputs, spec.input_names))
    shapes = tuple({axis: dyn for axis in spec.dynamic_axes.get(n, {})} or None for n in spec.input_names)
    with quiet_exporter():
        torch.onnx.export(spec.module, example, str(path), input_names=list(spec.input_names),
                          output_names=["output"], dynamic_shapes=shapes, dynamo=True,
                          external_data=False, optimize=True, verbose=False)


def _export_torchscript(spec, path: Path, out_shape: list[Any]) -> None:
    import torch
    axes = {n: dict(spec.dynamic_axes.get(n, {})) for n in spec.input_names}
    axes["output"] = {i: s for i, s in enumerate(out_shape) if isinstance(s, str)}
    with quiet_exporter():
        torch.onnx.export(spec.module, spec.example_inputs, str(path), input_names=list(spec.input_names),
                          output_names=["output"], dynamic_axes=axes, opset_version=TORCHSCRIPT_OPSET,
                          dynamo=False)


def _rename_dims(model, spec, out_shape: list[Any]) -> None:
    """Give the graph's I/O the card's symbolic dims; rename the same symbols inside the graph."""
    mapping: dict[str, str] = {}
    for value in model.graph.input:
        axes = spec.dynamic_axes.get(value.name, {})
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if axis in axes:
                if dim.dim_param and dim.dim_param != axes[axis]:
                    mapping[dim.dim_param] = axes[axis]
                dim.dim_param = axes[axis]
    for value in model.graph.output:
        dims = value.type.tensor_type.shape.dim
        if len(dims) != len(out_shape):
            raise ExportError(f"graph output {value.name} has rank {len(dims)}, expected {len(out_shape)}")
        for dim, want in zip(dims, out_shape):
            if isinstance(want, str):
                dim.dim_param = want
            else:
                dim.dim_value = int(want)
    if mapping:
        pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(mapping, key=len, reverse=True))) + r")\b")
        for value in model.graph.value_info:
            for dim in value.type.tensor_type.shape.dim:
                if dim.dim_param:
                    dim.dim_param = pattern.sub(lambda m: mapping[m.group(1)], dim.dim_param)


def _trace(spec, path: Path, exporter: str, out_shape: list[Any], log) -> str:
    """Run the exporter (dynamo, falling back to TorchScript under `auto`); returns the one used."""
    used = "torchscript" if exporter == "torchscript" else "dynamo"
    if used == "dynamo":
        try:
            _export_dynamo(spec, path)
        except Exception as e:  # noqa: BLE001 - torch.export raises many types
            if exporter == "dynamo":
                raise ExportError(f"the dynamo exporter failed: {type(e).__name__}: {str(e)[:2000]}") from e
            log(f"warning: the dynamo exporter failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                f"using the TorchScript exporter")
            used = "torchscript"
    if used == "torchscript":
        _export_torchscript(spec, path, out_shape)
    return used


def export_graph(spec, path: Path, exporter: str = "auto", log=print) -> str:
    """Write `spec.module` (in eval mode) to one self-contained ONNX file; returns the exporter used."""
    import onnx
    import torch

    if exporter not in EXPORTERS:
        raise ExportError(f"unknown exporter {exporter!r} ({', '.join(EXPORTERS)})")
    spec.module.eval()
    with torch.no_grad():
        out = spec.module(*spec.example_inputs)
    out_shape = output_shape(spec, out)
    used = _trace(spec, path, exporter, out_shape, log)
    side = [p for p in path.parent.iterdir() if p.name.startswith(path.name) and p != path]
    model = onnx.load(str(path), load_external_data=True)
    for p in side:  # weights that went to a side file are now inlined
        p.unlink()
    _rename_dims(model, spec, out_shape)
    write_bytes_durably(path, model.SerializeToString())
    return used


def graph_io(path: Path) -> dict[str, list[dict[str, Any]]]:
    """The card's `graph` block, read from the ONNX file itself."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path), load_external_data=False)

    def describe(value) -> dict[str, Any]:
        t = value.type.tensor_type
        return {"name": value.name, "dtype": str(np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type))),
                "shape": [d.dim_param if d.dim_param else int(d.dim_value) for d in t.shape.dim]}

    return {"inputs": [describe(v) for v in model.graph.input],
            "outputs": [describe(v) for v in model.graph.output]}


def opset_of(path: Path) -> int:
    import onnx
    model = onnx.load(str(path), load_external_data=False)
    return int(next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")))


def check_graph(path: Path, what: str) -> None:
    """onnx.checker (full) and an onnxruntime CPU session must both accept the file."""
    import onnx

    from core.runtime import make_session
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"{what}: onnx.checker rejects {path.name}: {e}") from e
    try:
        make_session(path)
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"{what}: onnxruntime (CPU) cannot load {path.name}: {e}") from e


def runtimes() -> dict[str, str]:
    import onnx
    import onnxruntime as ort
    import torch
    return {"torch": torch.__version__.split("+")[0], "onnx": onnx.__version__, "onnxruntime": ort.__version__}
