"""Export a checkpoint's generator(s) to ONNX and publish them as a model folder.

    python -m training export CHECKPOINT --name NAME [--out models] [--tolerance 1e-4] [--no-fp16]
    python -m training export --rollback NAME [--out models]
    python -m training export --verify NAME [--out models]

The folder follows docs/model-card.md: one self-contained ONNX file per role
(`generator`, or `a2b` + `b2a`), an optional fp16 variant per role, and
card.json. Nothing is published unless every graph passes
`onnx.checker.check_model(full_check=True)`, loads in onnxruntime (CPU), and
matches the torch network (eval mode) within `tolerance` on random and real
inputs at two spatial sizes (one non-square) and two batch sizes.

Graphs come from the torch.export-based exporter (`dynamo`, the default in
torch >= 2.9) with dynamic batch and spatial axes; if it cannot trace a
network, the TorchScript exporter (`torchscript`, deprecated upstream) is the
fallback. Either way the symbolic dims are renamed to the card's names
("N", "H", "W", "H*4", ...), so the graph and its card say the same thing.

Publishing is atomic: everything is written into `OUT/.NAME.tmp-XXXX`
(fsynced), then swapped with `OUT/NAME` in one `renameat2(RENAME_EXCHANGE)`
where the OS offers it (else two renames), and the replaced version is kept
as `OUT/.NAME.prev` for `--rollback`. A running service never sees a
half-written folder, and a crash before the swap leaves the old model as it
was.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .checkpoint import fsync_dir

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
CARD_SCHEMA = 1
DEFAULT_TOLERANCE = 1e-4
# fp16 vs fp32 on outputs in [-1, 1]: 0.02 is 2.5 grey levels of 255, below what a viewer sees
DEFAULT_FP16_TOLERANCE = 0.02
TORCHSCRIPT_OPSET = 18
EXPORTERS = ("auto", "dynamo", "torchscript")

# Which field of a dataset sample feeds which graph (for parity on real inputs).
REAL_INPUT_KEY = {
    ("pix2pix", "generator"): "A",
    ("cyclegan", "a2b"): "A",
    ("cyclegan", "b2a"): "B",
    ("srgan", "generator"): "lr",
}


class ExportError(RuntimeError):
    """The export cannot go on; the message says why."""


class ParityError(ExportError):
    """onnxruntime and torch disagree by more than the tolerance: nothing was published."""


class ModelDirError(ValueError):
    """A model folder does not match its card (missing, truncated or changed file, bad card)."""


# ------------------------------------------------------------------ small file helpers

def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_entry(folder: Path, filename: str) -> dict[str, Any]:
    path = folder / filename
    return {"path": filename, "sha256": sha256_file(path), "bytes": path.stat().st_size}


def write_bytes_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def utc_now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def card_json(card: dict[str, Any]) -> bytes:
    return (json.dumps(card, indent=2, allow_nan=False) + "\n").encode()


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ExportError(f"invalid model name {name!r}: use {NAME_RE.pattern} (lowercase, digits, . _ -)")
    return name


# ------------------------------------------------------------------ verify

def _card_files(card: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(what, entry) for every file the card names: roles, then variants."""
    files = card.get("files")
    if not isinstance(files, dict) or not files:
        raise ModelDirError("card.json has no 'files'")
    out = [(f"files.{role}", entry) for role, entry in files.items()]
    for variant, info in (card.get("variants") or {}).items():
        for role, entry in ((info or {}).get("files") or {}).items():
            out.append((f"variants.{variant}.files.{role}", entry))
    return out


def verify_model_dir(path: str | Path, deep: bool = False) -> dict[str, Any]:
    """Re-check a published model folder against its card; returns the card.

    Every file the card names (roles and variants) must exist with the card's
    byte count and sha256. `deep=True` also runs the ONNX checker and opens an
    onnxruntime CPU session on each file. Raises ModelDirError with a message
    naming the file and what is wrong.
    """
    folder = Path(path)
    card_path = folder / "card.json"
    if not card_path.is_file():
        raise ModelDirError(f"{card_path} is missing")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelDirError(f"{card_path} is unreadable: {e}") from e
    if not isinstance(card, dict):
        raise ModelDirError(f"{card_path} is not a JSON object")
    if card.get("schema") != CARD_SCHEMA:
        raise ModelDirError(f"{card_path}: unsupported schema {card.get('schema')!r} (expected {CARD_SCHEMA})")
    for what, entry in _card_files(card):
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise ModelDirError(f"{card_path}: {what} has no path")
        name = entry["path"]
        if name.startswith(".") or "/" in name or "\\" in name:
            raise ModelDirError(f"{card_path}: {what}.path {name!r} is not a plain file name")
        file = folder / name
        if not file.is_file():
            raise ModelDirError(f"{file} ({what}) is missing")
        size = file.stat().st_size
        expected = entry.get("bytes")
        if isinstance(expected, int) and size != expected:
            kind = "truncated" if size < expected else "longer than the card says"
            raise ModelDirError(f"{file} ({what}) is {kind}: {size} bytes, the card says {expected}")
        digest = sha256_file(file)
        if digest != entry.get("sha256"):
            raise ModelDirError(f"sha256 mismatch for {file} ({what}): file has {digest}, "
                                f"the card says {entry.get('sha256')}; the file is corrupt or was changed")
        if deep:
            _deep_check(file, what)
    return card


def _deep_check(file: Path, what: str) -> None:
    import onnx
    import onnxruntime as ort

    try:
        onnx.checker.check_model(str(file), full_check=True)
        ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnx and onnxruntime raise several types
        raise ModelDirError(f"{file} ({what}) is not a loadable ONNX model: {type(e).__name__}: {e}") from e


# ------------------------------------------------------------------ atomic publish / rollback

RENAME_EXCHANGE = 2
AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE). False when the OS/filesystem cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"renameat2({a}, {b}, RENAME_EXCHANGE): {os.strerror(err)}")


class _Published(Exception):
    """install() finished the swap but could not file the old version as .prev."""


def _rename(src: Path, dst: Path) -> None:
    os.rename(src, dst)


@contextlib.contextmanager
def model_lock(out: Path, name: str, wait: bool = False):
    """One export/rollback/eval-write of NAME at a time (flock on OUT/.NAME.lock)."""
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / f".{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise ExportError(f"another export or rollback of {name!r} is running in {out}") from None
        yield
    finally:
        os.close(fd)


def install(staging: Path, out: Path, name: str) -> None:
    """Move a fully written, fsynced `staging` folder into OUT/NAME; the old one becomes OUT/.NAME.prev.

    With RENAME_EXCHANGE there is no instant without OUT/NAME. Without it,
    OUT/NAME is renamed to .prev and staging into place; if the second rename
    fails, .prev is moved back.
    """
    target, prev = out / name, out / f".{name}.prev"
    if target.exists():
        if _exchange(staging, target):  # published; staging now holds the old version
            fsync_dir(out)
            try:
                if prev.exists():
                    shutil.rmtree(prev)
                _rename(staging, prev)
            except OSError as e:  # the new model is live: do not fail the export over the rollback copy
                print(f"warning: published, but could not keep the old version as {prev} ({e}); "
                      f"it is left in {staging}", file=sys.stderr)
                raise _Published() from e
        else:
            if prev.exists():
                shutil.rmtree(prev)
            _rename(target, prev)
            try:
                _rename(staging, target)
            except BaseException:
                with contextlib.suppress(OSError):
                    _rename(prev, target)
                raise
    else:
        _rename(staging, target)
    fsync_dir(out)


def rollback(name: str, out: str | Path = "models", log=print) -> Path:
    """Swap OUT/.NAME.prev back into OUT/NAME; the replaced version becomes .NAME.prev (so twice = forward)."""
    out = Path(out)
    check_name(name)
    target, prev = out / name, out / f".{name}.prev"
    with model_lock(out, name):
        if not prev.is_dir():
            raise ExportError(f"nothing to roll back to: {prev} does not exist")
        try:
            card = verify_model_dir(prev)
        except ModelDirError as e:
            raise ExportError(f"refusing to roll back to a damaged version: {e}") from e
        if target.exists():
            if not _exchange(prev, target):
                hold = out / f".{name}.rollback-tmp"
                if hold.exists():
                    shutil.rmtree(hold)
                _rename(target, hold)
                try:
                    _rename(prev, target)
                except BaseException:
                    _rename(hold, target)
                    raise
                _rename(hold, prev)
        else:
            _rename(prev, target)
        fsync_dir(out)
    log(f"rolled back {target} to version {card.get('version')}"
        + (f"; the replaced version is kept as {prev}" if prev.exists() else ""))
    return target


def write_card(model_dir: Path, card: dict[str, Any]) -> None:
    """Rewrite card.json atomically (temp file + rename in the same folder)."""
    from .checkpoint import atomic_write
    data = card_json(card)
    atomic_write(Path(model_dir) / "card.json", lambda f: f.write(data))


# ------------------------------------------------------------------ graph export

def output_shape(spec, out: "torch.Tensor") -> list[Any]:
    """Card/graph shape of `output`: symbolic for image models, concrete C/H/W for generators."""
    card = spec.card
    shape: list[Any] = ["N", int(out.shape[1])]
    if "input" in card:  # image -> image
        scale = int(card["output"].get("scale", 1))
        shape += ["H", "W"] if scale == 1 else [f"H*{scale}", f"W*{scale}"]
    else:
        shape += [int(d) for d in out.shape[2:]]
    return shape


def quiet_exporter():
    """Silence the exporters' progress prints and deprecation chatter."""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    return stack


def _export_dynamo(spec, path: Path, out_shape: list[Any]) -> None:
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
    used = "torchscript" if exporter == "torchscript" else "dynamo"
    if used == "dynamo":
        try:
            _export_dynamo(spec, path, out_shape)
        except Exception as e:  # noqa: BLE001 - torch.export raises many types
            if exporter == "dynamo":
                raise ExportError(f"the dynamo exporter failed: {type(e).__name__}: {str(e)[:2000]}") from e
            log(f"warning: the dynamo exporter failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                f"using the TorchScript exporter")
            used = "torchscript"
    if used == "torchscript":
        _export_torchscript(spec, path, out_shape)
    side = [p for p in path.parent.iterdir() if p.name.startswith(path.name) and p != path]
    model = onnx.load(str(path), load_external_data=True)
    for p in side:  # weights that went to a side file are now inlined
        p.unlink()
    _rename_dims(model, spec, out_shape)
    data = model.SerializeToString()
    write_bytes_durably(path, data)
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
    import onnx
    import onnxruntime as ort
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"{what}: onnx.checker rejects {path.name}: {e}") from e
    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"{what}: onnxruntime (CPU) cannot load {path.name}: {e}") from e


# ------------------------------------------------------------------ parity inputs

@dataclass
class Case:
    kind: str  # random | real
    feeds: dict[str, np.ndarray]


def parity_sizes(card_input: dict[str, Any]) -> list[list[int]]:
    """Two [H, W] sizes meeting multiple_of/min_size: square (or native) and non-square."""
    m = int(card_input.get("multiple_of") or 1)
    lo = int(card_input.get("min_size") or 1)

    def up(v: int) -> int:
        return max(lo, -(-v // m) * m)

    native = card_input.get("native_size")
    first = [int(native[0]), int(native[1])] if native else [up(64), up(64)]
    second = [up(60), up(100)]
    if second[0] == second[1]:
        second[1] += m
    if second == first:
        second[1] += m
    return [first, second]


def _fit(image, h: int, w: int):
    """C x h0 x w0 tensor -> C x h x w: upscale (bilinear) when too small, then centre crop."""
    import torch.nn.functional as F
    _, h0, w0 = image.shape
    if h0 < h or w0 < w:
        s = max(h / h0, w / w0)
        nh, nw = max(h, round(h0 * s + 0.5)), max(w, round(w0 * s + 0.5))
        image = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False)[0].clamp(-1, 1)
        _, h0, w0 = image.shape
    y, x = (h0 - h) // 2, (w0 - w) // 2
    return image[:, y:y + h, x:x + w]


def real_images(cfg, data_root: str | None, key: str, count: int) -> tuple[list[Any], str]:
    """Up to `count` held-out samples' `key` tensors and a description (or [] and why not)."""
    from .data import DataConfig, DataError, build_dataset

    data = dict(cfg.data)
    if data_root:
        data["root"] = data_root
    if data.get("kind") == "hr_folder":
        data["hr_size"] = None  # whole held-out images (cut to a multiple of scale), not training crops
    root = data.get("root")
    try:
        reader = build_dataset(DataConfig(**data), "test")
        n = min(count, len(reader))
        samples = [reader.sample(i, np.random.default_rng([0, i]))[key] for i in range(n)]
    except (DataError, OSError, ValueError, KeyError) as e:
        return [], f"no real inputs: the held-out split under {root!r} cannot be read ({e})"
    if not samples:
        return [], f"no real inputs: the held-out split under {root!r} is empty"
    return samples, f"{data.get('kind')} {root} (test split, {n} samples)"


def parity_cases(family: str, role: str, spec, cfg, data_root: str | None,
                 seed: int = 0) -> tuple[list[Case], dict[str, Any]]:
    rng = np.random.default_rng(seed)
    info: dict[str, Any] = {}
    cases: list[Case] = []
    if "input" not in spec.card:  # generator: z [N, latent] (+ label [N])
        latent = int(spec.card["latent_dim"])
        k = int(getattr(cfg.model, "num_classes", 1))
        batches = [1, 3, 2 * k]
        for n in batches:
            feeds = {"z": rng.standard_normal((n, latent)).astype(np.float32)}
            if "label" in spec.input_names:
                feeds["label"] = (np.arange(n) % k).astype(np.int64) if n >= k else rng.integers(0, k, n).astype(np.int64)
            cases.append(Case("random", feeds))
        info.update(batches=batches, labels=k, real=None,
                    real_note="a generator has no data input: z ~ N(0, I) at every batch size, every label")
        return cases, info

    card_in = spec.card["input"]
    c = int(card_in["channels"])
    lo, hi = card_in.get("range", [-1.0, 1.0])
    sizes = parity_sizes(card_in)
    batches = [1, 2]
    for h, w in sizes:
        for n in batches:
            cases.append(Case("random", {"image": rng.uniform(lo, hi, (n, c, h, w)).astype(np.float32)}))
    info.update(sizes=sizes, batches=batches)
    key = REAL_INPUT_KEY.get((family, role))
    if key is None:
        info["real_note"] = f"no real inputs: no dataset field is known to feed {family}/{role}"
        return cases, info
    images, source = real_images(cfg, data_root, key, max(batches))
    if not images:
        info["real_note"] = source
        return cases, info
    import torch
    for h, w in sizes:
        for n in batches:
            batch = torch.stack([_fit(images[i % len(images)], h, w) for i in range(n)])
            if batch.shape[1] != c:
                info["real_note"] = f"no real inputs: dataset field {key!r} has {batch.shape[1]} channels, graph takes {c}"
                return [x for x in cases if x.kind == "random"], info
            cases.append(Case("real", {"image": batch.numpy().astype(np.float32)}))
    info["real_source"] = source
    return cases, info


def measure(session, spec, cases: list[Case], reference: Callable | None = None) -> dict[str, float]:
    """Max abs difference of `session` vs torch (or vs `reference(feeds)`), per case kind."""
    import torch
    worst: dict[str, float] = {}
    for case in cases:
        got = session.run(["output"], case.feeds)[0]
        if reference is None:
            with torch.no_grad():
                want = spec.module(*[torch.from_numpy(case.feeds[n]) for n in spec.input_names]).numpy()
        else:
            want = reference(case.feeds)
        if got.shape != want.shape:
            raise ExportError(f"onnxruntime output shape {got.shape} differs from torch {want.shape} "
                              f"for inputs {[v.shape for v in case.feeds.values()]}")
        err = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))) if got.size else 0.0
        if not np.isfinite(err):
            err = float("inf")
        worst[case.kind] = max(worst.get(case.kind, 0.0), err)
    return worst


def cpu_session(path: Path):
    import onnxruntime as ort
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


# ------------------------------------------------------------------ fp16

def _toposort(graph) -> None:
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
    _toposort(half.graph)
    write_bytes_durably(dst, half.SerializeToString())
    onnx.checker.check_model(str(dst), full_check=True)


# ------------------------------------------------------------------ card

def _dataset_block(cfg, meta: dict[str, Any]) -> dict[str, Any]:
    ds = dict(meta.get("dataset") or {})
    source = ds.get("source")
    if isinstance(source, list):
        source = ", ".join(f"debian:{p.get('package')} {p.get('version')}" if isinstance(p, dict) else str(p)
                           for p in source)
    block = {"name": ds.get("name") or Path(str(cfg.data.get("root", ""))).name or cfg.data.get("kind"),
             "kind": cfg.data.get("kind"), "root": cfg.data.get("root"), "source": source}
    if ds.get("manifest_sha256"):
        block["manifest_sha256"] = ds["manifest_sha256"]
    return block


def class_names(cfg) -> list[str]:
    from .data import FASHION_MNIST_CLASSES
    k = int(cfg.model.num_classes)
    if cfg.data.get("kind") == "fashion_mnist" and k == len(FASHION_MNIST_CLASSES):
        return list(FASHION_MNIST_CLASSES)
    return [str(i) for i in range(k)]


def domain_names(cfg) -> dict[str, str]:
    from .data import FASHION_MNIST_CLASSES
    data = cfg.data
    if data.get("kind") == "fashion_mnist_domains":
        return {"a": FASHION_MNIST_CLASSES[int(data.get("class_a", 7))],
                "b": FASHION_MNIST_CLASSES[int(data.get("class_b", 9))]}
    stem = Path(str(data.get("root", ""))).name
    if re.fullmatch(r"[A-Za-z0-9_-]+2[A-Za-z0-9_-]+", stem or ""):
        a, b = stem.split("2", 1)
        return {"a": a, "b": b}
    return {"a": "A", "b": "B"}


def eval_mode_notes(family: str, specs: dict[str, Any]) -> list[str]:
    import torch
    modules = [m for s in specs.values() for m in s.module.modules()]
    notes = []
    if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in modules):
        note = "batch norm is exported in eval mode with its running statistics"
        if family == "pix2pix":
            note += (" (the pix2pix reference runs batch norm on batch statistics at test time; here outputs"
                     " do not depend on the batch, and onnxruntime was checked against torch eval mode)")
        notes.append(note)
    if any(isinstance(m, torch.nn.Dropout) for m in modules):
        notes.append("dropout is off (eval mode): the graph is deterministic")
    return notes


def content_version(folder: Path, files: list[str], when: datetime) -> str:
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name} {sha256_file(folder / name)}\n".encode())
    return f"{h.hexdigest()[:12]}-{when.strftime('%Y%m%dT%H%M%SZ')}"


def runtimes() -> dict[str, str]:
    import onnx
    import onnxruntime as ort
    import torch
    return {"torch": torch.__version__.split("+")[0], "onnx": onnx.__version__, "onnxruntime": ort.__version__}


# ------------------------------------------------------------------ export

@dataclass
class ExportResult:
    path: Path
    card: dict[str, Any]
    parity_max_abs: float
    fp16: dict[str, Any] = field(default_factory=dict)


def export_checkpoint(checkpoint: str | Path, name: str, out: str | Path = "models",
                      tolerance: float = DEFAULT_TOLERANCE, fp16: bool = True,
                      fp16_tolerance: float = DEFAULT_FP16_TOLERANCE, description: str | None = None,
                      exporter: str = "auto", data_root: str | None = None, optimize: bool = True,
                      log=print) -> ExportResult:
    """Export, check and publish a checkpoint as OUT/NAME (see the module docstring)."""
    from . import checkpoint as ckpt
    from .recipes.base import Recipe

    check_name(name)
    if not (tolerance >= 0):
        raise ExportError(f"tolerance must be >= 0, got {tolerance}")
    out = Path(out)
    if Path(checkpoint).is_dir():  # a run folder: its newest valid checkpoint
        found = ckpt.latest_valid(checkpoint, log=log)
        if found is None:
            raise ExportError(f"no readable checkpoint in {Path(checkpoint) / 'checkpoints'}")
        checkpoint, payload = found
    else:
        payload = ckpt.load(checkpoint)
    recipe = Recipe.from_checkpoint(payload, "cpu")
    cfg = recipe.cfg
    specs = recipe.export_specs()
    for spec in specs.values():
        spec.module.eval()

    with model_lock(out, name):
        for stale in out.glob(f".{name}.tmp-*"):  # left by a crash; we hold the lock, so nobody is writing it
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=out))
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700; the service may run as another user
        try:
            result = _build(staging, name, checkpoint, payload, recipe, specs, tolerance, fp16, fp16_tolerance,
                            description, exporter, data_root, log, optimize)
            fsync_dir(staging)
            install(staging, out, name)
        except _Published:
            pass  # staging holds the old version now: keep it
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    result.path = out / name
    log(f"published {result.path} (version {result.card['version']}; parity max abs "
        f"{result.parity_max_abs:.2e} <= {tolerance:g})")
    return result


def _build(staging: Path, name: str, checkpoint, payload, recipe, specs, tolerance: float, fp16: bool,
           fp16_tolerance: float, description: str | None, exporter: str, data_root: str | None,
           log, optimize: bool = True) -> ExportResult:
    """Write and check every file of the folder into `staging`; raises ParityError over the tolerance."""
    cfg = recipe.cfg
    family, endpoint = recipe.family, recipe.endpoint
    files: dict[str, dict[str, Any]] = {}
    graph = None
    used: set[str] = set()
    parity: dict[str, Any] = {}
    cases_by_role: dict[str, list[Case]] = {}
    worst = {"random": 0.0}
    rewrites: dict[str, dict[str, int]] = {}
    for role, spec in specs.items():
        path = staging / f"{role}.onnx"
        t0 = time.perf_counter()
        used.add(export_graph(spec, path, exporter, log))
        check_graph(path, role)
        if optimize:  # exact rewrites for onnxruntime CPU (training/optimize.py); parity below checks them
            from .optimize import optimize_graph
            counts = optimize_graph(path)
            if counts:
                rewrites[role] = counts
                check_graph(path, role)
        cases, info = parity_cases(family, role, spec, cfg, data_root)
        errs = measure(cpu_session(path), spec, cases)
        for kind, err in errs.items():
            worst[kind] = max(worst.get(kind, 0.0), err)
        cases_by_role[role] = cases
        parity[role] = {**{k: v for k, v in errs.items()}, **info}
        log(f"{role}: exported ({', '.join(sorted(used))}) in {time.perf_counter() - t0:.1f}s; "
            f"parity max abs {', '.join(f'{k} {v:.2e}' for k, v in errs.items())}")
        role_graph = graph_io(path)
        if graph is not None and role_graph != graph:
            raise ExportError(f"roles have different graph I/O: {graph} vs {role_graph}")
        graph = role_graph
        files[role] = file_entry(staging, path.name)

    max_abs = max(worst.values())
    if not max_abs <= tolerance:
        over = max_abs - tolerance
        ratio = f" ({max_abs / tolerance:.1f}x)" if tolerance > 0 else ""
        raise ParityError(f"refusing to publish {name!r}: torch vs onnxruntime max abs error {max_abs:.3e} "
                          f"exceeds the tolerance {tolerance:.1e} by {over:.3e}{ratio} "
                          f"(per role: {json.dumps({r: {k: v for k, v in p.items() if k in ('random', 'real')} for r, p in parity.items()})})")

    variants: dict[str, Any] = {}
    if fp16:
        variants["fp16"] = _fp16_variant(staging, specs, cases_by_role, fp16_tolerance, log)

    first = next(iter(parity.values()))
    parity_block: dict[str, Any] = {
        "random": worst["random"], "real": worst.get("real"),
        "tolerance": tolerance, "exporter": "+".join(sorted(used)),
    }
    for key in ("sizes", "batches", "labels", "real_source", "real_note"):
        if key in first:
            parity_block[key] = first[key]
    if len(parity) > 1:
        parity_block["roles"] = {r: {k: v for k, v in p.items() if k in ("random", "real")} for r, p in parity.items()}

    onnx_files = [e["path"] for e in files.values()]
    onnx_files += [e["path"] for v in variants.values() for e in (v.get("files") or {}).values()]
    when = utc_now()
    first_spec = next(iter(specs.values()))
    meta = payload.get("meta") or {}
    steps = int(payload.get("step", 0))
    card: dict[str, Any] = {
        "schema": CARD_SCHEMA,
        "name": name,
        "endpoint": endpoint,
        "family": family,
        "description": description or _default_description(cfg, family, endpoint, steps, meta),
        "version": content_version(staging, onnx_files, when),
        "exported_at": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "opset": opset_of(staging / files[next(iter(files))]["path"]),
        "exporter": "+".join(sorted(used)),
        "runtimes": runtimes(),
        "files": files,
    }
    if variants:
        card["variants"] = variants
    if rewrites:
        card["optimized"] = {"rewrites": rewrites, "at": when.strftime("%Y-%m-%dT%H:%M:%SZ")}
    card["graph"] = graph
    for key in ("input", "output", "tiling", "latent_dim"):
        if key in first_spec.card:
            card[key] = first_spec.card[key]
    if endpoint == "generate" and "label" in first_spec.input_names:
        card["classes"] = class_names(cfg)
    if family == "cyclegan":
        card["domains"] = domain_names(cfg)
        chans = {r: s.card["input"]["channels"] for r, s in specs.items()}
        if len(set(chans.values())) > 1:
            card["roles"] = {r: {"input": s.card["input"], "output": s.card["output"]} for r, s in specs.items()}
    notes = eval_mode_notes(family, specs)
    if notes:
        card["notes"] = notes
    card["training"] = {
        "dataset": _dataset_block(cfg, meta),
        "config": payload.get("config"),
        "steps": steps,
        "git_commit": meta.get("git_commit", "unknown"),
        "torch": meta.get("torch"),
        "checkpoint": {"path": str(checkpoint), "sha256": sha256_file(Path(checkpoint))},
    }
    card["metrics"] = {"parity_max_abs": max_abs, "parity": parity_block}
    write_bytes_durably(staging / "card.json", card_json(card))
    return ExportResult(staging, card, max_abs, variants.get("fp16", {}))


def _default_description(cfg, family: str, endpoint: str, steps: int, meta: dict[str, Any]) -> str:
    data = (meta.get("dataset") or {}).get("name") or cfg.data.get("kind")
    extra = ""
    if family == "srgan":
        extra = f" x{cfg.model.generator.scale}"
    return f"{family}{extra} '{cfg.name}' ({endpoint}), {steps} steps on {data}"


def _fp16_variant(staging: Path, specs, cases_by_role: dict[str, list[Case]], tolerance: float, log) -> dict[str, Any]:
    """fp16 files checked against the fp32 graphs on CPU; on failure, a `produced: load` entry saying why."""
    try:
        from onnxruntime.transformers import float16  # noqa: F401
    except ImportError as e:
        return {"produced": "load", "note": f"not converted at export: onnxruntime.transformers.float16 "
                                            f"is not importable ({e})"}
    files: dict[str, Any] = {}
    worst = 0.0
    verified = True
    notes = []
    for role, spec in specs.items():
        src, dst = staging / f"{role}.onnx", staging / f"{role}.fp16.onnx"
        try:
            make_fp16(src, dst)
        except Exception as e:  # noqa: BLE001
            _unlink_fp16(staging, specs)
            log(f"warning: no fp16 variant: conversion of {role} failed: {e}")
            return {"produced": "load", "note": f"fp16 conversion failed at export ({type(e).__name__}: {e})"}
        fp32 = cpu_session(src)
        try:
            half = cpu_session(dst)
        except Exception as e:  # noqa: BLE001 - CPU lacks an fp16 kernel: publish unverified, say so
            verified = False
            notes.append(f"{role}: onnxruntime CPU cannot run the fp16 graph ({type(e).__name__}); "
                         f"checked by onnx.checker only")
            files[role] = file_entry(staging, dst.name)
            continue

        def reference(feeds, fp32=fp32):
            return fp32.run(["output"], feeds)[0]

        errs = measure(half, spec, cases_by_role[role], reference)
        worst = max(worst, *errs.values())
        files[role] = file_entry(staging, dst.name)
    if verified and not worst <= tolerance:
        _unlink_fp16(staging, specs)
        log(f"warning: no fp16 variant: fp16 vs fp32 max abs {worst:.3e} exceeds {tolerance:g}")
        return {"produced": "load", "note": f"fp16 graph left out: max abs vs fp32 {worst:.3e} "
                                            f"exceeds the tolerance {tolerance:g}"}
    entry: dict[str, Any] = {"produced": "export", "tolerance_max_abs": tolerance,
                             "max_abs": worst if verified else None,
                             "checked_on": "CPUExecutionProvider" if verified else None,
                             "keep_io_types": True, "files": files}
    if notes:
        entry["note"] = "; ".join(notes)
    log(f"fp16 variant: max abs vs fp32 {worst:.2e} (tolerance {tolerance:g})" if verified
        else "fp16 variant: not verifiable on CPU")
    return entry


def _unlink_fp16(staging: Path, specs) -> None:
    for role in specs:
        (staging / f"{role}.fp16.onnx").unlink(missing_ok=True)


# ------------------------------------------------------------------ CLI

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training export",
        description="Export a checkpoint to ONNX, check it against torch, and publish it atomically as "
                    "OUT/NAME (docs/model-card.md). --rollback NAME swaps the previous version back; "
                    "--verify NAME re-checks a published folder.")
    p.add_argument("checkpoint", nargs="?", help="a checkpoint (runs/fashion/checkpoints/ckpt-00006000.pt), "
                                                 "or a run folder (runs/fashion: its newest valid checkpoint)")
    p.add_argument("--name", help="model name (folder under --out; ^[a-z0-9][a-z0-9._-]{0,63}$)")
    p.add_argument("--out", default="models", help="the models folder (default: models)")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help="max abs torch-vs-onnxruntime error allowed (default: 1e-4)")
    p.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=True,
                   help="also write <role>.fp16.onnx for the CUDA provider (default: on)")
    p.add_argument("--fp16-tolerance", type=float, default=DEFAULT_FP16_TOLERANCE,
                   help="max abs fp16-vs-fp32 error allowed for the fp16 variant (default: 0.02)")
    p.add_argument("--description", help="one line for the card (default: from the config)")
    p.add_argument("--exporter", choices=EXPORTERS, default="auto",
                   help="auto: dynamo, falling back to torchscript (default)")
    p.add_argument("--data-root", help="dataset root for the real parity inputs (default: the run config's)")
    p.add_argument("--optimize", action=argparse.BooleanOptionalAction, default=True,
                   help="apply the measured exact rewrites for onnxruntime CPU (training/optimize.py; default: on)")
    p.add_argument("--rollback", metavar="NAME", help="swap OUT/.NAME.prev back into OUT/NAME")
    p.add_argument("--verify", metavar="NAME", help="re-check OUT/NAME: every file against the card's sha256")
    return p


def main(argv: list[str] | None = None) -> int:
    from .checkpoint import CheckpointError

    args = build_parser().parse_args(argv)
    try:
        if args.rollback:
            rollback(args.rollback, args.out)
            return 0
        if args.verify:
            card = verify_model_dir(Path(args.out) / check_name(args.verify), deep=True)
            print(f"{Path(args.out) / args.verify}: ok (version {card.get('version')}, "
                  f"{len(_card_files(card))} file(s) match the card)")
            return 0
        if not args.checkpoint or not args.name:
            print("error: give CHECKPOINT and --name NAME (or --rollback NAME / --verify NAME)", file=sys.stderr)
            return 2
        export_checkpoint(args.checkpoint, args.name, args.out, args.tolerance, args.fp16, args.fp16_tolerance,
                          args.description, args.exporter, args.data_root, args.optimize)
        return 0
    except ParityError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except (ExportError, ModelDirError, CheckpointError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
