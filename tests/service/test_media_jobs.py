"""Video and batch jobs (issue 24) and the `ganforge` client, over real HTTP against one real `bentoml serve`.

The server runs the fixture models plus `slow-x4` (tests/service/test_deadlines.py: small tiles, so the
client can be killed while a job runs), with small video and archive limits. The videos are made here
(testkit/media.py: H.264 + AAC, constant and variable frame rate); each output frame is compared with the
sync API's answer on the same input frame sent as a PNG.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from service_fixtures import REPO, encode, running_server, synthetic_photo, write_fixture_models
from test_deadlines import write_slow_model
from testkit.media import make_audio_only, make_video, psnr, read_audio_packets, read_frames

pytestmark = pytest.mark.slow

MAX_FRAMES = 30  # GANFORGE_MAX_VIDEO_FRAMES of this server
MAX_VIDEO_S = 3  # GANFORGE_MAX_VIDEO_S
MAX_ENTRIES = 12  # GANFORGE_ARCHIVE_MAX_ENTRIES
MAX_OUTPUT_PIXELS = 2_000_000  # GANFORGE_MAX_OUTPUT_PIXELS: a 400x320 frame's x4 output is over it
MIN_PSNR_DB = 30.0  # H.264 CRF 18 / VP9 CRF 32 against the sync PNG; a neighbour frame scores under 20
TERMINAL = ("succeeded", "failed", "canceled")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("media_jobs")
    models = tmp / "models"
    write_fixture_models(models)
    write_slow_model(models)
    env = {"GANFORGE_MAX_VIDEO_FRAMES": str(MAX_FRAMES), "GANFORGE_ARCHIVE_MAX_ENTRIES": str(MAX_ENTRIES),
           "GANFORGE_MAX_OUTPUT_PIXELS": str(MAX_OUTPUT_PIXELS), "GANFORGE_MAX_VIDEO_S": str(MAX_VIDEO_S),
           "GANFORGE_JOBS_DIR": str(tmp / "jobs")}
    with running_server(models, tmp, **env) as (base, _):
        with httpx.Client(base_url=base, timeout=60) as http:
            yield http, tmp / "jobs"


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    base = tmp_path_factory.mktemp("media_videos")
    made = {}
    for name, kwargs in {"cfr.mp4": dict(frames=10, fps=15), "vfr.mp4": dict(frames=9, vfr=True)}.items():
        made[name] = (base / name, make_video(base / name, width=64, height=48, audio="aac", **kwargs))
    return made


def wait(http, job_id: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = http.get(f"/jobs/{job_id}", headers={"Prefer": "wait=20"}).json()
        if job["status"] in TERMINAL:
            return job
        assert time.monotonic() < deadline, f"job never finished: {job}"


def submit_file(http, endpoint: str, field: str, name: str, data: bytes, **fields) -> httpx.Response:
    return http.post(endpoint, files={field: (name, data)}, data=fields)


def png(pixels: np.ndarray) -> bytes:
    return encode(Image.fromarray(pixels))


def frames_as_tagged(path: Path) -> list[np.ndarray]:
    """Every frame in RGB, read with the colour matrix its stream is tagged with (the output says BT.709)."""
    import av

    from core.transcode import rgb_pixels

    with av.open(str(path)) as container:
        return [rgb_pixels(frame) for frame in container.decode(container.streams.video[0])]


def through_420(pixels: np.ndarray) -> np.ndarray:
    """What 4:2:0 BT.709 itself (no compression) leaves of an RGB image: the reference for 'within codec loss'
    (the fixture models' outputs have colour detail finer than the half-size chroma planes keep)."""
    import av

    from core.transcode import BT709, LIMITED, rgb_pixels

    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24").reformat(
        format="yuv420p", dst_colorspace=BT709, dst_color_range=LIMITED)
    frame.colorspace, frame.color_range = BT709, LIMITED
    return rgb_pixels(frame)


def decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def run_video(http, path: Path, endpoint: str, **fields) -> tuple[dict, bytes]:
    r = submit_file(http, endpoint, "video", path.name, path.read_bytes(), **fields)  # no Prefer: a job anyway
    assert r.status_code == 202 and r.headers["location"] == f"/jobs/{r.json()['id']}", r.text
    assert "preference-applied" not in r.headers  # none was asked for
    assert r.json()["unit"] == "frames"
    job = wait(http, r.json()["id"])
    assert job["status"] == "succeeded", job
    result = http.get(job["result_url"])
    assert result.status_code == 200
    return job, result


@pytest.mark.parametrize("name, endpoint, fields", [
    ("cfr.mp4", "/upscale", {"model": "srresnet-x4"}),
    ("vfr.mp4", "/upscale", {"model": "srresnet-x4", "scale": "2"}),
    ("vfr.mp4", "/translate", {"model": "edges2color"}),
])
def test_video_job_keeps_frames_timestamps_audio_and_matches_sync(server, videos, tmp_path, name, endpoint, fields):
    http, _ = server
    src, stamps = videos[name]
    job, result = run_video(http, src, endpoint, **fields)
    assert result.headers["content-type"] == "video/mp4" and result.headers["x-model"] == fields["model"]
    out = tmp_path / "out.mp4"
    out.write_bytes(result.content)
    before, after = read_frames(src), read_frames(out)
    assert len(after) == len(before) == len(stamps) == job["total"] == job["done"]
    assert [t for t, _ in after] == [t for t, _ in before] == stamps  # VFR kept, to the tick
    assert read_audio_packets(out) == read_audio_packets(src)  # copied packet for packet
    assert job["media"]["audio"] == [{"stream": 1, "codec_in": "aac", "codec_out": "aac", "handling": "copied"}]
    wants = []
    for i, (_, frame) in enumerate(before):
        sync = http.post(endpoint, files={"image": ("f.png", png(frame))}, data=fields)
        assert sync.status_code == 200, sync.text
        wants.append(through_420(decoded(sync.content)))
        assert after[i][1].shape == wants[i].shape, (i, after[i][1].shape, wants[i].shape)
    got = frames_as_tagged(out)
    scores = [psnr(frame, want) for frame, want in zip(got, wants)]
    assert min(scores) > MIN_PSNR_DB, scores
    neighbours = [psnr(frame, want) for frame, want in zip(got[1:], wants)]  # frame i+1 against sync i
    assert max(neighbours) < min(scores), (neighbours, scores)


def test_webm_out_reencodes_the_audio_and_says_so(server, videos, tmp_path):
    http, _ = server
    src, stamps = videos["cfr.mp4"]
    job, result = run_video(http, src, "/translate", model="shoe2boot", direction="b2a", format="webm")
    assert result.headers["content-type"] == "video/webm"
    assert job["media"]["audio"][0]["handling"] == "re-encoded to Opus" and job["media"]["format"] == "webm"
    out = tmp_path / "out.webm"
    out.write_bytes(result.content)
    assert [t for t, _ in read_frames(out)] == stamps
    assert len(read_audio_packets(out)[0]) > 0


def test_cancel_stops_a_video_job_within_a_tile_and_keeps_nothing(server, tmp_path):
    http, jobs_dir = server
    # slow-x4: dozens of 48 px tiles a frame, and 24 frames: still running at the cancel on a quiet CPU too
    make_video(tmp_path / "slow.mp4", frames=24, width=400, height=240)
    r = submit_file(http, "/upscale", "video", "slow.mp4", (tmp_path / "slow.mp4").read_bytes(), model="slow-x4")
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    deadline = time.monotonic() + 60
    while (job := http.get(f"/jobs/{job_id}").json())["done"] < 1:  # progress: frames done of frames
        assert time.monotonic() < deadline and job["status"] in ("queued", "running"), job
        time.sleep(0.02)
    assert job["total"] == 24 and job["unit"] == "frames"
    assert http.post(f"/jobs/{job_id}/cancel").json()["status"] == "canceled"
    runs = http.get("/models").json()["admission"]["graph_runs"]
    time.sleep(1.0)
    assert http.get("/models").json()["admission"]["graph_runs"] - runs <= 1, "the job ran on after its cancel"
    assert http.get(f"/jobs/{job_id}").json()["done"] < 24
    no_leftovers(jobs_dir, job_id)


def no_leftovers(jobs_dir: Path, job_id: str | None = None) -> None:
    results = jobs_dir / "results"
    assert not [p for p in results.iterdir() if p.name.startswith(".")], "a temp file was left behind"
    if job_id is not None:
        deadline = time.monotonic() + 5  # the runner drops the inputs just after it recorded the end
        while (jobs_dir / "inputs" / job_id).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not (results / job_id).exists() and not (jobs_dir / "inputs" / job_id).exists()


def test_video_refusals(server, videos, tmp_path):
    http, jobs_dir = server
    src, _ = videos["cfr.mp4"]
    data = src.read_bytes()
    cases = {
        "not a video": (png(synthetic_photo(32, 32)), 415, "not a video"),
        "corrupt": (data[:32] + np.random.default_rng(1).bytes(len(data) - 32), 400, "corrupt"),
        "truncated": (data[: len(data) * 2 // 3], 400, "truncated"),
        "unknown model": (data, 404, "model"),
        "bad format": (data, 422, "mp4 or webm"),
        "bad direction": (data, 422, "direction"),
    }
    make_video(tmp_path / "fast.mp4", frames=10, width=64, height=48, faststart=True)  # the index first
    fast = (tmp_path / "fast.mp4").read_bytes()
    cases["truncated, index first"] = (fast[: len(fast) * 2 // 3], 400, "truncated")
    middle = len(fast) // 2
    cases["damaged inside"] = (fast[:middle] + np.random.default_rng(0).bytes(len(fast) // 4) + fast[middle + len(fast) // 4:], 400, "")
    make_audio_only(tmp_path / "tone.mp4")
    cases["audio only"] = ((tmp_path / "tone.mp4").read_bytes(), 415, "no video stream")
    make_video(tmp_path / "long.mp4", frames=MAX_FRAMES + 1, width=32, height=32)
    cases["too many frames"] = ((tmp_path / "long.mp4").read_bytes(), 413, "frames")
    make_video(tmp_path / "slow-motion.mp4", frames=8, width=32, height=32, fps=2)  # 4 s
    cases["too long"] = ((tmp_path / "slow-motion.mp4").read_bytes(), 413, "lasts")
    make_video(tmp_path / "wide.mp4", frames=2, width=400, height=320)
    cases["too many pixels out"] = ((tmp_path / "wide.mp4").read_bytes(), 413, "x4 output")
    for what, (body, status, word) in cases.items():
        endpoint = "/translate" if what == "bad direction" else "/upscale"
        fields = {"model": "nope"} if what == "unknown model" else {"format": "png"} if what == "bad format" \
            else {"model": "edges2color", "direction": "sideways"} if what == "bad direction" else {}
        fields = {"model": "srresnet-x4", **fields}
        r = submit_file(http, endpoint, "video", "v.mp4", body, **fields)
        if r.status_code == 202:  # damage only a full decode finds: the job fails, naming the frame
            assert what in ("corrupt", "damaged inside"), (what, r.json())
            job = wait(http, r.json()["id"])
            assert job["status"] == "failed" and job["error"]["status"] == 400 and "frame" in job["error"]["error"]
            no_leftovers(jobs_dir, job["id"])
            print(f"{what}: a failed job: {job['error']}")
            continue
        assert r.status_code == status and r.json()["status"] == status, (what, r.status_code, r.text)
        assert word in r.json()["error"], (what, r.json())
        print(f"{what}: {r.status_code} at submit: {r.json()['error']}")
    no_leftovers(jobs_dir)
    assert http.post("/generate", files={"video": ("v.mp4", data)}).status_code == 415  # JSON only
    two = http.post("/upscale", files=[("video", ("a.mp4", data)), ("image", ("a.png", b"x"))])
    assert two.status_code == 400 and "exactly one file" in two.json()["error"]


def make_zip(members: dict[str, bytes], symlink: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def test_batch_job_outputs_equal_the_sync_answers_and_one_bad_file_does_not_fail_it(server):
    http, _ = server
    good = {"a.png": png(synthetic_photo(40, 30, 1)), "holiday/b.jpg": encode(Image.fromarray(
        synthetic_photo(24, 24, 2)), "JPEG")}
    members = {**good, "holiday/broken.png": b"\x89PNG\r\n\x1a\n" + b"garbage" * 10, "notes/empty.png": b""}
    r = submit_file(http, "/upscale", "archive", "photos.zip", make_zip(members), model="srresnet-x4",
                    format="webp")
    assert r.status_code == 202 and r.json()["unit"] == "images", r.text
    job = wait(http, r.json()["id"])
    assert job["status"] == "succeeded" and (job["done"], job["total"]) == (4, 4), job
    assert job["media"]["ok"] == 2 and job["media"]["failed"] == 2
    result = http.get(job["result_url"])
    assert result.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(result.content)) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        files = {f["name"]: f for f in manifest["files"]}
        for name, data in good.items():
            assert files[name]["status"] == "ok" and files[name]["output"] == name.rsplit(".", 1)[0] + ".webp"
            sync = http.post("/upscale", files={"image": (name, data)}, data={"model": "srresnet-x4", "format": "webp"})
            assert zf.read(files[name]["output"]) == sync.content
        for name in ("holiday/broken.png", "notes/empty.png"):
            sync = http.post("/upscale", files={"image": (name, members[name])}, data={"model": "srresnet-x4"})
            assert files[name]["status"] == "failed" and files[name]["error"] == sync.json(), files[name]
        assert sorted(zf.namelist()) == ["a.webp", "holiday/b.webp", "manifest.json"]


def test_hostile_archives_are_refused_at_submit(server):
    http, jobs_dir = server
    image = png(synthetic_photo(8, 8))
    cases = {
        "traversal": (make_zip({"ok.png": image, "../evil.png": image}), 400, "refused"),
        "absolute": (make_zip({"/etc/evil.png": image}), 400, "absolute"),
        "symlink": (make_zip({"ok.png": image}, symlink="link.png"), 400, "link"),
        "too many": (make_zip({f"{i}.png": image for i in range(MAX_ENTRIES + 1)}), 413, "entries"),
        "bomb": (make_zip({"bomb.png": b"\0" * (8 << 20)}), 413, "zip bomb"),
        "not a zip": (image, 400, "zip"),
    }
    for what, (body, status, word) in cases.items():
        r = submit_file(http, "/upscale", "archive", "x.zip", body, model="srresnet-x4")
        assert r.status_code == status and word in r.json()["error"], (what, r.status_code, r.text)
    no_leftovers(jobs_dir)


# ---------------------------------------------------------------- the ganforge client, end to end


def client_cmd(base: str, src: Path, dst: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "client", "upscale", str(src), str(dst), "--url", base, "--poll", "0.05",
            "--no-progress", *extra]


def test_cli_killed_in_the_middle_of_a_folder_then_resumed(server, videos, tmp_path):
    http, _ = server
    base = str(http.base_url).rstrip("/")
    src, out = tmp_path / "in", tmp_path / "out"
    names = [f"set{i % 2}/img{i}.png" for i in range(6)]
    for i, name in enumerate(names):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(png(synthetic_photo(90, 70, 10 + i)))
    (src / "clips").mkdir()
    (src / "clips" / "clip.mp4").write_bytes(videos["cfr.mp4"][0].read_bytes())
    cmd = client_cmd(base, src, out, "--model", "slow-x4", "--concurrency", "2")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen(cmd, env=env, cwd=REPO, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not list(out.rglob("*.png")):
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    done_before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")}
    assert 1 <= len(done_before) < 7, sorted(done_before)
    second = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert second.returncode == 0, second.stderr
    assert f"{7 - len(done_before)} done, {len(done_before)} already there, 0 failed" in second.stderr
    for path, mtime in done_before.items():
        assert path.stat().st_mtime_ns == mtime  # finished files were skipped, not redone
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temp file left
    for name in names[:2]:
        sync = http.post("/upscale", files={"image": ("a.png", (src / name).read_bytes())}, data={"model": "slow-x4"})
        assert (out / name).read_bytes() == sync.content
    frames = read_frames(out / "clips" / "clip.mp4")
    assert [t for t, _ in frames] == videos["cfr.mp4"][1] and frames[0][1].shape == (192, 256, 3)
    # one file and one archive on their own
    single = subprocess.run(client_cmd(base, src / "set0" / "img0.png", tmp_path / "one.webp", "--format", "webp",
                                       "--model", "srresnet-x4"), env=env, cwd=REPO, capture_output=True, text=True)
    assert single.returncode == 0 and (tmp_path / "one.webp").exists(), single.stderr
    (tmp_path / "photos.zip").write_bytes(make_zip({name: (src / name).read_bytes() for name in names[:2]}))
    zipped = subprocess.run(client_cmd(base, tmp_path / "photos.zip", tmp_path / "big.zip", "--model", "srresnet-x4"),
                            env=env, cwd=REPO, capture_output=True, text=True)
    assert zipped.returncode == 0, zipped.stderr
    with zipfile.ZipFile(tmp_path / "big.zip") as zf:
        assert sorted(zf.namelist()) == ["manifest.json", *names[:2]]
