"""Helpers for the service tests.

The tiny but real ONNX fixture models (`write_fixture_models` and the graph
builders) live in testkit/fixtures.py, the real `bentoml serve` launcher
(`running_server`, `free_port`, `stop_process_group`) in testkit/launcher.py,
so bench/ and soak/ can use them too; both are re-exported here.

Also: small helpers that craft image bytes for the bad-input tests, and
`service_client`, an in-process Ganforge app.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np

from service import config
from testkit.launcher import (  # noqa: F401  (re-exported for the tests)
    BENTOML,
    REPO,
    STARTUP_TIMEOUT_S,
    free_port,
    live_metrics_dirs,
    running_server,
    stop_process_group,
)
from testkit.fixtures import (  # noqa: F401  (re-exported: test_reliability builds its own cards)
    FASHION_MNIST_CLASSES,
    IR_VERSION,
    OPSET,
    cyclegan_model,
    dcgan_model,
    fixture_card,
    image_graph,
    pix2pix_model,
    upscale_x4_model,
    write_onnx,
    write_fixture_models,
)


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
            "GANFORGE_JOBS_DIR": str(Path(models_dir).parent / "jobs"),  # never the repository's jobs/
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
        config.settings.cache_clear()  # the service reads its settings once per process: this app is a new "process"
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
        config.settings.cache_clear()
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
