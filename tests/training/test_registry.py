"""The registries are true: every family in training/registry.py trains, exports and serves a tiny model
through its own entry (recipe, tiny config, evaluator, sheet), and every arch in networks/registry.py builds;
the SRGAN recipe trains another generator (RRDB) by its `arch` name alone."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from service_fixtures import encode, service_client, synthetic_photo
from testkit.tiny import TRAIN, tiny_config
from training import checkpoint as ckpt
from training.config import load_config
from training.export import ExportOptions, export_checkpoint
from training.networks.registry import ARCHS, arch_config, build_generator
from training.registry import FAMILIES, get_family
from training.train import train

# (model name, family, changes to the family's tiny config): every family, plus one arch swap
CASES = [(f"tiny-{name}", name, {}) for name in FAMILIES] + [
    ("tiny-srgan-rrdb", "srgan", {"generator": {"arch": "rrdb", "nf": 8, "n_blocks": 1, "gc": 4, "scale": 4}}),
]


def quiet(*args, **kwargs) -> None:
    pass


@pytest.fixture(scope="module")
def served_models(tiny_datasets, tiny_runs, tmp_path_factory) -> Path:
    """Every case exported; a family's own tiny config comes from the session's runs (conftest.tiny_runs),
    a case that changes the config is trained here."""
    runs, out = tmp_path_factory.mktemp("registry-runs"), tmp_path_factory.mktemp("registry-models")
    for name, family, model in CASES:
        if model:
            raw = tiny_config(family, tiny_datasets)
            raw["model"].update(model)
            raw["train"] = {**TRAIN, "steps": 2, "ckpt_every": 2, "sample_every": 2}
            checkpoint = ckpt.list_checkpoints(train(load_config(None, raw=raw), out_dir=runs / name, log=quiet))[-1]
        else:
            checkpoint = tiny_runs[family][-1]
        export_checkpoint(ExportOptions(checkpoint=checkpoint, name=name, out=out,
                                        exporter="torchscript", fp16=False), log=quiet)
    return out


def test_every_family_entry_resolves():
    for name, family in FAMILIES.items():
        recipe = family.recipe_class()
        assert recipe.family == name and recipe.endpoint == family.endpoint
        assert callable(family.evaluator()) and callable(family.sheet_maker())
        cfg = load_config(None, raw={**tiny_config(name, {"fashion": "f", "photos": "p"}), "train": TRAIN})
        assert cfg.family == name
    with pytest.raises(ValueError, match="unknown family 'nope'.*srgan"):
        get_family("nope")


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_every_arch_builds_from_its_name(arch):
    cfg = arch_config({"arch": arch}, "unused")
    assert cfg.arch == arch
    net = build_generator(cfg)
    assert isinstance(net, torch.nn.Module) and type(net).Config is type(cfg)
    with pytest.raises(ValueError, match="unknown generator arch"):
        arch_config({"arch": "nope"}, "srresnet")


def _request(client, name: str, endpoint: str):
    if endpoint == "generate":
        return client.post("/generate", json={"model": name, "label": 1, "n": 1, "seed": 3}), None
    image = Image.fromarray(synthetic_photo(40, 32, seed=1))
    fields = {"model": name}
    if name == "tiny-cyclegan":
        fields["direction"] = "b2a"
    return client.post(f"/{endpoint}", files={"image": ("in.png", encode(image))}, data=fields), image.size


@pytest.mark.parametrize("name,family", [(c[0], c[1]) for c in CASES])
def test_every_family_serves_what_it_trained(served_models, name, family):
    endpoint = get_family(family).endpoint
    with service_client(served_models) as client:
        listed = {m["name"]: m for m in client.get("/models").json()["models"]}
        assert listed[name]["status"] == "ready" and listed[name]["family"] == family
        r, size = _request(client, name, endpoint)
    assert r.status_code == 200, r.text
    out = Image.open(io.BytesIO(r.content))
    if endpoint == "upscale":
        assert out.size == (size[0] * 4, size[1] * 4)
    elif endpoint == "translate":
        assert out.size == size
    else:
        assert out.size == (32, 32)
    assert np.asarray(out).std() > 0, "a served model answers with an image, not a constant"


def test_rrdb_card_records_its_arch(served_models):
    from contract.folder import read_card

    card = read_card(served_models / "tiny-srgan-rrdb")
    assert card.training.config["model"]["generator"]["arch"] == "rrdb"
    assert card.output.scale == 4 and card.family == "srgan"
