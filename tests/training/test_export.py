"""Export to ONNX: parity with torch on every family, the card contract, verification, atomic publish."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from contract import folder as cf
from contract.folder import ModelDirError, sha256_file, verify_model_dir
from testkit.tiny import drift_onnxruntime, tiny_raw
from training import checkpoint as ckpt
from training import export as ex
from training.config import load_config
from training.data import FASHION_MNIST_CLASSES
from training.recipes.base import Recipe
from training.train import train

CONTRACT_FIELDS = ("schema", "name", "endpoint", "family", "description", "version", "exported_at", "opset",
                   "runtimes", "files", "graph", "training", "metrics")
ENDPOINTS = {"dcgan": "generate", "pix2pix": "translate", "cyclegan": "translate", "srgan": "upscale"}


def quiet(*args, **kwargs) -> None:
    pass


@pytest.fixture(scope="module")
def tiny_ckpts(tiny_runs) -> dict[str, Path]:
    """One tiny trained checkpoint per family (2 steps on generated data; conftest.tiny_runs), and its step-1
    checkpoint as `FAMILY@1` (another version, for rollback)."""
    out = {}
    for family, checkpoints in tiny_runs.items():
        out[family] = checkpoints[-1]
        out[f"{family}@1"] = checkpoints[0]
    return out


@pytest.fixture(scope="module")
def published(tiny_ckpts, tmp_path_factory) -> dict[str, Path]:
    """Every family exported with the default exporter and the fp16 variant."""
    models = tmp_path_factory.mktemp("models")
    return {family: ex.export_checkpoint(ex.ExportOptions(checkpoint=path, name=f"tiny-{family}", out=models),
                                         log=quiet).path
            for family, path in tiny_ckpts.items() if "@" not in family}


def torch_module(checkpoint: Path, role: str):
    recipe = Recipe.from_checkpoint(ckpt.load(checkpoint))
    spec = recipe.export_specs()[role]
    return spec.module.eval(), spec


def cpu(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def image_cases(family: str) -> list[tuple[int, int, int]]:
    """(N, H, W): odd/non-square sizes meeting each family's multiple_of, and several batch sizes."""
    return {"srgan": [(1, 60, 100), (3, 17, 9)],          # 100 x 60 and odd sizes: any size works
            "pix2pix": [(1, 64, 96), (3, 32, 128)],       # multiples of 32 (num_downs 5)
            "cyclegan": [(1, 28, 28), (3, 36, 20)]}[family]  # multiples of 4


# ------------------------------------------------------------------ parity and card, per family

@pytest.mark.parametrize("family", ["dcgan", "pix2pix", "cyclegan", "srgan"])
def test_export_parity_and_card(family, published, tiny_ckpts):
    folder = published[family]
    card = verify_model_dir(folder, deep=True).to_dict()
    for key in CONTRACT_FIELDS:
        assert key in card, key
    assert card["name"] == folder.name and card["schema"] == 2
    assert card["endpoint"] == ENDPOINTS[family] and card["family"] == family
    assert len(card["version"].split("-")[0]) == 12 and card["version"].endswith("Z")
    assert card["opset"] >= 17
    assert set(card["runtimes"]) >= {"torch", "onnx", "onnxruntime"}
    assert not list(folder.glob("*.data")), "weights must be inside the .onnx files"
    training = card["training"]
    assert training["steps"] == 2 and training["config"]["family"] == family
    assert training["git_commit"] and training["dataset"]["kind"] == training["config"]["data"]["kind"]
    parity = card["metrics"]["parity"]
    assert 0 <= card["metrics"]["parity_max_abs"] <= 1e-4
    assert card["metrics"]["parity_max_abs"] == max(v for v in (parity["random"], parity["real"]) if v is not None)
    fp16 = card["variants"]["fp16"]
    assert fp16["produced"] == "export" and fp16["max_abs"] <= fp16["tolerance_max_abs"]
    assert set(fp16["files"]) == set(card["files"])

    roles = ["a2b", "b2a"] if family == "cyclegan" else ["generator"]
    assert sorted(card["files"]) == sorted(roles)
    for role in roles:
        entry = card["files"][role]
        assert entry["path"] == f"{role}.onnx" and len(entry["sha256"]) == 64
        assert entry["bytes"] == (folder / entry["path"]).stat().st_size
        module, spec = torch_module(tiny_ckpts[family], role)
        sess = cpu(folder / entry["path"])
        half = cpu(folder / fp16["files"][role]["path"])
        assert [i.name for i in sess.get_inputs()] == [i["name"] for i in card["graph"]["inputs"]]
        assert [o.name for o in sess.get_outputs()] == ["output"]
        rng = np.random.default_rng(1)
        if family == "dcgan":
            latent = card["latent_dim"]
            for n in (1, 5, 10):  # dynamic batch; the batch of 10 has every label
                feeds = {"z": rng.standard_normal((n, latent)).astype(np.float32),
                         "label": (np.arange(n) % len(card["classes"])).astype(np.int64)}
                got = sess.run(["output"], feeds)[0]
                with torch.no_grad():
                    want = module(torch.from_numpy(feeds["z"]), torch.from_numpy(feeds["label"])).numpy()
                assert got.shape == (n, 1, 32, 32)
                assert np.abs(got - want).max() < 1e-4
                assert np.abs(half.run(["output"], feeds)[0] - got).max() <= fp16["tolerance_max_abs"]
        else:
            c = card["input"]["channels"]
            scale = card["output"]["scale"]
            for n, h, w in image_cases(family):
                x = rng.uniform(-1, 1, (n, c, h, w)).astype(np.float32)
                got = sess.run(["output"], {"image": x})[0]
                with torch.no_grad():
                    want = module(torch.from_numpy(x)).numpy()
                assert got.shape == (n, card["output"]["channels"], h * scale, w * scale)
                assert np.abs(got - want).max() < 1e-4, (n, h, w)
                assert np.abs(half.run(["output"], {"image": x})[0] - got).max() <= fp16["tolerance_max_abs"]

    if family == "dcgan":
        assert card["classes"] == FASHION_MNIST_CLASSES
        assert card["latent_dim"] == 8 and card["output"]["size"] == [32, 32]
        assert card["graph"]["inputs"] == [{"name": "z", "dtype": "float32", "shape": ["N", 8]},
                                           {"name": "label", "dtype": "int64", "shape": ["N"]}]
        assert card["graph"]["outputs"][0]["shape"] == ["N", 1, 32, 32]
        assert parity["batches"] == [1, 3, 20] and parity["labels"] == 10
    else:
        assert parity["real"] is not None and "real_source" in parity  # the generated test split was used
        assert len(parity["sizes"]) >= 2 and any(h != w for h, w in parity["sizes"])
        assert parity["batches"] == [1, 2]
        m = card["input"]["multiple_of"]
        assert all(h % m == 0 and w % m == 0 for h, w in parity["sizes"])
        expect_m = {"pix2pix": 32, "cyclegan": 4, "srgan": 1}[family]
        assert m == expect_m and card["input"]["min_size"] >= 1
        assert {"tile", "overlap"} <= set(card["tiling"])
        c = card["input"]["channels"]
        out_shape = ["N", card["output"]["channels"], "H", "W"] if scale == 1 else ["N", 3, "H*4", "W*4"]
        assert card["graph"]["inputs"] == [{"name": "image", "dtype": "float32", "shape": ["N", c, "H", "W"]}]
        assert card["graph"]["outputs"] == [{"name": "output", "dtype": "float32", "shape": out_shape}]
    if family == "cyclegan":
        assert card["domains"] == {"a": "Sneaker", "b": "Ankle boot"}
        assert card["input"]["native_size"] == [28, 28]
        assert set(parity["roles"]) == {"a2b", "b2a"}


def test_pix2pix_batchnorm_is_exported_in_eval_mode(published, tiny_ckpts):
    """BN uses running statistics: ORT == torch eval mode, and an image's output does not depend on its batch."""
    folder = published["pix2pix"]
    card = json.loads((folder / "card.json").read_text())
    assert any("batch norm" in note and "running statistics" in note for note in card["notes"])
    module, _ = torch_module(tiny_ckpts["pix2pix"], "generator")
    sess = cpu(folder / "generator.onnx")
    x = np.random.default_rng(2).uniform(-1, 1, (2, 1, 64, 64)).astype(np.float32)
    got = sess.run(["output"], {"image": x})[0]
    alone = sess.run(["output"], {"image": x[:1]})[0]
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
        module.train()
        train_mode = module(torch.from_numpy(x)).numpy()
        module.eval()
    assert np.abs(got - want).max() < 1e-5
    assert np.abs(got[:1] - alone).max() < 1e-5
    assert np.abs(got - train_mode).max() > 1e-3  # batch statistics would differ: the export is not train mode


# ------------------------------------------------------------------ verification

def test_verify_detects_truncation_changes_and_broken_onnx(published, tmp_path, capsys):
    folder = tmp_path / "models" / "tiny-srgan"
    shutil.copytree(published["srgan"], folder)
    card = verify_model_dir(folder).to_dict()
    onnx_file = folder / card["files"]["generator"]["path"]
    good = onnx_file.read_bytes()

    onnx_file.write_bytes(good[: len(good) // 2])
    with pytest.raises(ModelDirError, match=r"truncated: \d+ bytes, the card says \d+"):
        verify_model_dir(folder)
    assert ex.main(["--verify", "tiny-srgan", "--out", str(folder.parent)]) == 2
    assert "truncated" in capsys.readouterr().err

    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0xFF
    onnx_file.write_bytes(bytes(flipped))
    with pytest.raises(ModelDirError, match="sha256 mismatch for .*generator.onnx"):
        verify_model_dir(folder)

    # garbage whose sha256 the card agrees with: only loading it finds out
    garbage = b"not an onnx model" * 100
    onnx_file.write_bytes(garbage)
    card["files"]["generator"].update(sha256=sha256_file(onnx_file), bytes=len(garbage))
    (folder / "card.json").write_text(json.dumps(card))
    verify_model_dir(folder)
    with pytest.raises(ModelDirError, match="not a loadable ONNX model"):
        verify_model_dir(folder, deep=True)

    onnx_file.unlink()
    with pytest.raises(ModelDirError, match="is missing"):
        verify_model_dir(folder)
    (folder / "card.json").write_text("{not json")
    with pytest.raises(ModelDirError, match="unreadable"):
        verify_model_dir(folder)

    fp16 = folder.parent / "fp16-broken"
    shutil.copytree(published["srgan"], fp16)
    (fp16 / "generator.fp16.onnx").write_bytes(b"")
    with pytest.raises(ModelDirError, match=r"variants\.fp16\.files\.generator"):
        verify_model_dir(fp16)


# ------------------------------------------------------------------ refusing, crashing, rolling back

def version(folder: Path) -> str:
    return json.loads((folder / "card.json").read_text())["version"]


def leftovers(out: Path, name: str) -> list[Path]:
    return list(out.glob(f".{name}.tmp-*"))


def quick_export(checkpoint: Path, out: Path, name: str = "sr", **kw):
    """TorchScript exporter and no fp16: the fast path, for the publishing tests."""
    options = ex.ExportOptions(checkpoint=checkpoint, name=name, out=out, exporter="torchscript", fp16=False, **kw)
    return ex.export_checkpoint(options, log=quiet)


def test_parity_over_tolerance_refuses_and_keeps_the_old_model(tiny_ckpts, tmp_path, capsys, monkeypatch):
    out = tmp_path / "models"
    first = quick_export(tiny_ckpts["dcgan"], out).path
    v1 = version(first)

    rc = ex.main([str(tiny_ckpts["dcgan"]), "--name", "sr", "--out", str(out), "--tolerance", "0",
                  "--exporter", "torchscript", "--no-fp16"])
    err = capsys.readouterr().err
    assert rc == 3
    assert "refusing to publish 'sr'" in err and "exceeds the tolerance 0.0e+00 by" in err

    drift_onnxruntime(monkeypatch, 1e-3)  # over the default 1e-4 tolerance
    with pytest.raises(ex.ParityError, match=r"max abs error 1\.0\d*e-03 exceeds the tolerance 1\.0e-04 by 9\.\d+e-04"):
        quick_export(tiny_ckpts["dcgan"], out)
    assert version(first) == v1 and verify_model_dir(first)
    assert not leftovers(out, "sr") and not (out / ".sr.prev").exists()


def test_crash_between_write_and_rename_leaves_the_old_model(tiny_ckpts, tmp_path, monkeypatch):
    out = tmp_path / "models"
    first = quick_export(tiny_ckpts["dcgan@1"], out).path
    v1 = version(first)

    def boom(*args):
        raise OSError("injected crash before the swap")

    monkeypatch.setattr(cf, "exchange", boom)
    monkeypatch.setattr(cf, "rename", boom)
    with pytest.raises(OSError, match="injected crash"):
        quick_export(tiny_ckpts["dcgan"], out)
    assert version(first) == v1 and verify_model_dir(first, deep=True)
    assert not leftovers(out, "sr") and not (out / ".sr.prev").exists()

    # without RENAME_EXCHANGE: NAME -> .prev succeeds, staging -> NAME fails; the old model goes back
    monkeypatch.setattr(cf, "exchange", lambda a, b: False)
    calls = []

    def second_fails(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 2:
            raise OSError("injected crash between the renames")
        Path(src).rename(dst)

    monkeypatch.setattr(cf, "rename", second_fails)
    with pytest.raises(OSError, match="between the renames"):
        quick_export(tiny_ckpts["dcgan"], out)
    assert calls[0] == ("sr", ".sr.prev") and calls[1][1] == "sr"
    assert version(first) == v1 and verify_model_dir(first)
    assert not leftovers(out, "sr")

    # a stale staging folder from a hard crash is cleared by the next export
    (out / ".sr.tmp-stale").mkdir()
    monkeypatch.undo()
    quick_export(tiny_ckpts["dcgan"], out, description="after the crash")
    assert not leftovers(out, "sr") and version(out / ".sr.prev") == v1


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_rollback_restores_the_previous_version(tiny_ckpts, tmp_path, monkeypatch, capsys, exchange):
    if not exchange:
        monkeypatch.setattr(cf, "exchange", lambda a, b: False)
    out = tmp_path / "models"
    assert ex.main(["--rollback", "sr", "--out", str(out)]) == 2
    assert "nothing to roll back to" in capsys.readouterr().err

    v1 = version(quick_export(tiny_ckpts["dcgan@1"], out, description="one").path)
    v2 = version(quick_export(tiny_ckpts["dcgan"], out, description="two").path)
    assert v1 != v2 and version(out / ".sr.prev") == v1

    assert ex.main(["--rollback", "sr", "--out", str(out)]) == 0
    assert version(out / "sr") == v1 and version(out / ".sr.prev") == v2
    assert json.loads((out / "sr" / "card.json").read_text())["description"] == "one"
    ex.rollback("sr", out, log=quiet)  # twice = forward again
    assert version(out / "sr") == v2 and version(out / ".sr.prev") == v1
    assert not list(out.glob(".sr.rollback-tmp*"))

    (out / ".sr.prev" / "generator.onnx").write_bytes(b"damaged")
    with pytest.raises(ex.ExportError, match="refusing to roll back to a damaged version"):
        ex.rollback("sr", out, log=quiet)
    assert version(out / "sr") == v2


def test_cli_errors_and_dispatch(tiny_ckpts, published, tmp_path, capsys):
    from training.__main__ import main as cli

    out = tmp_path / "models"
    assert ex.main([str(tiny_ckpts["srgan"]), "--name", "Bad Name", "--out", str(out)]) == 2
    assert "invalid model name" in capsys.readouterr().err
    assert ex.main([str(tmp_path / "nope.pt"), "--name", "x", "--out", str(out)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert ex.main(["--name", "x"]) == 2
    assert "give CHECKPOINT" in capsys.readouterr().err
    assert cli(["export", str(tiny_ckpts["srgan"]), "--name", "sr", "--out", str(out), "--exporter",
                "torchscript", "--no-fp16", "--description", "from the CLI"]) == 0
    card = verify_model_dir(out / "sr", deep=True).to_dict()
    assert card["description"] == "from the CLI" and card["exporter"] == "torchscript" and "variants" not in card
    assert card["opset"] == ex.TORCHSCRIPT_OPSET
    # both exporters give the same graph I/O and the same card shapes
    dynamo = json.loads((published["srgan"] / "card.json").read_text())
    assert dynamo["graph"] == card["graph"] and dynamo["exporter"] == "dynamo"


def test_service_reads_every_exported_card(published):
    """The other side of the contract: service/loading.py loads each folder as ready, sha256 checked."""
    from service.config import Settings
    from core.loading import load_model
    from core.runtime import resolve_providers

    settings = Settings(models_dir=next(iter(published.values())).parent, device="cpu")
    providers = resolve_providers(settings)
    for family, folder in published.items():
        model = load_model(folder, settings, providers)
        assert model.ready, (family, model.reason)
        assert (model.generate_spec if family == "dcgan" else model.image_spec) is not None


def test_cli_rollback_through_python_m_training(tiny_ckpts, tmp_path):
    from training.__main__ import main as cli

    out = tmp_path / "models"
    v1 = version(quick_export(tiny_ckpts["dcgan@1"], out).path)
    v2 = version(quick_export(tiny_ckpts["dcgan"], out).path)
    assert v1 != v2
    assert cli(["export", "--rollback", "sr", "--out", str(out)]) == 0
    assert version(out / "sr") == v1
    assert cli(["export", "--verify", "sr", "--out", str(out)]) == 0
    # a run folder stands for its newest checkpoint
    run_dir = tiny_ckpts["dcgan"].parent.parent
    assert cli(["export", str(run_dir), "--name", "sr", "--out", str(out), "--exporter", "torchscript",
                "--no-fp16"]) == 0
    card = json.loads((out / "sr" / "card.json").read_text())
    assert card["training"]["steps"] == ckpt.load(tiny_ckpts["dcgan"])["step"]


def test_srresnet_with_bicubic_skip_exports_optimized_with_fp16(tiny_datasets, tmp_path):
    """The shipped SR config (no norm, global bicubic skip). Export rewrites the bicubic Resize as a conv
    (modelops/optimize.py): parity with torch and fp16 both hold on the rewritten graph. A folder published
    without the rewrite gets it from `python -m training optimize`, same function, new version, .prev kept."""
    import onnx
    import onnxruntime as ort

    from modelops import optimize as opt
    from training.__main__ import main as cli

    raw = tiny_raw("srgan", tiny_datasets)
    raw["model"]["generator"].update(norm="none", skip="bicubic")
    raw["train"].update(steps=2, ckpt_every=2, sample_every=2)
    run = train(load_config(None, raw=raw), out_dir=tmp_path / "run", log=quiet)
    checkpoint = ckpt.list_checkpoints(run)[-1]
    models = tmp_path / "models"
    folder = ex.export_checkpoint(ex.ExportOptions(checkpoint=checkpoint, name="sk", out=models), log=quiet).path
    card = json.loads((folder / "card.json").read_text())
    ops = lambda f: {n.op_type for n in onnx.load(str(f)).graph.node}  # noqa: E731
    assert "Resize" not in ops(folder / "generator.onnx")
    assert card["optimized"]["rewrites"] == {"generator": {"resize_as_conv": 1}}
    assert card["metrics"]["parity_max_abs"] < 1e-4  # torch vs the rewritten graph
    fp16 = card["variants"]["fp16"]
    assert fp16["produced"] == "export", fp16
    assert fp16["max_abs"] < fp16["tolerance_max_abs"]

    plain = ex.export_checkpoint(ex.ExportOptions(checkpoint=checkpoint, name="plain", out=models, fp16=False,
                                                  optimize=False), log=quiet).path
    assert "Resize" in ops(plain / "generator.onnx")
    before = json.loads((plain / "card.json").read_text())
    x = np.random.default_rng(0).uniform(0, 1, (1, 3, 24, 40)).astype(np.float32)
    run_graph = lambda f: ort.InferenceSession(str(f), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]  # noqa: E731
    want = run_graph(plain / "generator.onnx")
    plain_options = opt.OptimizeOptions(name="plain", models=models)
    assert cli(["optimize", "plain", "--models", str(models), "--dry-run"]) == 0
    assert json.loads((plain / "card.json").read_text()) == before  # a dry run publishes nothing
    assert opt.optimize_model(plain_options, log=quiet) == {"generator": {"resize_as_conv": 1}}
    after = verify_model_dir(plain, deep=True).to_dict()
    assert "Resize" not in ops(plain / "generator.onnx")
    assert after["version"] != before["version"] and after["optimized"]["previous_version"] == before["version"]
    assert np.abs(run_graph(plain / "generator.onnx") - want).max() < 1e-5
    assert (models / ".plain.prev" / "generator.onnx").exists()
    assert opt.optimize_model(plain_options, log=quiet) == {}  # already done: nothing published
    assert verify_model_dir(plain).to_dict()["version"] == after["version"]


def test_a_card_that_breaks_the_contract_is_refused_naming_the_field(tiny_ckpts, tmp_path, capsys, monkeypatch):
    """Export builds the card through contract.Card: a field the contract refuses stops the export, with the
    field's name, and nothing is published (here: a class name that is empty)."""
    from training.recipes.dcgan import DCGANRecipe

    out = tmp_path / "models"
    first = quick_export(tiny_ckpts["dcgan"], out).path
    v1 = version(first)
    monkeypatch.setattr(DCGANRecipe, "card_fields", lambda self: {"classes": ["shirt", ""] * 5})
    rc = ex.main([str(tiny_ckpts["dcgan"]), "--name", "sr", "--out", str(out), "--exporter", "torchscript",
                  "--no-fp16"])
    err = capsys.readouterr().err
    assert rc == 2 and "classes[1]" in err, err
    assert version(first) == v1 and not leftovers(out, "sr") and not (out / ".sr.prev").exists()


def test_fp16_is_built_not_shipped_and_remade_byte_for_byte(published, tmp_path, capsys):
    """The fp16 variant is `built`: a folder without its files verifies and serves fp32; `python -m training
    fp16` remakes them from the fp32 graphs with the card's sha256; other bytes are refused, nothing left."""
    from training.__main__ import main as cli

    models = tmp_path / "models"
    folder = models / "tiny-cyclegan"
    shutil.copytree(published["cyclegan"], folder)
    card = json.loads((folder / "card.json").read_text())
    fp16 = card["variants"]["fp16"]
    assert fp16["built"] is True and set(fp16["files"]) == {"a2b", "b2a"}
    shipped = {role: sha256_file(folder / e["path"]) for role, e in fp16["files"].items()}
    for entry in fp16["files"].values():
        (folder / entry["path"]).unlink()  # what a git clone holds
    verify_model_dir(folder, deep=True)  # not built yet is not broken
    (folder / "a2b.onnx").write_bytes(b"x")  # a missing fp32 file still is
    with pytest.raises(ModelDirError, match="a2b"):
        verify_model_dir(folder)
    shutil.copy2(published["cyclegan"] / "a2b.onnx", folder / "a2b.onnx")

    assert cli(["fp16", "--models", str(models)]) == 0
    assert {role: sha256_file(folder / e["path"]) for role, e in fp16["files"].items()} == shipped
    assert cli(["fp16", "--models", str(models), "tiny-cyclegan"]) == 0  # nothing to do: still fine
    verify_model_dir(folder, deep=True)

    (folder / "b2a.fp16.onnx").unlink()
    card["variants"]["fp16"]["files"]["b2a"]["sha256"] = "0" * 64  # made by another converter
    (folder / "card.json").write_text(json.dumps(card))
    capsys.readouterr()
    assert cli(["fp16", "--models", str(models)]) == 1
    assert "other bytes" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["a2b.fp16.onnx", "a2b.onnx", "b2a.onnx", "card.json"]
