"""The BentoML service: `bentoml serve service.service:Ganforge` (or `bentoml serve .`).

Endpoints (names are the contract of /work/shared/DESIGN.md):
  POST /generate   JSON          -> image (one, or a grid for n > 1, or an interpolation strip)
  POST /translate  multipart     -> image, same width and height as the input
  POST /upscale    multipart     -> image, x native scale (or a smaller `scale`)
  GET  /models                   -> {"device": ..., "models": [...]} (cards' public fields + status)
  POST /admin/reload             -> re-scan models/ in this worker, swap in what changed (token-guarded)
  GET  /ui                       -> the demo page (service/ui/: static HTML/CSS/JS)
  Prefer: respond-async on the three POSTs -> 202 and a job; /jobs/... (service/jobs/)
  /livez /readyz /healthz /metrics /docs.json: BentoML's.

A checked sync /translate or /upscale is answered by the same handler straight from the middleware's
buffered body (service/direct.py): no second parse, no temporary file; what does not validate goes on
to BentoML, which answers it as before. The API methods return a Starlette `Response` (image bytes + media type +
headers), which BentoML 1.4.39 passes through untouched; their return
annotation only documents the output in OpenAPI. Client errors come back as
JSON {"error": "...", "status": N} (see middleware.py and errors.py).

Imports onnxruntime, numpy, pillow, bentoml. Never torch.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Annotated, Any, Optional, Union

import anyio
import bentoml
from bentoml.validators import ContentType
from pydantic import BeforeValidator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from core import imaging as core_imaging

from . import handlers, inference, jobs, ui
from .admission import BOOK
from .config import backstop_timeout, settings
from .direct import DirectImageApi, image_response
from .instance import use_own_metrics_dir
from .handlers import Interpolation
from .logs import use_log_format
from .middleware import GanforgeMiddleware
from .orphan import in_bentoml_worker, stop_when_orphaned
from .registry import ModelRegistry
from .upstream import cancel_timeout_timers

logger = logging.getLogger("bentoml.ganforge")

# Decorator-time settings (workers, threads, traffic) come from the
# environment when the module is imported, i.e. when `bentoml serve` starts.
_BOOT = settings()
use_log_format(_BOOT.log_format)  # BentoML set up its log handlers before importing this module
cancel_timeout_timers()  # before BentoML builds the app: no request outlives its answer (service/upstream.py)
use_own_metrics_dir()  # before `bentoml serve` makes the workers' metrics folder: one per instance (service/instance.py)


def _as_text(value: Any) -> Any:
    # BentoML json-decodes multipart text fields, so a model named "1" arrives as int 1.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


Text = Annotated[Optional[str], BeforeValidator(_as_text)]
ImageOut = Annotated[Path, ContentType("image/*")]


async def list_models(request: Request) -> JSONResponse:
    """The registry's models, plus `admission`: this worker's speed estimates and what it refused
    or cancelled (service/admission.py, service/deadline.py)."""
    service = bentoml.get_current_service()
    jobs_info = await anyio.to_thread.run_sync(service.jobs.describe)
    return JSONResponse({**service.registry.describe(), "admission": BOOK.describe(service.settings.timeout_s),
                         "jobs": jobs_info})


async def reload_models(request: Request) -> JSONResponse:
    """Re-scan the models dir in the worker that answers; see ModelRegistry.reload."""
    service = bentoml.get_current_service()
    report = await anyio.to_thread.run_sync(service.registry.reload)
    return JSONResponse({"worker_pid": os.getpid(), **report, **service.registry.describe()})


models_app = Starlette(routes=[
    Route("/models", list_models, methods=["GET"]),
    Route("/admin/reload", reload_models, methods=["POST"]),
    *ui.routes,
    *jobs.routes,
])


@bentoml.asgi_app(models_app, path="/")
@bentoml.service(
    name="ganforge",
    workers=_BOOT.workers,
    threads=_BOOT.threads,
    # BentoML's limit is per service (split across workers) and answers 429 in its own
    # body shape; the middleware enforces GANFORGE_MAX_CONCURRENCY per worker first.
    traffic={"timeout": backstop_timeout(_BOOT.timeout_s), "max_concurrency": 2 * _BOOT.max_concurrency * _BOOT.workers},
)
class Ganforge:
    """GAN generators on onnxruntime: generate, translate, upscale."""

    def __init__(self) -> None:
        self.settings = settings()
        core_imaging.configure_pillow(self.settings.max_input_pixels)
        self.registry = ModelRegistry.load(self.settings)
        ready = sum(m.ready for m in self.registry.models.values())
        logger.info("ganforge: %d model(s), %d ready, device %s, models dir %s",
                    len(self.registry.models), ready, self.registry.device, self.settings.models_dir)
        inference.warm_up_all(list(self.registry.models.values()))  # seeds admission's speed estimates
        # jobs (service/jobs/): run the same API methods' validation and handlers as the sync calls
        self.jobs = jobs.JobLayer(self.registry, self.settings, {n: a.input_spec for n, a in Ganforge.apis.items()})
        self.jobs.start()
        if in_bentoml_worker():  # SIGKILL of `bentoml serve` would leave this worker serving (service/orphan.py)
            stop_when_orphaned()
        self._stop_watch = threading.Event()
        if self.settings.reload_poll_s > 0:
            threading.Thread(target=self._watch_models, name="ganforge-reload", daemon=True).start()

    def _watch_models(self) -> None:
        """GANFORGE_RELOAD_POLL_S: re-scan the folder periodically (a stat per file when nothing changed)."""
        while not self._stop_watch.wait(self.settings.reload_poll_s):
            try:
                self.registry.reload()
            except Exception:  # noqa: BLE001 - the watch must outlive one bad scan
                logger.exception("model reload failed")

    @bentoml.on_shutdown
    def stop_watch(self) -> None:
        self._stop_watch.set()
        self.jobs.stop()  # a running job goes back to the queue

    def __is_ready__(self) -> bool:
        """/readyz: 503 while a model is unavailable, only with GANFORGE_READY_REQUIRES_ALL=1."""
        return not (self.settings.ready_requires_all and self.registry.unavailable())

    @bentoml.api(route="/generate")
    def generate(
        self,
        model: Text = None,
        label: Union[int, str, None] = None,
        n: Optional[int] = None,
        seed: Optional[int] = None,
        latent: Optional[list[list[float]]] = None,
        interpolate: Optional[Interpolation] = None,
        format: Text = None,
        quality: Optional[int] = None,
    ) -> ImageOut:
        """New images from a (conditional) generator. The seed used is echoed in `X-Seed`."""
        return image_response(
            handlers.generate, self.registry, self.settings, model=model, label=label, n=n, seed=seed,
            latent=latent, interpolate=interpolate, format=format, quality=quality,
        )

    @bentoml.api(route="/translate")
    def translate(
        self,
        image: Path,
        model: Text = None,
        direction: Text = None,
        format: Text = None,
        quality: Optional[int] = None,
    ) -> ImageOut:
        """Image-to-image translation (pix2pix; CycleGAN with `direction` a2b | b2a). Same size out."""
        return image_response(
            handlers.translate, self.registry, self.settings, image=image, model=model,
            direction=direction, format=format, quality=quality,
        )

    @bentoml.api(route="/upscale")
    def upscale(
        self,
        image: Path,
        model: Text = None,
        scale: Optional[float] = None,
        format: Text = None,
        quality: Optional[int] = None,
    ) -> ImageOut:
        """Super-resolution at the model's native scale, or a smaller `scale` (LANCZOS from native)."""
        return image_response(
            handlers.upscale, self.registry, self.settings, image=image, model=model,
            scale=scale, format=format, quality=quality,
        )


# a checked sync /translate or /upscale runs its handler from the middleware, with the API's own validation
_DIRECT = DirectImageApi("ganforge", bentoml.get_current_service, {n: a.input_spec for n, a in Ganforge.apis.items()})
Ganforge.add_asgi_middleware(GanforgeMiddleware, direct=_DIRECT.answer)
