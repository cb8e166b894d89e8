"""int8 variant of a published model, for the onnxruntime CPU provider.

    python -m training quantize NAME [--models models] [--calibration 32] [--heldout 8]
                                [--per-channel/--no-per-channel] [--min-psnr 40] [--data-root DIR]
                                [--rounds 5] [--dry-run]

Reads `models/NAME` (verified against its card), and for every role writes
`<role>.int8.onnx`: onnxruntime's static quantization in QDQ format
(`quantize_static`: uint8 activations, int8 weights, per output channel by
default, MinMax calibration), which the CPU provider fuses into QLinearConv
and friends (VNNI kernels where the CPU has them).

Before quantizing, exact rewrites of the fp32 graph (checked against it):

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
atomically under the model's lock (`variants.int8`), so a reader sees either
the old card or the new card with its files in place; `version` does not
change (it names the fp32 export; `variants.int8.of_version` repeats it).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import fsync_dir
from .export import (REAL_INPUT_KEY, ExportError, ModelDirError, check_name, file_entry, model_lock, utc_now,
                     verify_model_dir, write_bytes_durably, write_card)

DEFAULT_MIN_PSNR = 40.0
PAD_TO = 16  # output-channel block of the int8 conv kernels
SETTLE_S = 0.05  # as bench/common.SETTLE_S: worker threads idle before each timed call


class QuantizeError(ExportError):
    """The int8 graph is not close enough to fp32: nothing was written."""


# ------------------------------------------------------------------ exact graph rewrites

def _initializers(graph) -> dict[str, Any]:
    return {t.name: t for t in graph.initializer}


def _attrs(node) -> dict[str, Any]:
    from onnx import helper
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _rewrite_nodes(graph, one) -> int:
    """Replace each node for which `one(node)` returns new nodes (None: keep it); returns how many were replaced."""
    nodes, count = [], 0
    for node in list(graph.node):
        new = one(node)
        nodes += [node] if new is None else new
        count += new is not None
    del graph.node[:]
    graph.node.extend(nodes)
    return count


def convtranspose_as_conv(model) -> int:
    """Rewrite each 2-D ConvTranspose (group 1, no dilation) as Conv(s*s phases) + DepthToSpace(s, CRD).

    Output y[o, s*i + r] = sum_{c, d} x[c, i - d] * W[c, o, s*d + r + p]: per phase r a correlation
    over the taps d with 0 <= s*d + r + p < k. Only when the output is exactly s x the input
    (k - 2p + output_padding == s per axis), or s == 1. Returns how many nodes were rewritten.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = _initializers(graph)

    def one(node) -> list | None:
        a = _attrs(node)
        w_init = inits.get(node.input[1]) if node.op_type == "ConvTranspose" and len(node.input) > 1 else None
        ok = (w_init is not None and a.get("group", 1) == 1 and a.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
              and "output_shape" not in a and all(v == 1 for v in a.get("dilations", [1, 1])))
        if ok:
            w = numpy_helper.to_array(w_init)  # [Cin, Cout, kh, kw]
            ok = w.ndim == 4
        if ok:
            strides = list(a.get("strides", [1, 1]))
            pads = list(a.get("pads", [0, 0, 0, 0]))
            outpad = list(a.get("output_padding", [0, 0]))
            ok = pads[0] == pads[2] and pads[1] == pads[3] and len(set(strides)) == 1
        if ok:
            s = strides[0]
            plan = []
            for axis in range(2):
                k, p, op = w.shape[2 + axis], pads[axis], outpad[axis]
                extra = k - 2 * p + op - s  # output = s * L + extra
                if extra % s:
                    ok = False
                    break
                e = extra // s
                taps = [d for d in range(-k, k + 1) for r in range(s) if 0 <= s * d + r + p < k]
                d_min, d_max = min(taps), max(taps)
                left, right = d_max, e - d_min
                if left < 0 or right < 0:
                    ok = False
                    break
                plan.append((k, p, d_min, d_max, left, right))
        if not ok:
            return None
        cin, cout = w.shape[:2]
        (kh, ph, dmin_h, dmax_h, lh, rh), (kw, pw, dmin_w, dmax_w, lw, rw) = plan
        kern = np.zeros((cout * s * s, cin, dmax_h - dmin_h + 1, dmax_w - dmin_w + 1), dtype=w.dtype)
        for rh_ in range(s):
            for rw_ in range(s):
                for jh in range(kern.shape[2]):
                    th = s * (dmax_h - jh) + rh_ + ph
                    if not 0 <= th < kh:
                        continue
                    for jw in range(kern.shape[3]):
                        tw = s * (dmax_w - jw) + rw_ + pw
                        if 0 <= tw < kw:
                            kern[rh_ * s + rw_::s * s, :, jh, jw] = w[:, :, th, tw].T
        base = node.name or node.output[0]
        w_name = f"{base}_as_conv_w"
        graph.initializer.append(numpy_helper.from_array(kern, w_name))
        conv_in = [node.input[0], w_name]
        if len(node.input) > 2 and node.input[2]:
            b_init = inits.get(node.input[2])
            if b_init is None:  # a computed bias: keep the node as it is
                graph.initializer.pop()
                return None
            b_name = f"{base}_as_conv_b"
            graph.initializer.append(numpy_helper.from_array(np.repeat(numpy_helper.to_array(b_init), s * s), b_name))
            conv_in.append(b_name)
        out = node.output[0]
        phases = out if s == 1 else f"{base}_phases"
        new = [helper.make_node("Conv", conv_in, [phases], name=f"{base}_as_conv",
                                kernel_shape=list(kern.shape[2:]), pads=[lh, lw, rh, rw])]
        if s > 1:
            new.append(helper.make_node("DepthToSpace", [phases], [out], name=f"{base}_d2s", blocksize=s, mode="CRD"))
        return new

    return _rewrite_nodes(graph, one)


def _cubic(x: float, a: float) -> float:
    x = abs(x)
    if x <= 1:
        return (a + 2) * x ** 3 - (a + 3) * x ** 2 + 1
    return a * x ** 3 - 5 * a * x ** 2 + 8 * a * x - 4 * a if x < 2 else 0.0


def _channels_of(model, name: str) -> int | None:
    for v in list(model.graph.input) + list(model.graph.value_info):
        if v.name == name:
            dims = v.type.tensor_type.shape.dim
            return dims[1].dim_value if len(dims) == 4 and dims[1].HasField("dim_value") else None
    return None


def resize_as_conv(model) -> int:
    """Rewrite each integer-factor bicubic Resize (half_pixel, edge clamping) as Pad(edge) + Conv + DepthToSpace.

    Output pixel s*i + r reads input taps floor(src) - 1 .. floor(src) + 2, src = i + (r + 0.5)/s - 0.5,
    clamped to the image (= edge padding): one grouped conv with a separable kernel per phase (s*s phases per
    channel) and DepthToSpace(s, CRD). The SRResNet bicubic skip is such a Resize; as a conv it is cheap and
    runs int8 like the rest. Needs the channel count in the graph's shapes. Returns how many were rewritten.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    consts = {name: numpy_helper.to_array(t) for name, t in _initializers(graph).items()}
    consts.update({n.output[0]: numpy_helper.to_array(_attrs(n)["value"]) for n in graph.node
                   if n.op_type == "Constant" and "value" in _attrs(n)})

    def one(node) -> list | None:
        a = _attrs(node)
        scales = consts.get(node.input[2]) if node.op_type == "Resize" and len(node.input) > 2 else None
        s = int(scales[2]) if scales is not None and scales.shape == (4,) else 0
        channels = _channels_of(model, node.input[0]) if s else None
        ok = (channels and s >= 1 and list(scales) == [1, 1, s, s] and (len(node.input) < 4 or not node.input[3])
              and a.get("mode") in (b"cubic", "cubic") and a.get("exclude_outside", 0) == 0
              and a.get("antialias", 0) == 0
              and a.get("coordinate_transformation_mode") in (b"half_pixel", "half_pixel", b"pytorch_half_pixel",
                                                              "pytorch_half_pixel"))
        if not ok:
            return None
        coeff = float(a.get("cubic_coeff_a", -0.75))
        taps = []  # per phase r: {offset from i: weight}
        for r in range(s):
            src = (r + 0.5) / s - 0.5
            f = int(np.floor(src))
            t = src - f
            taps.append({f - 1: _cubic(1 + t, coeff), f: _cubic(t, coeff), f + 1: _cubic(1 - t, coeff),
                         f + 2: _cubic(2 - t, coeff)})
        pad = max(abs(o) for phase in taps for o in phase)
        k = 2 * pad + 1
        one_d = np.zeros((s, k), np.float64)
        for r, phase in enumerate(taps):
            for off, w in phase.items():
                one_d[r, off + pad] += w
        kernel = np.einsum("ak,bl->abkl", one_d, one_d).reshape(s * s, 1, k, k)
        kernel = np.tile(kernel, (channels, 1, 1, 1)).astype(np.float32)  # channel c owns outputs c*s*s ..
        base = node.name or node.output[0]
        graph.initializer.extend([
            numpy_helper.from_array(kernel, f"{base}_as_conv_w"),
            numpy_helper.from_array(np.array([0, 0, pad, pad, 0, 0, pad, pad], np.int64), f"{base}_edge_pads")])
        return [
            helper.make_node("Pad", [node.input[0], f"{base}_edge_pads"], [f"{base}_edged"], name=f"{base}_edge",
                             mode="edge"),
            helper.make_node("Conv", [f"{base}_edged", f"{base}_as_conv_w"], [f"{base}_phases"],
                             name=f"{base}_as_conv", group=channels, kernel_shape=[k, k]),
            helper.make_node("DepthToSpace", [f"{base}_phases"], [node.output[0]], name=f"{base}_d2s",
                             blocksize=s, mode="CRD"),
        ]

    return _rewrite_nodes(graph, one)


def pad_narrow_convs(model, multiple: int = PAD_TO) -> int:
    """Give each Conv with fewer than `multiple` output channels zero channels up to it, then Slice them off."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = _initializers(graph)

    def one(node) -> list | None:
        w_init = inits.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        w = numpy_helper.to_array(w_init) if w_init is not None else None
        bias_ok = len(node.input) < 3 or not node.input[2] or node.input[2] in inits
        if w is None or w.shape[0] >= multiple or _attrs(node).get("group", 1) != 1 or not bias_ok:
            return None
        cout = w.shape[0]
        base = node.name or node.output[0]
        padded = np.zeros((multiple, *w.shape[1:]), dtype=w.dtype)
        padded[:cout] = w
        graph.initializer.append(numpy_helper.from_array(padded, f"{base}_w{multiple}"))
        new_in = [node.input[0], f"{base}_w{multiple}"]
        if len(node.input) > 2 and node.input[2]:
            b = numpy_helper.to_array(inits[node.input[2]])
            graph.initializer.append(numpy_helper.from_array(
                np.concatenate([b, np.zeros(multiple - cout, b.dtype)]), f"{base}_b{multiple}"))
            new_in.append(f"{base}_b{multiple}")
        out = node.output[0]
        conv = helper.make_node("Conv", new_in, [f"{base}_c{multiple}"], name=f"{base}_c{multiple}")
        conv.attribute.extend(node.attribute)
        for name, value in ((f"{base}_s0", [0]), (f"{base}_s1", [cout]), (f"{base}_sax", [1])):
            graph.initializer.append(numpy_helper.from_array(np.array(value, np.int64), name))
        return [conv, helper.make_node("Slice", [f"{base}_c{multiple}", f"{base}_s0", f"{base}_s1", f"{base}_sax"],
                                       [out], name=f"{base}_slice")]

    return _rewrite_nodes(graph, one)


def end_nodes(model, with_convs: bool) -> list[str]:
    """Nodes to keep fp32 on a retry: every node after the last conv and every Resize (the bicubic skip),
    and with `with_convs` also the first and the last conv."""
    nodes = list(model.graph.node)
    convs = [i for i, n in enumerate(nodes) if n.op_type in ("Conv", "ConvTranspose")]
    if not convs:
        return []
    keep = nodes[convs[-1] + 1:] + [n for n in nodes if n.op_type == "Resize"]
    if with_convs:
        keep += [nodes[convs[0]], nodes[convs[-1]]]
    return sorted({n.name for n in keep if n.name})


# ------------------------------------------------------------------ inputs

def _role_io(card: dict[str, Any], role: str) -> tuple[dict[str, Any], dict[str, Any]]:
    roles = card.get("roles") or {}
    if role in roles:
        return roles[role]["input"], roles[role]["output"]
    return card.get("input") or {}, card["output"]


def _synthetic_images(n: int, c: int, h: int, w: int, lo: float, hi: float, seed: int) -> np.ndarray:
    """Smooth random images (a low-resolution random field, bicubic-upsampled, plus fine noise) in [lo, hi]."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = np.empty((n, c, h, w), np.float32)
    for i in range(n):
        for ch in range(c):
            coarse = rng.uniform(0, 255, (max(2, h // 8), max(2, w // 8))).astype(np.float32)
            field = np.asarray(Image.fromarray(coarse, mode="F").resize((w, h), Image.BICUBIC))
            out[i, ch] = np.clip(field + rng.normal(0, 6, (h, w)), 0, 255)
    return (lo + out / 255.0 * (hi - lo)).astype(np.float32)


def _dataset_images(card, role: str, split: str, count: int, size: int | None, data_root: str | None,
                    seed: int) -> tuple[np.ndarray | None, str]:
    """`count` samples of the role's input field from the card's dataset split (N, C, H, W), or None and why."""
    key = REAL_INPUT_KEY.get((card.get("family"), role))
    config = ((card.get("training") or {}).get("config") or {})
    data = dict(config.get("data") or {})
    if key is None or not data:
        return None, "the card names no dataset field for this graph"
    from .data import DataConfig, DataError, build_dataset

    if data_root:
        data["root"] = data_root
    if size and data.get("kind") == "hr_folder":
        data["hr_size"] = size * int(data.get("scale", 4))
    try:
        reader = build_dataset(DataConfig(**data), split)
        samples = [reader.sample(i % len(reader), np.random.default_rng([seed, i]))[key] for i in range(count)]
    except (DataError, OSError, ValueError, KeyError, ZeroDivisionError) as e:
        return None, f"the {split} split under {data.get('root')!r} cannot be read ({e})"
    shapes = {tuple(s.shape) for s in samples}
    if len(shapes) != 1:
        from .export import _fit
        h = min(s.shape[1] for s in samples)
        w = min(s.shape[2] for s in samples)
        samples = [_fit(s, h, w) for s in samples]
    return np.stack([s.numpy() for s in samples]).astype(np.float32), f"{data.get('kind')} {data.get('root')} ({split} split, {count} samples)"


def role_inputs(card: dict[str, Any], role: str, split: str, count: int, size: int, data_root: str | None,
                seed: int, batch: int) -> tuple[list[dict[str, np.ndarray]], str]:
    """Feeds for one role: batches of `batch` from the split (or synthetic), and a description."""
    rng = np.random.default_rng(seed)
    if card["endpoint"] == "generate":
        latent = int(card["latent_dim"])
        k = max(1, len(card.get("classes") or []))
        names = {i["name"] for i in card["graph"]["inputs"]}
        feeds = []
        for start in range(0, count, batch):
            n = min(batch, count - start)
            f = {"z": rng.standard_normal((n, latent)).astype(np.float32)}
            if "label" in names:
                f["label"] = ((np.arange(n) + start) % k).astype(np.int64)
            feeds.append(f)
        return feeds, f"z ~ N(0, I), labels 0..{k - 1} in turn (a generator's real input; {count} samples)"
    card_in, _ = _role_io(card, role)
    name = card["graph"]["inputs"][0]["name"]
    native = card_in.get("native_size")
    m = int(card_in.get("multiple_of") or 1)
    size = max(int(card_in.get("min_size") or 1), -(-size // m) * m)
    images, source = _dataset_images(card, role, split, count, None if native else size, data_root, seed)
    if images is not None and images.shape[1] != int(card_in["channels"]):
        images, source = None, f"the dataset field has {images.shape[1]} channels, the graph takes {card_in['channels']}"
    if images is None:
        h, w = native or (size, size)
        lo, hi = card_in.get("range", [-1.0, 1.0])
        images = _synthetic_images(count, int(card_in["channels"]), h, w, lo, hi, seed)
        source = f"synthetic smooth random images {h}x{w} ({count}; no data: {source})"
    elif images.shape[2] % m or images.shape[3] % m:
        h, w = images.shape[2] // m * m, images.shape[3] // m * m
        images = images[:, :, :h, :w]
    return [{name: images[i:i + batch]} for i in range(0, len(images), batch)], source


# ------------------------------------------------------------------ quantize, compare, time

def session(path_or_bytes, optimize: bool = True):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    return ort.InferenceSession(str(path_or_bytes) if isinstance(path_or_bytes, Path) else path_or_bytes,
                                options, providers=["CPUExecutionProvider"])


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


def max_abs_diff(a, b, feeds: list[dict[str, np.ndarray]]) -> float:
    worst = 0.0
    for f in feeds:
        x, y = a.run(None, f)[0], b.run(None, f)[0]
        worst = max(worst, float(np.max(np.abs(x.astype(np.float64) - y))))
    return worst


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


PSNR_CAP = 100.0  # identical outputs (mse 0) are recorded as this, not inf (JSON has no inf)


def psnr_db(mse: float, peak: float) -> float:
    return PSNR_CAP if mse <= 0 else min(PSNR_CAP, float(10 * np.log10(peak * peak / mse)))


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
    per = [psnr_db(e, peak) for e in errors]
    return {"psnr_db": psnr_db(float(np.mean(errors)), peak), "psnr_db_min": min(per), "inputs": len(errors)}


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
    import platform

    import onnxruntime as ort
    info: dict[str, Any] = {"cpu": platform.processor() or platform.machine(), "logical_cores": os.cpu_count(),
                            "onnxruntime": ort.__version__}
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                info["flags"] = sorted(f for f in flags if f.startswith(("avx512_vnni", "avx_vnni", "amx", "avx512_bf16")))
                break
    except OSError:
        pass
    with_load = getattr(os, "getloadavg", None)
    if with_load:
        info["loadavg"] = [round(v, 2) for v in with_load()]
    return info


# ------------------------------------------------------------------ the command

def build_variant(folder: Path, card: dict[str, Any], staging: Path, calibration: int, heldout: int, size: int,
                  per_channel: bool, min_psnr: float, data_root: str | None, rounds: int, log) -> dict[str, Any]:
    """Write `<role>.int8.onnx` for every role into `staging`; return the card's `variants.int8` entry."""
    files, roles_out = {}, {}
    worst: dict[str, Any] | None = None
    speed = {"fp32_ms": 0.0, "int8_ms": 0.0}
    sources = {}
    for role, entry in card["files"].items():
        src = folder / entry["path"]
        _, card_out = _role_io(card, role)
        calib, calib_src = role_inputs(card, role, "train", calibration, size, data_root, seed=1, batch=8)
        test, test_src = role_inputs(card, role, "test", heldout, size, data_root, seed=2, batch=heldout)
        sources[role] = {"calibration": calib_src, "heldout": test_src}
        rewritten = staging / f".{role}.fp32-rewritten.onnx"
        rewrite = prepared_fp32(src, rewritten, test)
        fp32 = session(src)
        result = None
        import onnx
        graph = onnx.load(str(rewritten))
        for attempt, exclude in (("all", []), ("output path fp32", end_nodes(graph, False)),
                                 ("ends fp32", end_nodes(graph, True))):
            dst = staging / f"{role}.int8.onnx"
            quantize_graph(rewritten, dst, calib, per_channel, exclude)
            int8 = session(dst)
            score = compare(fp32, int8, test, card_out.get("range", [-1.0, 1.0]))
            log(f"{role}: int8 ({attempt}) PSNR vs fp32 {score['psnr_db']:.2f} dB pooled, "
                f"{score['psnr_db_min']:.2f} dB worst input (gate {min_psnr:g})")
            result = {**score, "quantized": attempt, "excluded_nodes": exclude, **rewrite}
            if score["psnr_db_min"] >= min_psnr:
                break
        assert result is not None
        if not result["psnr_db_min"] >= min_psnr:
            raise QuantizeError(f"int8 {role} is {result['psnr_db_min']:.2f} dB from fp32 on its worst held-out "
                                f"input, below --min-psnr {min_psnr:g} even with the end nodes in fp32; "
                                f"nothing written")
        rewritten.unlink()
        ms = time_pair({"fp32": fp32, "int8": int8}, test[0], rounds)
        shape = [list(v.shape) for v in test[0].values()]
        log(f"{role}: fp32 {ms['fp32']:.1f} ms, int8 {ms['int8']:.1f} ms on {shape} -> x{ms['fp32'] / ms['int8']:.2f}")
        speed["fp32_ms"] += ms["fp32"]
        speed["int8_ms"] += ms["int8"]
        roles_out[role] = {**result, "fp32_ms": ms["fp32"], "int8_ms": ms["int8"], "input_shape": shape}
        files[role] = file_entry(staging, dst.name)
        if worst is None or result["psnr_db_min"] < worst["psnr_db_min"]:
            worst = result
    assert worst is not None
    first = next(iter(roles_out.values()))
    return {
        "produced": "quantize",
        "format": "qdq",
        "activations": "uint8", "weights": "int8", "per_channel": per_channel, "calibrate_method": "minmax",
        "provider": "CPUExecutionProvider",
        "min_psnr_db": min_psnr,
        "psnr_vs_fp32_db": min(r["psnr_db"] for r in roles_out.values()),
        "psnr_vs_fp32_db_min": worst["psnr_db_min"],
        "speedup": speed["fp32_ms"] / speed["int8_ms"],
        "timing": {"fp32_ms": speed["fp32_ms"], "int8_ms": speed["int8_ms"], "rounds": rounds,
                   "input_shape": first["input_shape"], "machine": machine()},
        "calibration": {"inputs": calibration, **{k: v["calibration"] for k, v in sources.items()}},
        "heldout": {"inputs": heldout, **{k: v["heldout"] for k, v in sources.items()}},
        "roles": roles_out,
        "files": files,
    }


def quantize_model(name: str, models: str | Path = "models", calibration: int = 32, heldout: int = 8,
                   size: int = 64, per_channel: bool = True, min_psnr: float = DEFAULT_MIN_PSNR,
                   data_root: str | None = None, rounds: int = 5, dry_run: bool = False, log=print) -> dict[str, Any]:
    """Build, check and publish `variants.int8` of models/NAME; returns the variant entry."""
    models = Path(models)
    folder = models / check_name(name)
    card = verify_model_dir(folder)
    version = card.get("version")
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.int8-", dir=models))  # dot: never served
    try:
        variant = build_variant(folder, card, staging, calibration, heldout, size, per_channel, min_psnr,
                                data_root, rounds, log)
        variant["of_version"] = version
        variant["quantized_at"] = utc_now().strftime("%Y-%m-%dT%H:%M:%SZ")
        if dry_run:
            log("dry run: nothing written")
            return variant
        for entry in variant["files"].values():
            with open(staging / entry["path"], "rb") as f:
                os.fsync(f.fileno())
        with model_lock(models, name, wait=True):
            current = verify_model_dir(folder)
            if current.get("version") != version:
                raise ExportError(f"{folder} changed while quantizing (version {version} -> "
                                  f"{current.get('version')}); nothing written")
            variants = dict(current.get("variants") or {})
            if "int8" in variants:  # its files are about to be replaced: first a card that does not name them
                del variants["int8"]
                current["variants"] = variants
                write_card(folder, current)
            for entry in variant["files"].values():
                os.replace(staging / entry["path"], folder / entry["path"])
            fsync_dir(folder)
            current["variants"] = {**variants, "int8": variant}
            write_card(folder, current)
            fsync_dir(folder)
            verify_model_dir(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"published {folder} variants.int8: PSNR vs fp32 {variant['psnr_vs_fp32_db']:.2f} dB "
        f"(worst input {variant['psnr_vs_fp32_db_min']:.2f}), x{variant['speedup']:.2f} vs fp32 on this machine")
    return variant


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
    p.add_argument("--format", choices=["qdq"], default="qdq", help="quantized graph format (qdq)")
    p.add_argument("--dry-run", action="store_true", help="measure, write nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if min(args.calibration, args.heldout, args.rounds, args.size) < 1:
        print("error: --calibration, --heldout, --rounds and --size must be >= 1", file=sys.stderr)
        return 2
    try:
        quantize_model(args.name, args.models, args.calibration, args.heldout, args.size, args.per_channel,
                       args.min_psnr, args.data_root, args.rounds, args.dry_run)
    except QuantizeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except (ExportError, ModelDirError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
