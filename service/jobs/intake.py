"""A `video` or an `archive` upload on POST /upscale or /translate, checked at submit (before anything is stored).

Both always run as jobs (202, `Prefer` or not). Refused here, with the status core's error carries
(service/imaging.as_api_error):
- a video (core/video.probe, on a temp file in the jobs folder, removed after): not a video MP4 / MOV / MKV /
  WebM, no video stream, a codec this FFmpeg cannot decode (415); corrupt, truncated, a first frame that
  does not decode (400); over GANFORGE_MAX_VIDEO_S, GANFORGE_MAX_VIDEO_FRAMES or the pixel limits, in or out
  (413);
- an archive (core/archive.list_members: nothing is extracted): not a zip, a name that could escape its
  folder, a symlink, an encrypted member, a name twice (400); too many entries, too many bytes, a zip bomb
  (413);
- the fields, as the handlers check them: `model` (404), `format` (mp4 | webm for a video; png | jpeg | webp
  for an archive), `scale`, `direction` (422).
Damage found only by decoding further in fails the job, naming the frame (or, in an archive, that file).
"""

from __future__ import annotations

import tempfile
from typing import Any

from core.archive import list_members
from core.imaging import ImageError
from core.video import probe

from .. import handlers, imaging
from ..errors import bad_request
from .files import FULL, StorageFull
from .media import archive_limits, video_format, video_limits

MEDIA_FIELDS = {"video": ("video", "frames"), "archive": ("batch", "images")}  # field -> (job kind, unit)


def media_field(uploads: dict[str, bytes]) -> str | None:
    return next((name for name in uploads if name in MEDIA_FIELDS), None)


def check_media(layer: Any, endpoint: str, name: str, data: bytes, served: Any, validated: Any) -> None:
    """Refuse what cannot run (ApiError)."""
    if endpoint not in ("upscale", "translate"):
        raise bad_request(f"'{name}' is taken by /upscale and /translate only")
    check_fields(endpoint, name, served, validated)
    try:
        with tempfile.NamedTemporaryFile(dir=layer.files.results, prefix=".probe-", suffix=".tmp") as tmp:
            tmp.write(data)
            tmp.flush()
            if name == "archive":
                list_members(tmp.name, archive_limits(layer.settings))
            else:
                check_video(tmp.name, endpoint, served, layer.settings)
    except ImageError as exc:
        raise imaging.as_api_error(exc) from None
    except OSError as exc:
        if exc.errno in FULL:
            raise StorageFull("the upload") from None
        raise


def check_fields(endpoint: str, name: str, served: Any, validated: Any) -> None:
    if name == "video":
        video_format(validated.format)
    else:
        imaging.parse_format(validated.format, validated.quality)
    if endpoint == "upscale":
        handlers.upscale_scale(served, validated.scale)
    else:
        handlers.translate_role(served, validated.direction)


def check_video(path: str, endpoint: str, served: Any, settings: Any) -> None:
    info = probe(path, video_limits(settings))
    native = served.image_spec.scale if endpoint == "upscale" else 1
    imaging.check_pixels(info.width * native, info.height * native, settings.max_output_pixels,
                         f"a video frame's x{native} output" if native > 1 else "a video frame's output")
