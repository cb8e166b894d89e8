"""Exact graph rewrites of fp32 ONNX graphs, shared by `optimize` (served fp32 graphs) and `quantize` (int8).

Each takes an `onnx.ModelProto`, rewrites it in place and returns how many nodes it replaced;
the callers check the result against the graph before (max abs difference on random inputs).

- `convtranspose_as_conv`: ConvTranspose (stride s, group 1) -> Conv producing s*s phases + DepthToSpace(s)
  (onnxruntime's CPU provider has no int8 ConvTranspose);
- `resize_as_conv`: integer-factor bicubic Resize -> Pad(edge) + grouped Conv + DepthToSpace;
- `pad_narrow_convs`: Conv with fewer than 16 output channels -> zero channels up to 16 + Slice back
  (the int8 conv kernels work in blocks of 16 output channels);
- `end_nodes`: the nodes `quantize` keeps in fp32 on a retry.
"""
from __future__ import annotations

from typing import Any

import numpy as np

PAD_TO = 16  # output-channel block of the int8 conv kernels


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
