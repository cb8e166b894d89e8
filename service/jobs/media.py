"""The `video` and `batch` job kinds: a video's every frame, or a zip's every image, through the sync API's pipeline.

- `video` (core/transcode.py): each decoded frame goes through the same call as a sync image
  (service/inference.py: translate_image / upscale_image, with `model`, `scale` and `direction` checked as
  the handlers check them), under a `PartToken`: a cancel stops the job within one tile, and the job's
  progress is frames done of frames. The result, MP4 (H.264) or WebM (VP9), is written by transform_video
  straight into the job's result file (atomically: a temp file renamed at the end, removed on any error).
  A frame that fails fails the job with the frame's index in its message.
- `batch` (core/batch.py): each member's bytes go through the sync handler itself (handlers.upscale /
  handlers.translate, with the bytes in place of the upload), so each output is byte for byte the sync
  answer for that file; a member the sync API would refuse (400, 413, 415, 422) is recorded in
  manifest.json and the batch goes on; a cancel (503) or a server fault (500) stops it, keeping nothing.

Both return a `FileResult`: the result is already in place; `media` goes into the job's public JSON.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from core.archive import ArchiveLimits
from core.batch import transform_archive
from core.imaging import DecodedImage, ImageError
from core.transcode import MEDIA_TYPES, VideoReport, transform_video
from core.video import VideoLimits

from .. import deadline, handlers, imaging, inference
from ..config import Settings
from ..deadline import RequestCancelled
from ..errors import ApiError
from ..forms import STAND_IN, api_kwargs
from .files import FULL, StorageFull
from .token import PartToken

VIDEO_FORMATS = ("mp4", "webm")
ARCHIVE_TYPE = "application/zip"


@dataclass
class FileResult:
    """A result the kind wrote itself into the job's result file."""

    media_type: str
    size: int
    headers: dict[str, str] = field(default_factory=dict)
    media: dict[str, Any] | None = None  # what the job's JSON says about it (frames, audio handling, files)


def video_limits(settings: Settings) -> VideoLimits:
    return VideoLimits(max_seconds=settings.max_video_s, max_frames=settings.max_video_frames,
                       max_pixels=settings.max_input_pixels)


def archive_limits(settings: Settings) -> ArchiveLimits:
    return ArchiveLimits(max_entries=settings.archive_max_entries, max_total_bytes=settings.archive_max_bytes,
                         max_member_bytes=settings.max_upload_bytes)


def video_format(value: Any) -> str:
    name = "mp4" if value in (None, "") else str(value).strip().lower()
    if name not in VIDEO_FORMATS:
        raise ApiError(422, f"format must be mp4 or webm for a video, got {str(value)[:40]!r}")
    return name


def handler_kwargs(ctx: Any) -> dict[str, Any]:
    """The job's fields as the API's pydantic model validates them, without the upload."""
    kwargs = api_kwargs(ctx.specs[ctx.job.endpoint], ctx.job.params, {"image": STAND_IN})
    del kwargs["image"]
    return kwargs


def frame_function(ctx: Any, kwargs: dict[str, Any], job_token: Any) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 RGB frame -> the sync pipeline's output pixels; errors name the frame."""
    served = ctx.registry.pick(ctx.job.endpoint, kwargs.get("model"))
    if ctx.job.endpoint == "upscale":
        scale = handlers.upscale_scale(served, kwargs.get("scale"))
        run = lambda image: inference.upscale_image(served, image, scale)
    else:
        role = handlers.translate_role(served, kwargs.get("direction"))
        run = lambda image: inference.translate_image(served, image, role)
    index = iter(range(1 << 62))

    def fn(pixels: np.ndarray) -> np.ndarray:
        frame = next(index)
        try:
            with deadline.bound(PartToken(job_token)):
                return run(DecodedImage(pixels, None))[0]
        except RequestCancelled:
            raise
        except ApiError as exc:
            raise ApiError(exc.status, f"frame {frame}: {exc.message}") from None

    return fn


def audio_notes(report: VideoReport) -> list[dict[str, Any]]:
    return [{"stream": a.index, "codec_in": a.codec_in, "codec_out": a.codec_out,
             "handling": "copied" if a.copied else f"re-encoded to {a.codec_out.upper()}"
             if a.codec_out == "aac" else f"re-encoded to {a.codec_out.capitalize()}"} for a in report.audio]


def run_video(ctx: Any) -> FileResult:
    job, token = ctx.job, deadline.current()
    kwargs = handler_kwargs(ctx)
    fmt = video_format(kwargs.get("format"))
    fn = frame_function(ctx, kwargs, token)
    served_name = job.model or ""
    hook = lambda done, total: token.check(served_name, done, total, "frames")
    dst = ctx.files.result_path(job.id)
    with written(dst):
        report = transform_video(ctx.files.input_path(job.id, job.inputs["video"]), dst, fn, fmt=fmt,
                                 limits=video_limits(ctx.settings), check=hook, progress=hook)
    media = {"kind": "video", "format": fmt, "frames": report.frames, "width": report.width,
             "height": report.height, "padded": report.padded, "audio": audio_notes(report)}
    return FileResult(MEDIA_TYPES[fmt], dst.stat().st_size, {"X-Model": served_name}, media)


def run_batch(ctx: Any) -> FileResult:
    job, token = ctx.job, deadline.current()
    kwargs = handler_kwargs(ctx)
    fmt, _ = imaging.parse_format(kwargs.get("format"), kwargs.get("quality"))
    handler = handlers.translate if job.endpoint == "translate" else handlers.upscale

    def fn(name: str, data: bytes) -> bytes:
        with deadline.bound(PartToken(token)):
            return handler(ctx.registry, ctx.settings, image=data, **kwargs).body

    hook = lambda done, total: token.check(job.model or "", done, total, "images")
    dst = ctx.files.result_path(job.id)
    params = {k: v for k, v in kwargs.items() if v is not None}
    with written(dst):
        report = transform_archive(ctx.files.input_path(job.id, job.inputs["archive"]), dst, fn, fmt=fmt,
                                   limits=archive_limits(ctx.settings), check=hook, progress=hook,
                                   extra={"endpoint": job.endpoint, "model": job.model, "params": params})
    media = {"kind": "archive", "format": fmt, **dataclasses.asdict(report)}
    return FileResult(ARCHIVE_TYPE, dst.stat().st_size, {"X-Model": job.model or ""}, media)


class written:
    """Around a core writer: its refusals as the API's errors, a full disk as 507 (the writer has removed its
    temp file either way)."""

    def __init__(self, dst: Path) -> None:
        self.dst = dst

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> None:
        if isinstance(exc, ImageError):
            raise imaging.as_api_error(exc) from None
        if isinstance(exc, OSError) and exc.errno in FULL:
            raise StorageFull("the result") from None
