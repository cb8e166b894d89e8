"""Video frames through the model: the video path (core/transcode.py) against the per-image path, same frames.

`python -m bench.video [--model srresnet-x4] [--seconds 10] [--size 640x360] [--fps 30] [--op upscale]`
makes a clip (testkit/media.py: moving content, AAC audio), loads the model with the service's loader on
the CPU, then:
- video: `transform_video` with the service's pipeline as the frame function: wall time, frames per second,
  peak RSS (and its growth over the loaded model);
- per image: the same decoded frames, each as the PNG a client would upload, through what the sync handler
  does (decode_image, the pipeline, encode_image PNG), no HTTP: frames per second;
- proof: the output's frame count, timestamps and audio packets against the input's.
The job layer's own overhead (queue, store, polling) is not in it: issue 24's closing note measures that
through the server. One JSON object on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import tempfile
import time
from pathlib import Path

from .common import REPO, peak_rss_bytes, png_bytes, reset_peak_rss, rss_bytes

MIB = 2**20


def load(model_name: str):
    from core.loading import load_model
    from core.runtime import CPU
    from service.config import Settings

    settings = dataclasses.replace(Settings.from_env(), device="cpu", batch_max=1)
    model = load_model(REPO / "models" / model_name, settings, [CPU])
    if not model.ready:
        raise SystemExit(f"model {model_name} did not load: {model.reason}")
    return model


def frame_fn(model, op: str):
    """uint8 frame -> uint8 output, exactly the sync endpoint's pipeline call."""
    from core import pipelines
    from core.imaging import DecodedImage

    if op == "upscale":
        scale = float(model.image_spec.scale)
        return lambda px: pipelines.upscale_image(model, DecodedImage(px, None), scale)[0]
    role = "generator" if "generator" in model.sessions else "a2b"
    return lambda px: pipelines.translate_image(model, DecodedImage(px, None), role)[0]


def per_image_fps(fn, frames) -> float:
    from core.imaging import decode_image, encode_image

    uploads = [png_bytes(px) for _, px in frames]
    gc.collect()
    t0 = time.perf_counter()
    for data in uploads:
        image = decode_image(data, 2**40)
        encode_image(fn(image.pixels), None, "png", 90)
    return len(uploads) / (time.perf_counter() - t0)


def run(args: argparse.Namespace) -> dict:
    from core.transcode import transform_video
    from testkit.media import make_video, read_audio_packets, read_frames

    width, height = map(int, args.size.split("x"))
    frames_n = args.frames or round(args.seconds * args.fps)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "clip.mp4", Path(tmp) / f"out.{args.format}"
        make_video(src, frames=frames_n, width=width, height=height, fps=args.fps, audio="aac")
        model = load(args.model)
        fn = frame_fn(model, args.op)
        fn(read_frames(src)[0][1])  # warm the sessions
        gc.collect()
        base, exact = rss_bytes(), reset_peak_rss()
        t0 = time.perf_counter()
        report = transform_video(src, dst, fn, fmt=args.format)
        wall = time.perf_counter() - t0
        peak = peak_rss_bytes()
        frames_in, frames_out = read_frames(src), read_frames(dst)
        same_stamps = [t for t, _ in frames_in] == [t for t, _ in frames_out]
        same_audio = read_audio_packets(src) == read_audio_packets(dst)
        image_fps = per_image_fps(fn, frames_in)
    video_fps = frames_n / wall
    return {"model": args.model, "op": args.op, "input": f"{width}x{height}", "fps_in": args.fps,
            "frames": frames_n, "output": f"{report.width}x{report.height}", "format": args.format,
            "video_wall_s": round(wall, 2), "video_fps": round(video_fps, 3), "per_image_fps": round(image_fps, 3),
            "video_vs_per_image": round(video_fps / image_fps, 3), "peak_rss_mib": round(peak / MIB),
            "growth_mib": round((peak - base) / MIB), "peak_is_call_only": exact,
            "frames_out": len(frames_out), "timestamps_equal": same_stamps, "audio_packets_equal": same_audio,
            "audio": [dataclasses.asdict(a) for a in report.audio]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.video", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="srresnet-x4")
    p.add_argument("--op", choices=["upscale", "translate"], default="upscale")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--frames", type=int, default=0, help="overrides --seconds (a short check)")
    p.add_argument("--size", default="640x360")
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--format", choices=["mp4", "webm"], default="mp4")
    print(json.dumps(run(p.parse_args(argv)), indent=1))


if __name__ == "__main__":
    main()
