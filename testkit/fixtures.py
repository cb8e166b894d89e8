"""Tiny but real ONNX model folders for tests, bench and soak, following docs/model-card.md.

`write_fixture_models(dir)` builds four model folders with `onnx.helper`
(opset 18, dynamic N/H/W where the family allows it) and writes card.json
files with correct sha256. They stand in for what `training/export.py`
writes; the weights are fixed random numbers, so outputs are deterministic.

  srresnet-x4    upscale x4, 3 -> 3 channels: Conv 3->48 + DepthToSpace(4) + Tanh
  edges2color    translate (pix2pix), 1 -> 3 channels, needs H, W multiple of 8
                 (an AveragePool(8)/Resize(8) branch that only lines up then)
  shoe2boot      translate (cyclegan), a2b.onnx + b2a.onnx, 1 -> 1 channel,
                 graph fixed at 28x28 (native_size), so the service must resize
  fashion-dcgan  generate, z [N,16] + label [N] -> [N,1,28,28], 10 classes

Needs onnx (the train extra), not torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from contract import SCHEMA_VERSION, Card, FileEntry
from contract.folder import sha256_bytes, write_card
from contract.typed import to_plain

OPSET = 18
IR_VERSION = 9  # onnxruntime 1.31 reads it; the newest onnx writes a newer one by default

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


def _model(nodes, inputs, outputs, initializers, name: str) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=initializers)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="ganforge-tests"
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array, name)


def upscale_x4_model(seed: int = 0) -> onnx.ModelProto:
    """Conv 3->48 (3x3) + DepthToSpace(4, CRD) + Tanh: output [N, 3, 4H, 4W].

    The centre tap copies each input channel to its 16 sub-pixels (so the
    output looks like the input, enlarged), plus fixed random noise weights
    so it is not a plain nearest-neighbour resize.
    """
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((48, 3, 3, 3)) * 0.05).astype(np.float32)
    for c in range(3):
        w[c * 16:(c + 1) * 16, c, 1, 1] += 1.0  # CRD: channel c owns outputs c*16..c*16+15
    b = (rng.standard_normal(48) * 0.01).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["image", "w"], ["c"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Add", ["c", "b"], ["cb"]),
        helper.make_node("DepthToSpace", ["cb"], ["d"], blocksize=4, mode="CRD"),
        helper.make_node("Tanh", ["d"], ["output"]),
    ]
    inits = [_init("w", w), _init("b", b.reshape(1, 48, 1, 1))]
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3, "H4", "W4"])
    return _model(nodes, [x], [y], inits, "srresnet_x4_fixture")


def pix2pix_model(seed: int = 1) -> onnx.ModelProto:
    """1 -> 3 channels; a local Conv branch plus an AveragePool(8)->Resize(x8) branch.

    The two branches only have the same H, W when H and W are multiples of 8,
    so the graph fails unless the service pads to `multiple_of`.
    """
    rng = np.random.default_rng(seed)
    w_local = (rng.standard_normal((3, 1, 3, 3)) * 0.3).astype(np.float32)
    w_global = (rng.standard_normal((3, 1, 1, 1)) * 0.5).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["image", "w_local"], ["local"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("AveragePool", ["image"], ["pooled"], kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("Resize", ["pooled", "", "scales"], ["up"], mode="nearest"),
        helper.make_node("Conv", ["up", "w_global"], ["glob"], kernel_shape=[1, 1]),
        helper.make_node("Add", ["local", "glob"], ["sum"]),
        helper.make_node("Tanh", ["sum"], ["output"]),
    ]
    inits = [
        _init("w_local", w_local),
        _init("w_global", w_global),
        _init("scales", np.array([1, 1, 8, 8], dtype=np.float32)),
    ]
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, "H", "W"])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3, "H", "W"])
    return _model(nodes, [x], [y], inits, "pix2pix_fixture")


def cyclegan_model(invert: bool, seed: int) -> onnx.ModelProto:
    """Fixed 28x28 graph (as a Fashion-MNIST-trained generator would be), 1 -> 1 channel."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((1, 1, 3, 3)) * 0.1).astype(np.float32)
    w[0, 0, 1, 1] += -1.0 if invert else 0.8
    nodes = [
        helper.make_node("Conv", ["image", "w"], ["c"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Tanh", ["c"], ["output"]),
    ]
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 28, 28])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 1, 28, 28])
    return _model(nodes, [x], [y], [_init("w", w)], "cyclegan_fixture")


def dcgan_model(latent_dim: int = 16, n_classes: int = 10, seed: int = 2) -> onnx.ModelProto:
    """z [N, D] + label [N] -> Gather(embedding) + z -> MatMul -> [N, 1, 28, 28] -> Tanh."""
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n_classes, latent_dim)).astype(np.float32)
    w = (rng.standard_normal((latent_dim, 28 * 28)) * 0.4).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["embedding", "label"], ["e"], axis=0),
        helper.make_node("Add", ["z", "e"], ["ze"]),
        helper.make_node("MatMul", ["ze", "w"], ["flat"]),
        helper.make_node("Reshape", ["flat", "shape"], ["img"]),
        helper.make_node("Tanh", ["img"], ["output"]),
    ]
    inits = [
        _init("embedding", emb),
        _init("w", w),
        _init("shape", np.array([-1, 1, 28, 28], dtype=np.int64)),
    ]
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", latent_dim])
    label = helper.make_tensor_value_info("label", TensorProto.INT64, ["N"])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 1, 28, 28])
    return _model(nodes, [z, label], [y], inits, "dcgan_fixture")


def write_onnx(folder: Path, filename: str, model: onnx.ModelProto) -> FileEntry:
    data = model.SerializeToString()
    (folder / filename).write_bytes(data)
    return FileEntry(path=filename, sha256=sha256_bytes(data), bytes=len(data))


def fixture_card(name: str, endpoint: str, family: str, description: str, files: dict[str, FileEntry],
                 **blocks: Any) -> Card:
    """A card as export writes it (validated by the contract), with fixed provenance."""
    content = sha256_bytes("".join(f.sha256 for f in files.values()).encode())
    return Card.from_dict({
        "schema": SCHEMA_VERSION,
        "name": name,
        "endpoint": endpoint,
        "family": family,
        "description": description,
        "version": f"{content[:12]}-20261123T101500Z",
        "exported_at": "2026-11-23T10:15:00Z",
        "opset": OPSET,
        "runtimes": {"torch": "fixture", "onnx": onnx.__version__, "onnxruntime": "1.31.1"},
        "files": {role: to_plain(f) for role, f in files.items()},
        "training": {
            "dataset": {"name": "fixture", "source": "testkit/fixtures.py", "manifest_sha256": "0" * 64},
            "config": {},
            "steps": 0,
            "git_commit": "0000000",
        },
        "metrics": {"parity_max_abs": 0.0},
        **blocks,
    })


def image_graph(c_in: int, c_out: int, shape_out: list) -> dict:
    return {
        "inputs": [{"name": "image", "dtype": "float32", "shape": ["N", c_in, "H", "W"]}],
        "outputs": [{"name": "output", "dtype": "float32", "shape": shape_out}],
    }


def _fixture(dir: Path, name: str, models: dict[str, onnx.ModelProto], endpoint: str, family: str,
             description: str, **blocks: Any) -> Path:
    folder = dir / name
    folder.mkdir(exist_ok=True)
    files = {role: write_onnx(folder, f"{role}.onnx", model) for role, model in models.items()}
    write_card(folder, fixture_card(name, endpoint, family, description, files, **blocks))
    return folder


def write_fixture_models(dir: Path) -> dict[str, Path]:
    """Write the four fixture model folders under `dir`; return {name: folder}."""
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    rgb, gray = {"range": [-1.0, 1.0], "channels": 3}, {"range": [-1.0, 1.0], "channels": 1}
    return {
        "srresnet-x4": _fixture(
            dir, "srresnet-x4", {"generator": upscale_x4_model()}, "upscale", "srgan",
            "fixture x4 upscaler (conv + pixel shuffle)", graph=image_graph(3, 3, ["N", 3, "H*4", "W*4"]),
            input={**rgb, "multiple_of": 1, "min_size": 8, "native_size": None}, output={**rgb, "scale": 4},
            tiling={"tile": 64, "overlap": 8}),
        # pix2pix-like translate, 1 -> 3 channels, multiple of 8
        "edges2color": _fixture(
            dir, "edges2color", {"generator": pix2pix_model()}, "translate", "pix2pix",
            "fixture edges -> colour (pix2pix-like)", graph=image_graph(1, 3, ["N", 3, "H", "W"]),
            input={**gray, "multiple_of": 8, "min_size": 8, "native_size": None}, output={**rgb, "scale": 1},
            tiling={"tile": 128, "overlap": 16}),
        # cyclegan-like translate, both directions, native 28x28
        "shoe2boot": _fixture(
            dir, "shoe2boot", {"a2b": cyclegan_model(invert=True, seed=3), "b2a": cyclegan_model(invert=False, seed=4)},
            "translate", "cyclegan", "fixture sneaker <-> ankle boot (cyclegan-like)",
            graph={"inputs": [{"name": "image", "dtype": "float32", "shape": ["N", 1, 28, 28]}],
                   "outputs": [{"name": "output", "dtype": "float32", "shape": ["N", 1, 28, 28]}]},
            input={**gray, "multiple_of": 4, "min_size": 28, "native_size": [28, 28]}, output={**gray, "scale": 1},
            domains={"a": "sneaker", "b": "ankle boot"}),
        # conditional generator
        "fashion-dcgan": _fixture(
            dir, "fashion-dcgan", {"generator": dcgan_model()}, "generate", "dcgan",
            "fixture conditional generator, Fashion-MNIST classes",
            graph={"inputs": [{"name": "z", "dtype": "float32", "shape": ["N", 16]},
                              {"name": "label", "dtype": "int64", "shape": ["N"]}],
                   "outputs": [{"name": "output", "dtype": "float32", "shape": ["N", 1, 28, 28]}]},
            output={**gray, "size": [28, 28]}, latent_dim=16, classes=list(FASHION_MNIST_CLASSES)),
    }
