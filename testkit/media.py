"""Small real test videos and archives, made with PyAV and zipfile (tests, bench and docs scripts).

`make_video` writes H.264 (or VP9) frames whose content changes every frame (a moving bar over a gradient,
so a frame mixed up with its neighbour shows), at a constant or a variable frame rate (intervals cycling
40, 70, 100 ms), with an optional AAC (or Opus) sine-tone track covering the video's length.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

VFR_STEPS_MS = (40, 70, 100)


def frame_pixels(i: int, width: int, height: int) -> np.ndarray:
    """Frame i: a horizontal gradient, a vertical gradient shifted by i, a white bar moving right."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    img = np.zeros((height, width, 3), np.uint8)
    img[..., 0] = np.broadcast_to(x, (height, width)).astype(np.uint8)
    img[..., 1] = np.broadcast_to((y + 8 * i) % 256, (height, width)).astype(np.uint8)
    img[..., 2] = (16 * i) % 256
    bar = (3 * i) % max(width - 4, 1)
    img[:, bar:bar + 4] = 255
    return img


def make_video(path: str | Path, *, fmt: str = "mp4", frames: int = 30, width: int = 64, height: int = 48,
               fps: int = 15, vfr: bool = False, audio: str | None = "aac", codec: str = "libx264",
               faststart: bool = False, rotation: int = 0) -> list[Fraction]:
    """Write the video; returns each frame's timestamp in seconds."""
    options = {"movflags": "+faststart"} if faststart else {}
    out = av.open(str(path), "w", format=fmt, options=options)
    video = out.add_stream(codec, rate=fps)
    video.width, video.height, video.pix_fmt = width, height, "yuv420p"
    tb = Fraction(1, 1000)
    video.time_base = video.codec_context.time_base = tb
    if rotation:
        video.set_display_rotation(rotation)  # counterclockwise degrees, as a phone's metadata says
    steps = [VFR_STEPS_MS[i % len(VFR_STEPS_MS)] if vfr else round(1000 / fps) for i in range(frames)]
    tone = add_tone(out, audio) if audio else None
    stamps, pts = [], 0
    for i in range(frames):
        frame = av.VideoFrame.from_ndarray(frame_pixels(i, width, height), format="rgb24")
        frame.pts, frame.time_base = pts, tb
        stamps.append(Fraction(pts, 1000))
        pts += steps[i]
        for packet in video.encode(frame):
            out.mux(packet)
    for packet in video.encode():
        out.mux(packet)
    if tone is not None:
        write_tone(out, tone, pts / 1000)
    out.close()
    return stamps


def add_tone(out: av.container.OutputContainer, codec: str, rate: int = 48000):
    stream = out.add_stream(codec, rate=rate)
    stream.layout = "mono"
    return stream


def write_tone(out: av.container.OutputContainer, stream, seconds: float) -> None:
    """A 440 Hz tone of `seconds`, mono, in 1024-sample frames."""
    rate = stream.sample_rate
    total, t = int(rate * seconds), 0
    while t < total:
        k = min(1024, total - t)
        samples = (0.2 * np.sin(2 * np.pi * 440 * np.arange(t, t + k) / rate)).astype(np.float32)[None]
        frame = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
        frame.sample_rate, frame.pts = rate, t
        for packet in stream.encode(frame):
            out.mux(packet)
        t += k
    for packet in stream.encode():
        out.mux(packet)


def make_audio_only(path: str | Path, seconds: float = 1.0) -> None:
    out = av.open(str(path), "w", format="mp4")
    write_tone(out, add_tone(out, "aac"), seconds)
    out.close()


def read_frames(path: str | Path) -> list[tuple[Fraction, np.ndarray]]:
    """Every decoded frame: (timestamp in seconds, uint8 RGB pixels)."""
    with av.open(str(path)) as container:
        return [(frame.pts * frame.time_base, frame.to_ndarray(format="rgb24"))
                for frame in container.decode(container.streams.video[0])]


def read_audio_packets(path: str | Path) -> list[list[tuple[Fraction, bytes]]]:
    """Per audio stream, its packets: (timestamp in seconds, payload)."""
    with av.open(str(path)) as container:
        streams = list(container.streams.audio)
        packets: list[list[tuple[Fraction, bytes]]] = [[] for _ in streams]
        for packet in container.demux(*streams):
            if packet.size:
                packets[streams.index(packet.stream)].append((packet.pts * packet.time_base, bytes(packet)))
        return packets


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)
