"""A minimal peer of ganforge's /translate, to measure ganforge against (issue 26): what someone would write
by hand in an afternoon. Starlette + python-multipart, one onnxruntime session with its default options,
PIL decode, the card's channels and value range, PIL PNG encode at compress_level 1. No validation, no
limits, no metrics, no tiling: a floor for what serving one image over HTTP costs.

    PEER_MODEL=models/colorize python -m uvicorn bench.peer:app --port 8100

(`peer_server` below starts it for the bench: the same uvicorn, with httptools and uvloop where installed,
as BentoML's.) Not a part of the service: nothing imports it but bench/.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

MODEL_ENV = "PEER_MODEL"


def build_app(folder: Path):
    import onnxruntime as ort
    from PIL import Image
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    card = json.loads((folder / "card.json").read_text())
    session = ort.InferenceSession(str(folder / card["files"]["generator"]["path"]),
                                   providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    channels = int(card["input"]["channels"])
    (lo, hi), (olo, ohi) = card["input"]["range"], card["output"]["range"]

    async def translate(request: Request) -> Response:
        form = await request.form()
        data = await form["image"].read()
        image = Image.open(io.BytesIO(data)).convert("L" if channels == 1 else "RGB")
        x = np.asarray(image, dtype=np.float32).reshape(image.height, image.width, channels)
        x = (lo + x.transpose(2, 0, 1)[None] * ((hi - lo) / 255.0)).astype(np.float32)
        y = session.run(None, {input_name: x})[0][0]
        pixels = np.clip(np.rint((y - olo) * (255.0 / (ohi - olo))), 0, 255).astype(np.uint8).transpose(1, 2, 0)
        out = io.BytesIO()
        Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels).save(out, "PNG", compress_level=1)
        return Response(out.getvalue(), media_type="image/png")

    async def ready(request: Request) -> Response:
        return Response(b"ok")

    return Starlette(routes=[Route("/translate", translate, methods=["POST"]), Route("/readyz", ready)])


def __getattr__(name: str):
    """`bench.peer:app` for uvicorn: built on first access from PEER_MODEL (a model folder)."""
    if name == "app":
        return build_app(Path(os.environ[MODEL_ENV]))
    raise AttributeError(name)


@contextlib.contextmanager
def peer_server(folder: Path, port: int, log_path: Path, startup_s: float = 60.0):
    """uvicorn serving `build_app(folder)` on 127.0.0.1:`port`; yields its base URL."""
    import httpx

    from testkit.launcher import stop_process_group

    env = {**os.environ, MODEL_ENV: str(folder)}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "bench.peer:app", "--host", "127.0.0.1",
                                 "--port", str(port), "--log-level", "warning", "--no-access-log"],
                                cwd=Path(__file__).resolve().parent.parent, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + startup_s
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the peer exited with {proc.returncode}:\n{log_path.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the peer is not ready after {startup_s:.0f} s")
            time.sleep(0.2)  # polling interval
        yield base
    finally:
        stop_process_group(proc)
