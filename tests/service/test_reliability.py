"""Faults and security (issue 7), in process: model reload under load, readiness, bad models,
disk full during export, path traversal, no unpickling anywhere.

The long runs (a real `bentoml serve` under load, a worker killed) are `make soak` (soak/).
"""

from __future__ import annotations

import ast
import errno
import io
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from contract.folder import read_card, write_card_durably
from core import imaging
from service.batching import SessionBatcher
from service_fixtures import (REPO, encode, service_client, synthetic_photo, write_onnx,
                              upscale_x4_model, write_fixture_models)

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")


@pytest.fixture(scope="module")
def fixture_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability_models")
    write_fixture_models(root)
    return root


@pytest.fixture
def models(fixture_models, tmp_path):
    """A private, writable copy of the fixture models."""
    root = tmp_path / "models"
    shutil.copytree(fixture_models, root)
    return root


def png(w=24, h=20, seed=0) -> bytes:
    return encode(Image.fromarray(synthetic_photo(w, h, seed)))


def upscale(client, data: bytes, **fields):
    return client.post("/upscale", files={"image": ("a.png", data, "image/png")},
                       data={k: str(v) for k, v in fields.items()})


def by_name(client) -> dict[str, dict]:
    return {m["name"]: m for m in client.get("/models").json()["models"]}


def publish_upscaler(root: Path, seed: int) -> str:
    """Re-export srresnet-x4 with other weights the way training/export.py publishes: a staging
    folder renamed into place (the old one kept as .prev). Returns the new version."""
    name = "srresnet-x4"
    staging = root / f".{name}.tmp-test"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    files = {"generator": write_onnx(staging, "generator.onnx", upscale_x4_model(seed=seed))}
    card = read_card(root / name)
    card.files, card.description = files, f"re-export, seed {seed}"
    card.version = f"{files['generator'].sha256[:12]}-seed{seed}"
    write_card_durably(staging, card)
    prev = root / f".{name}.prev"
    shutil.rmtree(prev, ignore_errors=True)
    os.rename(root / name, prev)
    os.rename(staging, root / name)
    return card.version


def reference_upscale(model_path: Path, data: bytes) -> np.ndarray:
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    x = imaging.pad_to(imaging.to_float(pixels, (-1, 1))[None], 1, 8)
    y = sess.run(["output"], {"image": x})[0][0, :, : pixels.shape[0] * 4, : pixels.shape[1] * 4]
    return imaging.to_pixels(y, (-1, 1))


def decoded(resp) -> np.ndarray:
    assert resp.status_code == 200, resp.text
    return np.asarray(Image.open(io.BytesIO(resp.content)).convert("RGB"))


# ---------------------------------------------------------------- reload


def test_reload_serves_the_new_version_and_models_shows_it(models):
    data = png()
    with service_client(models) as c:
        before = by_name(c)["srresnet-x4"]
        old_out = decoded(upscale(c, data))
        new_version = publish_upscaler(models, seed=11)
        assert by_name(c)["srresnet-x4"]["version"] == before["version"]  # nothing changes until the reload
        report = c.post("/admin/reload").json()
        assert [e["name"] for e in report["loaded"]] == ["srresnet-x4"]
        assert report["loaded"][0]["version"] == new_version and report["loaded"][0]["status"] == "ready"
        assert sorted(report["unchanged"]) == ["edges2color", "fashion-dcgan", "shoe2boot"]
        assert report["removed"] == [] and report["kept"] == [] and report["worker_pid"] == os.getpid()
        after = by_name(c)["srresnet-x4"]
        card = json.loads((models / "srresnet-x4" / "card.json").read_text())
        assert after["version"] == new_version and after["files"]["generator"]["sha256"] == card["files"]["generator"]["sha256"]
        new_out = decoded(upscale(c, data))
        assert np.abs(new_out.astype(int) - old_out.astype(int)).max() > 0
        np.testing.assert_array_equal(new_out, reference_upscale(models / "srresnet-x4" / "generator.onnx", data))
        again = c.post("/admin/reload").json()  # nothing changed on disk: nothing reloaded
        assert again["loaded"] == [] and len(again["unchanged"]) == 4 and again["reloads"] == 2


def test_reload_under_load_fails_no_request(models):
    """Clients hammer /upscale and /generate while the model is re-exported and reloaded 6 times."""
    statuses: list[int] = []
    stop = threading.Event()
    data = png(40, 32)
    with service_client(models, GANFORGE_THREADS="4") as c:
        def client_loop(i: int) -> None:
            while not stop.is_set():
                resp = upscale(c, data) if i % 2 else c.post("/generate", json={"seed": i, "n": 2})
                statuses.append(resp.status_code)

        threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        versions = []
        try:
            for k in range(6):
                versions.append(publish_upscaler(models, seed=20 + k))
                report = c.post("/admin/reload").json()
                assert [e["name"] for e in report["loaded"]] == ["srresnet-x4"], report
                assert by_name(c)["srresnet-x4"]["version"] == versions[-1]
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=60)
        assert len(statuses) >= 12 and set(statuses) == {200}, sorted(set(statuses))
        np.testing.assert_array_equal(decoded(upscale(c, data)),
                                      reference_upscale(models / "srresnet-x4" / "generator.onnx", data))


def test_closed_batcher_still_answers_a_request_that_holds_it():
    """A reload closes the old model's batchers; a request that picked the old model must still finish."""
    batcher = SessionBatcher(lambda outputs, feeds: [feeds["x"] * 2], max_batch=4, name="t")
    x = np.ones((1, 3), np.float32)
    assert (batcher.run(["y"], {"x": x})[0] == 2).all()
    batcher.close()
    assert (batcher.run(["y"], {"x": x})[0] == 2).all()
    assert batcher.stats["requests"] == 1  # the second ran directly, not through the closed queue


def test_a_corrupt_new_version_does_not_displace_the_served_one(models):
    with service_client(models) as c:
        version = by_name(c)["srresnet-x4"]["version"]
        path = models / "srresnet-x4" / "generator.onnx"
        good = path.read_bytes()
        path.write_bytes(good[: len(good) // 2])  # a half-written file
        report = c.post("/admin/reload").json()
        assert report["kept"] == [{"name": "srresnet-x4", "reason": report["kept"][0]["reason"]}]
        assert "sha256 mismatch" in report["kept"][0]["reason"]
        entry = by_name(c)["srresnet-x4"]
        assert entry["status"] == "ready" and entry["version"] == version and "still serving" in entry["warning"]
        assert str(models) not in json.dumps(entry)
        assert decoded(upscale(c, png())).shape == (80, 96, 3)
        path.write_bytes(good)  # repaired: the next reload loads it and the warning goes
        report = c.post("/admin/reload").json()
        assert [e["name"] for e in report["loaded"]] == ["srresnet-x4"]
        assert "warning" not in by_name(c)["srresnet-x4"]


def test_reload_adds_and_removes_models(models):
    with service_client(models) as c:
        shutil.move(models / "shoe2boot", models / ".shoe2boot.prev")
        report = c.post("/admin/reload").json()
        assert report["removed"] == ["shoe2boot"] and "shoe2boot" not in by_name(c)
        resp = c.post("/translate", files={"image": ("a.png", png())}, data={"model": "shoe2boot"})
        assert resp.status_code == 404 and resp.json()["status"] == 404
        shutil.move(models / ".shoe2boot.prev", models / "shoe2boot")
        report = c.post("/admin/reload").json()
        assert [e["name"] for e in report["loaded"]] == ["shoe2boot"] and by_name(c)["shoe2boot"]["status"] == "ready"


def test_file_watch_reloads_by_itself(models):
    with service_client(models, GANFORGE_RELOAD_POLL_S="0.2") as c:
        new_version = publish_upscaler(models, seed=31)
        deadline = time.monotonic() + 20
        while by_name(c)["srresnet-x4"]["version"] != new_version:
            assert time.monotonic() < deadline, "the watch did not pick up the re-export"
            time.sleep(0.1)  # polling interval, not an assertion
        assert c.get("/models").json()["reloads"] >= 1


def test_reload_needs_the_token(models):
    with service_client(models, GANFORGE_AUTH_TOKEN="s3cret") as c:
        resp = c.post("/admin/reload")
        assert resp.status_code == 401 and resp.json() == {"error": "missing or wrong bearer token", "status": 401}
        assert c.post("/admin/reload", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert c.post("/admin/reload", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/admin/reload", headers={"Authorization": "Bearer s3cret"}).status_code == 405


# ---------------------------------------------------------------- readiness with a bad model


@pytest.mark.parametrize("fault", ["sha-mismatch", "truncated-onnx", "garbage-card"])
def test_bad_model_at_startup_readiness(models, fault):
    target = models / "edges2color"
    if fault == "sha-mismatch":
        data = bytearray((target / "generator.onnx").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (target / "generator.onnx").write_bytes(bytes(data))
    elif fault == "truncated-onnx":  # card and file agree on the sha, but onnxruntime cannot parse it
        card = json.loads((target / "card.json").read_text())
        cut = (target / "generator.onnx").read_bytes()[:100]
        (target / "generator.onnx").write_bytes(cut)
        import hashlib
        card["files"]["generator"]["sha256"] = hashlib.sha256(cut).hexdigest()
        (target / "card.json").write_text(json.dumps(card))
    else:
        (target / "card.json").write_bytes(b"{\x00 not json")
    with service_client(models) as c:  # default: ready, the others serve, /models says why
        assert c.get("/readyz").status_code == 200
        body = c.get("/models").json()
        assert body["unavailable"] == ["edges2color"]
        entry = {m["name"]: m for m in body["models"]}["edges2color"]
        assert entry["status"] == "unavailable" and entry["reason"] and str(models) not in entry["reason"]
        resp = c.post("/translate", files={"image": ("a.png", png())}, data={"model": "edges2color"})
        assert resp.status_code == 503 and "unavailable" in resp.json()["error"]
        assert c.post("/translate", files={"image": ("a.png", png())}, data={"model": "shoe2boot"}).status_code == 200
        assert decoded(upscale(c, png())).shape == (80, 96, 3)
    with service_client(models, GANFORGE_READY_REQUIRES_ALL="1") as c:  # strict: not ready
        resp = c.get("/readyz")
        assert resp.status_code == 503 and resp.json()["status"] == 503
        assert c.get("/livez").status_code == 200
        assert c.post("/generate", json={"seed": 1}).status_code == 200  # it still serves what it can


def test_strict_readiness_is_ready_when_all_models_are(models):
    with service_client(models, GANFORGE_READY_REQUIRES_ALL="1") as c:
        assert c.get("/readyz").status_code == 200


# ---------------------------------------------------------------- disk full during export


@pytest.fixture(scope="module")
def tiny_checkpoints(tiny_runs):
    """The 2-step dcgan run's checkpoints (conftest.tiny_runs)."""
    return tiny_runs["dcgan"]


def gen_options(checkpoint: Path, out: Path):
    """The export of `checkpoint` as OUT/gen (no fp16 variant)."""
    from training.export import ExportOptions

    return ExportOptions(checkpoint=checkpoint, name="gen", out=out, fp16=False)


def _assert_old_model_served(out: Path, name: str, version: str) -> None:
    from contract.folder import verify_model_dir

    assert verify_model_dir(out / name, deep=True).version == version
    assert not list(out.glob(f".{name}.tmp-*")), "staging left behind"
    with service_client(out) as c:
        entry = {m["name"]: m for m in c.get("/models").json()["models"]}[name]
        assert entry["status"] == "ready" and entry["version"] == version
        resp = c.post("/generate", json={"model": name, "seed": 3})
        assert resp.status_code == 200 and resp.headers["content-type"] == "image/png"


def test_disk_full_during_export_keeps_the_old_model(tiny_checkpoints, tmp_path, monkeypatch):
    """ENOSPC half-way through writing the new graph: the export fails, the old model stays intact and served."""
    from training import export as ex
    from training.export import build as export_build

    out = tmp_path / "models"
    first = ex.export_checkpoint(gen_options(tiny_checkpoints[0], out), log=lambda *a: None)
    real_export = export_build.export_graph

    def disk_full(spec, path, *args, **kwargs):
        used = real_export(spec, path, *args, **kwargs)
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(export_build, "export_graph", disk_full)
    with pytest.raises(OSError) as info:
        ex.export_checkpoint(gen_options(tiny_checkpoints[-1], out), log=lambda *a: None)
    assert info.value.errno == errno.ENOSPC
    _assert_old_model_served(out, "gen", first.card.version)


def _try_mount_tmpfs(path: Path, size: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_disk_full_on_a_real_small_filesystem(tiny_checkpoints, tmp_path):
    """The same on a real tmpfs just big enough for one version (root only; skipped elsewhere)."""
    from training import export as ex

    mnt = tmp_path / "tmpfs"
    if not _try_mount_tmpfs(mnt, "64m"):
        pytest.skip("needs root and mount -t tmpfs")
    try:
        out = mnt / "models"
        first = ex.export_checkpoint(gen_options(tiny_checkpoints[0], out), log=lambda *a: None)
        used = sum(f.stat().st_size for f in (out / "gen").iterdir())
        filler = mnt / "filler"
        free = shutil.disk_usage(mnt).free
        with open(filler, "wb") as f:  # leave less room than a second copy of the model needs
            f.truncate(0)
            f.write(b"\0" * max(0, free - used // 2))
        with pytest.raises(Exception) as info:
            ex.export_checkpoint(gen_options(tiny_checkpoints[-1], out), log=lambda *a: None)
        assert "No space left" in str(info.value) or getattr(info.value, "errno", None) == errno.ENOSPC \
            or "space" in repr(info.value).lower(), repr(info.value)
        filler.unlink()
        _assert_old_model_served(out, "gen", first.card.version)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


# ---------------------------------------------------------------- security


TRAVERSAL_NAMES = ["../models", "..", "../../etc/passwd", "/etc/passwd", "srresnet-x4/../srresnet-x4",
                   "..%2fmodels", "srresnet-x4\x00", "./srresnet-x4", "~root", "C:\\Windows", "a" * 5000,
                   ".srresnet-x4.prev"]


@pytest.mark.parametrize("name", TRAVERSAL_NAMES)
def test_model_names_cannot_escape_models_dir(models, name, monkeypatch):
    """Names are dictionary keys: they never reach the filesystem, whatever they spell."""
    (models / ".srresnet-x4.prev").mkdir()  # an export's previous version is not served
    with service_client(models) as c:
        opened: list[str] = []
        real_open = Path.open

        def spy(self, *args, **kwargs):
            opened.append(str(self))
            return real_open(self, *args, **kwargs)

        monkeypatch.setattr(Path, "open", spy)
        for resp in (upscale(c, png(), model=name),
                     c.post("/translate", files={"image": ("a.png", png())}, data={"model": name}),
                     c.post("/generate", json={"model": name})):
            assert resp.status_code in (400, 404, 422), (name, resp.status_code, resp.text)
            body = resp.json()
            assert set(body) == {"error", "status"} and str(models) not in body["error"]
        monkeypatch.undo()
        assert not [p for p in opened if "models" in p], opened


def _unpickling_calls(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        owner = getattr(func.value, "id", "") if isinstance(func, ast.Attribute) else ""
        kwargs = {k.arg: k.value for k in node.keywords}
        if owner in ("pickle", "cPickle", "dill", "joblib", "marshal", "shelve", "cloudpickle") and name in (
                "load", "loads", "open", "Unpickler"):
            found.append(f"{owner}.{name}")
        elif name == "Unpickler":
            found.append(name)
        elif owner == "torch" and name == "load":
            wo = kwargs.get("weights_only")
            if not (isinstance(wo, ast.Constant) and wo.value is True):
                found.append("torch.load without weights_only=True")
        elif owner in ("np", "numpy") and name == "load":
            ap = kwargs.get("allow_pickle")
            if ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False):
                found.append("np.load(allow_pickle=...)")
        elif owner == "yaml" and name in ("load", "unsafe_load", "full_load", "load_all"):
            found.append(f"yaml.{name}")
    return found


def test_the_scanner_sees_unpickling():
    bad = ast.parse("import pickle, torch, yaml, numpy as np\npickle.loads(b)\ntorch.load(f)\n"
                    "torch.load(f, weights_only=False)\nnp.load(f, allow_pickle=True)\nyaml.load(s)\n")
    assert len(_unpickling_calls(bad)) == 5
    ok = ast.parse("torch.load(f, weights_only=True)\nnp.load(f)\nyaml.safe_load(s)\njson.loads(s)\n")
    assert _unpickling_calls(ok) == []


def test_nothing_unpickles_untrusted_files():
    sources = [p for pkg in ("service", "training", "bench", "soak") for p in (REPO / pkg).rglob("*.py")]
    assert len(sources) > 20
    offenders = {str(p.relative_to(REPO)): calls for p in sources
                 if (calls := _unpickling_calls(ast.parse(p.read_text(), str(p))))}
    assert offenders == {}


@pytest.mark.parametrize("route", ["/generate", "/translate", "/upscale"])
def test_bentoml_pickle_content_type_is_refused(models, route):
    import pickle

    class Boom:
        def __reduce__(self):
            return (os.system, ("touch /tmp/ganforge-pwned",))

    with service_client(models) as c:
        resp = c.post(route, content=pickle.dumps(Boom()), headers={"Content-Type": "application/vnd.bentoml+pickle"})
        assert resp.status_code == 415 and resp.json()["status"] == 415
    assert not Path("/tmp/ganforge-pwned").exists()


# ---------------------------------------------------------------- training faults


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_loss_mid_run_keeps_the_last_good_checkpoint(tiny_datasets, tmp_path, monkeypatch, bad):
    """A loss turns non-finite in step index 4 (the 5th of 6): the run stops naming the step and the loss;
    the checkpoint after 4 good steps is the newest, and nothing of the bad step was saved."""
    import torch

    from testkit.tiny import tiny_raw
    from training import checkpoint as ckpt
    from training.config import load_config
    from training.recipes.base import Recipe, TrainingDiverged
    from training.train import train

    real = Recipe.check_finite

    def poisoned(losses, step):
        if step == 4:
            losses = {**losses, next(iter(losses)): torch.tensor(bad)}
        return real(losses, step)

    monkeypatch.setattr(Recipe, "check_finite", staticmethod(poisoned))
    raw = tiny_raw("dcgan", tiny_datasets)
    raw["train"].update(steps=6, ckpt_every=1, sample_every=100)
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"non-finite loss at step 4: .*(nan|inf).*last good checkpoint kept"):
        train(load_config(None, raw=raw), out_dir=run, log=lambda *a: None)
    steps = [ckpt.load(p)["step"] for p in ckpt.list_checkpoints(run)]
    assert steps == [1, 2, 3, 4], steps
    _, payload = ckpt.latest_valid(run)
    assert payload["step"] == max(steps)
    for net in payload["nets"].values():
        assert all(torch.isfinite(t).all() for t in net.values() if t.is_floating_point())
