"""`transform_video`: decode a video, run a pixel function on every frame, encode as it goes (PyAV).

- Memory: one demuxed packet at a time; the decoder's and the encoder's few frames of delay (x264's
  lookahead is cut to `LOOKAHEAD` frames and the codecs' threads to `MAX_THREADS`: at an x4 upscale a frame
  is tens of MB). No frame touches the disk.
- Frames: every decoded frame goes out, in order, with its own timestamp: each output frame takes the input
  frame's pts and time base, so a variable frame rate is kept (WebM stores milliseconds: timestamps are
  rounded to 1 ms there, as in any WebM).
- Video out: MP4 with H.264 (libx264, yuv420p, CRF `crf`, `preset`) or WebM with VP9 (libvpx-vp9, CRF).
  4:2:0 H.264 needs an even width and height: an odd output size is padded by one pixel at the right or
  bottom, repeating the last column or row (no pixel of the model's output is lost; `padded` says so).
  VP9 takes odd sizes as they are. A 1-channel output is written as gray RGB; a 4th channel is dropped.
- Size: a stream that changes frame size part way is scaled back to its first frame's size before `fn`
  (the output has one size); every decoded frame is held to the pixel limit again (headers can lie).
- Rotation: a frame whose display matrix says "rotate" (a phone held upright) is turned upright before
  `fn`, as EXIF orientation is for images; the output carries no rotation. Subtitle and data streams are
  not carried over.
- Colour: frames are read with their own matrix and range (untagged: BT.709 from 720 lines up, else
  BT.601, as players assume) and written BT.709, limited range, tagged so.
- Audio: each audio stream is copied packet for packet when the output container can hold its codec
  (`COPYABLE`), else decoded and re-encoded (AAC in MP4, Opus in WebM); the report says which.
- Hooks: `check(done, total)` before every frame (raise to stop), `progress(done, total)` after it.
- Atomic: written to a hidden temp file beside `dst`, renamed over it at the end; on any error or a stop the
  temp file is removed and `dst` is untouched.
- Errors: VideoError naming the frame index when the stream turns out corrupt or truncated part way.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import av
import numpy as np

from .video import VideoError, VideoInfo, VideoLimits, VideoTooLarge, codec_name, open_input, probe, video_stream

FORMATS = {"mp4": ("mp4", "libx264", "aac"), "webm": ("webm", "libvpx-vp9", "libopus")}
MEDIA_TYPES = {"mp4": "video/mp4", "webm": "video/webm"}
COPYABLE = {"mp4": {"aac", "mp3", "ac3", "eac3", "alac", "flac", "opus"}, "webm": {"opus", "vorbis"}}
LOOKAHEAD = 8
MAX_THREADS = 8  # x264 alone would take 1.5 per core, each with frames in flight: memory grows with the machine

FrameFn = Callable[[np.ndarray], np.ndarray]
Hook = Callable[[int, int], None]


@dataclass(frozen=True)
class AudioOutcome:
    index: int  # the input stream
    codec_in: str
    codec_out: str
    copied: bool  # False: re-encoded, because the output container cannot hold codec_in


@dataclass(frozen=True)
class VideoReport:
    frames: int
    width: int  # of the written frames (after padding)
    height: int
    padded: bool  # an odd output size was padded by one pixel for H.264
    fmt: str
    media_type: str
    audio: tuple[AudioOutcome, ...]


@dataclass(frozen=True)
class Quality:
    crf: int | None = None  # None: 18 for H.264, 32 for VP9 (visually close to the input at these sizes)
    preset: str = "medium"  # x264's speed/size trade; VP9 maps it to its `cpu-used`
    threads: int = 0  # encoder and decoder threads; 0: the cores, at most MAX_THREADS (each holds frames)


def transform_video(src: str | Path, dst: str | Path, fn: FrameFn, *, fmt: str = "mp4",
                    info: VideoInfo | None = None, limits: VideoLimits = VideoLimits(), check: Hook | None = None,
                    progress: Hook | None = None, quality: Quality = Quality()) -> VideoReport:
    """`fn` on every frame of `src` -> `dst` (atomically); see the module's notes. `info`: the probe made
    at submit (else it is probed here against `limits`); `limits.max_pixels` is checked again on every
    decoded frame (a stream may change size part way)."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: mp4 or webm")
    info = info or probe(src, limits)
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open_input(src) as source:
            job = Transcode(source, tmp, fn, fmt, info, quality, limits.max_pixels)
            try:
                report = job.run(check, progress)
            finally:
                job.close()
        os.replace(tmp, dst)
        return report
    finally:
        tmp.unlink(missing_ok=True)


class Transcode:
    """One run: the input container open, the output opened once the first frame's output size is known."""

    def __init__(self, source: av.container.InputContainer, tmp: Path, fn: FrameFn, fmt: str,
                 info: VideoInfo, quality: Quality, max_pixels: int) -> None:
        self.source, self.tmp, self.fn, self.fmt, self.info, self.quality = source, tmp, fn, fmt, info, quality
        self.max_pixels = max_pixels
        self.vin = video_stream(source)
        self.vin.thread_type = "AUTO"
        self.vin.codec_context.thread_count = thread_count(quality)
        self.ain = list(source.streams.audio)
        self.out: av.container.OutputContainer | None = None
        self.vout = None
        self.audio: dict[int, tuple[object, AudioOutcome]] = {}
        self.pending: list[av.Packet] = []  # audio packets demuxed before the output exists
        self.size: tuple[int, int] | None = None  # as encoded
        self.natural: tuple[int, int] | None = None  # as fn gave it
        self.in_size: tuple[int, int] | None = None  # the first decoded frame's
        self.done = 0

    def run(self, check: Hook | None, progress: Hook | None) -> VideoReport:
        total = self.info.frames
        for packet in self.packets():
            if packet.stream.type == "audio":
                self.audio_packet(packet)
                continue
            for frame in self.decode(packet):
                if check is not None:
                    check(self.done, total)
                self.video_frame(frame)
                self.done += 1
                if progress is not None:
                    progress(self.done, max(total, self.done))
        if self.done < total:
            raise VideoError(f"the video is truncated: frame {self.done} of {total} could not be read",
                             frame=self.done)
        return self.finish()

    def packets(self):
        """The input's packets in file order; a container damaged part way is a VideoError naming the frame."""
        packets = self.source.demux(self.vin, *self.ain)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.FFmpegError:
                raise VideoError(f"the video is corrupt after frame {self.done}", frame=self.done) from None
            yield packet

    def decode(self, packet: av.Packet) -> list[av.VideoFrame]:
        try:
            return packet.decode()
        except av.FFmpegError:
            raise VideoError(f"the video is corrupt at frame {self.done}", frame=self.done) from None

    def video_frame(self, frame: av.VideoFrame) -> None:
        if frame.width * frame.height > self.max_pixels:
            raise VideoTooLarge(f"frame {self.done} is {frame.width}x{frame.height}; the limit is "
                                f"{self.max_pixels} pixels")
        self.in_size = self.in_size or (frame.width, frame.height)
        same = (frame.width, frame.height) == self.in_size  # else a stream that changes size: the first one's
        image = frame if same else frame.reformat(width=self.in_size[0], height=self.in_size[1])
        pixels = as_rgb(self.fn(upright(rgb_pixels(image), frame.rotation)))
        if self.out is None:
            self.open_output(pixels.shape[1], pixels.shape[0])
        pixels = pad_even(pixels) if self.fmt == "mp4" else pixels
        if (pixels.shape[1], pixels.shape[0]) != self.size:
            raise ValueError(f"frame {self.done}: fn gave {pixels.shape[1]}x{pixels.shape[0]}, "
                             f"earlier frames {self.size[0]}x{self.size[1]}")
        out = av.VideoFrame.from_ndarray(pixels, format="rgb24").reformat(
            format=self.vout.pix_fmt, dst_colorspace=BT709, dst_color_range=LIMITED, dst_color_primaries=BT709,
            dst_color_trc=BT709)
        out.pts, out.time_base = frame.pts if frame.pts is not None else frame.dts, frame.time_base
        for packet in self.vout.encode(out):
            self.out.mux(packet)

    def open_output(self, width: int, height: int) -> None:
        container, vcodec, _ = FORMATS[self.fmt]
        options = {"movflags": "+faststart"} if container == "mp4" else {}
        self.out = av.open(str(self.tmp), "w", format=container, options=options)
        self.vout = add_video_stream(self.out, vcodec, self.vin, width, height, self.quality)
        self.natural = (width, height)
        self.size = (self.vout.width, self.vout.height)
        for stream in self.ain:
            self.audio[stream.index] = add_audio_stream(self.out, stream, self.fmt)
        for packet in self.pending:
            self.audio_packet(packet)
        self.pending.clear()

    def audio_packet(self, packet: av.Packet) -> None:
        if self.out is None:
            self.pending.append(packet)
            return
        ostream, outcome = self.audio[packet.stream.index]
        if outcome.copied:
            if packet.dts is not None:  # the demuxer's flush packet has none
                packet.stream = ostream
                self.out.mux(packet)
            return
        try:
            frames = packet.decode()
        except av.FFmpegError:
            frames = []  # a damaged audio packet is skipped, as players do; the video is what was asked for
        for frame in frames:
            frame.pts = None  # the encoder counts samples; the stream starts where the input's did
            for out in ostream.encode(frame):
                self.out.mux(out)

    def finish(self) -> VideoReport:
        if self.out is None:
            raise VideoError("the video stream holds no frames", frame=0)
        for packet in self.vout.encode():
            self.out.mux(packet)
        for ostream, outcome in self.audio.values():
            if not outcome.copied:
                for packet in ostream.encode():
                    self.out.mux(packet)
        self.out.close()
        self.out = None
        width, height = self.size
        return VideoReport(frames=self.done, width=width, height=height,
                           padded=self.size != self.natural, fmt=self.fmt,
                           media_type=MEDIA_TYPES[self.fmt], audio=tuple(o for _, o in self.audio.values()))

    def close(self) -> None:
        if self.out is not None:
            try:
                self.out.close()
            except Exception:  # noqa: BLE001 - closing a failed output; the temp file is removed anyway
                pass
            self.out = None


BT709, BT601, LIMITED, UNSPECIFIED = 1, 5, 1, 2  # FFmpeg's AVColorSpace / AVColorRange numbers (FFmpeg 5+)


def rgb_pixels(frame: av.VideoFrame) -> np.ndarray:
    """uint8 RGB with the frame's own matrix and range; an untagged frame gets what players assume (BT.709 from
    720 lines up, else BT.601; limited range)."""
    space = frame.colorspace if frame.colorspace not in (0, UNSPECIFIED) else (BT709 if frame.height >= 720
                                                                              else BT601)
    full = frame.color_range == 2 or frame.format.name.startswith("yuvj")
    return frame.to_ndarray(format="rgb24", src_colorspace=space, src_color_range=2 if full else LIMITED)


def upright(pixels: np.ndarray, rotation: int) -> np.ndarray:
    """A frame as it is meant to be seen: its display matrix's counterclockwise rotation (phones film
    sideways and say so there) applied to the pixels, as EXIF orientation is for images."""
    turns = round((rotation or 0) / 90) % 4
    return np.ascontiguousarray(np.rot90(pixels, turns)) if turns else pixels


def as_rgb(pixels: np.ndarray) -> np.ndarray:
    """uint8 [H, W], [H, W, 1], [H, W, 3] or [H, W, 4] -> contiguous uint8 [H, W, 3]."""
    if pixels.dtype != np.uint8:
        raise ValueError(f"fn must return uint8 pixels, not {pixels.dtype}")
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    return np.ascontiguousarray(pixels[..., :3])


def pad_even(pixels: np.ndarray) -> np.ndarray:
    """Repeat the last row / column once when the height / width is odd (H.264 4:2:0 needs even sizes)."""
    h, w = pixels.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return pixels
    return np.pad(pixels, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def add_video_stream(out: av.container.OutputContainer, codec: str, vin: av.VideoStream, width: int,
                     height: int, quality: Quality):
    """The encoder, in the input's time base (so every frame keeps its timestamp) at the given size."""
    if codec == "libx264":
        width, height = width + width % 2, height + height % 2
        options = {"crf": str(quality.crf if quality.crf is not None else 18), "preset": quality.preset,
                   "rc-lookahead": str(LOOKAHEAD)}
    else:
        options = {"crf": str(quality.crf if quality.crf is not None else 32), "b": "0",
                   "cpu-used": VP9_SPEED.get(quality.preset, "4"), "row-mt": "1", "lag-in-frames": str(LOOKAHEAD)}
    stream = out.add_stream(codec, rate=vin.average_rate or vin.guessed_rate or 25, options=options)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    context = stream.codec_context  # the frames are BT.709, limited range: said so in the stream
    context.colorspace, context.color_primaries, context.color_trc, context.color_range = BT709, BT709, BT709, LIMITED
    stream.time_base = vin.time_base
    stream.codec_context.time_base = vin.time_base
    stream.codec_context.thread_count = thread_count(quality)
    return stream


def thread_count(quality: Quality) -> int:
    return quality.threads or min(os.cpu_count() or 1, MAX_THREADS)


VP9_SPEED = {"ultrafast": "8", "superfast": "8", "veryfast": "7", "faster": "6", "fast": "5",
             "medium": "4", "slow": "2", "slower": "1", "veryslow": "0"}


def add_audio_stream(out: av.container.OutputContainer, ain: av.AudioStream, fmt: str):
    """A copy of the input stream when the container allows its codec, else an AAC / Opus encoder."""
    codec = codec_name(ain)
    if codec in COPYABLE[fmt]:
        return out.add_stream_from_template(ain), AudioOutcome(ain.index, codec, codec, True)
    encoder = FORMATS[fmt][2]
    rate = ain.sample_rate if encoder != "libopus" else 48000  # Opus encodes at 48 kHz (or 8/12/16/24)
    stream = out.add_stream(encoder, rate=rate)
    stream.layout = ain.layout.name if ain.layout.nb_channels <= 2 else "stereo"
    return stream, AudioOutcome(ain.index, codec, "aac" if encoder == "aac" else "opus", False)
