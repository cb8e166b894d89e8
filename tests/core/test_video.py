"""core/video.py and core/transcode.py on small real videos made here with PyAV (testkit/media.py)."""

from __future__ import annotations

import gc
from fractions import Fraction

import av
import numpy as np
import pytest

from core.imaging import ImageError, ImageTooLarge
from core.transcode import transform_video
from core.video import NotAVideo, VideoError, VideoLimits, VideoTooLarge, probe
from testkit.media import make_audio_only, make_video, psnr, read_audio_packets, read_frames

MIN_PSNR_DB = 28.0  # 4:2:0 chroma on 64x48 frames with sharp colour edges: 30-34 dB; a neighbour frame: 17


def identity(pixels: np.ndarray) -> np.ndarray:
    return pixels


def nearest_x2(pixels: np.ndarray) -> np.ndarray:
    return pixels.repeat(2, axis=0).repeat(2, axis=1)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    base = tmp_path_factory.mktemp("videos")
    made = {}
    for name, kwargs in {"cfr.mp4": dict(), "vfr.mp4": dict(vfr=True),
                         "vfr.mkv": dict(fmt="matroska", vfr=True), "cfr.mov": dict(fmt="mov"),
                         "odd.mp4": dict(width=63, height=47, codec="libx264rgb"),
                         "vp9.webm": dict(fmt="webm", codec="libvpx-vp9", audio="libopus")}.items():
        if name == "odd.mp4":  # 4:2:0 H.264 cannot hold an odd size: VP9 in Matroska can
            name, kwargs = "odd.mkv", dict(fmt="matroska", width=63, height=47, codec="libvpx-vp9")
        made[name] = (base / name, make_video(base / name, **kwargs))
    return made


@pytest.mark.parametrize("name, vfr", [("cfr.mp4", False), ("vfr.mp4", True), ("vfr.mkv", True),
                                       ("cfr.mov", False), ("vp9.webm", False)])
def test_probe_counts_frames_and_tells_vfr(videos, name, vfr):
    path, stamps = videos[name]
    info = probe(path)
    assert (info.frames, info.width, info.height, info.vfr) == (len(stamps), 64, 48, vfr)
    assert len(info.audio) == 1 and info.audio[0].codec in ("aac", "opus")
    assert info.duration_s == pytest.approx(float(stamps[-1]) + (0.1 if vfr else 1 / 15), abs=0.05)


def check_same_video(src, dst, fn, stamps, *, audio_copied: bool, tick=Fraction(0)):
    before, after = read_frames(src), read_frames(dst)
    assert len(after) == len(before) == len(stamps)
    assert [t for t, _ in before] == stamps
    for i, ((t_in, x), (t_out, y)) in enumerate(zip(before, after)):
        assert abs(t_out - t_in) <= tick
        want = fn(x)
        assert y.shape == want.shape
        assert psnr(y, want) > MIN_PSNR_DB
        if i:  # and the frame is not its neighbour
            assert psnr(y, fn(before[i - 1][1])) < MIN_PSNR_DB
    if audio_copied:
        assert read_audio_packets(dst) == read_audio_packets(src)


def test_av1_and_hevc_decoders_are_there(tmp_path):
    src = tmp_path / "av1.mkv"
    stamps = make_video(src, fmt="matroska", codec="libsvtav1", width=64, height=64, frames=8, audio=None)
    assert probe(src).codec == "av1"
    assert transform_video(src, tmp_path / "out.mp4", identity).frames == len(stamps)
    import av as pyav
    assert pyav.codec.Codec("hevc", "r").canonical_name == "hevc"  # no H.265 encoder in the wheel to make one


@pytest.mark.parametrize("name", ["cfr.mp4", "vfr.mp4", "vfr.mkv", "cfr.mov"])
@pytest.mark.parametrize("fn", [identity, nearest_x2])
def test_mp4_keeps_every_frame_timestamp_and_audio_packet(videos, tmp_path, name, fn):
    src, stamps = videos[name]
    seen = []
    report = transform_video(src, tmp_path / "out.mp4", fn, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(i + 1, len(stamps)) for i in range(len(stamps))]
    assert report.frames == len(stamps) and report.media_type == "video/mp4" and not report.padded
    assert [(a.codec_in, a.copied) for a in report.audio] == [("aac", True)]
    check_same_video(src, tmp_path / "out.mp4", fn, stamps, audio_copied=True)
    assert list(tmp_path.iterdir()) == [tmp_path / "out.mp4"]  # no temp file left


def test_webm_output_is_vp9_with_audio_reencoded_to_opus(videos, tmp_path):
    src, stamps = videos["vfr.mp4"]
    report = transform_video(src, tmp_path / "out.webm", nearest_x2, fmt="webm")
    assert [(a.codec_in, a.codec_out, a.copied) for a in report.audio] == [("aac", "opus", False)]
    info = probe(tmp_path / "out.webm")
    assert (info.container, info.codec, info.width, info.height, info.vfr) == ("matroska", "vp9", 128, 96, True)
    check_same_video(src, tmp_path / "out.webm", nearest_x2, stamps, audio_copied=False, tick=Fraction(1, 1000))
    (audio,) = read_audio_packets(tmp_path / "out.webm")
    assert float(audio[-1][0]) == pytest.approx(float(stamps[-1]), abs=0.15)


def test_opus_audio_is_copied_into_webm(videos, tmp_path):
    src, stamps = videos["vp9.webm"]
    report = transform_video(src, tmp_path / "out.webm", identity, fmt="webm")
    assert [a.copied for a in report.audio] == [True]
    check_same_video(src, tmp_path / "out.webm", identity, stamps, audio_copied=True)


def test_odd_size_is_padded_for_h264_and_kept_for_vp9(videos, tmp_path):
    src, stamps = videos["odd.mkv"]
    report = transform_video(src, tmp_path / "out.mp4", identity)
    assert (report.width, report.height, report.padded) == (64, 48, True)
    pad = lambda x: np.pad(x, ((0, 1), (0, 1), (0, 0)), mode="edge")  # noqa: E731
    check_same_video(src, tmp_path / "out.mp4", pad, stamps, audio_copied=True)
    report = transform_video(src, tmp_path / "out.webm", identity, fmt="webm")
    assert (report.width, report.height, report.padded) == (63, 47, False)
    check_same_video(src, tmp_path / "out.webm", identity, stamps, audio_copied=False)


def test_gray_output_is_written_as_rgb(videos, tmp_path):
    src, stamps = videos["cfr.mp4"]
    gray = lambda x: x[..., :1]  # noqa: E731
    transform_video(src, tmp_path / "out.mp4", gray)
    check_same_video(src, tmp_path / "out.mp4", lambda x: np.repeat(x[..., :1], 3, axis=2), stamps,
                     audio_copied=True)


def test_a_rotated_video_is_turned_upright_before_fn(tmp_path):
    src = tmp_path / "phone.mp4"
    stamps = make_video(src, rotation=-90, audio=None)  # -90: shown turned a quarter clockwise
    shapes = []
    report = transform_video(src, tmp_path / "out.mp4", lambda x: shapes.append(x.shape) or x)
    assert set(shapes) == {(64, 48, 3)} and (report.width, report.height) == (48, 64)
    turned = lambda x: np.rot90(x, -1)  # noqa: E731
    check_same_video(src, tmp_path / "out.mp4", turned, stamps, audio_copied=False)
    with av.open(str(tmp_path / "out.mp4")) as out:
        assert next(out.decode(video=0)).rotation == 0


def test_check_stops_the_run_and_leaves_nothing(videos, tmp_path):
    src, _ = videos["cfr.mp4"]
    (tmp_path / "out.mp4").write_bytes(b"the previous result")

    class Stop(Exception):
        pass

    def check(done, total):
        if done == 5:
            raise Stop
    with pytest.raises(Stop):
        transform_video(src, tmp_path / "out.mp4", identity, check=check)
    assert list(tmp_path.iterdir()) == [tmp_path / "out.mp4"]
    assert (tmp_path / "out.mp4").read_bytes() == b"the previous result"


# ------------------------------------------------------------------ refusals


def test_not_a_video_is_415(tmp_path, videos):
    png = tmp_path / "x.png"
    from PIL import Image
    Image.new("RGB", (8, 8)).save(png)
    text = tmp_path / "x.mp4"
    text.write_text("hello, this is not a video at all")
    audio = tmp_path / "a.mp4"
    make_audio_only(audio)
    avi = tmp_path / "x.avi"
    make_video(avi, fmt="avi", audio=None)
    for path, words in [(png, "not a video"), (text, "not a video"), (audio, "no video stream"),
                        (avi, "not a video")]:
        with pytest.raises(NotAVideo, match=words) as caught:
            probe(path)
        assert caught.value.status == 415 and isinstance(caught.value, ImageError)


def test_every_decoded_frame_is_held_to_the_pixel_limit(videos, tmp_path):
    src, _ = videos["cfr.mp4"]
    with pytest.raises(VideoTooLarge, match="frame 0 is 64x48"):
        transform_video(src, tmp_path / "out.mp4", identity, info=probe(src), limits=VideoLimits(max_pixels=100))
    assert list(tmp_path.iterdir()) == []


def test_the_service_answers_each_refusal_with_its_status():
    from core.archive import ArchiveError, ArchiveTooLarge, MemberError
    from service.imaging import as_api_error

    for exc, status in [(NotAVideo("x"), 415), (VideoError("x"), 400), (VideoTooLarge("x"), 413),
                        (ArchiveError("x"), 400), (ArchiveTooLarge("x"), 413), (MemberError("x"), 400),
                        (ImageTooLarge("x"), 413), (ImageError("x"), 400)]:
        assert as_api_error(exc).status == status


def test_limits_are_413(videos):
    src, _ = videos["cfr.mp4"]
    for limits, words in [(VideoLimits(max_seconds=1.0), "the limit is 1 s"),
                          (VideoLimits(max_frames=20), "more than 20 frames"),
                          (VideoLimits(max_pixels=64 * 48 - 1), "pixels")]:
        with pytest.raises(VideoTooLarge, match=words) as caught:
            probe(src, limits)
        assert caught.value.status == 413 and isinstance(caught.value, ImageTooLarge)
    assert probe(src, VideoLimits(max_seconds=2.5, max_frames=30, max_pixels=64 * 48)).frames == 30


@pytest.mark.parametrize("fmt", ["mp4", "matroska"])
def test_truncated_video_is_refused_at_probe(tmp_path, fmt):
    src = tmp_path / "full"
    make_video(src, fmt=fmt, faststart=fmt == "mp4", frames=30)
    data = src.read_bytes()
    cut = tmp_path / "cut"
    cut.write_bytes(data[: len(data) * 6 // 10])
    with pytest.raises(VideoError, match="truncated") as caught:
        probe(cut)
    assert caught.value.status == 400 and 5 < caught.value.frame < 30


def test_moov_at_the_end_cut_off_is_refused(videos, tmp_path):
    src, _ = videos["cfr.mp4"]
    data = src.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoError, match="corrupt or truncated"):
        probe(tmp_path / "cut.mp4")


def test_a_first_frame_that_does_not_decode_is_refused_at_probe(tmp_path):
    src = tmp_path / "src.mkv"
    make_video(src, fmt="matroska", frames=10, audio=None)
    data = bytearray(src.read_bytes())
    with av.open(str(src)) as container:
        first = next(p for p in container.demux(video=0) if p.size)
        start, size = first.pos, first.size
    data[start + 8: start + size] = bytes(size - 8)  # the key frame's slices zeroed, its box intact
    (tmp_path / "bad.mkv").write_bytes(bytes(data))
    with pytest.raises(VideoError, match="first frame") as caught:
        probe(tmp_path / "bad.mkv")
    assert caught.value.frame == 0


def test_corrupt_frames_fail_the_run_naming_the_frame_and_leave_nothing(tmp_path):
    src = tmp_path / "src.mp4"
    make_video(src, frames=30)
    data = bytearray(src.read_bytes())
    n = len(data)
    data[n // 3: n // 3 + 2000] = np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes()
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(bytes(data))
    info = probe(bad)  # the packets are all there: only decoding finds the damage
    with pytest.raises(VideoError, match=r"corrupt at frame \d+") as caught:
        transform_video(bad, tmp_path / "out.mp4", identity, info=info)
    assert 0 < caught.value.frame < 30
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.mp4", "src.mp4"]


def test_memory_does_not_grow_with_the_length_of_the_video(tmp_path):
    from bench.common import peak_rss_bytes, reset_peak_rss, rss_bytes

    growth = {}
    for frames in (10, 60):
        src = tmp_path / f"{frames}.mp4"
        make_video(src, frames=frames, width=160, height=120)
        gc.collect()
        base = rss_bytes()
        if not reset_peak_rss():
            pytest.skip("no /proc/self/clear_refs to reset the peak RSS")
        transform_video(src, tmp_path / "out.mp4", lambda x: x.repeat(4, 0).repeat(4, 1))
        growth[frames] = peak_rss_bytes() - base
    frame = 640 * 480 * 3
    # measured: ~30 output frames' worth either way (x264's threads and lookahead, the decoder's threads)
    assert growth[60] < growth[10] + 10 * frame, {k: round(v / frame, 1) for k, v in growth.items()}


def test_audio_the_container_cannot_hold_is_reencoded_to_aac(tmp_path):
    src = tmp_path / "pcm.mov"
    stamps = make_video(src, fmt="mov", audio="pcm_s16le")
    report = transform_video(src, tmp_path / "out.mp4", identity)
    assert [(a.codec_in, a.codec_out, a.copied) for a in report.audio] == [("pcm_s16le", "aac", False)]
    check_same_video(src, tmp_path / "out.mp4", identity, stamps, audio_copied=False)
    (audio,) = read_audio_packets(tmp_path / "out.mp4")
    assert float(audio[-1][0]) == pytest.approx(float(stamps[-1]), abs=0.1)
    assert probe(tmp_path / "out.mp4").audio[0].sample_rate == 48000
