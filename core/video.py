"""Videos: probe an untrusted upload, and run a per-frame pixel function over one (PyAV, no torch, no HTTP).

Probe (`probe`): the container is recognised from its first bytes (MP4/MOV: an ISO BMFF box; MKV/WebM: the
EBML magic) and opened with that demuxer only, so FFmpeg never guesses among its other demuxers (playlists
that read other files, image sequences). Then the first video stream must decode with the codecs this FFmpeg
has (H.264, H.265, VP9, AV1, ...); its packets are read once, without decoding, to count the frames exactly,
find the duration and tell a variable frame rate; a file shorter than its header says is truncated; the first
frame is decoded (damage further in is found by the run, which names the frame). Refusals are typed and
carry the HTTP status the service answers (service/imaging.as_api_error), as core.imaging's errors do:
- `NotAVideo` (415): another kind of file, another container, no video stream, a codec it cannot decode;
- `VideoError` (400): a corrupt or truncated stream (with the frame index when it is found while decoding);
- `VideoTooLarge` (413, also an ImageTooLarge): over `max_seconds`, `max_frames` or the pixel limit.

Transform (`transform_video`, core/transcode.py): decode, `fn`, encode, one frame at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av

from .imaging import ImageError, ImageTooLarge

# our name -> (FFmpeg demuxer, what the demuxer reports as its name)
CONTAINERS = {"mp4": "mov", "mov": "mov", "mkv": "matroska", "webm": "matroska"}
ISO_BOXES = (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot")
EBML_MAGIC = b"\x1a\x45\xdf\xa3"
NO_LIMIT = 2**62


class VideoError(ImageError):
    """A video that cannot be used: corrupt or truncated (a client's 400)."""

    status = 400

    def __init__(self, message: str, frame: int | None = None) -> None:
        super().__init__(message)
        self.frame = frame  # the index of the frame where decoding failed, when known


class NotAVideo(VideoError):
    """Not a video this service reads: another file type or container, no video stream, no decoder (415)."""

    status = 415


class VideoTooLarge(VideoError, ImageTooLarge):
    """A video over the duration, frame count or pixel limit (413)."""

    status = 413


@dataclass(frozen=True)
class VideoLimits:
    max_seconds: float = float("inf")  # the service: GANFORGE_MAX_VIDEO_S
    max_frames: int = NO_LIMIT
    max_pixels: int = NO_LIMIT  # per frame (the service: GANFORGE_MAX_INPUT_PIXELS)


@dataclass(frozen=True)
class AudioInfo:
    index: int  # the stream's index in the container
    codec: str
    sample_rate: int
    channels: int


@dataclass(frozen=True)
class VideoInfo:
    container: str  # "mov" (MP4, MOV) or "matroska" (MKV, WebM): the demuxer that reads it
    codec: str  # the video stream's decoder, e.g. "h264", "hevc", "vp9", "av1"
    width: int
    height: int
    frames: int  # counted from the packets, not taken from a header
    duration_s: float  # first frame's timestamp to the end of the last frame
    time_base: Fraction
    avg_rate: Fraction | None  # frames per second on average
    vfr: bool  # frame durations differ (by more than one tick)
    stream_index: int
    audio: tuple[AudioInfo, ...] = field(default_factory=tuple)


def sniff_container(path: str | Path) -> str:
    """The FFmpeg demuxer for a file's first bytes, or NotAVideo."""
    with open(path, "rb") as file:
        head = file.read(12)
    if head[:4] == EBML_MAGIC:
        return "matroska"
    if len(head) >= 8 and head[4:8] in ISO_BOXES:
        return "mov"
    raise NotAVideo("not a video: MP4, MOV, MKV and WebM files are accepted")


def open_input(path: str | Path) -> av.container.InputContainer:
    """The file opened with the demuxer its magic names (never FFmpeg's guess); NotAVideo / VideoError."""
    demuxer = sniff_container(path)
    try:
        return av.open(str(path), "r", format=demuxer)
    except av.FFmpegError:
        raise VideoError("could not read the video: the file is corrupt or truncated") from None


def video_stream(container: av.container.InputContainer) -> av.VideoStream:
    if not container.streams.video:
        raise NotAVideo("the file has no video stream")
    stream = container.streams.video[0]
    if stream.codec_context is None or not stream.codec_context.name:
        raise NotAVideo("the video's codec is not one this server can decode")
    if not stream.width or not stream.height:
        raise VideoError("the video stream has no frame size: the file is corrupt")
    return stream


def probe(path: str | Path, limits: VideoLimits = VideoLimits()) -> VideoInfo:
    """What a video holds, after every limit is checked; NotAVideo / VideoError / VideoTooLarge."""
    container = open_input(path)
    try:
        stream = video_stream(container)
        what = f"a video frame ({stream.width}x{stream.height})"
        if stream.width * stream.height > limits.max_pixels:
            raise VideoTooLarge(f"{what} is {stream.width * stream.height} pixels; the limit is "
                                f"{limits.max_pixels} pixels")
        header_s = container.duration / av.time_base if container.duration else 0.0
        check_seconds(header_s, limits)
        scan = scan_packets(container, stream, limits)
        check_complete(scan, stream.frames, header_s)
        check_first_frame(container, stream)
        duration = float((scan.end - scan.first) * stream.time_base) if scan.stamps else 0.0
        check_seconds(duration, limits)
        audio = tuple(AudioInfo(s.index, codec_name(s), s.sample_rate or 0, s.channels or 0)
                      for s in container.streams.audio)
        return VideoInfo(container=container.format.name.split(",")[0], codec=codec_name(stream),
                         width=stream.width, height=stream.height, frames=scan.frames, duration_s=duration,
                         time_base=stream.time_base, avg_rate=stream.average_rate or stream.guessed_rate,
                         vfr=scan.vfr, stream_index=stream.index, audio=audio)
    finally:
        container.close()


def codec_name(stream: av.stream.Stream) -> str:
    """The codec's own name ("av1", "opus"), not its decoder's ("libdav1d", "libopus"); "unknown" without one."""
    context = stream.codec_context
    return context.codec.canonical_name if context is not None and context.codec is not None else "unknown"


def check_seconds(seconds: float, limits: VideoLimits) -> None:
    if seconds > limits.max_seconds:
        raise VideoTooLarge(f"the video lasts {seconds:.1f} s; the limit is {limits.max_seconds:g} s")


def check_complete(scan: Scan, header_frames: int, header_s: float) -> None:
    """A file cut short still demuxes, up to where it ends: what its header promised tells it apart."""
    if header_frames and scan.frames < header_frames:
        raise VideoError(f"the video is truncated: frame {scan.frames} of {header_frames} is missing",
                         frame=scan.frames)
    if header_s and scan.end_s < header_s - max(TRUNCATED_SLACK_S, 0.05 * header_s):
        raise VideoError(f"the video is truncated after frame {scan.frames}: its streams end at "
                         f"{scan.end_s:.2f} s, its header says {header_s:.2f} s", frame=scan.frames)


TRUNCATED_SLACK_S = 0.5


def check_first_frame(container: av.container.InputContainer, stream: av.VideoStream) -> None:
    """Decode the first frame: a stream the decoder cannot start on is refused at submit, not as a failed job."""
    try:
        container.seek(0, stream=stream)
        for _ in container.decode(stream):
            return
    except av.FFmpegError:
        pass
    raise VideoError("could not decode the first frame of the video: the stream is corrupt", frame=0)


@dataclass
class Scan:
    frames: int = 0
    stamps: list[int] = field(default_factory=list)  # video pts, in the stream's time base
    last_duration: int = 0
    end_s: float = 0.0  # where the last packet of any stream read ends, in seconds

    @property
    def first(self) -> int:
        return min(self.stamps)

    @property
    def end(self) -> int:
        steps = self.steps
        return max(self.stamps) + (self.last_duration or (steps[-1] if steps else 0))

    @property
    def steps(self) -> list[int]:
        ordered = sorted(self.stamps)
        return [b - a for a, b in zip(ordered, ordered[1:])]

    @property
    def vfr(self) -> bool:
        """Two frame intervals differ by more than one tick (Matroska's millisecond ticks round a constant
        30 fps to 33 and 34)."""
        steps = self.steps
        return bool(steps) and max(steps) - min(steps) > 1


def scan_packets(container: av.container.InputContainer, stream: av.VideoStream, limits: VideoLimits) -> Scan:
    """Read the video and audio packets once, without decoding."""
    scan = Scan()
    try:
        for packet in container.demux(stream, *container.streams.audio):
            if packet.size == 0:
                continue  # the demuxer's flush packet
            pts = packet.pts if packet.pts is not None else packet.dts
            if pts is not None:
                end = float((pts + (packet.duration or 0)) * packet.time_base)
                scan.end_s = max(scan.end_s, end)
            if packet.stream.index != stream.index:
                continue
            scan.frames += 1
            if scan.frames > limits.max_frames:
                raise VideoTooLarge(f"the video has more than {limits.max_frames} frames; the limit is "
                                    f"{limits.max_frames}")
            if pts is not None:
                scan.stamps.append(pts)
                scan.last_duration = packet.duration or scan.last_duration
    except av.FFmpegError:
        raise VideoError(f"the video is corrupt after frame {scan.frames}", frame=scan.frames) from None
    if scan.frames == 0:
        raise VideoError("the video stream holds no frames")
    return scan
