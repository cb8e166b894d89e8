"""A video job through a real server against the per-image sync path on the same frames (issue 24's closing note).

`python -m bench.video_http [--op translate --model colorize] [--seconds 10] [--size 640x360] [--fps 30]
[--sync-frames 30] [--rounds 1]` makes a clip (testkit/media.py: moving content, AAC audio), starts
`bentoml serve` on the shipped models/ (testkit/launcher.py; its jobs folder in a temp dir), then, in each of
`--rounds` rounds (on a shared machine the load moves: the ratio is the median of the rounds' ratios):
- the job: POST /translate|/upscale with the clip in `video` (202), polled to the end: wall time from
  submit to success, frames per second, and the peak RSS of the server's whole process tree (psutil,
  sampled every 0.1 s while it runs) against its RSS before;
- the sync path: `--sync-frames` of the clip's frames (spread over it), each as the PNG a client would
  upload, POSTed one after another: frames per second (the same frames the job ran);
- proof: the result's frame count, every frame's timestamp, and its audio packets against the input's.
One JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

from .common import REPO, machine, png_bytes

MIB = 2**20


def tree_rss(pid: int) -> int:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total


class PeakSampler:
    """The largest RSS of a process tree, sampled every `every_s` in a thread."""

    def __init__(self, pid: int, every_s: float = 0.1) -> None:
        self.pid, self.every_s, self.peak = pid, every_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.peak = max(self.peak, tree_rss(self.pid))

    def __enter__(self) -> PeakSampler:
        self.peak = tree_rss(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def server_pid() -> int:
    """The `bentoml serve` process this run started (the launcher's child: the parent of its workers)."""
    import psutil

    me = psutil.Process()
    return next(c.pid for c in me.children() if "bentoml" in " ".join(c.cmdline()))


def run_job(http, clip: Path, endpoint: str, fields: dict, pid: int) -> tuple[dict, bytes, float, int]:
    with PeakSampler(pid) as peak:
        started = time.perf_counter()
        r = http.post(endpoint, files={"video": (clip.name, clip.read_bytes(), "video/mp4")}, data=fields)
        r.raise_for_status()
        job = r.json()
        while job["status"] in ("queued", "running"):
            job = http.get(f"/jobs/{job['id']}", headers={"Prefer": "wait=30"}).json()
        wall = time.perf_counter() - started
    if job["status"] != "succeeded":
        raise SystemExit(f"the job {job['status']}: {job['error']}")
    return job, http.get(job["result_url"]).content, wall, peak.peak


def run_sync(http, uploads: list[bytes], endpoint: str, fields: dict) -> float:
    started = time.perf_counter()
    for data in uploads:
        http.post(endpoint, files={"image": ("f.png", data, "image/png")}, data=fields).raise_for_status()
    return len(uploads) / (time.perf_counter() - started)


def run(args: argparse.Namespace) -> dict:
    import httpx

    from testkit.launcher import running_server
    from testkit.media import make_video, read_audio_packets, read_frames

    width, height = map(int, args.size.split("x"))
    frames_n = args.frames or round(args.seconds * args.fps)
    endpoint, fields = f"/{args.op}", {"model": args.model}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clip, out = tmp / "clip.mp4", tmp / "out.mp4"
        make_video(clip, frames=frames_n, width=width, height=height, fps=args.fps, audio="aac")
        frames_in = read_frames(clip)
        step = max(1, len(frames_in) // max(1, args.sync_frames))
        uploads = [png_bytes(px) for _, px in frames_in[::step][: args.sync_frames]]
        with running_server(REPO / "models", tmp) as (base, _):
            pid = server_pid()
            with httpx.Client(base_url=base, timeout=600) as http:
                http.post(endpoint, files={"image": ("w.png", uploads[0])}, data=fields)  # warm the session
                idle_rss = tree_rss(pid)
                card = next(m for m in http.get("/models").json()["models"] if m.get("name") == args.model)
                runs_on = {k: card.get(k) for k in ("backend", "device", "precision")}
                rounds = []
                for _ in range(args.rounds):
                    job, body, wall, peak = run_job(http, clip, endpoint, fields, pid)
                    rounds.append((wall, peak, run_sync(http, uploads, endpoint, fields)))
        out.write_bytes(body)
        frames_out = read_frames(out)
        same_stamps = [t for t, _ in frames_in] == [t for t, _ in frames_out]
        same_audio = read_audio_packets(clip) == read_audio_packets(out)
    ratios = sorted(frames_n / wall / sync_fps for wall, _, sync_fps in rounds)
    return {"op": args.op, "model": args.model, "runs_on": runs_on, "input": f"{width}x{height}", "fps_in": args.fps, "frames": frames_n,
            "job_wall_s": [round(wall, 2) for wall, _, _ in rounds],
            "job_fps": [round(frames_n / wall, 3) for wall, _, _ in rounds], "sync_frames": len(uploads),
            "sync_fps": [round(fps, 3) for _, _, fps in rounds], "job_vs_sync": [round(r, 3) for r in ratios],
            "job_vs_sync_median": round(ratios[len(ratios) // 2], 3), "server_rss_idle_mib": round(idle_rss / MIB),
            "server_rss_peak_mib": round(max(peak for _, peak, _ in rounds) / MIB),
            "frames_out": len(frames_out), "output": f"{frames_out[0][1].shape[1]}x{frames_out[0][1].shape[0]}",
            "timestamps_equal": same_stamps, "audio_packets_equal": same_audio, "media": job["media"],
            "machine": {k: v for k, v in machine().items() if k in ("cpu", "loadavg_start", "git_commit")}}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.video_http", description=__doc__.splitlines()[0])
    p.add_argument("--op", choices=["upscale", "translate"], default="translate")
    p.add_argument("--model", default="colorize")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--frames", type=int, default=0, help="overrides --seconds (a short check)")
    p.add_argument("--size", default="640x360")
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--sync-frames", type=int, default=30, help="frames sent one by one to the sync API [30]")
    p.add_argument("--rounds", type=int, default=1, help="job, then sync frames, this many times [1]")
    print(json.dumps(run(p.parse_args(argv)), indent=1))


if __name__ == "__main__":
    main()
