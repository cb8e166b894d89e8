"""The model card contract (contract/): typed reader and writer, JSON Schema, migration, folder rules."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema_rs
import pytest

from contract import SCHEMA_VERSION, Card, CardError
from contract import folder as mf
from contract.schema import SCHEMA_FILE, card_schema, schema_text

REPO = Path(__file__).resolve().parents[2]
# the served folders: dot folders (an export's .NAME.prev rollback copy, staging) are never served
SHIPPED = sorted(p for p in (REPO / "models").glob("*/card.json") if not p.parent.name.startswith("."))


def _validator():
    return jsonschema_rs.Draft202012Validator(card_schema())


def test_committed_schema_is_the_generated_one():
    """docs/card.schema.json is generated from contract/card.py; a change to the dataclasses must regenerate it."""
    assert SCHEMA_FILE.read_text() == schema_text(), "stale: run python -m contract.schema"


@pytest.mark.parametrize("path", SHIPPED, ids=[p.parent.name for p in SHIPPED])
def test_shipped_cards_follow_the_contract_and_the_schema(path):
    data = json.loads(path.read_text())
    assert list(_validator().iter_errors(data)) == []
    card = Card.from_json(path.read_bytes(), path.parent.name)
    assert card.schema == SCHEMA_VERSION
    assert card.to_dict() == data, "reading and writing a card must keep every field"


def test_exactly_one_shipped_upscale_model_is_the_default():
    defaults = [Card.from_json(p.read_bytes()).name for p in SHIPPED
                if Card.from_json(p.read_bytes()).endpoint == "upscale" and Card.from_json(p.read_bytes()).default]
    assert defaults == ["srresnet-x4"]


def _shipped(name: str) -> dict:
    return json.loads((REPO / "models" / name / "card.json").read_text())


def test_schema_1_cards_are_read_and_written_as_schema_2():
    old = _shipped("srgan-x4")
    old["schema"] = 1
    del old["default"]
    card = Card.from_dict(old)
    assert card.default is False
    out = json.loads(card.to_json())
    assert out["schema"] == 2 and out["default"] is False
    assert Card.from_dict(out).to_dict() == out


def _set(data: dict, path: str, value) -> None:
    keys = path.split(".")
    node = data
    for key in keys[:-1]:
        node = node[key]
    if value is KeyError:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value


# (card, dotted field, bad value, what the message must name); every one is also invalid per the JSON Schema
FIELD_FAULTS = [
    ("srresnet-x4", "input.channels", 5, "input.channels"),
    ("srresnet-x4", "input.range", [1.0], "input.range"),
    ("srresnet-x4", "files.generator.sha256", "abc", "files.generator.sha256"),
    ("srresnet-x4", "files.generator.path", "../fashion/generator.onnx", "files.generator.path"),
    ("srresnet-x4", "tiling.tile", 2, "tiling.tile"),
    ("srresnet-x4", "graph", KeyError, "graph"),
    ("srresnet-x4", "endpoint", "paint", "endpoint"),
    ("srresnet-x4", "name", "Not A Name", "name"),
    ("srresnet-x4", "tilng", {"tile": 64, "overlap": 4}, "tilng"),
    ("srresnet-x4", "default", "yes", "default"),
    ("fashion", "latent_dim", 0, "latent_dim"),
    ("fashion", "classes", ["Shirt", ""], "classes[1]"),
    ("sneaker2boot", "files.a2b.bytes", -1, "files.a2b.bytes"),
    ("srresnet-x4", "schema", 9, "schema"),
]


@pytest.mark.parametrize("name,path,value,named", FIELD_FAULTS, ids=[f"{f[0]}:{f[1]}" for f in FIELD_FAULTS])
def test_a_bad_field_is_refused_naming_the_field(name, path, value, named):
    data = _shipped(name)
    _set(data, path, value)
    with pytest.raises(CardError) as e:
        Card.from_dict(data)
    assert str(e.value).startswith(named), str(e.value)
    assert list(_validator().iter_errors(data)), "the JSON Schema must refuse it too"


# rules between fields: Card.check (the JSON Schema describes fields one by one)
RULE_FAULTS = [
    ("srresnet-x4", "output.scale", KeyError, "output.scale"),
    ("colorize", "output.scale", 4, "output.scale"),
    ("fashion", "latent_dim", KeyError, "latent_dim"),
    ("colorize", "input", KeyError, "input"),
    ("srresnet-x4", "files", {"a2b": None}, "files"),
]


@pytest.mark.parametrize("name,path,value,named", RULE_FAULTS, ids=[f"{f[0]}:{f[1]}" for f in RULE_FAULTS])
def test_rules_between_fields_are_checked(name, path, value, named):
    data = _shipped(name)
    if value == {"a2b": None}:
        value = {"a2b": data["files"]["generator"], "b2a": data["files"]["generator"]}
    _set(data, path, value)
    with pytest.raises(CardError) as e:
        Card.from_dict(data)
    assert named in str(e.value)


def test_the_card_must_carry_its_folders_name():
    with pytest.raises(CardError, match="name"):
        Card.from_dict(_shipped("fashion"), folder_name="fashion-2")


def test_to_json_refuses_an_invalid_card():
    card = Card.from_dict(_shipped("colorize"))
    card.output.scale = 2  # a translate model never rescales
    with pytest.raises(CardError, match="output.scale"):
        card.to_json()


def test_verify_names_the_damaged_file(tmp_path):
    src = REPO / "models" / "srgan-x4"
    folder = tmp_path / "srgan-x4"
    folder.mkdir()
    for f in src.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    assert mf.verify_model_dir(folder).name == "srgan-x4"
    data = (folder / "generator.onnx").read_bytes()
    (folder / "generator.onnx").write_bytes(data[:-10])
    with pytest.raises(mf.ModelDirError, match="generator.onnx.*truncated"):
        mf.verify_model_dir(folder)
    (folder / "generator.onnx").write_bytes(data[:-10] + b"x" * 10)
    with pytest.raises(mf.ModelDirError, match="sha256 mismatch"):
        mf.verify_model_dir(folder)
    card = copy.deepcopy(_shipped("srgan-x4"))
    card["input"]["multiple_of"] = 0
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(mf.ModelDirError, match="input.multiple_of"):
        mf.verify_model_dir(folder)


def test_staged_version_publishes_atomically_and_keeps_the_previous(tmp_path):
    out = tmp_path / "models"
    for n in (1, 2):
        with mf.staged_version(out, "m") as staging:
            (staging / "v").write_text(str(n))
    assert (out / "m" / "v").read_text() == "2" and (out / ".m.prev" / "v").read_text() == "1"
    with pytest.raises(RuntimeError):
        with mf.staged_version(out, "m") as staging:
            (staging / "v").write_text("3")
            raise RuntimeError("export failed")
    assert (out / "m" / "v").read_text() == "2"
    assert not list(out.glob(".m.tmp-*")), "a failed write leaves nothing behind"
    with mf.staged_version(out, "m") as staging:
        raise mf.NotPublished()
    assert (out / "m" / "v").read_text() == "2" and not list(out.glob(".m.tmp-*"))


def test_one_writer_per_model(tmp_path):
    with mf.model_lock(tmp_path, "m"):
        with pytest.raises(mf.LockBusy):
            with mf.model_lock(tmp_path, "m"):
                pass


def test_the_contract_imports_neither_torch_nor_bentoml():
    import subprocess
    import sys

    code = ("import sys, contract, contract.folder, contract.schema; "
            "print(sorted(m for m in ('torch', 'bentoml', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_service_refuses_a_card_that_breaks_the_contract_naming_the_field(tmp_path):
    """Service load: the model with the bad card is unavailable with the contract's message; the rest serve."""
    from service.config import Settings
    from service.registry import ModelRegistry
    from testkit.fixtures import write_fixture_models

    folders = write_fixture_models(tmp_path / "models")
    data = json.loads((folders["edges2color"] / "card.json").read_text())
    data["input"]["channels"] = 5
    (folders["edges2color"] / "card.json").write_text(json.dumps(data))
    registry = ModelRegistry.load(Settings(models_dir=tmp_path / "models", device="cpu"))
    bad = registry.get("edges2color")
    assert not bad.ready and bad.reason == "invalid card: input.channels must be one of 1, 3, got 5"
    assert sorted(registry.unavailable()) == ["edges2color"]


def test_the_endpoint_default_comes_from_the_cards(tmp_path):
    """No constant names a default model: with several upscalers, a request that names none gets the one
    whose card says `default: true` (several: the first by name); none marked: a 400 asking to name one."""
    import shutil

    from service.config import Settings
    from service.errors import ApiError
    from service.registry import ModelRegistry
    from testkit.fixtures import write_fixture_models

    root = tmp_path / "models"
    folders = write_fixture_models(root)
    shutil.copytree(folders["srresnet-x4"], root / "other-x4")

    def mark(name: str, default: bool) -> None:
        card = mf.read_card(root / name)
        card.name, card.default = name, default
        mf.write_card(root / name, card)

    def picked() -> str:
        return ModelRegistry.load(Settings(models_dir=root, device="cpu")).pick("upscale", None).name

    mark("other-x4", False)
    with pytest.raises(ApiError) as e:
        picked()
    assert e.value.status == 400 and "name one" in str(e.value)
    mark("other-x4", True)
    assert picked() == "other-x4"
    mark("srresnet-x4", True)
    assert picked() == "other-x4"
    mark("other-x4", False)
    assert picked() == "srresnet-x4"
