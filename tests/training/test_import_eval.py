"""Imported models (a card with `provenance`, no `training` block): `python -m training eval` measures them on
held-out photos by endpoint; `init_from` starts a run from imported weights (tests/training/test_training.py has the rest)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from contract import Provenance, SourceFile
from contract.folder import verify_model_dir, write_card
from training import evaluate as ev
from training import eval_cli
from testkit.fixtures import fixture_card, image_graph, write_onnx

ANCHORS = Path(__file__).resolve().parents[3] / "shared" / "anchors" / "sr"


def quiet(*args, **kwargs) -> None:
    pass


def graph(nodes: list, inits: list, c_in: int = 3, c_out: int = 3) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "imported", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", c_in, "H", "W"])],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", c_out, "H2", "W2"])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def cubic_upscaler(scale: int) -> onnx.ModelProto:
    """A bicubic x`scale` Resize: what an SR model at least should do."""
    scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, scale, scale])
    return graph([helper.make_node("Resize", ["image", "", "scales"], ["output"], mode="cubic")], [scales])


def negate() -> onnx.ModelProto:
    """-x: on [-1, 1] the colour negative; twice, the identity."""
    return graph([helper.make_node("Neg", ["image"], ["output"])], [])


def imported_folder(models: Path, name: str, graphs: dict[str, onnx.ModelProto], endpoint: str, family: str,
                    value_range: list[float], scale: int = 1, multiple_of: int = 1, **blocks) -> Path:
    """A model folder as `python -m training import` writes it: provenance, no training block."""
    folder = models / name
    folder.mkdir(parents=True)
    files = {role: write_onnx(folder, f"{role}.onnx", g) for role, g in graphs.items()}
    io = {"channels": 3, "range": value_range}
    card = fixture_card(name, endpoint, family, f"imported {family}", files,
                        graph=image_graph(3, 3, ["N", 3, "H_out", "W_out"]),
                        input={**io, "multiple_of": multiple_of, "min_size": multiple_of, "native_size": None},
                        output={**io, "scale": scale}, tiling={"tile": 32, "overlap": 8}, **blocks)
    card.training = None
    card.provenance = Provenance(sources=[SourceFile(file=f"{role}.pth", sha256="0" * 64, bytes=1, role=role)
                                          for role in graphs], arch=family, arch_params={"scale": scale},
                                 license="CC-BY-4.0")
    write_card(folder, card)
    return folder


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> Path:
    models = tmp_path_factory.mktemp("imported-models")
    for scale in (2, 3, 4):
        imported_folder(models, f"cubic-x{scale}", {"generator": cubic_upscaler(scale)}, "upscale", "esrgan",
                        [0.0, 1.0], scale=scale)
    imported_folder(models, "neg2neg", {"a2b": negate(), "b2a": negate()}, "translate", "cyclegan", [-1.0, 1.0],
                    multiple_of=4, domains={"a": "A", "b": "B"})
    imported_folder(models, "negative", {"generator": negate()}, "translate", "pix2pix", [-1.0, 1.0], multiple_of=8)
    return models


def run_eval(folder: Path, data_root, **kw) -> dict:
    before = verify_model_dir(folder)
    options = ev.EvalOptions(name=folder.name, models=folder.parent, data_root=str(data_root) if data_root else None,
                             **kw)
    result = ev.evaluate_model(options, log=quiet)
    card = verify_model_dir(folder, deep=True)
    assert card.metrics.heldout == json.loads(json.dumps(result))
    assert card.provenance == before.provenance and card.training is None and card.version == before.version
    assert result["split"] == "test" and "no training config (imported)" in result["measured"]
    return result


@pytest.mark.parametrize("scale", [2, 3])
def test_eval_imported_upscaler_at_its_native_scale(imported, tiny_datasets, scale, tmp_path):
    x4_only = tmp_path / "anchors"  # the peers exist at x4 only (as in ../shared/anchors/sr)
    x4_only.mkdir()
    for stem in ("FSRCNN", "ESPCN", "LapSRN"):
        (x4_only / f"{stem}_x4.pb").write_bytes(b"")
    result = run_eval(imported / f"cubic-x{scale}", tiny_datasets["photos"], crop=48, anchors_dir=x4_only)
    assert result["border"] == scale and result["degradation"] == f"PIL bicubic /{scale}"
    assert result["images"] == 6 and result["hr_crop"] == [48 - 48 % scale] * 2
    assert f"native x{scale}" in result["measured"] and "photos" in result["measured"]
    assert 15 < result["psnr_y"] < 100 and 15 < result["bicubic_psnr_y"] < 100
    # a cubic Resize on [0, 1] is close to PIL's bicubic upscale
    assert abs(result["psnr_y"] - result["bicubic_psnr_y"]) < 3
    assert "anchors" not in result and f"_x{scale}.pb" in result["anchors_note"]  # the peers are x4 only


@pytest.mark.skipif(not ANCHORS.is_dir(), reason="no ../shared/anchors/sr")
def test_eval_imported_x4_runs_the_sr_peers(imported, tiny_datasets):
    result = run_eval(imported / "cubic-x4", tiny_datasets["photos"], crop=48, anchors_dir=ANCHORS, limit=2)
    assert result["images"] == 2 and result["border"] == 4
    assert set(result["anchors"]) == {"fsrcnn", "espcn", "lapsrn"}
    assert all(10 < a["psnr_y"] < 100 for a in result["anchors"].values())


def test_eval_imported_defaults_to_data_photos(imported, tiny_datasets, tmp_path, monkeypatch, capsys):
    """No --data-root: data/photos under the working directory; missing, a clear error naming the fix."""
    import shutil

    monkeypatch.chdir(tmp_path)
    args = ["cubic-x2", "--models", str(imported), "--crop", "32", "--anchors", str(tmp_path / "none")]
    assert eval_cli.main([*args, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "data/photos" in err and "prepare photos" in err and "--data-root" in err
    shutil.copytree(tiny_datasets["photos"], tmp_path / "data" / "photos")
    before = (imported / "cubic-x2" / "card.json").read_text()
    assert eval_cli.main([*args, "--dry-run", "--limit", "1"]) == 0
    assert (imported / "cubic-x2" / "card.json").read_text() == before
    printed = capsys.readouterr().out
    result = json.loads(printed[printed.index("\n{") + 1:])
    assert result["data_root"] == "data/photos" and result["images"] == 1


def test_eval_imported_cyclegan_pair_on_photos_and_on_domains(imported, tiny_datasets):
    result = run_eval(imported / "neg2neg", tiny_datasets["photos"])
    assert result["images_a"] == result["images_b"] == 6 and result["size"] == [256, 256]
    assert result["cycle_l1_a"] < 0.01 and result["cycle_l1_b"] < 0.01  # -(-x) = x, up to 8-bit rounding
    assert result["a2b_change_l1"] > 0.2 and result["b2a_change_l1"] > 0.2
    assert "same photos" in result["measured"] and "256x256" in result["measured"]
    for key in ("a2b_colourfulness", "b2a_colourfulness", "input_colourfulness", "a2b_std", "input_std"):
        assert np.isfinite(result[key]), key
    # a root in the CycleGAN layout (testA/, testB/): the domain images, through the cyclegan evaluator
    domains = run_eval(imported / "neg2neg", tiny_datasets["unaligned"])
    assert domains["images_a"] == 6 and domains["cycle_l1_a"] < 0.01
    assert "testA" in domains["measured"] and "target_share_note" in domains


def test_eval_imported_one_direction_output_statistics(imported, tiny_datasets):
    result = run_eval(imported / "negative", tiny_datasets["photos"], limit=3)
    assert result["images"] == 3 and result["size"] == [256, 256]  # 256 is a multiple of 8
    assert "output statistics" in result["measured"]
    assert result["change_l1"] > 0.2
    assert result["colourfulness"] > 0 and result["input_colourfulness"] > 0
    assert result["std"] == pytest.approx(result["input_std"], abs=0.01)  # a negative keeps the spread


def test_eval_imported_multiple_of_rounds_the_crop_up(imported, tiny_datasets, tmp_path):
    """A graph that needs multiples of 96 is fed 288 x 288 crops (TRANSLATE_EDGE rounded up)."""
    import shutil

    from contract.folder import read_card
    folder = tmp_path / "negative96"
    shutil.copytree(imported / "negative", folder)
    card = read_card(folder)
    card.name, card.input.multiple_of, card.input.min_size = "negative96", 96, 96
    card.tiling = None
    write_card(folder, card)
    result = run_eval(folder, tiny_datasets["photos"], limit=1)
    assert result["size"] == [288, 288]


# ------------------------------------------------------------------ a model imported for real, then evaluated

def test_eval_a_really_imported_esrgan_x2(tmp_path, tiny_datasets):
    """A Real-ESRGAN x2plus-layout file (pixel-unshuffle, BasicSR names) through `import`, then eval at x2."""
    from training.importer.publish import ImportOptions, import_weights

    file = rrdb_file(tmp_path / "RealESRGAN_x2plus.pth", scale=2)
    import_weights(ImportOptions(file=file, name="esrgan-x2", out=tmp_path / "models", license="BSD-3-Clause",
                                 fp16=False), log=quiet)
    result = run_eval(tmp_path / "models" / "esrgan-x2", tiny_datasets["photos"], crop=48, limit=2,
                      anchors_dir=ANCHORS)
    assert result["border"] == 2 and result["images"] == 2 and "native x2" in result["measured"]
    assert np.isfinite(result["psnr_y"]) and result["bicubic_psnr_y"] > 15 and "anchors" not in result


# ------------------------------------------------------------------ init_from: a run starting from imported weights

def rrdb_file(path: Path, scale: int = 4, nf: int = 8, n_blocks: int = 1, seed: int = 0, layout: str = "basicsr") -> Path:
    """An ESRGAN-family file in a real layout: Real-ESRGAN's {"params_ema", "params"} with BasicSR names, or the
    old ESRGAN names (model.0, model.1.sub.N.RDBk.convm.0, ...). gc 32 as every published one."""
    import torch

    from training.networks.rrdb import RRDBConfig, RRDBNet

    torch.manual_seed(seed)
    sd = RRDBNet(RRDBConfig(nf=nf, n_blocks=n_blocks, gc=32, scale=scale)).state_dict()
    if layout == "old":
        from training.importer import detect
        sd = {k[len("model."):]: v for k, v in detect(sd).module.state_dict().items()}
        torch.save(sd, path)
    else:
        torch.save({"params_ema": sd, "params": {k: v + 1 for k, v in sd.items()}}, path)
    return path


def junyanz_resnet_file(path: Path, seed: int, channels: int = 1, ngf: int = 4, n_blocks: int = 2) -> Path:
    """A junyanz CycleGAN generator file: their `conv_block` names, InstanceNorm statistics their old files carry."""
    import torch

    from training.networks.cyclegan import ResnetConfig, ResnetGenerator

    torch.manual_seed(seed)
    net = ResnetGenerator(ResnetConfig(in_channels=channels, out_channels=channels, ngf=ngf, n_blocks=n_blocks))
    sd = {k.replace(".block.", ".conv_block."): v for k, v in net.state_dict().items()}
    sd["model.2.running_mean"], sd["model.2.running_var"] = torch.zeros(ngf), torch.ones(ngf)
    torch.save(sd, path)
    return path


def srgan_rrdb_raw(tiny_datasets, file: Path | None, n_blocks: int = 1, scale: int = 4, **top) -> dict:
    from testkit.tiny import tiny_raw

    raw = tiny_raw("srgan", tiny_datasets)
    raw["model"]["generator"] = {"arch": "rrdb", "nf": 8, "n_blocks": n_blocks, "gc": 32, "scale": scale}
    raw["model"]["value_range"] = [0, 1]
    raw["data"]["scale"] = scale
    if file is not None:
        raw["init_from"] = str(file)
    raw.update(top)
    return raw


def fresh(raw: dict):
    import torch

    from training.config import load_config
    from training.registry import get_recipe_class

    cfg = load_config(None, raw=raw)
    torch.manual_seed(0)
    recipe = get_recipe_class(cfg.family)(cfg, torch.device("cpu"))
    recipe.on_fresh_start()
    return recipe


def same(net, sd: dict) -> bool:
    import torch
    own = net.state_dict()
    return set(own) == set(sd) and all(torch.equal(own[k], sd[k]) for k in own)


def test_init_from_esrgan_trains_2_steps_and_resumes_without_the_file(tiny_datasets, tmp_path):
    import torch

    from training import checkpoint as ckpt
    from training.config import load_config
    from training.train import train

    file = rrdb_file(tmp_path / "RealESRGAN_x4plus.pth")
    want = torch.load(file, weights_only=True)["params_ema"]  # params_ema preferred over params
    assert same(fresh(srgan_rrdb_raw(tiny_datasets, file)).nets["G"], want)  # step 0 = the file
    raw = srgan_rrdb_raw(tiny_datasets, file)
    raw["train"].update(steps=2, ckpt_every=2, sample_every=2, out_dir=str(tmp_path / "run"))
    run = train(load_config(None, raw=raw), log=quiet)
    payload = ckpt.load(ckpt.list_checkpoints(run)[-1])
    assert payload["step"] == 2 and payload["config"]["init_from"] == str(file)
    g = payload["nets"]["G"]
    assert not torch.equal(g["conv_first.weight"], want["conv_first.weight"])  # trained from it
    assert (g["conv_first.weight"] - want["conv_first.weight"]).abs().max() < 0.05  # ... not from scratch
    file.unlink()  # a resumed run continues from its checkpoint: the file is not read again
    raw["train"]["steps"] = 4
    run = train(load_config(None, raw=raw), resume=True, log=quiet)
    assert ckpt.load(ckpt.list_checkpoints(run)[-1])["step"] == 4


def test_init_from_through_loss_init_from_and_other_layouts(tiny_datasets, tmp_path):
    """loss.init_from takes an imported file too; the old ESRGAN names and the x2 (pixel-unshuffle) layout load."""
    import torch

    file = rrdb_file(tmp_path / "x4.pth")
    raw = srgan_rrdb_raw(tiny_datasets, None)
    raw["loss"] = {"stage": "gan", "content": "feature_matching", "init_from": str(file)}
    assert same(fresh(raw).nets["G"], torch.load(file, weights_only=True)["params_ema"])
    old = rrdb_file(tmp_path / "old.pth", layout="old", seed=3)  # the same weights under the old names
    basicsr = torch.load(rrdb_file(tmp_path / "new.pth", seed=3), weights_only=True)["params_ema"]
    assert "model.1.sub.0.RDB1.conv1.0.weight" in torch.load(old, weights_only=True)
    assert same(fresh(srgan_rrdb_raw(tiny_datasets, old)).nets["G"], basicsr)
    x2 = rrdb_file(tmp_path / "RealESRGAN_x2plus.pth", scale=2)
    assert same(fresh(srgan_rrdb_raw(tiny_datasets, x2, scale=2)).nets["G"],
                torch.load(x2, weights_only=True)["params_ema"])
    with pytest.raises(ValueError, match="not both"):
        fresh({**raw, "init_from": str(file)})


def test_init_from_refuses_what_does_not_fit(tiny_datasets, tmp_path):
    from testkit.tiny import tiny_raw

    from training.recipes.init_from import InitFromError

    file = rrdb_file(tmp_path / "RealESRGAN_x4plus.pth", n_blocks=1)
    with pytest.raises(InitFromError) as e:
        fresh(srgan_rrdb_raw(tiny_datasets, file, n_blocks=2))
    assert str(e.value) == ("init_from RealESRGAN_x4plus.pth is esrgan x4 with n_blocks 1; model.generator is rrdb "
                            "with n_blocks 2: set model.generator.n_blocks: 1")
    srresnet = tiny_raw("srgan", tiny_datasets)
    with pytest.raises(InitFromError, match=r"model.generator is srresnet: set model.generator.arch: rrdb and "
                                            r"in_channels: 3, out_channels: 3, nf: 8, n_blocks: 1, gc: 32, scale: 4"):
        fresh({**srresnet, "init_from": str(file)})
    wrong_range = srgan_rrdb_raw(tiny_datasets, file)
    wrong_range["model"]["value_range"] = [-1, 1]
    with pytest.raises(InitFromError, match=r"runs on \[0.0, 1.0\] \(esrgan\).*set model.value_range: \[0.0, 1.0\]"):
        fresh(wrong_range)
    with pytest.raises(InitFromError, match="dcgan recipe has no image generator"):
        fresh({**tiny_raw("dcgan", tiny_datasets), "init_from": str(file)})
    a = junyanz_resnet_file(tmp_path / "latest_net_G_A.pth", seed=1)
    with pytest.raises(InitFromError, match=r"got 1 file\(s\): set init_from: \[FILE_G_A, FILE_G_B\]"):
        fresh({**tiny_raw("cyclegan", tiny_datasets), "init_from": str(a)})
    with pytest.raises(InitFromError, match="is junyanz-resnet.*set model.generator.arch: resnet"):
        fresh({**srgan_rrdb_raw(tiny_datasets, a)})
    (tmp_path / "notes.pth").write_text("not weights")
    with pytest.raises(ValueError, match="not a checkpoint"):
        fresh(srgan_rrdb_raw(tiny_datasets, tmp_path / "notes.pth"))
    with pytest.raises(ValueError, match="init_from must be a file or a list"):
        fresh({**srresnet, "init_from": 3})


def test_init_from_junyanz_cyclegan_pair_trains(tiny_datasets, tmp_path):
    """Two junyanz files, given B first: G_A and G_B by their names; stray InstanceNorm statistics dropped."""
    import torch
    from testkit.tiny import tiny_raw

    from training import checkpoint as ckpt
    from training.config import load_config
    from training.train import train

    a = junyanz_resnet_file(tmp_path / "latest_net_G_A.pth", seed=1)
    b = junyanz_resnet_file(tmp_path / "latest_net_G_B.pth", seed=2)
    raw = {**tiny_raw("cyclegan", tiny_datasets), "init_from": [str(b), str(a)]}
    recipe = fresh(raw)
    for name, path in (("G_A", a), ("G_B", b)):
        sd = {k.replace(".conv_block.", ".block."): v for k, v in torch.load(path, weights_only=True).items()
              if "running" not in k}
        assert same(recipe.nets[name], sd), name
    raw["train"].update(steps=2, ckpt_every=2, out_dir=str(tmp_path / "run"))
    run = train(load_config(None, raw=raw), log=quiet)
    g_a = ckpt.load(ckpt.list_checkpoints(run)[-1])["nets"]["G_A"]["model.1.weight"]
    first = torch.load(a, weights_only=True)["model.1.weight"]
    assert not torch.equal(g_a, first) and (g_a - first).abs().max() < 0.05
    wide = tiny_raw("cyclegan", tiny_datasets)
    wide["model"]["generator"]["ngf"] = 8
    with pytest.raises(ValueError, match="set model.generator.ngf: 4"):
        fresh({**wide, "init_from": [str(a), str(b)]})


def test_init_from_junyanz_unet_for_pix2pix(tiny_datasets, tmp_path):
    import torch
    from testkit.tiny import tiny_raw

    from training.networks.pix2pix import UNetConfig, UNetGenerator

    torch.manual_seed(5)
    sd = UNetGenerator(UNetConfig(in_channels=1, out_channels=3, num_downs=5, ngf=4)).state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "latest_net_G.pth")
    raw = {**tiny_raw("pix2pix", tiny_datasets), "init_from": str(tmp_path / "latest_net_G.pth")}
    raw["model"]["generator"]["dropout"] = False  # dropout leaves no trace in U-Net weights: not compared
    assert same(fresh(raw).nets["G"], sd)
