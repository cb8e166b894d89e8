"""Tiny but real ONNX models that follow docs/model-card.md, for the service tests.

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

Also: small helpers that craft image bytes for the bad-input tests.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

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


def _write_onnx(folder: Path, filename: str, model: onnx.ModelProto) -> dict:
    data = model.SerializeToString()
    (folder / filename).write_bytes(data)
    return {"path": filename, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def _card_common(name: str, endpoint: str, family: str, description: str, files: dict) -> dict:
    content = hashlib.sha256("".join(f["sha256"] for f in files.values()).encode()).hexdigest()
    return {
        "schema": 1,
        "name": name,
        "endpoint": endpoint,
        "family": family,
        "description": description,
        "version": f"{content[:12]}-20261123T101500Z",
        "exported_at": "2026-11-23T10:15:00Z",
        "opset": OPSET,
        "runtimes": {"torch": "fixture", "onnx": onnx.__version__, "onnxruntime": "1.31.1"},
        "files": files,
        "training": {
            "dataset": {"name": "fixture", "source": "tests/service_fixtures.py", "manifest_sha256": "0" * 64},
            "config": {},
            "steps": 0,
            "git_commit": "0000000",
        },
        "metrics": {"parity_max_abs": 0.0},
    }


def _image_io(name: str, c_in: int, c_out: int, shape_out: list) -> dict:
    return {
        "inputs": [{"name": "image", "dtype": "float32", "shape": ["N", c_in, "H", "W"]}],
        "outputs": [{"name": "output", "dtype": "float32", "shape": shape_out}],
    }


def write_fixture_models(dir: Path) -> dict[str, Path]:
    """Write the four fixture model folders under `dir`; return {name: folder}."""
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}

    # upscale x4
    name = "srresnet-x4"
    folder = dir / name
    folder.mkdir(exist_ok=True)
    files = {"generator": _write_onnx(folder, "generator.onnx", upscale_x4_model())}
    card = _card_common(name, "upscale", "srgan", "fixture x4 upscaler (conv + pixel shuffle)", files)
    card.update({
        "graph": _image_io(name, 3, 3, ["N", 3, "H*4", "W*4"]),
        "input": {"channels": 3, "range": [-1.0, 1.0], "multiple_of": 1, "min_size": 8, "native_size": None},
        "output": {"channels": 3, "range": [-1.0, 1.0], "scale": 4},
        "tiling": {"tile": 64, "overlap": 8},
    })
    (folder / "card.json").write_text(json.dumps(card, indent=2))
    out[name] = folder

    # pix2pix-like translate, 1 -> 3 channels, multiple of 8
    name = "edges2color"
    folder = dir / name
    folder.mkdir(exist_ok=True)
    files = {"generator": _write_onnx(folder, "generator.onnx", pix2pix_model())}
    card = _card_common(name, "translate", "pix2pix", "fixture edges -> colour (pix2pix-like)", files)
    card.update({
        "graph": _image_io(name, 1, 3, ["N", 3, "H", "W"]),
        "input": {"channels": 1, "range": [-1.0, 1.0], "multiple_of": 8, "min_size": 8, "native_size": None},
        "output": {"channels": 3, "range": [-1.0, 1.0], "scale": 1},
        "tiling": {"tile": 128, "overlap": 16},
    })
    (folder / "card.json").write_text(json.dumps(card, indent=2))
    out[name] = folder

    # cyclegan-like translate, both directions, native 28x28
    name = "shoe2boot"
    folder = dir / name
    folder.mkdir(exist_ok=True)
    files = {
        "a2b": _write_onnx(folder, "a2b.onnx", cyclegan_model(invert=True, seed=3)),
        "b2a": _write_onnx(folder, "b2a.onnx", cyclegan_model(invert=False, seed=4)),
    }
    card = _card_common(name, "translate", "cyclegan", "fixture sneaker <-> ankle boot (cyclegan-like)", files)
    card.update({
        "graph": {
            "inputs": [{"name": "image", "dtype": "float32", "shape": ["N", 1, 28, 28]}],
            "outputs": [{"name": "output", "dtype": "float32", "shape": ["N", 1, 28, 28]}],
        },
        "input": {"channels": 1, "range": [-1.0, 1.0], "multiple_of": 4, "min_size": 28, "native_size": [28, 28]},
        "output": {"channels": 1, "range": [-1.0, 1.0], "scale": 1},
        "domains": {"a": "sneaker", "b": "ankle boot"},
    })
    (folder / "card.json").write_text(json.dumps(card, indent=2))
    out[name] = folder

    # conditional generator
    name = "fashion-dcgan"
    folder = dir / name
    folder.mkdir(exist_ok=True)
    files = {"generator": _write_onnx(folder, "generator.onnx", dcgan_model())}
    card = _card_common(name, "generate", "dcgan", "fixture conditional generator, Fashion-MNIST classes", files)
    card.update({
        "graph": {
            "inputs": [
                {"name": "z", "dtype": "float32", "shape": ["N", 16]},
                {"name": "label", "dtype": "int64", "shape": ["N"]},
            ],
            "outputs": [{"name": "output", "dtype": "float32", "shape": ["N", 1, 28, 28]}],
        },
        "output": {"channels": 1, "range": [-1.0, 1.0], "size": [28, 28]},
        "latent_dim": 16,
        "classes": list(FASHION_MNIST_CLASSES),
    })
    (folder / "card.json").write_text(json.dumps(card, indent=2))
    out[name] = folder
    return out


# ---------------------------------------------------------------- crafted image bytes


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_claiming_size(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims width x height (8-bit RGB) with a few bytes of IDAT.

    Decoding it would need width*height*3 bytes; a safe decoder refuses it
    from the header alone.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def synthetic_photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth 'photo-like' RGB uint8 image: gradients, blobs, a little noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.zeros((height, width, 3), np.float32)
    img[..., 0] = 255 * xx / max(width - 1, 1)
    img[..., 1] = 255 * yy / max(height - 1, 1)
    img[..., 2] = 128 + 100 * np.sin(xx / 9.0) * np.cos(yy / 13.0)
    for _ in range(4):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(0.1, 0.3) * max(width, height)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
        img += blob[..., None] * rng.uniform(-120, 120, 3)
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def encode(image, fmt: str = "PNG", **params) -> bytes:
    """PIL image -> bytes."""
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return buf.getvalue()


# ---------------------------------------------------------------- in-process service


class service_client:
    """`with service_client(models_dir, GANFORGE_X="1") as client:` an in-process Ganforge app.

    Builds `Ganforge.to_asgi()` with the given environment (restored on
    exit) and enters a Starlette TestClient, which runs the app's lifespan
    (so the service instance and its sessions exist). BentoML keeps one
    "current service" per process (what GET /models reads); on exit the
    previous one is put back so nested clients do not disturb an outer one.
    """

    def __init__(self, models_dir: Path, **env: str) -> None:
        # BentoML registers its Prometheus metrics globally once per app; a second
        # in-process app would fail with DuplicateTimeseries, and in-process
        # /metrics needs the multiprocess dir that `bentoml serve` sets up. So
        # in-process apps run without metrics (the real-server test covers them).
        self.env = {
            "GANFORGE_MODELS_DIR": str(models_dir),
            "GANFORGE_DEVICE": "auto",
            "BENTOML_CONFIG_OPTIONS": "services.ganforge.metrics.enabled=false",
            **env,
        }

    def __enter__(self):
        import importlib
        import os

        sdk_service = importlib.import_module("_bentoml_sdk.service")
        from starlette.testclient import TestClient

        from service.service import Ganforge

        self._saved_env = {k: os.environ.get(k) for k in self.env}
        self._saved_service = sdk_service._current_service
        os.environ.update(self.env)
        self._client = TestClient(Ganforge.to_asgi(), raise_server_exceptions=False)
        try:
            return self._client.__enter__()
        except BaseException:
            self._restore()
            raise

    def _restore(self) -> None:
        import importlib
        import os

        sdk_service = importlib.import_module("_bentoml_sdk.service")

        for k, v in self._saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if self._saved_service is not None:
            sdk_service.set_current_service(self._saved_service)

    def __exit__(self, *exc) -> None:
        try:
            self._client.__exit__(*exc)
        finally:
            self._restore()


def animated_gif(buf) -> None:
    """Write a 3-frame 16x16 animated GIF (distinct frames, so Pillow keeps all three)."""
    from PIL import Image

    frames = [Image.new("RGB", (16, 16), color) for color in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


# ---------------------------------------------------------------- a real `bentoml serve`

REPO = Path(__file__).resolve().parent.parent
BENTOML = Path(sys.executable).parent / "bentoml"
STARTUP_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process_group(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@contextlib.contextmanager
def running_server(models: Path, tmp: Path, **env_overrides: str):
    """`bentoml serve service.service:Ganforge` on a free loopback port, ready; yields (base_url, log_path)."""
    import httpx

    port = free_port()
    log_path = tmp / f"server-{port}.log"
    env = {
        **os.environ,
        "GANFORGE_MODELS_DIR": str(models),
        "GANFORGE_DEVICE": "auto",
        "BENTOML_HOME": str(tmp / "bentoml_home"),
        "BENTOML_DO_NOT_TRACK": "True",
        **env_overrides,
    }
    if "GANFORGE_AUTH_TOKEN" not in env_overrides:
        env.pop("GANFORGE_AUTH_TOKEN", None)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(BENTOML), "serve", "service.service:Ganforge", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"bentoml serve exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready after {STARTUP_TIMEOUT_S}s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.25)  # polling interval, not an assertion
        yield base, log_path
    finally:
        stop_process_group(proc)
