"""Training: real steps per family on tiny generated data, config handling, exact resume."""
from __future__ import annotations

import copy

import pytest
import torch

from testkit.tiny import FAMILIES, tiny_raw
from training import checkpoint as ckpt
from training.config import load_config
from training.recipes.base import Recipe, TrainingDiverged
from training.registry import get_recipe_class
from training.train import StepBatches, build_reader, train


def _recipe(family, data):
    cfg = load_config(None, raw=tiny_raw(family, data))
    torch.manual_seed(0)
    return cfg, get_recipe_class(family)(cfg, torch.device("cpu"))


@pytest.mark.parametrize("family", FAMILIES + ["srgan-gan"])
def test_real_steps_update_every_network(family, tiny_datasets):
    """A few optimisation steps: losses finite, and every network (G and D) changes."""
    raw = tiny_raw(family.split("-")[0], tiny_datasets)
    if family == "srgan-gan":
        raw["loss"] = {"stage": "gan", "content": "feature_matching"}
    cfg = load_config(None, raw=raw)
    torch.manual_seed(0)
    recipe = get_recipe_class(cfg.family)(cfg, torch.device("cpu"))
    before = {k: copy.deepcopy(v.state_dict()) for k, v in recipe.nets.items()}
    batches = StepBatches(build_reader(cfg), cfg.seed, cfg.train.batch_size, 0, 3)
    for step in range(3):
        losses = recipe.train_step(batches[step], step)
        recipe.end_step()
        assert losses and all(torch.isfinite(torch.tensor(v)) for v in losses.values()), losses
    expected = {"dcgan": {"G", "D", "G_ema"}, "pix2pix": {"G", "D"}, "cyclegan": {"G_A", "G_B", "D_A", "D_B"},
                "srgan": {"G"}, "srgan-gan": {"G", "D"}}[family]
    assert set(recipe.nets) == expected
    for name, net in recipe.nets.items():
        changed = any(not torch.equal(before[name][k], v) for k, v in net.state_dict().items()
                      if v.dtype.is_floating_point and "running" not in k)
        assert changed, f"{family}: {name} did not update"


def test_sample_grids_have_the_promised_layout(tiny_datasets):
    for family, cols in (("dcgan", 10), ("pix2pix", 3), ("cyclegan", 6), ("srgan", 3)):
        cfg, recipe = _recipe(family, tiny_datasets)
        batch = StepBatches(build_reader(cfg), 0, 4, 0, 1)[0]
        images, nrow = recipe.sample_grid(batch)
        assert nrow == cols and images.shape[0] % cols == 0 and images.shape[1] in (1, 3)


def test_config_overrides_and_typos(tiny_datasets, tmp_path):
    cfg = load_config(None, ["train.steps=7", "train.betas=[0.9, 0.99]", "model.ngf=16"],
                      raw=tiny_raw("dcgan", tiny_datasets))
    assert cfg.train.steps == 7 and cfg.train.betas == (0.9, 0.99) and cfg.model.ngf == 16
    with pytest.raises(ValueError, match="unknown key.*stepz"):
        load_config(None, ["train.stepz=7"], raw=tiny_raw("dcgan", tiny_datasets))
    with pytest.raises(ValueError, match="unknown family"):
        load_config(None, raw={"family": "stylegan"})
    with pytest.raises(ValueError, match="key=value"):
        load_config(None, ["train.steps"], raw=tiny_raw("dcgan", tiny_datasets))


def test_config_values_are_read_against_their_annotations(tiny_datasets):
    """One dict-to-dataclass reader (contract.typed.from_plain): ints widen to floats, lists become tuples, and
    a value of the wrong type is named by its dotted key instead of reaching the optimizer."""
    cfg = load_config(None, ["train.lr_g=1", "train.betas=[0, 1]"], raw=tiny_raw("dcgan", tiny_datasets))
    assert cfg.train.lr_g == 1.0 and isinstance(cfg.train.lr_g, float)
    assert cfg.train.betas == (0.0, 1.0) and all(isinstance(b, float) for b in cfg.train.betas)
    with pytest.raises(ValueError, match="train.lr_g must be a finite number, got 'fast'"):
        load_config(None, ["train.lr_g=fast"], raw=tiny_raw("dcgan", tiny_datasets))
    with pytest.raises(ValueError, match="model.ngf must be an integer, got True"):
        load_config(None, ["model.ngf=true"], raw=tiny_raw("dcgan", tiny_datasets))


def test_default_configs_parse(repo_root):
    names = sorted(p.stem for p in (repo_root / "training" / "configs").glob("*.yaml"))
    assert names == ["colorize", "fashion", "sneaker2boot", "srgan-x4", "srresnet-x4"]
    for name in names:
        cfg = load_config(repo_root / "training" / "configs" / f"{name}.yaml")
        assert cfg.name == name


def test_run_writes_checkpoints_samples_logs(tiny_datasets, tmp_path):
    cfg = load_config(None, raw=tiny_raw("pix2pix", tiny_datasets, tmp_path / "run"))
    run = train(cfg, log=lambda *a: None)
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["ckpt-00000002.pt", "ckpt-00000004.pt"]
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_00000002.png", "step_00000004.png"]
    assert (run / "losses.png").stat().st_size > 1000
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,") and len(rows) == 5
    payload = ckpt.load(run / "checkpoints" / "ckpt-00000004.pt")
    assert payload["family"] == "pix2pix" and payload["step"] == 4
    assert payload["config"]["model"]["generator"]["num_downs"] == 5  # self-describing
    rebuilt = Recipe.from_checkpoint(payload)
    assert torch.equal(rebuilt.nets["G"].state_dict()["model.model.0.weight"],
                       payload["nets"]["G"]["model.model.0.weight"])


def _final_weights(run_dir):
    path, payload = ckpt.latest_valid(run_dir)
    return payload["step"], payload["nets"], payload["opts"]


@pytest.mark.parametrize("family", FAMILIES)
def test_resume_equals_straight_run(family, tiny_datasets, tmp_path):
    """N steps + resume + N steps == 2N straight steps (weights and optimizer state)."""
    raw = tiny_raw(family, tiny_datasets)
    straight = train(load_config(None, raw=raw), out_dir=tmp_path / "straight", log=lambda *a: None)
    half = copy.deepcopy(raw)
    half["train"]["steps"] = 2
    train(load_config(None, raw=half), out_dir=tmp_path / "resumed", log=lambda *a: None)
    # the second half runs with the full schedule, as a user resuming the same config would
    train(load_config(None, raw=raw), resume=True, out_dir=tmp_path / "resumed", log=lambda *a: None)
    s_step, s_nets, s_opts = _final_weights(straight)
    r_step, r_nets, r_opts = _final_weights(tmp_path / "resumed")
    assert s_step == r_step == 4
    for net in s_nets:
        for k in s_nets[net]:
            torch.testing.assert_close(r_nets[net][k], s_nets[net][k], rtol=0, atol=1e-6, msg=f"{net}.{k}")
    assert s_opts["G"]["state"].keys() == r_opts["G"]["state"].keys()


def test_resume_skips_truncated_checkpoint(tiny_datasets, tmp_path):
    raw = tiny_raw("dcgan", tiny_datasets)
    run = train(load_config(None, raw=raw), out_dir=tmp_path / "run", log=lambda *a: None)
    newest = ckpt.list_checkpoints(run)[-1]
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated, as a crash mid-copy would leave it
    messages = []
    path, payload = ckpt.latest_valid(run, log=messages.append)
    assert payload["step"] == 2 and "unreadable" in messages[0] and newest.name in messages[0]
    with pytest.raises(ckpt.CheckpointError, match="cannot read checkpoint"):
        ckpt.load(newest)


def test_checkpoint_refuses_pickled_objects(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    path = tmp_path / "evil.pt"
    torch.save({"format": ckpt.FORMAT, "x": Evil()}, path)
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load(path)


def test_nan_loss_stops_with_clear_message(tiny_datasets, tmp_path):
    raw = tiny_raw("srgan", tiny_datasets)
    raw["train"]["lr_g"] = 1e30  # diverges within a couple of steps
    with pytest.raises(TrainingDiverged, match="non-finite loss at step"):
        train(load_config(None, raw=raw), out_dir=tmp_path / "nan", log=lambda *a: None)


def test_vgg_loss_names_missing_file_and_loads_local(tmp_path):
    from torchvision.models import vgg19
    from training.losses import VGG19_FILE, MissingWeightsError, VGGFeatureLoss

    missing = tmp_path / "hub" / VGG19_FILE
    with pytest.raises(MissingWeightsError, match=str(missing).replace(".", r"\.")):
        VGGFeatureLoss(missing)
    features = vgg19(weights=None).features
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, missing.parent.mkdir() or missing)
    loss = VGGFeatureLoss(missing, layer="relu2_2")
    a, b = torch.rand(1, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32) * 2 - 1
    assert loss(a, a).item() == 0.0 and loss(a, b).item() > 0.0


def test_srgan_auto_content_falls_back_offline(tiny_datasets, tmp_path, capsys):
    raw = tiny_raw("srgan", tiny_datasets)
    raw["loss"] = {"stage": "gan", "content": "auto", "vgg_weights": str(tmp_path / "nope.pth")}
    _, recipe = None, get_recipe_class("srgan")(load_config(None, raw=raw), torch.device("cpu"))
    assert recipe.content_mode == "feature_matching"
    assert "nope.pth" in capsys.readouterr().out


def test_srgan_stage2_starts_from_pretrained(tiny_datasets, tmp_path):
    run = train(load_config(None, raw=tiny_raw("srgan", tiny_datasets)), out_dir=tmp_path / "pre", log=lambda *a: None)
    pre = ckpt.list_checkpoints(run)[-1]
    raw = tiny_raw("srgan", tiny_datasets)
    raw["loss"] = {"stage": "gan", "content": "feature_matching", "init_from": str(pre)}
    raw["train"]["steps"] = 0
    cfg = load_config(None, raw=raw)
    recipe = get_recipe_class("srgan")(cfg, torch.device("cpu"))
    recipe.on_fresh_start()
    want = ckpt.load(pre)["nets"]["G"]
    for k, v in recipe.nets["G"].state_dict().items():
        assert torch.equal(v, want[k])


def test_atomic_write_gives_the_umask_mode_not_0600(tmp_path):
    """Cards and checkpoints are readable by other users (the container's non-root service) as open() would make them."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        target = tmp_path / "card.json"
        ckpt.atomic_write(target, lambda f: f.write(b"{}"))
        assert stat.S_IMODE(target.stat().st_mode) == 0o644
        assert target.read_bytes() == b"{}"
        assert [p.name for p in tmp_path.iterdir()] == ["card.json"]  # no temp file left
    finally:
        os.umask(old)
