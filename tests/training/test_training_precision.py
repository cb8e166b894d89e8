"""train.precision: what auto picks, autocast only around the networks, exact bf16 resume, checkpoints
that cross precisions, fp32 ONNX graphs from bf16 runs, and a divergence that keeps the last good checkpoint."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from testkit.tiny import FAMILIES, tiny_raw
from training import checkpoint as ckpt
from training.config import load_config
from training.precision import Precision, PrecisionError, TrainingDiverged, resolve
from training.recipes.base import Recipe
from training.registry import get_recipe_class
from training.train import StepBatches, build_reader, train

CPU = torch.device("cpu")
quiet = lambda *a: None  # noqa: E731


def _raw(family, data, precision, **train_kw):
    raw = tiny_raw(family, data)
    raw["train"].update(precision=precision, **train_kw)
    return raw


def _nets(run_dir):
    _, payload = ckpt.latest_valid(run_dir)
    return payload


@pytest.mark.parametrize("flags, want", [
    (set(), "fp32"), ({"avx2", "avx512f", "avx512_vnni"}, "fp32"),
    ({"avx512_bf16"}, "bf16"), ({"amx_bf16", "amx_tile"}, "bf16")])
def test_auto_is_bf16_only_where_native(flags, want):
    assert resolve("auto", CPU, flags) == want
    assert resolve("fp32", CPU, flags) == "fp32" and resolve("bf16", CPU, flags) == "bf16"


def test_fp16_on_cpu_and_unknown_names_are_refused(tiny_datasets, tmp_path):
    with pytest.raises(PrecisionError, match="fp16 needs a CUDA device.*bf16"):
        resolve("fp16", CPU, {"amx_bf16"})
    with pytest.raises(PrecisionError, match="fp16 needs a CUDA device"):
        train(load_config(None, raw=_raw("srgan", tiny_datasets, "fp16")), out_dir=tmp_path / "r", log=quiet)
    assert not (tmp_path / "r" / "checkpoints").exists()
    with pytest.raises(ValueError, match="train.precision must be one of auto, fp32, bf16, fp16"):
        load_config(None, ["train.precision=fp8"], raw=tiny_raw("srgan", tiny_datasets))


def test_auto_trains_fp32_on_a_cpu_without_bf16(tiny_datasets, tmp_path, monkeypatch):
    """The flags come from core.cpu: without amx_bf16 / avx512_bf16 an auto run is fp32, and says so."""
    import core.cpu

    monkeypatch.setattr(core.cpu, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "fma"}))
    lines = []
    run = train(load_config(None, raw=_raw("pix2pix", tiny_datasets, "auto", steps=2)), out_dir=tmp_path / "a",
                log=lines.append)
    assert _nets(run)["meta"]["precision"] == "fp32"
    assert "precision fp32 (train.precision=auto)" in lines[0]
    monkeypatch.setattr(core.cpu, "cpu_flags", lambda: frozenset({"avx2", "amx_bf16"}))
    run = train(load_config(None, raw=_raw("pix2pix", tiny_datasets, "auto", steps=2)), out_dir=tmp_path / "b",
                log=quiet)
    assert _nets(run)["meta"]["precision"] == "bf16"


def test_autocast_covers_the_networks_and_nothing_else(tiny_datasets):
    """Convolutions compute in bf16; what comes out of a network, the losses and every weight, optimizer
    state and batch-norm statistic are float32."""
    cfg = load_config(None, raw=_raw("pix2pix", tiny_datasets, "bf16"))
    torch.manual_seed(0)
    recipe = get_recipe_class("pix2pix")(cfg, CPU, precision=Precision("bf16", "cpu"))
    seen = []
    first_conv = next(m for m in recipe.nets["D"].modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))  # returns None: output kept
    batches = StepBatches(build_reader(cfg), cfg.seed, 4, 0, 2)
    for step in range(2):
        losses = recipe.train_step(recipe.to_device(batches[step]), step)
        recipe.end_step()
    assert seen and set(seen) == {torch.bfloat16}
    assert all(isinstance(v, float) for v in losses.values())
    batch = recipe.to_device(batches[0])
    assert recipe.ddp["G"](batch["A"]).dtype == torch.float32
    state = recipe.state_dict()
    tensors = [t for net in state["nets"].values() for t in net.values() if t.is_floating_point()]
    tensors += [t for o in state["opts"].values() for s in o["state"].values() for t in s.values()
                if torch.is_tensor(t) and t.is_floating_point()]
    assert tensors and {t.dtype for t in tensors} == {torch.float32}
    assert any("running_mean" in k for k in state["nets"]["G"])  # batch norm is there, and stays fp32


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_resume_equals_straight_run(family, tiny_datasets, tmp_path):
    """N steps + resume + N steps == 2N straight steps in bf16, bit for bit."""
    raw = _raw(family, tiny_datasets, "bf16")
    straight = train(load_config(None, raw=raw), out_dir=tmp_path / "straight", log=quiet)
    half = copy.deepcopy(raw)
    half["train"]["steps"] = 2
    train(load_config(None, raw=half), out_dir=tmp_path / "resumed", log=quiet)
    train(load_config(None, raw=raw), resume=True, out_dir=tmp_path / "resumed", log=quiet)
    s, r = _nets(straight), _nets(tmp_path / "resumed")
    assert s["step"] == r["step"] == 4 and s["meta"]["precision"] == r["meta"]["precision"] == "bf16"
    for net in s["nets"]:
        for k, v in s["nets"][net].items():
            assert torch.equal(r["nets"][net][k], v), f"{family}: {net}.{k}"
    for name in s["opts"]:
        for i, state in s["opts"][name]["state"].items():
            for k, v in state.items():
                assert torch.equal(r["opts"][name]["state"][i][k], v), f"{family}: opt {name} {i} {k}"


@pytest.mark.parametrize("first, then", [("bf16", "fp32"), ("fp32", "bf16")])
def test_a_checkpoint_resumes_in_the_other_precision(first, then, tiny_datasets, tmp_path):
    raw = _raw("srgan", tiny_datasets, first, steps=2)
    run = train(load_config(None, raw=raw), out_dir=tmp_path / "run", log=quiet)
    saved = _nets(run)
    recipe = get_recipe_class("srgan")(load_config(None, raw=saved["config"]), CPU, precision=Precision(then, "cpu"))
    recipe.load_state_dict(saved)
    for k, v in recipe.nets["G"].state_dict().items():
        assert torch.equal(v, saved["nets"]["G"][k]) and v.dtype == saved["nets"]["G"][k].dtype
    raw["train"].update(steps=4, precision=then)
    train(load_config(None, raw=raw), resume=True, out_dir=run, log=quiet)
    done = _nets(run)
    assert done["step"] == 4 and done["meta"]["precision"] == then
    assert all(torch.isfinite(v).all() for v in done["nets"]["G"].values())
    assert any(not torch.equal(v, saved["nets"]["G"][k]) for k, v in done["nets"]["G"].items())


def test_fp16_steps_go_through_a_grad_scaler_that_is_checkpointed(tiny_datasets):
    """fp16's code path (run on CUDA only; the refusal is train's, so it is exercised here on the CPU)."""
    cfg = load_config(None, raw=_raw("srgan", tiny_datasets, "fp32"))
    torch.manual_seed(0)
    recipe = get_recipe_class("srgan")(cfg, CPU, precision=Precision("fp16", "cpu"))
    batches = StepBatches(build_reader(cfg), cfg.seed, 4, 0, 2)
    for step in range(2):
        recipe.train_step(recipe.to_device(batches[step]), step)
        recipe.end_step()
    state = recipe.state_dict()["precision"]
    assert state["name"] == "fp16" and state["scalers"]["G"]["scale"] > 0
    again = get_recipe_class("srgan")(cfg, CPU, precision=Precision("fp16", "cpu"))
    again.load_state_dict(recipe.state_dict())
    assert again.precision.scaler("G").get_scale() == recipe.precision.scaler("G").get_scale()


def test_a_bf16_run_exports_an_fp32_graph_through_the_same_parity_gate(tiny_datasets, tmp_path):
    import onnx
    from training import export as ex

    run = train(load_config(None, raw=_raw("srgan", tiny_datasets, "bf16", steps=2)), out_dir=tmp_path / "r",
                log=quiet)
    result = ex.export_checkpoint(ex.ExportOptions(checkpoint=ckpt.list_checkpoints(run)[-1], name="bf16-sr",
                                                   out=tmp_path / "models", exporter="torchscript", fp16=False),
                                  log=quiet)
    card = json.loads((result.path / "card.json").read_text())
    assert card["training"]["precision"] == "bf16"  # the open block's extra: a key of its own
    assert card["metrics"]["parity_max_abs"] <= 1e-4
    graph = onnx.load(str(result.path / card["files"]["generator"]["path"])).graph
    types = {t.data_type for t in graph.initializer} | {v.type.tensor_type.elem_type
                                                         for v in list(graph.input) + list(graph.output)}
    assert types == {onnx.TensorProto.FLOAT}


def test_non_finite_weights_are_never_checkpointed(tiny_datasets, tmp_path, monkeypatch):
    """Weights that went NaN stop the run at the next checkpoint, naming the step and the last good one."""
    poison_at = 3
    end_step = Recipe.end_step

    def poisoned(self):
        end_step(self)
        if self.scheds["G"].last_epoch == poison_at:
            with torch.no_grad():
                next(self.nets["G"].parameters()).fill_(float("nan"))
    monkeypatch.setattr(Recipe, "end_step", poisoned)
    raw = _raw("srgan", tiny_datasets, "bf16", ckpt_every=1)
    with pytest.raises(TrainingDiverged, match=r"non-finite weights after step 3 \(G\..*"
                                               r"last good checkpoint is .*ckpt-00000002\.pt"):
        train(load_config(None, raw=raw), out_dir=tmp_path / "run", log=quiet)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "run")] == ["ckpt-00000001.pt", "ckpt-00000002.pt"]


def test_a_non_finite_loss_names_its_step_and_the_last_good_checkpoint(tiny_datasets, tmp_path):
    raw = _raw("srgan", tiny_datasets, "bf16", ckpt_every=1, lr_g=1e30)
    with pytest.raises(TrainingDiverged, match=r"non-finite (loss at step \d|weights after step \d).*"
                                               r"(last good checkpoint is .*ckpt-\d+\.pt|No checkpoint)") as e:
        train(load_config(None, raw=raw), out_dir=tmp_path / "nan", log=quiet)
    for path in ckpt.list_checkpoints(tmp_path / "nan"):
        assert all(torch.isfinite(v).all() for v in ckpt.load(path)["nets"]["G"].values()), (path, str(e.value))


def test_dcgan_keeps_its_generator_in_fp32_under_bf16(tiny_datasets):
    """Its transposed convolutions' backward is far slower in bf16 (bench section training): G runs in fp32,
    D in bf16."""
    cfg = load_config(None, raw=_raw("dcgan", tiny_datasets, "bf16"))
    torch.manual_seed(0)
    recipe = get_recipe_class("dcgan")(cfg, CPU, precision=Precision("bf16", "cpu"))
    seen = {}
    for net in ("G", "D"):
        conv = next(m for m in recipe.nets[net].modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)))
        conv.register_forward_hook(lambda m, i, o, net=net: seen.setdefault(net, o.dtype) and None)
    recipe.train_step(recipe.to_device(StepBatches(build_reader(cfg), cfg.seed, 4, 0, 1)[0]), 0)
    assert seen == {"G": torch.float32, "D": torch.bfloat16}


def test_explicit_bf16_without_native_support_runs_and_says_it_is_emulated():
    said = []
    assert resolve("bf16", CPU, {"avx2"}, log=said.append) == "bf16"
    assert len(said) == 1 and "emulated, slower than fp32" in said[0]
    said.clear()
    assert resolve("bf16", CPU, {"avx512_bf16"}, log=said.append) == "bf16" and not said
