"""core/archive.py: untrusted zips refused or read member by member; the result zip and its manifest."""

from __future__ import annotations

import json
import stat
import zipfile

import numpy as np
import pytest

from core.archive import (ArchiveError, ArchiveLimits, ArchiveTooLarge, MemberError, ZipWriter, list_members,
                          open_archive, output_name)
from core.batch import transform_archive
from core.imaging import ImageError, ImageTooLarge, decode_image, encode_image

PNG = encode_image(np.full((4, 6, 3), 90, np.uint8), None, "png", 90)


def write_zip(path, entries, compression=zipfile.ZIP_DEFLATED):
    """entries: (name, bytes) or a ZipInfo with its bytes."""
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return path


def test_members_in_folders_are_read_one_by_one(tmp_path):
    path = write_zip(tmp_path / "in.zip", [("top.png", PNG), ("a/b/deep.png", PNG), ("a/", b""),
                                           ("__MACOSX/a/._deep.png", b"fork")])
    assert [m.name for m in list_members(path)] == ["top.png", "a/b/deep.png"]
    with open_archive(path) as archive:
        for member in archive.members:
            assert decode_image(archive.read(member), 10_000).pixels.shape == (4, 6, 3)


@pytest.mark.parametrize("name", ["../evil.png", "a/../../evil.png", "/etc/evil.png", "C:/evil.png",
                                  "c:evil.png", "a\\..\\evil.png", "a//b.png", "./a.png", "a/./b.png"])
def test_a_name_that_could_escape_refuses_the_archive(tmp_path, name):
    path = tmp_path / "in.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("fine.png", PNG)
        raw = zipfile.ZipInfo("placeholder")
        raw.filename = name  # ZipInfo() would clean the name; a hostile zip does not
        zf.writestr(raw, PNG)
    with pytest.raises(ArchiveError, match="refused") as caught:
        list_members(path)
    assert caught.value.status == 400 and isinstance(caught.value, ImageError)


def test_symlink_entries_refuse_the_archive(tmp_path):
    link = zipfile.ZipInfo("photos/link.png")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    path = tmp_path / "in.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("photos/ok.png", PNG)
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(ArchiveError, match="symbolic link"):
        list_members(path)


def test_a_bomb_is_413(tmp_path):
    path = write_zip(tmp_path / "bomb.zip", [("zeros.png", bytes(8 * 1024 * 1024))])
    with pytest.raises(ArchiveTooLarge, match="expands .* times") as caught:
        list_members(path)
    assert caught.value.status == 413 and isinstance(caught.value, ImageTooLarge)
    small = write_zip(tmp_path / "small.zip", [("zeros.bmp", bytes(512 * 1024))])  # too small to matter
    assert len(list_members(small)) == 1


def test_size_and_count_limits_are_413(tmp_path):
    path = write_zip(tmp_path / "in.zip", [(f"{i}.png", PNG) for i in range(5)], zipfile.ZIP_STORED)
    for limits, words in [(ArchiveLimits(max_entries=4), "5 entries"),
                          (ArchiveLimits(max_total_bytes=4 * len(PNG)), "expands to more than"),
                          (ArchiveLimits(max_member_bytes=len(PNG) - 1), "the limit is")]:
        with pytest.raises(ArchiveTooLarge, match=words):
            list_members(path, limits)
    assert len(list_members(path, ArchiveLimits(max_entries=5, max_total_bytes=5 * len(PNG)))) == 5


def test_duplicates_empty_and_non_zips_are_refused(tmp_path):
    dup = tmp_path / "dup.zip"
    with zipfile.ZipFile(dup, "w") as zf:
        zf.writestr("a/Photo.png", PNG)
        zf.writestr("a/photo.PNG", PNG)
    with pytest.raises(ArchiveError, match="twice"):
        list_members(dup)
    with pytest.raises(ArchiveError, match="no files"):
        list_members(write_zip(tmp_path / "empty.zip", [("dir/", b"")]))
    (tmp_path / "x.zip").write_bytes(PNG)
    with pytest.raises(ArchiveError, match="not a valid zip"):
        list_members(tmp_path / "x.zip")


def test_a_corrupt_member_fails_alone(tmp_path):
    path = write_zip(tmp_path / "in.zip", [("good.png", PNG), ("bad.png", PNG * 50), ("also-good.png", PNG)])
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("bad.png")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data[start + 10: start + 40] = bytes(30)  # damage the deflate stream inside the member
    path.write_bytes(bytes(data))
    outcomes = {}
    with open_archive(path) as archive:
        for member in archive.members:
            try:
                outcomes[member.name] = decode_image(archive.read(member), 10_000).pixels.shape
            except MemberError as exc:
                outcomes[member.name] = exc.status
    assert outcomes == {"good.png": (4, 6, 3), "bad.png": 400, "also-good.png": (4, 6, 3)}


def test_output_names_follow_the_format_and_never_collide():
    assert output_name("a/b.jpeg", "png") == "a/b.png"
    assert output_name("noext", "webp") == "noext.webp"
    assert output_name("a/b.png", "jpeg", {"a/b.jpg"}) == "a/b.png.jpg"


def test_zip_writer_writes_outputs_and_manifest_atomically(tmp_path):
    dst = tmp_path / "result.zip"
    with ZipWriter(dst, "png", extra={"model": "m"}) as writer:
        writer.add("a/b.jpg", PNG)
        writer.add("a/b.png", PNG)
        writer.fail("c/bad.png", "could not decode the image", 400)
        assert not dst.exists()
    with zipfile.ZipFile(dst) as zf:
        assert zf.namelist() == ["a/b.png", "a/b.png.png", "manifest.json"]
        manifest = json.loads(zf.read("manifest.json"))
    assert manifest["model"] == "m" and (manifest["ok"], manifest["failed"]) == (2, 1)
    assert manifest["files"][2] == {"name": "c/bad.png", "output": None, "status": "failed",
                                    "error": {"error": "could not decode the image", "status": 400}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.zip"]


def test_zip_writer_leaves_nothing_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with ZipWriter(tmp_path / "result.zip", "png") as writer:
            writer.add("a.png", PNG)
            raise RuntimeError("stopped")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ the batch loop


def upscale_x2(name: str, data: bytes) -> bytes:
    pixels = decode_image(data, 10_000).pixels
    return encode_image(pixels.repeat(2, 0).repeat(2, 1), None, "webp", 90)


def test_a_batch_goes_on_past_bad_files_and_writes_the_manifest(tmp_path):
    src = write_zip(tmp_path / "in.zip", [("a/one.png", PNG), ("a/notes.txt", b"not an image"),
                                          ("two.jpg", PNG), ("huge.png", encode_image(np.zeros((200, 200, 3),
                                                                                          np.uint8), None, "png", 90))])
    seen = []
    report = transform_archive(src, tmp_path / "out.zip", upscale_x2, fmt="webp", extra={"model": "x2"},
                               progress=lambda d, t: seen.append((d, t)))
    assert (report.total, report.ok, report.failed) == (4, 2, 2) and seen == [(i, 4) for i in range(1, 5)]
    with zipfile.ZipFile(tmp_path / "out.zip") as zf:
        assert zf.namelist() == ["a/one.webp", "two.webp", "manifest.json"]
        assert decode_image(zf.read("two.webp"), 10_000).pixels.shape == (8, 12, 3)
        manifest = json.loads(zf.read("manifest.json"))
    errors = {f["name"]: f.get("error") for f in manifest["files"]}
    assert errors["a/one.png"] is None and errors["a/notes.txt"]["status"] == 400
    assert errors["huge.png"]["status"] == 413 and "limit" in errors["huge.png"]["error"]
    assert manifest["model"] == "x2"


def test_the_services_own_client_errors_go_into_the_manifest(tmp_path):
    from service.errors import ApiError

    src = write_zip(tmp_path / "in.zip", [("a.png", PNG), ("b.png", PNG)])

    def refuse_b(name, data):
        if name == "b.png":
            raise ApiError(422, "scale must be 1..4")
        return data

    report = transform_archive(src, tmp_path / "out.zip", refuse_b, fmt="png")
    assert (report.ok, report.failed) == (1, 1)
    with zipfile.ZipFile(tmp_path / "out.zip") as zf:
        assert json.loads(zf.read("manifest.json"))["files"][1]["error"] == {"error": "scale must be 1..4",
                                                                              "status": 422}

    def overloaded(name, data):
        raise ApiError(503, "the model is unavailable")

    with pytest.raises(ApiError):
        transform_archive(src, tmp_path / "out2.zip", overloaded, fmt="png")
    assert not (tmp_path / "out2.zip").exists()


def test_a_stop_or_a_server_fault_fails_the_batch_and_leaves_nothing(tmp_path):
    src = write_zip(tmp_path / "in.zip", [(f"{i}.png", PNG) for i in range(3)])

    def check(done, total):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        transform_archive(src, tmp_path / "out.zip", upscale_x2, fmt="png", check=check)

    def broken(name, data):
        raise RuntimeError("the model failed")

    with pytest.raises(RuntimeError):
        transform_archive(src, tmp_path / "out.zip", broken, fmt="png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.zip"]
